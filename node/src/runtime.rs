//! The runtime: a thread per core (each a [`crate::core::CoreTask`] running a
//! [`stack::Stack`] over its own socket and I/O backend), the messaging service's thread,
//! the control thread that follows the epochs ([`crate::control`]), the metrics endpoint
//! and the local API server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use engine::{Counters, Engine, EngineConfig, SendError};
use pki_client::PkiClient;
use scheduler::Timestamp;
use scheduler::handoff::{Sender, inbox};
use stack::Stack;

pub use crate::clock::{Clock, unix_now};
use crate::config::NodeConfig;
use crate::control::Control;
use crate::core::{Command, CoreLink, CoreTask, INBOX};
use crate::io::{Io, bind_node};
use crate::keys::KeyDir;
use crate::metrics::Metrics;
use crate::service::{Input, OwnQueues, Presence, Service};

/// Raw deliveries a tap holds ([`Node::tap`]).
const TAP: usize = 4096;

pub use crate::core::NodeEvent;

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
    /// The configuration names no directory authority.
    #[error("no directory authorities configured")]
    NoAuthorities,
    /// A directory authority of a local network would not start.
    #[error("directory authority: {0}")]
    Authority(#[from] dirauth::ServerError),
    /// The nodes of a local network got no consensus in time.
    #[error("the nodes did not get a consensus in {epochs} epochs")]
    NoConsensus {
        /// Epochs waited.
        epochs: u64,
    },
    /// The OS gave no randomness for the keys and seeds.
    #[error("the OS gave no randomness: {0}")]
    Randomness(#[from] getrandom::Error),
    /// The engine's timer tick is not one it can run.
    #[error("engine: {0}")]
    Tick(#[from] scheduler::time::BadTick),
    /// An application call of the demo failed.
    #[error("API: {0}")]
    Api(#[from] anon::local::ApiError),
    /// The storage provider's block store could not be opened.
    #[error("storage: {0}")]
    Storage(#[from] storage::store::StoreError),
    /// A contact was refused.
    #[error("contact: {0}")]
    Contact(#[from] anon::offline::ContactError),
    /// The node's durable state (`<key_dir>/offline.redb`) could not be opened or read.
    #[error("{0}")]
    Durable(#[from] crate::durable::DurableError),
}

struct Core {
    inbox: Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

/// A running node.
pub struct Node {
    node_id: [u8; 32],
    identity_key: pki_client::IdentityKey,
    pub(crate) service: SyncSender<Input>,
    service_thread: Option<JoinHandle<()>>,
    local: Option<crate::local::LocalServer>,
    pub(crate) presence: Arc<Presence>,
    pub(crate) next_app: std::sync::atomic::AtomicU64,
    key_dir: std::path::PathBuf,
    addr: SocketAddr,
    addrs: Vec<SocketAddr>,
    /// The replay journal's thread, stopped after the cores (its last flush sees all).
    journal: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    /// Holds the node's port ([`bind_node`]).
    _port_lock: std::os::unix::net::UnixDatagram,
    cores: Vec<Core>,
    control: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
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
        let identity_key = identity.public();
        let node_id = identity_key.node_id();
        // opened first: a store that cannot be read stops the start with a clear error
        let storage = match &config.storage {
            Some(st) => Some(stack::services::StorageService::new(
                storage::Provider::new(storage::BlockStore::open(&st.dir, st.limits)?),
            )),
            None => None,
        };
        // the offline state: contacts and their streams (opened before any thread starts,
        // so a file another node holds stops this one with a clear error)
        let (durable, restored) = crate::durable::DurableState::open(&config.key_dir)?;
        let services: Vec<String> = storage
            .iter()
            .map(|_| stack::services::STORAGE_ROLE.to_string())
            .collect();
        let clock = Clock::new();
        let stop = Arc::new(AtomicBool::new(false));
        let metrics = Arc::new(Metrics::new(config.cores));

        let bound = bind_node(config.listen, config.cores)?;
        let families = bound.families;
        // a port 0 in `advertise` is the port bound
        let addrs: Vec<SocketAddr> = if config.advertise.is_empty() {
            vec![bound.addr]
        } else {
            config
                .advertise
                .iter()
                .map(|a| match a.port() {
                    0 => SocketAddr::new(a.ip(), bound.addr.port()),
                    _ => *a,
                })
                .collect()
        };
        let addr = addrs[0];
        if !families.meet(engine::Families::of_all(&addrs))
            || addrs.iter().any(|a| !families.contains(a))
        {
            tracing::warn!(
                listen = %bound.addr,
                "an advertised address is of a family the socket does not send on; listen \
                 on [::] for IPv4 and IPv6 both"
            );
        }
        let sockets = bound.sockets;
        let port_lock = bound._lock;

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
            engine_config.families = families;
            engine_config.alert = config.on_loop_collapse;
            engine_config.ingress_hold = engine::DEFAULT_INGRESS_HOLD;
            // room for B / mu held packets, whatever B and the network's mean delay
            engine_config.fit_to_delay = true;
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed)?;
            let engine = Engine::new(engine_config, seed)?;
            let link = CoreLink {
                core: i,
                service: service_tx.clone(),
                own: Arc::clone(&own),
                metrics: Arc::clone(&metrics),
                raw: None,
            };
            let (tx, rx) = inbox(INBOX);
            let task = CoreTask {
                index: i,
                stack: Stack::new(engine, link),
                io,
                inbox: rx,
                clock,
                stop: Arc::clone(&stop),
                metrics: Arc::clone(&metrics),
            };
            let pin = core_ids.get(i % core_ids.len().max(1)).copied();
            let thread = std::thread::Builder::new()
                .name(format!("mixed-core-{i}"))
                .spawn(move || {
                    if let Some(id) = pin {
                        core_affinity::set_for_current(id);
                    }
                    task.run();
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
        .ok_or(NodeError::NoAuthorities)?;
        let _ = std::fs::create_dir_all(config.key_dir.join("consensus"));
        let senders: Vec<Sender<Command>> = cores.iter().map(|c| c.inbox.clone()).collect();
        let control_stop = Arc::clone(&stop);
        let control_metrics = Arc::clone(&metrics);
        let bandwidth = config.bandwidth;
        let control_presence = Arc::clone(&presence);
        let control_service = service_tx.clone();
        let control_addrs = addrs.clone();
        let journal = Arc::new(crate::replay::Journal::open(
            &config.key_dir.join("replay"),
        )?);
        let control_journal = Arc::clone(&journal);
        let journal_stop = Arc::new(AtomicBool::new(false));
        let journal_thread = {
            let stop = Arc::clone(&journal_stop);
            let metrics = Arc::clone(&metrics);
            std::thread::Builder::new()
                .name("mixed-replay-journal".into())
                .spawn(move || journal.run(&stop, &metrics))?
        };
        let forwarding_senders = senders.clone();
        let mut service_seed = [0u8; 32];
        getrandom::fill(&mut service_seed)?;
        let mut service = Service::new(
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
            config.offline.config(),
        );
        service.storage = storage;
        // contacts and streams where they stood
        for c in &restored.contacts {
            if let Err(e) = service.offline.restore_contact(c) {
                tracing::warn!(error = %e, "a saved contact was not restored");
            }
        }
        service.offline.restore_delivered(restored.delivered);
        service.durable = Some(durable);
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
                    addrs: control_addrs,
                    families,
                    bandwidth,
                    services,
                    presence: control_presence,
                    service: control_service,
                    senders,
                    installed: None,
                    registered_in: None,
                    prepared: None,
                    journal: control_journal,
                    metrics: control_metrics,
                    clock,
                    stop_forwarding_at: None,
                    current: None,
                    carried: None,
                    warned: Default::default(),
                    authorities_checked: None,
                };
                control.run(&control_stop);
            })?;

        if let Some(m) = config.metrics {
            crate::metrics::serve(m, Arc::clone(&metrics), Arc::clone(&stop))?;
        }
        let mut node = Node {
            node_id,
            identity_key,
            service: service_tx,
            service_thread: Some(service_thread),
            local: None,
            presence,
            next_app: std::sync::atomic::AtomicU64::new(1),
            key_dir: config.key_dir.clone(),
            addr,
            addrs,
            journal: Some((journal_stop, journal_thread)),
            _port_lock: port_lock,
            cores,
            control: Some(control),
            stop,
            metrics,
            clock,
            next_core: std::sync::atomic::AtomicUsize::new(0),
            io_names,
        };
        if let Some(path) = &config.api_socket {
            node.local = Some(crate::local::LocalServer::start(
                path,
                node.node_id,
                node.identity_key.0,
                node.service.clone(),
                Arc::clone(&node.presence),
            )?);
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

    /// The address it receives packets at (the first it publishes).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every address it publishes.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The I/O backend of each core.
    pub fn io_backends(&self) -> &[&'static str] {
        &self.io_names
    }

    /// The node's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The node's identity key (what others add as a contact; its hash is the node ID).
    pub fn identity_key(&self) -> pki_client::IdentityKey {
        self.identity_key
    }

    /// Adds a contact (by its identity key): a message to it that gets no ACK after every
    /// attempt is stored at storage providers (`Stored`, then `Delivered`), and its stored
    /// messages to this node are collected (docs/storage.md). Contacts are kept in
    /// `<key_dir>/offline.redb` across restarts; adding one again changes nothing.
    pub fn add_contact(&self, identity: pki_client::IdentityKey) -> Result<(), NodeError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.service
            .send(crate::service::Input::Contact(identity, tx))
            .map_err(|_| NodeError::Stopped)?;
        rx.recv_timeout(Duration::from_secs(30))
            .map_err(|_| NodeError::Stopped)?
            .map_err(NodeError::Contact)
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

    /// Taps the cores' raw deliveries (one-packet messages sent with [`Self::send`], and
    /// sealed packets), for tests and tools: from now on each core also hands a copy of
    /// every delivery to the returned channel (up to 4,096 waiting; more are not copied).
    /// Without a tap nothing is copied.
    pub fn tap(&self) -> Receiver<NodeEvent> {
        let (tx, rx) = sync_channel(TAP);
        for core in &self.cores {
            let _ = core.inbox.try_send(Command::Tap(tx.clone()));
        }
        rx
    }

    /// The counters of all cores, summed.
    pub fn counters(&self) -> Counters {
        self.metrics.counters()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether the installed consensus lists this node.
    pub fn is_listed(&self) -> bool {
        self.presence.listed.load(Ordering::Relaxed)
    }

    /// Leaves the network gracefully (what SIGTERM does, before [`Self::stop`]): withdraws
    /// from the next consensus and keeps forwarding for the others until a consensus without
    /// this node is installed, and through the previous key's grace (30 s) after, within
    /// `timeout` in all. Returns whether it got out of the consensus in time.
    pub fn leave(&self, timeout: Duration) -> bool {
        self.presence.bound.store(false, Ordering::Relaxed);
        let deadline = self.clock.now().saturating_add(timeout);
        let mut out = !self.is_listed();
        while !out && self.clock.now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            out = !self.is_listed();
        }
        // packets built under the consensus that listed it are still on their way: keep
        // forwarding through the previous key's grace (within the timeout)
        if out {
            let grace = self.clock.now().saturating_add(crate::control::LEAVE_GRACE);
            while self.clock.now() < grace.min(deadline) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        out
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
        if let Some((stop, t)) = self.journal.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = t.join();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
    }
}
