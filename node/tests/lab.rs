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
