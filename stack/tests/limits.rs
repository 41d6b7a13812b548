//! Queues filled to their limits: a clear error or a counted drop, never an unbounded queue.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use engine::SendError;
use stack::sim::{LinkModel, Sim, params};

#[test]
fn a_full_own_data_queue_is_a_clear_error_and_drains_at_the_own_rate() {
    let mut sim = Sim::new(5, 3, params(3), 200.0, LinkModel::PERFECT);
    let dest = sim.node_id(4);
    let cap = sim.nodes[0].engine().config().own_queue;
    let mut queued = 0;
    let err = loop {
        match sim.nodes[0].stack.engine_mut().send_message(dest, b"x") {
            Ok(_) => queued += 1,
            Err(e) => break e,
        }
        assert!(queued <= cap, "more queued than the limit of {cap}");
    };
    assert_eq!(queued, cap);
    assert_eq!(err, SendError::QueueFull);
    // the queue empties at rho * B / h = 100 a second, and takes messages again
    sim.run_until(scheduler::Timestamp::from_nanos(4_000_000_000));
    assert!(sim.nodes[0].engine().own_queued() < cap);
    assert!(
        sim.nodes[0]
            .stack
            .engine_mut()
            .send_message(dest, b"x")
            .is_ok()
    );
}

/// Node 0 sends one-packet messages to node 4 at its own rate for `seconds`.
fn flood(sim: &mut Sim<stack::Raw>, seconds: u64) {
    let dest = sim.node_id(4);
    for tenth in 1..=seconds * 10 {
        while sim.nodes[0]
            .stack
            .engine_mut()
            .send_message(dest, b"x")
            .is_ok()
        {}
        sim.run_until(scheduler::Timestamp::from_nanos(tenth * 100_000_000));
    }
}

#[test]
fn a_full_packet_pool_or_timer_wheel_is_a_counted_drop() {
    // every packet held a second on average: the mixes hold far more than 48
    let mut params = params(3);
    params.mean_delay_micros = 1_000_000;
    let mut sim = Sim::with_engines(5, 8, params, 400.0, LinkModel::PERFECT, &|c| {
        c.pool_size = 48;
        c.wheel_capacity = 1 << 12;
    });
    flood(&mut sim, 6);
    let pool_full: u64 = sim
        .nodes
        .iter()
        .map(|n| n.engine().counters().drops(engine::DropReason::PoolFull))
        .sum();
    assert!(pool_full > 0, "no pool drop counted");
    for n in &sim.nodes {
        assert!(
            n.engine().held() <= 48,
            "{} held in a pool of 48",
            n.engine().held()
        );
    }

    let mut sim = Sim::with_engines(5, 9, params, 400.0, LinkModel::PERFECT, &|c| {
        c.wheel_capacity = 16;
    });
    flood(&mut sim, 6);
    let wheel_full: u64 = sim
        .nodes
        .iter()
        .map(|n| n.engine().counters().drops(engine::DropReason::WheelFull))
        .sum();
    assert!(wheel_full > 0, "no wheel drop counted");
    for n in &sim.nodes {
        assert!(n.engine().held() <= 16);
    }
}

#[test]
fn an_engine_fitted_to_the_delay_holds_what_b_over_mu_needs() {
    // packets held 4 s on average: each mix holds several hundred, above a wheel and a
    // pool of 512 (as a relay at B = 40,000 and 1/mu = 1 s holds ~38,000, above 4,096)
    let mut params = params(3);
    params.mean_delay_micros = 4_000_000;
    let run = |fit: bool| {
        let mut sim = Sim::with_engines(5, 10, params, 2000.0, LinkModel::PERFECT, &|c| {
            c.pool_size = 512;
            c.wheel_capacity = 512;
            c.fit_to_delay = fit;
        });
        flood(&mut sim, 8);
        let full: u64 = sim
            .nodes
            .iter()
            .map(|n| {
                let c = n.engine().counters();
                c.drops(engine::DropReason::WheelFull) + c.drops(engine::DropReason::PoolFull)
            })
            .sum();
        let held = sim.nodes.iter().map(|n| n.engine().held()).max().unwrap();
        let capacity = sim.nodes[1].engine().config().wheel_capacity;
        (full, held, capacity)
    };
    let (full, held, capacity) = run(false);
    eprintln!("not fitted: wheel {capacity}, {full} dropped full, {held} held at most at the end");
    assert_eq!(capacity, 512);
    assert!(full > 0, "a wheel of 512 was enough: {held} held");
    let (full, held, capacity) = run(true);
    eprintln!("fitted: wheel {capacity}, {full} dropped full, {held} held at most at the end");
    assert_eq!(
        capacity,
        engine::held_for(2000.0, std::time::Duration::from_secs(4))
    );
    assert_eq!(full, 0, "drops with the wheel fitted to {capacity}");
    assert!(held > 512, "only {held} held: the case needs no fitting");
}

#[test]
fn the_ready_queue_is_fitted_to_fifty_milliseconds_of_slots() {
    assert_eq!(engine::ready_for(40_000.0), 2_000);
    assert_eq!(engine::ready_for(30_000.0), 1_500);
    // the unfitted default is the floor
    assert_eq!(engine::ready_for(200.0), 256);
    assert_eq!(engine::ready_for(0.0), 256);
    assert_eq!(
        engine::ready_for(f64::INFINITY),
        scheduler::MAX_FORWARD_QUEUE
    );
    // an engine fitted at the first consensus (installed as the network is built) takes
    // it, and its pool has room for it
    let sim = Sim::with_engines(3, 10, params(3), 20_000.0, LinkModel::PERFECT, &|c| {
        c.fit_to_delay = true;
    });
    let config = sim.nodes[0].engine().config();
    assert_eq!(config.forward_queue, 1_000);
    assert!(config.pool_size >= config.wheel_capacity + 1_000);
    // unfitted, the configured queue stays
    let sim = Sim::with_engines(3, 10, params(3), 20_000.0, LinkModel::PERFECT, &|_| {});
    assert_eq!(sim.nodes[0].engine().config().forward_queue, 256);
}

#[test]
fn the_messengers_incoming_table_is_bounded_and_counted() {
    let mut net = stack::sim::MessageNet::messengers(6, 12, params(3), 200.0, LinkModel::PERFECT);
    let own_rate = net.messenger(0).config().own_rate;
    // node 3 takes one message at a time
    net.reconfigure(
        3,
        anon::MessengerConfig {
            max_incoming: 1,
            own_rate,
            ..anon::MessengerConfig::default()
        },
    );
    net.run_until(scheduler::Timestamp::from_nanos(2_000_000_000));
    let dest = net.node_id(3);
    let now = net.now();
    for from in [0, 1, 2, 4] {
        net.messenger(from)
            .send(now, dest, &vec![7u8; 6000], anon::SendOptions::default())
            .unwrap();
    }
    net.run_until(scheduler::Timestamp::from_nanos(30_000_000_000));
    let c = net.messenger(3).counters().clone();
    assert!(c.incoming_full > 0, "{c:?}");
    assert!(net.messenger(3).incoming() <= 1);
    // the first came through; the others are retried by their senders
    assert!(c.messages_received >= 1, "{c:?}");
}

#[test]
fn a_full_forward_queue_is_a_counted_drop() {
    // a ready queue of one forward: packets whose delays end together overflow it
    let mut sim = Sim::with_engines(5, 10, params(3), 400.0, LinkModel::PERFECT, &|c| {
        c.forward_queue = 1;
    });
    flood(&mut sim, 4);
    let full: u64 = sim
        .nodes
        .iter()
        .map(|n| {
            n.engine()
                .counters()
                .drops(engine::DropReason::ForwardQueueFull)
        })
        .sum();
    assert!(full > 0, "no forward-queue drop counted");
}

#[test]
fn events_the_application_cannot_take_are_counted() {
    let mut net = stack::sim::MessageNet::messengers(5, 13, params(3), 200.0, LinkModel::PERFECT);
    let own_rate = net.messenger(0).config().own_rate;
    // an application that holds no event at all: every one is a counted drop
    net.reconfigure(
        0,
        anon::MessengerConfig {
            max_events: 0,
            own_rate,
            ..anon::MessengerConfig::default()
        },
    );
    net.run_until(scheduler::Timestamp::from_nanos(2_000_000_000));
    let dest = net.node_id(2);
    let now = net.now();
    net.messenger(0)
        .send(now, dest, b"are you there", anon::SendOptions::default())
        .unwrap();
    net.run_until(scheduler::Timestamp::from_nanos(12_000_000_000));
    let c = net.messenger(0).counters().clone();
    assert_eq!(c.acks_received, 1, "{c:?}");
    assert_eq!(c.events_dropped, 1, "the Acknowledged event, counted");
    assert!(net.nodes[0].events.is_empty());
}

#[test]
fn the_engines_event_and_transmit_queues_stop_at_their_limits() {
    use rand_chacha::rand_core::SeedableRng;
    let mut sim = Sim::with_engines(4, 11, params(3), 200.0, LinkModel::PERFECT, &|c| {
        c.tx_queue = 8;
    });
    // one-hop packets for node 3, handed to its engine directly (no stack draining its
    // events): the engine keeps MAX_EVENTS and counts the rest
    let paths = sim.nodes[0].engine().paths().unwrap();
    let dest = sim.node_id(3);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
    let mut packets: Vec<Vec<u8>> = (0..4100u32)
        .map(|i| {
            let mut out = vec![0u8; paths.packet_size()];
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&(i + 1).to_le_bytes());
            paths
                .forward(&dest, 1, id, &i.to_le_bytes(), &mut rng, &mut out)
                .unwrap();
            out
        })
        .collect();
    let now = sim.now();
    let engine = sim.nodes[3].stack.engine_mut();
    engine.handle_datagrams(now, &mut packets);
    let full = engine.counters().drops(engine::DropReason::EventQueueFull);
    let mut events = 0;
    while engine.poll_event().is_some() {
        events += 1;
    }
    assert_eq!(events, 4096);
    assert_eq!(full, 4);
    // ten seconds of slots with nobody sending: at most tx_queue datagrams wait
    let mut t = now;
    for _ in 0..1000 {
        t = t.saturating_add(std::time::Duration::from_millis(10));
        engine.handle_timeout(t);
    }
    let mut buf = vec![0u8; 2048];
    let mut waiting = 0;
    while engine.poll_transmit(&mut buf).is_some() {
        waiting += 1;
    }
    assert_eq!(
        waiting, 8,
        "the transmit queue holds its limit, the slots stay due"
    );
}

#[test]
fn a_core_that_is_behind_decides_a_turns_worth_of_slots_a_call() {
    // a node at B = 2,000 whose driver comes back after a second: 2,000 slots are due.
    // Each call decides at most 64 of them (and asks to be called again at once), so the
    // driver reads its socket between turns; deciding them all at once filled them with
    // fresh cover while the forwards that would have filled them went unread
    let mut sim = Sim::with_engines(3, 12, params(3), 2000.0, LinkModel::PERFECT, &|_| {});
    let later = sim.now().saturating_add(std::time::Duration::from_secs(1));
    let engine = sim.nodes[0].stack.engine_mut();
    let mut buf = vec![0u8; 2048];
    let mut per_call = Vec::new();
    for _ in 0..40 {
        engine.handle_timeout(later);
        let mut n = 0;
        while engine.poll_transmit(&mut buf).is_some() {
            n += 1;
        }
        per_call.push(n);
        if engine.poll_timeout().is_some_and(|t| t > later) {
            break;
        }
        assert!(
            engine.poll_timeout().is_some_and(|t| t <= later),
            "slots still due, and the driver is asked back at once"
        );
    }
    assert!(per_call.iter().all(|&n| n <= 64), "{per_call:?}");
    let total: usize = per_call.iter().sum();
    // every slot of the second was decided in the end (a Poisson count of mean 2,000)
    assert!(
        (1_800..=2_200).contains(&total),
        "{total} slots in {per_call:?}"
    );
    assert!(per_call.len() >= 28, "{} calls", per_call.len());
}

#[test]
fn the_messengers_outgoing_table_is_bounded_with_a_clear_error() {
    let mut net = stack::sim::MessageNet::messengers(5, 14, params(3), 200.0, LinkModel::PERFECT);
    let own_rate = net.messenger(0).config().own_rate;
    net.reconfigure(
        0,
        anon::MessengerConfig {
            max_outgoing: 2,
            max_outgoing_bytes: 10_000,
            own_rate,
            ..anon::MessengerConfig::default()
        },
    );
    net.run_until(scheduler::Timestamp::from_nanos(2_000_000_000));
    let dest = net.node_id(2);
    let now = net.now();
    let m = net.messenger(0);
    // bytes first: 10,001 bytes cannot be in flight
    assert_eq!(
        m.send(now, dest, &[1u8; 10_001], anon::SendOptions::default()),
        Err(anon::MessageError::Busy)
    );
    m.send(now, dest, b"one", anon::SendOptions::default())
        .unwrap();
    m.send(now, dest, b"two", anon::SendOptions::default())
        .unwrap();
    assert_eq!(
        m.send(now, dest, b"three", anon::SendOptions::default()),
        Err(anon::MessageError::Busy),
        "a third message in a table of two"
    );
    assert_eq!(m.outgoing(), 2);
    // acknowledged, they make room
    net.run_until(scheduler::Timestamp::from_nanos(10_000_000_000));
    let now = net.now();
    assert!(
        net.messenger(0)
            .send(now, dest, b"three", anon::SendOptions::default())
            .is_ok()
    );
}
