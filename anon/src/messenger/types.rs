//! What the messenger's API speaks: its configuration, the options of one send, its errors,
//! its events and its counters.

use std::time::Duration;

use crypto_simd::sphinx::Surb;
use engine::SendError;
use pki_client::IdentityKey;

use super::{DEFAULT_MAX_MESSAGE, MAX_REPLY_SURBS};
use crate::wire::MessageId;

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
    /// ACKs and NACKs waiting to be built, at most (each a SURB and a few bytes).
    pub max_control: usize,
    /// SURBs of ours awaiting an answer (ACK, NACK and reply SURBs), at most.
    pub max_surbs: usize,
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
            max_control: 4096,
            max_surbs: 65536,
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
    /// Whether it was collected from storage providers (sent while this node was offline)
    /// rather than received directly.
    pub stored: bool,
}

/// SURBs to reply to one message with. Each SURB carries one packet; a reply of k source
/// symbols needs at least k of them.
#[derive(Clone, Debug)]
pub struct ReplyHandle {
    /// The message this answers.
    pub in_reply_to: MessageId,
    pub(super) surbs: Vec<Surb>,
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
    /// No word from the recipient after every attempt: it seems offline (and the message
    /// could not be stored for it).
    Offline {
        /// The message.
        id: MessageId,
    },
    /// No word from the recipient after every attempt, so the message was parked at storage
    /// providers for it (section 4.6.1); [`MessengerEvent::Delivered`] follows once it
    /// collected it.
    Stored {
        /// The message.
        id: MessageId,
    },
    /// The recipient collected a stored message and confirmed it.
    Delivered {
        /// The message.
        id: MessageId,
    },
    /// The recipient answered but could not decode after every attempt, or the message
    /// could no longer be sent.
    Undelivered {
        /// The message.
        id: MessageId,
        /// Why.
        reason: Undelivered,
    },
    /// The node's loops stopped returning (`raised`: a possible (n-1) attack, section
    /// 5.0.2; the node withdraws and stops forwarding) or came back (`!raised`). Sending
    /// and receiving go on throughout.
    Alert {
        /// Whether high-alert mode begins (or ends).
        raised: bool,
    },
}

/// Why a message was not delivered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Undelivered {
    /// The recipient answered every attempt with a NACK: it could not decode.
    #[error("the recipient could not decode after {attempts} attempts")]
    NotDecoded {
        /// The attempts made.
        attempts: u8,
    },
    /// The message could no longer be sent (its packets could not be built).
    #[error("could not be sent: {0}")]
    Failed(MessageError),
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
    /// ACKs and NACKs dropped because [`MessengerConfig::max_control`] were waiting.
    pub control_dropped: u64,
    /// SURBs of ours forgotten early (the soonest to expire) because
    /// [`MessengerConfig::max_surbs`] were held: their answers will be `unknown_sealed`.
    pub surbs_evicted: u64,
}
