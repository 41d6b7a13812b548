//! A node's capacity, measured: the highest B per core at which its departures stay on
//! time (p99 lateness under 1 ms) with no forward-budget drop while it is offered 95% of
//! its forward budget, B - rho * B / h - L * b_loop (section 4.3 of the paper).
//!
//! A bench network of three authorities and a sink runs in this process; the node under test is a
//! `mixed node` process of its own ([`ChildNode`]), for `mixed-perf` and `mixed node --self-test`
//! alike. The load is 2-hop packets (the node, then the sink) with zero delay, built before each
//! trial, sent by one thread with sendmmsg; the sink counts with recvmmsg. Each trial reads the
//! node's metrics before and after, so its figures are the window's own: slots, forwards, cover,
//! lateness quantiles, drops by reason, and the CPU time of the node's core threads. [`costs`]
//! measures, in this process and on the same geometry, the work of an unwrap (what a forward
//! costs), of a drop-cover packet and of a loop.

// a measuring tool: it reads clocks and OS randomness at its root
#![allow(clippy::disallowed_methods)]

pub mod load;
mod machine;
mod process;
pub mod selftest;
mod trial;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crypto_simd::sphinx::{
    self, Delay, Destination, Hop, MixPublicKey, MixSecretKey, NodeId, PacketRequest,
};
use dirauth::AuthorityHandle;
use pki_client::{
    AuthorityEndpoint, IdentitySecret, MixKeys, NetworkParams, NodeDescriptor, PkiClient, Roles,
    Which,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crate::NodeConfig;
use crate::demo::{TempDir, spawn_authorities};
use crate::io::IoChoice;
use crate::runtime::unix_now;
pub use load::{Samples, cpu_seconds, fetch_metrics};
pub use machine::{
    Costs, costs, free_port, free_tcp_port, loopback_round_trip, timer_overshoot_p99,
};
pub use process::ChildNode;
pub use trial::{NOISE, Trial};

/// The share of its forward budget a node is offered in a trial.
pub const OFFERED_SHARE: f64 = 0.95;
/// The lateness bound of a trial: p99 of departures after their slot, beyond what this
/// machine's own timed sleeps overshoot at p99 ([`BenchNet::timer_overshoot`]: a node
/// that sleeps between slots cannot leave more punctually than the machine wakes it).
pub const ON_TIME: f64 = 1e-3;
/// Epoch length of the bench network, seconds.
pub const EPOCH_SECONDS: u64 = 10;
/// The packet size of the bench network.
pub const PACKET_SIZE: usize = 1452;

/// What went wrong in a measurement.
#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    /// A system call or file failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The node under test did not become usable.
    #[error("{0}")]
    Setup(String),
}

type Result<T> = std::result::Result<T, CapacityError>;

fn setup(why: impl Into<String>) -> CapacityError {
    CapacityError::Setup(why.into())
}

/// The node under test: its ID, where its metrics are served, and its process (whose
/// threads named `mixed-core-*` are its cores).
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    /// Its node ID.
    pub id: [u8; 32],
    /// Its metrics listener.
    pub metrics: SocketAddr,
    /// Its process.
    pub pid: u32,
}

impl Probe {
    fn samples(&self) -> Option<Samples> {
        fetch_metrics(self.metrics).map(|t| Samples::parse(&t))
    }

    fn core_cpu(&self) -> f64 {
        cpu_seconds(self.pid, "mixed-core")
    }
}

/// Three authorities and a sink on loopback.
pub struct BenchNet {
    _authorities: Vec<AuthorityHandle>,
    endpoints: Vec<AuthorityEndpoint>,
    params: NetworkParams,
    client: PkiClient,
    sink_identity: IdentitySecret,
    sink_addr: SocketAddr,
    sink: load::Sink,
    sink_registered: Option<u64>,
    sink_sequence: u64,
    sender: UdpSocket,
    rng: ChaCha20Rng,
    overshoot: f64,
    dir: TempDir,
}

impl BenchNet {
    /// Starts the authorities (h = 5, rho = 1, no loops, zero mean delay) and the sink, in
    /// a temporary folder.
    pub fn start() -> Result<BenchNet> {
        let dir = TempDir::new("mixed-capacity").map_err(|e| setup(e.to_string()))?;
        let params = NetworkParams {
            packet_size: PACKET_SIZE as u32,
            hops: 5,
            rho_permille: 1000,
            mean_delay_micros: 0,
            loops: 0,
            loop_rate_millis: 0,
            epoch_seconds: EPOCH_SECONDS,
            genesis_unix: unix_now(),
        };
        let (authorities, endpoints) =
            spawn_authorities(&dir.0, params).map_err(|e| setup(format!("authorities: {e}")))?;
        let mut rng = ChaCha20Rng::from_seed({
            let mut s = [0u8; 32];
            getrandom::fill(&mut s).map_err(|e| setup(e.to_string()))?;
            s
        });
        let client = PkiClient::new(endpoints.clone(), Duration::from_secs(2), None)
            .ok_or_else(|| setup("no authorities"))?;
        let sink_socket = UdpSocket::bind("127.0.0.1:0")?;
        let sink_addr = sink_socket.local_addr()?;
        let sink = load::Sink::start(sink_socket, PACKET_SIZE)?;
        let sender = UdpSocket::bind("127.0.0.1:0")?;
        // a large send buffer: a burst of the load never meets a full socket
        let _ = socket2::SockRef::from(&sender).set_send_buffer_size(8 << 20);
        Ok(BenchNet {
            _authorities: authorities,
            endpoints,
            params,
            client,
            sink_identity: IdentitySecret::generate(&mut rng),
            sink_addr,
            sink,
            sink_registered: None,
            sink_sequence: 0,
            sender,
            rng,
            overshoot: timer_overshoot_p99(2000),
            dir,
        })
    }

    /// The p99 of how far a sleep of 200 us overshoots on this machine, seconds (measured
    /// when the bench started): tens of microseconds on an idle physical machine,
    /// milliseconds on a busy virtual one.
    pub fn timer_overshoot(&self) -> f64 {
        self.overshoot
    }

    /// The p99 lateness a trial allows: [`ON_TIME`] plus [`Self::timer_overshoot`].
    pub fn lateness_bound(&self) -> f64 {
        ON_TIME + self.overshoot
    }

    /// The folder of this bench (node key directories go under it).
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// The network parameters.
    pub fn params(&self) -> &NetworkParams {
        &self.params
    }

    /// The forward budget of a node with this B: B - rho * B / h - L * b_loop.
    pub fn forward_budget(&self, bandwidth: f64) -> f64 {
        let p = &self.params;
        let own = f64::from(p.rho_permille) / 1000.0 * bandwidth / f64::from(p.hops);
        let loops = f64::from(p.loops) * f64::from(p.loop_rate_millis) / 1000.0;
        (bandwidth - own - loops).max(0.0)
    }

    /// What a node under test needs to join this bench.
    pub fn template(&self) -> NodeTemplate {
        NodeTemplate {
            dir: self.dir.0.clone(),
            endpoints: self.endpoints.clone(),
        }
    }

    /// Registers the sink once an epoch, with keys from the current epoch on.
    fn register_sink(&mut self) -> Result<()> {
        let epoch = self
            .client
            .current_epoch()
            .ok_or_else(|| setup("no authority answers"))?;
        if self.sink_registered == Some(epoch) {
            return Ok(());
        }
        // the authorities read a sequence as when it was made, unix milliseconds
        self.sink_sequence = (self.sink_sequence + 1).max((unix_seconds() * 1000.0) as u64);
        // the same key for an epoch in every registration (the sink never unwraps)
        let keys = (0..pki_client::descriptor::MAX_MIX_KEYS as u64)
            .map(|i| {
                let mut rng = ChaCha20Rng::seed_from_u64(epoch + i);
                MixSecretKey::generate(&mut rng).public_key().0
            })
            .collect();
        let d = NodeDescriptor {
            identity: self.sink_identity.public(),
            sequence: self.sink_sequence,
            addresses: vec![self.sink_addr],
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
        .sign(&self.sink_identity)
        .map_err(|e| setup(format!("sink descriptor: {e}")))?;
        for (url, r) in self.client.register(&d) {
            r.map_err(|e| setup(format!("registering the sink with {url}: {e}")))?;
        }
        self.sink_registered = Some(epoch);
        Ok(())
    }

    /// Waits until the node under test and the sink are listed in a consensus that covers
    /// the whole of a trial starting within `lead` seconds and lasting `seconds`; returns
    /// the node's mix key, its address and when to start sending.
    fn wait_for_window(
        &mut self,
        nut: &Probe,
        lead: f64,
        seconds: f64,
    ) -> Result<(MixPublicKey, MixPublicKey, SocketAddr, f64)> {
        let deadline = Instant::now() + Duration::from_secs(4 * EPOCH_SECONDS + 10);
        let mut last = String::from("no consensus yet");
        let mut seen: Vec<String> = Vec::new();
        let since_unix = unix_seconds();
        let sink_id = self.sink_identity.public().node_id();
        while Instant::now() < deadline {
            self.register_sink()?;
            let now = unix_seconds();
            let e = self.params.epoch_at(now as u64);
            let installed = nut.samples().map(|s| s.get("mixed_epoch")).unwrap_or(-1.0);
            for epoch in [e, e + 1] {
                let Ok(c) = self.client.fetch(Which::Epoch(epoch), &mut self.rng) else {
                    last = format!("no consensus for epoch {epoch}");
                    continue;
                };
                let v = match c.check_valid_at(now as u64, 5) {
                    Ok(v) => v,
                    Err(e) => {
                        last = format!("epoch {epoch}: {e}");
                        continue;
                    }
                };
                let (n, s) = match (v.node(&nut.id), v.node(&sink_id)) {
                    (Some(n), Some(s)) => (n, s),
                    (n, s) => {
                        last = format!(
                            "epoch {epoch}: {} listed",
                            match (n, s) {
                                (None, None) => "neither node nor sink",
                                (None, _) => "the node not",
                                _ => "the sink not",
                            }
                        );
                        continue;
                    }
                };
                let start = self.params.epoch_start(epoch) as f64;
                let end = self.params.epoch_start(epoch + 1) as f64;
                // the trial starts after the node has the epoch installed (its start + 0.5 s
                // when it is the next one) and ends a second before the epoch does
                let begin = if epoch == e && installed >= e as f64 {
                    now + lead
                } else {
                    (start + 0.5).max(now + lead)
                };
                if begin + seconds + 1.0 <= end {
                    let Some(&addr) = n.addresses.first() else {
                        return Err(setup("the node under test lists no address"));
                    };
                    return Ok((
                        MixPublicKey(n.mix_key),
                        MixPublicKey(s.mix_key),
                        addr,
                        begin,
                    ));
                }
                last = format!("epoch {epoch}: too little of it left for the trial");
            }
            if seen.last() != Some(&last) && seen.len() < 12 {
                seen.push(last.clone());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(setup(format!(
            "the node under test did not come up in a consensus (since {:.0} s: {})",
            unix_seconds() - since_unix,
            seen.join("; then ")
        )))
    }

    /// One trial: `offered` packets a second for `seconds` through the node under test,
    /// whose B is `bandwidth`.
    pub fn trial(
        &mut self,
        nut: &Probe,
        bandwidth: f64,
        offered: f64,
        seconds: f64,
    ) -> Result<Trial> {
        let count = (offered * seconds).ceil() as usize;
        // about what building costs at the batched creation rate, with a margin
        let lead = count as f64 / 15_000.0 + 1.0;
        let (key, sink_key, to, begin) = self.wait_for_window(nut, lead, seconds)?;
        let sink_id = self.sink_identity.public().node_id();
        let route = [
            Hop {
                id: NodeId(nut.id),
                key,
            },
            Hop {
                id: NodeId(sink_id),
                key: sink_key,
            },
        ];
        let destination = Destination {
            address: sink_id,
            identifier: [1; 16],
        };
        let delays = [Delay::from_nanos(0)];
        let requests = vec![
            PacketRequest {
                route: &route,
                delays: &delays,
                destination: &destination,
                message: b"capacity",
            };
            count
        ];
        let mut packets = vec![vec![0u8; PACKET_SIZE]; count];
        let mut results = vec![Ok(()); count];
        sphinx::build_packets(&requests, &mut self.rng, &mut packets, &mut results)
            .map_err(|e| setup(format!("{e:?}")))?;
        if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
            return Err(setup(format!("building the load: {e:?}")));
        }
        let wait = begin - unix_seconds();
        if wait > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(wait));
        }
        let before = nut
            .samples()
            .ok_or_else(|| setup("the node's metrics do not answer"))?;
        let cpu0 = nut.core_cpu();
        let at_sink0 = self.sink.received();
        let t0 = Instant::now();
        let (sending, refused) = load::send_paced(&self.sender, to, &packets, offered);
        // zero delays: the last forwards leave within a few slots; the metrics are
        // published every 100 ms
        std::thread::sleep(Duration::from_millis(250));
        let after = nut
            .samples()
            .ok_or_else(|| setup("the node's metrics do not answer"))?;
        let window = t0.elapsed().as_secs_f64();
        let cpu = nut.core_cpu() - cpu0;
        Ok(Trial::from_window(
            self.lateness_bound(),
            bandwidth,
            offered,
            count as u64,
            sending,
            window,
            cpu,
            refused,
            self.sink.received() - at_sink0,
            &before,
            &after,
        ))
    }
}

/// The configuration of the bench's nodes under test.
#[derive(Clone, Debug)]
pub struct NodeTemplate {
    dir: PathBuf,
    endpoints: Vec<AuthorityEndpoint>,
}

impl NodeTemplate {
    /// The configuration of a node under test named `name` (its keys under the bench's
    /// folder, kept from one start to the next so that a restarted node is listed at once).
    pub fn config(
        &self,
        name: &str,
        bandwidth: f64,
        io: IoChoice,
        listen: SocketAddr,
        metrics: SocketAddr,
    ) -> NodeConfig {
        NodeConfig {
            key_dir: self.dir.join(name),
            listen,
            advertise: Vec::new(),
            bandwidth,
            cores: 1,
            io,
            metrics: Some(metrics),
            passive: false,
            on_loop_collapse: engine::AlertPolicy::Report,
            api_socket: None,
            storage: None,
            offline: Default::default(),
            authorities: self.endpoints.clone(),
        }
    }

    /// A configuration as TOML, for a `mixed node` process.
    pub fn toml(&self, config: &NodeConfig) -> String {
        let io = match config.io {
            IoChoice::Auto => "auto",
            IoChoice::IoUring => "io-uring",
            IoChoice::Portable => "portable",
        };
        let mut text = format!(
            "key_dir = {:?}\nlisten = \"{}\"\nbandwidth = {}\ncores = {}\nio = \"{io}\"\nmetrics = \"{}\"\napi_socket = \"off\"\non_loop_collapse = \"report\"\n",
            config.key_dir.display().to_string(),
            config.listen,
            config.bandwidth,
            config.cores,
            config
                .metrics
                .map_or_else(|| "off".to_string(), |m| m.to_string()),
        );
        for e in &self.endpoints {
            text += &format!(
                "[[authorities]]\nidentity = \"{}\"\nurl = \"{}\"\n",
                e.identity.to_hex(),
                e.url
            );
        }
        text
    }
}

fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A node under test, started for one B and stopped when dropped.
pub trait Started {
    /// How to reach it.
    fn probe(&self) -> Probe;
}

/// The outcome of [`search`].
#[derive(Debug)]
pub struct Search {
    /// Every trial, in order.
    pub trials: Vec<Trial>,
    /// The highest B on time, if any was.
    pub capacity: Option<f64>,
}

/// A bisection for the highest B per core on time: up from the estimate by half while
/// on time, down by a third while behind, then halving the interval, each B a round 100.
#[derive(Clone, Copy, Debug)]
pub struct Bisection {
    good: Option<f64>,
    bad: Option<f64>,
    next: f64,
}

impl Bisection {
    /// A bisection that starts at `estimate`.
    pub fn new(estimate: f64) -> Self {
        Bisection {
            good: None,
            bad: None,
            next: estimate,
        }
    }

    /// The B to try next.
    pub fn next(&self) -> f64 {
        self.next
    }

    /// Records whether [`Self::next`] was on time, and moves on.
    pub fn record(&mut self, on_time: bool) {
        let b = self.next;
        if on_time {
            self.good = Some(b);
        } else {
            self.bad = Some(b);
        }
        let next = match (self.good, self.bad) {
            (Some(g), Some(x)) => (g + x) / 2.0,
            (Some(g), None) => g * 1.5,
            (None, Some(x)) => x / 1.5,
            (None, None) => b,
        };
        self.next = (next / 100.0).round() * 100.0;
    }

    /// The highest B on time so far.
    pub fn capacity(&self) -> Option<f64> {
        self.good
    }
}

/// Tries one B with a node started by `start(B)`: once, or twice when the first trial is
/// behind (one stall of the machine, a host taking the core for milliseconds, fails a
/// trial that the node itself would pass). Returns whether it was on time, after pushing
/// the trials to `trials`.
pub fn try_bandwidth<S: Started>(
    net: &mut BenchNet,
    mut start: impl FnMut(f64) -> Result<S>,
    b: f64,
    seconds: f64,
    trials: &mut Vec<Trial>,
    mut progress: impl FnMut(&Trial),
) -> Result<bool> {
    for _ in 0..2 {
        let node = start(b)?;
        let budget = net.forward_budget(b);
        let trial = net.trial(&node.probe(), b, OFFERED_SHARE * budget, seconds)?;
        drop(node);
        progress(&trial);
        let on_time = trial.on_time();
        trials.push(trial);
        if on_time {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Finds the highest B per core on time, by bisection from `estimate` ([`Bisection`]):
/// `steps` values of B, each tried by [`try_bandwidth`], for `seconds` a trial, a node
/// started for each by `start(B)`.
pub fn search<S: Started>(
    net: &mut BenchNet,
    mut start: impl FnMut(f64) -> Result<S>,
    estimate: f64,
    steps: usize,
    seconds: f64,
    mut progress: impl FnMut(&Trial),
) -> Result<Search> {
    let mut trials = Vec::new();
    let mut bisection = Bisection::new(estimate);
    for _ in 0..steps {
        let on_time = try_bandwidth(
            net,
            &mut start,
            bisection.next(),
            seconds,
            &mut trials,
            &mut progress,
        )?;
        bisection.record(on_time);
    }
    Ok(Search {
        trials,
        capacity: bisection.capacity(),
    })
}
