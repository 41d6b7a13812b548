//! `mixed-latency`: end-to-end latency of whole messages on a local network on loopback,
//! next to the theory. A path of h hops is held by its h - 1 mixes for exponential delays of
//! mean 1/mu each, so the delay it adds is Erlang(h - 1, mu); the measured latency adds the
//! wait for an own-data slot at the sender and for an emission slot at each mix (Poisson
//! slots at rate B: about 1/B each) and loopback's microseconds.
//!
//! `cargo run --release -p perf --bin mixed-latency -- --mean-delay-ms 20 --messages 300`

// a measuring tool: it reads the wall clock and prints its results
#![allow(clippy::disallowed_methods, clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anon::latency::{erlang_cdf, erlang_quantile};
use anyhow::{Context, Result};
use clap::Parser;
use node::api::{App, MessengerEvent, SendOptions};
use node::demo::{LocalNetwork, LocalOptions};

#[derive(Parser)]
#[command(
    name = "mixed-latency",
    about = "End-to-end latency of single-packet messages on a loopback network, against the sum of h - 1 exponential delays"
)]
struct Args {
    /// Mean per-hop delay 1/mu, milliseconds.
    #[arg(long, default_value_t = 20)]
    mean_delay_ms: u64,
    /// Messages to time.
    #[arg(long, default_value_t = 300)]
    messages: usize,
    /// B of every node, packets a second (high, so that slot waits are small).
    #[arg(long, default_value_t = 1000.0)]
    bandwidth: f64,
    /// Nodes.
    #[arg(long, default_value_t = 8)]
    nodes: usize,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.messages >= 10, "--messages must be at least 10");
    let mean = Duration::from_millis(args.mean_delay_ms);
    let options = LocalOptions {
        nodes: args.nodes,
        epoch_seconds: 30,
        bandwidth: args.bandwidth,
        mean_delay: mean,
        ..LocalOptions::default()
    };
    eprintln!("starting a loopback network of {} nodes...", args.nodes);
    let net = LocalNetwork::start(&options).context("the local network")?;
    let h = usize::from(net.params.hops);
    let sender = App::open(&net.nodes[0], None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let last = &net.nodes[net.nodes.len() - 1];
    let receiver = App::open(last, Some(0)).map_err(|e| anyhow::anyhow!("{e}"))?;
    // one packet per message: redundancy 1 (loopback loses nothing)
    let send = SendOptions {
        redundancy: Some(1.0),
        ..SendOptions::default()
    };
    // let loops warm up the q estimate and the paths
    std::thread::sleep(Duration::from_secs(2));
    let mut sent: HashMap<[u8; 16], Instant> = HashMap::new();
    let mut latencies = Vec::new();
    let spacing = Duration::from_millis(20);
    let deadline = Instant::now() + Duration::from_secs(60) + spacing * args.messages as u32;
    let mut next = Instant::now();
    while latencies.len() < args.messages && Instant::now() < deadline {
        if sent.len() < args.messages && Instant::now() >= next {
            let id = sender
                .send(last.node_id(), b"timing", send)
                .map_err(|e| anyhow::anyhow!("send: {e}"))?;
            sent.insert(id, Instant::now());
            next += spacing;
        }
        while let Ok(e) = receiver.recv(Duration::from_millis(1)) {
            if let MessengerEvent::Received(r) = e
                && let Some(t) = sent.get(&r.id)
            {
                latencies.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    anyhow::ensure!(
        latencies.len() * 10 >= args.messages * 9,
        "only {} of {} messages arrived",
        latencies.len(),
        args.messages
    );
    latencies.sort_by(f64::total_cmp);
    let theory = |p: f64| erlang_quantile(h - 1, mean, p).as_secs_f64() * 1e3;
    let slot_ms = 1e3 / args.bandwidth;
    println!(
        "mixed-latency: {} nodes on loopback, B = {} packets/s, h = {h} ({} mixes hold each packet), mean delay 1/mu = {} ms, {} single-packet messages",
        args.nodes,
        args.bandwidth,
        h - 1,
        args.mean_delay_ms,
        latencies.len()
    );
    println!(
        "{:<10} {:>12} {:>22}",
        "quantile", "measured ms", "Erlang(h-1, mu) ms"
    );
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        println!(
            "{name:<10} {:>12.1} {:>22.1}",
            quantile(&latencies, q),
            theory(q)
        );
    }
    let mean_measured = latencies.iter().sum::<f64>() / latencies.len() as f64;
    println!(
        "{:<10} {:>12.1} {:>22.1}",
        "mean",
        mean_measured,
        (h - 1) as f64 * args.mean_delay_ms as f64
    );
    // how well the measured distribution follows the theory shifted by the slot waits
    let shift = (h as f64) * slot_ms;
    let ks = latencies
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let f = erlang_cdf(
                h - 1,
                mean,
                Duration::from_secs_f64(((x - shift) / 1e3).max(0.0)),
            );
            ((i + 1) as f64 / latencies.len() as f64 - f).abs()
        })
        .fold(0.0, f64::max);
    println!(
        "slot waits expected about h/B = {shift:.1} ms in all; Kolmogorov-Smirnov distance to the theory shifted by them: {ks:.3}"
    );
    Ok(())
}
