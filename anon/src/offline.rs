//! Offline delivery (paper section 4.6.1): when a message to a contact gets no ACK after
//! every attempt, its symbols are parked at storage providers, one RaptorQ symbol per BACAP
//! box of the stream from this node to that contact; the contact, back online, collects
//! them, decodes, and sends a receipt.
//!
//! - **Streams.** Per ordered pair of contacts (writer W, reader R), one BACAP stream whose
//!   capability both derive from their identities: `HKDF-SHA-256(salt "mixed-offline-v1
//!   stream", X25519(W, R), W || R)` gives the root seed, start index and chain key. Only
//!   the two of them can find, read or write its boxes; a provider sees unlinkable box IDs.
//! - **Storing** (the sender): after the messenger's last attempt ([`MessengerEvent::Offline`])
//!   the message becomes a stored object (port, length, data) cut into symbols of
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

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
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
    /// PUT and GET requests sent.
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
    retired: HashSet<MessageId>,
    retired_order: VecDeque<MessageId>,
    receipted: HashSet<MessageId>,
    receipted_order: VecDeque<MessageId>,
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
            retired: HashSet::new(),
            retired_order: VecDeque::new(),
            receipted: HashSet::new(),
            receipted_order: VecDeque::new(),
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

    /// The configuration.
    pub fn config(&self) -> &OfflineConfig {
        &self.config
    }

    /// Adds a contact: messages to it fall back to storage, and its stream to this node is
    /// collected. `false` for a key that is no X25519 key (nothing added).
    pub fn add_contact(&mut self, identity: IdentityKey) -> bool {
        let me = self.identity.public();
        let (Some(out), Some(inb)) = (
            stream_cap(&self.identity, &identity, &me, &identity),
            stream_cap(&self.identity, &identity, &identity, &me),
        ) else {
            return false;
        };
        let read = inb.read_cap();
        self.contacts.insert(
            identity.node_id(),
            Contact {
                identity,
                writer: StreamWriter::new(out),
                put: BTreeMap::new(),
                reader: StreamReader::new(read),
                get: BTreeMap::new(),
                last_found: None,
                idle_until: Timestamp::ZERO,
                decoding: HashMap::new(),
            },
        );
        true
    }

    /// The contacts' node IDs.
    pub fn contacts(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.contacts.keys()
    }

    /// Sends a message through `messenger`; a message to a contact is kept, so that it can
    /// be stored if the contact seems offline.
    pub fn send(
        &mut self,
        now: Timestamp,
        messenger: &mut Messenger,
        to: [u8; 32],
        data: &[u8],
        options: SendOptions,
    ) -> Result<MessageId, MessageError> {
        let id = messenger.send(now, to, data, options)?;
        let room = self.tracked_bytes + data.len() <= self.config.max_tracked_bytes
            && self.tracked.len() + self.awaiting.len() < self.config.max_uploads;
        if self.contacts.contains_key(&to) && room {
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
            MessengerEvent::Offline { id } if self.tracked.contains_key(&id) => {
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

    fn start_upload(&mut self, _now: Timestamp, messenger: &Messenger, id: MessageId) {
        let Some(t) = self.untrack(&id) else {
            return;
        };
        let providers = providers(messenger);
        let mut object = Vec::with_capacity(STORED_OBJECT_HEADER + t.data.len());
        object.push(STORED_VERSION);
        object.extend_from_slice(&t.port.to_be_bytes());
        object.extend_from_slice(&(t.data.len() as u32).to_be_bytes());
        object.extend_from_slice(&t.data);
        let encoder = ObjectEncoder::new(&object, STORED_SYMBOL);
        let (Ok(encoder), false) = (encoder, providers.is_empty()) else {
            self.counters.not_stored += 1;
            self.events.push_back(MessengerEvent::Offline { id });
            return;
        };
        let k = encoder.k() as usize;
        let q = self.answer_rate(&providers);
        let need = coding::symbols_for(k, q, self.config.target, 4 * k + 16);
        self.counters.uploads += 1;
        self.uploads.push_back(Upload {
            id,
            contact: t.to,
            encoder,
            object_len: object.len() as u32,
            need,
            acked: 0,
            next_esi: 0,
        });
    }

    /// q of the binomial model for stored symbols: the mean answer rate of the providers
    /// that take the boxes (those not asked last, see [`Self::order`]).
    fn answer_rate(&self, providers: &[[u8; 32]]) -> f64 {
        let best = providers
            .iter()
            .map(|p| self.rate_of(p))
            .fold(0.0f64, f64::max);
        let alive: Vec<f64> = providers
            .iter()
            .map(|p| self.rate_of(p))
            .filter(|r| *r >= ALIVE * best)
            .collect();
        if alive.is_empty() {
            return self.config.reliability_prior;
        }
        (alive.iter().sum::<f64>() / alive.len() as f64).clamp(0.05, 1.0)
    }

    fn rate_of(&self, sp: &[u8; 32]) -> f64 {
        match self.sp.get(sp) {
            Some(s) if s.samples >= MIN_SAMPLES => s.rate,
            _ => self.config.reliability_prior,
        }
    }

    fn sample(&mut self, sp: [u8; 32], answered: bool) {
        let prior = self.config.reliability_prior;
        let s = self.sp.entry(sp).or_insert(SpStats {
            samples: 0,
            rate: prior,
        });
        s.samples = s.samples.saturating_add(1);
        let x = if answered { 1.0 } else { 0.0 };
        s.rate += 0.2 * (x - s.rate);
    }

    /// The providers of a box in the order to ask them: rendezvous hashing of the box ID,
    /// the ones that stopped answering last. "Stopped" is relative to the best provider:
    /// when this node itself was cut off, every provider's rate fell alike, and none is
    /// singled out.
    fn order(&self, providers: &[[u8; 32]], box_id: &[u8; 32]) -> Vec<[u8; 32]> {
        let best = providers
            .iter()
            .map(|p| self.rate_of(p))
            .fold(0.0f64, f64::max);
        let mut scored: Vec<(bool, [u8; 8], [u8; 32])> = providers
            .iter()
            .map(|sp| {
                let h = Sha256::new()
                    .chain_update(b"mixed-offline-v1 provider")
                    .chain_update(box_id)
                    .chain_update(sp)
                    .finalize();
                let mut score = [0u8; 8];
                score.copy_from_slice(&h[..8]);
                (self.rate_of(sp) < ALIVE * best, score, *sp)
            })
            .collect();
        // alive first, then the highest score
        scored.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        scored.into_iter().map(|(_, _, sp)| sp).collect()
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
        if self.retired.insert(id) {
            self.retired_order.push_back(id);
        }
        while self.retired_order.len() > RETIRED_REMEMBERED {
            if let Some(old) = self.retired_order.pop_front() {
                self.retired.remove(&old);
            }
        }
    }

    fn on_timeout(&mut self, p: Pending) {
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

    /// One PUT: a retry of a box that timed out, or the next symbol of the first upload in
    /// the next box of its stream. `false` when nothing could go.
    fn send_put(&mut self, now: Timestamp, messenger: &mut Messenger) -> bool {
        let providers = providers(messenger);
        if providers.is_empty() {
            return false;
        }
        // a retry first
        let retry = self.contacts.iter().find_map(|(id, c)| {
            c.put
                .iter()
                .find(|(_, b)| !b.waiting)
                .map(|(index, _)| (*id, *index))
        });
        if let Some((contact, index)) = retry {
            return self.put_box(now, messenger, &providers, contact, index);
        }
        // the next symbol of the first upload whose stream has room
        let window = self.config.window;
        let Some(u) = self.uploads.iter_mut().find(|u| {
            u.acked + pending_for(&self.contacts, u) < u.need
                && self
                    .contacts
                    .get(&u.contact)
                    .is_some_and(|c| c.put.len() < window)
        }) else {
            return false;
        };
        let Some(c) = self.contacts.get_mut(&u.contact) else {
            return false;
        };
        let Ok(boxes) = c.writer.pending(window) else {
            return false;
        };
        let Some(b) = boxes.into_iter().find(|b| !c.put.contains_key(&b.index)) else {
            return false;
        };
        let t = STORED_SYMBOL;
        let mut plain = vec![0u8; STORED_HEADER + t];
        plain[0] = STORED_VERSION;
        plain[1..17].copy_from_slice(&u.id);
        plain[17..21].copy_from_slice(&u.object_len.to_be_bytes());
        plain[21..25].copy_from_slice(&u.next_esi.to_be_bytes());
        u.encoder.symbol(u.next_esi, &mut plain[STORED_HEADER..]);
        u.next_esi += 1;
        let Ok(sealed) = b.seal(&plain) else {
            return false;
        };
        let request = protocol::encode_put(
            &b.index.to_be_bytes(),
            &sealed.box_id,
            &sealed.signature,
            &sealed.block,
        );
        let (contact, index) = (u.contact, b.index);
        c.put.insert(
            index,
            BoxPut {
                request,
                upload: u.id,
                tries: 0,
                tried: Vec::new(),
                waiting: false,
            },
        );
        self.put_box(now, messenger, &providers, contact, index)
    }

    fn put_box(
        &mut self,
        now: Timestamp,
        messenger: &mut Messenger,
        providers: &[[u8; 32]],
        contact: [u8; 32],
        index: u64,
    ) -> bool {
        let Some(box_id) = self.contacts.get(&contact).and_then(|c| {
            c.put
                .get(&index)
                .and_then(|b| {
                    b.request
                        .get(protocol::REQUEST_HEADER - 32..protocol::REQUEST_HEADER)
                })
                .and_then(|s| <[u8; 32]>::try_from(s).ok())
        }) else {
            return false;
        };
        let order = self.order(providers, &box_id);
        let options = self.request_options();
        let Some(c) = self.contacts.get_mut(&contact) else {
            return false;
        };
        let Some(b) = c.put.get_mut(&index) else {
            return false;
        };
        // the providers not tried yet first, in order
        let sp = order
            .iter()
            .find(|sp| !b.tried.contains(sp))
            .or(order.first())
            .copied();
        let Some(sp) = sp else { return false };
        match messenger.send(now, sp, &b.request, options) {
            Ok(id) => {
                b.tries += 1;
                b.tried.push(sp);
                b.waiting = true;
                self.requests
                    .insert(id, (Pending::Put { contact, index, sp }, None));
                self.counters.puts += 1;
                true
            }
            Err(_) => false,
        }
    }

    fn request_options(&self) -> SendOptions {
        SendOptions {
            reply_surbs: self.config.request_surbs,
            port: SERVICE_PORT,
            ..SendOptions::default()
        }
    }

    /// One GET: the first box of a stream that is not at rest, not in flight, and not
    /// answered Empty by every provider in this round.
    fn send_get(&mut self, now: Timestamp, messenger: &mut Messenger) {
        let providers = providers(messenger);
        if providers.is_empty() {
            return;
        }
        let window = self.config.window;
        // streams take turns: start after a random contact
        let ids: Vec<[u8; 32]> = self.contacts.keys().copied().collect();
        let start = (self.rng.next_u32() as usize) % ids.len().max(1);
        for k in 0..ids.len() {
            let contact = ids[(start + k) % ids.len()];
            let Some(pick) = self.next_box(now, &providers, contact, window) else {
                continue;
            };
            let (index, box_id, sp) = pick;
            let request = protocol::encode_get(&index.to_be_bytes(), &box_id);
            let options = self.request_options();
            if let Ok(id) = messenger.send(now, sp, &request, options) {
                if let Some(b) = self
                    .contacts
                    .get_mut(&contact)
                    .and_then(|c| c.get.get_mut(&index))
                {
                    b.waiting = true;
                }
                self.requests
                    .insert(id, (Pending::Get { contact, index, sp }, None));
                self.counters.gets += 1;
            }
            return;
        }
    }

    /// The box of `contact`'s stream to ask for next, and whom.
    fn next_box(
        &mut self,
        now: Timestamp,
        providers: &[[u8; 32]],
        contact: [u8; 32],
        window: usize,
    ) -> Option<(u64, [u8; 32], [u8; 32])> {
        let c = self.contacts.get(&contact)?;
        if now < c.idle_until {
            return None;
        }
        let boxes = c.reader.expected(window).ok()?;
        let mut pick = None;
        for b in &boxes {
            let state = c.get.get(&b.index);
            if state.is_some_and(|s| s.waiting) {
                continue;
            }
            // the providers that did not say Empty yet, those that answer first; a box is
            // done for this round once every answering provider said Empty (one that
            // stopped answering is not waited for)
            let order = self.order(providers, &b.id);
            let asked = state.map_or(&[][..], |s| &s.empty_at[..]);
            let best = providers
                .iter()
                .map(|p| self.rate_of(p))
                .fold(0.0f64, f64::max);
            if let Some(sp) = order
                .iter()
                .find(|sp| !asked.contains(sp) && self.rate_of(sp) >= ALIVE * best)
            {
                pick = Some((b.index, b.id, *sp));
                break;
            }
        }
        let c = self.contacts.get_mut(&contact)?;
        match pick {
            Some((index, id, sp)) => {
                c.get.entry(index).or_default();
                Some((index, id, sp))
            }
            None => {
                // every box in the window answered Empty everywhere (or is in flight):
                // the stream rests, and its boxes start a new round afterwards
                if c.get.values().all(|g| !g.waiting) {
                    c.idle_until = now.saturating_add(self.config.idle_poll);
                    for g in c.get.values_mut() {
                        g.empty_at.clear();
                    }
                }
                None
            }
        }
    }

    fn on_response(&mut self, now: Timestamp, messenger: &mut Messenger, r: &Received) {
        let Some(id) = r.in_reply_to else { return };
        let Some((pending, _)) = self.requests.remove(&id) else {
            return;
        };
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

    fn on_put(&mut self, contact: [u8; 32], index: u64, sp: [u8; 32], response: &Response) {
        self.sample(sp, true);
        let Some(c) = self.contacts.get_mut(&contact) else {
            return;
        };
        let Some(b) = c.put.get_mut(&index) else {
            return;
        };
        b.waiting = false;
        match response.status {
            Status::Stored => {
                let upload = b.upload;
                c.put.remove(&index);
                let _ = c.writer.acknowledged(index);
                let done = self.uploads.iter_mut().position(|u| {
                    if u.id == upload {
                        u.acked += 1;
                    }
                    u.id == upload && u.acked >= u.need
                });
                if let Some(i) = done
                    && let Some(u) = self.uploads.remove(i)
                {
                    self.counters.stored += 1;
                    self.awaiting.insert(u.id, u.contact);
                    self.events.push_back(MessengerEvent::Stored { id: u.id });
                }
            }
            // the box is taken (another block, or deleted): skip it for good
            Status::Exists | Status::Tombstoned | Status::Expired => {
                c.put.remove(&index);
                let _ = c.writer.acknowledged(index);
                self.counters.abandoned += 1;
            }
            // full, unavailable or a refusal: another provider next time
            _ => {
                let tries = self.config.put_tries;
                if b.tries >= tries {
                    c.put.remove(&index);
                    let _ = c.writer.acknowledged(index);
                    self.counters.abandoned += 1;
                }
            }
        }
    }

    fn on_get(
        &mut self,
        now: Timestamp,
        messenger: &mut Messenger,
        contact: [u8; 32],
        index: u64,
        sp: [u8; 32],
        response: &Response,
    ) {
        self.sample(sp, true);
        let Some(c) = self.contacts.get_mut(&contact) else {
            return;
        };
        let Some(g) = c.get.get_mut(&index) else {
            return;
        };
        g.waiting = false;
        if response.status != Status::Found {
            g.empty_at.push(sp);
            // a hole the writer left (a later box was found) is skipped after two rounds
            if c.last_found.is_some_and(|l| l > index) && g.empty_at.len() >= 2 {
                g.empty_rounds += 1;
                if g.empty_rounds >= 2 || g.empty_at.len() >= 4 {
                    c.get.remove(&index);
                    let _ = c.reader.consumed(index);
                    self.counters.skipped += 1;
                }
            }
            return;
        }
        let window = self.config.window;
        let opened = response.sealed().and_then(|s| {
            let b = c
                .reader
                .expected(window)
                .ok()?
                .into_iter()
                .find(|b| b.index == index)?;
            b.open(&s).ok()
        });
        c.get.remove(&index);
        let _ = c.reader.consumed(index);
        c.last_found = Some(c.last_found.map_or(index, |l| l.max(index)));
        let Some(plain) = opened else {
            self.counters.malformed += 1;
            return;
        };
        self.on_stored_symbol(now, messenger, contact, &plain);
    }

    fn on_stored_symbol(
        &mut self,
        now: Timestamp,
        messenger: &mut Messenger,
        contact: [u8; 32],
        plain: &[u8],
    ) {
        if plain.len() != STORED_HEADER + STORED_SYMBOL || plain[0] != STORED_VERSION {
            self.counters.malformed += 1;
            return;
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&plain[1..17]);
        let object_len = u32::from_be_bytes([plain[17], plain[18], plain[19], plain[20]]);
        let esi = u32::from_be_bytes([plain[21], plain[22], plain[23], plain[24]]);
        if messenger.was_received(&id) {
            // delivered already (directly, or from other symbols): the sender may not know
            self.receipt(now, messenger, contact, id);
            return;
        }
        let max_decoding = self.config.max_decoding;
        let Some(c) = self.contacts.get_mut(&contact) else {
            return;
        };
        if !c.decoding.contains_key(&id) {
            if c.decoding.len() >= max_decoding {
                self.counters.malformed += 1;
                return;
            }
            let Ok(decoder) = ObjectDecoder::new(object_len as usize, STORED_SYMBOL) else {
                self.counters.malformed += 1;
                return;
            };
            c.decoding.insert(
                id,
                Decoding {
                    decoder,
                    esis: HashSet::new(),
                },
            );
        }
        let Some(d) = c.decoding.get_mut(&id) else {
            return;
        };
        if !d.esis.insert(esi) {
            return;
        }
        if d.decoder.add(esi, &plain[STORED_HEADER..]).is_none() {
            return;
        }
        let object = d.decoder.take();
        c.decoding.remove(&id);
        let identity = c.identity;
        let Some(object) = object else { return };
        self.counters.recovered += 1;
        let parsed = (object.len() >= STORED_OBJECT_HEADER && object[0] == STORED_VERSION)
            .then(|| {
                let port = u16::from_be_bytes([object[1], object[2]]);
                let len = u32::from_be_bytes([object[3], object[4], object[5], object[6]]);
                let data = object.get(STORED_OBJECT_HEADER..STORED_OBJECT_HEADER + len as usize)?;
                Some((port, data.to_vec()))
            })
            .flatten();
        let Some((port, data)) = parsed else {
            self.counters.malformed += 1;
            return;
        };
        messenger.mark_received(now, id);
        self.events.push_back(MessengerEvent::Received(Received {
            id,
            port,
            data,
            sender: Some(identity),
            reply: None,
            in_reply_to: None,
            stored: true,
        }));
        self.receipt(now, messenger, contact, id);
    }

    /// Tells the sender its stored message arrived (once per message and session).
    fn receipt(
        &mut self,
        now: Timestamp,
        messenger: &mut Messenger,
        contact: [u8; 32],
        id: MessageId,
    ) {
        if !self.receipted.insert(id) {
            self.counters.duplicates += 1;
            return;
        }
        self.receipted_order.push_back(id);
        while self.receipted_order.len() > RECEIPTS_REMEMBERED {
            if let Some(old) = self.receipted_order.pop_front() {
                self.receipted.remove(&old);
            }
        }
        let mut body = [0u8; 17];
        body[0] = STORED_VERSION;
        body[1..].copy_from_slice(&id);
        let options = SendOptions {
            port: RECEIPT_PORT,
            reveal_identity: true,
            ..SendOptions::default()
        };
        if let Ok(rid) = messenger.send(now, contact, &body, options) {
            self.receipts.insert(rid);
            self.counters.receipts_sent += 1;
        }
    }

    fn on_receipt(&mut self, r: &Received) {
        let Some(id) = (r.data.len() == 17 && r.data[0] == STORED_VERSION)
            .then(|| <[u8; 16]>::try_from(&r.data[1..]).ok())
            .flatten()
        else {
            self.counters.malformed += 1;
            return;
        };
        let contact = self
            .awaiting
            .get(&id)
            .copied()
            .or_else(|| self.uploads.iter().find(|u| u.id == id).map(|u| u.contact));
        let Some(contact) = contact else { return };
        // only the recipient itself can confirm (its identity, revealed and verified)
        if self.contacts.get(&contact).map(|c| c.identity) != r.sender || r.sender.is_none() {
            self.counters.malformed += 1;
            return;
        }
        self.awaiting.remove(&id);
        if let Some(i) = self.uploads.iter().position(|u| u.id == id) {
            self.uploads.remove(i);
            if let Some(c) = self.contacts.get_mut(&contact) {
                c.put.retain(|_, b| b.upload != id || b.waiting);
            }
        }
        self.counters.delivered += 1;
        self.events.push_back(MessengerEvent::Delivered { id });
    }
}

/// Requests given up on, remembered so that the messenger's late word on them is not
/// taken for the application's.
const RETIRED_REMEMBERED: usize = 65_536;

/// Receipts remembered, so a message recovered twice is confirmed once.
const RECEIPTS_REMEMBERED: usize = 8192;

/// PUTs in flight for an upload.
fn pending_for(contacts: &BTreeMap<[u8; 32], Contact>, u: &Upload) -> usize {
    contacts
        .get(&u.contact)
        .map_or(0, |c| c.put.values().filter(|b| b.upload == u.id).count())
}

/// The providers of the storage service in the messenger's consensus, by node ID.
fn providers(messenger: &Messenger) -> Vec<[u8; 32]> {
    let Some(paths) = messenger.paths() else {
        return Vec::new();
    };
    let mut out: Vec<[u8; 32]> = paths
        .consensus()
        .nodes()
        .iter()
        .filter(|n| n.roles.services.iter().any(|s| s == STORAGE_ROLE))
        .map(|n| n.id())
        .collect();
    out.sort_unstable();
    out
}
