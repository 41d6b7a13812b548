//! The messenger: whole messages over single packets, sans-IO like the engine under it.
//!
//! Sending (sections 4.2.2 and 4.5 of the paper): a message gets a random 128-bit ID and
//! becomes a coded object (the data, its digest, optionally the sender's identity and
//! deniable MAC, two ACK SURBs, optionally reply SURBs), cut into k RaptorQ source symbols
//! of one packet each. The first attempt sends n symbols, n the least for which the
//! symbols that arrive, X ~ Binomial(n, q), decode with probability P_succ >= 0.999 (the
//! binomial tail of section 4.5.1 with RaptorQ's rare decoding failures counted), q the
//! per-packet delivery probability estimated from this node's loops; then one packet of
//! SURBs the recipient may NACK through. An ACK ends the message. A NACK (the recipient is short of symbols after a
//! quiet time) or a timeout starts the next attempt with fresh repair symbols, three
//! attempts in all; after the third the application hears the recipient seems offline.
//!
//! Receiving: symbols are kept per message ID under bounds on messages and bytes, expire
//! when no symbol came for a while, and are decoded as soon as enough arrived; duplicates
//! are ignored, as are symbols of a message already recovered (whose ID is remembered for
//! a while, so a retry is answered with a fresh ACK rather than a second delivery).
//!
//! Driving it: [`Messenger::send`] and [`Messenger::handle_event`] (the engine's
//! `Message` and `Sealed` events) put work in; [`Messenger::poll_control`] hands out ACKs
//! and NACKs, to go ahead of everything in the engine's own-data queue
//! ([`engine::Engine::queue_control`]); [`Messenger::poll_packet`] hands out the next built
//! Sphinx packet of a message for the engine's own-data queue (keep about
//! [`MessengerConfig::own_ahead`] of them queued there); [`Messenger::handle_timeout`] at
//! [`Messenger::poll_timeout`]; [`Messenger::poll_event`] for the application.
//!
//! The parts, one module each: [`types`] (configuration, options, errors, events,
//! counters), `outgoing` (sending, attempts, replies), `incoming` (reassembly, ACKs and
//! NACKs), `surbs` (the SURBs awaiting answers), `model` (q, n and the timeouts) and
//! `timers` (one timer wheel for every timeout). Every table and queue has a named limit in
//! [`MessengerConfig`] and a counter for what it drops; nothing iterates in hash order, so a
//! seed replays bit for bit.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use crypto_simd::sphinx::Surb;
use engine::{Event, Paths};
use pki_client::IdentitySecret;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use scheduler::Timestamp;

mod incoming;
mod model;
mod outgoing;
mod surbs;
mod timers;
pub mod types;

use crate::wire::MessageId;
use incoming::{Completed, Incoming};
use outgoing::Outgoing;
use surbs::{Purpose, SurbTable};
use timers::{Kind, Timers};
pub use types::{
    MessageError, MessengerConfig, MessengerCounters, MessengerEvent, Received, ReplyHandle,
    SendOptions, Undelivered,
};

/// The largest message by default: 1 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 1 << 20;
/// Most reply SURBs one message carries.
pub const MAX_REPLY_SURBS: u8 = 64;
/// SURBs a NACK-SURB packet carries (two, so one lost NACK is not the end).
const NACK_SURBS: usize = 2;
/// ACK SURBs a message carries; the recipient acknowledges through each, so that the
/// sender hears of a delivery unless every ACK is lost (an ACK is lost as often as a
/// packet: 1 - q).
const ACK_SURBS: usize = 2;
/// The coded object's bytes besides the data and SURBs.
const OBJECT_OVERHEAD: usize = 1 + 1 + 2 + 4 + 32 + 64 + 1 + 1;
/// A SURB in an object: its length and its bytes (single-seed form).
const SURB_BYTES: usize = 2 + crypto_simd::sphinx::HEADER_LEN + 32 + 16;
/// The per-packet delivery probability assumed before loops have said anything.
const PRIOR_Q: f64 = 0.8;
/// Loop outcomes needed before their rate replaces the prior.
const MIN_LOOP_OUTCOMES: u64 = 32;

/// The messenger of one node.
#[derive(Debug)]
pub struct Messenger {
    config: MessengerConfig,
    identity: IdentitySecret,
    paths: Option<Paths>,
    reliability: Arc<HashMap<[u8; 32], f64>>,
    rng: ChaCha20Rng,
    q_loops: Option<f64>,
    outgoing: BTreeMap<MessageId, Outgoing>,
    outgoing_bytes: usize,
    /// Messages with packets to hand out, in turn (each at most once).
    ready: VecDeque<MessageId>,
    /// ACKs and NACKs to build, at most [`MessengerConfig::max_control`].
    control: VecDeque<(Surb, Vec<u8>)>,
    surbs: SurbTable,
    incoming: BTreeMap<MessageId, Incoming>,
    incoming_bytes: usize,
    completed: BTreeMap<MessageId, Completed>,
    completed_order: VecDeque<(MessageId, Timestamp)>,
    timers: Timers,
    events: VecDeque<MessengerEvent>,
    counters: MessengerCounters,
    /// Plaintext buffers of a batch being built.
    plaintexts: Vec<Vec<u8>>,
}

impl Messenger {
    /// A messenger for the node with this identity; `seed` seeds its randomness.
    pub fn new(identity: IdentitySecret, config: MessengerConfig, seed: [u8; 32]) -> Self {
        Messenger {
            timers: Timers::new(config.max_outgoing + config.max_incoming),
            surbs: SurbTable::new(config.max_surbs),
            config,
            identity,
            paths: None,
            reliability: Arc::new(HashMap::new()),
            rng: ChaCha20Rng::from_seed(seed),
            q_loops: None,
            outgoing: BTreeMap::new(),
            outgoing_bytes: 0,
            ready: VecDeque::new(),
            control: VecDeque::new(),
            incoming: BTreeMap::new(),
            incoming_bytes: 0,
            completed: BTreeMap::new(),
            completed_order: VecDeque::new(),
            events: VecDeque::new(),
            counters: MessengerCounters::default(),
            plaintexts: Vec::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &MessengerConfig {
        &self.config
    }

    /// Changes the own-data rate the timeouts assume.
    pub fn set_own_rate(&mut self, rate: f64) {
        if rate.is_finite() && rate > 0.0 {
            self.config.own_rate = rate;
        }
    }

    /// The counters.
    pub fn counters(&self) -> &MessengerCounters {
        &self.counters
    }

    /// Installs an epoch's paths.
    pub fn set_paths(&mut self, mut paths: Paths) {
        paths.set_reliability(std::sync::Arc::clone(&self.reliability));
        self.paths = Some(paths);
    }

    /// Feeds the nodes' reliabilities the engine's loops measured: paths are drawn by
    /// bandwidth times reliability (Algorithm 1), as the engine draws its loops.
    pub fn set_reliability(&mut self, reliability: HashMap<[u8; 32], f64>) {
        self.reliability = std::sync::Arc::new(reliability);
        if let Some(p) = &mut self.paths {
            p.set_reliability(std::sync::Arc::clone(&self.reliability));
        }
    }

    /// The installed paths.
    pub fn paths(&self) -> Option<&Paths> {
        self.paths.as_ref()
    }

    /// The most data a message of `reply_surbs` reply SURBs may carry.
    pub fn max_message(&self) -> usize {
        self.config.max_message
    }

    fn push_event(&mut self, e: MessengerEvent) {
        if self.events.len() >= self.config.max_events {
            self.counters.events_dropped += 1;
            return;
        }
        self.events.push_back(e);
    }

    /// Whether a message of this ID was delivered lately (remembered for
    /// [`MessengerConfig::remember_for`]): the offline layer delivers each message once,
    /// whichever way it came.
    pub fn was_received(&self, id: &MessageId) -> bool {
        self.completed.contains_key(id)
    }

    /// Remembers a message delivered by another way (collected from storage), so that its
    /// direct symbols are ignored and a retry answered with an ACK.
    pub fn mark_received(&mut self, now: Timestamp, id: MessageId) {
        if !self.completed.contains_key(&id) {
            self.remember(now, id, 0);
        }
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<MessengerEvent> {
        self.events.pop_front()
    }

    /// Messages being sent or awaiting an ACK.
    pub fn outgoing(&self) -> usize {
        self.outgoing.len()
    }

    /// Messages being received.
    pub fn incoming(&self) -> usize {
        self.incoming.len()
    }

    /// Whether packets are waiting to be handed out.
    pub fn has_packets(&self) -> bool {
        !self.control.is_empty() || !self.ready.is_empty()
    }

    /// Builds the next ACK or NACK into `out` (resized to the packet size) and returns its
    /// first hop, or `None` when none waits. They are small and time-critical: queue them
    /// ahead of the messages.
    pub fn poll_control(&mut self, out: &mut Vec<u8>) -> Option<[u8; 32]> {
        let size = self.paths.as_ref()?.packet_size();
        out.resize(size, 0);
        while let Some((surb, plaintext)) = self.control.pop_front() {
            if let Ok(hop) = surb.write_reply(&plaintext, out) {
                return Some(hop.0);
            }
        }
        None
    }

    /// Queues an ACK or NACK to build; `false` (counted) when
    /// [`MessengerConfig::max_control`] wait already.
    fn push_control(&mut self, surb: Surb, plaintext: Vec<u8>) -> bool {
        if self.control.len() >= self.config.max_control {
            self.counters.control_dropped += 1;
            return false;
        }
        self.control.push_back((surb, plaintext));
        true
    }

    /// Handles an event of the engine: a message (symbols, NACK SURBs) or a sealed reply
    /// (ACK, NACK, reply symbols). Other events are ignored.
    pub fn handle_event(&mut self, now: Timestamp, event: &Event) {
        match event {
            Event::Message { payload, .. } => self.handle_plaintext(now, payload, None),
            Event::Sealed {
                identifier,
                payload,
            } => {
                let Some((recovery, purpose)) = self.surbs.take(identifier) else {
                    self.counters.unknown_sealed += 1;
                    return;
                };
                let mut payload = payload.clone();
                let Ok(plain) = recovery.recover(&mut payload) else {
                    self.counters.unknown_sealed += 1;
                    return;
                };
                let plain = plain.to_vec();
                match purpose {
                    Purpose::Reply(original) => self.handle_plaintext(now, &plain, Some(original)),
                    Purpose::Ack(_) | Purpose::Nack(_) => self.handle_plaintext(now, &plain, None),
                }
            }
            Event::LoopCollapse { .. } => self.push_event(MessengerEvent::Alert { raised: true }),
            Event::LoopsRecovered { .. } => {
                self.push_event(MessengerEvent::Alert { raised: false })
            }
        }
    }

    /// Handles the timers due at `now`: attempts that timed out, NACKs due, expiries.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        while let Some(timer) = self.timers.pop(now) {
            match timer.kind {
                Kind::Attempt => self.on_attempt_timer(now, timer),
                Kind::Incoming => self.on_incoming_timer(now, timer),
            }
        }
        self.surbs.expire(now);
        while let Some((id, expires)) = self.completed_order.front().copied() {
            if expires > now {
                break;
            }
            self.completed_order.pop_front();
            self.completed.remove(&id);
        }
    }

    /// When to call [`Self::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let completed = self.completed_order.front().map(|c| c.1);
        [self.timers.next(), self.surbs.next_expiry(), completed]
            .into_iter()
            .flatten()
            .min()
    }

    /// Sizes of the tables (for metrics and the limit tests): SURBs held, ACKs and NACKs
    /// waiting, timers armed.
    pub fn table_sizes(&self) -> (usize, usize, usize) {
        (self.surbs.len(), self.control.len(), self.timers.len())
    }
}
