//! `mixed demo`: three directory authorities and a handful of nodes on loopback, in one
//! process; real UDP, real consensus, real Sphinx. Whole messages (one of 64 KiB) go end to
//! end between two nodes through the anonymity API, are acknowledged through SURBs, and a
//! summary says what every node did.

// the demo is a driver: it reads the wall clock to pace and time what it does
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use dirauth::config::Limits;
use dirauth::{AuthorityConfig, AuthorityHandle};
use engine::DropReason;
use pki_client::{AuthorityEndpoint, IdentitySecret, NetworkParams};

use crate::NodeConfig;
use crate::io::IoChoice;
use crate::runtime::{Node, NodeError, unix_now};

/// How the local network is made.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    /// Nodes (at least 4).
    pub nodes: usize,
    /// Epoch length, seconds (the first consensus exists from the second epoch on).
    pub epoch_seconds: u64,
    /// B of every node, packets a second.
    pub bandwidth: f64,
    /// Cores of every node.
    pub cores: usize,
    /// The I/O backend.
    pub io: IoChoice,
    /// Mean per-hop delay, 1/lambda.
    pub mean_delay: Duration,
    /// b_loop: packets a second each of the L = 2 loops costs.
    pub loop_rate: f64,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            nodes: 8,
            epoch_seconds: 6,
            bandwidth: 100.0,
            cores: 1,
            io: IoChoice::Auto,
            mean_delay: Duration::from_millis(20),
            loop_rate: 1.0,
        }
    }
}

/// A temporary folder, removed on drop.
#[derive(Debug)]
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    /// A new folder `<prefix>-<random hex>` under the system's temporary folder.
    pub(crate) fn new(prefix: &str) -> Result<TempDir, NodeError> {
        let mut tag = [0u8; 6];
        getrandom::fill(&mut tag)?;
        let dir =
            std::env::temp_dir().join(format!("{prefix}-{}", pki_client::descriptor::hex(&tag)));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

/// Starts three authorities on loopback with these parameters, their state under `dir`;
/// returns them and their endpoints.
pub(crate) fn spawn_authorities(
    dir: &std::path::Path,
    params: NetworkParams,
) -> Result<(Vec<AuthorityHandle>, Vec<AuthorityEndpoint>), NodeError> {
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let mut secrets = Vec::new();
    for _ in 0..3 {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b)?;
        secrets.push(IdentitySecret::from_bytes(b));
    }
    let endpoints: Vec<AuthorityEndpoint> = secrets
        .iter()
        .zip(&listeners)
        .map(|(s, l)| {
            Ok(AuthorityEndpoint {
                identity: s.public(),
                url: format!("http://{}", l.local_addr()?),
            })
        })
        .collect::<Result<_, std::io::Error>>()?;
    let mut authorities = Vec::new();
    for (i, (secret, listener)) in secrets.into_iter().zip(listeners).enumerate() {
        let config = AuthorityConfig {
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
        authorities.push(dirauth::spawn(config, listener)?);
    }
    Ok((authorities, endpoints))
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Authorities and nodes on loopback.
pub struct LocalNetwork {
    /// The authorities.
    pub authorities: Vec<AuthorityHandle>,
    /// Their endpoints.
    pub endpoints: Vec<AuthorityEndpoint>,
    /// The nodes.
    pub nodes: Vec<Node>,
    /// The network parameters.
    pub params: NetworkParams,
    _dir: TempDir,
}

impl std::fmt::Debug for LocalNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalNetwork")
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

impl LocalNetwork {
    /// Starts three authorities and `options.nodes` nodes; returns once every node has the
    /// first consensus installed (about one to two epochs).
    pub fn start(options: &LocalOptions) -> Result<LocalNetwork, NodeError> {
        let v4: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start_on(options, |_| (v4, Vec::new()))
    }

    /// [`Self::start`] with node `i` listening on `addressing(i).0` and publishing
    /// `addressing(i).1` (a port 0 there is the port bound): IPv4, IPv6 and dual-stack
    /// nodes in one network.
    pub fn start_on(
        options: &LocalOptions,
        addressing: impl Fn(usize) -> (SocketAddr, Vec<SocketAddr>),
    ) -> Result<LocalNetwork, NodeError> {
        let dir = TempDir::new("mixed-demo")?;
        let params = NetworkParams {
            packet_size: 1452,
            hops: 3,
            rho_permille: 1500,
            mean_delay_micros: options.mean_delay.as_micros() as u64,
            loops: 2,
            loop_rate_millis: (options.loop_rate * 1000.0) as u32,
            epoch_seconds: options.epoch_seconds,
            genesis_unix: unix_now(),
        };
        let (authorities, endpoints) = spawn_authorities(&dir.0, params)?;
        let mut nodes = Vec::new();
        for i in 0..options.nodes {
            let config = NodeConfig {
                key_dir: dir.0.join(format!("node-{i}")),
                listen: addressing(i).0,
                advertise: addressing(i).1,
                bandwidth: options.bandwidth,
                cores: options.cores,
                io: options.io,
                metrics: None,
                passive: false,
                on_loop_collapse: engine::AlertPolicy::Withdraw,
                api_socket: Some(dir.0.join(format!("node-{i}")).join("api.sock")),
                storage: None,
                offline: Default::default(),
                authorities: endpoints.clone(),
            };
            nodes.push(Node::start(config)?);
        }
        let network = LocalNetwork {
            authorities,
            endpoints,
            nodes,
            params,
            _dir: dir,
        };
        // the first consensus covers the second epoch; allow for three
        let deadline =
            std::time::Instant::now() + Duration::from_secs(3 * options.epoch_seconds + 5);
        while network.nodes.iter().any(|n| n.epoch().is_none()) {
            if std::time::Instant::now() > deadline {
                return Err(NodeError::NoConsensus { epochs: 3 });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(network)
    }
}

/// What `mixed demo` measured.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Messages sent.
    pub sent: usize,
    /// Messages delivered intact.
    pub delivered: usize,
    /// Messages the sender heard an ACK for.
    pub acked: usize,
    /// End-to-end latencies of the delivered messages, milliseconds, sorted.
    pub latencies_ms: Vec<f64>,
    /// The summary printed.
    pub summary: String,
    /// The offline delivery, unless skipped.
    pub offline: Option<OfflineReport>,
}

/// The size of demo message `k` of `n`: the first is 64 KiB, a few are a few KiB, the rest
/// are short texts; all are whole messages (RaptorQ-coded, acknowledged).
fn demo_message(k: usize, n: usize) -> Vec<u8> {
    let mut text = format!("demo message {k} of {n}").into_bytes();
    let len = match k {
        0 => 64 * 1024,
        k if k % 5 == 1 => 4096 * (1 + k % 4),
        _ => text.len(),
    };
    let mut i = 0u32;
    while text.len() < len {
        i = i.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        text.push((i >> 16) as u8);
    }
    text
}

/// Runs the demo: a local network, `messages` whole messages from the first node to the
/// last (one of 64 KiB), each acknowledged through a SURB, then a summary.
pub fn run(
    options: &LocalOptions,
    messages: usize,
    with_offline: bool,
) -> Result<DemoReport, NodeError> {
    let started = std::time::Instant::now();
    let net = LocalNetwork::start(options)?;
    let ready = started.elapsed();
    let counters_before: Vec<_> = net.nodes.iter().map(|n| n.counters()).collect();
    let window_start = std::time::Instant::now();
    let api = NodeError::Api;
    let sender = crate::api::App::open(&net.nodes[0], None).map_err(api)?;
    let receiver_node = &net.nodes[net.nodes.len() - 1];
    let receiver = crate::api::App::open(receiver_node, Some(0)).map_err(api)?;
    let clock_origin = std::time::Instant::now();
    let mut sent_at: HashMap<[u8; 16], (Duration, Vec<u8>)> = HashMap::new();
    let mut latencies = Vec::new();
    let (mut delivered, mut acked, mut offline, mut bytes) = (0usize, 0usize, 0usize, 0usize);
    let mut k = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while (k < messages || delivered < messages || acked + offline < messages)
        && std::time::Instant::now() < deadline
    {
        if k < messages {
            let data = demo_message(k, messages);
            match sender.send(
                receiver_node.node_id(),
                &data,
                crate::api::SendOptions::default(),
            ) {
                Ok(id) => {
                    bytes += data.len();
                    sent_at.insert(id, (clock_origin.elapsed(), data));
                    k += 1;
                }
                // too many in flight: the slots will drain them
                Err(e) if e.code == crate::api::Code::Busy => {}
                Err(e) => return Err(api(e)),
            }
        }
        while let Ok(e) = receiver.recv(Duration::from_millis(5)) {
            if let anon::MessengerEvent::Received(r) = e
                && let Some((at, data)) = sent_at.get(&r.id)
                && r.data == *data
            {
                delivered += 1;
                latencies.push((clock_origin.elapsed() - *at).as_secs_f64() * 1e3);
            }
        }
        while let Ok(e) = sender.recv(Duration::from_millis(1)) {
            match e {
                anon::MessengerEvent::Acknowledged { .. }
                | anon::MessengerEvent::Delivered { .. } => acked += 1,
                anon::MessengerEvent::Offline { .. } | anon::MessengerEvent::Undelivered { .. } => {
                    offline += 1
                }
                anon::MessengerEvent::Received(_)
                | anon::MessengerEvent::Stored { .. }
                | anon::MessengerEvent::Alert { .. } => {}
            }
        }
    }
    // let the network run a little after the last delivery, for the rates
    std::thread::sleep(Duration::from_secs(2));
    let window = window_start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let mut summary = summarize(
        &net,
        &counters_before,
        window,
        &latencies,
        messages,
        delivered,
        ready,
        options,
    );
    let m = net.nodes[0].metrics().messenger();
    let r = receiver_node.metrics().messenger();
    use std::fmt::Write as _;
    let _ = writeln!(
        summary,
        "whole messages: {bytes} bytes in {messages} messages (the largest 64 KiB, RaptorQ-coded); \
         {acked} acknowledged through SURBs, {offline} reported offline or undelivered; \
         {} symbols sent, {} received, {} retries",
        m.symbols_sent, r.symbols_received, m.retries
    );
    let offline = if with_offline {
        let o = offline_delivery(&net, options.bandwidth)?;
        let _ = writeln!(
            summary,
            "offline delivery: a storage provider and a recipient joined; the recipient's node \
             stopped and node 0 sent it a message: Stored at the provider after {:.1} s (three \
             attempts first); the recipient's node started again and collected it after {:.1} s \
             ({}); node 0 heard Delivered after {:.1} s",
            o.stored_after,
            o.collected_after,
            if o.intact {
                "intact, marked stored"
            } else {
                "NOT intact"
            },
            o.delivered_after
        );
        Some(o)
    } else {
        None
    };
    Ok(DemoReport {
        sent: k,
        delivered,
        acked,
        latencies_ms: latencies,
        summary,
        offline,
    })
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    net: &LocalNetwork,
    before: &[engine::Counters],
    window: f64,
    latencies: &[f64],
    messages: usize,
    delivered: usize,
    ready: Duration,
    options: &LocalOptions,
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "mixed demo: 3 authorities, {} nodes on loopback (B = {} packets/s each, h = {}, mean delay {} ms, epochs of {} s); consensus installed after {:.1} s",
        net.nodes.len(),
        options.bandwidth,
        net.params.hops,
        net.params.mean_delay_micros / 1000,
        net.params.epoch_seconds,
        ready.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "\n{:<4} {:<21} {:<9} {:>9} {:>6} {:>8} {:>6} {:>6} {:>7}  drops",
        "node", "address", "io", "emitted/s", "own", "forwards", "loops", "back", "cover"
    );
    for (i, (node, b)) in net.nodes.iter().zip(before).enumerate() {
        let c = node.counters();
        let emitted = (c.total_sent() - b.total_sent()) as f64 / window;
        let drops: Vec<String> = DropReason::ALL
            .iter()
            .filter(|r| c.drops(**r) > 0)
            .map(|r| format!("{}={}", r.label(), c.drops(*r)))
            .collect();
        let _ = writeln!(
            s,
            "{:<4} {:<21} {:<9} {:>9.1} {:>6} {:>8} {:>6} {:>6} {:>7}  {}",
            i,
            node.addr(),
            node.io_backends().first().copied().unwrap_or("-"),
            emitted,
            c.sent_own,
            c.sent_forward,
            c.sent_loop,
            c.loops_returned,
            c.sent_cover,
            if drops.is_empty() {
                "none".into()
            } else {
                drops.join(" ")
            }
        );
    }
    let _ = writeln!(
        s,
        "\nmessages: {delivered} of {messages} delivered end to end, node 0 -> node {}",
        net.nodes.len() - 1
    );
    if !latencies.is_empty() {
        let _ = writeln!(
            s,
            "latency (ms): p50 {:.1}, p90 {:.1}, p99 {:.1}, max {:.1} (queueing for an own-data slot included)",
            quantile(latencies, 0.5),
            quantile(latencies, 0.9),
            quantile(latencies, 0.99),
            quantile(latencies, 1.0)
        );
    }
    s
}

/// What the demo's offline delivery measured.
#[derive(Debug, Clone)]
pub struct OfflineReport {
    /// From the send to `Stored` (the three attempts first), seconds.
    pub stored_after: f64,
    /// From the recipient's restart to the message in its hands, seconds.
    pub collected_after: f64,
    /// From the recipient's restart to `Delivered` at the sender, seconds.
    pub delivered_after: f64,
    /// The message arrived intact, marked stored, once.
    pub intact: bool,
}

fn wait_for(
    app: &crate::api::App,
    within: Duration,
    want: impl Fn(&anon::MessengerEvent) -> bool,
) -> Option<anon::MessengerEvent> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        if let Ok(e) = app.recv(left)
            && want(&e)
        {
            return Some(e);
        }
    }
}

/// The configuration of a node that joins a local network: keys in `dir/name`, on
/// loopback, bound, at `bandwidth`; a storage provider (its store in `dir/name/storage`,
/// no free-space reserve: a demo runs anywhere) when `storage`.
pub fn node_config(
    net: &LocalNetwork,
    dir: &std::path::Path,
    name: &str,
    bandwidth: f64,
    storage: bool,
) -> NodeConfig {
    NodeConfig {
        key_dir: dir.join(name),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        advertise: vec![],
        bandwidth,
        cores: 1,
        io: crate::io::IoChoice::Auto,
        metrics: None,
        passive: false,
        on_loop_collapse: engine::AlertPolicy::Withdraw,
        api_socket: None,
        storage: storage.then(|| crate::config::StorageConfig {
            dir: dir.join(name).join("storage"),
            limits: storage::Limits {
                reserve_bytes: 0,
                ..storage::Limits::default()
            },
        }),
        offline: Default::default(),
        authorities: net.endpoints.clone(),
    }
}

/// Waits for an epoch whose consensus lists `joined` (two epochs on), installed on them
/// and on every node of `net`.
pub(crate) fn wait_listed(net: &LocalNetwork, joined: &[&Node]) -> Result<(), NodeError> {
    let from = net.nodes[0].epoch().unwrap_or(0) + 2;
    let deadline =
        std::time::Instant::now() + Duration::from_secs(5 * net.params.epoch_seconds + 10);
    loop {
        let e = joined[0].epoch();
        if e.is_some_and(|e| e >= from)
            && joined.iter().all(|n| n.epoch() == e)
            && net.nodes.iter().all(|n| n.epoch() == e)
        {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(NodeError::NoConsensus { epochs: 5 });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An offline delivery on `net` (docs/storage.md): a storage provider and a recipient join
/// the network; the recipient's node stops; a message from node 0 to it is stored at the
/// provider after its three attempts; the recipient's node starts again (same keys),
/// collects it, and node 0 hears `Delivered`.
pub fn offline_delivery(net: &LocalNetwork, bandwidth: f64) -> Result<OfflineReport, NodeError> {
    let dir = TempDir::new("mixed-demo-offline")?;
    let config = |name: &str, storage: bool| node_config(net, &dir.0, name, bandwidth, storage);
    let provider = Node::start(config("provider", true))?;
    let recipient = Node::start(config("recipient", false))?;
    wait_listed(net, &[&provider, &recipient])?;
    let sender = &net.nodes[0];
    let (key, id) = (recipient.identity_key(), recipient.node_id());
    sender.add_contact(key)?;
    recipient.stop();
    let api = NodeError::Api;
    let app = crate::api::App::open(sender, None).map_err(api)?;
    let text = b"mixed demo: written while you were offline".to_vec();
    let sent = std::time::Instant::now();
    let msg = app
        .send(id, &text, crate::api::SendOptions::default())
        .map_err(api)?;
    let stored = wait_for(
        &app,
        Duration::from_secs(180),
        |e| matches!(e, anon::MessengerEvent::Stored { id } | anon::MessengerEvent::Offline { id } if *id == msg),
    );
    let timeout = || {
        NodeError::Api(anon::local::ApiError::new(
            anon::local::Code::Timeout,
            "the offline delivery did not complete in time",
        ))
    };
    if !matches!(stored, Some(anon::MessengerEvent::Stored { .. })) {
        return Err(timeout());
    }
    let stored_after = sent.elapsed().as_secs_f64();
    let back = std::time::Instant::now();
    let recipient = Node::start(config("recipient", false))?;
    recipient.add_contact(sender.identity_key())?;
    let inbox = crate::api::App::open(&recipient, Some(0)).map_err(api)?;
    let got = wait_for(
        &inbox,
        Duration::from_secs(180),
        |e| matches!(e, anon::MessengerEvent::Received(r) if r.id == msg),
    );
    let collected_after = back.elapsed().as_secs_f64();
    let intact = matches!(&got, Some(anon::MessengerEvent::Received(r))
        if r.data == text && r.stored && r.sender == Some(sender.identity_key()));
    if got.is_none() {
        return Err(timeout());
    }
    let delivered = wait_for(
        &app,
        Duration::from_secs(120),
        |e| matches!(e, anon::MessengerEvent::Delivered { id } if *id == msg),
    );
    if delivered.is_none() {
        return Err(timeout());
    }
    let delivered_after = back.elapsed().as_secs_f64();
    drop(inbox);
    recipient.stop();
    provider.stop();
    Ok(OfflineReport {
        stored_after,
        collected_after,
        delivered_after,
        intact,
    })
}
