//! `mixed-perf`: drives one node under test with forward traffic over loopback and reports
//! what it forwarded, per core, next to the batch-unwrap rate of the same machine.
//!
//! ```text
//! cargo build --release -p node -p perf
//! target/release/mixed-perf [--rate 40000] [--seconds 3] [--io both]
//! ```
//!
//! The node under test is a `mixed node` process (one core) in a network of three
//! authorities run here; a sink, registered as a second node, counts what the node forwards.
//! The load is 2-hop packets (node under test, then the sink) with zero delay, built before
//! the run, sent with sendmmsg at a steady rate. Reported: packets forwarded per second per
//! core, the node's CPU time per forwarded packet (from /proc), departure lateness after the
//! slot (p50, p99, from the node's metrics), drops; and the batch-unwrap rate of this machine
//! measured here on the same packets.

// a driver: reads clocks, prints, spawns processes
#![allow(
    clippy::disallowed_methods,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use crypto_simd::sphinx::{self, Delay, Destination, Hop, MixPublicKey, MixSecretKey, NodeId};
use dirauth::config::Limits;
use pki_client::{
    AuthorityEndpoint, IdentitySecret, MixKeys, NetworkParams, NodeDescriptor, PkiClient, Roles,
    Which,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

#[derive(Parser)]
#[command(
    name = "mixed-perf",
    about = "Forwarding throughput of one node over loopback"
)]
struct Args {
    /// Offered load, packets a second.
    #[arg(long, default_value_t = 40_000)]
    rate: u64,
    /// Seconds of load (the packets are built before, at the batched creation rate).
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// B of the node under test; its forward budget is 80% of it (h = 5, rho = 1, no loops).
    #[arg(long, default_value_t = 60_000.0)]
    bandwidth: f64,
    /// Which I/O backends to measure: both, io-uring, portable.
    #[arg(long, default_value = "both")]
    io: String,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Network {
    _authorities: Vec<dirauth::AuthorityHandle>,
    endpoints: Vec<AuthorityEndpoint>,
    dir: PathBuf,
}

fn authorities(dir: &std::path::Path) -> Result<Network> {
    let params = NetworkParams {
        packet_size: 1452,
        hops: 5,
        rho_permille: 1000,
        mean_delay_micros: 0,
        loops: 0,
        loop_rate_millis: 0,
        epoch_seconds: 4,
        genesis_unix: unix_now(),
    };
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let secrets: Vec<IdentitySecret> = (0..3).map(|_| IdentitySecret::generate(&mut rng)).collect();
    let endpoints: Vec<AuthorityEndpoint> = secrets
        .iter()
        .zip(&listeners)
        .map(|(s, l)| AuthorityEndpoint {
            identity: s.public(),
            url: format!("http://{}", l.local_addr().unwrap()),
        })
        .collect();
    let mut handles = Vec::new();
    for (i, (secret, listener)) in secrets.into_iter().zip(listeners).enumerate() {
        let config = dirauth::AuthorityConfig {
            identity: secret,
            listen: listener.local_addr()?,
            data_dir: dir.join(format!("authority-{i}")),
            params,
            authorities: endpoints.clone(),
            limits: Limits {
                max_body_bytes: 4096,
                requests_per_second: 1000.0,
                burst: 1000.0,
            },
        };
        handles.push(dirauth::spawn(config, listener)?);
    }
    Ok(Network {
        _authorities: handles,
        endpoints,
        dir: dir.to_path_buf(),
    })
}

/// Registers the sink as a node (keys for the next epochs) so the node under test can
/// forward to it.
fn register_sink(addr: SocketAddr, client: &PkiClient) -> Result<[u8; 32]> {
    // a new sink identity for every measurement
    let mut rng = ChaCha20Rng::seed_from_u64(u64::from(addr.port()));
    let identity = IdentitySecret::generate(&mut rng);
    let epoch = client.current_epoch().context("authority status")?;
    let keys = (0..4)
        .map(|_| MixSecretKey::generate(&mut rng).public_key().0)
        .collect();
    let d = NodeDescriptor {
        identity: identity.public(),
        sequence: 1,
        addresses: vec![addr],
        bandwidth: 1000,
        roles: Roles {
            mix: true,
            services: vec![],
        },
        mix_keys: MixKeys {
            first_epoch: epoch,
            keys,
        },
    }
    .sign(&identity)?;
    for (url, r) in client.register(&d) {
        r.with_context(|| format!("registering the sink with {url}"))?;
    }
    Ok(identity.public().node_id())
}

fn write_node_config(
    net: &Network,
    io: &str,
    bandwidth: f64,
    metrics: SocketAddr,
) -> Result<PathBuf> {
    let dir = net.dir.join(format!("node-{io}"));
    std::fs::create_dir_all(&dir)?;
    let mut text = format!(
        "key_dir = \"keys\"\nlisten = \"127.0.0.1:0\"\nbandwidth = {bandwidth}\ncores = 1\nio = \"{io}\"\nmetrics = \"{metrics}\"\n"
    );
    for e in &net.endpoints {
        text += &format!(
            "[[authorities]]\nidentity = \"{}\"\nurl = \"{}\"\n",
            e.identity.to_hex(),
            e.url
        );
    }
    let path = dir.join("node.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn metrics_text(addr: SocketAddr) -> Option<String> {
    let mut r = ureq::get(&format!("http://{addr}/metrics")).call().ok()?;
    r.body_mut().read_to_string().ok()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// CPU seconds of a process (user + system), from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    // SAFETY-free: sysconf is a plain libc query
    ticks / 100.0
}

struct Measurement {
    io: String,
    forwarded: u64,
    /// What reached the sink: forwards and the node's cover to it.
    sink_received: u64,
    seconds: f64,
    cpu: f64,
    lateness_p50: f64,
    lateness_p99: f64,
    drops: String,
}

fn measure(net: &Network, io: &str, args: &Args, mixed: &std::path::Path) -> Result<Measurement> {
    let metrics: SocketAddr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let config = write_node_config(net, io, args.bandwidth, metrics)?;
    let mut child: Child = Command::new(mixed)
        .args(["node", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .spawn()
        .context("starting the node under test")?;
    let result = (|| -> Result<Measurement> {
        let client = PkiClient::new(net.endpoints.clone(), Duration::from_secs(2), None).unwrap();
        let sink = UdpSocket::bind("127.0.0.1:0")?;
        sink.set_read_timeout(Some(Duration::from_millis(100)))?;
        let sink_id = register_sink(sink.local_addr()?, &client)?;
        // wait until the node under test is in an installed consensus with the sink
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let deadline = Instant::now() + Duration::from_secs(20);
        let (consensus, nut) = loop {
            if Instant::now() > deadline {
                bail!("the node under test did not come up in a consensus");
            }
            std::thread::sleep(Duration::from_millis(200));
            let Some(text) = metrics_text(metrics) else {
                continue;
            };
            if metric(&text, "mixed_epoch") < 0.0 {
                continue;
            }
            let epoch = metric(&text, "mixed_epoch") as u64;
            let Ok(c) = client.fetch(Which::Epoch(epoch), &mut rng) else {
                continue;
            };
            let Ok(v) = c.check_valid_at(unix_now(), 5) else {
                continue;
            };
            // the node under test by its identity (earlier runs' nodes may still be listed)
            let Some(nut_id) =
                std::fs::read_to_string(config.with_file_name("keys").join("identity.key"))
                    .ok()
                    .and_then(|t| pki_client::json::parse_hex32(&t))
                    .map(|b| IdentitySecret::from_bytes(b).public().node_id())
            else {
                continue;
            };
            let Some(nut) = v.node(&nut_id).cloned() else {
                continue;
            };
            if v.node(&sink_id).is_some() {
                break (v, nut);
            }
        };
        let sink_node = consensus.node(&sink_id).unwrap().clone();
        let count = (args.rate * args.seconds) as usize;
        eprintln!("[{io}] building {count} packets...");
        let route = [
            Hop {
                id: NodeId(nut.id()),
                key: MixPublicKey(nut.mix_key),
            },
            Hop {
                id: NodeId(sink_id),
                key: MixPublicKey(sink_node.mix_key),
            },
        ];
        let destination = Destination {
            address: sink_id,
            identifier: [1; 16],
        };
        let delays = [Delay::from_nanos(0)];
        let requests = vec![
            sphinx::PacketRequest {
                route: &route,
                delays: &delays,
                destination: &destination,
                message: b"perf",
            };
            count
        ];
        let mut packets = vec![vec![0u8; 1452]; count];
        let mut results = vec![Ok(()); count];
        sphinx::build_packets(&requests, &mut rng, &mut packets, &mut results)?;
        let target = nut.addresses[0];

        // the sink counts forwarded packets on its own thread
        let received = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let sink_thread = {
            let received = Arc::clone(&received);
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !done.load(Ordering::Relaxed) {
                    if let Ok((n, _)) = sink.recv_from(&mut buf)
                        && n == 1452
                    {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        let text0 = metrics_text(metrics).unwrap_or_default();
        let cpu0 = cpu_seconds(child.id());
        let forwarded0 = metric(&text0, "mixed_packets_sent_total{category=\"forward\"}");
        let sender = UdpSocket::bind("127.0.0.1:0")?;
        let start = Instant::now();
        let per_ms = (args.rate / 1000).max(1) as usize;
        for (k, chunk) in packets.chunks(per_ms).enumerate() {
            for p in chunk {
                let _ = sender.send_to(p, target);
            }
            let due = start + Duration::from_millis(k as u64 + 1);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let sending = start.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(500));
        let cpu = cpu_seconds(child.id()) - cpu0;
        let text = metrics_text(metrics).unwrap_or_default();
        done.store(true, Ordering::Relaxed);
        let _ = sink_thread.join();
        let forwarded =
            metric(&text, "mixed_packets_sent_total{category=\"forward\"}") - forwarded0;
        let drops: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("mixed_drops_total{") && !l.ends_with(" 0"))
            .map(|l| l.trim_start_matches("mixed_drops_total").to_owned())
            .collect();
        Ok(Measurement {
            io: io.to_owned(),
            // the node's own count: the sink also receives the node's cover
            forwarded: if forwarded.is_finite() {
                forwarded as u64
            } else {
                0
            },
            sink_received: received.load(Ordering::Relaxed),
            seconds: sending,
            cpu,
            lateness_p50: metric(&text, "mixed_departure_lateness_seconds{quantile=\"0.5\"}") * 1e6,
            lateness_p99: metric(&text, "mixed_departure_lateness_seconds{quantile=\"0.99\"}")
                * 1e6,
            drops: if drops.is_empty() {
                "none".into()
            } else {
                drops.join(" ")
            },
        })
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// The batch-unwrap rate of this machine, one core, same geometry.
fn unwrap_rate() -> f64 {
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let secret = MixSecretKey::generate(&mut rng);
    let next = MixSecretKey::generate(&mut rng);
    let route = [
        Hop {
            id: NodeId([1; 32]),
            key: secret.public_key(),
        },
        Hop {
            id: NodeId([2; 32]),
            key: next.public_key(),
        },
    ];
    let destination = Destination {
        address: [2; 32],
        identifier: [1; 16],
    };
    let delays = [Delay::from_nanos(0)];
    let n = 4096;
    let requests = vec![
        sphinx::PacketRequest {
            route: &route,
            delays: &delays,
            destination: &destination,
            message: b"perf",
        };
        n
    ];
    let mut packets = vec![vec![0u8; 1452]; n];
    let mut results = vec![Ok(()); n];
    sphinx::build_packets(&requests, &mut rng, &mut packets, &mut results).unwrap();
    let mut out = vec![Err(sphinx::ProcessError::TooShort); 64];
    let start = Instant::now();
    for chunk in packets.chunks_mut(64) {
        let k = chunk.len();
        sphinx::process_batch_in_place(&secret, chunk, &mut out[..k]).unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() -> Result<()> {
    let args = Args::parse();
    let exe = std::env::current_exe()?;
    let mixed = exe.with_file_name("mixed");
    if !mixed.exists() {
        bail!(
            "{} not found: cargo build --release -p node -p perf",
            mixed.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("mixed-perf-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let net = authorities(&dir)?;
    let unwrap = unwrap_rate();
    let backends: Vec<&str> = match args.io.as_str() {
        "both" => vec!["io-uring", "portable"],
        other => vec![other],
    };
    let mut rows = Vec::new();
    for io in backends {
        rows.push(measure(&net, io, &args, &mixed)?);
    }
    println!(
        "machine: {} cores; X25519 backend {:?}; batch unwrap (same packets, one core): {:.0} packets/s",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        crypto_simd::x25519::selection(),
        unwrap
    );
    println!(
        "load: {} packets/s offered for {} s to a node with B = {} (forward budget {:.0}/s), 1 core\n",
        args.rate,
        args.seconds,
        args.bandwidth,
        args.bandwidth * 0.8
    );
    println!(
        "{:<9} {:>12} {:>15} {:>14} {:>12} {:>12} {:>10}  drops",
        "io",
        "forwarded/s",
        "of unwrap rate",
        "CPU us/packet",
        "late p50 us",
        "late p99 us",
        "at sink"
    );
    for m in &rows {
        let rate = m.forwarded as f64 / m.seconds;
        println!(
            "{:<9} {:>12.0} {:>14.1}% {:>14.1} {:>12.0} {:>12.0} {:>10}  {}",
            m.io,
            rate,
            100.0 * rate / unwrap,
            m.cpu * 1e6 / m.forwarded.max(1) as f64,
            m.lateness_p50,
            m.lateness_p99,
            m.sink_received,
            m.drops
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
