//! The engine on the deterministic test network. Every test names its seed in its failure
//! messages; `Sim::new` with that seed replays the run bit for bit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::Duration;

use engine::{DropReason, Event};
use scheduler::Timestamp;
use stack::sim::{LinkModel, Sim, params};

fn at(seconds: f64) -> Timestamp {
    Timestamp::from_nanos((seconds * 1e9) as u64)
}

fn delivered(sim: &Sim<stack::Raw>) -> HashMap<[u8; 16], (usize, Vec<u8>)> {
    let mut out = HashMap::new();
    for (i, node) in sim.nodes.iter().enumerate() {
        for (_, e) in &node.events {
            if let Event::Message {
                identifier,
                payload,
            } = e
            {
                assert!(
                    out.insert(*identifier, (i, payload.clone())).is_none(),
                    "seed {}: message delivered twice",
                    sim.seed
                );
            }
        }
    }
    out
}

#[test]
fn twenty_nodes_deliver_every_message_over_three_hops() {
    let seed = 1;
    let mut sim = Sim::new(20, seed, params(3), 100.0, LinkModel::PERFECT);
    sim.run_until(at(0.5));
    let mut sent = HashMap::new();
    for round in 0..5 {
        for from in 0..20 {
            let to = (from + 1 + round * 3) % 20;
            let payload = format!("message {round} from {from} to {to}").into_bytes();
            let dest = sim.node_id(to);
            let id = sim.nodes[from]
                .stack
                .engine_mut()
                .send_message(dest, &payload)
                .unwrap_or_else(|e| panic!("seed {seed}: send: {e}"));
            sent.insert(id, (to, payload));
        }
    }
    sim.run_until(at(5.0));
    let got = delivered(&sim);
    assert_eq!(
        got.len(),
        sent.len(),
        "seed {seed}: {} of {} delivered",
        got.len(),
        sent.len()
    );
    for (id, want) in &sent {
        assert_eq!(got.get(id), Some(want), "seed {seed}");
    }
    for node in &sim.nodes {
        let c = node.engine().counters();
        assert_eq!(c.drops(DropReason::ForwardBudget), 0, "seed {seed}: {c:?}");
        assert!(
            c.loops_returned > 0 && c.cover_received > 0,
            "seed {seed}: {c:?}"
        );
    }
}

#[test]
fn with_five_percent_loss_per_link_loops_return_at_the_expected_rate() {
    let seed = 2;
    let link = LinkModel {
        loss: 0.05,
        ..LinkModel::PERFECT
    };
    let mut sim = Sim::new(20, seed, params(3), 100.0, link);
    sim.run_until(at(60.0));
    let (mut returned, mut lost, mut budget_drops) = (0, 0, 0);
    for node in &sim.nodes {
        let c = node.engine().counters();
        returned += c.loops_returned;
        lost += c.loops_lost;
        budget_drops += c.drops(DropReason::ForwardBudget) + c.drops(DropReason::ForwardQueueFull);
    }
    // a loop of three hops crosses four links: it returns with probability 0.95^4 (losses
    // count after the 2-second loop timeout, returns at once: over 60 s the estimate leans
    // high by about 2/60 of the loss fraction, 0.006)
    let expected = 0.95f64.powi(4);
    let rate = returned as f64 / (returned + lost) as f64;
    assert!(
        returned + lost > 5_000,
        "seed {seed}: only {} loops ended",
        returned + lost
    );
    assert_eq!(budget_drops, 0, "seed {seed}: forwards dropped for budget");
    assert!(
        (rate - expected).abs() < 0.02,
        "seed {seed}: loops returned at {rate:.4}, expected {expected:.4} ({returned} returned, {lost} lost)"
    );
}

#[test]
fn replays_and_tampered_packets_are_dropped_and_counted() {
    replays_and_tampering(&|_| {});
}

#[test]
fn staged_datagrams_are_routed_as_those_unwrapped_at_once() {
    // the node runtime's ingress hold: datagrams wait in pool buffers for a group of
    // lanes; the same deliveries, the same replays and tampering caught
    replays_and_tampering(&|c| c.ingress_hold = engine::DEFAULT_INGRESS_HOLD);
}

fn replays_and_tampering(tweak: &dyn Fn(&mut engine::EngineConfig)) {
    let seed = 3;
    let link = LinkModel {
        replay: 0.05,
        duplicate: 0.02,
        tamper: 0.02,
        ..LinkModel::PERFECT
    };
    let mut sim = Sim::with_engines(10, seed, params(3), 100.0, link, tweak);
    sim.run_until(at(0.5));
    let mut sent = 0;
    for from in 0..10 {
        for k in 0..5 {
            let to = (from + 1 + k) % 10;
            let dest = sim.node_id(to);
            sim.nodes[from]
                .stack
                .engine_mut()
                .send_message(dest, b"hello")
                .unwrap();
            sent += 1;
        }
    }
    sim.run_until(at(20.0));
    let got = delivered(&sim); // panics on a duplicate delivery
    assert!(
        got.values().all(|(_, p)| p == b"hello"),
        "seed {seed}: a corrupt delivery"
    );
    let mut total = engine::Counters::default();
    for node in &sim.nodes {
        total.add(node.engine().counters());
    }
    assert!(
        total.drops(DropReason::Replay) > 100,
        "seed {seed}: {total:?}"
    );
    assert!(
        total.drops(DropReason::HeaderMac) > 10,
        "seed {seed}: {total:?}"
    );
    // a tampered body is caught where it is read: a message's symbols fail to decode (no
    // corrupt delivery above); drop cover's body is random and read by nobody
    assert!(sim.stats.replayed > 100 && sim.stats.tampered > 10);
    // most messages still arrive (a tampered packet of a message is lost with it)
    assert!(
        got.len() * 10 >= sent * 8,
        "seed {seed}: {} of {sent}",
        got.len()
    );
}

#[test]
fn a_node_emits_the_same_packets_idle_and_at_its_maximum_own_rate() {
    let seed = 4;
    let run = |busy: bool| {
        let mut sim = Sim::new(6, seed, params(3), 200.0, LinkModel::PERFECT);
        let dest = sim.node_id(3);
        let mut t = 0.0;
        let mut departures = Vec::new();
        while t < 100.0 {
            t += 0.05;
            if busy {
                // keep node 0's own queue full
                while sim.nodes[0].engine().own_queued() < 32 {
                    sim.nodes[0]
                        .stack
                        .engine_mut()
                        .send_message(dest, b"busy")
                        .unwrap();
                }
            }
            sim.run_until(at(t));
            departures.push(sim.nodes[0].engine().counters().total_sent());
        }
        (sim.nodes[0].engine().counters().clone(), departures)
    };
    let (idle, idle_departures) = run(false);
    let (busy, busy_departures) = run(true);
    assert_eq!(idle.sent_own, 0);
    assert!(
        busy.sent_own > 1000,
        "seed {seed}: own data sent {}",
        busy.sent_own
    );
    let ratio = busy.total_sent() as f64 / idle.total_sent() as f64;
    assert!(
        (ratio - 1.0).abs() < 0.01,
        "seed {seed}: idle sent {}, busy sent {}",
        idle.total_sent(),
        busy.total_sent()
    );
    // departure times come from the emission clock alone: the same, step by step
    assert_eq!(idle_departures, busy_departures, "seed {seed}");
}

#[test]
fn garbage_and_wrong_sizes_are_counted_never_crash() {
    let seed = 5;
    let mut sim = Sim::new(4, seed, params(3), 50.0, LinkModel::PERFECT);
    sim.run_until(at(0.2));
    for len in [0usize, 1, 347, 348, 1000, 1451, 1453, 9000] {
        sim.inject(1, vec![0xab; len]);
    }
    sim.inject(1, vec![0u8; 1452]);
    sim.inject(1, vec![0xff; 1452]);
    sim.run_until(at(1.0));
    let c = sim.nodes[1].engine().counters();
    assert_eq!(c.drops(DropReason::WrongSize), 8, "seed {seed}: {c:?}");
    assert!(
        c.drops(DropReason::HeaderMac) + c.drops(DropReason::LowOrderAlpha) >= 2,
        "seed {seed}: {c:?}"
    );
    let _ = Duration::ZERO;
}

#[test]
fn packets_built_in_a_batch_arrive_and_a_bad_item_fails_alone() {
    let seed = 8;
    let mut sim = Sim::new(8, seed, params(3), 100.0, LinkModel::PERFECT);
    sim.run_until(at(0.2));
    let paths = sim.nodes[0].engine().paths().unwrap();
    let texts: Vec<Vec<u8>> = (0..5)
        .map(|i| format!("batched {i}").into_bytes())
        .collect();
    let items: Vec<engine::ForwardItem<'_>> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| engine::ForwardItem {
            // item 2 names a node that does not exist
            destination: if i == 2 { [7; 32] } else { sim.node_id(1 + i) },
            hops: 3,
            identifier: [i as u8 + 1; 16],
            plaintext: t,
        })
        .collect();
    let mut storage = vec![vec![0u8; paths.packet_size()]; 5];
    let mut outs: Vec<&mut [u8]> = storage.iter_mut().map(|v| &mut v[..]).collect();
    let mut first = [[0u8; 32]; 5];
    let mut results = [Ok(()); 5];
    let mut rng = <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::seed_from_u64(seed);
    paths.forward_batch(&items, &mut rng, &mut outs, &mut first, &mut results);
    assert_eq!(results[2], Err(engine::SendError::UnknownDestination));
    for i in [0, 1, 3, 4] {
        assert!(results[i].is_ok(), "seed {seed}: {:?}", results[i]);
        let hop = (0..8).find(|&j| sim.node_id(j) == first[i]).unwrap();
        sim.inject(hop, storage[i].clone());
    }
    sim.run_until(at(3.0));
    let got = delivered(&sim);
    for i in [0usize, 1, 3, 4] {
        assert_eq!(
            got.get(&[i as u8 + 1; 16]),
            Some(&(1 + i, texts[i].clone())),
            "seed {seed}: item {i}"
        );
    }
}

#[test]
fn a_key_prepared_ahead_is_honoured_before_its_epoch_with_its_own_replay_filter() {
    use crypto_simd::sphinx::{self, Destination, Hop, MixSecretKey, NodeId};
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;
    let seed = 11;
    let mut sim = Sim::new(3, seed, params(3), 50.0, LinkModel::PERFECT);
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let next = MixSecretKey::generate(&mut rng);
    let id = sim.node_id(0);
    let packet_under = |key: &MixSecretKey, rng: &mut ChaCha20Rng, text: &[u8]| {
        let mut p = vec![0u8; 1452];
        sphinx::build_packet(
            &[Hop {
                id: NodeId(id),
                key: key.public_key(),
            }],
            &[],
            &Destination {
                address: id,
                identifier: [9; 16],
            },
            text,
            rng,
            &mut p,
        )
        .unwrap();
        p
    };
    let early = packet_under(&next, &mut rng, b"early");
    // not yet honoured: a MAC failure
    sim.inject(0, early.clone());
    sim.run_until(at(0.2));
    assert_eq!(
        sim.nodes[0]
            .engine()
            .counters()
            .drops(DropReason::HeaderMac),
        1
    );
    let filter = std::sync::Arc::new(engine::ReplayFilter::new(1024));
    sim.nodes[0]
        .stack
        .engine_mut()
        .prepare_key(1, next.clone(), filter.clone());
    sim.inject(0, early.clone());
    sim.inject(0, early);
    sim.inject(0, packet_under(&next, &mut rng, b"second"));
    sim.run_until(at(0.4));
    let c = sim.nodes[0].engine().counters();
    assert_eq!(c.drops(DropReason::HeaderMac), 1, "seed {seed}: {c:?}");
    assert_eq!(c.drops(DropReason::Replay), 1, "seed {seed}: {c:?}");
    assert_eq!(
        filter.len(),
        2,
        "the prepared key's own filter holds its tags"
    );
    let texts: Vec<&[u8]> = sim.nodes[0]
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Message { payload, .. } => Some(payload.as_slice()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, [&b"early"[..], b"second"], "seed {seed}");
}
