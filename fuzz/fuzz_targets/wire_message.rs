//! Arbitrary bytes as what a packet's payload carries to the messenger: a plaintext (a
//! symbol, an ACK, a NACK, ...) and a decoded message object. Nothing may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = anon::wire::parse(data);
    let _ = anon::wire::parse_object(data);
});
