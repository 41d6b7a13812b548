//! Whole messages on the deterministic test network. Each test names its seed; the same
//! seed replays the run bit for bit.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use std::collections::HashMap;
use std::time::Duration;

use anon::{MessageError, MessengerEvent, SendOptions};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use scheduler::Timestamp;
use stack::sim::{LinkModel, MessageNet, params};

fn at(seconds: f64) -> Timestamp {
    Timestamp::from_nanos((seconds * 1e9) as u64)
}

/// Every message received, by ID: (node, data).
fn received(net: &MessageNet) -> HashMap<[u8; 16], (usize, Vec<u8>)> {
    let mut out = HashMap::new();
    for (i, events) in net.nodes.iter().map(|n| &n.events).enumerate() {
        for (_, e) in events {
            if let MessengerEvent::Received(r) = e {
                assert!(
                    out.insert(r.id, (i, r.data.clone())).is_none(),
                    "seed {}: a message delivered twice",
                    net.seed
                );
            }
        }
    }
    out
}

fn thousand_messages(seed: u64, loss: f64) {
    let link = LinkModel {
        loss,
        jitter: Duration::from_millis(3),
        ..LinkModel::PERFECT
    };
    let nodes = 12;
    let mut net = MessageNet::messengers(nodes, seed, params(3), 200.0, link);
    // loops measure q first
    let warmup = 8.0;
    net.run_until(at(warmup));
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut sent = HashMap::new();
    let mut k_total = 0usize;
    // 1,000 messages of 1 to 4,000 bytes, 25 a second
    for batch in 0..40 {
        for _ in 0..25 {
            let from = (rng.next_u32() as usize) % nodes;
            let to = (from + 1 + (rng.next_u32() as usize) % (nodes - 1)) % nodes;
            let len = 1 + (rng.next_u32() as usize) % 4000;
            let mut data = vec![0u8; len];
            rng.fill_bytes(&mut data);
            let dest = net.node_id(to);
            let now = net.now();
            let id = net
                .messenger(from)
                .send(now, dest, &data, SendOptions::default())
                .unwrap_or_else(|e| panic!("seed {seed}: send: {e}"));
            k_total += (len + anon::Messenger::object_overhead(0)).div_ceil(1056);
            sent.insert(id, (to, data));
        }
        net.run_until(at(warmup + f64::from(batch + 1)));
    }
    net.run_until(at(warmup + 60.0));
    let got = received(&net);
    let intact = sent
        .iter()
        .filter(|(id, want)| got.get(*id) == Some(*want))
        .count();
    let mut c = anon::MessengerCounters::default();
    for m in net.nodes.iter().map(|n| n.stack.upper()) {
        let x = m.counters();
        c.symbols_sent += x.symbols_sent;
        c.retries += x.retries;
        c.acks_received += x.acks_received;
        c.nacks_sent += x.nacks_sent;
        c.offline += x.offline;
        c.bad_objects += x.bad_objects;
        c.malformed += x.malformed;
    }
    let acked: usize = net
        .nodes
        .iter()
        .flat_map(|n| &n.events)
        .filter(|(_, e)| matches!(e, MessengerEvent::Acknowledged { .. }))
        .count();
    let q = net.messenger(0).q(3);
    let mut engines = engine::Counters::default();
    for n in &net.nodes {
        engines.add(n.engine().counters());
    }
    let budget_drops = engines.drops(engine::DropReason::ForwardBudget)
        + engines.drops(engine::DropReason::ForwardQueueFull);
    eprintln!(
        "seed {seed}, loss {loss}: {intact}/1000 intact, q estimate {q:.3} (true {:.3}), \
         {} symbols for {k_total} source symbols (n/k {:.2}, retries included), \
         {} retries, {} NACKs, {acked} ACKed, {} offline; {budget_drops} forwards over budget, loops {}/{} returned",
        (1.0 - loss).powi(3),
        c.symbols_sent,
        c.symbols_sent as f64 / k_total as f64,
        c.retries,
        c.nacks_sent,
        c.offline,
        engines.loops_returned,
        engines.loops_returned + engines.loops_lost,
    );
    assert_eq!(c.bad_objects, 0, "seed {seed}");
    assert!(intact >= 999, "seed {seed}: {intact} of 1000 intact");
}

#[test]
fn a_thousand_messages_arrive_with_five_percent_loss_per_hop() {
    thousand_messages(11, 0.05);
}

#[test]
fn a_thousand_messages_arrive_with_ten_percent_loss_per_hop() {
    thousand_messages(12, 0.10);
}

#[test]
fn a_mebibyte_arrives_intact_through_reordering_and_duplication() {
    let seed = 13;
    let link = LinkModel {
        jitter: Duration::from_millis(40),
        duplicate: 0.05,
        loss: 0.02,
        ..LinkModel::PERFECT
    };
    let mut net = MessageNet::messengers(6, seed, params(3), 2000.0, link);
    net.run_until(at(3.0));
    let mut data = vec![0u8; 1 << 20];
    ChaCha20Rng::seed_from_u64(seed).fill_bytes(&mut data);
    let dest = net.node_id(4);
    let now = net.now();
    let id = net
        .messenger(1)
        .send(now, dest, &data, SendOptions::default())
        .unwrap();
    net.run_until(at(30.0));
    let got = received(&net);
    assert_eq!(got.get(&id).map(|(i, _)| *i), Some(4), "seed {seed}");
    assert!(
        got.get(&id).is_some_and(|(_, d)| *d == data),
        "seed {seed}: corrupt"
    );
    assert!(net.stats.duplicated > 50, "seed {seed}: {:?}", net.stats);
    let acked = net.nodes[1]
        .events
        .iter()
        .any(|(_, e)| matches!(e, MessengerEvent::Acknowledged { id: a, .. } if *a == id));
    assert!(acked, "seed {seed}: no ACK");
    let ignored = net.messenger(4).counters().symbols_ignored;
    eprintln!("seed {seed}: 1 MiB delivered; {ignored} duplicate or late symbols ignored");
}

#[test]
fn an_offline_recipient_is_reported_after_three_attempts_within_the_bound() {
    let seed = 14;
    let mut net = MessageNet::messengers(8, seed, params(3), 200.0, LinkModel::PERFECT);
    net.run_until(at(10.0));
    net.set_down(5, true);
    net.run_until(at(10.1));
    let dest = net.node_id(5);
    let data = vec![7u8; 5000];
    let now = net.now();
    let bound = net
        .messenger(2)
        .offline_bound(data.len(), &SendOptions::default())
        .unwrap();
    let id = net
        .messenger(2)
        .send(now, dest, &data, SendOptions::default())
        .unwrap();
    net.run_until(now.saturating_add(bound + Duration::from_secs(5)));
    let offline_at = net.nodes[2].events.iter().find_map(|(t, e)| match e {
        MessengerEvent::Offline { id: o } if *o == id => Some(*t),
        _ => None,
    });
    let Some(t) = offline_at else {
        panic!(
            "seed {seed}: no offline report within {bound:?}: {:?}",
            net.nodes[2].events
        );
    };
    let took = t.saturating_since(now);
    eprintln!("seed {seed}: offline reported after {took:?} (bound {bound:?})");
    assert!(took <= bound, "seed {seed}: {took:?} > {bound:?}");
    assert_eq!(net.messenger(2).counters().retries, 2, "seed {seed}");
}

#[test]
fn replies_travel_through_surbs_and_a_revealed_sender_is_verified() {
    let seed = 15;
    let mut net = MessageNet::messengers(8, seed, params(3), 200.0, LinkModel::PERFECT);
    net.run_until(at(2.0));
    let (a, b) = (1, 6);
    let options = SendOptions {
        reply_surbs: 8,
        reveal_identity: true,
        port: 7,
        ..SendOptions::default()
    };
    let now = net.now();
    let dest = net.node_id(b);
    let id = net
        .messenger(a)
        .send(now, dest, b"who goes there?", options)
        .unwrap();
    net.run_until(at(6.0));
    let r = net.nodes[b]
        .events
        .iter()
        .find_map(|(_, e)| match e {
            MessengerEvent::Received(r) if r.id == id => Some(r.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("seed {seed}: not received"));
    assert_eq!(r.port, 7);
    assert_eq!(
        r.sender.map(|k| k.node_id()),
        Some(net.node_id(a)),
        "seed {seed}: sender not verified"
    );
    let mut handle = r.reply.unwrap();
    assert_eq!(handle.surbs(), 8);
    let answer = vec![42u8; 3000];
    net.messenger(b).reply(&mut handle, &answer, 7).unwrap();
    net.run_until(at(10.0));
    let reply = net.nodes[a].events.iter().find_map(|(_, e)| match e {
        MessengerEvent::Received(r) if r.in_reply_to == Some(id) => Some(r.data.clone()),
        _ => None,
    });
    assert_eq!(reply.as_deref(), Some(&answer[..]), "seed {seed}");
    // an anonymous message carries no sender
    let now = net.now();
    let id2 = net
        .messenger(a)
        .send(now, dest, b"anonymous", SendOptions::default())
        .unwrap();
    net.run_until(at(14.0));
    let anon = net.nodes[b].events.iter().find_map(|(_, e)| match e {
        MessengerEvent::Received(r) if r.id == id2 => Some(r.sender),
        _ => None,
    });
    assert_eq!(anon, Some(None), "seed {seed}");
}

#[test]
fn bad_requests_are_clear_errors() {
    let seed = 16;
    let mut net = MessageNet::messengers(5, seed, params(3), 100.0, LinkModel::PERFECT);
    let now = net.now();
    let dest = net.node_id(3);
    let m = net.messenger(0);
    let max = m.max_message();
    assert_eq!(
        m.send(now, dest, &vec![0u8; max + 1], SendOptions::default()),
        Err(MessageError::TooLarge { len: max + 1, max })
    );
    assert_eq!(
        m.send(now, [9u8; 32], b"x", SendOptions::default()),
        Err(MessageError::UnknownDestination)
    );
    assert_eq!(
        m.send(now, dest, b"", SendOptions::default()),
        Err(MessageError::Empty)
    );
    let hops = SendOptions {
        hops: Some(6),
        ..SendOptions::default()
    };
    assert_eq!(m.send(now, dest, b"x", hops), Err(MessageError::Hops(6)));
    let red = SendOptions {
        redundancy: Some(0.5),
        ..SendOptions::default()
    };
    assert_eq!(m.send(now, dest, b"x", red), Err(MessageError::Redundancy));
    let surbs = SendOptions {
        reply_surbs: 200,
        ..SendOptions::default()
    };
    assert_eq!(
        m.send(now, dest, b"x", surbs),
        Err(MessageError::TooManySurbs)
    );
    // garbage from the network is counted, never a panic
    for junk in [&b""[..], &[1u8; 5][..], &[2u8; 40][..], &[9u8; 100][..]] {
        m.handle_event(
            now,
            &engine::Event::Message {
                identifier: [1; 16],
                payload: junk.to_vec(),
            },
        );
        m.handle_event(
            now,
            &engine::Event::Sealed {
                identifier: [1; 16],
                payload: junk.to_vec(),
            },
        );
    }
    assert!(m.counters().malformed >= 3);
    assert_eq!(m.counters().unknown_sealed, 4);
}

#[test]
fn short_first_attempts_are_repaired_after_nacks() {
    let seed = 17;
    let link = LinkModel {
        loss: 0.10,
        ..LinkModel::PERFECT
    };
    let mut net = MessageNet::messengers(6, seed, params(3), 400.0, link);
    net.run_until(at(5.0));
    // no redundancy: about a quarter of the symbols are lost, decoding falls short; each
    // attempt's NACK SURBs arrive with probability q, so over four messages NACKs flow
    let options = SendOptions {
        redundancy: Some(1.0),
        ..SendOptions::default()
    };
    let dest = net.node_id(3);
    let mut sent = Vec::new();
    for m in 0..4u64 {
        let mut data = vec![0u8; 40_000];
        ChaCha20Rng::seed_from_u64(seed + m).fill_bytes(&mut data);
        let now = net.now();
        let id = net.messenger(0).send(now, dest, &data, options).unwrap();
        sent.push((id, data));
    }
    net.run_until(at(40.0));
    let got = received(&net);
    for (id, data) in &sent {
        assert!(
            got.get(id).is_some_and(|(i, d)| *i == 3 && d == data),
            "seed {seed}"
        );
        let attempts = net.nodes[0].events.iter().find_map(|(_, e)| match e {
            MessengerEvent::Acknowledged { id: a, attempts } if a == id => Some(*attempts),
            _ => None,
        });
        assert!(
            attempts.is_some_and(|a| a >= 2),
            "seed {seed}: {attempts:?}"
        );
    }
    let (sent_nacks, got_nacks) = (
        net.messenger(3).counters().nacks_sent,
        net.messenger(0).counters().nacks_received,
    );
    eprintln!("seed {seed}: NACKs sent {sent_nacks}, received {got_nacks}");
    assert!(sent_nacks >= 1 && got_nacks >= 1, "seed {seed}");
}

/// One run for the determinism test: messages (one to an offline node, so attempts time out
/// and retry; some short of redundancy, so NACKs repair them) over links that lose,
/// duplicate and replay; returns the digest of every datagram and event, and how many
/// retries and acknowledgements there were.
fn traced_run(seed: u64) -> (u64, u64, u64) {
    let link = LinkModel {
        loss: 0.05,
        duplicate: 0.02,
        replay: 0.02,
        jitter: Duration::from_millis(4),
        ..LinkModel::PERFECT
    };
    let nodes = 8;
    let mut net = MessageNet::messengers(nodes, seed, params(3), 200.0, link);
    net.set_down(7, true);
    net.run_until(at(4.0));
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x5eed);
    for i in 0..24usize {
        let from = i % 7;
        let to = if i % 8 == 0 {
            7
        } else {
            (from + 1 + i % 5) % 7
        };
        let mut data = vec![0u8; 1 + (rng.next_u32() as usize) % 3000];
        rng.fill_bytes(&mut data);
        let options = SendOptions {
            // every third message starts short, so the recipient NACKs for more
            redundancy: (i % 3 == 0).then_some(1.0),
            ..SendOptions::default()
        };
        let dest = net.node_id(to);
        let now = net.now();
        net.messenger(from)
            .send(now, dest, &data, options)
            .unwrap_or_else(|e| panic!("seed {seed}: send: {e}"));
        net.run_until(at(4.0 + 0.25 * (i + 1) as f64));
    }
    net.run_until(at(40.0));
    let retries = net
        .nodes
        .iter()
        .map(|n| n.stack.upper().counters().retries)
        .sum();
    let acks = net
        .nodes
        .iter()
        .map(|n| n.stack.upper().counters().acks_received)
        .sum();
    (net.trace, retries, acks)
}

#[test]
fn a_seed_replays_bit_for_bit_and_another_seed_does_not() {
    let (first, retries, acks) = traced_run(41);
    let (second, ..) = traced_run(41);
    assert!(retries > 0, "the run should retry (an offline recipient)");
    assert!(
        acks > 10,
        "most messages should be acknowledged, got {acks}"
    );
    assert_eq!(first, second, "seed 41 ran twice gave two traces");
    let (other, ..) = traced_run(42);
    assert_ne!(first, other, "seeds 41 and 42 gave the same trace");
}

#[test]
fn the_surb_table_and_the_control_queue_are_bounded_with_counted_drops() {
    let mut net = MessageNet::messengers(6, 5, params(3), 200.0, LinkModel::PERFECT);
    let own_rate = net.messenger(0).config().own_rate;
    // room for two messages' ACK SURBs and NACK SURBs, not three
    let small_surbs = anon::MessengerConfig {
        max_surbs: 6,
        own_rate,
        ..anon::MessengerConfig::default()
    };
    net.reconfigure(0, small_surbs);
    // one ACK waiting at most: the second ACK of every message is dropped
    let small_control = anon::MessengerConfig {
        max_control: 1,
        own_rate,
        ..anon::MessengerConfig::default()
    };
    net.reconfigure(1, small_control);
    net.run_until(at(2.0));
    let dest = net.node_id(1);
    let now = net.now();
    for _ in 0..2 {
        net.messenger(0)
            .send(now, dest, b"hello", SendOptions::default())
            .unwrap();
    }
    assert_eq!(
        net.messenger(0)
            .send(now, dest, b"hello", SendOptions::default()),
        Err(MessageError::Busy),
        "a third message needs more SURBs than the table holds"
    );
    net.run_until(at(10.0));
    let sender = net.messenger(0).counters();
    assert!(
        sender.surbs_evicted > 0,
        "the NACK SURBs overflowed the table"
    );
    let (surbs, _, _) = net.messenger(0).table_sizes();
    assert!(surbs <= 6, "{surbs} SURBs in a table of 6");
    let receiver = net.messenger(1).counters();
    assert_eq!(receiver.messages_received, 2);
    assert!(receiver.control_dropped >= 2, "{receiver:?}");
    let (_, control, _) = net.messenger(1).table_sizes();
    assert!(control <= 1);
}
