//! The engine of one node (or of one core of a node): sans-IO, after quinn-proto. It never
//! reads a clock, touches a socket or calls OS randomness: the driver pushes datagrams and
//! timeouts in with the time, and pulls transmits, the next deadline and events out.
//!
//! - [`Engine::handle_datagrams`]: a batch of received datagrams, unwrapped together.
//! - [`Engine::handle_timeout`]: call at [`Engine::poll_timeout`]; moves expired delays to
//!   the emitter, fills the slots that are due, expires loops.
//! - [`Engine::poll_transmit`]: call until `None` after every `handle_*`; each gives one
//!   datagram to send now.
//! - [`Engine::poll_event`]: messages for the layer above and alerts.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crypto_simd::sphinx::{
    self, Delay, Destination, HEADER_LEN, Hop, MixPublicKey, MixSecretKey, NodeId, PacketRequest,
    ProcessError, Processed, Routing,
};
use pki_client::VerifiedConsensus;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use scheduler::{
    Emission, EmissionParams, Emitter, ExpDelay, ForwardDrop, TickClock, TimerWheel, Timestamp,
};

use crate::counters::{Counters, DropReason, OutCategory};
use crate::loops::LoopTracker;
use crate::pool::PacketPool;
use crate::replay::{ReplayFilter, Seen};

/// Most datagrams unwrapped together.
pub const MAX_BATCH: usize = 64;
/// Loops (and cover packets) built per batch: two ladders of IFMA's eight lanes.
const LOOP_STOCK: usize = 16;
/// Cover packets kept built ahead: at high rates a turn of the loop may fill many slots,
/// and cover built one at a time would waste the ladders' lanes.
const COVER_STOCK: usize = 64;
/// The identifier of drop cover: a one-hop packet its receiver discards.
const COVER_IDENTIFIER: [u8; 16] = [0; 16];

/// How an engine runs. The defaults suit a node at a few hundred packets a second; a relay
/// scales the pool, wheel and replay capacity with its rate.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// This node's ID (the hash of its identity key).
    pub node_id: [u8; 32],
    /// B: the constant rate this engine emits at, packets a second (a node of k cores gives
    /// each core B / k: the sum of their Poisson clocks is a Poisson clock of rate B).
    pub rate: f64,
    /// Whether the node forwards for others (a mix); a passive node does not.
    pub forwarding: bool,
    /// Packet buffers: held packets, ready forwards, queued transmits.
    pub pool_size: usize,
    /// Most packets held for their delay at once.
    pub wheel_capacity: usize,
    /// Timer tick.
    pub tick: Duration,
    /// The longest delay honoured; a packet asking for more is dropped.
    pub max_delay: Duration,
    /// Datagrams waiting to be sent, at most.
    pub tx_queue: usize,
    /// Own packets waiting for a slot, at most.
    pub own_queue: usize,
    /// Forwards waiting for a slot, at most (the emitter's ready queue).
    pub forward_queue: usize,
    /// Loops in flight tracked, at most.
    pub max_loops: usize,
    /// How long a loop may take before it counts as lost.
    pub loop_timeout: Duration,
    /// How long packets under the previous epoch's key are still accepted.
    pub grace: Duration,
    /// Where this node receives packets. A node not in the consensus (passive) ends its
    /// loops and SURBs with a direct ID carrying this address ([`crate::paths::direct_id`]).
    pub address: Option<SocketAddr>,
    /// Whether to deliver to a direct ID (the last hop of a passive node's loop or SURB).
    pub direct_delivery: bool,
}

impl EngineConfig {
    /// Defaults for a node with this ID, emitting at `rate` packets a second.
    pub fn new(node_id: [u8; 32], rate: f64) -> Self {
        EngineConfig {
            node_id,
            rate,
            forwarding: true,
            pool_size: 4096,
            wheel_capacity: 4096,
            tick: scheduler::DEFAULT_TICK,
            max_delay: Duration::from_secs(60),
            tx_queue: 1024,
            own_queue: 256,
            forward_queue: 256,
            max_loops: 4096,
            loop_timeout: Duration::from_secs(10),
            grace: Duration::from_secs(30),
            address: None,
            direct_delivery: true,
        }
    }
}

/// One epoch as the engine uses it: the verified consensus, this node's mix secret key for
/// the epoch, and the key's replay filter (shared by the node's cores).
#[derive(Clone, Debug)]
pub struct EpochKeys {
    /// The epoch's consensus.
    pub consensus: Arc<VerifiedConsensus>,
    /// This node's mix secret key for the epoch.
    pub secret: MixSecretKey,
    /// Replay tags seen under `secret`.
    pub replay: Arc<ReplayFilter>,
}

/// What the engine tells the layer above.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A message for this node arrived.
    Message {
        /// The sender's identifier for it.
        identifier: [u8; 16],
        /// The plaintext.
        payload: Vec<u8>,
    },
    /// Loops stopped coming back: a possible n-1 attack around this node (section 5.0.2).
    LoopCollapse {
        /// Fraction of recent loops that returned.
        recent: f64,
        /// Fraction that usually return.
        usual: f64,
    },
    /// A packet for this node whose payload is still sealed: a reply through one of the
    /// node's SURBs, which only the layer above (holding the SURB's recovery) can open; or
    /// a payload damaged in transit, which it will fail to open.
    Sealed {
        /// The identifier the packet arrived with (the SURB's, for a reply).
        identifier: [u8; 16],
        /// The payload as this node's layer left it.
        payload: Vec<u8>,
    },
}

/// A datagram to send now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub to: SocketAddr,
    /// The emission slot it belongs to: it should leave at this time (the difference from
    /// the actual departure is the node's delay accuracy).
    pub due: Timestamp,
    /// Its length, at the start of the buffer given to [`Engine::poll_transmit`].
    pub len: usize,
    /// What it carries (never on the wire: for counters and tests).
    pub category: OutCategory,
}

/// Why a message could not be queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No consensus installed yet.
    #[error("no consensus yet")]
    NoConsensus,
    /// The destination is not in the consensus.
    #[error("destination not in the consensus")]
    UnknownDestination,
    /// Not enough nodes for a path.
    #[error("not enough nodes for a path")]
    NoPath,
    /// Longer than one packet carries.
    #[error("message too long for one packet")]
    TooLong,
    /// The own-data queue is full: try again later.
    #[error("own-data queue full")]
    QueueFull,
    /// No packet buffer free.
    #[error("no packet buffer free")]
    PoolFull,
    /// This node is not in the consensus and knows no address of its own: nothing can
    /// reach it, so it cannot make reply blocks.
    #[error("this node cannot be reached: not in the consensus and no address configured")]
    Unreachable,
    /// A packet of the wrong size.
    #[error("packet of the wrong size")]
    WrongSize,
}

#[derive(Debug)]
struct EpochState {
    keys: EpochKeys,
    /// Node ID -> address, for this epoch's nodes.
    addrs: HashMap<[u8; 32], SocketAddr>,
}

/// A queued datagram.
#[derive(Clone, Copy, Debug)]
struct Queued {
    buf: u32,
    to: SocketAddr,
    category: OutCategory,
    due: Timestamp,
}

/// A prebuilt loop.
#[derive(Clone, Copy, Debug)]
struct StockedLoop {
    buf: u32,
    to: SocketAddr,
    id: [u8; 16],
    hops: [[u8; 32]; 4],
    hop_count: usize,
}

/// The engine.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    rng: ChaCha20Rng,
    current: Option<EpochState>,
    previous: Option<(EpochState, Timestamp)>,
    pool: PacketPool,
    packet_size: usize,
    clock: TickClock,
    wheel: TimerWheel<u32>,
    /// Where each held packet goes next, by buffer.
    next_hop: Vec<Option<SocketAddr>>,
    emitter: Option<Emitter<u32>>,
    delays: ExpDelay,
    tx: VecDeque<Queued>,
    own: VecDeque<Queued>,
    stock: VecDeque<StockedLoop>,
    cover: VecDeque<Queued>,
    loops: LoopTracker,
    events: VecDeque<Event>,
    counters: Counters,
}

/// Why an epoch could not be installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InstallError {
    /// The consensus's parameters do not make a valid emission schedule with this rate.
    #[error("emission parameters: {0}")]
    Params(scheduler::ParamsError),
    /// The packet size changed; the node must restart to follow.
    #[error("the packet size changed from {was} to {now}: restart the node")]
    PacketSize {
        /// The size in use.
        was: usize,
        /// The new size.
        now: usize,
    },
    /// The packet size is not one Sphinx allows.
    #[error("packet size {0} outside what Sphinx allows")]
    BadPacketSize(usize),
}

/// Most events waiting for the layer above.
const MAX_EVENTS: usize = 4096;

impl Engine {
    /// An engine; it emits once an epoch is installed. `seed` seeds all its randomness
    /// (the runtime draws it from the OS, a simulation from its own seed).
    pub fn new(config: EngineConfig, seed: [u8; 32]) -> Result<Self, scheduler::time::BadTick> {
        let clock = TickClock::new(config.tick)?;
        Ok(Engine {
            rng: ChaCha20Rng::from_seed(seed),
            current: None,
            previous: None,
            pool: PacketPool::new(1, 0),
            packet_size: 0,
            clock,
            wheel: TimerWheel::new(config.wheel_capacity, 0),
            next_hop: Vec::new(),
            emitter: None,
            delays: ExpDelay::ZERO,
            tx: VecDeque::with_capacity(config.tx_queue),
            own: VecDeque::with_capacity(config.own_queue),
            stock: VecDeque::with_capacity(LOOP_STOCK),
            cover: VecDeque::with_capacity(COVER_STOCK),
            loops: LoopTracker::new(config.max_loops),
            events: VecDeque::new(),
            counters: Counters::default(),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The installed epoch, if any.
    pub fn epoch(&self) -> Option<u64> {
        self.current.as_ref().map(|c| c.keys.consensus.epoch())
    }

    /// Packets held for their delay.
    pub fn held(&self) -> usize {
        self.wheel.len()
    }

    /// Installs an epoch: its consensus, this node's key for it, and the key's replay filter.
    /// The previous epoch's key stays valid for the configured grace. The first epoch
    /// fixes the packet size.
    pub fn install_epoch(&mut self, keys: EpochKeys, now: Timestamp) -> Result<(), InstallError> {
        let params = *keys.consensus.params();
        let size = params.packet_size as usize;
        if self.packet_size == 0 {
            if !(HEADER_LEN + sphinx::MIN_PAYLOAD_SIZE..=HEADER_LEN + sphinx::MAX_PAYLOAD_SIZE)
                .contains(&size)
            {
                return Err(InstallError::BadPacketSize(size));
            }
            self.packet_size = size;
            self.pool = PacketPool::new(self.config.pool_size, size);
            self.next_hop = vec![None; self.config.pool_size];
        } else if size != self.packet_size {
            return Err(InstallError::PacketSize {
                was: self.packet_size,
                now: size,
            });
        }
        let emission = EmissionParams {
            b: self.config.rate,
            rho: f64::from(params.rho_permille) / 1000.0,
            h: u32::from(params.hops),
            l: params.loops,
            b_loop: f64::from(params.loop_rate_millis) / 1000.0,
            forward_queue: self.config.forward_queue,
        };
        let keep = self
            .emitter
            .as_ref()
            .is_some_and(|e| *e.params() == emission);
        if !keep {
            self.emitter =
                Some(Emitter::new(emission, now, &mut self.rng).map_err(InstallError::Params)?);
        }
        self.delays = ExpDelay::new(Duration::from_micros(params.mean_delay_micros))
            .unwrap_or(ExpDelay::ZERO);
        let addrs = keys
            .consensus
            .nodes()
            .iter()
            .filter_map(|n| n.addresses.first().map(|a| (n.id(), *a)))
            .collect();
        let state = EpochState { keys, addrs };
        if let Some(old) = self.current.replace(state) {
            self.previous = Some((old, now.saturating_add(self.config.grace)));
        }
        // loops and cover built for the old epoch would use its keys
        while let Some(l) = self.stock.pop_front() {
            self.pool.give_back(l.buf);
        }
        while let Some(c) = self.cover.pop_front() {
            self.pool.give_back(c.buf);
        }
        Ok(())
    }

    fn address_of(&self, node: &[u8; 32]) -> Option<SocketAddr> {
        self.current
            .as_ref()
            .and_then(|c| c.addrs.get(node))
            .or_else(|| self.previous.as_ref().and_then(|(p, _)| p.addrs.get(node)))
            .copied()
            .or_else(|| {
                self.config
                    .direct_delivery
                    .then(|| crate::paths::parse_direct_id(node))
                    .flatten()
            })
    }

    /// The hop ID this node's loops and SURBs end at: its node ID when the consensus lists
    /// it, else a direct ID with its address.
    fn my_hop_id(&self) -> Option<[u8; 32]> {
        let current = self.current.as_ref()?;
        if current.addrs.contains_key(&self.config.node_id) {
            Some(self.config.node_id)
        } else {
            self.config.address.map(crate::paths::direct_id)
        }
    }

    /// Paths under the installed epoch, for the layer above to build its packets and
    /// SURBs with.
    pub fn paths(&self) -> Option<crate::paths::Paths> {
        let current = self.current.as_ref()?;
        Some(crate::paths::Paths::new(
            Arc::clone(&current.keys.consensus),
            self.config.node_id,
            self.config.address,
            current.keys.secret.public_key(),
        ))
    }

    /// Starts or stops forwarding for others (bindanon / unbindanon).
    pub fn set_forwarding(&mut self, forwarding: bool) {
        self.config.forwarding = forwarding;
    }

    /// Loops that returned and loops lost, since the engine started: the layer above
    /// estimates the delivery probability q from them (section 4.5).
    pub fn loop_outcomes(&self) -> (u64, u64) {
        (self.counters.loops_returned, self.counters.loops_lost)
    }

    /// Handles a batch of received datagrams (any number; unwrapped 64 at a time, their
    /// ladders side by side). Each buffer is processed in place.
    pub fn handle_datagrams<B: AsMut<[u8]>>(&mut self, now: Timestamp, datagrams: &mut [B]) {
        self.counters.received += datagrams.len() as u64;
        self.counters.batch(datagrams.len());
        for chunk in datagrams.chunks_mut(MAX_BATCH) {
            self.handle_chunk(now, chunk);
        }
    }

    fn handle_chunk<B: AsMut<[u8]>>(&mut self, now: Timestamp, chunk: &mut [B]) {
        let Some(current) = &self.current else {
            for _ in chunk.iter() {
                self.counters.drop(DropReason::NoKey);
            }
            return;
        };
        let secret = current.keys.secret.clone();
        let replay = Arc::clone(&current.keys.replay);
        let previous = match &self.previous {
            Some((p, until)) if now <= *until => {
                Some((p.keys.secret.clone(), Arc::clone(&p.keys.replay)))
            }
            _ => None,
        };

        let mut refs: [&mut [u8]; MAX_BATCH] = core::array::from_fn(|_| &mut [][..]);
        let mut n = 0;
        for d in chunk.iter_mut() {
            let d = d.as_mut();
            if d.len() == self.packet_size {
                refs[n] = d;
                n += 1;
            } else {
                self.counters.drop(DropReason::WrongSize);
            }
        }
        let mut results = [Err(ProcessError::TooShort); MAX_BATCH];
        let mut under_previous = [false; MAX_BATCH];
        // lengths always match here
        let _ = sphinx::process_batch_in_place(&secret, &mut refs[..n], &mut results[..n]);

        // packets that fail the MAC may be under the previous epoch's key
        if let Some((prev_secret, _)) = &previous {
            let mut retry: [&mut [u8]; MAX_BATCH] = core::array::from_fn(|_| &mut [][..]);
            let mut which = [0usize; MAX_BATCH];
            let mut m = 0;
            for (j, r) in refs[..n].iter_mut().enumerate() {
                if results[j] == Err(ProcessError::HeaderMac) {
                    retry[m] = &mut **r;
                    which[m] = j;
                    m += 1;
                }
            }
            let mut again = [Err(ProcessError::TooShort); MAX_BATCH];
            let _ = sphinx::process_batch_in_place(prev_secret, &mut retry[..m], &mut again[..m]);
            for k in 0..m {
                if again[k].is_ok() {
                    results[which[k]] = again[k];
                    under_previous[which[k]] = true;
                }
            }
        }

        for j in 0..n {
            match results[j] {
                Err(e) => self.counters.drop(DropReason::from_process(e)),
                Ok(processed) => {
                    let filter = match (&previous, under_previous[j]) {
                        (Some((_, f)), true) => f,
                        _ => &replay,
                    };
                    match filter.check_and_insert(&processed.replay_tag) {
                        Seen::Replay => self.counters.drop(DropReason::Replay),
                        Seen::Full => self.counters.drop(DropReason::ReplayFilterFull),
                        Seen::New => self.route(now, refs[j], processed),
                    }
                }
            }
        }
    }

    /// A new, authentic packet: hold a forward for its delay, deliver a final hop.
    fn route(&mut self, now: Timestamp, packet: &[u8], processed: Processed) {
        match processed.routing {
            Routing::Forward { next_hop, delay } => {
                self.counters.forward_hops += 1;
                if !self.config.forwarding {
                    return self.counters.drop(DropReason::NotForwarding);
                }
                if delay.as_duration() > self.config.max_delay {
                    return self.counters.drop(DropReason::DelayTooLong);
                }
                let Some(to) = self.address_of(&next_hop.0) else {
                    return self.counters.drop(DropReason::UnknownNextHop);
                };
                let Some(buf) = self.pool.take() else {
                    return self.counters.drop(DropReason::PoolFull);
                };
                self.pool.get_mut(buf).copy_from_slice(packet);
                self.next_hop[buf as usize] = Some(to);
                let deadline = self
                    .clock
                    .deadline_tick(now.saturating_add(delay.as_duration()));
                if self.wheel.insert(deadline, buf).is_err() {
                    self.pool.give_back(buf);
                    self.counters.drop(DropReason::WheelFull);
                }
            }
            Routing::Final { destination } => {
                self.counters.final_hops += 1;
                if destination.address != self.config.node_id {
                    return self.counters.drop(DropReason::NotForUs);
                }
                let Ok(plaintext) = sphinx::recover_plaintext(&packet[HEADER_LEN..]) else {
                    // a reply through a SURB, or damage: the layer above tells them apart
                    if destination.identifier == COVER_IDENTIFIER {
                        return self.counters.drop(DropReason::CorruptPayload);
                    }
                    if self.events.len() >= MAX_EVENTS {
                        return self.counters.drop(DropReason::EventQueueFull);
                    }
                    self.counters.sealed += 1;
                    self.events.push_back(Event::Sealed {
                        identifier: destination.identifier,
                        payload: packet[HEADER_LEN..].to_vec(),
                    });
                    return;
                };
                if destination.identifier == COVER_IDENTIFIER && plaintext.is_empty() {
                    self.counters.cover_received += 1;
                    return;
                }
                if self.loops.returned(&destination.identifier, now).is_some() {
                    self.counters.loops_returned += 1;
                    return;
                }
                if self.events.len() >= MAX_EVENTS {
                    return self.counters.drop(DropReason::EventQueueFull);
                }
                self.counters.delivered += 1;
                self.events.push_back(Event::Message {
                    identifier: destination.identifier,
                    payload: plaintext.to_vec(),
                });
            }
        }
    }

    /// Handles the timers due at `now`: delays that expired go to the emitter, the emission
    /// slots that are due are filled, loops that did not return in time are lost. Call it at
    /// [`Self::poll_timeout`] (or later), then drain [`Self::poll_transmit`].
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let tick = self.clock.now_tick(now);
        while let Some(buf) = self.wheel.pop_expired(tick) {
            let Some(emitter) = &mut self.emitter else {
                self.pool.give_back(buf);
                continue;
            };
            if let Err((buf, why)) = emitter.push_forward(buf, &mut self.rng) {
                self.pool.give_back(buf);
                self.counters.drop(match why {
                    ForwardDrop::Budget => DropReason::ForwardBudget,
                    ForwardDrop::QueueFull => DropReason::ForwardQueueFull,
                });
            }
        }
        if let Some((_, until)) = &self.previous
            && now > *until
        {
            self.previous = None;
        }

        if let Some(mut emitter) = self.emitter.take() {
            // a full transmit queue means the driver is behind: leave the slots due (late,
            // not lost) rather than build packets only to drop them
            while self.tx.len() < self.config.tx_queue
                && let Some((slot, emission)) = emitter.on_slot(now, !self.own.is_empty())
            {
                self.fill_slot(now, slot, emission);
            }
            self.emitter = Some(emitter);
        }
        if self.stock.len() < LOOP_STOCK / 2 {
            self.build_loops(now, LOOP_STOCK - self.stock.len());
        }
        while self.cover.len() + LOOP_STOCK <= COVER_STOCK {
            let before = self.cover.len();
            self.build_cover(LOOP_STOCK);
            if self.cover.len() == before {
                break; // no path or no buffer: try again next time
            }
        }
        let lost = self.loops.expire(now);
        self.counters.loops_lost += lost as u64;
        if let Some((recent, usual)) = self.loops.collapse()
            && self.events.len() < MAX_EVENTS
        {
            self.events.push_back(Event::LoopCollapse { recent, usual });
        }
    }

    fn fill_slot(&mut self, now: Timestamp, slot: Timestamp, emission: Emission<u32>) {
        let queued = match emission {
            Emission::Own => self.own.pop_front(),
            Emission::Forward(buf) => self.next_hop[buf as usize].take().map(|to| Queued {
                buf,
                to,
                category: OutCategory::Forward,
                due: slot,
            }),
            Emission::Cover => {
                if self.cover.is_empty() {
                    self.build_cover(LOOP_STOCK);
                }
                self.cover.pop_front()
            }
            Emission::ScheduledLoop => {
                if self.stock.is_empty() {
                    self.build_loops(now, LOOP_STOCK);
                }
                self.stock.pop_front().map(|l| {
                    let timeout = self.config.loop_timeout;
                    if self
                        .loops
                        .sent(l.id, l.hops, l.hop_count, now, timeout)
                        .is_some()
                    {
                        self.counters.loops_lost += 1;
                    }
                    Queued {
                        buf: l.buf,
                        to: l.to,
                        category: OutCategory::Loop,
                        due: slot,
                    }
                })
            }
        };
        let Some(mut q) = queued else {
            return;
        };
        q.due = slot;
        if self.tx.len() >= self.config.tx_queue {
            self.pool.give_back(q.buf);
            self.counters.drop(DropReason::TxQueueFull);
            return;
        }
        self.tx.push_back(q);
    }

    /// Builds up to `count` loops through random paths back to this node, in one batch.
    fn build_loops(&mut self, _now: Timestamp, count: usize) {
        let Some(current) = &self.current else {
            return;
        };
        let consensus = Arc::clone(&current.keys.consensus);
        let params = *consensus.params();
        let key = current.keys.secret.public_key();
        let Some(my_id) = self.my_hop_id() else {
            return; // nothing can reach this node: no loops
        };
        let me = Hop {
            id: NodeId(my_id),
            key,
        };
        let h = usize::from(params.hops).clamp(1, 4);
        let count = count.min(LOOP_STOCK);
        let mut routes = [[me; 5]; LOOP_STOCK];
        let mut ids = [[[0u8; 32]; 4]; LOOP_STOCK];
        let mut delays = [[Delay::default(); 4]; LOOP_STOCK];
        let mut destinations = [Destination {
            address: self.config.node_id,
            identifier: [0; 16],
        }; LOOP_STOCK];
        let mut built = 0;
        for k in 0..count {
            let mut idx = [0usize; 4];
            let loops = &self.loops;
            if pki_client::select_hops(
                &consensus,
                h,
                &[self.config.node_id],
                |id| loops.reliability(id),
                &mut self.rng,
                &mut idx[..h],
            )
            .is_err()
            {
                break;
            }
            for (i, &n) in idx[..h].iter().enumerate() {
                let node = &consensus.nodes()[n];
                routes[k][i] = Hop {
                    id: NodeId(node.id()),
                    key: MixPublicKey(node.mix_key),
                };
                ids[k][i] = node.id();
                delays[k][i] =
                    Delay::from_nanos(self.delays.sample(&mut self.rng).as_nanos() as u64);
            }
            routes[k][h] = me;
            self.rng.fill_bytes(&mut destinations[k].identifier);
            built = k + 1;
        }
        let mut bufs = [0u32; LOOP_STOCK];
        let mut taken = 0;
        while taken < built {
            match self.pool.take() {
                Some(b) => {
                    bufs[taken] = b;
                    taken += 1;
                }
                None => break,
            }
        }
        let requests: [PacketRequest<'_>; LOOP_STOCK] = core::array::from_fn(|k| PacketRequest {
            route: &routes[k][..h + 1],
            delays: &delays[k][..h],
            destination: &destinations[k],
            message: &[],
        });
        let mut results = [Ok(()); LOOP_STOCK];
        {
            let mut outs = self.pool.many_mut(&bufs[..taken]);
            let _ = sphinx::build_packets(
                &requests[..taken],
                &mut self.rng,
                &mut outs[..taken],
                &mut results[..taken],
            );
        }
        for k in 0..taken {
            let first = routes[k][0].id.0;
            match (results[k], self.address_of(&first)) {
                (Ok(()), Some(to)) => {
                    self.stock.push_back(StockedLoop {
                        buf: bufs[k],
                        to,
                        id: destinations[k].identifier,
                        hops: ids[k],
                        hop_count: h,
                    });
                }
                _ => self.pool.give_back(bufs[k]),
            }
        }
    }

    /// Builds up to `count` drop-cover packets in one batch: one hop to a random node (by
    /// bandwidth), with the cover identifier and no plaintext; the node discards them.
    fn build_cover(&mut self, count: usize) {
        let Some(current) = &self.current else {
            return;
        };
        let consensus = Arc::clone(&current.keys.consensus);
        let count = count.min(LOOP_STOCK);
        let placeholder = Hop {
            id: NodeId([0; 32]),
            key: MixPublicKey([9; 32]),
        };
        let mut routes = [[placeholder]; LOOP_STOCK];
        let mut destinations = [Destination {
            address: [0; 32],
            identifier: COVER_IDENTIFIER,
        }; LOOP_STOCK];
        let mut built = 0;
        for k in 0..count {
            let mut idx = [0usize; 1];
            if pki_client::select_hops(
                &consensus,
                1,
                &[self.config.node_id],
                |_| 1.0,
                &mut self.rng,
                &mut idx,
            )
            .is_err()
            {
                break;
            }
            let node = &consensus.nodes()[idx[0]];
            routes[k][0] = Hop {
                id: NodeId(node.id()),
                key: MixPublicKey(node.mix_key),
            };
            destinations[k].address = node.id();
            built = k + 1;
        }
        let mut bufs = [0u32; LOOP_STOCK];
        let mut taken = 0;
        while taken < built {
            let Some(b) = self.pool.take() else { break };
            bufs[taken] = b;
            taken += 1;
        }
        let requests: [PacketRequest<'_>; LOOP_STOCK] = core::array::from_fn(|k| PacketRequest {
            route: &routes[k],
            delays: &[],
            destination: &destinations[k],
            message: &[],
        });
        let mut results = [Ok(()); LOOP_STOCK];
        {
            let mut outs = self.pool.many_mut(&bufs[..taken]);
            let _ = sphinx::build_packets(
                &requests[..taken],
                &mut self.rng,
                &mut outs[..taken],
                &mut results[..taken],
            );
        }
        for k in 0..taken {
            match (results[k], self.address_of(&routes[k][0].id.0)) {
                (Ok(()), Some(to)) => self.cover.push_back(Queued {
                    buf: bufs[k],
                    to,
                    category: OutCategory::Cover,
                    due: Timestamp::ZERO,
                }),
                _ => self.pool.give_back(bufs[k]),
            }
        }
    }

    /// Queues a one-packet message for `destination` (a node ID in the consensus), through
    /// h - 1 random hops; it leaves at one of the node's own-data slots. Returns the
    /// message's identifier.
    pub fn send_message(
        &mut self,
        destination: [u8; 32],
        payload: &[u8],
    ) -> Result<[u8; 16], SendError> {
        let current = self.current.as_ref().ok_or(SendError::NoConsensus)?;
        let consensus = Arc::clone(&current.keys.consensus);
        let dest = consensus
            .node(&destination)
            .ok_or(SendError::UnknownDestination)?;
        if self.own.len() >= self.config.own_queue {
            return Err(SendError::QueueFull);
        }
        let hops = usize::from(consensus.params().hops).clamp(1, 5);
        let mut idx = [0usize; 4];
        let loops = &self.loops;
        pki_client::select_hops(
            &consensus,
            hops - 1,
            &[self.config.node_id, destination],
            |id| loops.reliability(id),
            &mut self.rng,
            &mut idx[..hops - 1],
        )
        .map_err(|_| SendError::NoPath)?;
        let last = Hop {
            id: NodeId(destination),
            key: MixPublicKey(dest.mix_key),
        };
        let mut route = [last; 5];
        let mut delays = [Delay::default(); 4];
        for (i, &n) in idx[..hops - 1].iter().enumerate() {
            let node = &consensus.nodes()[n];
            route[i] = Hop {
                id: NodeId(node.id()),
                key: MixPublicKey(node.mix_key),
            };
            delays[i] = Delay::from_nanos(self.delays.sample(&mut self.rng).as_nanos() as u64);
        }
        route[hops - 1] = last;
        let mut identifier = [0u8; 16];
        self.rng.fill_bytes(&mut identifier);
        let to = self
            .address_of(&route[0].id.0)
            .ok_or(SendError::UnknownDestination)?;
        let buf = self.pool.take().ok_or(SendError::PoolFull)?;
        let built = sphinx::build_packet(
            &route[..hops],
            &delays[..hops - 1],
            &Destination {
                address: destination,
                identifier,
            },
            payload,
            &mut self.rng,
            self.pool.get_mut(buf),
        );
        if built.is_err() {
            self.pool.give_back(buf);
            return Err(SendError::TooLong);
        }
        self.own.push_back(Queued {
            buf,
            to,
            category: OutCategory::Own,
            due: Timestamp::ZERO,
        });
        Ok(identifier)
    }

    /// Queues a packet the layer above built ([`crate::paths::Paths`]) for one of the
    /// node's own-data slots; `first_hop` is where it goes first (a node ID, or a direct ID).
    pub fn queue_own(&mut self, packet: &[u8], first_hop: &[u8; 32]) -> Result<(), SendError> {
        if self.current.is_none() {
            return Err(SendError::NoConsensus);
        }
        if packet.len() != self.packet_size {
            return Err(SendError::WrongSize);
        }
        if self.own.len() >= self.config.own_queue {
            self.counters.drop(DropReason::OwnQueueFull);
            return Err(SendError::QueueFull);
        }
        let to = self
            .address_of(first_hop)
            .ok_or(SendError::UnknownDestination)?;
        let buf = self.pool.take().ok_or(SendError::PoolFull)?;
        self.pool.get_mut(buf).copy_from_slice(packet);
        self.own.push_back(Queued {
            buf,
            to,
            category: OutCategory::Own,
            due: Timestamp::ZERO,
        });
        Ok(())
    }

    /// Queues a packet like [`Self::queue_own`], but ahead of every own packet waiting:
    /// for acknowledgements, which are small and time-critical.
    pub fn queue_control(&mut self, packet: &[u8], first_hop: &[u8; 32]) -> Result<(), SendError> {
        self.queue_own(packet, first_hop)?;
        if let Some(q) = self.own.pop_back() {
            self.own.push_front(q);
        }
        Ok(())
    }

    /// Room left in the own-data queue.
    pub fn own_room(&self) -> usize {
        self.config.own_queue.saturating_sub(self.own.len())
    }

    /// Own messages waiting for a slot.
    pub fn own_queued(&self) -> usize {
        self.own.len()
    }

    /// The next datagram to send now, written into `out` (at least the packet size), or
    /// `None` when there is nothing to send. Call until `None` after each `handle_*`.
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> Option<Transmit> {
        let q = self.tx.pop_front()?;
        let len = self.packet_size;
        let sent = out
            .get_mut(..len)
            .map(|dst| dst.copy_from_slice(self.pool.get(q.buf)));
        self.pool.give_back(q.buf);
        sent?;
        self.counters.sent(q.category);
        Some(Transmit {
            to: q.to,
            due: q.due,
            len,
            category: q.category,
        })
    }

    /// When to call [`Self::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let emitter = self.emitter.as_ref().map(Emitter::poll_timeout);
        let wheel = self.wheel.next_deadline().map(|t| self.clock.tick_start(t));
        let loops = self.loops.next_expiry();
        let grace = self.previous.as_ref().map(|(_, until)| *until);
        [emitter, wheel, loops, grace].into_iter().flatten().min()
    }

    /// The next event for the layer above.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Every tested node's reliability as loops measured it (for the layer above's paths).
    pub fn reliabilities(&self) -> &HashMap<[u8; 32], f64> {
        self.loops.reliabilities()
    }

    /// A node's reliability as loops measured it.
    pub fn reliability(&self, node: &[u8; 32]) -> f64 {
        self.loops.reliability(node)
    }
}
