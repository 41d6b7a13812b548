//! A long run of the multi-host lab (`node/tests/common`), not in CI: a dual-stack network
//! of separate processes with messages flowing and a node killed and restarted every five
//! minutes, sampling every node's RSS, open file descriptors, traffic and drops every 10 s.
//! Writes a CSV and fails when memory or descriptors grow or messages are lost.
//!
//! `scripts/soak.sh [minutes] [csv]` builds a release binary and runs it (as root). A debug
//! build cannot keep up with B = 100 (its cores fall behind on cover and stop reading).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    clippy::print_stdout,
    clippy::print_stderr
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anon::local::Frame;
use common::{Family, Lab};
use local_client::{Client, SendOptions};

fn drain(receivers: &mut [Client], wait: Duration) -> u64 {
    let mut n = 0;
    for r in receivers {
        while let Ok(f) = r.recv(wait) {
            if matches!(f, Frame::Message { .. }) {
                n += 1;
            }
        }
    }
    n
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let minutes: f64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(30.0);
    let out = args.get(2).cloned().unwrap_or_else(|| "soak.csv".into());
    let nodes = 6;
    let Some(mut lab) = Lab::new(&vec![Family::Dual; 3 + nodes], 60) else {
        eprintln!("the soak needs network namespaces (root)");
        std::process::exit(2);
    };
    lab.start_authorities(&[0, 1, 2]);
    for k in 0..nodes {
        lab.start_node(3 + k, 100.0, None);
    }
    lab.wait_ready(Duration::from_secs(240));
    let connect =
        |lab: &Lab, k: usize| Client::connect(&lab.nodes[k].api_socket(), Some(1)).unwrap();
    // node 0 sends, nodes 1 and 2 receive; nodes 3 to 5 are killed and restarted in turn
    let mut sender = connect(&lab, 0);
    let mut receivers = [connect(&lab, 1), connect(&lab, 2)];
    let mut csv = std::fs::File::create(&out).unwrap();
    writeln!(
        csv,
        "seconds,node,rss_kib,fds,sent,received,drops,delivered"
    )
    .unwrap();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(minutes * 60.0);
    let (mut sent, mut delivered) = (0u64, 0u64);
    let mut next_sample = start;
    let mut next_churn = start + Duration::from_secs(300);
    let mut churned = 0;
    let mut samples: HashMap<usize, Vec<(f64, u64, usize)>> = HashMap::new();
    let payload = vec![0x42u8; 4096];
    let options = SendOptions {
        port: 1,
        ..SendOptions::default()
    };
    while Instant::now() < end {
        let to = lab.nodes[1 + (sent % 2) as usize].node_id;
        if sender.send(to, &payload, options).is_ok() {
            sent += 1;
        }
        delivered += drain(&mut receivers, Duration::from_millis(10));
        if Instant::now() >= next_churn {
            next_churn += Duration::from_secs(300);
            let victim = lab.nodes[3 + churned % 3].proc;
            churned += 1;
            lab.kill(victim);
            std::thread::sleep(Duration::from_secs(2));
            lab.start(victim);
        }
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(10);
            let t = start.elapsed().as_secs_f64();
            for k in 0..nodes {
                let p = lab.nodes[k].proc;
                let m = lab.scrape(k);
                let sum = |prefix: &str| -> f64 {
                    m.iter()
                        .filter(|(n, _)| n.starts_with(prefix))
                        .map(|(_, v)| v)
                        .sum()
                };
                let rss = lab.rss_kib(p).unwrap_or(0);
                let fds = lab.fds(p).unwrap_or(0);
                writeln!(
                    csv,
                    "{t:.0},{k},{rss},{fds},{},{},{},{delivered}",
                    sum("mixed_packets_sent_total"),
                    sum("mixed_packets_received_total"),
                    sum("mixed_drops_total"),
                )
                .unwrap();
                samples.entry(k).or_default().push((t, rss, fds));
            }
            println!("{t:.0} s: {sent} messages sent, {delivered} delivered");
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    // what is still in flight
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered < sent && Instant::now() < deadline {
        delivered += drain(&mut receivers, Duration::from_millis(50));
    }
    let mut failed = Vec::new();
    for (k, s) in &samples {
        // the nodes never restarted: after the first five minutes memory must not grow by
        // more than a fifth, descriptors not at all
        if *k >= 3 {
            continue;
        }
        let warm: Vec<_> = s.iter().filter(|(t, _, _)| *t >= 300.0).collect();
        if let (Some(first), Some(last)) = (warm.first(), warm.last()) {
            if last.1 > first.1 + first.1 / 5 {
                failed.push(format!("node {k}: RSS {} -> {} KiB", first.1, last.1));
            }
            if last.2 > first.2 {
                failed.push(format!("node {k}: FDs {} -> {}", first.2, last.2));
            }
        }
    }
    if delivered * 100 < sent * 99 {
        failed.push(format!("{delivered} of {sent} messages delivered"));
    }
    println!(
        "soak: {minutes} min, {sent} messages sent, {delivered} delivered, {churned} restarts; samples in {out}"
    );
    // the lab's namespaces and processes go before exit (which runs no destructor)
    drop(lab);
    if !failed.is_empty() {
        eprintln!("soak FAILED: {}", failed.join("; "));
        std::process::exit(1);
    }
}
