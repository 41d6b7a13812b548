//! Arbitrary bytes never make the packet layer panic: every entry point that takes bytes
//! returns a typed reason instead.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Case, rng};
use crypto_simd::sphinx::{
    DEFAULT_PAYLOAD_SIZE, HEADER_LEN, MixSecretKey, Packet, ProcessError, Surb, SurbRecovery,
    process, process_in_place, recover_plaintext,
};
use proptest::prelude::*;

fn any_len_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_bytes_are_refused_with_a_reason(bytes in any_len_bytes(2 * HEADER_LEN + 200), key in any::<[u8; 32]>()) {
        let secret = MixSecretKey::from_bytes(key);
        let mut buf = bytes.clone();
        let in_place = process_in_place(&secret, &mut buf);
        // random bytes carry a valid MAC with probability 2^-128
        prop_assert!(in_place.is_err());
        prop_assert_eq!(&buf, &bytes, "a failed process changed the buffer");
        let mut out = vec![0u8; bytes.len()];
        prop_assert_eq!(process(&secret, &bytes, &mut out), in_place);
        match Packet::parse(&bytes) {
            Ok(p) => prop_assert_eq!(p.len(), bytes.len()),
            Err(e) => prop_assert!(matches!(e, ProcessError::TooShort | ProcessError::TooLong)),
        }
        let _ = recover_plaintext(&bytes);
        let _ = Surb::from_bytes(&bytes);
        if let Ok(recovery) = SurbRecovery::from_bytes(&bytes) {
            let mut payload = bytes.clone();
            let _ = recovery.recover(&mut payload);
        }
    }

    #[test]
    fn mismatched_output_buffers_are_refused(extra in 1usize..64, shorter in any::<bool>()) {
        let mut r = rng(50);
        let case = Case::random(&mut r, 2, DEFAULT_PAYLOAD_SIZE);
        let mut packet = vec![0u8; case.packet_len()];
        crypto_simd::sphinx::build_packet(&case.route(), &case.delays, &case.destination, &case.message, &mut r, &mut packet).unwrap();
        let len = if shorter { packet.len() - extra } else { packet.len() + extra };
        let mut out = vec![0u8; len];
        prop_assert_eq!(process(&case.nodes[0].secret, &packet, &mut out), Err(ProcessError::OutputLength));
    }
}

#[test]
fn mutated_valid_packets_fail_or_are_unchanged() {
    // a byte-level mutation fuzzer over a valid packet, seeded: several bytes changed at once
    let mut r = rng(51);
    let case = Case::random(&mut r, 3, 1024);
    let mut packet = vec![0u8; case.packet_len()];
    crypto_simd::sphinx::build_packet(
        &case.route(),
        &case.delays,
        &case.destination,
        &case.message,
        &mut r,
        &mut packet,
    )
    .unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..2_000 {
        let mut p = packet.clone();
        let edits = 1 + next() % 4;
        for _ in 0..edits {
            let at = (next() % HEADER_LEN as u64) as usize;
            p[at] ^= (next() % 255 + 1) as u8;
        }
        let unchanged = p == packet;
        let result = process_in_place(&case.nodes[0].secret, &mut p);
        if unchanged {
            assert!(result.is_ok());
        } else {
            assert_eq!(result, Err(ProcessError::HeaderMac));
        }
    }
}
