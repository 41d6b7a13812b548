//! `mixed-storage-bench`: a storage provider's PUT and GET throughput on one core, through
//! its request handling (parse, Ed25519 verification, redb commit before the answer), next
//! to the verification alone measured in the same run: the share of a PUT that is the
//! database.
//!
//! ```text
//! cargo build --release -p perf
//! target/release/mixed-storage-bench              # 2,000 blocks in a temporary folder
//! target/release/mixed-storage-bench --blocks 10000 --dir /var/tmp/sp-bench
//! ```
//!
//! Each PUT is committed with redb's default durability (an fsync) before it is answered,
//! as a provider does, so the figure depends on the disk under `--dir`.
//!
//! `--mixnet` measures instead the write-to-read time of a 64 KiB message through the
//! mixnet on loopback: a bench network (authorities, four nodes and a provider node, in
//! this process) where one node PUTs the message's blocks (830 bytes of it each, in the
//! boxes of one BACAP stream) with a window of requests in flight, then GETs and opens
//! them all.

// a driver: reads clocks, prints
#![allow(
    clippy::disallowed_methods,
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Parser;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use storage::bacap::{self, WriteCap};
use storage::protocol::{self, Response, Status};
use storage::{BlockStore, Limits, Provider};

#[derive(Parser)]
#[command(
    name = "mixed-storage-bench",
    about = "A storage provider's PUT and GET throughput on one core, with redb commits, against Ed25519 verification alone"
)]
struct Args {
    /// Blocks to PUT (each a full 832-byte block in its own box) and then GET.
    #[arg(long, default_value_t = 2000)]
    blocks: usize,
    /// Where the store goes (default: a new folder under the system's temporary folder,
    /// removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Measure the write-to-read time of a message through the mixnet on loopback instead.
    #[arg(long)]
    mixnet: bool,
    /// With --mixnet: the message's size in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    bytes: usize,
    /// With --mixnet: requests in flight at once.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// With --mixnet: B of every node, packets a second.
    #[arg(long, default_value_t = 200.0)]
    bandwidth: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.mixnet {
        return mixnet(&args);
    }
    if args.blocks == 0 {
        bail!("--blocks must be at least 1");
    }
    let (dir, remove) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("mixed-storage-bench-{}", std::process::id())),
            true,
        ),
    };
    if dir.join(storage::store::FILE_NAME).exists() {
        bail!(
            "{} holds a store already: give an empty --dir",
            dir.display()
        );
    }
    // the client's work, before the clock starts: a stream's boxes, sealed and encoded
    let cap = WriteCap::generate(&mut ChaCha20Rng::seed_from_u64(1));
    let mut p = cap.start().clone();
    let mut puts = Vec::with_capacity(args.blocks);
    let mut gets = Vec::with_capacity(args.blocks);
    let mut sealed = Vec::with_capacity(args.blocks);
    for i in 0..args.blocks {
        let s = cap
            .box_at(&p)?
            .seal(&[(i % 251) as u8; bacap::PLAINTEXT_MAX])?;
        puts.push(protocol::encode_put(
            &[0; 8],
            &s.box_id,
            &s.signature,
            &s.block,
        ));
        gets.push(protocol::encode_get(&[0; 8], &s.box_id));
        sealed.push(s);
        p = p.next()?;
    }
    let t = Instant::now();
    for s in &sealed {
        bacap::verify_put(&s.box_id, &s.signature, &s.block)?;
    }
    let verify = t.elapsed().as_secs_f64() / args.blocks as f64;

    let limits = Limits {
        max_blocks: args.blocks as u64 + 1,
        reserve_bytes: 0,
        ..Limits::default()
    };
    let mut sp = Provider::new(BlockStore::open(&dir, limits)?);
    let t = Instant::now();
    for r in &puts {
        let status = Response::decode(&sp.handle(r, 1)).map(|r| r.status);
        if status != Some(Status::Stored) {
            bail!("a PUT was answered {status:?}");
        }
    }
    let put = t.elapsed().as_secs_f64() / args.blocks as f64;
    let t = Instant::now();
    for r in &gets {
        let status = Response::decode(&sp.handle(r, 1)).map(|r| r.status);
        if status != Some(Status::Found) {
            bail!("a GET was answered {status:?}");
        }
    }
    let get = t.elapsed().as_secs_f64() / args.blocks as f64;
    let stats = sp.store().stats();
    drop(sp);
    let file = std::fs::metadata(dir.join(storage::store::FILE_NAME))?.len();
    if remove {
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!(
        "{} blocks of {} bytes in {}",
        args.blocks,
        bacap::BLOCK_LEN,
        dir.display()
    );
    println!(
        "  verify alone   {:>8.1} us  {:>9.0} blocks/s",
        verify * 1e6,
        1.0 / verify
    );
    println!(
        "  PUT (commit)   {:>8.1} us  {:>9.0} blocks/s  {:.2}x the verification",
        put * 1e6,
        1.0 / put,
        put / verify
    );
    println!(
        "  GET            {:>8.1} us  {:>9.0} blocks/s",
        get * 1e6,
        1.0 / get
    );
    println!(
        "  store: {} blocks, {} bytes of blocks, file {} bytes ({:.2}x)",
        stats.blocks,
        stats.bytes,
        file,
        file as f64 / stats.bytes.max(1) as f64
    );
    Ok(())
}

/// Sends every request of `requests` (at most `window` in flight, each resent after 30 s
/// without an answer) from `app` to `provider`; returns the responses in order.
fn exchange(
    app: &node::api::App,
    provider: [u8; 32],
    requests: &[Vec<u8>],
    window: usize,
) -> Result<Vec<Response>> {
    use std::collections::HashMap;
    use std::time::Duration;
    let options = node::api::SendOptions {
        reply_surbs: 3,
        port: protocol::SERVICE_PORT,
        ..Default::default()
    };
    let mut answers: Vec<Option<Response>> = vec![None; requests.len()];
    let mut in_flight: HashMap<[u8; 16], (usize, Instant)> = HashMap::new();
    let mut next = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while answers.iter().any(Option::is_none) {
        if Instant::now() > deadline {
            bail!("requests unanswered after 600 s");
        }
        // resend what waited too long
        let late: Vec<([u8; 16], usize)> = in_flight
            .iter()
            .filter(|(_, (_, t))| t.elapsed() > Duration::from_secs(30))
            .map(|(id, (i, _))| (*id, *i))
            .collect();
        for (id, i) in late {
            in_flight.remove(&id);
            let id = app.send(provider, &requests[i], options)?;
            in_flight.insert(id, (i, Instant::now()));
        }
        while in_flight.len() < window && next < requests.len() {
            let id = app.send(provider, &requests[next], options)?;
            in_flight.insert(id, (next, Instant::now()));
            next += 1;
        }
        if let Ok(node::api::MessengerEvent::Received(r)) = app.recv(Duration::from_millis(100))
            && let Some((i, _)) = r.in_reply_to.and_then(|id| in_flight.remove(&id))
        {
            answers[i] = Response::decode(&r.data);
            if answers[i].is_none() {
                bail!("a response that does not parse");
            }
        }
    }
    Ok(answers.into_iter().flatten().collect())
}

fn mixnet(args: &Args) -> Result<()> {
    use node::demo::{LocalNetwork, LocalOptions};
    use std::time::Duration;
    let net = LocalNetwork::start(&LocalOptions {
        nodes: 4,
        epoch_seconds: 60,
        bandwidth: args.bandwidth,
        ..LocalOptions::default()
    })?;
    let dir = std::env::temp_dir().join(format!("mixed-storage-mixnet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let provider = node::Node::start(node::NodeConfig {
        key_dir: dir.join("keys"),
        listen: "127.0.0.1:0".parse()?,
        advertise: vec![],
        bandwidth: args.bandwidth,
        cores: 1,
        io: node::IoChoice::Auto,
        metrics: None,
        passive: false,
        on_loop_collapse: engine::AlertPolicy::Withdraw,
        api_socket: None,
        storage: Some(node::config::StorageConfig {
            dir: dir.join("storage"),
            limits: Limits {
                reserve_bytes: 0,
                ..Limits::default()
            },
        }),
        offline: Default::default(),
        authorities: net.endpoints.clone(),
    })?;
    // until every node has a consensus that lists the provider
    let deadline = Instant::now() + Duration::from_secs(300);
    let first = net.nodes[0].epoch().unwrap_or(0);
    loop {
        let e = provider.epoch();
        if e.is_some_and(|e| e > first) && net.nodes.iter().all(|n| n.epoch() == e) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the provider was not listed in time");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let app = node::api::App::open(&net.nodes[0], Some(protocol::SERVICE_PORT))?;
    let cap = WriteCap::generate(&mut ChaCha20Rng::seed_from_u64(2));
    let message: Vec<u8> = (0..args.bytes).map(|i| (i * 31 % 251) as u8).collect();
    let mut p = cap.start().clone();
    let (mut puts, mut gets, mut boxes) = (Vec::new(), Vec::new(), Vec::new());
    for chunk in message.chunks(bacap::PLAINTEXT_MAX) {
        let s = cap.box_at(&p)?.seal(chunk)?;
        puts.push(protocol::encode_put(
            &[0; 8],
            &s.box_id,
            &s.signature,
            &s.block,
        ));
        gets.push(protocol::encode_get(&[0; 8], &s.box_id));
        boxes.push(cap.read_cap().box_at(&p)?);
        p = p.next()?;
    }
    let t = Instant::now();
    let written = exchange(&app, provider.node_id(), &puts, args.window)?;
    let write = t.elapsed().as_secs_f64();
    if let Some(r) = written.iter().find(|r| r.status != Status::Stored) {
        bail!("a PUT was answered {:?}", r.status);
    }
    let t = Instant::now();
    let read = exchange(&app, provider.node_id(), &gets, args.window)?;
    let read_time = t.elapsed().as_secs_f64();
    let mut back = Vec::with_capacity(message.len());
    for (r, b) in read.iter().zip(&boxes) {
        let sealed = r
            .sealed()
            .ok_or_else(|| anyhow::anyhow!("a GET was answered {:?}", r.status))?;
        back.extend_from_slice(&b.open(&sealed)?);
    }
    if back != message {
        bail!("the message read back differs from the one written");
    }
    println!(
        "{} bytes in {} blocks through the mixnet on loopback (B = {}, {} requests in flight, 3 hops each way)",
        args.bytes,
        puts.len(),
        args.bandwidth,
        args.window
    );
    println!(
        "  write  {write:>7.1} s  ({:.0} ms a block)",
        write * 1e3 / puts.len() as f64
    );
    println!(
        "  read   {read_time:>7.1} s  ({:.0} ms a block)",
        read_time * 1e3 / puts.len() as f64
    );
    println!(
        "  write to read {:.1} s; read back intact",
        write + read_time
    );
    provider.stop();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
