//! The multi-host test network (`common::Lab`): authorities and nodes as separate
//! processes, one network namespace per host on one bridge, IPv4 and IPv6. Each test
//! stops by itself; they run one at a time.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anon::local::Frame;
use common::{Family, Lab};
use local_client::{Client, SendOptions};

/// A client on every node, receiving on port 1.
fn clients(lab: &Lab) -> Vec<Client> {
    (0..lab.nodes.len())
        .map(|k| {
            let path = lab.nodes[k].api_socket();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match Client::connect(&path, Some(1)) {
                    Ok(c) => break c,
                    Err(e) if Instant::now() > deadline => panic!("node {k}: {e}"),
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })
        .collect()
}

fn options() -> SendOptions {
    SendOptions {
        port: 1,
        ..SendOptions::default()
    }
}

/// Waits until every message of `want` (receiver -> payloads) arrived at its receiver.
fn expect_all(
    clients: &mut [Client],
    mut want: HashMap<usize, Vec<Vec<u8>>>,
    within: Duration,
    lab: &Lab,
) {
    let deadline = Instant::now() + within;
    while want.values().any(|v| !v.is_empty()) {
        assert!(
            Instant::now() < deadline,
            "not delivered: {:?}\n{}",
            want.iter()
                .map(|(k, v)| (
                    k,
                    v.iter()
                        .map(|p| String::from_utf8_lossy(p).into_owned())
                        .collect::<Vec<_>>()
                ))
                .collect::<Vec<_>>(),
            lab.logs()
        );
        for (k, c) in clients.iter_mut().enumerate() {
            while let Ok(f) = c.recv(Duration::from_millis(20)) {
                match f {
                    Frame::Message { data, .. } => {
                        if let Some(v) = want.get_mut(&k) {
                            v.retain(|p| *p != data);
                        }
                    }
                    f @ Frame::Undelivered { .. } => panic!("node {k}: {f:?}\n{}", lab.logs()),
                    _ => {}
                }
            }
        }
    }
}

#[test]
fn ipv4_ipv6_and_dual_stack_hosts_make_one_network() {
    use Family::*;
    // hosts 0-2: the authorities (dual-stack); nodes: 0, 1 IPv4 only, 2, 3 IPv6 only, 4-6
    // dual-stack (paths between two IPv4-only nodes need two mixes that speak IPv4)
    let Some(mut lab) = Lab::new(&[Dual, Dual, Dual, V4, V4, V6, V6, Dual, Dual, Dual], 6) else {
        return;
    };
    lab.start_authorities(&[0, 1, 2]);
    for h in 3..10 {
        lab.start_node(h, 40.0, None);
    }
    lab.wait_ready(Duration::from_secs(45));
    let mut clients = clients(&lab);
    let ids: Vec<[u8; 32]> = lab.nodes.iter().map(|n| n.node_id).collect();
    let mut want: HashMap<usize, Vec<Vec<u8>>> = HashMap::new();
    for (from, to) in [(0, 2), (2, 0), (1, 3), (3, 4), (4, 1), (0, 1), (2, 3)] {
        let text = format!("{from} to {to}").into_bytes();
        clients[from].send(ids[to], &text, options()).unwrap();
        want.entry(to).or_default().push(text);
    }
    expect_all(&mut clients, want, Duration::from_secs(30), &lab);
    for k in 0..lab.nodes.len() {
        let m = lab.scrape(k);
        let failed: f64 = m
            .iter()
            .filter(|(n, _)| n.starts_with("mixed_send_failed_total"))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(failed, 0.0, "node {k}: the kernel refused sends");
        let expected = if k >= 4 { 0.0 } else { 2.0 };
        assert_eq!(m["mixed_unreachable_nodes"], expected, "node {k}");
        assert!(
            m["mixed_packets_received_total"] > 20.0,
            "node {k} hears little"
        );
        assert_eq!(m["mixed_drops_total{reason=\"unreachable_next_hop\"}"], 0.0);
    }
}

/// Three dual-stack authority hosts and `n` dual-stack node hosts, up.
fn dual_lab(n: usize, bandwidth: &[f64], epoch_seconds: u64) -> Option<Lab> {
    let mut lab = Lab::new(&vec![Family::Dual; 3 + n], epoch_seconds)?;
    lab.start_authorities(&[0, 1, 2]);
    for k in 0..n {
        lab.start_node(3 + k, bandwidth[k % bandwidth.len()], None);
    }
    lab.wait_ready(Duration::from_secs(8 * epoch_seconds));
    Some(lab)
}

#[test]
fn messages_arrive_while_a_fifth_of_the_nodes_is_killed_and_restarted_every_epoch() {
    let Some(mut lab) = dual_lab(5, &[40.0], 6) else {
        return;
    };
    let mut clients = clients(&lab);
    let to = lab.nodes[1].node_id;
    let mut want: HashMap<usize, Vec<Vec<u8>>> = HashMap::new();
    // five epochs: one node of five (20%) killed with SIGKILL and restarted in each, the
    // sender (0) and the receiver (1) kept (their applications hold API sessions)
    for round in 0..5 {
        lab.wait_next_epoch(1.0);
        let victim = lab.nodes[2 + round % 3].proc;
        lab.kill(victim);
        for k in 0..2 {
            let text = format!("round {round} message {k}").into_bytes();
            clients[0].send(to, &text, options()).unwrap();
            want.entry(1).or_default().push(text);
        }
        std::thread::sleep(Duration::from_secs(1));
        lab.start(victim);
    }
    expect_all(&mut clients[..2], want, Duration::from_secs(60), &lab);
    // the restarted nodes are back in the network
    let epoch = lab.epoch_now() as f64;
    for k in 2..5 {
        let deadline = Instant::now() + Duration::from_secs(15);
        while lab.metric(k, "mixed_epoch") < epoch {
            assert!(
                Instant::now() < deadline,
                "node {k} did not come back\n{}",
                lab.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn an_authority_outage_is_survived_and_the_consensus_comes_back_whole() {
    let Some(mut lab) = dual_lab(5, &[40.0], 6) else {
        return;
    };
    let (a1, a2) = (lab.authorities[1].0, lab.authorities[2].0);
    lab.kill(a1);
    lab.kill(a2);
    // no majority: no consensus; every node carries the last one forward
    let deadline = Instant::now() + Duration::from_secs(3 * lab.epoch_seconds);
    while (0..5).any(|k| lab.metric(k, "mixed_consensus_carried") != 1.0) {
        assert!(
            Instant::now() < deadline,
            "nodes did not carry\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut clients = clients(&lab);
    let mut want: HashMap<usize, Vec<Vec<u8>>> = HashMap::new();
    for (from, to) in [(0, 1), (2, 3), (4, 0)] {
        let text = format!("during the outage {from} to {to}").into_bytes();
        clients[from]
            .send(lab.nodes[to].node_id, &text, options())
            .unwrap();
        want.entry(to).or_default().push(text);
    }
    expect_all(&mut clients, want, Duration::from_secs(30), &lab);
    // back: the authorities' next consensus lists every node again
    lab.start(a1);
    lab.start(a2);
    let deadline = Instant::now() + Duration::from_secs(4 * lab.epoch_seconds);
    while (0..5).any(|k| {
        let m = lab.scrape(k);
        m.get("mixed_consensus_carried") != Some(&0.0)
            || m.get("mixed_consensus_nodes") != Some(&5.0)
    }) {
        assert!(
            Instant::now() < deadline,
            "no whole consensus after the outage\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_node_offered_twice_its_rate_keeps_its_rate_and_its_memory() {
    use crypto_simd::sphinx::{self, Delay, Destination, Hop, MixPublicKey, NodeId, PacketRequest};
    use rand_chacha::ChaCha20Rng;
    use rand_chacha::rand_core::SeedableRng;
    // node 0 emits B = 400 packets a second; the test sends it 800 forwards a second
    let b = 400.0;
    let Some(lab) = dual_lab(4, &[b, 40.0], 6) else {
        return;
    };
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    // the epoch node 0 runs (installed a little ahead of the schedule, perhaps); packets
    // under its key stay valid through the next epoch's grace, longer than the flood
    let epoch = lab.metric(0, "mixed_epoch") as u64;
    let consensus = lab
        .pki()
        .fetch(pki_client::Which::Epoch(epoch), &mut rng)
        .unwrap()
        .check_valid_at(lab.params.epoch_start(epoch), 0)
        .unwrap();
    let hop = |k: usize| {
        let id = lab.nodes[k].node_id;
        Hop {
            id: NodeId(id),
            key: MixPublicKey(consensus.node(&id).unwrap().mix_key),
        }
    };
    // forwards through node 0 to node 1, 2 or 3; built ahead, in batches
    let seconds = 14;
    let total = (2.0 * b) as usize * seconds;
    let routes: Vec<[Hop; 2]> = (1..4).map(|k| [hop(0), hop(k)]).collect();
    let dests: Vec<Destination> = (1..4)
        .map(|k| Destination {
            address: lab.nodes[k].node_id,
            identifier: [5; 16],
        })
        .collect();
    let delays = [Delay::from_nanos(1_000_000)];
    let mut packets = vec![vec![0u8; 1452]; total];
    for (c, chunk) in packets.chunks_mut(16).enumerate() {
        let requests: Vec<PacketRequest<'_>> = (0..chunk.len())
            .map(|i| PacketRequest {
                route: &routes[(c + i) % 3],
                delays: &delays,
                destination: &dests[(c + i) % 3],
                message: b"overload",
            })
            .collect();
        let mut results = vec![Ok(()); chunk.len()];
        sphinx::build_packets(&requests, &mut rng, chunk, &mut results).unwrap();
        assert!(results.iter().all(Result::is_ok));
    }
    let target = lab.hosts[lab.nodes[0].host].reach(lab.nodes[0].port);
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let sent = |lab: &Lab| -> f64 {
        lab.scrape(0)
            .iter()
            .filter(|(n, _)| n.starts_with("mixed_packets_sent_total"))
            .map(|(_, v)| v)
            .sum()
    };
    let proc0 = lab.nodes[0].proc;
    let start = Instant::now();
    let (mut at_4s, mut rss_4s) = (None, None);
    for (i, p) in packets.iter().enumerate() {
        // paced: 800 a second
        let due = start + Duration::from_secs_f64(i as f64 / (2.0 * b));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let _ = socket.send_to(p, target);
        if at_4s.is_none() && start.elapsed() >= Duration::from_secs(4) {
            at_4s = Some((Instant::now(), sent(&lab)));
            rss_4s = lab.rss_kib(proc0);
        }
    }
    let (t0, s0) = at_4s.unwrap();
    let (t1, s1) = (Instant::now(), sent(&lab));
    let window = t1.duration_since(t0).as_secs_f64();
    let rate = (s1 - s0) / window;
    // Poisson slots: within 1% of B, plus three standard deviations of the count
    let tolerance = 0.01 + 3.0 / (b * window).sqrt();
    let m = lab.scrape(0);
    assert!(
        (rate / b - 1.0).abs() <= tolerance,
        "output {rate:.1}/s under 2x load, B = {b} (tolerance {:.1}%)\n{m:?}",
        tolerance * 100.0
    );
    // the budget dropped what it could not carry, and nothing was late for want of CPU
    assert!(
        m["mixed_drops_total{reason=\"forward_budget\"}"] > 0.0,
        "{m:?}"
    );
    assert!(
        m["mixed_departure_lateness_seconds{quantile=\"0.99\"}"] < 0.05,
        "departures late under load: {m:?}"
    );
    let (rss0, rss1) = (rss_4s.unwrap(), lab.rss_kib(proc0).unwrap());
    assert!(
        rss1 < rss0 + 16 * 1024,
        "memory grew under load: {rss0} KiB -> {rss1} KiB"
    );
    println!(
        "overload: B = {b}, offered {}, output {rate:.1}/s ({:+.2}%), RSS {rss0} -> {rss1} KiB, FDs {:?}",
        2.0 * b,
        (rate / b - 1.0) * 100.0,
        lab.fds(proc0)
    );
}

#[test]
fn sigterm_takes_a_node_out_of_the_consensus_before_it_exits() {
    let Some(mut lab) = Lab::new(&[Family::Dual; 7], 6) else {
        return;
    };
    lab.leave_seconds = 120;
    lab.start_authorities(&[0, 1, 2]);
    for h in 3..7 {
        lab.start_node(h, 40.0, None);
    }
    lab.wait_ready(Duration::from_secs(48));
    let leaving = lab.nodes[3].proc;
    lab.terminate(leaving);
    // the others install a consensus without it while it still runs (and forwards)
    let deadline = Instant::now() + Duration::from_secs(4 * lab.epoch_seconds);
    while (0..3).any(|k| lab.metric(k, "mixed_consensus_nodes") != 3.0) {
        assert!(
            Instant::now() < deadline,
            "the leaving node stayed listed\n{}",
            lab.logs()
        );
        assert!(
            lab.exited(leaving).is_none(),
            "it exited while still listed\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out_at = Instant::now();
    // then it exits by itself, cleanly, after the previous key's grace (30 s: packets built
    // under the consensus that listed it still arrive), long before --leave-seconds
    let deadline = Instant::now() + Duration::from_secs(2 * lab.epoch_seconds + 40);
    let status = loop {
        if let Some(s) = lab.exited(leaving) {
            break s;
        }
        assert!(Instant::now() < deadline, "it did not exit\n{}", lab.logs());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "{status:?}\n{}", lab.log(leaving));
    let stayed = out_at.elapsed();
    assert!(
        stayed >= Duration::from_secs(20),
        "it left {stayed:?} after the others dropped it"
    );
}

#[test]
fn messages_reach_a_node_behind_a_lossy_slow_link() {
    let Some(mut lab) = Lab::new(&[Family::Dual; 8], 6) else {
        return;
    };
    lab.start_authorities(&[0, 1, 2]);
    for h in 3..7 {
        lab.start_node(h, 40.0, None);
    }
    // node 4 is reached only through the relay: 10% lost, 30 ms late
    let behind = lab.hosts[7].reach(4000);
    let relay = lab.relay(behind, 0.10, Duration::from_millis(30));
    lab.start_node(7, 40.0, Some(vec![relay]));
    lab.wait_ready(Duration::from_secs(48));
    let mut clients = clients(&lab);
    let mut want: HashMap<usize, Vec<Vec<u8>>> = HashMap::new();
    for k in 0..8 {
        let from = k % 4;
        let text = format!("through the lossy link {k}").into_bytes();
        clients[from]
            .send(lab.nodes[4].node_id, &text, options())
            .unwrap();
        want.entry(4).or_default().push(text);
    }
    expect_all(&mut clients, want, Duration::from_secs(40), &lab);
    // the loss is real: loops through node 4 are lost (a loop counts as lost after 10 s)
    let lost = || -> f64 {
        (0..4)
            .map(|k| lab.metric(k, "mixed_loops_total{outcome=\"lost\"}"))
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while lost() == 0.0 {
        assert!(
            Instant::now() < deadline,
            "no loop was lost through a link losing 10%\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
