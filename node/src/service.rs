//! The messaging service: one thread per node that runs the [`Messenger`] for every
//! application of the node, in-process ([`crate::api`]) or over the local API socket
//! ([`crate::local`]).
//!
//! - The cores send it what the engines deliver (messages, sealed replies).
//! - It hands built packets to the cores through two bounded lock-free queues (ACKs and
//!   NACKs first); a core takes them when its own-data queue has room, so the node's
//!   constant-rate budget is shared by every application, message by message in turn.
//! - Applications talk to it through one bounded channel; each gets its events through its
//!   own bounded queue, so a slow or crashed application holds up no one else.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

use anon::local::{ApiError, Code, Frame};
use anon::{
    MessageId, Messenger, MessengerConfig, MessengerEvent, Received, ReplyHandle, SendOptions,
};
use crossbeam_queue::ArrayQueue;
use engine::{Event, Paths};
use pki_client::IdentitySecret;
use scheduler::Timestamp;

use crate::clock::Clock;
use crate::metrics::Metrics;

/// ACKs and NACKs waiting for a core.
const CONTROL_QUEUE: usize = 64;
/// Message packets built ahead for the cores.
const DATA_QUEUE: usize = 32;
/// Own packets a core keeps queued in its engine.
pub(crate) const OWN_AHEAD: usize = 8;
/// Requests and deliveries waiting for the service.
pub(crate) const INPUT_QUEUE: usize = 8192;
/// Events an application's queue holds before they wait in the service.
pub(crate) const APP_QUEUE: usize = 1024;
/// Messages one application may have in flight (sending or awaiting their ACK): a quarter
/// of the messenger's, so that no application can crowd out the others.
const APP_IN_FLIGHT: usize = 256;
/// Applications with a session at once, in the process and over the local socket.
pub(crate) const MAX_APPS: usize = 1024;
/// Messages held for ports no application listens on (or for slow ones), at most.
const HELD_MESSAGES: usize = 1024;
/// Bytes of those, at most.
const HELD_BYTES: usize = 64 << 20;

/// A built packet for a core.
#[derive(Debug)]
pub(crate) struct OwnPacket {
    pub(crate) hop: [u8; 32],
    pub(crate) bytes: Vec<u8>,
}

/// The queues between the service and the cores.
#[derive(Debug)]
pub(crate) struct OwnQueues {
    pub(crate) control: ArrayQueue<OwnPacket>,
    pub(crate) data: ArrayQueue<OwnPacket>,
    /// Buffers back from the cores, for reuse.
    pub(crate) free: ArrayQueue<Vec<u8>>,
}

impl OwnQueues {
    pub(crate) fn new() -> Self {
        OwnQueues {
            control: ArrayQueue::new(CONTROL_QUEUE),
            data: ArrayQueue::new(DATA_QUEUE),
            free: ArrayQueue::new(CONTROL_QUEUE + DATA_QUEUE + 64),
        }
    }
}

/// Whether the node is bound (in the PKI, forwarding), and what it advertises; shared by
/// the service, the control thread and the API.
#[derive(Debug)]
pub(crate) struct Presence {
    pub(crate) bound: AtomicBool,
    /// Whether the installed consensus lists this node (set by the control thread).
    pub(crate) listed: AtomicBool,
    bandwidth: AtomicU64,
}

impl Presence {
    pub(crate) fn new(bound: bool, bandwidth: f64) -> Self {
        Presence {
            bound: AtomicBool::new(bound),
            listed: AtomicBool::new(false),
            bandwidth: AtomicU64::new(bandwidth.to_bits()),
        }
    }
    pub(crate) fn bandwidth(&self) -> f64 {
        f64::from_bits(self.bandwidth.load(Ordering::Relaxed))
    }
    pub(crate) fn set_bandwidth(&self, b: f64) {
        self.bandwidth.store(b.to_bits(), Ordering::Relaxed);
    }
}

/// An application's identity with the service.
pub(crate) type AppId = u64;

/// Where an application's events go.
#[derive(Debug, Clone)]
pub(crate) enum Sink {
    /// An in-process application.
    Local(SyncSender<MessengerEvent>),
    /// A client of the API socket: frames for its writer.
    Socket(SyncSender<Frame>),
}

impl Sink {
    /// Offers an event; gives it back when the queue is full (`false`) or the application
    /// is gone (`true`).
    #[allow(clippy::result_large_err)] // the event comes back by value, on the slow path
    fn offer(&self, e: MessengerEvent) -> Result<(), (MessengerEvent, bool)> {
        match self {
            Sink::Local(tx) => match tx.try_send(e) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(e)) => Err((e, false)),
                Err(TrySendError::Disconnected(e)) => Err((e, true)),
            },
            Sink::Socket(tx) => match tx.try_send(Frame::from_event(&e)) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(_)) => Err((e, false)),
                Err(TrySendError::Disconnected(_)) => Err((e, true)),
            },
        }
    }
}

/// What an application asks.
#[derive(Debug)]
pub(crate) enum Request {
    /// Registers the application, receiving on `port` if given.
    Open {
        port: Option<u16>,
        sink: Sink,
    },
    /// The application is gone: release its port.
    Close,
    Send {
        destination: [u8; 32],
        data: Vec<u8>,
        options: SendOptions,
    },
    Reply {
        handle: ReplyHandle,
        port: u16,
        data: Vec<u8>,
    },
    Bind {
        bandwidth: f64,
    },
    Unbind,
    /// A contact for offline delivery.
    AddContact {
        identity: pki_client::IdentityKey,
    },
}

/// What the service answers: a message ID (zero for requests without one), the reply
/// handle's SURBs left (for a reply), or an error.
pub(crate) type Answer = Result<(MessageId, Option<ReplyHandle>), ApiError>;

/// Input to the service.
#[derive(Debug)]
pub(crate) enum Input {
    /// From a core.
    Core(Event),
    /// A core's loop-measured reliabilities, once a second.
    Reliability {
        core: usize,
        nodes: Vec<([u8; 32], f64)>,
    },
    /// A new epoch: its paths and the own-data rate rho * B / h.
    Epoch { paths: Paths, own_rate: f64 },
    /// A contact: messages to it are stored at providers when it seems offline, and its
    /// stored messages to this node are collected; with where to answer.
    Contact(
        pki_client::IdentityKey,
        SyncSender<Result<(), anon::offline::ContactError>>,
    ),
    /// From an application, with where to answer.
    Api {
        app: AppId,
        request: Request,
        answer: Option<SyncSender<Answer>>,
    },
}

/// The running service's state.
pub(crate) struct Service {
    pub(crate) messenger: Messenger,
    pub(crate) inputs: Receiver<Input>,
    pub(crate) own: Arc<OwnQueues>,
    pub(crate) presence: Arc<Presence>,
    pub(crate) max_bandwidth: f64,
    pub(crate) set_forwarding: Box<dyn Fn(bool) + Send>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) clock: Clock,
    pub(crate) stop: Arc<AtomicBool>,
    apps: HashMap<AppId, (Sink, Option<u16>)>,
    ports: HashMap<u16, AppId>,
    owners: HashMap<MessageId, AppId>,
    /// Messages waiting for their port's application (none yet, or a full queue).
    held: VecDeque<Received>,
    held_bytes: usize,
    /// Status events waiting for a full application queue.
    backlog: HashMap<AppId, VecDeque<MessengerEvent>>,
    /// Each core's latest reliabilities.
    reliability: HashMap<usize, Vec<([u8; 32], f64)>>,
    /// The storage service, on a provider: requests to it never reach an application.
    pub(crate) storage: Option<stack::services::StorageService>,
    /// Offline delivery: messages to contacts that seem offline, stored at providers.
    pub(crate) offline: anon::offline::Offline,
    /// Where the offline layer's durable state is written (`None`: kept in memory only).
    pub(crate) durable: Option<crate::durable::DurableState>,
    /// When a failed write of it was last warned about.
    durable_warned: Option<Timestamp>,
}

impl Service {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        identity: IdentitySecret,
        inputs: Receiver<Input>,
        own: Arc<OwnQueues>,
        presence: Arc<Presence>,
        max_bandwidth: f64,
        set_forwarding: Box<dyn Fn(bool) + Send>,
        metrics: Arc<Metrics>,
        clock: Clock,
        stop: Arc<AtomicBool>,
        seed: [u8; 32],
        offline: anon::offline::OfflineConfig,
    ) -> Self {
        let config = MessengerConfig {
            own_ahead: DATA_QUEUE + OWN_AHEAD,
            ..MessengerConfig::default()
        };
        // the offline layer's randomness: its own stream from the service's seed
        let mut offline_seed = seed;
        offline_seed[0] ^= 0x0f;
        Service {
            offline: anon::offline::Offline::new(identity.clone(), offline, offline_seed),
            durable: None,
            durable_warned: None,
            messenger: Messenger::new(identity, config, seed),
            inputs,
            own,
            presence,
            max_bandwidth,
            set_forwarding,
            metrics,
            clock,
            stop,
            apps: HashMap::new(),
            ports: HashMap::new(),
            owners: HashMap::new(),
            held: VecDeque::new(),
            held_bytes: 0,
            backlog: HashMap::new(),
            reliability: HashMap::new(),
            storage: None,
        }
    }

    /// Runs until the node stops.
    pub(crate) fn run(mut self) {
        let mut next_q = self.clock.now();
        while !self.stop.load(Ordering::Relaxed) {
            let now = self.clock.now();
            let wait = if self.messenger.has_packets() {
                Duration::from_millis(2)
            } else {
                [self.messenger.poll_timeout(), self.offline.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min()
                    .map_or(Duration::from_millis(50), |t| t.saturating_since(now))
                    .min(Duration::from_millis(50))
            };
            match self.inputs.recv_timeout(wait) {
                Ok(input) => {
                    self.handle(input);
                    for _ in 0..256 {
                        match self.inputs.try_recv() {
                            Ok(input) => self.handle(input),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = self.clock.now();
            if now >= next_q {
                next_q = now.saturating_add(Duration::from_millis(500));
                let c = self.metrics.counters();
                self.messenger
                    .set_loop_outcomes(c.loops_returned, c.loops_lost);
            }
            if self.messenger.poll_timeout().is_some_and(|t| t <= now) {
                self.messenger.handle_timeout(now);
            }
            if self.offline.poll_timeout().is_some_and(|t| t <= now) {
                self.offline.poll(now, &mut self.messenger);
            }
            while !self.own.control.is_full() {
                let mut b = self.own.free.pop().unwrap_or_default();
                let Some(hop) = self.messenger.poll_control(&mut b) else {
                    let _ = self.own.free.push(b);
                    break;
                };
                let _ = self.own.control.push(OwnPacket { hop, bytes: b });
            }
            // message packets, built in batches (their ladders side by side)
            loop {
                let room = DATA_QUEUE
                    .saturating_sub(self.own.data.len())
                    .min(engine::FORWARD_BATCH);
                if room == 0 {
                    break;
                }
                let mut bufs: [Vec<u8>; engine::FORWARD_BATCH] =
                    core::array::from_fn(|_| Vec::new());
                for b in &mut bufs[..room] {
                    *b = self.own.free.pop().unwrap_or_default();
                }
                let mut hops = [[0u8; 32]; engine::FORWARD_BATCH];
                let n = self
                    .messenger
                    .poll_packets(now, &mut bufs[..room], &mut hops[..room]);
                for (b, hop) in bufs.iter_mut().zip(hops).take(n) {
                    let bytes = std::mem::take(b);
                    let _ = self.own.data.push(OwnPacket { hop, bytes });
                }
                for b in &mut bufs[n..room] {
                    let _ = self.own.free.push(std::mem::take(b));
                }
                if n < room {
                    break;
                }
            }
            while let Some(e) = self.messenger.poll_event() {
                match (e, &mut self.storage) {
                    // a request to this provider (responses to this node's own requests
                    // come through its SURBs, with `in_reply_to` set)
                    (MessengerEvent::Received(r), Some(s))
                        if r.port == stack::services::SERVICE_PORT && r.in_reply_to.is_none() =>
                    {
                        s.answer(&mut self.messenger, r);
                    }
                    (e, _) => {
                        if let Some(e) = self.offline.filter(now, &mut self.messenger, e) {
                            self.route(e);
                        }
                    }
                }
            }
            // the offline layer's durable state first, then its events (a stored message
            // delivered is on disk before the application has it: never delivered twice)
            self.save_offline(now);
            while let Some(e) = self.offline.poll_event() {
                self.route(e);
            }
            if let Some(s) = &mut self.storage {
                if let Err(e) = s.upkeep() {
                    tracing::error!(error = %e, "storage: the retention sweep failed");
                }
                self.metrics.set_storage(crate::metrics::StorageReport {
                    stats: s.provider().store().stats(),
                    answers: s.provider().counts(),
                    service: s.counts(),
                });
            }
            self.flush();
            self.metrics
                .set_messenger(self.messenger.counters().clone());
            self.metrics.set_offline(*self.offline.counters());
        }
    }

    /// Writes what changed in the offline layer's durable state; a failure is warned about
    /// at most once a minute (the messages still go: a restart may then deliver a stored
    /// message again, or walk a stream again).
    fn save_offline(&mut self, now: Timestamp) {
        let changes = self.offline.take_changes();
        let Some(d) = &mut self.durable else { return };
        if changes.is_empty() {
            return;
        }
        if let Err(e) = d.write(&changes) {
            self.metrics.offline_unsaved();
            let due = self
                .durable_warned
                .is_none_or(|t| now.saturating_since(t) >= Duration::from_secs(60));
            if due {
                self.durable_warned = Some(now);
                tracing::warn!(error = %e, "offline delivery: state not saved");
            }
        }
    }

    fn handle(&mut self, input: Input) {
        let now = self.clock.now();
        match input {
            Input::Core(e) => self.messenger.handle_event(now, &e),
            Input::Reliability { core, nodes } => {
                self.reliability.insert(core, nodes);
                // a node's reliability is the mean over the cores that tested it
                let mut sum: HashMap<[u8; 32], (f64, u32)> = HashMap::new();
                for (id, r) in self.reliability.values().flatten() {
                    let e = sum.entry(*id).or_default();
                    e.0 += r;
                    e.1 += 1;
                }
                self.messenger.set_reliability(
                    sum.into_iter()
                        .map(|(id, (s, n))| (id, s / f64::from(n)))
                        .collect(),
                );
            }
            Input::Contact(identity, answer) => {
                let _ = answer.try_send(self.offline.add_contact(identity));
            }
            Input::Epoch { paths, own_rate } => {
                if let Some(s) = &mut self.storage {
                    s.set_epoch(paths.epoch());
                }
                self.messenger.set_paths(paths);
                self.messenger.set_own_rate(own_rate);
            }
            Input::Api {
                app,
                request,
                answer,
            } => {
                let result = self.request(app, request);
                if let Some(a) = answer {
                    let _ = a.try_send(result);
                }
            }
        }
    }

    fn request(&mut self, app: AppId, request: Request) -> Answer {
        let now = self.clock.now();
        match request {
            Request::Open { port, sink } => {
                if self.apps.len() >= MAX_APPS && !self.apps.contains_key(&app) {
                    return Err(ApiError {
                        code: Code::Busy,
                        text: format!("at most {MAX_APPS} applications at once"),
                    });
                }
                if let Some(p) = port
                    && self.ports.get(&p).is_some_and(|a| *a != app)
                {
                    return Err(ApiError {
                        code: Code::PortInUse,
                        text: format!("another application receives on port {p}"),
                    });
                }
                if let Some(p) = port {
                    self.ports.insert(p, app);
                }
                self.apps.insert(app, (sink, port));
                Ok(([0; 16], None))
            }
            Request::Close => {
                if let Some((_, Some(p))) = self.apps.remove(&app) {
                    self.ports.remove(&p);
                }
                self.backlog.remove(&app);
                self.owners.retain(|_, a| *a != app);
                Ok(([0; 16], None))
            }
            Request::Send {
                destination,
                data,
                options,
            } => {
                if self.owners.values().filter(|a| **a == app).count() >= APP_IN_FLIGHT {
                    return Err(ApiError {
                        code: Code::Busy,
                        text: format!(
                            "this application has {APP_IN_FLIGHT} messages in flight; try again when some are acknowledged"
                        ),
                    });
                }
                let id = self
                    .offline
                    .send(now, &mut self.messenger, destination, &data, options)
                    .map_err(|e| ApiError {
                        code: Code::from(&e),
                        text: e.to_string(),
                    })?;
                self.owners.insert(id, app);
                Ok((id, None))
            }
            Request::Reply {
                mut handle,
                port,
                data,
            } => {
                let id = self
                    .messenger
                    .reply(&mut handle, &data, port)
                    .map_err(|e| ApiError {
                        code: Code::from(&e),
                        text: e.to_string(),
                    })?;
                Ok((id, Some(handle)))
            }
            Request::Bind { bandwidth } => {
                if !(bandwidth.is_finite() && bandwidth >= 1.0 && bandwidth <= self.max_bandwidth) {
                    return Err(ApiError {
                        code: Code::InvalidArgument,
                        text: format!(
                            "bandwidth must be 1 to {} packets a second (the node's rate B)",
                            self.max_bandwidth
                        ),
                    });
                }
                self.presence.set_bandwidth(bandwidth);
                self.presence.bound.store(true, Ordering::Relaxed);
                (self.set_forwarding)(true);
                Ok(([0; 16], None))
            }
            Request::Unbind => {
                // withdrawn from the next consensus; others may still route through this
                // node until then, so it forwards until a consensus without it is installed
                // (the control thread stops the forwarding then)
                self.presence.bound.store(false, Ordering::Relaxed);
                Ok(([0; 16], None))
            }
            Request::AddContact { identity } => match self.offline.add_contact(identity) {
                Ok(()) => Ok(([0; 16], None)),
                Err(e @ anon::offline::ContactError::NotAKey) => Err(ApiError {
                    code: Code::InvalidArgument,
                    text: e.to_string(),
                }),
                Err(e @ anon::offline::ContactError::TooMany) => Err(ApiError {
                    code: Code::Busy,
                    text: e.to_string(),
                }),
            },
        }
    }

    /// Sends an event to the application it concerns.
    fn route(&mut self, e: MessengerEvent) {
        match e {
            MessengerEvent::Received(r) => {
                if self.held.len() >= HELD_MESSAGES || self.held_bytes + r.data.len() > HELD_BYTES {
                    self.metrics.count_undeliverable();
                    return;
                }
                self.held_bytes += r.data.len();
                self.held.push_back(r);
            }
            // every application hears it
            MessengerEvent::Alert { .. } => {
                let apps: Vec<AppId> = self.apps.keys().copied().collect();
                for app in apps {
                    let q = self.backlog.entry(app).or_default();
                    if q.len() < APP_QUEUE {
                        q.push_back(e.clone());
                    } else {
                        self.metrics.count_undeliverable();
                    }
                }
            }
            // the message stays its application's: Delivered follows
            MessengerEvent::Stored { id } => {
                let Some(app) = self.owners.get(&id).copied() else {
                    return;
                };
                let q = self.backlog.entry(app).or_default();
                if q.len() < APP_QUEUE {
                    q.push_back(e);
                } else {
                    self.metrics.count_undeliverable();
                }
            }
            MessengerEvent::Acknowledged { id, .. }
            | MessengerEvent::Offline { id }
            | MessengerEvent::Delivered { id }
            | MessengerEvent::Undelivered { id, .. } => {
                let Some(app) = self.owners.remove(&id) else {
                    return;
                };
                let q = self.backlog.entry(app).or_default();
                if q.len() < APP_QUEUE {
                    q.push_back(e);
                } else {
                    self.metrics.count_undeliverable();
                }
            }
        }
    }

    /// Hands waiting events to applications whose queues have room.
    fn flush(&mut self) {
        let mut gone = Vec::new();
        let mut keep = VecDeque::new();
        while let Some(r) = self.held.pop_front() {
            let Some(app) = self.ports.get(&r.port).copied() else {
                keep.push_back(r);
                continue;
            };
            let Some((sink, _)) = self.apps.get(&app) else {
                keep.push_back(r);
                continue;
            };
            let len = r.data.len();
            match sink.offer(MessengerEvent::Received(r)) {
                Ok(()) => self.held_bytes = self.held_bytes.saturating_sub(len),
                Err((e, is_gone)) => {
                    if is_gone {
                        gone.push(app);
                    }
                    // kept for the next application on the port
                    if let MessengerEvent::Received(r) = e {
                        keep.push_back(r);
                    }
                }
            }
        }
        self.held = keep;
        for (app, q) in &mut self.backlog {
            let Some((sink, _)) = self.apps.get(app) else {
                q.clear();
                continue;
            };
            while let Some(e) = q.pop_front() {
                match sink.offer(e) {
                    Ok(()) => {}
                    Err((e, false)) => {
                        q.push_front(e);
                        break;
                    }
                    Err((_, true)) => {
                        gone.push(*app);
                        q.clear();
                        break;
                    }
                }
            }
        }
        self.backlog.retain(|_, q| !q.is_empty());
        for app in gone {
            let _ = self.request(app, Request::Close);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn service(metrics: &Arc<Metrics>) -> Service {
        let (_tx, inputs) = std::sync::mpsc::sync_channel(1);
        Service::new(
            IdentitySecret::from_bytes([7; 32]),
            inputs,
            Arc::new(OwnQueues::new()),
            Arc::new(Presence::new(false, 100.0)),
            100.0,
            Box::new(|_| {}),
            Arc::clone(metrics),
            Clock::new(),
            Arc::new(AtomicBool::new(false)),
            [1; 32],
            anon::offline::OfflineConfig::default(),
        )
    }

    fn received(i: u32, port: u16) -> MessengerEvent {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_le_bytes());
        MessengerEvent::Received(Received {
            id,
            port,
            data: vec![1; 10],
            sender: None,
            reply: None,
            in_reply_to: None,
            stored: false,
        })
    }

    #[test]
    fn sessions_past_the_limit_are_refused_clearly() {
        let metrics = Arc::new(Metrics::new(1));
        let mut s = service(&metrics);
        let mut keep = Vec::new();
        for app in 0..MAX_APPS as u64 {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            keep.push(rx);
            let open = Request::Open {
                port: None,
                sink: Sink::Local(tx),
            };
            s.request(app, open).unwrap();
        }
        let (tx, _rx) = std::sync::mpsc::sync_channel(1);
        let open = Request::Open {
            port: None,
            sink: Sink::Local(tx),
        };
        let err = s.request(MAX_APPS as u64, open).unwrap_err();
        assert_eq!(err.code, Code::Busy);
        assert!(err.text.contains("at most 1024"), "{}", err.text);
        // one leaves, one may come
        s.request(0, Request::Close).unwrap();
        let (tx, _rx) = std::sync::mpsc::sync_channel(1);
        let open = Request::Open {
            port: None,
            sink: Sink::Local(tx),
        };
        assert!(s.request(MAX_APPS as u64, open).is_ok());
    }

    #[test]
    fn messages_for_a_port_nobody_listens_on_are_held_up_to_the_limit_then_counted() {
        let metrics = Arc::new(Metrics::new(1));
        let mut s = service(&metrics);
        for i in 0..(HELD_MESSAGES as u32 + 5) {
            s.route(received(i, 9));
        }
        s.flush();
        assert_eq!(s.held.len(), HELD_MESSAGES);
        assert_eq!(metrics.undeliverable(), 5);
        // an application that opens the port gets them, up to its queue
        let (tx, rx) = std::sync::mpsc::sync_channel(APP_QUEUE);
        s.request(
            1,
            Request::Open {
                port: Some(9),
                sink: Sink::Local(tx),
            },
        )
        .unwrap();
        s.flush();
        assert_eq!(rx.try_iter().count(), HELD_MESSAGES.min(APP_QUEUE));
        assert_eq!(s.held.len(), HELD_MESSAGES - HELD_MESSAGES.min(APP_QUEUE));
    }
}
