//! Whole messages: RaptorQ encoding and decoding of a message's coded object, ours (one
//! source block, repair symbols made one at a time as an attempt needs them) against the
//! `raptorq` crate's stock object API (`Encoder::with_defaults` producing every packet up
//! front, `Decoder`), same data, same symbol size, same losses, same run; and the
//! messenger's whole path from a message to Sphinx packets and from packets back to the
//! message. `cargo bench -p benches --bench messages`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use anon::coding::{ObjectDecoder, ObjectEncoder};
use anon::{Messenger, MessengerConfig, SendOptions};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use engine::Event;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use raptorq::{Decoder, Encoder, EncodingPacket, ObjectTransmissionInformation};
use scheduler::Timestamp;
use stack::sim::{LinkModel, Sim, params};

/// The symbol size of a 1,452-byte packet: 1,087 bytes of plaintext less the 26-byte symbol
/// header, aligned to 8.
const T: usize = 1056;

fn data(len: usize) -> Vec<u8> {
    let mut d = vec![0u8; len];
    ChaCha20Rng::seed_from_u64(len as u64).fill_bytes(&mut d);
    d
}

/// Which symbols arrive: every source symbol but one in ten, and enough repair symbols.
fn arrivals(k: u32) -> Vec<u32> {
    let mut esis: Vec<u32> = (0..k).filter(|e| e % 10 != 3).collect();
    let lost = k as usize - esis.len();
    esis.extend(k..k + lost as u32 + 2);
    esis
}

fn coding(c: &mut Criterion) {
    for len in [64 * 1024usize, 1 << 20] {
        let object = data(len);
        let mut group = c.benchmark_group(format!("raptorq_encode_{}KiB", len / 1024));
        group.throughput(Throughput::Bytes(len as u64));
        group.sample_size(20);
        // an attempt's worth: k source symbols and 20% repair
        group.bench_function("ours", |b| {
            let mut out = vec![0u8; T];
            b.iter(|| {
                let enc = ObjectEncoder::new(black_box(&object), T).unwrap();
                let k = enc.k();
                for esi in 0..k + k / 5 {
                    enc.symbol(esi, &mut out);
                    black_box(&out);
                }
            })
        });
        group.bench_function("raptorq_stock", |b| {
            b.iter(|| {
                let enc = Encoder::with_defaults(black_box(&object), T as u16);
                let k = len.div_ceil(T) as u32;
                black_box(enc.get_encoded_packets(k / 5));
            })
        });
        group.finish();

        let enc = ObjectEncoder::new(&object, T).unwrap();
        let k = enc.k();
        let mut symbols = Vec::new();
        for esi in arrivals(k) {
            let mut s = vec![0u8; T];
            enc.symbol(esi, &mut s);
            symbols.push((esi, s));
        }
        let stock_config = ObjectTransmissionInformation::with_defaults(len as u64, T as u16);
        let stock = Encoder::new(&object, stock_config);
        let stock_packets: Vec<EncodingPacket> = stock
            .get_encoded_packets(k / 5)
            .into_iter()
            .filter(|p| p.payload_id().encoding_symbol_id() % 10 != 3)
            .collect();
        let mut group = c.benchmark_group(format!("raptorq_decode_{}KiB", len / 1024));
        group.throughput(Throughput::Bytes(len as u64));
        group.sample_size(20);
        group.bench_function("ours", |b| {
            b.iter(|| {
                let mut dec = ObjectDecoder::new(len, T).unwrap();
                for (esi, s) in &symbols {
                    if dec.add(*esi, s).is_some() {
                        break;
                    }
                }
                assert_eq!(dec.result().map(<[u8]>::len), Some(len));
            })
        });
        group.bench_function("raptorq_stock", |b| {
            b.iter(|| {
                let mut dec = Decoder::new(stock_config);
                let mut out = None;
                for p in &stock_packets {
                    out = dec.decode(p.clone());
                    if out.is_some() {
                        break;
                    }
                }
                assert_eq!(out.map(|o| o.len()), Some(len));
            })
        });
        group.finish();
    }
}

/// A messenger of a node of a small simulated network (one attempt, so that a message is
/// forgotten at its timeout), and the peer it sends to.
fn messengers() -> (Sim<stack::Raw>, Messenger, Messenger) {
    let sim = Sim::new(6, 1, params(3), 1000.0, LinkModel::PERFECT);
    let make = |i: usize| {
        let config = MessengerConfig {
            attempts: 1,
            ..MessengerConfig::default()
        };
        let mut m = Messenger::new(sim.nodes[i].identity.clone(), config, [i as u8; 32]);
        m.set_paths(sim.nodes[i].engine().paths().unwrap());
        m
    };
    let (a, b) = (make(0), make(3));
    (sim, a, b)
}

/// What the recipient's engine hands up for a message (the plaintexts of the symbols that
/// arrive: nine source symbols in ten and enough repair), under a fresh message ID.
fn symbol_events(message: &[u8], seed: u64) -> Vec<Event> {
    let mut id = [0u8; 16];
    ChaCha20Rng::seed_from_u64(seed).fill_bytes(&mut id);
    let digest = anon::identity::digest(&id, 0, message);
    let object = anon::wire::write_object(0, &digest, None, &[], &[], message);
    let enc = ObjectEncoder::new(&object, T).unwrap();
    arrivals(enc.k())
        .into_iter()
        .map(|esi| {
            let mut p = Vec::new();
            anon::wire::write_symbol_header(&mut p, &id, 1, object.len() as u32, esi);
            let at = p.len();
            p.resize(at + T, 0);
            enc.symbol(esi, &mut p[at..]);
            Event::Message {
                identifier: [1; 16],
                payload: p,
            }
        })
        .collect()
}

fn messenger(c: &mut Criterion) {
    let (sim, mut a, mut b) = messengers();
    let dest = sim.node_id(3);
    let hour = std::time::Duration::from_secs(3600);
    let mut t = Timestamp::ZERO;
    for len in [4096usize, 64 * 1024] {
        let message = data(len);
        let mut group = c.benchmark_group(format!("message_{}KiB", len / 1024));
        group.throughput(Throughput::Bytes(len as u64));
        group.sample_size(20);
        // message -> every Sphinx packet of its first attempt, built (RaptorQ, SURBs,
        // Sphinx headers and payload encryption): one at a time, and 16 at a time as the
        // node's messaging thread builds them
        let mut buf = Vec::new();
        group.bench_function(BenchmarkId::new("to_packets_one_by_one", len), |bench| {
            bench.iter(|| {
                a.send(t, dest, &message, SendOptions::default()).unwrap();
                while a.poll_packet(t, &mut buf).is_some() {
                    black_box(&buf);
                }
                t = t.saturating_add(hour);
                a.handle_timeout(t);
                while a.poll_event().is_some() {}
                t = t.saturating_add(hour);
            })
        });
        let mut bufs = vec![Vec::new(); engine::FORWARD_BATCH];
        let mut hops = [[0u8; 32]; engine::FORWARD_BATCH];
        group.bench_function(BenchmarkId::new("to_packets", len), |bench| {
            bench.iter(|| {
                a.send(t, dest, &message, SendOptions::default()).unwrap();
                while a.poll_packets(t, &mut bufs, &mut hops) > 0 {
                    black_box(&bufs);
                }
                // its timeout: forgotten, so the next iteration starts afresh
                t = t.saturating_add(hour);
                a.handle_timeout(t);
                while a.poll_event().is_some() {}
                t = t.saturating_add(hour);
            })
        });
        // the recipient: the symbols' plaintexts (already unwrapped by its engine) -> the
        // message, decoded, digest checked, delivered
        let batches: Vec<Vec<Event>> = (0..64).map(|i| symbol_events(&message, i)).collect();
        let mut i = 0;
        group.bench_function(BenchmarkId::new("from_symbols", len), |bench| {
            bench.iter(|| {
                for e in &batches[i % batches.len()] {
                    b.handle_event(t, e);
                }
                let mut got = false;
                while let Some(ev) = b.poll_event() {
                    got |= matches!(ev, anon::MessengerEvent::Received(_));
                }
                assert!(got);
                i += 1;
                // forget the IDs recovered, so that each batch decodes afresh next round
                t = t.saturating_add(hour * 2);
                b.handle_timeout(t);
            })
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(5));
    targets = coding, messenger
}
criterion_main!(benches);
