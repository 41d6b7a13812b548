//! Arbitrary bytes from the network: parse and process them as a packet, read them as a SURB
//! and as SURB recovery material, recover a plaintext from them. Nothing may panic, and a
//! failed process must leave the buffer unchanged.

#![no_main]

use crypto_simd::sphinx::{
    MixSecretKey, Packet, Surb, SurbRecovery, process, process_in_place, recover_plaintext,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // the first 32 bytes (when there are that many) are the node's secret
    let (secret, bytes) = match data.split_first_chunk::<32>() {
        Some((key, rest)) => (MixSecretKey::from_bytes(*key), rest),
        None => (MixSecretKey::from_bytes([7; 32]), data),
    };
    let parsed = Packet::parse(bytes).map(|p| p.len());
    let mut buf = bytes.to_vec();
    let in_place = process_in_place(&secret, &mut buf);
    if in_place.is_err() {
        assert_eq!(buf, bytes, "a failed process changed the buffer");
    }
    let mut out = vec![0u8; bytes.len()];
    assert_eq!(process(&secret, bytes, &mut out), in_place);
    if in_place.is_ok() {
        assert_eq!(out, buf);
        assert!(parsed.is_ok());
    }
    let _ = recover_plaintext(bytes);
    if let Ok(surb) = Surb::from_bytes(bytes) {
        assert_eq!(surb.to_bytes(), bytes);
        let mut reply = vec![0u8; 348 + 64];
        let _ = surb.write_reply(&bytes[..bytes.len().min(40)], &mut reply);
    }
    if let Ok(recovery) = SurbRecovery::from_bytes(bytes) {
        assert_eq!(recovery.to_bytes(), bytes);
        let mut payload = bytes.to_vec();
        let _ = recovery.recover(&mut payload);
    }
});
