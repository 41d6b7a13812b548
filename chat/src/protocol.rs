//! What devices send each other, on [`crate::transport::CHAT_PORT`]. The mixnet's Sphinx
//! layer already encrypts every message to its destination node; the envelope adds what a
//! node must see to pick the session, and the payload is encrypted again by the Olm session
//! of the two devices (end to end, forward-secret).
//!
//! **Envelope** (big-endian): version (1) ‖ kind (1) ‖ message ID (16) ‖ sender's user
//! identity key (32) ‖ body:
//!
//! | kind | body |
//! |---|---|
//! | 1 OLM | Olm message type (1) ‖ length (4) ‖ Olm message |
//! | 2 LINK_REQUEST | length (4) ‖ the new device's entry ‖ HMAC-SHA-256 (32) of "mixed-chat-v1 link" ‖ entry under the link code's secret |
//! | 3 LINK_GRANT | nonce (24) ‖ length (4) ‖ XChaCha20-Poly1305, under a key from the link secret, of the signed device list |
//!
//! **Payload** (inside OLM): kind (1) ‖ fields:
//!
//! | kind | fields |
//! |---|---|
//! | 1 TEXT | Lamport time (8) ‖ sent at, unix s (8) ‖ body (4 + n) ‖ attachment name (1 + n) ‖ attachment (4 + n) |
//! | 2 SYNC | the contact it went to (32) ‖ the fields of TEXT: a copy of what the user sent from another device |
//! | 3 DEVICE_LIST | the signed device list (4 + n): an introduction, or a new version |
//! | 4 CONTACTS | count (2) ‖ per contact: signed device list (4 + n) ‖ name (1 + n): for the user's other devices |
//! | 5 INTRO | the sender's signed device list (4 + n) ‖ another payload: sent while the session has not heard back |
//!
//! The same message ID goes to every device of one send, so devices agree on it; a device
//! drops an envelope it has handled already (same sender, same ID) before decrypting.

use crate::codec::{Malformed, Reader, Writer};

const VERSION: u8 = 1;
/// The largest message body and attachment together: what fits a 1 MiB message with room
/// for the envelope, the Olm overhead, the payload's fields and an introduction (a device
/// list of [`crate::identity::MAX_DEVICES`] devices is under 3 KiB).
pub const MAX_CONTENT: usize = (1 << 20) - 8192;

/// A message ID of the messenger.
pub type ChatId = [u8; 16];

/// The outer layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The message's ID.
    pub id: ChatId,
    /// The sender's user identity key (zeros in a link request).
    pub user: [u8; 32],
    /// What it carries.
    pub body: Body,
}

/// An envelope's body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// An Olm message.
    Olm {
        /// Its type (pre-key or normal).
        message_type: u8,
        /// Its bytes.
        bytes: Vec<u8>,
    },
    /// A new device asks the primary to be linked.
    LinkRequest {
        /// Its entry.
        entry: Vec<u8>,
        /// Proof it saw the link code.
        mac: [u8; 32],
    },
    /// The primary's answer: the new device list, sealed under the link secret.
    LinkGrant {
        /// The nonce.
        nonce: [u8; 24],
        /// The sealed list.
        sealed: Vec<u8>,
    },
}

impl Envelope {
    /// The bytes to send.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        let kind = match self.body {
            Body::Olm { .. } => 1,
            Body::LinkRequest { .. } => 2,
            Body::LinkGrant { .. } => 3,
        };
        w.u8(VERSION).u8(kind).bytes(&self.id).bytes(&self.user);
        match &self.body {
            Body::Olm {
                message_type,
                bytes,
            } => {
                w.u8(*message_type).long(bytes);
            }
            Body::LinkRequest { entry, mac } => {
                w.long(entry).bytes(mac);
            }
            Body::LinkGrant { nonce, sealed } => {
                w.bytes(nonce).long(sealed);
            }
        }
        w.0
    }

    /// Parses received bytes.
    pub fn decode(b: &[u8]) -> Result<Envelope, Malformed> {
        let mut r = Reader::new(b, "envelope");
        if r.u8()? != VERSION {
            return Err(Malformed("envelope version"));
        }
        let kind = r.u8()?;
        let id = r.arr()?;
        let user = r.arr()?;
        let body = match kind {
            1 => Body::Olm {
                message_type: r.u8()?,
                bytes: r.long(1 << 21)?.to_vec(),
            },
            2 => Body::LinkRequest {
                entry: r.long(4096)?.to_vec(),
                mac: r.arr()?,
            },
            3 => Body::LinkGrant {
                nonce: r.arr()?,
                sealed: r.long(1 << 16)?.to_vec(),
            },
            _ => return Err(Malformed("envelope kind")),
        };
        r.end()?;
        Ok(Envelope { id, user, body })
    }
}

/// A message's text and attachment, with its order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text {
    /// Lamport time: orders a conversation whatever the arrival order.
    pub lamport: u64,
    /// When it was written (unix seconds, the sender's clock).
    pub sent_at: u64,
    /// The text.
    pub body: String,
    /// An attachment: file name and bytes.
    pub attachment: Option<(String, Vec<u8>)>,
}

/// What an Olm message carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// A message to a contact.
    Text(Text),
    /// A copy, for the user's other devices, of what they sent to `to`.
    Sync {
        /// The contact it went to.
        to: [u8; 32],
        /// The message.
        text: Text,
    },
    /// The sender's signed device list.
    DeviceList(Vec<u8>),
    /// The user's contacts, for their other devices: (signed device list, name).
    Contacts(Vec<(Vec<u8>, String)>),
    /// The sender's signed device list, then a payload: what a device sends while its
    /// session with the recipient has not heard back (the recipient may not know the
    /// sender yet, its introduction lost or still on its way).
    Intro(Vec<u8>, Box<Payload>),
}

impl Text {
    fn encode(&self, w: &mut Writer) {
        w.u64(self.lamport)
            .u64(self.sent_at)
            .long(self.body.as_bytes());
        match &self.attachment {
            Some((name, data)) => w.short(name.as_bytes()).long(data),
            None => w.short(b"").long(b""),
        };
    }

    fn decode(r: &mut Reader<'_>) -> Result<Text, Malformed> {
        let lamport = r.u64()?;
        let sent_at = r.u64()?;
        let body =
            String::from_utf8(r.long(MAX_CONTENT)?.to_vec()).map_err(|_| Malformed("text"))?;
        let name = r.string()?;
        let data = r.long(MAX_CONTENT)?.to_vec();
        Ok(Text {
            lamport,
            sent_at,
            body,
            attachment: (!name.is_empty() || !data.is_empty()).then_some((name, data)),
        })
    }
}

impl Payload {
    /// Its bytes (what Olm encrypts).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Payload::Text(t) => {
                w.u8(1);
                t.encode(&mut w);
            }
            Payload::Sync { to, text } => {
                w.u8(2).bytes(to);
                text.encode(&mut w);
            }
            Payload::DeviceList(list) => {
                w.u8(3).long(list);
            }
            Payload::Contacts(contacts) => {
                w.u8(4).u16(contacts.len() as u16);
                for (list, name) in contacts {
                    w.long(list).short(name.as_bytes());
                }
            }
            Payload::Intro(list, inner) => {
                w.u8(5).long(list).bytes(&inner.encode());
            }
        }
        w.0
    }

    /// Parses decrypted bytes.
    pub fn decode(b: &[u8]) -> Result<Payload, Malformed> {
        let mut r = Reader::new(b, "payload");
        if b.first() == Some(&5) {
            r.u8()?;
            let list = r.long(1 << 16)?.to_vec();
            let inner = Payload::decode(r.rest())?;
            if matches!(inner, Payload::Intro(..)) {
                return Err(Malformed("payload"));
            }
            return Ok(Payload::Intro(list, Box::new(inner)));
        }
        let p = match r.u8()? {
            1 => Payload::Text(Text::decode(&mut r)?),
            2 => Payload::Sync {
                to: r.arr()?,
                text: Text::decode(&mut r)?,
            },
            3 => Payload::DeviceList(r.long(1 << 16)?.to_vec()),
            4 => {
                let n = r.u16()?;
                let mut v = Vec::with_capacity(usize::from(n).min(1024));
                for _ in 0..n {
                    v.push((r.long(1 << 16)?.to_vec(), r.string()?));
                }
                Payload::Contacts(v)
            }
            _ => return Err(Malformed("payload kind")),
        };
        r.end()?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn envelopes_and_payloads_round_trip_and_garbage_is_refused() {
        let text = Text {
            lamport: 9,
            sent_at: 1_700_000_000,
            body: "hello ✓".into(),
            attachment: Some(("a.txt".into(), vec![1, 2, 3])),
        };
        for p in [
            Payload::Text(text.clone()),
            Payload::Sync {
                to: [4; 32],
                text: Text {
                    attachment: None,
                    ..text.clone()
                },
            },
            Payload::DeviceList(vec![5; 40]),
            Payload::Contacts(vec![(vec![6; 10], "bob".into())]),
            Payload::Intro(vec![7; 30], Box::new(Payload::Text(text.clone()))),
        ] {
            assert_eq!(Payload::decode(&p.encode()).unwrap(), p);
        }
        for body in [
            Body::Olm {
                message_type: 0,
                bytes: vec![7; 100],
            },
            Body::LinkRequest {
                entry: vec![8; 50],
                mac: [9; 32],
            },
            Body::LinkGrant {
                nonce: [1; 24],
                sealed: vec![2; 20],
            },
        ] {
            let e = Envelope {
                id: [3; 16],
                user: [4; 32],
                body,
            };
            let b = e.encode();
            assert_eq!(Envelope::decode(&b).unwrap(), e);
            for cut in 0..b.len() {
                assert!(Envelope::decode(&b[..cut]).is_err());
            }
            let mut long = b.clone();
            long.push(0);
            assert!(Envelope::decode(&long).is_err());
        }
        assert!(Payload::decode(&[9, 9, 9]).is_err());
    }
}
