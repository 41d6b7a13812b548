//! Sphinx, ours against `sphinx-packet` 0.8, on the same packets in the same run:
//! unwrapping one packet at a hop, and creating a 3-hop (and 5-hop) packet, one at a time
//! and in batches of 64 on every X25519 backend this CPU supports.
//!
//! `cargo bench -p benches --bench sphinx`; figures go in `docs/benchmarks.md`.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use crypto_simd::sphinx::{
    self, DEFAULT_PAYLOAD_SIZE, Delay, Destination, HEADER_LEN, Hop, MixSecretKey, NodeId,
    PacketRequest, ProcessError,
};
use crypto_simd::x25519::{Backend, selection};

/// Packets per batch in the batched benchmarks.
const BATCH: usize = 64;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use sphinx_packet::route::{DestinationAddressBytes, Node, NodeAddressBytes};
use sphinx_packet::{SphinxPacket, SphinxPacketBuilder};

struct Net {
    secrets: Vec<MixSecretKey>,
    route: Vec<Hop>,
    delays: Vec<Delay>,
    destination: Destination,
}

impl Net {
    fn new(hops: usize, rng: &mut ChaCha20Rng) -> Self {
        let secrets: Vec<MixSecretKey> = (0..hops).map(|_| MixSecretKey::generate(rng)).collect();
        let route = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| Hop {
                id: NodeId([i as u8 + 1; 32]),
                key: s.public_key(),
            })
            .collect();
        Net {
            secrets,
            route,
            delays: vec![Delay::from_nanos(50_000_000); hops - 1],
            destination: Destination {
                address: [0xd5; 32],
                identifier: [0x1d; 16],
            },
        }
    }

    fn their_route(&self) -> Vec<Node> {
        self.route
            .iter()
            .map(|h| {
                Node::new(
                    NodeAddressBytes::from_bytes(h.id.0),
                    x25519_dalek::PublicKey::from(h.key.0),
                )
            })
            .collect()
    }

    fn their_delays(&self) -> Vec<sphinx_packet::header::delays::Delay> {
        self.delays
            .iter()
            .map(|d| d.as_nanos())
            .chain([0])
            .map(sphinx_packet::header::delays::Delay::new_from_nanos)
            .collect()
    }

    fn their_destination(&self) -> sphinx_packet::route::Destination {
        sphinx_packet::route::Destination::new(
            DestinationAddressBytes::from_bytes(self.destination.address),
            self.destination.identifier,
        )
    }
}

fn unwrap(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let net = Net::new(3, &mut rng);
    let mut group = c.benchmark_group("sphinx_unwrap");
    group.throughput(Throughput::Elements(1));
    for payload in [1024, DEFAULT_PAYLOAD_SIZE] {
        let len = HEADER_LEN + payload;
        let mut packet = vec![0u8; len];
        sphinx::build_packet(
            &net.route,
            &net.delays,
            &net.destination,
            b"benchmark",
            &mut rng,
            &mut packet,
        )
        .unwrap();
        let mut out = vec![0u8; len];
        group.bench_with_input(BenchmarkId::new("ours", len), &packet, |b, p| {
            b.iter(|| sphinx::process(&net.secrets[0], black_box(p), &mut out).unwrap())
        });
        let their_secret = x25519_dalek::StaticSecret::from(net.secrets[0].to_bytes());
        group.bench_with_input(BenchmarkId::new("sphinx-packet", len), &packet, |b, p| {
            b.iter(|| {
                SphinxPacket::from_bytes(black_box(p))
                    .unwrap()
                    .process(&their_secret)
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn create(c: &mut Criterion) {
    let mut group = c.benchmark_group("sphinx_create");
    group.throughput(Throughput::Elements(1));
    for hops in [3, 5] {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let net = Net::new(hops, &mut rng);
        let mut out = vec![0u8; HEADER_LEN + DEFAULT_PAYLOAD_SIZE];
        group.bench_function(BenchmarkId::new("ours", hops), |b| {
            b.iter(|| {
                sphinx::build_packet(
                    &net.route,
                    &net.delays,
                    &net.destination,
                    black_box(b"benchmark"),
                    &mut rng,
                    &mut out,
                )
                .unwrap()
            })
        });
        let (route, delays, destination) = (
            net.their_route(),
            net.their_delays(),
            net.their_destination(),
        );
        let builder = SphinxPacketBuilder::new().with_payload_size(DEFAULT_PAYLOAD_SIZE);
        group.bench_function(BenchmarkId::new("sphinx-packet", hops), |b| {
            b.iter(|| {
                builder
                    .build_packet(black_box(b"benchmark"), &route, &destination, &delays)
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn unwrap_batched(c: &mut Criterion) {
    println!("x25519 backend selected at run time: {:?}", selection());
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let net = Net::new(3, &mut rng);
    let len = HEADER_LEN + DEFAULT_PAYLOAD_SIZE;
    // 64 different packets (a relay sees many senders), all for the first hop
    let packets: Vec<Vec<u8>> = (0..BATCH)
        .map(|i| {
            let mut p = vec![0u8; len];
            let message = [i as u8; 32];
            sphinx::build_packet(
                &net.route,
                &net.delays,
                &net.destination,
                &message,
                &mut rng,
                &mut p,
            )
            .unwrap();
            p
        })
        .collect();
    let mut group = c.benchmark_group("sphinx_unwrap_batch");
    group.throughput(Throughput::Elements(BATCH as u64));
    for backend in Backend::supported() {
        let mut results = vec![Err(ProcessError::TooShort); BATCH];
        group.bench_function(BenchmarkId::new("ours", backend.name()), |b| {
            b.iter_batched_ref(
                || packets.clone(),
                |batch| {
                    sphinx::process_batch_in_place_on(
                        backend,
                        &net.secrets[0],
                        batch,
                        &mut results,
                    )
                    .unwrap();
                    assert!(results.iter().all(|r| r.is_ok()));
                },
                BatchSize::SmallInput,
            )
        });
    }
    let their_secret = x25519_dalek::StaticSecret::from(net.secrets[0].to_bytes());
    group.bench_function("sphinx-packet", |b| {
        b.iter(|| {
            for p in &packets {
                black_box(
                    SphinxPacket::from_bytes(black_box(p))
                        .unwrap()
                        .process(&their_secret)
                        .unwrap(),
                );
            }
        })
    });
    group.finish();
}

fn create_batched(c: &mut Criterion) {
    let mut group = c.benchmark_group("sphinx_create_batch");
    group.throughput(Throughput::Elements(BATCH as u64));
    for hops in [3, 5] {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let net = Net::new(hops, &mut rng);
        let requests: Vec<PacketRequest<'_>> = (0..BATCH)
            .map(|_| PacketRequest {
                route: &net.route,
                delays: &net.delays,
                destination: &net.destination,
                message: b"loop",
            })
            .collect();
        let mut outs = vec![vec![0u8; HEADER_LEN + DEFAULT_PAYLOAD_SIZE]; BATCH];
        let mut results = vec![Ok(()); BATCH];
        for backend in Backend::supported() {
            group.bench_function(
                BenchmarkId::new(format!("ours/{}", backend.name()), hops),
                |b| {
                    b.iter(|| {
                        sphinx::build_packets_on(
                            backend,
                            &requests,
                            &mut rng,
                            &mut outs,
                            &mut results,
                        )
                        .unwrap();
                        assert!(results.iter().all(|r| r.is_ok()));
                    })
                },
            );
        }
        let (route, delays, destination) = (
            net.their_route(),
            net.their_delays(),
            net.their_destination(),
        );
        let builder = SphinxPacketBuilder::new().with_payload_size(DEFAULT_PAYLOAD_SIZE);
        group.bench_function(BenchmarkId::new("sphinx-packet", hops), |b| {
            b.iter(|| {
                for _ in 0..BATCH {
                    black_box(
                        builder
                            .build_packet(black_box(b"loop"), &route, &destination, &delays)
                            .unwrap(),
                    );
                }
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(4));
    targets = unwrap, create, unwrap_batched, create_batched
}
criterion_main!(benches);
