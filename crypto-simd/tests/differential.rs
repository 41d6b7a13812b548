//! Differential tests against `sphinx-packet` 0.8, both directions: packets (and SURB
//! replies) built by one implementation are processed hop by hop by both, and every output
//! must agree byte for byte: the next packet, replay tag, next hop, delay, destination,
//! identifier, final payload and recovered plaintext.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Case, PAYLOAD_SIZES, rng};
use crypto_simd::sphinx::{
    self, HEADER_LEN, MAX_HOPS, Processed, Routing, Surb, SurbRecovery, build_packet, process,
    process_in_place, recover_plaintext,
};
use rand_chacha::rand_core::Rng;
use sphinx_packet::version::{PAYLOAD_KEYS_SEEDS_VERSION, SINGLE_SEED_SURB_VERSION};
use sphinx_packet::{ProcessedPacketData, SURB, SURBMaterial, SphinxPacket, SphinxPacketBuilder};

const CASES: usize = 1_000;

/// The shape of case `i`: every route length with every payload size, in turn.
fn shape(i: usize) -> (usize, usize) {
    (
        1 + i % MAX_HOPS,
        PAYLOAD_SIZES[(i / MAX_HOPS) % PAYLOAD_SIZES.len()],
    )
}

/// Processes `packet` at every hop of `case` with both implementations, asserting they agree,
/// and returns the final hop's payload.
fn walk_both(case: &Case, packet: Vec<u8>, in_place: bool) -> Vec<u8> {
    let mut bytes = packet;
    let hops = case.nodes.len();
    for (i, node) in case.nodes.iter().enumerate() {
        let theirs = SphinxPacket::from_bytes(&bytes).expect("their parse");
        let their_tag = *theirs
            .header
            .compute_expanded_shared_secret(&node.their_secret)
            .replay_tag();
        let their = theirs.process(&node.their_secret).expect("their process");

        let mut out = vec![0u8; bytes.len()];
        let ours: Processed = if in_place {
            out.copy_from_slice(&bytes);
            process_in_place(&node.secret, &mut out).expect("our process")
        } else {
            process(&node.secret, &bytes, &mut out).expect("our process")
        };
        assert_eq!(ours.replay_tag.0, their_tag, "replay tag at hop {i}");
        assert_eq!(ours.version.0, their.version.value(), "version at hop {i}");

        match (ours.routing, their.data) {
            (
                Routing::Forward { next_hop, delay },
                ProcessedPacketData::ForwardHop {
                    next_hop_packet,
                    next_hop_address,
                    delay: their_delay,
                },
            ) => {
                assert!(i + 1 < hops, "forward at the last hop");
                assert_eq!(next_hop.0, next_hop_address.to_bytes());
                assert_eq!(next_hop, case.nodes[i + 1].hop.id);
                assert_eq!(delay.as_nanos(), their_delay.to_nanos());
                assert_eq!(delay, case.delays[i]);
                assert_eq!(out, next_hop_packet.to_bytes(), "next packet at hop {i}");
            }
            (
                Routing::Final { destination },
                ProcessedPacketData::FinalHop {
                    destination: their_destination,
                    identifier,
                    payload,
                },
            ) => {
                assert_eq!(i + 1, hops, "final before the last hop");
                assert_eq!(destination.address, their_destination.as_bytes());
                assert_eq!(destination.identifier, identifier);
                assert_eq!(destination, case.destination);
                assert_eq!(&out[HEADER_LEN..], payload.as_bytes(), "final payload");
                return out[HEADER_LEN..].to_vec();
            }
            _ => panic!("the implementations disagree on the kind of hop {i}"),
        }
        bytes = out;
    }
    panic!("no final hop");
}

#[test]
fn packets_built_by_sphinx_packet_process_identically() {
    let mut rng = rng(1);
    for i in 0..CASES {
        let (hops, size) = shape(i);
        let case = Case::random(&mut rng, hops, size);
        let initial = x25519_dalek::StaticSecret::random_from_rng(&mut rng);
        let packet = SphinxPacketBuilder::new()
            .with_payload_size(size)
            .with_initial_secret(&initial)
            .build_packet(
                &case.message,
                &case.their_route(),
                &case.their_destination(),
                &case.their_delays(),
            )
            .expect("their build")
            .to_bytes();
        assert_eq!(packet.len(), case.packet_len());
        let payload = walk_both(&case, packet, i % 2 == 0);
        assert_eq!(
            recover_plaintext(&payload).expect("our recovery"),
            &case.message[..]
        );
        let theirs = sphinx_packet::payload::Payload::from_bytes(&payload)
            .and_then(|p| p.recover_plaintext())
            .expect("their recovery");
        assert_eq!(theirs, case.message);
    }
}

#[test]
fn packets_built_by_us_process_identically() {
    let mut rng = rng(2);
    for i in 0..CASES {
        let (hops, size) = shape(i);
        let case = Case::random(&mut rng, hops, size);
        // the ephemeral secret is the first thing drawn: replay it into sphinx-packet
        let mut peek = rng.clone();
        let mut initial = [0u8; 32];
        peek.fill_bytes(&mut initial);

        let packet = case.build(&mut rng);

        // same ephemeral secret: same alpha and same payload (only the random padding of
        // the final routing slot, hence beta and gamma, differs)
        let theirs = SphinxPacketBuilder::new()
            .with_payload_size(size)
            .with_initial_secret(&x25519_dalek::StaticSecret::from(initial))
            .build_packet(
                &case.message,
                &case.their_route(),
                &case.their_destination(),
                &case.their_delays(),
            )
            .expect("their build")
            .to_bytes();
        assert_eq!(packet[..32], theirs[..32], "alpha");
        assert_eq!(packet[HEADER_LEN..], theirs[HEADER_LEN..], "payload");

        let payload = walk_both(&case, packet, i % 2 == 1);
        assert_eq!(
            recover_plaintext(&payload).expect("our recovery"),
            &case.message[..]
        );
    }
}

/// Makes the case's destination usable for a SURB (a non-zero identifier).
fn surb_case(rng: &mut rand_chacha::ChaCha20Rng, i: usize) -> Case {
    let (hops, size) = shape(i);
    let mut case = Case::random(rng, hops, size);
    case.destination.identifier[0] |= 1;
    case
}

#[test]
fn surb_replies_from_sphinx_packet_surbs_process_identically() {
    let mut rng = rng(3);
    for i in 0..CASES {
        let case = surb_case(&mut rng, i);
        let initial = x25519_dalek::StaticSecret::random_from_rng(&mut rng);
        let material = SURBMaterial::new(
            case.their_route(),
            case.their_delays(),
            case.their_destination(),
            SINGLE_SEED_SURB_VERSION,
        );
        let (their_surb, their_recovery) =
            SURB::new_recoverable(initial, material).expect("their SURB");
        let surb_bytes = their_surb.to_bytes();
        let recovery_bytes = their_recovery.to_bytes();

        let surb = Surb::from_bytes(&surb_bytes).expect("our SURB parse");
        assert_eq!(surb.to_bytes(), surb_bytes);
        assert_eq!(surb.first_hop(), case.nodes[0].hop.id);
        let mut reply = vec![0u8; case.packet_len()];
        let first = surb
            .write_reply(&case.message, &mut reply)
            .expect("our reply");
        assert_eq!(first, case.nodes[0].hop.id);
        let (their_reply, their_first) = their_surb
            .use_surb(&case.message, case.payload_size)
            .expect("their reply");
        assert_eq!(their_first.to_bytes(), first.0);
        assert_eq!(reply, their_reply.to_bytes(), "reply bytes");

        let mut payload = walk_both(&case, reply, i % 2 == 0);
        let their_plain = sphinx_packet::SurbReplyRecovery::from_bytes(&recovery_bytes)
            .expect("their recovery parse")
            .recover_plaintext(
                sphinx_packet::payload::Payload::from_bytes(&payload).expect("payload"),
            )
            .expect("their recovery");
        assert_eq!(their_plain, case.message);
        let recovery = SurbRecovery::from_bytes(&recovery_bytes).expect("our recovery parse");
        assert_eq!(recovery.to_bytes(), recovery_bytes);
        assert_eq!(recovery.identifier(), case.destination.identifier);
        assert_eq!(
            recovery.recover(&mut payload).expect("our recovery"),
            &case.message[..]
        );
    }
}

#[test]
fn surb_replies_from_our_surbs_process_identically() {
    let mut rng = rng(4);
    for i in 0..CASES {
        let case = surb_case(&mut rng, i);
        let (surb, recovery) =
            Surb::new(&case.route(), &case.delays, &case.destination, &mut rng).expect("our SURB");
        let their_surb = SURB::from_bytes(&surb.to_bytes()).expect("their SURB parse");
        assert_eq!(their_surb.materials_count(), 1);

        let mut reply = vec![0u8; case.packet_len()];
        surb.write_reply(&case.message, &mut reply)
            .expect("our reply");
        let (their_reply, _) = their_surb
            .use_surb(&case.message, case.payload_size)
            .expect("their reply");
        assert_eq!(reply, their_reply.to_bytes(), "reply bytes");

        let mut payload = walk_both(&case, reply, i % 2 == 1);
        let their_plain = sphinx_packet::SurbReplyRecovery::from_bytes(&recovery.to_bytes())
            .expect("their recovery parse")
            .recover_plaintext(
                sphinx_packet::payload::Payload::from_bytes(&payload).expect("payload"),
            )
            .expect("their recovery");
        assert_eq!(their_plain, case.message);
        assert_eq!(
            recovery.recover(&mut payload).expect("our recovery"),
            &case.message[..]
        );
    }
}

/// Version-259 SURBs carry one seed per hop and their replies are readable at the final hop
/// directly; we can use them too.
#[test]
fn multi_seed_surbs_from_sphinx_packet_give_identical_replies() {
    let mut rng = rng(5);
    for i in 0..200 {
        let case = surb_case(&mut rng, i);
        let material = SURBMaterial::new(
            case.their_route(),
            case.their_delays(),
            case.their_destination(),
            PAYLOAD_KEYS_SEEDS_VERSION,
        );
        let their_surb = SURB::new(
            x25519_dalek::StaticSecret::random_from_rng(&mut rng),
            material,
        )
        .expect("their SURB");
        let surb = Surb::from_bytes(&their_surb.to_bytes()).expect("our SURB parse");
        let mut reply = vec![0u8; case.packet_len()];
        surb.write_reply(&case.message, &mut reply)
            .expect("our reply");
        let (their_reply, _) = their_surb
            .use_surb(&case.message, case.payload_size)
            .expect("their reply");
        assert_eq!(reply, their_reply.to_bytes());
        let payload = walk_both(&case, reply, false);
        assert_eq!(
            recover_plaintext(&payload).expect("recovery"),
            &case.message[..]
        );
    }
}

#[test]
fn a_seeded_run_builds_identical_bytes() {
    let build = |seed| {
        let mut rng = rng(seed);
        let case = Case::random(&mut rng, 3, sphinx::DEFAULT_PAYLOAD_SIZE);
        let mut packet = vec![0u8; case.packet_len()];
        build_packet(
            &case.route(),
            &case.delays,
            &case.destination,
            &case.message,
            &mut rng,
            &mut packet,
        )
        .expect("build");
        packet
    };
    assert_eq!(build(9), build(9));
    assert_ne!(build(9), build(10));
}
