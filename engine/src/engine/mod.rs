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
//!
//! The engine by stage, one module each: `epoch` (keys, the previous key's grace, the
//! addresses of the epoch's nodes), `ingress` (size check, batched unwrap, replay filter,
//! routing), `emission` (the held packets' delays and Algorithm 2's slots), `probes` (loops
//! and drop cover, built in batches) and `own` (the node's own packets). Every queue has a
//! limit in [`EngineConfig`] or a named constant here, and a counted drop.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crypto_simd::sphinx::MixSecretKey;
use pki_client::VerifiedConsensus;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use scheduler::{Emitter, ExpDelay, TickClock, TimerWheel, Timestamp};

use crate::counters::{Counters, OutCategory};
pub use crate::errors::SendError;
use crate::loops::LoopTracker;
use crate::pool::PacketPool;
use crate::replay::ReplayCheck;

mod emission;
mod epoch;
mod ingress;
mod own;
mod probes;

pub use epoch::InstallError;
use epoch::{AheadKey, EpochState, MAX_AHEAD};

/// Most datagrams unwrapped together.
pub const MAX_BATCH: usize = 64;
/// Loops kept built ahead, at most (and the largest batch the builders take).
const LOOP_STOCK: usize = 16;
/// Loops or cover packets built at once: one group of IFMA's eight ladder lanes. A chunk
/// of cover costs about 150 us, of loops about 1 ms on dev-2c; the stock is topped up a
/// chunk at a time, so no slot waits behind a long build (docs/benchmarks.md, issue 13).
const BUILD_CHUNK: usize = 8;
/// Cover packets kept built ahead: at high rates a turn of the loop may fill many slots,
/// and cover built one at a time would waste the ladders' lanes.
const COVER_STOCK: usize = 64;
/// Most emission slots one [`Engine::handle_timeout`] decides; the slots still due are
/// decided at the next call, which [`Engine::poll_timeout`] asks for at once. A driver
/// reads up to this many datagrams a turn too, so a core that is behind shares its turns
/// between the slots and the forwards that fill them.
const SLOTS_PER_TURN: usize = 64;
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
    /// Whether the first consensus may grow `wheel_capacity` and `pool_size` to what this
    /// rate and the network's mean delay need ([`held_for`]): a node forwarding B packets
    /// a second, each held an exponential delay of mean 1/mu, holds B/mu of them on
    /// average (4,000 at B = 40,000 and 1/mu = 100 ms). Never above [`MAX_FITTED_BUFFERS`];
    /// never below the configured sizes. The ready queue of forwards is fitted too, to
    /// [`READY_SPAN`] of the core's slots ([`ready_for`]). The node runtime sets it; tests
    /// that fill the queues on purpose leave it off.
    pub fit_to_delay: bool,
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
    /// The address families this node's socket sends on: a next hop is reached at its
    /// first address of one of them, and every path drawn here is walkable hop to hop.
    pub families: crate::paths::Families,
    /// Incoming-volume shaping (docs/privacy.md): each packet delivered to this node (a
    /// message, a reply, an ACK) takes the place of one of its next loops, which goes out
    /// as drop cover instead, so that what comes back to the node stays at the loop rate
    /// L * b_loop whether it receives or not, as long as deliveries stay below that rate.
    pub shape_incoming: bool,
    /// What a collapse of loops (section 5.0.2's (n-1) alarm) does.
    pub alert: AlertPolicy,
    /// How long a received datagram may wait for others before it is unwrapped: the X25519
    /// backend unwraps a group of lanes (eight on AVX-512 IFMA) for the cost of one, so a
    /// node receiving a packet at a time pays up to eight times over. Zero unwraps every
    /// batch as it comes (simulations); the node runtime holds up to
    /// [`DEFAULT_INGRESS_HOLD`], which a full group of lanes cuts short.
    pub ingress_hold: Duration,
}

/// The most packet buffers [`EngineConfig::fit_to_delay`] gives a core: 2^17, about 190 MB
/// of 1,452-byte packets. A rate and mean delay that need more are capped here, and what
/// does not fit is a counted drop (`wheel_full`, `pool_full`).
pub const MAX_FITTED_BUFFERS: usize = 1 << 17;

/// The timer wheel's capacity that holds what a core emitting `rate` packets a second
/// holds for delays of mean `mean_delay`: the packets held form a Poisson number of mean
/// rate / mu (an M/G/infinity queue whose arrivals are at most the rate), so the mean
/// plus six of its standard deviations, plus a margin for bursts that arrive faster than
/// the rate for a while. Capped at [`MAX_FITTED_BUFFERS`].
pub fn held_for(rate: f64, mean_delay: Duration) -> usize {
    let mean = (rate.max(0.0) * mean_delay.as_secs_f64()).min(MAX_FITTED_BUFFERS as f64);
    let want = mean + 6.0 * mean.sqrt() + 256.0;
    (want.ceil() as usize).min(MAX_FITTED_BUFFERS)
}

/// How much of a core's slots the ready queue of forwards holds when fitted
/// ([`EngineConfig::fit_to_delay`]): 50 ms of them. The queue is the jitter buffer
/// between forwards whose delays expire at random and slots that come at random; at 95%
/// of the forward budget it is a queue at 95% utilisation, whose length passes n with a
/// probability near 0.95^n. A queue of 256, whose random drops start at a quarter of it,
/// is past 64 about 4% of the time and drops several forwards in 10,000 (the scheduler's
/// tests: 6.6); a queue of 50 ms of slots at B = 30,000 starts dropping at 375, where
/// that probability is below one in a hundred million. A forward waits there at most
/// three quarters of the span, small beside the delays 1/mu of the paper.
pub const READY_SPAN: Duration = Duration::from_millis(50);

/// The ready queue of forwards fitted to a core emitting `rate` slots a second:
/// [`READY_SPAN`] of its slots, never under 256 (the unfitted default), never above
/// [`scheduler::MAX_FORWARD_QUEUE`].
pub fn ready_for(rate: f64) -> usize {
    let slots = (rate.max(0.0) * READY_SPAN.as_secs_f64()).ceil();
    (slots.min(scheduler::MAX_FORWARD_QUEUE as f64) as usize).max(256)
}

/// The node runtime's [`EngineConfig::ingress_hold`]: a fifth of a millisecond added to a
/// hop at most, at rates where a group of lanes takes longer than that to fill.
pub const DEFAULT_INGRESS_HOLD: Duration = Duration::from_micros(200);

/// What the engine does when its loops stop returning (section 5.0.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AlertPolicy {
    /// Tell the layer above, nothing more.
    Report,
    /// High-alert mode: tell the layer above (which withdraws the node from the consensus)
    /// and stop forwarding until loops return; the constant rate goes on with loops and
    /// cover, own messages go on.
    #[default]
    Withdraw,
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
            fit_to_delay: false,
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
            families: crate::paths::Families::BOTH,
            shape_incoming: true,
            alert: AlertPolicy::Withdraw,
            ingress_hold: Duration::ZERO,
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
    pub replay: Arc<dyn ReplayCheck>,
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
    /// Under [`AlertPolicy::Withdraw`] the engine is in high-alert mode from now on: it
    /// forwards nothing (dropped, counted `high_alert`), keeps its constant rate with loops
    /// and cover, and still sends and delivers the node's own messages.
    LoopCollapse {
        /// Fraction of recent loops that returned.
        recent: f64,
        /// Fraction that usually return.
        usual: f64,
    },
    /// Loops come back again (80% of the usual rate): high-alert mode is over and the
    /// engine forwards again.
    LoopsRecovered {
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
    /// Keys of epochs not yet installed, at most [`MAX_AHEAD`] (see [`Engine::prepare_key`]).
    ahead: Vec<AheadKey>,
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
    /// Deliveries not yet paid for by a loop left out (incoming-volume shaping), at most
    /// [`MAX_SHAPING_CREDIT`].
    shaping_credit: u32,
    /// Scheduled-loop slots so far.
    loop_slots: u64,
    /// In high-alert mode: loops collapsed under [`AlertPolicy::Withdraw`].
    alert: bool,
    events: VecDeque<Event>,
    counters: Counters,
    /// Datagrams copied into pool buffers, waiting to be unwrapped together.
    staged: [u32; ingress::MAX_STAGE],
    staged_len: usize,
    /// When the oldest staged datagram arrived.
    staged_since: Timestamp,
    /// How many staged datagrams make a batch: the X25519 backend's lanes.
    stage_target: usize,
    /// A packet's worth of bytes, for a staged packet delivered here.
    scratch: Vec<u8>,
}

/// Deliveries that can wait for a loop to leave out in their place: past that, while
/// deliveries outrun the loop rate, the node's incoming volume rises with them (and it does
/// not fall below the usual after the burst for more than this many loops).
pub const MAX_SHAPING_CREDIT: u32 = 64;

/// One scheduled loop in this many always goes out as a loop, shaping or not, so that the
/// loops keep measuring the network (and the (n-1) alarm keeps watching) while the node
/// receives: shaping hides deliveries up to (1 - 1/4) L * b_loop a second.
pub const KEEP_LOOP_EVERY: u64 = 4;

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
            ahead: Vec::with_capacity(MAX_AHEAD),
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
            shaping_credit: 0,
            loop_slots: 0,
            alert: false,
            events: VecDeque::new(),
            counters: Counters::default(),
            staged: [0; ingress::MAX_STAGE],
            staged_len: 0,
            staged_since: Timestamp::ZERO,
            stage_target: crypto_simd::x25519::selected()
                .lanes()
                .clamp(1, ingress::MAX_STAGE),
            scratch: Vec::new(),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Whether the engine is in high-alert mode (see [`Event::LoopCollapse`]).
    pub fn in_alert(&self) -> bool {
        self.alert
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
    /// Starts or stops forwarding for others (bindanon / unbindanon).
    pub fn set_forwarding(&mut self, forwarding: bool) {
        self.config.forwarding = forwarding;
    }

    /// Loops that returned and loops lost, since the engine started: the layer above
    /// estimates the delivery probability q from them (section 4.5).
    pub fn loop_outcomes(&self) -> (u64, u64) {
        (self.counters.loops_returned, self.counters.loops_lost)
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
        let staged = self.stage_deadline();
        [emitter, wheel, loops, grace, staged]
            .into_iter()
            .flatten()
            .min()
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
