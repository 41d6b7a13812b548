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

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use crypto_simd::sphinx::{Surb, SurbRecovery};
use engine::{Event, Paths, SendError};
use pki_client::{IdentityKey, IdentitySecret};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use scheduler::Timestamp;

use crate::coding::{self, ObjectDecoder, ObjectEncoder};
use crate::identity;
use crate::latency::erlang_quantile;
use crate::wire::{self, MessageId, Plain};

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

/// How a messenger runs.
#[derive(Clone, Debug)]
pub struct MessengerConfig {
    /// The largest message sent or accepted, in bytes.
    pub max_message: usize,
    /// P_succ: the delivery probability each attempt aims at.
    pub target: f64,
    /// Attempts before the recipient is declared offline (the paper's three).
    pub attempts: u8,
    /// Messages being sent or awaiting their ACK, at most.
    pub max_outgoing: usize,
    /// Bytes of those messages, at most.
    pub max_outgoing_bytes: usize,
    /// Messages being received, at most.
    pub max_incoming: usize,
    /// Bytes of symbols held for them, at most.
    pub max_incoming_bytes: usize,
    /// A message being received is dropped this long after its last symbol.
    pub incoming_expiry: Duration,
    /// Recovered message IDs remembered (to ignore late symbols and re-ACK retries).
    pub remembered: usize,
    /// How long they are remembered.
    pub remember_for: Duration,
    /// The rate own packets leave at, packets a second (rho * B / h for a node of rate B):
    /// timeouts allow for the packets queued ahead.
    pub own_rate: f64,
    /// Own packets the driver keeps queued in the engine.
    pub own_ahead: usize,
    /// Added to every timeout for links and processing.
    pub allowance: Duration,
    /// Reply SURBs are honoured this long after they were made.
    pub reply_window: Duration,
    /// Events waiting for the application, at most.
    pub max_events: usize,
}

impl Default for MessengerConfig {
    fn default() -> Self {
        MessengerConfig {
            max_message: DEFAULT_MAX_MESSAGE,
            target: 0.999,
            attempts: 3,
            max_outgoing: 1024,
            max_outgoing_bytes: 64 << 20,
            max_incoming: 1024,
            max_incoming_bytes: 64 << 20,
            incoming_expiry: Duration::from_secs(600),
            remembered: 8192,
            remember_for: Duration::from_secs(3600),
            own_rate: 10.0,
            own_ahead: 32,
            allowance: Duration::from_secs(1),
            reply_window: Duration::from_secs(600),
            max_events: 4096,
        }
    }
}

/// How to send one message (the params of sendanon). The default: the consensus's h hops,
/// redundancy from the model, no reply SURBs, anonymous, port 0.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SendOptions {
    /// Hops of the path, the recipient included (1 to 5); the consensus's h by default.
    pub hops: Option<usize>,
    /// n / k for the first attempt; chosen from the binomial model by default.
    pub redundancy: Option<f64>,
    /// Reply SURBs to attach, so the recipient can answer (at most [`MAX_REPLY_SURBS`]).
    pub reply_surbs: u8,
    /// Reveal the sender's identity to the recipient (deniably).
    pub reveal_identity: bool,
    /// The recipient's port: which of its applications gets the message.
    pub port: u16,
}

/// Why a message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// No consensus yet.
    #[error("no consensus yet: the node has not joined the network")]
    NoConsensus,
    /// Larger than the maximum.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// An empty message.
    #[error("empty message")]
    Empty,
    /// The destination is not a node of the consensus.
    #[error("destination not in the consensus")]
    UnknownDestination,
    /// The hop count is outside 1..=5 (or 2..=5, for a message that wants an ACK).
    #[error("hops must be 2 to 5, not {0}")]
    Hops(usize),
    /// The redundancy is not a number of at least 1.
    #[error("redundancy must be at least 1")]
    Redundancy,
    /// Too many reply SURBs asked for.
    #[error("at most {MAX_REPLY_SURBS} reply SURBs")]
    TooManySurbs,
    /// Too many messages in flight.
    #[error("too many messages in flight: try again later")]
    Busy,
    /// A path could not be drawn.
    #[error("no path: {0}")]
    Path(SendError),
    /// This node cannot be reached, so it cannot get ACKs.
    #[error("this node cannot receive: not in the consensus and no address")]
    Unreachable,
    /// A reply longer than its SURBs carry.
    #[error("reply of {len} bytes exceeds the {max} its SURBs carry")]
    ReplyTooLong {
        /// Its length.
        len: usize,
        /// What the SURBs carry.
        max: usize,
    },
    /// The reply handle's SURBs were used or expired.
    #[error("the reply handle has no SURBs left")]
    ReplyUsed,
}

/// A message recovered (what recvanon hands the application).
#[derive(Clone, Debug)]
pub struct Received {
    /// Its ID.
    pub id: MessageId,
    /// The port it was sent to.
    pub port: u16,
    /// The data.
    pub data: Vec<u8>,
    /// The sender's identity, when it revealed it and the MAC verified.
    pub sender: Option<IdentityKey>,
    /// A handle to reply through, when it came with reply SURBs.
    pub reply: Option<ReplyHandle>,
    /// The message this answers, when it came through reply SURBs this node made.
    pub in_reply_to: Option<MessageId>,
}

/// SURBs to reply to one message with. Each SURB carries one packet; a reply of k source
/// symbols needs at least k of them.
#[derive(Clone, Debug)]
pub struct ReplyHandle {
    /// The message this answers.
    pub in_reply_to: MessageId,
    surbs: Vec<Surb>,
}

impl ReplyHandle {
    /// SURBs left.
    pub fn surbs(&self) -> usize {
        self.surbs.len()
    }

    /// The SURBs, serialized (to hand to another process).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.in_reply_to.to_vec();
        for s in &self.surbs {
            let b = s.to_bytes();
            out.extend_from_slice(&(b.len() as u16).to_be_bytes());
            out.extend_from_slice(&b);
        }
        out
    }

    /// Reads [`Self::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (id, mut rest) = bytes.split_first_chunk::<16>()?;
        let mut surbs = Vec::new();
        while !rest.is_empty() {
            let (len, r) = rest.split_first_chunk::<2>()?;
            let (s, r) = r.split_at_checked(usize::from(u16::from_be_bytes(*len)))?;
            surbs.push(Surb::from_bytes(s).ok()?);
            rest = r;
        }
        Some(ReplyHandle {
            in_reply_to: *id,
            surbs,
        })
    }
}

/// What the messenger tells the application.
#[derive(Clone, Debug)]
pub enum MessengerEvent {
    /// A message arrived.
    Received(Received),
    /// The recipient acknowledged a message.
    Acknowledged {
        /// The message.
        id: MessageId,
        /// Attempts it took.
        attempts: u8,
    },
    /// No word from the recipient after every attempt: it seems offline.
    Offline {
        /// The message.
        id: MessageId,
    },
    /// The recipient answered but could not decode after every attempt, or the message
    /// could no longer be sent.
    Undelivered {
        /// The message.
        id: MessageId,
        /// Why.
        reason: String,
    },
}

/// What the messenger counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessengerCounters {
    /// Messages accepted for sending.
    pub messages_sent: u64,
    /// Messages recovered and delivered.
    pub messages_received: u64,
    /// Symbol packets built.
    pub symbols_sent: u64,
    /// Symbols received (new ones).
    pub symbols_received: u64,
    /// Symbols ignored: duplicates, or of a message already recovered.
    pub symbols_ignored: u64,
    /// ACKs sent / received.
    pub acks_sent: u64,
    /// ACKs received.
    pub acks_received: u64,
    /// NACKs sent.
    pub nacks_sent: u64,
    /// NACKs received.
    pub nacks_received: u64,
    /// Attempts after the first.
    pub retries: u64,
    /// Messages declared offline.
    pub offline: u64,
    /// Plaintexts that do not parse.
    pub malformed: u64,
    /// Sealed packets under no SURB of ours (or damaged).
    pub unknown_sealed: u64,
    /// Decoded objects whose digest or format is wrong.
    pub bad_objects: u64,
    /// Revealed identities whose MAC failed (the message is dropped).
    pub bad_identity: u64,
    /// Symbols dropped because the incoming bounds were reached.
    pub incoming_full: u64,
    /// Messages dropped incomplete after their expiry.
    pub incoming_expired: u64,
    /// Events dropped because the application did not take them.
    pub events_dropped: u64,
}

#[derive(Debug)]
enum Via {
    /// Forward packets to a destination.
    Forward { destination: [u8; 32] },
    /// Through reply SURBs.
    Surbs(VecDeque<Surb>),
}

/// What the next packet of a message needs.
#[derive(Debug, Clone, Copy)]
enum Next {
    /// A forward packet to build for `destination`.
    Forward { destination: [u8; 32], hops: usize },
    /// Written through a SURB already: its first hop.
    Built([u8; 32]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutState {
    Sending,
    Waiting { deadline: Timestamp },
}

#[derive(Debug)]
struct Outgoing {
    id: MessageId,
    via: Via,
    hops: usize,
    encoder: ObjectEncoder,
    object_len: u32,
    next_esi: u32,
    attempt: u8,
    /// Symbols of this attempt still to hand out.
    to_send: u32,
    /// The NACK-SURB packet of this attempt is still to hand out.
    nack_surbs_due: bool,
    /// n of the first attempt.
    n_first: u32,
    state: OutState,
    /// A NACK came for the current attempt.
    nacked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Ack(MessageId),
    Nack(MessageId),
    Reply(MessageId),
}

#[derive(Debug)]
struct SurbEntry {
    recovery: SurbRecovery,
    purpose: Purpose,
    expires: Timestamp,
}

#[derive(Debug)]
struct Incoming {
    decoder: ObjectDecoder,
    object_len: u32,
    k: u32,
    esis: HashSet<u32>,
    bytes: usize,
    last: Timestamp,
    quiet: Duration,
    nack_surbs: Vec<Surb>,
    nack_attempt: u8,
    nacked_attempt: u8,
    in_reply_to: Option<MessageId>,
}

#[derive(Debug)]
struct Completed {
    reacked_attempt: u8,
}

/// The messenger of one node.
#[derive(Debug)]
pub struct Messenger {
    config: MessengerConfig,
    identity: IdentitySecret,
    paths: Option<Paths>,
    reliability: std::sync::Arc<HashMap<[u8; 32], f64>>,
    rng: ChaCha20Rng,
    q_loops: Option<f64>,
    outgoing: HashMap<MessageId, Outgoing>,
    outgoing_bytes: usize,
    ready: VecDeque<MessageId>,
    control: VecDeque<(Surb, Vec<u8>)>,
    surbs: HashMap<[u8; 16], SurbEntry>,
    incoming: HashMap<MessageId, Incoming>,
    incoming_bytes: usize,
    completed: HashMap<MessageId, Completed>,
    completed_order: VecDeque<(MessageId, Timestamp)>,
    events: VecDeque<MessengerEvent>,
    counters: MessengerCounters,
    /// Plaintext buffers of a batch being built.
    plaintexts: Vec<Vec<u8>>,
    next_sweep: Timestamp,
}

impl Messenger {
    /// A messenger for the node with this identity; `seed` seeds its randomness.
    pub fn new(identity: IdentitySecret, config: MessengerConfig, seed: [u8; 32]) -> Self {
        Messenger {
            config,
            identity,
            paths: None,
            reliability: std::sync::Arc::new(HashMap::new()),
            rng: ChaCha20Rng::from_seed(seed),
            q_loops: None,
            outgoing: HashMap::new(),
            outgoing_bytes: 0,
            ready: VecDeque::new(),
            control: VecDeque::new(),
            surbs: HashMap::new(),
            incoming: HashMap::new(),
            incoming_bytes: 0,
            completed: HashMap::new(),
            completed_order: VecDeque::new(),
            events: VecDeque::new(),
            counters: MessengerCounters::default(),
            plaintexts: Vec::new(),
            next_sweep: Timestamp::ZERO,
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

    /// Feeds the loop outcomes the engine counted (returned, lost): q is estimated from
    /// them (section 4.4: loops measure what a message would meet).
    pub fn set_loop_outcomes(&mut self, returned: u64, lost: u64) {
        let n = returned + lost;
        if n < MIN_LOOP_OUTCOMES {
            return;
        }
        let p = returned as f64 / n as f64;
        // a lower confidence bound, two standard errors down
        let lower = p - 2.0 * (p * (1.0 - p) / n as f64).sqrt();
        self.q_loops = Some(lower.clamp(0.05, 1.0));
    }

    /// q for a path of `hops` hops: a loop crosses hops + 1 links (out through h mixes
    /// and back), a message `hops`, so q = q_loop^(h / (h + 1)).
    pub fn q(&self, hops: usize) -> f64 {
        let h = self.paths.as_ref().map_or(3, Paths::default_hops) as f64;
        match self.q_loops {
            Some(ql) => ql.powf(hops as f64 / (h + 1.0)),
            None => PRIOR_Q,
        }
    }

    /// The symbol size: what a packet's plaintext holds past the symbol header, aligned.
    pub fn symbol_size(&self) -> Option<usize> {
        let p = self.paths.as_ref()?.max_plaintext();
        let t = p.checked_sub(wire::SYMBOL_HEADER)? / coding::ALIGNMENT * coding::ALIGNMENT;
        (t > 0).then_some(t)
    }

    /// How long one hop-path takes at most, as the timeouts count it: the 99.9% quantile of
    /// the h - 1 delays, plus the allowance.
    pub fn path_bound(&self, hops: usize) -> Duration {
        let mean = self
            .paths
            .as_ref()
            .map_or(Duration::ZERO, Paths::mean_delay);
        erlang_quantile(hops.saturating_sub(1), mean, 0.999) + self.config.allowance
    }

    /// How long a message of `len` bytes sent alone takes at most to be declared offline:
    /// every attempt's packets leave at the own-data rate, then its timeout runs.
    pub fn offline_bound(&self, len: usize, options: &SendOptions) -> Option<Duration> {
        let hops = self.hops_for(options).ok()?;
        let t = self.symbol_size()?;
        let k = coding::source_symbols(len + Self::object_overhead(options.reply_surbs), t);
        let n = coding::symbols_for(k, self.q(hops), self.config.target, 4 * k + 64);
        let per_attempt = Duration::from_secs_f64((n + 1) as f64 / self.config.own_rate.max(0.1))
            + self.attempt_timeout(hops);
        Some(per_attempt * u32::from(self.config.attempts))
    }

    /// The time from the last packet of an attempt handed out to its timeout: the own
    /// packets queued ahead leave, the symbols cross the path, the recipient waits its
    /// quiet time, its answer crosses back.
    pub fn attempt_timeout(&self, hops: usize) -> Duration {
        let backlog =
            Duration::from_secs_f64(self.config.own_ahead as f64 / self.config.own_rate.max(0.1));
        backlog + self.path_bound(hops) * 3
    }

    fn hops_for(&self, options: &SendOptions) -> Result<usize, MessageError> {
        let paths = self.paths.as_ref().ok_or(MessageError::NoConsensus)?;
        let hops = options.hops.unwrap_or_else(|| paths.default_hops());
        if !(2..=crypto_simd::sphinx::MAX_HOPS).contains(&hops) {
            return Err(MessageError::Hops(hops));
        }
        Ok(hops)
    }

    fn new_id(&mut self) -> MessageId {
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        id
    }

    /// The most data a message of `reply_surbs` reply SURBs may carry.
    pub fn max_message(&self) -> usize {
        self.config.max_message
    }

    /// Queues a message for `destination` (a node ID in the consensus); returns its ID.
    /// The application hears [`MessengerEvent::Acknowledged`], [`MessengerEvent::Offline`]
    /// or [`MessengerEvent::Undelivered`] about it later.
    pub fn send(
        &mut self,
        now: Timestamp,
        destination: [u8; 32],
        data: &[u8],
        options: SendOptions,
    ) -> Result<MessageId, MessageError> {
        if data.is_empty() {
            return Err(MessageError::Empty);
        }
        if data.len() > self.config.max_message {
            return Err(MessageError::TooLarge {
                len: data.len(),
                max: self.config.max_message,
            });
        }
        if options.reply_surbs > MAX_REPLY_SURBS {
            return Err(MessageError::TooManySurbs);
        }
        if let Some(r) = options.redundancy
            && !(r.is_finite() && r >= 1.0)
        {
            return Err(MessageError::Redundancy);
        }
        let hops = self.hops_for(&options)?;
        let paths = self.paths.clone().ok_or(MessageError::NoConsensus)?;
        let recipient = paths
            .consensus()
            .node(&destination)
            .map(|n| n.identity)
            .ok_or(MessageError::UnknownDestination)?;
        if !paths.can_receive() {
            return Err(MessageError::Unreachable);
        }
        if self.outgoing.len() >= self.config.max_outgoing
            || self.outgoing_bytes + data.len() > self.config.max_outgoing_bytes
        {
            return Err(MessageError::Busy);
        }
        let id = self.new_id();
        let digest = identity::digest(&id, options.port, data);
        let sender = if options.reveal_identity {
            identity::seal(&self.identity, &recipient, &id, &digest)
                .map(|mac| (self.identity.public().0, mac))
        } else {
            None
        };
        let expires = now.saturating_add(
            self.attempt_timeout(hops) * u32::from(self.config.attempts) * 4
                + Duration::from_secs_f64(data.len() as f64 / 1000.0 / self.config.own_rate),
        );
        let mut acks = Vec::with_capacity(ACK_SURBS);
        let mut recoveries = Vec::new();
        for _ in 0..ACK_SURBS {
            let (s, r) = paths
                .surb(hops, &mut self.rng)
                .map_err(MessageError::Path)?;
            acks.push(s);
            recoveries.push((r, Purpose::Ack(id), expires));
        }
        let mut reply_surbs = Vec::new();
        let reply_expires = now.saturating_add(self.config.reply_window);
        for _ in 0..options.reply_surbs {
            let (s, r) = paths
                .surb(hops, &mut self.rng)
                .map_err(MessageError::Path)?;
            reply_surbs.push(s);
            recoveries.push((r, Purpose::Reply(id), reply_expires));
        }
        let object = wire::write_object(options.port, &digest, sender, &acks, &reply_surbs, data);
        let t = self.symbol_size().ok_or(MessageError::NoConsensus)?;
        let encoder = ObjectEncoder::new(&object, t).map_err(|_| MessageError::TooLarge {
            len: data.len(),
            max: self.config.max_message,
        })?;
        let k = encoder.k() as usize;
        let n = match options.redundancy {
            Some(r) => ((k as f64 * r).ceil() as usize).max(k),
            None => coding::symbols_for(k, self.q(hops), self.config.target, 4 * k + 64),
        };
        for (r, purpose, expires) in recoveries {
            self.surbs.insert(
                r.identifier(),
                SurbEntry {
                    recovery: r,
                    purpose,
                    expires,
                },
            );
        }
        self.outgoing_bytes += object.len();
        self.outgoing.insert(
            id,
            Outgoing {
                id,
                via: Via::Forward { destination },
                hops,
                object_len: object.len() as u32,
                encoder,
                next_esi: 0,
                attempt: 1,
                to_send: n as u32,
                nack_surbs_due: true,
                n_first: n as u32,
                state: OutState::Sending,
                nacked: false,
            },
        );
        self.ready.push_back(id);
        self.counters.messages_sent += 1;
        Ok(id)
    }

    /// Replies through the SURBs of a received message: one packet per SURB, no ACK (the
    /// replier learns nothing of the recipient, so it cannot retry). Uses the SURBs the
    /// reply needs and leaves the rest in `handle`.
    pub fn reply(
        &mut self,
        handle: &mut ReplyHandle,
        data: &[u8],
        port: u16,
    ) -> Result<MessageId, MessageError> {
        if data.is_empty() {
            return Err(MessageError::Empty);
        }
        if handle.surbs.is_empty() {
            return Err(MessageError::ReplyUsed);
        }
        let t = self.symbol_size().ok_or(MessageError::NoConsensus)?;
        let max = Self::reply_capacity(handle.surbs.len(), t);
        if data.len() > max {
            return Err(MessageError::ReplyTooLong {
                len: data.len(),
                max,
            });
        }
        if self.outgoing.len() >= self.config.max_outgoing {
            return Err(MessageError::Busy);
        }
        let id = self.new_id();
        let digest = identity::digest(&id, port, data);
        let object = wire::write_object(port, &digest, None, &[], &[], data);
        let encoder = ObjectEncoder::new(&object, t).map_err(|_| MessageError::TooLarge {
            len: data.len(),
            max,
        })?;
        let k = encoder.k() as usize;
        let hops = self.paths.as_ref().map_or(3, Paths::default_hops);
        let wanted = coding::symbols_for(k, self.q(hops), self.config.target, 4 * k + 64);
        let n = wanted.min(handle.surbs.len()).max(k);
        let surbs: VecDeque<Surb> = handle.surbs.drain(..n).collect();
        self.outgoing_bytes += object.len();
        self.outgoing.insert(
            id,
            Outgoing {
                id,
                via: Via::Surbs(surbs),
                hops,
                object_len: object.len() as u32,
                encoder,
                next_esi: 0,
                attempt: 1,
                to_send: n as u32,
                nack_surbs_due: false,
                n_first: n as u32,
                state: OutState::Sending,
                nacked: false,
            },
        );
        self.ready.push_back(id);
        self.counters.messages_sent += 1;
        Ok(id)
    }

    /// The most data a reply through `surbs` SURBs carries, with symbols of `t` bytes.
    pub fn reply_capacity(surbs: usize, t: usize) -> usize {
        // one symbol beyond k, so decoding rarely fails for want of symbols
        let k = surbs.saturating_sub(1).max(surbs.min(1));
        (k * t).saturating_sub(OBJECT_OVERHEAD)
    }

    /// The most data a message carries (the object overhead with `reply_surbs` SURBs).
    pub fn object_overhead(reply_surbs: u8) -> usize {
        OBJECT_OVERHEAD + SURB_BYTES * (ACK_SURBS + usize::from(reply_surbs))
    }

    fn push_event(&mut self, e: MessengerEvent) {
        if self.events.len() >= self.config.max_events {
            self.counters.events_dropped += 1;
            return;
        }
        self.events.push_back(e);
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

    /// Builds the next packet of a message into `out` (resized to the packet size) and
    /// returns its first hop (a node ID or a direct ID), or `None` when nothing waits.
    /// Messages take turns, one packet each. [`Self::poll_packets`] builds several at once,
    /// faster.
    pub fn poll_packet(&mut self, now: Timestamp, out: &mut Vec<u8>) -> Option<[u8; 32]> {
        let mut hop = [[0u8; 32]; 1];
        let n = self.poll_packets(now, std::slice::from_mut(out), &mut hop);
        (n == 1).then_some(hop[0])
    }

    /// Builds up to `outs.len()` (at most [`engine::FORWARD_BATCH`]) next packets of messages
    /// in one batch, their X25519 ladders side by side; writes each first hop to `hops` and
    /// returns how many were built (`outs[..n]`, each resized to the packet size).
    pub fn poll_packets(
        &mut self,
        now: Timestamp,
        outs: &mut [Vec<u8>],
        hops: &mut [[u8; 32]],
    ) -> usize {
        let Some(paths) = self.paths.clone() else {
            return 0;
        };
        let size = paths.packet_size();
        let max = outs.len().min(hops.len()).min(engine::FORWARD_BATCH);
        if self.plaintexts.len() < max {
            self.plaintexts.resize_with(max, Vec::new);
        }
        // what each slot holds: a forward to build (destination, hops, message) or a packet
        // already written through a SURB
        let mut plans: [Option<([u8; 32], usize, MessageId)>; engine::FORWARD_BATCH] =
            [None; engine::FORWARD_BATCH];
        let mut filled = 0;
        while filled < max
            && let Some(id) = self.ready.pop_front()
        {
            outs[filled].resize(size, 0);
            let mut plaintext = std::mem::take(&mut self.plaintexts[filled]);
            let planned = self.next_packet_of(now, &id, &mut plaintext, &mut outs[filled]);
            self.plaintexts[filled] = plaintext;
            match planned {
                Ok(Some((next, more))) => {
                    if more {
                        self.ready.push_back(id);
                    }
                    match next {
                        Next::Forward {
                            destination,
                            hops: h,
                        } => {
                            plans[filled] = Some((destination, h, id));
                        }
                        Next::Built(hop) => {
                            plans[filled] = None;
                            hops[filled] = hop;
                        }
                    }
                    filled += 1;
                }
                Ok(None) => {}
                Err(e) => self.fail(&id, &e),
            }
        }
        // build the forwards together
        let mut items = [engine::ForwardItem {
            destination: [0; 32],
            hops: 1,
            identifier: [0; 16],
            plaintext: &[],
        }; engine::FORWARD_BATCH];
        let mut slots = [0usize; engine::FORWARD_BATCH];
        let mut m = 0;
        for (i, plan) in plans[..filled].iter().enumerate() {
            if let Some((destination, h, _)) = plan {
                let mut identifier = [0u8; 16];
                self.rng.fill_bytes(&mut identifier);
                items[m] = engine::ForwardItem {
                    destination: *destination,
                    hops: *h,
                    identifier,
                    plaintext: &self.plaintexts[i],
                };
                slots[m] = i;
                m += 1;
            }
        }
        let mut results = [Ok(()); engine::FORWARD_BATCH];
        let mut first = [[0u8; 32]; engine::FORWARD_BATCH];
        {
            let mut bufs: [&mut [u8]; engine::FORWARD_BATCH] =
                core::array::from_fn(|_| &mut [][..]);
            // the forward slots' buffers, in item order
            let mut rest: &mut [Vec<u8>] = &mut outs[..filled];
            let mut at = 0;
            for j in 0..m {
                let (_, tail) = rest.split_at_mut(slots[j] - at);
                let (one, tail) = tail.split_at_mut(1);
                bufs[j] = &mut one[0][..];
                rest = tail;
                at = slots[j] + 1;
            }
            paths.forward_batch(
                &items[..m],
                &mut self.rng,
                &mut bufs[..m],
                &mut first[..m],
                &mut results[..m],
            );
        }
        let mut failed = [false; engine::FORWARD_BATCH];
        for j in 0..m {
            let i = slots[j];
            match results[j] {
                Ok(()) => hops[i] = first[j],
                Err(e) => {
                    failed[i] = true;
                    if let Some((_, _, id)) = plans[i] {
                        self.fail(&id, &MessageError::Path(e));
                    }
                }
            }
        }
        // close the gaps the failures left
        let mut n = 0;
        for i in 0..filled {
            if !failed[i] {
                if n != i {
                    outs.swap(n, i);
                    hops[n] = hops[i];
                }
                n += 1;
            }
        }
        n
    }

    fn fail(&mut self, id: &MessageId, e: &MessageError) {
        self.finish(id);
        self.ready.retain(|r| r != id);
        self.push_event(MessengerEvent::Undelivered {
            id: *id,
            reason: e.to_string(),
        });
    }

    /// The next packet of message `id`: its plaintext written into `plaintext` for a
    /// forward the caller builds, or the whole packet written into `out` through a SURB;
    /// and whether more follow in this attempt.
    fn next_packet_of(
        &mut self,
        now: Timestamp,
        id: &MessageId,
        plaintext: &mut Vec<u8>,
        out: &mut [u8],
    ) -> Result<Option<(Next, bool)>, MessageError> {
        let paths = self.paths.clone().ok_or(MessageError::NoConsensus)?;
        let timeout_base = self.attempt_timeout(self.outgoing.get(id).map_or(3, |o| o.hops));
        let quiet = self.path_bound(self.outgoing.get(id).map_or(3, |o| o.hops));
        let Some(o) = self.outgoing.get_mut(id) else {
            return Ok(None);
        };
        if o.state != OutState::Sending {
            return Ok(None);
        }
        let next = if o.to_send > 0 {
            let t = o.encoder.symbol_size();
            wire::write_symbol_header(plaintext, &o.id, o.attempt, o.object_len, o.next_esi);
            let at = plaintext.len();
            plaintext.resize(at + t, 0);
            o.encoder.symbol(o.next_esi, &mut plaintext[at..]);
            o.next_esi = o.next_esi.saturating_add(1).min(coding::MAX_ESI);
            o.to_send -= 1;
            self.counters.symbols_sent += 1;
            match &mut o.via {
                Via::Forward { destination } => Next::Forward {
                    destination: *destination,
                    hops: o.hops,
                },
                Via::Surbs(surbs) => {
                    let Some(surb) = surbs.pop_front() else {
                        return Err(MessageError::ReplyUsed);
                    };
                    Next::Built(
                        surb.write_reply(plaintext, out)
                            .map_err(|_| MessageError::ReplyUsed)?
                            .0,
                    )
                }
            }
        } else if o.nack_surbs_due {
            o.nack_surbs_due = false;
            let Via::Forward { destination } = o.via else {
                return Ok(None);
            };
            let mut surbs = Vec::with_capacity(NACK_SURBS);
            let fits = (paths
                .max_plaintext()
                .saturating_sub(wire::NACK_SURBS_HEADER))
                / SURB_BYTES;
            let expires = now.saturating_add(timeout_base * 2);
            for _ in 0..NACK_SURBS.min(fits) {
                let (s, r) = paths
                    .surb(o.hops, &mut self.rng)
                    .map_err(MessageError::Path)?;
                self.surbs.insert(
                    r.identifier(),
                    SurbEntry {
                        recovery: r,
                        purpose: Purpose::Nack(o.id),
                        expires,
                    },
                );
                surbs.push(s);
            }
            let quiet_ms = quiet.as_millis().min(u128::from(u32::MAX)) as u32;
            wire::write_nack_surbs(plaintext, &o.id, o.attempt, o.object_len, quiet_ms, &surbs);
            Next::Forward {
                destination,
                hops: o.hops,
            }
        } else {
            return Ok(None);
        };
        let more = o.to_send > 0 || o.nack_surbs_due;
        if !more {
            match o.via {
                // a reply expects no answer: done once handed out
                Via::Surbs(_) => {
                    self.finish(id);
                }
                Via::Forward { .. } => {
                    o.state = OutState::Waiting {
                        deadline: now.saturating_add(timeout_base),
                    };
                }
            }
        }
        Ok(Some((next, more)))
    }

    fn finish(&mut self, id: &MessageId) {
        if let Some(o) = self.outgoing.remove(id) {
            self.outgoing_bytes = self.outgoing_bytes.saturating_sub(o.object_len as usize);
        }
    }

    /// Starts attempt `attempt + 1` of `id` with `n` fresh symbols.
    fn retry(&mut self, id: &MessageId, n: u32) {
        let Some(o) = self.outgoing.get_mut(id) else {
            return;
        };
        o.attempt += 1;
        o.to_send = n.max(1);
        o.nack_surbs_due = true;
        o.nacked = false;
        o.state = OutState::Sending;
        // fresh symbols: repair symbols past any sent before
        o.next_esi = o.next_esi.max(o.encoder.k());
        self.counters.retries += 1;
        self.ready.push_back(*id);
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
                let Some(entry) = self.surbs.remove(identifier) else {
                    self.counters.unknown_sealed += 1;
                    return;
                };
                let mut payload = payload.clone();
                let Ok(plain) = entry.recovery.recover(&mut payload) else {
                    self.counters.unknown_sealed += 1;
                    return;
                };
                let plain = plain.to_vec();
                match entry.purpose {
                    Purpose::Reply(original) => self.handle_plaintext(now, &plain, Some(original)),
                    Purpose::Ack(_) | Purpose::Nack(_) => self.handle_plaintext(now, &plain, None),
                }
            }
            Event::LoopCollapse { .. } => {}
        }
    }

    fn handle_plaintext(&mut self, now: Timestamp, bytes: &[u8], in_reply_to: Option<MessageId>) {
        let parsed = match wire::parse(bytes) {
            Ok(p) => p,
            Err(_) => {
                self.counters.malformed += 1;
                return;
            }
        };
        match parsed {
            Plain::Symbol {
                id,
                attempt: _,
                object_len,
                esi,
                symbol,
            } => self.on_symbol(now, id, object_len, esi, symbol, in_reply_to),
            Plain::NackSurbs {
                id,
                attempt,
                object_len,
                quiet_ms,
                surbs,
            } => self.on_nack_surbs(now, id, attempt, object_len, quiet_ms, surbs),
            Plain::Ack { id } => {
                if let Some(o) = self.outgoing.get(&id)
                    && matches!(o.via, Via::Forward { .. })
                {
                    let attempts = o.attempt;
                    self.counters.acks_received += 1;
                    self.finish(&id);
                    self.ready.retain(|r| *r != id);
                    self.push_event(MessengerEvent::Acknowledged { id, attempts });
                }
            }
            Plain::Nack {
                id,
                attempt,
                have: _,
                need,
            } => {
                self.counters.nacks_received += 1;
                let attempts = self.config.attempts;
                let target = self.config.target;
                let Some(o) = self.outgoing.get_mut(&id) else {
                    return;
                };
                // only a NACK of the attempt whose packets are all out counts
                if o.attempt != attempt || o.nacked || !matches!(o.state, OutState::Waiting { .. })
                {
                    return;
                }
                o.nacked = true;
                if o.attempt >= attempts {
                    self.finish(&id);
                    self.push_event(MessengerEvent::Undelivered {
                        id,
                        reason: format!("the recipient could not decode after {attempts} attempts"),
                    });
                    return;
                }
                let hops = o.hops;
                let k = o.encoder.k() as usize;
                let need = (need as usize).clamp(1, k);
                let n = coding::symbols_for(need, self.q(hops), target, 4 * k + 64);
                self.retry(&id, n as u32);
            }
        }
    }

    fn symbol_size_for(&self) -> Option<usize> {
        self.symbol_size()
    }

    fn max_object(&self) -> usize {
        self.config.max_message + Self::object_overhead(MAX_REPLY_SURBS)
    }

    fn on_symbol(
        &mut self,
        now: Timestamp,
        id: MessageId,
        object_len: u32,
        esi: u32,
        symbol: &[u8],
        in_reply_to: Option<MessageId>,
    ) {
        if self.completed.contains_key(&id) {
            self.counters.symbols_ignored += 1;
            return;
        }
        let Some(t) = self.symbol_size_for() else {
            return;
        };
        // the sender's packets have our packet size, so its symbols our symbol size
        if symbol.len() != t || object_len as usize > self.max_object() || object_len == 0 {
            self.counters.malformed += 1;
            return;
        }
        let symbol = &symbol[..t];
        if !self.open_incoming(now, id, object_len, t, in_reply_to) {
            return;
        }
        let Some(inc) = self.incoming.get_mut(&id) else {
            return;
        };
        if inc.object_len != object_len {
            self.counters.malformed += 1;
            return;
        }
        if !inc.esis.insert(esi) {
            self.counters.symbols_ignored += 1;
            return;
        }
        if self.incoming_bytes + t > self.config.max_incoming_bytes {
            inc.esis.remove(&esi);
            self.counters.incoming_full += 1;
            return;
        }
        inc.bytes += t;
        self.incoming_bytes += t;
        inc.last = now;
        self.counters.symbols_received += 1;
        if inc.decoder.add(esi, symbol).is_some() {
            self.on_decoded(now, id);
        }
    }

    /// Makes room for a message being received, unless it is there already; `false` when
    /// the bounds are reached or its length is not one we can decode.
    fn open_incoming(
        &mut self,
        now: Timestamp,
        id: MessageId,
        object_len: u32,
        t: usize,
        in_reply_to: Option<MessageId>,
    ) -> bool {
        if self.incoming.contains_key(&id) {
            return true;
        }
        if self.incoming.len() >= self.config.max_incoming
            || self.incoming_bytes + t > self.config.max_incoming_bytes
        {
            self.counters.incoming_full += 1;
            return false;
        }
        let Ok(decoder) = ObjectDecoder::new(object_len as usize, t) else {
            self.counters.malformed += 1;
            return false;
        };
        let quiet = self.path_bound(self.paths.as_ref().map_or(3, Paths::default_hops));
        self.incoming.insert(
            id,
            Incoming {
                decoder,
                object_len,
                k: coding::source_symbols(object_len as usize, t) as u32,
                esis: HashSet::new(),
                bytes: 0,
                last: now,
                quiet,
                nack_surbs: Vec::new(),
                nack_attempt: 0,
                nacked_attempt: 0,
                in_reply_to,
            },
        );
        true
    }

    fn on_nack_surbs(
        &mut self,
        now: Timestamp,
        id: MessageId,
        attempt: u8,
        object_len: u32,
        quiet_ms: u32,
        surbs: Vec<Surb>,
    ) {
        if let Some(done) = self.completed.get_mut(&id) {
            // the sender retries: our ACKs were lost; answer once per attempt, through
            // every SURB it sent
            if done.reacked_attempt < attempt {
                done.reacked_attempt = attempt;
                for surb in surbs {
                    let mut ack = Vec::new();
                    wire::write_ack(&mut ack, &id);
                    self.control.push_back((surb, ack));
                    self.counters.acks_sent += 1;
                }
            }
            return;
        }
        // the SURBs may come before any symbol (each packet takes its own delays), or alone
        // when every symbol was lost: either way the message exists and can be NACKed
        let Some(t) = self.symbol_size() else {
            return;
        };
        if object_len == 0
            || object_len as usize > self.max_object()
            || !self.open_incoming(now, id, object_len, t, None)
        {
            return;
        }
        let Some(inc) = self.incoming.get_mut(&id) else {
            return;
        };
        if inc.object_len != object_len {
            self.counters.malformed += 1;
            return;
        }
        if attempt >= inc.nack_attempt {
            inc.nack_attempt = attempt;
            inc.nack_surbs = surbs;
            inc.quiet = Duration::from_millis(u64::from(quiet_ms)).min(Duration::from_secs(600));
            inc.last = inc.last.max(now);
        }
    }

    fn on_decoded(&mut self, now: Timestamp, id: MessageId) {
        let Some(mut inc) = self.incoming.remove(&id) else {
            return;
        };
        self.incoming_bytes = self.incoming_bytes.saturating_sub(inc.bytes);
        self.remember(now, id, inc.nack_attempt);
        let Some(object) = inc.decoder.take() else {
            return;
        };
        let Ok(o) = wire::parse_object(&object) else {
            self.counters.bad_objects += 1;
            return;
        };
        if identity::digest(&id, o.port, o.data) != o.digest
            || o.data.len() > self.config.max_message
        {
            self.counters.bad_objects += 1;
            return;
        }
        let sender = match o.sender {
            None => None,
            Some((key, mac)) => {
                let key = IdentityKey(key);
                if identity::verify(&self.identity, &key, &id, &o.digest, &mac) {
                    Some(key)
                } else {
                    self.counters.bad_identity += 1;
                    return;
                }
            }
        };
        for ack in o.ack_surbs.into_iter().take(ACK_SURBS) {
            let mut plain = Vec::new();
            wire::write_ack(&mut plain, &id);
            self.control.push_back((ack, plain));
            self.counters.acks_sent += 1;
        }
        let reply = (!o.reply_surbs.is_empty()).then(|| ReplyHandle {
            in_reply_to: id,
            surbs: o.reply_surbs,
        });
        self.counters.messages_received += 1;
        self.push_event(MessengerEvent::Received(Received {
            id,
            port: o.port,
            data: o.data.to_vec(),
            sender,
            reply,
            in_reply_to: inc.in_reply_to,
        }));
    }

    fn remember(&mut self, now: Timestamp, id: MessageId, attempt: u8) {
        let expires = now.saturating_add(self.config.remember_for);
        self.completed.insert(
            id,
            Completed {
                reacked_attempt: attempt,
            },
        );
        self.completed_order.push_back((id, expires));
        while self.completed_order.len() > self.config.remembered {
            if let Some((old, _)) = self.completed_order.pop_front() {
                self.completed.remove(&old);
            }
        }
    }

    /// Handles the timers due at `now`: attempts that timed out, NACKs due, expiries.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        // senders: timeouts
        let due: Vec<MessageId> = self
            .outgoing
            .values()
            .filter(|o| matches!(o.state, OutState::Waiting { deadline } if deadline <= now))
            .map(|o| o.id)
            .collect();
        for id in due {
            let Some(o) = self.outgoing.get(&id) else {
                continue;
            };
            if o.attempt >= self.config.attempts {
                self.finish(&id);
                self.counters.offline += 1;
                self.push_event(MessengerEvent::Offline { id });
            } else {
                let n = o.n_first;
                self.retry(&id, n);
            }
        }
        // receivers: NACKs after the quiet time, expiry
        let mut nacks = Vec::new();
        let mut expired = Vec::new();
        for (id, inc) in &mut self.incoming {
            if now >= inc.last.saturating_add(self.config.incoming_expiry) {
                expired.push(*id);
                continue;
            }
            if inc.nack_attempt > inc.nacked_attempt
                && now >= inc.last.saturating_add(inc.quiet)
                && !inc.nack_surbs.is_empty()
            {
                // through every SURB of the attempt: one NACK is lost as often as a packet
                inc.nacked_attempt = inc.nack_attempt;
                let have = inc.esis.len() as u32;
                let need = inc.k.saturating_sub(have).max(1);
                for surb in inc.nack_surbs.drain(..) {
                    let mut plain = Vec::new();
                    wire::write_nack(&mut plain, id, inc.nack_attempt, have, need);
                    nacks.push((surb, plain));
                }
            }
        }
        for n in nacks {
            self.counters.nacks_sent += 1;
            self.control.push_back(n);
        }
        for id in expired {
            if let Some(inc) = self.incoming.remove(&id) {
                self.incoming_bytes = self.incoming_bytes.saturating_sub(inc.bytes);
                self.counters.incoming_expired += 1;
            }
        }
        if now >= self.next_sweep {
            self.next_sweep = now.saturating_add(Duration::from_secs(1));
            self.surbs.retain(|_, e| e.expires > now);
            while let Some((id, expires)) = self.completed_order.front().copied() {
                if expires > now {
                    break;
                }
                self.completed_order.pop_front();
                self.completed.remove(&id);
            }
        }
    }

    /// When to call [`Self::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let send = self.outgoing.values().filter_map(|o| match o.state {
            OutState::Waiting { deadline } => Some(deadline),
            OutState::Sending => None,
        });
        let recv = self.incoming.values().map(|inc| {
            if inc.nack_attempt > inc.nacked_attempt && !inc.nack_surbs.is_empty() {
                inc.last.saturating_add(inc.quiet)
            } else {
                inc.last.saturating_add(self.config.incoming_expiry)
            }
        });
        let sweep =
            (!self.surbs.is_empty() || !self.completed.is_empty()).then_some(self.next_sweep);
        send.chain(recv).chain(sweep).min()
    }
}
