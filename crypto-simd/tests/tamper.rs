//! Tampering: every single-bit flip of a header fails with the MAC reason; a flipped payload
//! bit is caught when the payload is recovered; failures leave the buffer untouched.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Case, rng};
use crypto_simd::sphinx::{
    DEFAULT_PAYLOAD_SIZE, HEADER_LEN, MIN_PAYLOAD_SIZE, PayloadError, ProcessError, Routing, Surb,
    process_in_place, recover_plaintext,
};

fn built(case: &Case, seed: u64) -> Vec<u8> {
    case.build(&mut rng(seed))
}

/// Processes `packet` through hops `from..` of `case`, returning the final payload or the
/// first error.
fn run_from(case: &Case, from: usize, mut packet: Vec<u8>) -> Result<Vec<u8>, ProcessError> {
    for node in &case.nodes[from..] {
        let processed = process_in_place(&node.secret, &mut packet)?;
        if let Routing::Final { .. } = processed.routing {
            return Ok(packet[HEADER_LEN..].to_vec());
        }
    }
    panic!("no final hop");
}

fn assert_every_header_bit_flip_fails_with_mac(case: &Case, at_hop: usize, packet: &[u8]) {
    let node = &case.nodes[at_hop];
    for bit in 0..HEADER_LEN * 8 {
        let mut tampered = packet.to_vec();
        tampered[bit / 8] ^= 1 << (bit % 8);
        let before = tampered.clone();
        assert_eq!(
            process_in_place(&node.secret, &mut tampered),
            Err(ProcessError::HeaderMac),
            "header bit {bit} flipped at hop {at_hop}"
        );
        assert_eq!(tampered, before, "a failed process changed the buffer");
    }
}

#[test]
fn every_header_bit_flip_fails_with_the_mac_reason_at_every_hop() {
    let mut r = rng(20);
    let case = Case::random(&mut r, 3, DEFAULT_PAYLOAD_SIZE);
    let mut packet = built(&case, 21);
    for hop in 0..case.nodes.len() {
        assert_every_header_bit_flip_fails_with_mac(&case, hop, &packet);
        process_in_place(&case.nodes[hop].secret, &mut packet).expect("untampered hop");
    }
}

#[test]
fn every_header_bit_flip_of_a_one_hop_packet_and_a_surb_reply_fails_with_the_mac_reason() {
    let mut r = rng(22);
    let case = Case::random(&mut r, 1, MIN_PAYLOAD_SIZE);
    assert_every_header_bit_flip_fails_with_mac(&case, 0, &built(&case, 23));

    let mut case = Case::random(&mut r, 4, 1024);
    case.destination.identifier[0] |= 1;
    let (surb, _) =
        Surb::new(&case.route(), &case.delays, &case.destination, &mut r).expect("surb");
    let mut reply = vec![0u8; case.packet_len()];
    surb.write_reply(b"reply", &mut reply).expect("reply");
    assert_every_header_bit_flip_fails_with_mac(&case, 0, &reply);
}

fn assert_payload_flip_is_caught(case: &Case, packet: &[u8], at_hop: usize, bit: usize) {
    // deliver the untampered packet to `at_hop`
    let mut p = packet.to_vec();
    for node in &case.nodes[..at_hop] {
        process_in_place(&node.secret, &mut p).expect("untampered hop");
    }
    p[HEADER_LEN + bit / 8] ^= 1 << (bit % 8);
    // the header is intact, so every hop processes it; the payload is garbled
    let payload = run_from(case, at_hop, p).expect("headers still authentic");
    assert_eq!(
        recover_plaintext(&payload),
        Err(PayloadError::Corrupt),
        "payload bit {bit} flipped before hop {at_hop}"
    );
}

#[test]
fn every_payload_bit_flip_of_a_smallest_packet_is_caught_at_recovery() {
    let mut r = rng(24);
    let case = Case::random(&mut r, 2, MIN_PAYLOAD_SIZE);
    let packet = built(&case, 25);
    for hop in 0..case.nodes.len() {
        for bit in 0..MIN_PAYLOAD_SIZE * 8 {
            assert_payload_flip_is_caught(&case, &packet, hop, bit);
        }
    }
}

#[test]
fn payload_bit_flips_of_a_default_packet_are_caught_at_recovery() {
    let mut r = rng(26);
    let case = Case::random(&mut r, 3, DEFAULT_PAYLOAD_SIZE);
    let packet = built(&case, 27);
    // the first and last bytes, the Lioness boundary, and a stride through the rest
    let bits = (0..64)
        .chain(248..264)
        .chain((DEFAULT_PAYLOAD_SIZE - 8) * 8..DEFAULT_PAYLOAD_SIZE * 8)
        .chain((0..DEFAULT_PAYLOAD_SIZE * 8).step_by(61));
    for bit in bits {
        for hop in 0..case.nodes.len() {
            assert_payload_flip_is_caught(&case, &packet, hop, bit);
        }
    }
}

#[test]
fn a_packet_for_another_node_fails_with_the_mac_reason() {
    let mut r = rng(28);
    let case = Case::random(&mut r, 2, 1024);
    let mut packet = built(&case, 29);
    assert_eq!(
        process_in_place(&case.nodes[1].secret, &mut packet),
        Err(ProcessError::HeaderMac)
    );
}

#[test]
fn a_small_order_alpha_is_refused() {
    let mut r = rng(30);
    let case = Case::random(&mut r, 2, 1024);
    let mut packet = built(&case, 31);
    // u = 0 and u = 1 have small order: X25519 gives zero for any scalar
    for u in [0u8, 1] {
        packet[..32].fill(0);
        packet[0] = u;
        assert_eq!(
            process_in_place(&case.nodes[0].secret, &mut packet),
            Err(ProcessError::LowOrderAlpha)
        );
    }
}

#[test]
fn wrong_lengths_are_refused_without_panicking() {
    let mut r = rng(32);
    let case = Case::random(&mut r, 1, 1024);
    for len in [
        0,
        1,
        HEADER_LEN - 1,
        HEADER_LEN,
        HEADER_LEN + MIN_PAYLOAD_SIZE - 1,
    ] {
        let mut buf = vec![0u8; len];
        assert_eq!(
            process_in_place(&case.nodes[0].secret, &mut buf),
            Err(ProcessError::TooShort)
        );
    }
    let mut huge = vec![0u8; 70_000];
    assert_eq!(
        process_in_place(&case.nodes[0].secret, &mut huge),
        Err(ProcessError::TooLong)
    );
}
