//! `mixed-perf`: the capacity of one node under test over loopback, with both I/O backends
//! in one run, next to the work of each kind of slot measured in the same run.
//!
//! ```text
//! cargo build --release -p node -p perf
//! target/release/mixed-perf                    # capacity search, io_uring and portable
//! target/release/mixed-perf --bandwidth 30000  # one trial at this B
//! target/release/mixed-perf --idle             # CPU of an idle node at B = 50 over 60 s
//! ```
//!
//! The node under test is a `mixed node` process (one core) in a bench network of three
//! authorities and a sink run here ([`node::capacity`]): h = 5, rho = 1, no loops, so its
//! forward budget is 80% of B. Each trial offers 95% of the forward budget as prebuilt
//! 2-hop packets (the node, then the sink) with zero delay, sent by one thread with
//! sendmmsg; the node is on time when p99 of its departures leave less than 1 ms after
//! their slot and nothing is dropped for the forward budget. The capacity is the highest
//! B on time, found by bisection; each trial restarts the node (same keys, same port) with
//! the B under test.

// a driver: reads clocks, prints, spawns processes
#![allow(
    clippy::disallowed_methods,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use node::IoChoice;
use node::capacity::{
    self, BenchNet, Bisection, ChildNode, Costs, OFFERED_SHARE, Started, Trial, cpu_seconds,
    fetch_metrics,
};

/// The longest trial: it must fit in what is left of an epoch once the restarted node under
/// test is listed, which on dev-2c is 4-5 s of the bench network's 10 s epochs.
const MAX_TRIAL_SECONDS: f64 = 4.0;

#[derive(Parser)]
#[command(
    name = "mixed-perf",
    about = "Capacity of one node over loopback: the highest B per core on time at 95% of its forward budget, both I/O backends"
)]
struct Args {
    /// Which I/O backends to measure: both, io-uring, portable.
    #[arg(long, default_value = "both")]
    io: String,
    /// Seconds of load per trial, at most 4: a trial runs inside one of the bench
    /// network's 10 s epochs, after the node under test is listed in it.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Values of B the bisection tries per backend (each once, or twice when the first trial
    /// is behind).
    #[arg(long, default_value_t = 6)]
    steps: usize,
    /// One trial at this B instead of the search.
    #[arg(long)]
    bandwidth: Option<f64>,
    /// With --bandwidth: the share of the forward budget offered (default 0.95).
    #[arg(long, requires = "bandwidth")]
    offered: Option<f64>,
    /// Measure an idle node's CPU instead: B = 50, no load, for --idle-seconds.
    #[arg(long)]
    idle: bool,
    /// Seconds the idle node is watched.
    #[arg(long, default_value_t = 60)]
    idle_seconds: u64,
}

fn print_trial(io: &str, t: &Trial) {
    let drops: Vec<String> = t.drops.iter().map(|(r, v)| format!("{r} {v:.0}")).collect();
    println!(
        "{io:<9} {:>7.0} {:>8.0} {:>9.0} {:>8.0} {:>7.0} {:>6.1} {:>8.1} {:>6} {:>7} {:>7} {:>6.2}% {:>4}  {}",
        t.bandwidth,
        t.offered,
        t.forwards,
        t.slots,
        t.cover,
        100.0 * t.core_load,
        t.cpu_per_slot() * 1e6,
        us(t.lateness[0]),
        us(t.lateness[1]),
        us(t.lateness[2]),
        100.0 * t.late_share,
        if t.on_time() { "yes" } else { "no" },
        if drops.is_empty() {
            "none".to_string()
        } else {
            drops.join(", ")
        }
    );
}

fn us(s: f64) -> String {
    if s.is_finite() {
        format!("<={:.0}", s * 1e6)
    } else {
        ">10s".into()
    }
}

fn header() {
    println!(
        "{:<9} {:>7} {:>8} {:>9} {:>8} {:>7} {:>6} {:>8} {:>6} {:>7} {:>7} {:>7} {:>4}  drops",
        "io",
        "B",
        "offered",
        "forwards",
        "slots",
        "cover",
        "core%",
        "us/slot",
        "p50us",
        "p99us",
        "p999us",
        ">1ms",
        "ok"
    );
}

fn idle(net: &mut BenchNet, mixed: &Path, io: IoChoice, seconds: u64) -> Result<()> {
    let listen = capacity::free_port()?;
    let node = ChildNode::start(&net.template(), mixed, io, "idle", listen, 50.0)?;
    let probe = node.probe();
    // listed and installed: the cost of an idle node in a network, not of one starting
    let deadline = Instant::now() + Duration::from_secs(4 * capacity::EPOCH_SECONDS + 10);
    while fetch_metrics(probe.metrics)
        .map(|t| capacity::Samples::parse(&t).get("mixed_epoch"))
        .unwrap_or(-1.0)
        < 0.0
    {
        if Instant::now() > deadline {
            bail!("the idle node did not install a consensus");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let cpu0 = cpu_seconds(probe.pid, "");
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let cpu = cpu_seconds(probe.pid, "") - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    println!(
        "idle node, B = 50, {:?}: {:.3} CPU seconds in {:.1} s = {:.2}% of one core (all its threads; target <= 2%)",
        io,
        cpu,
        wall,
        100.0 * cpu / wall
    );
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !(args.seconds > 0.0 && args.seconds <= MAX_TRIAL_SECONDS) {
        bail!(
            "--seconds {}: a trial lasts more than 0 and at most {MAX_TRIAL_SECONDS} s (it runs \
             inside one of the bench network's {} s epochs, after the node is listed in it)",
            args.seconds,
            capacity::EPOCH_SECONDS
        );
    }
    let exe = std::env::current_exe()?;
    let mixed: PathBuf = exe.with_file_name("mixed");
    if !mixed.exists() {
        bail!(
            "{} not found: cargo build --release -p node -p perf",
            mixed.display()
        );
    }
    let backends: Vec<(IoChoice, &str)> = match args.io.as_str() {
        "both" => vec![
            (IoChoice::IoUring, "io-uring"),
            (IoChoice::Portable, "portable"),
        ],
        "io-uring" => vec![(IoChoice::IoUring, "io-uring")],
        "portable" => vec![(IoChoice::Portable, "portable")],
        other => bail!("--io {other}: both, io-uring or portable"),
    };
    let mut net = BenchNet::start()?;
    if args.idle {
        for (io, _) in &backends {
            idle(&mut net, &mixed, *io, args.idle_seconds)?;
        }
        return Ok(());
    }
    let costs = capacity::costs(net.params().hops, 2048);
    let forward_share = OFFERED_SHARE * net.forward_budget(1.0);
    // the B whose slots the cryptography alone would fill: forwards at the offered share,
    // cover in the other slots
    let estimate = 1.0 / (forward_share * costs.unwrap + (1.0 - forward_share) * costs.cover);
    print_costs(&costs, estimate);
    println!(
        "this machine's timer: a sleep of 200 us overshoots by {:.0} us at p99; a trial is on time when its p99 lateness is under {:.0} us (1 ms plus that)\n",
        net.timer_overshoot() * 1e6,
        net.lateness_bound() * 1e6
    );
    header();
    if let Some(b) = args.bandwidth {
        for (io, name) in &backends {
            let listen = capacity::free_port()?;
            let node_name = format!("node-{name}");
            let node = ChildNode::start(&net.template(), &mixed, *io, &node_name, listen, b)?;
            let offered = args.offered.unwrap_or(OFFERED_SHARE) * net.forward_budget(b);
            let t = net.trial(&node.probe(), b, offered, args.seconds)?;
            print_trial(name, &t);
        }
        return Ok(());
    }
    // the backends' bisections take turns, a B of one then a B of the other, so that
    // the host's quiet and busy moments fall on both alike
    let mut searches = Vec::new();
    for (io, name) in &backends {
        searches.push((
            *io,
            *name,
            capacity::free_port()?,
            Bisection::new(estimate * 0.8),
        ));
    }
    let template = net.template();
    let mut trials = Vec::new();
    for _ in 0..args.steps {
        for (io, name, listen, bisection) in &mut searches {
            let node_name = format!("node-{name}");
            let on_time = capacity::try_bandwidth(
                &mut net,
                |b| ChildNode::start(&template, &mixed, *io, &node_name, *listen, b),
                bisection.next(),
                args.seconds,
                &mut trials,
                |t| print_trial(name, t),
            )?;
            bisection.record(on_time);
        }
    }
    let found: Vec<(&str, Option<f64>)> = searches
        .iter()
        .map(|(_, name, _, bisection)| (*name, bisection.capacity()))
        .collect();
    println!();
    for (name, cap) in &found {
        match cap {
            Some(b) => println!(
                "{name}: capacity B = {b:.0} per core; forwards at capacity {:.0}/s = {:.1}% of the batch unwrap rate ({:.0}/s)",
                OFFERED_SHARE * net.forward_budget(*b),
                100.0 * OFFERED_SHARE * net.forward_budget(*b) * costs.unwrap,
                1.0 / costs.unwrap
            ),
            None => println!("{name}: no B on time among those tried"),
        }
    }
    if let [(_, Some(uring)), (_, Some(portable))] = found[..] {
        println!(
            "io_uring / portable: {:.2}x (target >= 1x)",
            uring / portable
        );
    }
    Ok(())
}

fn print_costs(c: &Costs, estimate: f64) {
    println!(
        "machine: {} cores; X25519 backend {:?}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        crypto_simd::x25519::selection()
    );
    println!(
        "work per packet, this process, one core: unwrap {:.2} us ({:.0}/s), drop cover {:.2} us ({:.2}x an unwrap), loop {:.2} us, 2-hop load {:.2} us",
        c.unwrap * 1e6,
        1.0 / c.unwrap,
        c.cover * 1e6,
        c.cover / c.unwrap,
        c.loop_ * 1e6,
        c.create * 1e6
    );
    println!("B the cryptography alone would fill at 95% of the forward budget: {estimate:.0}");
}
