//! The runtime: a thread per core, each pinned (core_affinity), each with its own SO_REUSEPORT
//! socket, its I/O backend and its engine; and a control thread that follows the epochs
//! (consensus fetched ahead, mix keys made and erased, the descriptor registered) and hands
//! each new epoch to the cores. Nothing crosses cores on the packet path but the shared
//! replay filter of each key (lock-free); commands reach a core through its bounded inbox,
//! drained once per turn of its loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use engine::{Counters, Engine, EngineConfig, EpochKeys, Event, ReplayFilter, SendError};
use pki_client::{
    IdentitySecret, MixKeys, NodeDescriptor, PkiClient, Roles, SignatureChecked, Which,
};
use rand_core::SeedableRng;
use scheduler::Timestamp;
use scheduler::handoff::{Inbox, Sender, inbox};

use crate::config::NodeConfig;
use crate::io::{Io, reuseport_socket};
use crate::keys::KeyDir;
use crate::metrics::{CoreSnapshot, Metrics};
use crate::service::{Input, OwnQueues, Presence, Service};

/// Epochs of mix keys published ahead.
const KEYS_AHEAD: u64 = 3;
/// Longest a core waits for I/O before looking at its inbox again.
const MAX_WAIT: Duration = Duration::from_millis(20);
/// Commands a core's inbox holds.
const INBOX: usize = 1024;
/// Events waiting for the application.
const EVENTS: usize = 4096;

/// Monotonic time since the node started: the engines' clock.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    #[allow(clippy::disallowed_methods)]
    fn new() -> Self {
        Clock {
            origin: Instant::now(),
        }
    }

    /// Now.
    #[allow(clippy::disallowed_methods)]
    pub fn now(&self) -> Timestamp {
        Timestamp::from_nanos(self.origin.elapsed().as_nanos() as u64)
    }
}

/// Wall-clock time, unix seconds (epochs and document validity).
#[allow(clippy::disallowed_methods)]
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A command for a core.
enum Command {
    Install(EpochKeys),
    SetForwarding(bool),
    Send {
        to: [u8; 32],
        payload: Vec<u8>,
        reply: SyncSender<Result<[u8; 16], SendError>>,
    },
}

/// What the node tells the application.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeEvent {
    /// When, on the node's clock.
    pub at: Timestamp,
    /// What.
    pub event: Event,
}

/// Why the node could not start or send.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A key file.
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    /// The socket or a thread.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Sending failed.
    #[error("send: {0}")]
    Send(#[from] SendError),
    /// The node is stopping or a core is gone.
    #[error("the node is not running")]
    Stopped,
    /// The configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The directory.
    #[error("directory: {0}")]
    Directory(String),
}

struct Core {
    inbox: Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

/// A running node.
pub struct Node {
    node_id: [u8; 32],
    pub(crate) service: SyncSender<Input>,
    service_thread: Option<JoinHandle<()>>,
    local: Option<crate::local::LocalServer>,
    pub(crate) presence: Arc<Presence>,
    pub(crate) next_app: std::sync::atomic::AtomicU64,
    key_dir: std::path::PathBuf,
    addr: SocketAddr,
    cores: Vec<Core>,
    control: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    events: Receiver<NodeEvent>,
    metrics: Arc<Metrics>,
    clock: Clock,
    next_core: std::sync::atomic::AtomicUsize,
    io_names: Vec<&'static str>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("addr", &self.addr)
            .field("cores", &self.cores.len())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts a node: keys, sockets, cores, the control thread, the metrics endpoint.
    pub fn start(config: NodeConfig) -> Result<Node, NodeError> {
        config.validate()?;
        let keys = KeyDir::open(&config.key_dir)?;
        let identity = keys.identity()?;
        let node_id = identity.public().node_id();
        let clock = Clock::new();
        let stop = Arc::new(AtomicBool::new(false));
        let metrics = Arc::new(Metrics::new(config.cores));

        // the first socket decides the port when the configuration says 0
        let first = reuseport_socket(config.listen)?;
        let bound = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..config.cores {
            sockets.push(reuseport_socket(bound)?);
        }
        let addr = config.advertise.unwrap_or(bound);

        let (event_tx, events) = sync_channel(EVENTS);
        let (service_tx, service_rx) = sync_channel(crate::service::INPUT_QUEUE);
        let own = Arc::new(OwnQueues::new());
        let presence = Arc::new(Presence::new(!config.passive, config.bandwidth));
        let core_ids = core_affinity::get_core_ids().unwrap_or_default();
        let mut cores = Vec::new();
        let mut io_names = Vec::new();
        for (i, socket) in sockets.into_iter().enumerate() {
            let (io, note) = Io::open(socket, config.io)?;
            if let Some(note) = note {
                tracing::warn!(core = i, "{note}");
            }
            io_names.push(io.name());
            let mut engine_config =
                EngineConfig::new(node_id, config.bandwidth / config.cores as f64);
            engine_config.forwarding = !config.passive;
            // when passive (not in the consensus), loops and SURBs end at this address
            engine_config.address = Some(addr);
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| std::io::Error::other(e.to_string()))?;
            let engine = Engine::new(engine_config, seed)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let (tx, rx) = inbox(INBOX);
            let stop = Arc::clone(&stop);
            let outlets = Outlets {
                events: event_tx.clone(),
                service: service_tx.clone(),
                own: Arc::clone(&own),
            };
            let metrics = Arc::clone(&metrics);
            let pin = core_ids.get(i % core_ids.len().max(1)).copied();
            let thread = std::thread::Builder::new()
                .name(format!("mixed-core-{i}"))
                .spawn(move || {
                    if let Some(id) = pin {
                        core_affinity::set_for_current(id);
                    }
                    run_core(i, engine, io, rx, clock, stop, outlets, metrics);
                })?;
            cores.push(Core {
                inbox: tx,
                thread: Some(thread),
            });
        }

        let client = PkiClient::new(
            config.authorities.clone(),
            Duration::from_secs(3),
            Some(config.key_dir.join("consensus")),
        )
        .ok_or_else(|| NodeError::Directory("no authorities".into()))?;
        let _ = std::fs::create_dir_all(config.key_dir.join("consensus"));
        let senders: Vec<Sender<Command>> = cores.iter().map(|c| c.inbox.clone()).collect();
        let control_stop = Arc::clone(&stop);
        let control_metrics = Arc::clone(&metrics);
        let bandwidth = config.bandwidth;
        let control_presence = Arc::clone(&presence);
        let control_service = service_tx.clone();
        let forwarding_senders = senders.clone();
        let mut service_seed = [0u8; 32];
        getrandom::fill(&mut service_seed).map_err(|e| std::io::Error::other(e.to_string()))?;
        let service = Service::new(
            identity.clone(),
            service_rx,
            Arc::clone(&own),
            Arc::clone(&presence),
            config.bandwidth,
            Box::new(move |on| {
                for s in &forwarding_senders {
                    let _ = s.try_send(Command::SetForwarding(on));
                }
            }),
            Arc::clone(&metrics),
            clock,
            Arc::clone(&stop),
            service_seed,
        );
        let service_thread = std::thread::Builder::new()
            .name("mixed-messenger".into())
            .spawn(move || service.run())?;
        let control = std::thread::Builder::new()
            .name("mixed-control".into())
            .spawn(move || {
                let mut control = Control {
                    client,
                    keys,
                    identity,
                    addr,
                    bandwidth,
                    presence: control_presence,
                    service: control_service,
                    senders,
                    installed: None,
                    registered_in: None,
                    replay: Vec::new(),
                    metrics: control_metrics,
                };
                control.run(&control_stop);
            })?;

        if let Some(m) = config.metrics {
            crate::metrics::serve(m, Arc::clone(&metrics), Arc::clone(&stop))?;
        }
        let mut node = Node {
            node_id,
            service: service_tx,
            service_thread: Some(service_thread),
            local: None,
            presence,
            next_app: std::sync::atomic::AtomicU64::new(1),
            key_dir: config.key_dir.clone(),
            addr,
            cores,
            control: Some(control),
            stop,
            events,
            metrics,
            clock,
            next_core: std::sync::atomic::AtomicUsize::new(0),
            io_names,
        };
        if let Some(path) = &config.api_socket {
            node.local = Some(crate::local::LocalServer::start(path, &node)?);
        }
        Ok(node)
    }

    /// The key directory.
    pub fn key_dir(&self) -> &std::path::Path {
        &self.key_dir
    }

    /// The local API socket, when served.
    pub fn api_socket(&self) -> Option<&std::path::Path> {
        self.local.as_ref().map(|l| l.path())
    }

    /// Whether the node is bound: in the PKI and forwarding.
    pub fn is_bound(&self) -> bool {
        self.presence.bound.load(Ordering::Relaxed)
    }

    /// This node's ID.
    pub fn node_id(&self) -> [u8; 32] {
        self.node_id
    }

    /// The address it receives packets at.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The I/O backend of each core.
    pub fn io_backends(&self) -> &[&'static str] {
        &self.io_names
    }

    /// The node's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The epoch installed on the cores, if any.
    pub fn epoch(&self) -> Option<u64> {
        self.metrics.epoch()
    }

    /// Sends a one-packet message to node `to`; returns its identifier once queued.
    pub fn send(&self, to: [u8; 32], payload: Vec<u8>) -> Result<[u8; 16], NodeError> {
        let i = self.next_core.fetch_add(1, Ordering::Relaxed) % self.cores.len().max(1);
        let (reply, answer) = sync_channel(1);
        self.cores[i]
            .inbox
            .try_send(Command::Send { to, payload, reply })
            .map_err(|_| NodeError::Stopped)?;
        answer
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| NodeError::Stopped)?
            .map_err(NodeError::Send)
    }

    /// The events (messages, alarms) in arrival order.
    pub fn events(&self) -> &Receiver<NodeEvent> {
        &self.events
    }

    /// The counters of all cores, summed.
    pub fn counters(&self) -> Counters {
        self.metrics.counters()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Stops every thread and waits for them.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(l) = self.local.take() {
            l.stop();
        }
        if let Some(t) = self.service_thread.take() {
            let _ = t.join();
        }
        for core in &mut self.cores {
            if let Some(t) = core.thread.take() {
                let _ = t.join();
            }
        }
        if let Some(t) = self.control.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Where a core's deliveries and own packets come and go.
struct Outlets {
    /// Raw engine events, for [`Node::events`].
    events: SyncSender<NodeEvent>,
    /// The messaging service.
    service: SyncSender<Input>,
    /// Packets the service built.
    own: Arc<OwnQueues>,
}

#[allow(clippy::too_many_arguments)]
fn run_core(
    index: usize,
    mut engine: Engine,
    mut io: Io,
    inbox: Inbox<Command>,
    clock: Clock,
    stop: Arc<AtomicBool>,
    outlets: Outlets,
    metrics: Arc<Metrics>,
) {
    let mut lateness = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 2)
        .unwrap_or_else(|_| {
            hdrhistogram::Histogram::new(2).unwrap_or_else(|_| unreachable_histogram())
        });
    let mut last_publish = clock.now();
    let mut last_reliability = clock.now();
    while !stop.load(Ordering::Relaxed) {
        // the one point where other threads' commands enter this core
        inbox.drain(INBOX, |cmd| match cmd {
            Command::Install(keys) => {
                let epoch = keys.consensus.epoch();
                match engine.install_epoch(keys, clock.now()) {
                    Ok(()) => metrics.set_epoch(epoch),
                    Err(e) => tracing::error!(core = index, %e, "cannot install the epoch"),
                }
            }
            Command::SetForwarding(on) => engine.set_forwarding(on),
            Command::Send { to, payload, reply } => {
                let _ = reply.try_send(engine.send_message(to, &payload));
            }
        });
        outlets.own.feed(&mut engine);
        let now = clock.now();
        let wait = engine
            .poll_timeout()
            .map(|t| t.saturating_since(now))
            .unwrap_or(MAX_WAIT)
            .min(MAX_WAIT);
        let received = io.recv(wait, |batch| engine.handle_datagrams(clock.now(), batch));
        if let Err(e) = received {
            tracing::error!(core = index, %e, "receive failed");
            std::thread::sleep(Duration::from_millis(10));
        }
        let now = clock.now();
        if engine.poll_timeout().is_some_and(|t| t <= now) {
            engine.handle_timeout(now);
        }
        // send what the slots decided, in batches written straight into the backend's
        // transmit buffers
        loop {
            let sent = io.send_batch(|buf| {
                let t = engine.poll_transmit(buf)?;
                let late = now.saturating_since(t.due).as_nanos() as u64;
                let _ = lateness.record(late.max(1));
                Some((t.to, t.len))
            });
            match sent {
                Ok(s) if s.filled == 0 => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(core = index, %e, "send failed");
                    break;
                }
            }
        }
        while let Some(event) = engine.poll_event() {
            match &event {
                Event::Message { .. } | Event::Sealed { .. } => {
                    let _ = outlets.service.try_send(Input::Core(event.clone()));
                }
                Event::LoopCollapse { recent, usual } => {
                    tracing::warn!(
                        core = index,
                        recent,
                        usual,
                        "loops stopped returning: a possible (n-1) attack around this node"
                    );
                }
            }
            let _ = outlets.events.try_send(NodeEvent {
                at: clock.now(),
                event,
            });
        }
        if now.saturating_since(last_reliability) >= Duration::from_secs(1) {
            last_reliability = now;
            let nodes = engine
                .reliabilities()
                .iter()
                .map(|(id, r)| (*id, *r))
                .collect();
            let _ = outlets
                .service
                .try_send(Input::Reliability { core: index, nodes });
        }
        if now.saturating_since(last_publish) >= Duration::from_millis(100) {
            last_publish = now;
            metrics.publish(
                index,
                CoreSnapshot {
                    counters: engine.counters().clone(),
                    held: engine.held(),
                    own_queued: engine.own_queued(),
                    lateness: lateness.clone(),
                    io: io.name(),
                },
            );
        }
    }
    metrics.publish(
        index,
        CoreSnapshot {
            counters: engine.counters().clone(),
            held: engine.held(),
            own_queued: engine.own_queued(),
            lateness,
            io: io.name(),
        },
    );
}

#[allow(clippy::panic)]
fn unreachable_histogram() -> hdrhistogram::Histogram<u64> {
    panic!("a two-digit histogram is always valid")
}

/// The control thread's state: follows the epochs.
struct Control {
    client: PkiClient,
    keys: KeyDir,
    identity: IdentitySecret,
    addr: SocketAddr,
    bandwidth: f64,
    presence: Arc<Presence>,
    service: SyncSender<Input>,
    senders: Vec<Sender<Command>>,
    installed: Option<u64>,
    registered_in: Option<u64>,
    replay: Vec<(u64, Arc<ReplayFilter>)>,
    metrics: Arc<Metrics>,
}

impl Control {
    /// Every 100 ms: learn the epoch, register once per epoch (unless passive), install the
    /// current epoch's consensus as soon as it is at hand, fetch the next one from the middle
    /// of the epoch on.
    fn run(&mut self, stop: &AtomicBool) {
        let mut seed = [0u8; 32];
        let _ = getrandom::fill(&mut seed);
        let mut rng = rand_chacha::ChaCha20Rng::from_seed(seed);
        let mut pending: Option<SignatureChecked> = None;
        let mut schedule: Option<pki_client::NetworkParams> = None;
        while !stop.load(Ordering::Relaxed) {
            let now = unix_now();
            if schedule.is_none()
                && let Ok(c) = self.client.fetch(Which::Current, &mut rng)
            {
                let (after, _) = c.validity();
                if let Ok(v) = c.clone().check_valid_at(after, 0) {
                    schedule = Some(*v.params());
                }
                pending = Some(c);
            }
            // the epoch: from the schedule, or, before any consensus exists, an authority's word
            let epoch = match schedule {
                Some(p) => Some(p.epoch_at(now)),
                None => self.client.current_epoch(),
            };
            let bound = self.presence.bound.load(Ordering::Relaxed);
            if let Some(e) = epoch
                && bound
                && self.registered_in != Some(e)
            {
                self.register(e);
            }
            if let Some(e) = epoch
                && !bound
                && self.registered_in.is_some()
            {
                self.withdraw(e);
            }
            if let Some(e) = epoch
                && self.installed.is_none_or(|i| i < e)
            {
                let c = match pending.take() {
                    Some(c) if c.epoch() == e => Some(c),
                    other => {
                        pending = other;
                        self.client.fetch(Which::Epoch(e), &mut rng).ok()
                    }
                };
                if let Some(c) = c {
                    if schedule.is_none() {
                        let (after, _) = c.validity();
                        if let Ok(v) = c.clone().check_valid_at(after, 0) {
                            schedule = Some(*v.params());
                        }
                    }
                    match c.check_valid_at(now, 5) {
                        Ok(v) => self.install(e, v),
                        Err(err) => tracing::warn!(%err, "consensus not valid now"),
                    }
                }
            }
            if let Some(params) = schedule {
                let e = params.epoch_at(now);
                let into = now.saturating_sub(params.epoch_start(e));
                if into * 2 >= params.epoch_seconds
                    && pending.as_ref().is_none_or(|p| p.epoch() != e + 1)
                    && let Ok(c) = self.client.fetch(Which::Epoch(e + 1), &mut rng)
                {
                    pending = Some(c);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn descriptor(&self, first_epoch: u64) -> Option<pki_client::SignedDescriptor> {
        let keys: Vec<[u8; 32]> = (first_epoch..=first_epoch + KEYS_AHEAD)
            .map_while(|e| self.keys.mix_key(e).ok().map(|k| k.public_key().0))
            .collect();
        // a sequence that grows across restarts: the wall clock in milliseconds
        let sequence = unix_now() * 1000 + u64::from(self.metrics.bump_sequence() % 1000);
        NodeDescriptor {
            identity: self.identity.public(),
            sequence,
            addresses: vec![self.addr],
            bandwidth: self.presence.bandwidth().min(self.bandwidth).max(1.0) as u32,
            roles: Roles {
                mix: true,
                services: vec![],
            },
            mix_keys: MixKeys { first_epoch, keys },
        }
        .sign(&self.identity)
        .ok()
    }

    fn register(&mut self, epoch: u64) {
        let Some(d) = self.descriptor(epoch) else {
            return;
        };
        let answers = self.client.register(&d);
        let ok = answers.iter().filter(|(_, r)| r.is_ok()).count();
        if ok * 2 > answers.len() {
            self.registered_in = Some(epoch);
        } else {
            for (url, r) in &answers {
                if let Err(e) = r {
                    tracing::warn!(%url, %e, "registration refused; retrying");
                }
            }
        }
    }

    /// unbindanon: the node leaves the consensus from the next epoch on.
    fn withdraw(&mut self, epoch: u64) {
        let sequence = unix_now() * 1000 + u64::from(self.metrics.bump_sequence() % 1000);
        let Ok(w) = pki_client::Withdrawal {
            identity: self.identity.public(),
            sequence,
            from_epoch: epoch + 1,
        }
        .sign(&self.identity) else {
            return;
        };
        let answers = self.client.withdraw(&w);
        if answers.iter().filter(|(_, r)| r.is_ok()).count() * 2 > answers.len() {
            self.registered_in = None;
        }
    }

    fn install(&mut self, epoch: u64, consensus: pki_client::VerifiedConsensus) {
        let secret = match self.keys.mix_key(epoch) {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(%e, "mix key");
                return;
            }
        };
        let params = *consensus.params();
        // sized for the epoch: every packet this node may see under the key, four times over
        let capacity = ((self.bandwidth * 4.0) as usize)
            .saturating_mul(params.epoch_seconds as usize + 60)
            .clamp(1 << 14, 1 << 27);
        let replay = Arc::new(ReplayFilter::new(capacity));
        self.replay.push((epoch, Arc::clone(&replay)));
        self.replay.retain(|(e, _)| *e + 2 > epoch);
        let consensus = Arc::new(consensus);
        self.metrics.set_nodes(consensus.nodes().len());
        let params = *consensus.params();
        let own_rate = f64::from(params.rho_permille) / 1000.0 * self.bandwidth
            / f64::from(params.hops.max(1));
        let _ = self.service.try_send(Input::Epoch {
            paths: engine::Paths::new(
                Arc::clone(&consensus),
                self.identity.public().node_id(),
                Some(self.addr),
                secret.public_key(),
            ),
            own_rate,
        });
        for s in &self.senders {
            let keys = EpochKeys {
                consensus: Arc::clone(&consensus),
                secret: secret.clone(),
                replay: Arc::clone(&replay) as Arc<dyn engine::ReplayCheck>,
            };
            if s.try_send(Command::Install(keys)).is_err() {
                tracing::error!("a core's inbox is full; the epoch is not installed there");
            }
        }
        self.installed = Some(epoch);
        // the keys of epochs before the previous one are no longer needed: erase them
        self.keys.erase_before(epoch.saturating_sub(1));
    }
}
