//! Offline delivery (paper section 4.6.1): when a message to a contact gets no ACK after
//! every attempt, its symbols are parked at storage providers, one RaptorQ symbol per BACAP
//! box of the stream from this node to that contact; the contact, back online, collects
//! them, decodes, and sends a receipt.
//!
//! - **Streams.** Per ordered pair of contacts (writer W, reader R), one BACAP stream whose
//!   capability both derive from their identities: `HKDF-SHA-256(salt "mixed-offline-v1
//!   stream", X25519(W, R), W || R)` gives the root seed, start index and chain key. Only
//!   the two of them can find, read or write its boxes; a provider sees unlinkable box IDs.
//! - **Storing** (the sender): after the messenger's last attempt ([`MessengerEvent::Offline`],
//!   or [`Undelivered::NotDecoded`](crate::messenger::Undelivered) when the recipient NACKed
//!   every attempt: it is online but the symbols did not reach it) the message becomes a stored object (port, length, data) cut into symbols of
//!   [`STORED_SYMBOL`] bytes. Symbols are PUT box after box, one request every
//!   `1 / store_rate` seconds at most: slowly and regularly, inside the node's own-data
//!   budget, never a burst. A box goes to the provider that rendezvous hashing of its ID
//!   picks among the providers of the consensus (so boxes spread over all of them, at least
//!   two when there are two), the ones that stopped answering last. The stream advances only
//!   over acknowledged boxes; a box that stays unanswered after `put_tries` is abandoned
//!   (the reader skips it). Once as many symbols are acknowledged as the binomial model of
//!   section 4.5 asks for k symbols at the providers' measured answer rate q, the
//!   application hears [`MessengerEvent::Stored`]; once the recipient's receipt comes,
//!   [`MessengerEvent::Delivered`].
//! - **Collecting** (the recipient): the next boxes of each contact's stream are asked for
//!   at random times, `fetch_rate` a second on average (exponential gaps: slowly and
//!   sporadically); a box is asked of the providers in the writer's order until one has it;
//!   a stream found empty rests for `idle_poll`. Decoded messages go to the application
//!   with `stored` set, once each (the messenger's memory of delivered IDs covers both
//!   paths), and a receipt goes to the sender on [`RECEIPT_PORT`]; a receipt that gets no
//!   ACK after every attempt is not stored again (the sender is offline too).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use hkdf::Hkdf;
use pki_client::{IdentityKey, IdentitySecret};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use scheduler::Timestamp;
use sha2::{Digest, Sha256};
use storage::bacap::{PLAINTEXT_MAX, Position, StreamReader, StreamWriter, WriteCap};
use storage::protocol::{self, Response, SERVICE_PORT, STORAGE_ROLE, Status};

use crate::coding::{self, ObjectDecoder, ObjectEncoder};
use crate::messenger::{MessageError, Messenger, MessengerEvent, Received, SendOptions};
use crate::wire::MessageId;

mod collect;
mod providers;
mod remembered;
mod store;

use remembered::Remembered;

use providers::providers;

/// The port receipts of stored messages go to.
pub const RECEIPT_PORT: u16 = 0xfff1;
/// The version byte of stored symbols and receipts.
pub const STORED_VERSION: u8 = 1;
/// Bytes before the symbol in a stored block's plaintext: version, message ID, object
/// length, ESI.
pub const STORED_HEADER: usize = 1 + 16 + 4 + 4;
/// The symbol size of stored messages: what a block's plaintext holds past the header,
/// aligned (800 bytes).
pub const STORED_SYMBOL: usize =
    (PLAINTEXT_MAX - STORED_HEADER) / coding::ALIGNMENT * coding::ALIGNMENT;
/// Bytes of a stored object besides the data: version, port, length.
const STORED_OBJECT_HEADER: usize = 1 + 2 + 4;
/// Answer-rate samples before a provider's rate counts (until then the prior holds).
const MIN_SAMPLES: u32 = 4;
/// A provider whose answer rate fell below this share of the best provider's is asked
/// last.
const ALIVE: f64 = 0.5;

/// How the offline layer runs.
#[derive(Clone, Debug)]
pub struct OfflineConfig {
    /// PUTs a second at most.
    pub store_rate: f64,
    /// GETs a second on average (exponential gaps).
    pub fetch_rate: f64,
    /// Reply SURBs a request carries (a response is one symbol; the rest are redundancy).
    pub request_surbs: u8,
    /// A request unanswered this long is retried (a PUT) or asked again (a GET).
    pub request_timeout: Duration,
    /// Attempts at a box before the writer abandons it.
    pub put_tries: u8,
    /// Boxes of one stream in flight at once.
    pub window: usize,
    /// A stream found empty is asked again after this.
    pub idle_poll: Duration,
    /// The providers' answer rate assumed before they answered [`MIN_SAMPLES`] requests.
    pub reliability_prior: f64,
    /// The delivery probability the stored symbols aim at.
    pub target: f64,
    /// Messages being stored or awaiting a receipt, at most.
    pub max_uploads: usize,
    /// Bytes of messages kept for the fallback, at most.
    pub max_tracked_bytes: usize,
    /// Stored messages being decoded per contact, at most.
    pub max_decoding: usize,
}

impl Default for OfflineConfig {
    /// One PUT a second, a GET every two seconds on average, three reply SURBs, a minute's
    /// timeout, three tries, eight boxes in flight, a minute's rest for an empty stream.
    fn default() -> Self {
        OfflineConfig {
            store_rate: 1.0,
            fetch_rate: 0.5,
            request_surbs: 3,
            request_timeout: Duration::from_secs(60),
            put_tries: 3,
            window: 8,
            idle_poll: Duration::from_secs(60),
            reliability_prior: 0.9,
            target: 0.999,
            max_uploads: 1024,
            max_tracked_bytes: 64 << 20,
            max_decoding: 256,
        }
    }
}

/// What the offline layer counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OfflineCounters {
    /// Messages whose symbols went to storage providers.
    pub uploads: u64,
    /// Messages stored (as many symbols acknowledged as the model asks).
    pub stored: u64,
    /// Stored messages the recipient confirmed.
    pub delivered: u64,
    /// Messages that could not be stored (no providers, too big, queue full): the
    /// application heard `Offline`.
    pub not_stored: u64,
    /// PUTs sent.
    pub puts: u64,
    /// GETs sent.
    pub gets: u64,
    /// Requests unanswered within the timeout.
    pub timeouts: u64,
    /// Boxes the writer gave up on.
    pub abandoned: u64,
    /// Boxes the reader skipped as abandoned.
    pub skipped: u64,
    /// Stored messages recovered from providers.
    pub recovered: u64,
    /// Of those, already delivered (directly or before): not delivered again.
    pub duplicates: u64,
    /// Blocks or responses that did not verify or parse.
    pub malformed: u64,
    /// Receipts sent.
    pub receipts_sent: u64,
}

fn stream_cap(
    me: &IdentitySecret,
    other: &IdentityKey,
    writer: &IdentityKey,
    reader: &IdentityKey,
) -> Option<WriteCap> {
    let dh = crypto_simd::x25519::x25519(&me.x25519_secret(), &other.x25519_public()?);
    if dh == [0; 32] {
        return None;
    }
    let hk = Hkdf::<Sha256>::new(Some(b"mixed-offline-v1 stream"), &dh);
    let mut okm = [0u8; 72];
    hk.expand_multi_info(&[&writer.0, &reader.0], &mut okm)
        .ok()?;
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&okm[..32]);
    let mut index = [0u8; 8];
    index.copy_from_slice(&okm[32..40]);
    let mut chain = [0u8; 32];
    chain.copy_from_slice(&okm[40..]);
    // below 2^62, as Position::random: the stream has room
    Some(WriteCap::new(
        seed,
        Position::new(u64::from_be_bytes(index) >> 2, chain),
    ))
}

#[derive(Debug)]
struct Contact {
    identity: IdentityKey,
    writer: StreamWriter,
    put: BTreeMap<u64, BoxPut>,
    reader: StreamReader,
    get: BTreeMap<u64, BoxGet>,
    last_found: Option<u64>,
    idle_until: Timestamp,
    decoding: HashMap<MessageId, Decoding>,
    /// The frontiers last handed out by [`Offline::take_changes`] (writer, reader).
    saved: Option<([u8; 40], [u8; 40])>,
}

impl Contact {
    fn new(identity: IdentityKey, writer: StreamWriter, reader: StreamReader) -> Contact {
        Contact {
            identity,
            writer,
            put: BTreeMap::new(),
            reader,
            get: BTreeMap::new(),
            last_found: None,
            idle_until: Timestamp::ZERO,
            decoding: HashMap::new(),
            saved: None,
        }
    }

    /// Where a restarted reader starts: the first box not read, or the first box of a
    /// message still being decoded (its symbols live in memory only), whichever is first.
    fn durable_reader(&self) -> [u8; 40] {
        let frontier = self.reader.frontier();
        self.decoding
            .values()
            .map(|d| &d.first)
            .filter(|p| p.index() < frontier.index())
            .min_by_key(|p| p.index())
            .unwrap_or(frontier)
            .to_bytes()
    }

    fn state(&self) -> ContactState {
        ContactState {
            identity: self.identity,
            writer: self.writer.frontier().to_bytes(),
            reader: self.durable_reader(),
        }
    }
}

/// Contacts a node keeps at most.
pub const MAX_CONTACTS: usize = 4096;

/// Why a contact was not added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContactError {
    /// The key is no Ed25519 identity key (no point of the curve): check what was pasted.
    #[error("not an Ed25519 identity key")]
    NotAKey,
    /// [`MAX_CONTACTS`] contacts are known already.
    #[error("too many contacts (at most {MAX_CONTACTS})")]
    TooMany,
}

/// A contact's durable state: what a node keeps on disk so that a restart neither loses
/// its contacts nor walks their streams from the start again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactState {
    /// The contact's identity key.
    pub identity: IdentityKey,
    /// The stream to the contact: its first box not acknowledged (index, chain key; see
    /// [`Position::to_bytes`]). Secret: it writes the stream.
    pub writer: [u8; 40],
    /// The stream from the contact: where to read again after a restart (the first box
    /// not read, or the first box of a message still being decoded). Secret: it reads
    /// the stream.
    pub reader: [u8; 40],
}

/// What changed in the offline layer's durable state since the last
/// [`Offline::take_changes`]: to be written (durably) before the events that follow reach
/// the application, so a restart delivers no stored message twice.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Contacts added, or whose frontiers moved.
    pub contacts: Vec<ContactState>,
    /// Stored messages delivered to the application (their IDs).
    pub delivered: Vec<MessageId>,
}

impl Changes {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.contacts.is_empty() && self.delivered.is_empty()
    }
}

#[derive(Debug)]
struct BoxPut {
    request: Vec<u8>,
    upload: MessageId,
    tries: u8,
    /// The providers tried, in order.
    tried: Vec<[u8; 32]>,
    waiting: bool,
}

#[derive(Debug, Default)]
struct BoxGet {
    /// Providers that answered Empty in this round.
    empty_at: Vec<[u8; 32]>,
    waiting: bool,
    /// Rounds in which every provider answered Empty.
    empty_rounds: u8,
}

#[derive(Debug)]
struct Decoding {
    decoder: ObjectDecoder,
    esis: HashSet<u32>,
    /// The position of the first box read for this message.
    first: Position,
}

#[derive(Debug)]
struct Upload {
    id: MessageId,
    contact: [u8; 32],
    encoder: ObjectEncoder,
    object_len: u32,
    need: usize,
    acked: usize,
    next_esi: u32,
}

#[derive(Debug, Clone, Copy)]
enum Pending {
    Put {
        contact: [u8; 32],
        index: u64,
        sp: [u8; 32],
    },
    Get {
        contact: [u8; 32],
        index: u64,
        sp: [u8; 32],
    },
}

#[derive(Debug)]
struct Tracked {
    to: [u8; 32],
    port: u16,
    data: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct SpStats {
    samples: u32,
    rate: f64,
}

/// The offline layer of one node (see the module docs): sans-IO, driven with the node's
/// messenger.
#[derive(Debug)]
pub struct Offline {
    identity: IdentitySecret,
    config: OfflineConfig,
    rng: ChaCha20Rng,
    contacts: BTreeMap<[u8; 32], Contact>,
    tracked: HashMap<MessageId, Tracked>,
    tracked_bytes: usize,
    uploads: VecDeque<Upload>,
    /// Stored messages awaiting their receipt: message -> contact.
    awaiting: HashMap<MessageId, [u8; 32]>,
    /// Requests awaiting their response, and since when the provider has them (its
    /// messenger acknowledged the request): the response timeout runs from then.
    requests: HashMap<MessageId, (Pending, Option<Timestamp>)>,
    receipts: HashSet<MessageId>,
    /// Requests given up on (timed out): the messenger's word on them comes late and is
    /// not the application's.
    retired: Remembered,
    receipted: Remembered,
    /// Stored messages delivered to the application, the last [`DELIVERED_REMEMBERED`]
    /// (kept on disk by the node, so a restart does not deliver them again).
    delivered: Remembered,
    /// Contacts whose durable state may have changed, and deliveries not yet handed out by
    /// [`Offline::take_changes`].
    dirty: BTreeSet<[u8; 32]>,
    new_delivered: VecDeque<MessageId>,
    sp: HashMap<[u8; 32], SpStats>,
    events: VecDeque<MessengerEvent>,
    next_put: Timestamp,
    next_get: Timestamp,
    counters: OfflineCounters,
}

impl Offline {
    /// The layer of the node with `identity`, everything random from `seed`.
    pub fn new(identity: IdentitySecret, config: OfflineConfig, seed: [u8; 32]) -> Offline {
        Offline {
            identity,
            config,
            rng: ChaCha20Rng::from_seed(seed),
            contacts: BTreeMap::new(),
            tracked: HashMap::new(),
            tracked_bytes: 0,
            uploads: VecDeque::new(),
            awaiting: HashMap::new(),
            requests: HashMap::new(),
            receipts: HashSet::new(),
            retired: Remembered::new(RETIRED_REMEMBERED),
            receipted: Remembered::new(collect::RECEIPTS_REMEMBERED),
            delivered: Remembered::new(DELIVERED_REMEMBERED),
            dirty: BTreeSet::new(),
            new_delivered: VecDeque::new(),
            sp: HashMap::new(),
            events: VecDeque::new(),
            next_put: Timestamp::ZERO,
            next_get: Timestamp::ZERO,
            counters: OfflineCounters::default(),
        }
    }

    /// What it counted.
    pub fn counters(&self) -> &OfflineCounters {
        &self.counters
    }

    /// Symbols of stored messages held in memory, read but not yet decoded.
    pub fn symbols_decoding(&self) -> usize {
        self.contacts
            .values()
            .flat_map(|c| c.decoding.values())
            .map(|d| d.esis.len())
            .sum()
    }

    /// The configuration.
    pub fn config(&self) -> &OfflineConfig {
        &self.config
    }

    /// Adds a contact: messages to it fall back to storage, and its stream to this node is
    /// collected. A contact already known keeps where its streams stand.
    pub fn add_contact(&mut self, identity: IdentityKey) -> Result<(), ContactError> {
        if self.contacts.contains_key(&identity.node_id()) {
            return Ok(());
        }
        if self.contacts.len() >= MAX_CONTACTS {
            return Err(ContactError::TooMany);
        }
        let Some((out, inb)) = self.caps(&identity) else {
            return Err(ContactError::NotAKey);
        };
        let id = identity.node_id();
        let c = Contact::new(
            identity,
            StreamWriter::new(out),
            StreamReader::new(inb.read_cap()),
        );
        self.contacts.insert(id, c);
        self.dirty.insert(id);
        Ok(())
    }

    /// The capabilities of the streams to and from a contact.
    fn caps(&self, identity: &IdentityKey) -> Option<(WriteCap, WriteCap)> {
        let me = self.identity.public();
        Some((
            stream_cap(&self.identity, identity, &me, identity)?,
            stream_cap(&self.identity, identity, identity, &me)?,
        ))
    }

    /// Restores a contact from its durable state (what [`Self::take_changes`] handed out
    /// before a restart): its streams resume where they stood.
    pub fn restore_contact(&mut self, state: &ContactState) -> Result<(), ContactError> {
        if self.contacts.len() >= MAX_CONTACTS
            && !self.contacts.contains_key(&state.identity.node_id())
        {
            return Err(ContactError::TooMany);
        }
        let Some((out, inb)) = self.caps(&state.identity) else {
            return Err(ContactError::NotAKey);
        };
        let mut c = Contact::new(
            state.identity,
            StreamWriter::resume(out, Position::from_bytes(&state.writer)),
            StreamReader::resume(inb.read_cap(), Position::from_bytes(&state.reader)),
        );
        c.saved = Some((state.writer, state.reader));
        self.contacts.insert(state.identity.node_id(), c);
        Ok(())
    }

    /// Restores the IDs of stored messages delivered before a restart (oldest first): they
    /// are not delivered again when their boxes are read again.
    pub fn restore_delivered(&mut self, ids: impl IntoIterator<Item = MessageId>) {
        for id in ids {
            self.delivered.insert(id);
        }
    }

    /// A stored message delivered to the application: remembered, and handed out by
    /// [`Self::take_changes`] (the last [`DELIVERED_REMEMBERED`] when nobody takes them).
    fn delivered_now(&mut self, id: MessageId) {
        self.delivered.insert(id);
        self.new_delivered.push_back(id);
        if self.new_delivered.len() > DELIVERED_REMEMBERED {
            self.new_delivered.pop_front();
        }
    }

    /// What changed in the durable state since the last call (see [`Changes`]). A node
    /// writes it before it hands the events polled since to applications.
    pub fn take_changes(&mut self) -> Changes {
        let mut out = Changes {
            contacts: Vec::new(),
            delivered: std::mem::take(&mut self.new_delivered).into(),
        };
        for id in std::mem::take(&mut self.dirty) {
            let Some(c) = self.contacts.get_mut(&id) else {
                continue;
            };
            let state = c.state();
            if c.saved != Some((state.writer, state.reader)) {
                c.saved = Some((state.writer, state.reader));
                out.contacts.push(state);
            }
        }
        out
    }

    /// The contacts' node IDs.
    pub fn contacts(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.contacts.keys()
    }

    /// Sends a message through `messenger`; a message to a contact is kept, so that it can
    /// be stored if the contact seems offline. A message to a contact that is not in the
    /// consensus (passive) is stored at once: the application hears `Stored`, then
    /// `Delivered`, as for a contact that seemed offline.
    pub fn send(
        &mut self,
        now: Timestamp,
        messenger: &mut Messenger,
        to: [u8; 32],
        data: &[u8],
        options: SendOptions,
    ) -> Result<MessageId, MessageError> {
        let room = self.tracked_bytes + data.len() <= self.config.max_tracked_bytes
            && self.tracked.len() + self.awaiting.len() < self.config.max_uploads;
        let contact = self.contacts.contains_key(&to);
        let id = match messenger.send(now, to, data, options) {
            Ok(id) => id,
            // a contact that is not in the consensus (a passive node, paper section 4.3,
            // or one that left): it can only collect, so the message is stored at once
            Err(MessageError::UnknownDestination)
                if contact
                    && room
                    && !data.is_empty()
                    && data.len() <= messenger.config().max_message =>
            {
                let mut id = [0u8; 16];
                self.rng.fill_bytes(&mut id);
                self.tracked_bytes += data.len();
                self.tracked.insert(
                    id,
                    Tracked {
                        to,
                        port: options.port,
                        data: data.to_vec(),
                    },
                );
                self.start_upload(now, messenger, id);
                return Ok(id);
            }
            Err(e) => return Err(e),
        };
        if contact && room {
            self.tracked_bytes += data.len();
            self.tracked.insert(
                id,
                Tracked {
                    to,
                    port: options.port,
                    data: data.to_vec(),
                },
            );
        }
        Ok(id)
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<MessengerEvent> {
        self.events.pop_front()
    }

    /// When [`Self::poll`] is next due.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let deadline = self
            .requests
            .values()
            .filter_map(|(_, t)| t.map(|t| t.saturating_add(self.config.request_timeout)))
            .min();
        let put = (!self.uploads.is_empty()).then_some(self.next_put);
        let get = (!self.contacts.is_empty()).then_some(self.next_get);
        [deadline, put, get].into_iter().flatten().min()
    }

    fn untrack(&mut self, id: &MessageId) -> Option<Tracked> {
        let t = self.tracked.remove(id)?;
        self.tracked_bytes -= t.data.len();
        Some(t)
    }

    /// Takes an event of the messenger: what concerns the offline layer (responses of
    /// providers, receipts, the fate of its own requests, `Offline` for a message it can
    /// store) stays here; the rest comes back for the application.
    pub fn filter(
        &mut self,
        now: Timestamp,
        messenger: &mut Messenger,
        e: MessengerEvent,
    ) -> Option<MessengerEvent> {
        match e {
            // responses to this layer's requests (an application's own requests to a
            // provider get theirs)
            MessengerEvent::Received(r)
                if r.port == SERVICE_PORT
                    && r.in_reply_to.is_some_and(|id| {
                        self.requests.contains_key(&id) || self.retired.contains(&id)
                    }) =>
            {
                self.on_response(now, messenger, &r);
                None
            }
            MessengerEvent::Received(r) if r.port == RECEIPT_PORT => {
                self.on_receipt(&r);
                None
            }
            MessengerEvent::Acknowledged { id, .. }
            | MessengerEvent::Offline { id }
            | MessengerEvent::Undelivered { id, .. }
                if self.receipts.remove(&id) || self.retired.contains(&id) =>
            {
                None
            }
            MessengerEvent::Acknowledged { id, .. } if self.requests.contains_key(&id) => {
                // the provider has the request: its response is due within the timeout
                // (which runs from now, not from the send: requests may wait their turn in
                // the own-data queue for a while)
                if let Some((_, t)) = self.requests.get_mut(&id) {
                    t.get_or_insert(now);
                }
                None
            }
            MessengerEvent::Offline { id } | MessengerEvent::Undelivered { id, .. }
                if self.requests.contains_key(&id) =>
            {
                // the provider is unreachable (or the request could not go): retry at once
                if let Some((p, _)) = self.requests.remove(&id) {
                    self.retire(id);
                    self.on_timeout(p);
                }
                None
            }
            // no ACK after every attempt, or a NACK to every attempt (the recipient got too
            // few symbols each time: a lossy path, or nodes that left while the packets
            // were on their way): the providers hold the message until it is collected
            MessengerEvent::Offline { id }
            | MessengerEvent::Undelivered {
                id,
                reason: crate::messenger::Undelivered::NotDecoded { .. },
            } if self.tracked.contains_key(&id) => {
                self.start_upload(now, messenger, id);
                None
            }
            e @ (MessengerEvent::Acknowledged { id, .. }
            | MessengerEvent::Undelivered { id, .. }) => {
                self.untrack(&id);
                Some(e)
            }
            e => Some(e),
        }
    }

    /// Sends what is due: a PUT (at most `store_rate` a second), a GET (at random times,
    /// `fetch_rate` a second on average), and retries of requests past their timeout.
    pub fn poll(&mut self, now: Timestamp, messenger: &mut Messenger) {
        let timeout = self.config.request_timeout;
        let late: Vec<MessageId> = self
            .requests
            .iter()
            .filter(|(_, (_, t))| t.is_some_and(|t| t.saturating_add(timeout) <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some((p, _)) = self.requests.remove(&id) {
                self.counters.timeouts += 1;
                self.retire(id);
                self.on_timeout(p);
            }
        }
        if messenger.paths().is_none() {
            return;
        }
        if !self.uploads.is_empty() && now >= self.next_put {
            // one PUT a period at most, whether one could go or not (the window may be
            // full): the next try is a period later, never a spin
            self.send_put(now, messenger);
            self.next_put = now.saturating_add(Duration::from_secs_f64(
                1.0 / self.config.store_rate.max(1e-3),
            ));
        }
        if !self.contacts.is_empty() && now >= self.next_get {
            self.send_get(now, messenger);
            let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let gap = -(1.0 - u).ln() / self.config.fetch_rate.max(1e-3);
            self.next_get = now.saturating_add(Duration::from_secs_f64(gap.min(3600.0)));
        }
    }

    fn retire(&mut self, id: MessageId) {
        self.retired.insert(id);
    }

    fn on_timeout(&mut self, p: Pending) {
        let (Pending::Put { contact, .. } | Pending::Get { contact, .. }) = p;
        self.dirty.insert(contact);
        match p {
            Pending::Put { contact, index, sp } => {
                self.sample(sp, false);
                let tries = self.config.put_tries;
                let Some(c) = self.contacts.get_mut(&contact) else {
                    return;
                };
                let Some(b) = c.put.get_mut(&index) else {
                    return;
                };
                b.waiting = false;
                if b.tries >= tries {
                    // abandoned: the reader skips it; its symbol is replaced by a new one
                    c.put.remove(&index);
                    let _ = c.writer.acknowledged(index);
                    self.counters.abandoned += 1;
                }
            }
            Pending::Get { contact, index, sp } => {
                self.sample(sp, false);
                if let Some(b) = self
                    .contacts
                    .get_mut(&contact)
                    .and_then(|c| c.get.get_mut(&index))
                {
                    // asked again: no answer is not "empty" (this node may have been cut
                    // off, or its address changed); a provider that keeps not answering
                    // falls behind the others in the order and then out of the round
                    b.waiting = false;
                }
            }
        }
    }

    fn request_options(&self) -> SendOptions {
        SendOptions {
            reply_surbs: self.config.request_surbs,
            port: SERVICE_PORT,
            ..SendOptions::default()
        }
    }

    fn on_response(&mut self, now: Timestamp, messenger: &mut Messenger, r: &Received) {
        let Some(id) = r.in_reply_to else { return };
        let Some((pending, _)) = self.requests.remove(&id) else {
            return;
        };
        let (Pending::Put { contact, .. } | Pending::Get { contact, .. }) = pending;
        self.dirty.insert(contact);
        // the messenger's own word on the request (its ACK, or Offline when the ACKs were
        // lost) may still come: it is this layer's, not the application's
        self.retire(id);
        let Some(response) = Response::decode(&r.data) else {
            self.counters.malformed += 1;
            return;
        };
        match pending {
            Pending::Put { contact, index, sp } => self.on_put(contact, index, sp, &response),
            Pending::Get { contact, index, sp } => {
                self.on_get(now, messenger, contact, index, sp, &response)
            }
        }
    }
}

/// Requests given up on, remembered so that the messenger's late word on them is not
/// taken for the application's.
const RETIRED_REMEMBERED: usize = 65_536;

/// Stored messages delivered, remembered (and kept on disk by a node) so that boxes read
/// again do not deliver them twice.
pub const DELIVERED_REMEMBERED: usize = 65_536;
