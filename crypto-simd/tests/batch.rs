//! The batched paths give, packet by packet, exactly what the single-packet paths and
//! `sphinx-packet` 0.8 give, on mixed batches of valid, tampered, replayed, misdirected and
//! malformed packets of every batch length. Runs on the backend selected at run time (CI
//! runs it once per backend with `MIXED_X25519_BACKEND`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Case, rng};
use crypto_simd::sphinx::{
    BuildError, DEFAULT_PAYLOAD_SIZE, HEADER_LEN, PacketRequest, ProcessError, Processed,
    build_packet, build_packets, process_batch_in_place, process_in_place,
};
use crypto_simd::x25519::selected;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::Rng;
use sphinx_packet::{ProcessedPacketData, SphinxPacket};

/// A batch of packets whose first hop is one node (returned with them): valid packets of
/// 1 to 5 hops and three payload sizes, with some damaged, replayed or truncated.
fn mixed_batch(
    rng: &mut ChaCha20Rng,
    count: usize,
) -> (crypto_simd::sphinx::MixSecretKey, Vec<Vec<u8>>) {
    let first = Case::random(rng, 1, DEFAULT_PAYLOAD_SIZE);
    let secret = first.nodes[0].secret.clone();
    let mut packets: Vec<Vec<u8>> = vec![];
    for i in 0..count {
        let hops = 1 + (rng.next_u32() % 5) as usize;
        let size = [1024, DEFAULT_PAYLOAD_SIZE, 33][i % 3];
        let mut case = Case::random(rng, hops, size);
        case.nodes[0].hop = first.nodes[0].hop;
        let mut packet = case.build(rng);
        match rng.next_u32() % 8 {
            // a header bit flip (not bit 255 of alpha, which 0.8 does not catch)
            0 => {
                let bit = 32 * 8 + (rng.next_u32() as usize) % ((HEADER_LEN - 32) * 8);
                packet[bit / 8] ^= 1 << (bit % 8);
            }
            // a payload flip: processes fine, garbled at the end
            1 => {
                let at = HEADER_LEN + (rng.next_u32() as usize) % size;
                packet[at] ^= 0x40;
            }
            // a replay of an earlier packet of the batch
            2 if !packets.is_empty() => {
                let j = (rng.next_u32() as usize) % packets.len();
                packet = packets[j].clone();
            }
            // truncated
            3 => packet.truncate(HEADER_LEN + 10),
            // meant for another node
            4 => {
                let other = Case::random(rng, 2, size);
                build_packet(
                    &other.route(),
                    &other.delays,
                    &other.destination,
                    &[],
                    rng,
                    &mut packet,
                )
                .unwrap();
            }
            _ => {}
        }
        packets.push(packet);
    }
    (secret, packets)
}

fn single_results(
    secret: &crypto_simd::sphinx::MixSecretKey,
    packets: &[Vec<u8>],
) -> (Vec<Vec<u8>>, Vec<Result<Processed, ProcessError>>) {
    let mut out = packets.to_vec();
    let results = out
        .iter_mut()
        .map(|p| process_in_place(secret, p))
        .collect();
    (out, results)
}

#[test]
fn batched_unwrap_equals_the_single_path_at_every_batch_length() {
    let mut r = rng(60);
    let lanes = selected().lanes();
    let lengths: Vec<usize> = (1..=2 * lanes + 1).chain([63, 64, 65, 130]).collect();
    let (mut ok, mut failed) = (0, 0);
    for len in lengths {
        let (secret, packets) = mixed_batch(&mut r, len);
        let secret = &secret;
        let (expected_bytes, expected) = single_results(secret, &packets);
        let mut batch = packets.clone();
        let mut results = vec![Err(ProcessError::TooShort); len];
        process_batch_in_place(secret, &mut batch, &mut results).unwrap();
        assert_eq!(results, expected, "batch of {len} on {:?}", selected());
        assert_eq!(batch, expected_bytes, "batch of {len} on {:?}", selected());
        ok += results.iter().filter(|r| r.is_ok()).count();
        failed += results.iter().filter(|r| r.is_err()).count();
    }
    // the batches did mix successes and failures
    assert!(ok > 100 && failed > 50, "{ok} ok, {failed} failed");
}

#[test]
fn batched_unwrap_equals_sphinx_packet_on_mixed_batches() {
    let mut r = rng(61);
    for round in 0..20 {
        let (secret, packets) = mixed_batch(&mut r, 40 + round);
        let their_secret = x25519_dalek::StaticSecret::from(secret.to_bytes());
        let mut batch = packets.clone();
        let mut results = vec![Err(ProcessError::TooShort); batch.len()];
        process_batch_in_place(&secret, &mut batch, &mut results).unwrap();
        let mut seen_tags = std::collections::HashSet::new();
        for ((original, ours), result) in packets.iter().zip(&batch).zip(&results) {
            let theirs = SphinxPacket::from_bytes(original).and_then(|p| {
                let tag = *p
                    .header
                    .compute_expanded_shared_secret(&their_secret)
                    .replay_tag();
                p.process(&their_secret).map(|processed| (tag, processed))
            });
            match (result, theirs) {
                (Ok(processed), Ok((tag, their))) => {
                    assert_eq!(processed.replay_tag.0, tag);
                    match their.data {
                        ProcessedPacketData::ForwardHop {
                            next_hop_packet, ..
                        } => {
                            assert_eq!(ours, &next_hop_packet.to_bytes())
                        }
                        ProcessedPacketData::FinalHop { payload, .. } => {
                            assert_eq!(&ours[HEADER_LEN..], payload.as_bytes())
                        }
                    }
                    // a replay shows as a repeated tag: what the node's filter drops
                    seen_tags.insert(tag);
                }
                (Err(_), Err(_)) => assert_eq!(ours, original, "a failed packet changed"),
                (ours, theirs) => panic!(
                    "disagreement: ours {ours:?}, theirs ok = {}",
                    theirs.is_ok()
                ),
            }
        }
        assert!(!seen_tags.is_empty());
    }
}

fn requests_for(cases: &[Case]) -> Vec<(Vec<crypto_simd::sphinx::Hop>, usize)> {
    cases.iter().map(|c| (c.route(), c.packet_len())).collect()
}

#[test]
fn batched_creation_equals_sequential_single_builds() {
    let mut r = rng(62);
    for count in [1, 3, 8, 16, 17, 40] {
        let mut cases: Vec<Case> = (0..count)
            .map(|i| Case::random(&mut r, 3 + i % 3, [DEFAULT_PAYLOAD_SIZE, 1024, 33][i % 3]))
            .collect();
        // some requests that must fail without disturbing the others
        if count > 3 {
            cases[1]
                .delays
                .push(crypto_simd::sphinx::Delay::from_nanos(1));
            cases[2].message = vec![1u8; cases[2].payload_size];
        }
        let routes = requests_for(&cases);
        let requests: Vec<PacketRequest<'_>> = cases
            .iter()
            .zip(&routes)
            .map(|(c, (route, _))| PacketRequest {
                route,
                delays: &c.delays,
                destination: &c.destination,
                message: &c.message,
            })
            .collect();

        let seed = r.next_u64();
        let mut single_rng = rng(seed);
        let mut expected = vec![];
        let mut expected_results = vec![];
        for (c, (route, len)) in cases.iter().zip(&routes) {
            let mut out = vec![0u8; *len];
            let result = build_packet(
                route,
                &c.delays,
                &c.destination,
                &c.message,
                &mut single_rng,
                &mut out,
            );
            expected.push(out);
            expected_results.push(result);
        }

        let mut batch_rng = rng(seed);
        let mut outs: Vec<Vec<u8>> = routes.iter().map(|(_, len)| vec![0u8; *len]).collect();
        let mut results = vec![Err(BuildError::EmptyRoute); count];
        build_packets(&requests, &mut batch_rng, &mut outs, &mut results).unwrap();
        assert_eq!(
            results,
            expected_results,
            "{count} requests on {:?}",
            selected()
        );
        for (i, (ours, theirs)) in outs.iter().zip(&expected).enumerate() {
            if results[i].is_ok() {
                assert_eq!(ours, theirs, "request {i} of {count}");
            }
        }
        if count > 3 {
            assert_eq!(results[1], Err(BuildError::DelayCount));
            assert_eq!(results[2], Err(BuildError::MessageTooLong));
        }
        // both RNGs end in the same state
        assert_eq!(single_rng.next_u64(), batch_rng.next_u64());

        // and sphinx-packet delivers what the batch built
        for (c, packet) in cases
            .iter()
            .zip(&outs)
            .take(3)
            .filter(|(c, _)| c.delays.len() + 1 == c.nodes.len())
        {
            if c.message.len() + 17 > c.payload_size {
                continue;
            }
            let mut bytes = packet.clone();
            for node in &c.nodes {
                match SphinxPacket::from_bytes(&bytes)
                    .unwrap()
                    .process(&node.their_secret)
                    .unwrap()
                    .data
                {
                    ProcessedPacketData::ForwardHop {
                        next_hop_packet, ..
                    } => bytes = next_hop_packet.to_bytes(),
                    ProcessedPacketData::FinalHop { payload, .. } => {
                        assert_eq!(payload.recover_plaintext().unwrap(), c.message);
                    }
                }
            }
        }
    }
}

#[test]
fn mismatched_batch_lengths_are_refused() {
    let mut r = rng(63);
    let case = Case::random(&mut r, 1, 33);
    let mut packets = vec![vec![0u8; case.packet_len()]; 2];
    let mut results = vec![Err(ProcessError::TooShort); 3];
    assert!(process_batch_in_place(&case.nodes[0].secret, &mut packets, &mut results).is_err());
    let mut results: Vec<Result<(), BuildError>> = vec![Ok(()); 1];
    assert!(build_packets(&[], &mut r, &mut packets, &mut results).is_err());
}

#[test]
fn cover_packets_have_the_headers_of_packets_and_random_bodies() {
    let mut r = rng(63);
    for count in [1, 8, 9] {
        let cases: Vec<Case> = (0..count)
            .map(|_| Case::random(&mut r, 1, DEFAULT_PAYLOAD_SIZE))
            .collect();
        let routes = requests_for(&cases);
        let requests: Vec<PacketRequest<'_>> = cases
            .iter()
            .zip(&routes)
            .map(|(c, (route, _))| PacketRequest {
                route,
                delays: &c.delays,
                destination: &c.destination,
                message: &[],
            })
            .collect();
        let seed = r.next_u64();
        let mut plain: Vec<Vec<u8>> = routes.iter().map(|(_, len)| vec![0u8; *len]).collect();
        let mut cover = plain.clone();
        let mut results = vec![Err(BuildError::EmptyRoute); count];
        build_packets(&requests, &mut rng(seed), &mut plain, &mut results).unwrap();
        assert!(results.iter().all(Result::is_ok));
        crypto_simd::sphinx::build_cover_packets(
            &requests,
            &mut rng(seed),
            &mut cover,
            &mut results,
        )
        .unwrap();
        assert!(results.iter().all(Result::is_ok));
        for (i, c) in cases.iter().enumerate() {
            // the same header as the packet built with the same randomness
            assert_eq!(cover[i][..HEADER_LEN], plain[i][..HEADER_LEN], "packet {i}");
            assert_ne!(cover[i][HEADER_LEN..], plain[i][HEADER_LEN..]);
            // the hop (and sphinx-packet) processes it as any final hop: MAC good, routed
            // here; the body does not decrypt to a plaintext
            let mut ours = cover[i].clone();
            let processed = process_in_place(&c.nodes[0].secret, &mut ours).unwrap();
            assert!(matches!(
                processed.routing,
                crypto_simd::sphinx::Routing::Final { destination } if destination == c.destination
            ));
            assert!(crypto_simd::sphinx::recover_plaintext(&ours[HEADER_LEN..]).is_err());
            match SphinxPacket::from_bytes(&cover[i])
                .unwrap()
                .process(&c.nodes[0].their_secret)
                .unwrap()
                .data
            {
                ProcessedPacketData::FinalHop { payload, .. } => {
                    assert!(payload.recover_plaintext().is_err())
                }
                ProcessedPacketData::ForwardHop { .. } => panic!("a one-hop packet forwarded"),
            }
        }
        // bodies are not all one: random per packet
        if count > 1 {
            assert_ne!(cover[0][HEADER_LEN..], cover[1][HEADER_LEN..]);
        }
    }
}
