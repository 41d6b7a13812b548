//! The messenger's records: this device and its user, contacts, messages with their
//! delivery state, and the outbox. Each has a byte encoding the store keeps encrypted.

use crate::codec::{Malformed, Reader, Writer};
use crate::identity::{SignedDeviceList, UserKey, UserSecret};
use crate::protocol::{ChatId, MAX_CONTENT};

/// Where a message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    /// Written here, on its way.
    Sending,
    /// Parked at storage providers: the contact's devices seemed offline.
    Stored,
    /// A device of the contact has it.
    Delivered,
    /// Could be neither delivered nor stored.
    Failed,
    /// From the contact.
    Received,
    /// Written by this user on another of their devices.
    OtherDevice,
}

impl State {
    fn code(self) -> u8 {
        match self {
            State::Sending => 0,
            State::Stored => 1,
            State::Delivered => 2,
            State::Failed => 3,
            State::Received => 4,
            State::OtherDevice => 5,
        }
    }

    fn from_code(c: u8) -> Result<State, Malformed> {
        Ok(match c {
            0 => State::Sending,
            1 => State::Stored,
            2 => State::Delivered,
            3 => State::Failed,
            4 => State::Received,
            5 => State::OtherDevice,
            _ => return Err(Malformed("state")),
        })
    }

    /// How it is shown.
    pub fn label(self) -> &'static str {
        match self {
            State::Sending => "sending",
            State::Stored => "stored",
            State::Delivered => "delivered",
            State::Failed => "failed",
            State::Received => "received",
            State::OtherDevice => "sent elsewhere",
        }
    }
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Its ID (the same on every device).
    pub id: ChatId,
    /// The conversation: the contact's identity key.
    pub conv: UserKey,
    /// Written by this user (here or on another device).
    pub from_me: bool,
    /// The node key of the device that wrote it.
    pub author: [u8; 32],
    /// Lamport time (the conversation's order).
    pub lamport: u64,
    /// When it was written (unix seconds, its writer's clock).
    pub sent_at: u64,
    /// The text.
    pub body: String,
    /// An attachment: name and bytes.
    pub attachment: Option<(String, Vec<u8>)>,
    /// Where it stands.
    pub state: State,
    /// It came from storage providers.
    pub stored: bool,
    /// For a message sent from this device: each device of the contact and its state.
    pub targets: Vec<([u8; 32], State)>,
}

impl Message {
    /// The state the targets add up to: delivered once a device of the contact has it,
    /// stored once one is stored, failed once every one failed.
    pub fn aggregate(&mut self) {
        if !self.from_me || self.targets.is_empty() {
            return;
        }
        let has = |s| self.targets.iter().any(|(_, t)| *t == s);
        self.state = if has(State::Delivered) {
            State::Delivered
        } else if has(State::Stored) {
            State::Stored
        } else if self.targets.iter().all(|(_, t)| *t == State::Failed) {
            State::Failed
        } else {
            State::Sending
        };
    }

    /// Its encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(1)
            .bytes(&self.id)
            .bytes(&self.conv)
            .u8(u8::from(self.from_me))
            .bytes(&self.author)
            .u64(self.lamport)
            .u64(self.sent_at)
            .long(self.body.as_bytes());
        match &self.attachment {
            Some((n, d)) => w.short(n.as_bytes()).long(d),
            None => w.short(b"").long(b""),
        };
        w.u8(self.state.code()).u8(u8::from(self.stored));
        w.u8(self.targets.len() as u8);
        for (k, s) in &self.targets {
            w.bytes(k).u8(s.code());
        }
        w.0
    }

    /// From [`Self::encode`].
    pub fn decode(b: &[u8]) -> Result<Message, Malformed> {
        let mut r = Reader::new(b, "message record");
        if r.u8()? != 1 {
            return Err(Malformed("message record"));
        }
        let id = r.arr()?;
        let conv = r.arr()?;
        let from_me = r.u8()? != 0;
        let author = r.arr()?;
        let lamport = r.u64()?;
        let sent_at = r.u64()?;
        let body = String::from_utf8(r.long(MAX_CONTENT)?.to_vec())
            .map_err(|_| Malformed("message record"))?;
        let name = r.string()?;
        let data = r.long(MAX_CONTENT)?.to_vec();
        let state = State::from_code(r.u8()?)?;
        let stored = r.u8()? != 0;
        let n = r.u8()?;
        let mut targets = Vec::new();
        for _ in 0..n {
            targets.push((r.arr()?, State::from_code(r.u8()?)?));
        }
        r.end()?;
        Ok(Message {
            id,
            conv,
            from_me,
            author,
            lamport,
            sent_at,
            body,
            attachment: (!name.is_empty() || !data.is_empty()).then_some((name, data)),
            state,
            stored,
            targets,
        })
    }
}

/// A contact: another user and their devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contact {
    /// Their signed device list (the newest seen).
    pub list: SignedDeviceList,
    /// The name this user gave them.
    pub name: String,
    /// Their safety number was compared.
    pub verified: bool,
}

impl Contact {
    /// Their identity key.
    pub fn user(&self) -> UserKey {
        self.list.list().user
    }

    /// Its encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(1)
            .long(self.list.bytes())
            .short(self.name.as_bytes())
            .u8(u8::from(self.verified));
        w.0
    }

    /// From [`Self::encode`] (the list verified again).
    pub fn decode(b: &[u8]) -> Result<Contact, Malformed> {
        let mut r = Reader::new(b, "contact record");
        if r.u8()? != 1 {
            return Err(Malformed("contact record"));
        }
        let list =
            SignedDeviceList::verify(r.long(1 << 16)?).map_err(|_| Malformed("contact record"))?;
        let name = r.string()?;
        let verified = r.u8()? != 0;
        r.end()?;
        Ok(Contact {
            list,
            name,
            verified,
        })
    }
}

/// This device and its user.
#[derive(Clone, Debug)]
pub struct Profile {
    /// The user's secret identity key: on the primary device only.
    pub secret: Option<UserSecret>,
    /// This device's node key.
    pub node_key: [u8; 32],
    /// This device's name.
    pub name: String,
    /// The user's device list, once this device is linked (the primary's from the start).
    pub list: Option<SignedDeviceList>,
    /// The Lamport clock.
    pub lamport: u64,
    /// This device was removed from the user's list.
    pub revoked: bool,
}

impl Profile {
    /// Its encoding (holds the secret identity key: the store encrypts it).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(1);
        match &self.secret {
            Some(s) => w.u8(1).bytes(&s.seed()),
            None => w.u8(0),
        };
        w.bytes(&self.node_key).short(self.name.as_bytes());
        match &self.list {
            Some(l) => w.long(l.bytes()),
            None => w.long(b""),
        };
        w.u64(self.lamport).u8(u8::from(self.revoked));
        w.0
    }

    /// From [`Self::encode`].
    pub fn decode(b: &[u8]) -> Result<Profile, Malformed> {
        let mut r = Reader::new(b, "profile");
        if r.u8()? != 1 {
            return Err(Malformed("profile"));
        }
        let secret = match r.u8()? {
            1 => Some(UserSecret::from_seed(r.arr()?)),
            _ => None,
        };
        let node_key = r.arr()?;
        let name = r.string()?;
        let list = r.long(1 << 16)?;
        let list = if list.is_empty() {
            None
        } else {
            Some(SignedDeviceList::verify(list).map_err(|_| Malformed("profile"))?)
        };
        let lamport = r.u64()?;
        let revoked = r.u8()? != 0;
        r.end()?;
        Ok(Profile {
            secret,
            node_key,
            name,
            list,
            lamport,
            revoked,
        })
    }
}

/// An envelope to send to one device: kept until its fate is known, sent again after a
/// restart (the receiver drops what it has already).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The message ID.
    pub id: ChatId,
    /// The device's node key.
    pub to: [u8; 32],
    /// The envelope.
    pub envelope: Vec<u8>,
}

impl Outgoing {
    /// The store key: ID, then device.
    pub fn key(&self) -> Vec<u8> {
        let mut k = self.id.to_vec();
        k.extend_from_slice(&self.to);
        k
    }

    /// Its encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes(&self.id).bytes(&self.to).long(&self.envelope);
        w.0
    }

    /// From [`Self::encode`].
    pub fn decode(b: &[u8]) -> Result<Outgoing, Malformed> {
        let mut r = Reader::new(b, "outbox record");
        let o = Outgoing {
            id: r.arr()?,
            to: r.arr()?,
            envelope: r.long(1 << 21)?.to_vec(),
        };
        r.end()?;
        Ok(o)
    }
}
