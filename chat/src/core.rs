//! The messenger of one device ([`Chat`]): its profile, contacts, conversations and outbox,
//! kept in the encrypted store, driven over a [`Transport`]. Every change is committed to
//! the store before it shows or leaves: a message is in the outbox (with the ratchet state
//! that encrypted it) before it is sent, and a received message is stored before the
//! application hears of it, so a killed process loses nothing it reported.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::Path;

use anon::MessageId;

use crate::identity::{
    DeviceEntry, DeviceList, IdentityError, SignedDeviceList, UserKey, UserSecret,
};
use crate::model::{Contact, Message, Outgoing, Profile, State};
use crate::olm::{Olm, OlmError};
use crate::protocol::{Body, ChatId, Envelope, MAX_CONTENT, Payload, Text};
use crate::store::{KdfParams, Ns, Op, Store, StoreError, random};
use crate::transport::{Transport, TransportError, TransportEvent};

/// What went wrong, for the user.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A device list or a code.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The node.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Olm.
    #[error(transparent)]
    Olm(#[from] OlmError),
    /// This device waits for the primary to answer its link request.
    #[error("this device is not linked yet: the primary device has not answered (is it running?)")]
    NotLinked,
    /// Only the primary device holds the identity key.
    #[error("only the primary device (the one that ran `init`) links and revokes devices")]
    NotPrimary,
    /// This device was removed from its user's device list.
    #[error("this device was revoked: it can no longer send as its user")]
    Revoked,
    /// No contact by that name or key.
    #[error("no contact {0:?}: `mixed chat contacts` lists them")]
    UnknownContact(String),
    /// A message over the limit.
    #[error("the message is {0} bytes; at most {MAX_CONTENT} (1 MiB less the envelope)")]
    TooLarge(usize),
    /// A contact code of this very user.
    #[error("that is this user's own contact code")]
    OwnCode,
    /// A device that is not in the list, or this device itself.
    #[error(
        "no such device to revoke (and a device cannot revoke itself): `mixed chat devices` lists them"
    )]
    UnknownDevice,
    /// The OS gave no randomness.
    #[error("the OS gave no randomness")]
    Randomness,
}

/// What the interface should know about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A message arrived (or a copy of one sent from another device).
    Message {
        /// The conversation.
        conv: UserKey,
        /// The message.
        id: ChatId,
    },
    /// A message sent from here changed state.
    State {
        /// The message.
        id: ChatId,
        /// Its state.
        state: State,
    },
    /// A contact was added or changed (a new device list, an introduction).
    Contact(UserKey),
    /// This device is linked: it sends and receives as its user.
    Linked,
    /// The user's devices changed.
    Devices,
    /// This device was revoked.
    Revoked,
    /// Something that arrived was dropped, and why.
    Dropped(&'static str),
    /// A send failed at the node (it is tried again).
    SendFailed(String),
}

/// What the messenger counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChatCounters {
    /// Envelopes handed to the node.
    pub sent: u64,
    /// Envelopes that arrived.
    pub received: u64,
    /// Of those, handled already (same sender, same ID).
    pub duplicates: u64,
    /// Dropped, by reason.
    pub dropped: BTreeMap<&'static str, u64>,
}

/// Envelopes kept from before this device was linked, at most.
pub(crate) const EARLY_MAX: usize = 64;

/// A device's messenger.
pub struct Chat {
    pub(crate) store: Store,
    pub(crate) profile: Profile,
    pub(crate) olm: Olm,
    pub(crate) contacts: BTreeMap<UserKey, Contact>,
    pub(crate) messages: HashMap<ChatId, Message>,
    pub(crate) outbox: BTreeMap<Vec<u8>, Outgoing>,
    pub(crate) unsent: BTreeSet<Vec<u8>>,
    pub(crate) in_flight: HashMap<MessageId, Vec<u8>>,
    pub(crate) seen: HashSet<Vec<u8>>,
    /// Envelopes that came before this device was linked (sender, envelope, stored).
    pub(crate) early: VecDeque<([u8; 32], Envelope, bool)>,
    pub(crate) notices: VecDeque<Notice>,
    pub(crate) counters: ChatCounters,
}

impl std::fmt::Debug for Chat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chat")
            .field("contacts", &self.contacts.len())
            .field("messages", &self.messages.len())
            .finish_non_exhaustive()
    }
}

pub(crate) fn rand16() -> Result<[u8; 16], ChatError> {
    random().ok_or(ChatError::Randomness)
}

impl Chat {
    /// A new user on this device (the primary): a new identity key, a device list of this
    /// device alone, a store in `dir` under `passphrase`.
    pub fn init(
        dir: &Path,
        passphrase: &str,
        kdf: KdfParams,
        t: &mut dyn Transport,
        device_name: &str,
        now: u64,
    ) -> Result<Chat, ChatError> {
        let seed: [u8; 32] = random().ok_or(ChatError::Randomness)?;
        let secret = UserSecret::from_seed(seed);
        let olm = Olm::new();
        let entry = Chat::entry(&olm, t.node_key(), device_name, now);
        let list = secret.sign(DeviceList {
            user: secret.public(),
            version: 1,
            devices: vec![entry],
        })?;
        let profile = Profile {
            secret: Some(secret),
            node_key: t.node_key(),
            name: device_name.to_string(),
            list: Some(list),
            lamport: 0,
            revoked: false,
        };
        Chat::create(dir, passphrase, kdf, profile, olm)
    }

    pub(crate) fn entry(olm: &Olm, node_key: [u8; 32], name: &str, now: u64) -> DeviceEntry {
        DeviceEntry {
            node_key,
            curve: olm.curve(),
            fallback: olm.fallback(),
            signing: olm.signing(),
            name: name.to_string(),
            added: now,
        }
    }

    pub(crate) fn create(
        dir: &Path,
        passphrase: &str,
        kdf: KdfParams,
        profile: Profile,
        olm: Olm,
    ) -> Result<Chat, ChatError> {
        let store = Store::create(dir, passphrase, kdf)?;
        store.write(&[
            Op::Put(Ns::Profile, vec![], profile.encode()),
            Op::Put(Ns::Account, vec![], olm.account_pickle()),
        ])?;
        Ok(Chat::with(store, profile, olm))
    }

    fn with(store: Store, profile: Profile, olm: Olm) -> Chat {
        Chat {
            store,
            profile,
            olm,
            contacts: BTreeMap::new(),
            messages: HashMap::new(),
            outbox: BTreeMap::new(),
            unsent: BTreeSet::new(),
            in_flight: HashMap::new(),
            seen: HashSet::new(),
            early: VecDeque::new(),
            notices: VecDeque::new(),
            counters: ChatCounters::default(),
        }
    }

    /// Opens the profile in `dir`: everything as it was, the outbox to be sent again, the
    /// node told the contacts' and own devices.
    pub fn open(dir: &Path, passphrase: &str, t: &mut dyn Transport) -> Result<Chat, ChatError> {
        let store = Store::open(dir, passphrase)?;
        let corrupt = |what| StoreError::Corrupt {
            path: Store::file(dir),
            what,
        };
        let profile = store
            .get(Ns::Profile, &[])?
            .and_then(|b| Profile::decode(&b).ok())
            .ok_or_else(|| corrupt("profile"))?;
        let account = store
            .get(Ns::Account, &[])?
            .ok_or_else(|| corrupt("account"))?;
        let sessions = store
            .list(Ns::Session)?
            .into_iter()
            .filter_map(|(k, v)| Some((<[u8; 32]>::try_from(&k[..]).ok()?, v)));
        let olm = Olm::restore(&account, sessions)?;
        let mut chat = Chat::with(store, profile, olm);
        for (_, v) in chat.store.list(Ns::Contact)? {
            let c = Contact::decode(&v).map_err(|_| corrupt("contact"))?;
            chat.contacts.insert(c.user(), c);
        }
        for (_, v) in chat.store.list(Ns::Message)? {
            let m = Message::decode(&v).map_err(|_| corrupt("message"))?;
            chat.messages.insert(m.id, m);
        }
        for (k, v) in chat.store.list(Ns::Outbox)? {
            let o = Outgoing::decode(&v).map_err(|_| corrupt("outbox"))?;
            chat.unsent.insert(k.clone());
            chat.outbox.insert(k, o);
        }
        chat.seen = chat
            .store
            .list(Ns::Seen)?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        if t.node_key() != chat.profile.node_key {
            return Err(TransportError(
                "this profile belongs to another node (its key differs): use the node it was \
                 created with"
                    .into(),
            )
            .into());
        }
        chat.tell_node(t)?;
        Ok(chat)
    }

    /// Tells the node every device this one talks to (offline delivery's contacts).
    pub(crate) fn tell_node(&self, t: &mut dyn Transport) -> Result<(), ChatError> {
        let mut keys: BTreeSet<[u8; 32]> = self
            .contacts
            .values()
            .flat_map(|c| c.list.list().devices.iter().map(|d| d.node_key))
            .collect();
        if let Some(l) = &self.profile.list {
            keys.extend(l.list().devices.iter().map(|d| d.node_key));
        }
        keys.remove(&self.profile.node_key);
        for k in keys {
            t.add_contact(&k)?;
        }
        Ok(())
    }

    /// The user's identity key, once linked.
    pub fn user(&self) -> Option<UserKey> {
        self.profile.list.as_ref().map(|l| l.list().user)
    }

    /// This device's node key.
    pub fn node_key(&self) -> [u8; 32] {
        self.profile.node_key
    }

    /// This device is the primary (holds the identity key).
    pub fn is_primary(&self) -> bool {
        self.profile.secret.is_some()
    }

    /// This device was revoked.
    pub fn is_revoked(&self) -> bool {
        self.profile.revoked
    }

    /// The user's devices (empty before linking).
    pub fn devices(&self) -> &[DeviceEntry] {
        self.profile
            .list
            .as_ref()
            .map_or(&[][..], |l| &l.list().devices[..])
    }

    /// The contact code to give others.
    pub fn contact_code(&self) -> Result<String, ChatError> {
        Ok(self
            .profile
            .list
            .as_ref()
            .ok_or(ChatError::NotLinked)?
            .contact_code())
    }

    /// The contacts.
    pub fn contacts(&self) -> impl Iterator<Item = &Contact> {
        self.contacts.values()
    }

    /// A contact by name (case aside) or by a prefix of its key in hex.
    pub fn find_contact(&self, query: &str) -> Result<UserKey, ChatError> {
        let q = query.trim();
        if let Some(c) = self
            .contacts
            .values()
            .find(|c| c.name.eq_ignore_ascii_case(q))
        {
            return Ok(c.user());
        }
        let hits: Vec<&Contact> = self
            .contacts
            .values()
            .filter(|c| q.len() >= 4 && hex(&c.user()).starts_with(&q.to_ascii_lowercase()))
            .collect();
        match hits[..] {
            [c] => Ok(c.user()),
            _ => Err(ChatError::UnknownContact(q.to_string())),
        }
    }

    /// A contact.
    pub fn contact(&self, user: &UserKey) -> Option<&Contact> {
        self.contacts.get(user)
    }

    /// The safety number with a contact.
    pub fn safety_number(&self, user: &UserKey) -> Option<String> {
        Some(crate::identity::safety_number(&self.user()?, user))
    }

    /// Marks a contact verified (its safety number was compared).
    pub fn verify_contact(&mut self, user: &UserKey) -> Result<(), ChatError> {
        let Some(c) = self.contacts.get(user) else {
            return Err(ChatError::UnknownContact(hex(user)));
        };
        let mut c = c.clone();
        c.verified = true;
        self.store
            .write(&[Op::Put(Ns::Contact, user.to_vec(), c.encode())])?;
        self.contacts.insert(*user, c);
        Ok(())
    }

    /// A conversation in order (Lamport time, then writer, then ID).
    pub fn conversation(&self, user: &UserKey) -> Vec<&Message> {
        let mut v: Vec<&Message> = self.messages.values().filter(|m| m.conv == *user).collect();
        v.sort_by_key(|m| (m.lamport, m.author, m.id));
        v
    }

    /// A message.
    pub fn message(&self, id: &ChatId) -> Option<&Message> {
        self.messages.get(id)
    }

    /// What was counted.
    pub fn counters(&self) -> &ChatCounters {
        &self.counters
    }

    /// The next notice for the interface.
    pub fn poll_notice(&mut self) -> Option<Notice> {
        self.notices.pop_front()
    }

    pub(crate) fn linked(&self) -> Result<(UserKey, SignedDeviceList), ChatError> {
        if self.profile.revoked {
            return Err(ChatError::Revoked);
        }
        let l = self.profile.list.as_ref().ok_or(ChatError::NotLinked)?;
        Ok((l.list().user, l.clone()))
    }

    /// The user's other devices.
    pub(crate) fn own_others(&self) -> Vec<DeviceEntry> {
        self.devices()
            .iter()
            .filter(|d| d.node_key != self.profile.node_key)
            .cloned()
            .collect()
    }

    /// Encrypts `payload` for `device` as message `id`: the envelope goes to the outbox and
    /// the session's new state to `ops` (written together by [`Self::commit`]).
    pub(crate) fn seal(
        &mut self,
        device: &DeviceEntry,
        id: ChatId,
        payload: &Payload,
        ops: &mut Vec<Op>,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), ChatError> {
        let (user, list) = self.linked()?;
        // to a contact's device that has not answered yet: with this user's device list,
        // in case the introduction was lost
        let intro;
        let payload = if list.list().device(&device.node_key).is_none()
            && !self.olm.heard_from(&device.node_key)
            && !matches!(payload, Payload::DeviceList(_))
        {
            intro = Payload::Intro(list.bytes().to_vec(), Box::new(payload.clone()));
            &intro
        } else {
            payload
        };
        let (message_type, bytes) = self.olm.encrypt(device, &payload.encode())?;
        let o = Outgoing {
            id,
            to: device.node_key,
            envelope: Envelope {
                id,
                user,
                body: Body::Olm {
                    message_type,
                    bytes,
                },
            }
            .encode(),
        };
        ops.push(Op::Put(
            Ns::Session,
            device.node_key.to_vec(),
            self.olm.sessions_pickle(&device.node_key),
        ));
        ops.push(Op::Put(Ns::Outbox, o.key(), o.encode()));
        out.push(o);
        Ok(())
    }

    /// Writes `ops`, then queues `out` for sending.
    pub(crate) fn commit(&mut self, ops: Vec<Op>, out: Vec<Outgoing>) -> Result<(), ChatError> {
        self.store.write(&ops)?;
        for o in out {
            self.unsent.insert(o.key());
            self.outbox.insert(o.key(), o);
        }
        Ok(())
    }

    /// Hands what waits in the outbox to the node; what it refuses stays for the next call.
    pub fn flush(&mut self, t: &mut dyn Transport) {
        let keys: Vec<Vec<u8>> = self.unsent.iter().cloned().collect();
        for k in keys {
            let Some(o) = self.outbox.get(&k) else {
                self.unsent.remove(&k);
                continue;
            };
            match t.send(&o.to, &o.envelope, 0) {
                Ok(tid) => {
                    self.unsent.remove(&k);
                    self.in_flight.insert(tid, k);
                    self.counters.sent += 1;
                }
                Err(e) => {
                    self.notices.push_back(Notice::SendFailed(e.0));
                    return;
                }
            }
        }
    }

    /// Sends a message (and an attachment) to a contact: to each of their devices, and a
    /// copy to each of this user's other devices. Returns its ID once it is in the outbox.
    pub fn send(
        &mut self,
        t: &mut dyn Transport,
        to: &UserKey,
        body: &str,
        attachment: Option<(String, Vec<u8>)>,
        now: u64,
    ) -> Result<ChatId, ChatError> {
        self.linked()?;
        let size = body.len() + attachment.as_ref().map_or(0, |(n, d)| n.len() + d.len());
        if size > MAX_CONTENT {
            return Err(ChatError::TooLarge(size));
        }
        let contact = self
            .contacts
            .get(to)
            .cloned()
            .ok_or_else(|| ChatError::UnknownContact(hex(to)))?;
        let id = rand16()?;
        self.profile.lamport += 1;
        let text = Text {
            lamport: self.profile.lamport,
            sent_at: now,
            body: body.to_string(),
            attachment,
        };
        let (mut ops, mut out) = (Vec::new(), Vec::new());
        let devices = contact.list.list().devices.clone();
        for d in &devices {
            self.seal(d, id, &Payload::Text(text.clone()), &mut ops, &mut out)?;
        }
        for d in self.own_others() {
            let sync = Payload::Sync {
                to: *to,
                text: text.clone(),
            };
            self.seal(&d, id, &sync, &mut ops, &mut out)?;
        }
        let m = Message {
            id,
            conv: *to,
            from_me: true,
            author: self.profile.node_key,
            lamport: text.lamport,
            sent_at: now,
            body: text.body,
            attachment: text.attachment,
            state: State::Sending,
            stored: false,
            targets: devices
                .iter()
                .map(|d| (d.node_key, State::Sending))
                .collect(),
        };
        ops.push(Op::Put(Ns::Message, id.to_vec(), m.encode()));
        ops.push(Op::Put(Ns::Profile, vec![], self.profile.encode()));
        self.commit(ops, out)?;
        self.messages.insert(id, m);
        self.flush(t);
        Ok(id)
    }

    /// Adds a contact from their code, named `name`; introduces this user to each of their
    /// devices and tells this user's other devices.
    pub fn add_contact(
        &mut self,
        t: &mut dyn Transport,
        code: &str,
        name: &str,
    ) -> Result<UserKey, ChatError> {
        let (me, my_list) = self.linked()?;
        let list = SignedDeviceList::from_contact_code(code)?;
        let user = list.list().user;
        if user == me {
            return Err(ChatError::OwnCode);
        }
        let contact = match self.contacts.get(&user) {
            Some(known) if list.supersedes(&known.list).is_ok() => Contact {
                list,
                name: name.to_string(),
                verified: known.verified,
            },
            Some(known) => Contact {
                name: name.to_string(),
                ..known.clone()
            },
            None => Contact {
                list,
                name: name.to_string(),
                verified: false,
            },
        };
        for d in &contact.list.list().devices {
            t.add_contact(&d.node_key)?;
        }
        let (mut ops, mut out) = (Vec::new(), Vec::new());
        ops.push(Op::Put(Ns::Contact, user.to_vec(), contact.encode()));
        let intro = Payload::DeviceList(my_list.bytes().to_vec());
        let id = rand16()?;
        for d in contact.list.list().devices.clone() {
            self.seal(&d, id, &intro, &mut ops, &mut out)?;
        }
        let share = Payload::Contacts(vec![(contact.list.bytes().to_vec(), contact.name.clone())]);
        let id = rand16()?;
        for d in self.own_others() {
            self.seal(&d, id, &share, &mut ops, &mut out)?;
        }
        self.commit(ops, out)?;
        self.contacts.insert(user, contact);
        self.notices.push_back(Notice::Contact(user));
        self.flush(t);
        Ok(user)
    }

    /// Takes an event of the node: a message, or the fate of one sent.
    pub fn handle(&mut self, t: &mut dyn Transport, e: TransportEvent, now: u64) {
        match e {
            TransportEvent::Received(inc) => self.on_incoming(t, inc, now),
            TransportEvent::Acknowledged(id) | TransportEvent::Delivered(id) => {
                self.outcome(&id, State::Delivered, true)
            }
            TransportEvent::Stored(id) => self.outcome(&id, State::Stored, false),
            TransportEvent::Failed(id, _) => self.outcome(&id, State::Failed, true),
        }
        self.flush(t);
    }

    fn outcome(&mut self, tid: &MessageId, state: State, last: bool) {
        let Some(key) = self.in_flight.get(tid).cloned() else {
            return;
        };
        if last {
            self.in_flight.remove(tid);
        }
        let Some(o) = self.outbox.remove(&key) else {
            return;
        };
        let mut ops = vec![Op::Delete(Ns::Outbox, key)];
        let mut notice = None;
        if let Some(m) = self.messages.get(&o.id) {
            let mut m = m.clone();
            let before = m.state;
            for (k, s) in &mut m.targets {
                if *k == o.to && *s != State::Delivered {
                    *s = state;
                }
            }
            m.aggregate();
            if m.state != before {
                notice = Some(Notice::State {
                    id: m.id,
                    state: m.state,
                });
            }
            ops.push(Op::Put(Ns::Message, m.id.to_vec(), m.encode()));
            self.messages.insert(m.id, m);
        }
        if let Err(e) = self.store.write(&ops) {
            // the outcome is lost to a restart: the envelope goes again then (dropped by
            // the receiver as a duplicate)
            self.notices.push_back(Notice::SendFailed(e.to_string()));
        }
        self.notices.extend(notice);
    }

    /// Waits up to `timeout` for one event of the node and handles it; sends what waits.
    /// `false` when nothing came.
    pub fn pump(
        &mut self,
        t: &mut dyn Transport,
        timeout: std::time::Duration,
        now: u64,
    ) -> Result<bool, ChatError> {
        self.flush(t);
        match t.poll(timeout)? {
            Some(e) => {
                self.handle(t, e, now);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
