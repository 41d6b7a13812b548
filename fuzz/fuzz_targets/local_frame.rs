//! Arbitrary bytes on the local API socket: read as a stream of frames and as one frame's
//! body. Nothing may panic; a frame that parses encodes to bytes that parse back to the
//! same encoding (compared as bytes: a NaN bandwidth, refused later by the service, is not
//! equal to itself).

#![no_main]

use anon::local::{Frame, read_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut stream = data;
    for _ in 0..64 {
        match read_frame(&mut stream) {
            Ok(f) => {
                let bytes = f.encode();
                let again = read_frame(&mut &bytes[..]).expect("an encoded frame reads");
                assert_eq!(again.encode(), bytes);
            }
            Err(_) => break,
        }
    }
    if let Ok(f) = Frame::decode(data) {
        let bytes = f.encode();
        let again = Frame::decode(&bytes[4..]).expect("re-encoded decodes");
        assert_eq!(again.encode(), bytes);
    }
});
