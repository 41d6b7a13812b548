//! What arrives: envelopes checked against the sender's device (the node key its node
//! revealed must be a device of the user the envelope names), duplicates dropped before
//! decrypting, payloads applied and stored before the interface hears of them.

use crate::core::{Chat, Notice};
use crate::identity::{DeviceEntry, SignedDeviceList};
use crate::model::{Contact, Message, State};
use crate::olm::prekey_identity;
use crate::protocol::{Body, Envelope, Payload};
use crate::store::{Ns, Op};
use crate::transport::{Incoming, Transport};

/// Who sent an envelope.
enum From {
    /// This user's other device.
    Own(DeviceEntry),
    /// A contact's device.
    Contact(DeviceEntry),
    /// A user not known yet: only an introduction (their device list) is taken.
    Stranger(DeviceEntry),
}

impl Chat {
    pub(crate) fn drop_with(&mut self, reason: &'static str) {
        *self.counters.dropped.entry(reason).or_default() += 1;
        self.notices.push_back(Notice::Dropped(reason));
    }

    pub(crate) fn on_incoming(&mut self, t: &mut dyn Transport, inc: Incoming, now: u64) {
        self.counters.received += 1;
        let Ok(env) = Envelope::decode(&inc.data) else {
            return self.drop_with("malformed envelope");
        };
        // a link grant comes through the request's SURBs, anonymously: the link secret
        // authenticates it; everything else names its sending device
        if let Body::LinkGrant { .. } = env.body {
            return self.on_link_grant(t, inc.sender, env);
        }
        let Some(sender) = inc.sender else {
            return self.drop_with("no sender identity");
        };
        match env.body {
            Body::Olm { .. } => self.on_olm(t, sender, env, inc.stored),
            Body::LinkRequest { .. } => self.on_link_request(t, sender, env, inc.reply, now),
            Body::LinkGrant { .. } => {}
        }
    }

    /// Who sent `env`: a device in the known list of the user it names, or, for the first
    /// message of a session (a pre-key message), a device not known yet, whose message
    /// must then introduce it with a device list.
    fn from(&self, sender: &[u8; 32], env: &Envelope) -> Result<From, &'static str> {
        let Body::Olm {
            message_type,
            bytes,
        } = &env.body
        else {
            return Err("not an Olm message");
        };
        let own = self.user() == Some(env.user);
        let known = if own {
            self.profile.list.as_ref()
        } else {
            self.contacts.get(&env.user).map(|c| &c.list)
        };
        if let Some(d) = known.and_then(|l| l.list().device(sender)) {
            return Ok(if own {
                From::Own(d.clone())
            } else {
                From::Contact(d.clone())
            });
        }
        let Some(curve) = prekey_identity(*message_type, bytes) else {
            return Err(if known.is_some() {
                "not a device of the user (revoked?)"
            } else {
                "unknown sender"
            });
        };
        Ok(From::Stranger(DeviceEntry {
            node_key: *sender,
            curve,
            fallback: [0; 32],
            signing: [0; 32],
            name: String::new(),
            added: 0,
        }))
    }

    pub(crate) fn on_olm(
        &mut self,
        t: &mut dyn Transport,
        sender: [u8; 32],
        env: Envelope,
        stored: bool,
    ) {
        if self.profile.list.is_none() {
            // not linked yet: kept for when the grant comes
            if self.early.len() < crate::core::EARLY_MAX {
                self.early.push_back((sender, env, stored));
            } else {
                self.drop_with("before linking, queue full");
            }
            return;
        }
        let mut seen = sender.to_vec();
        seen.extend_from_slice(&env.id);
        if self.seen.contains(&seen) {
            self.counters.duplicates += 1;
            return;
        }
        let from = match self.from(&sender, &env) {
            Ok(f) => f,
            Err(reason) => return self.drop_with(reason),
        };
        let Body::Olm {
            message_type,
            bytes,
        } = &env.body
        else {
            return;
        };
        let device = match &from {
            From::Own(d) | From::Contact(d) | From::Stranger(d) => d.clone(),
        };
        let plain = match self.olm.decrypt(&device, *message_type, bytes) {
            Ok(p) => p,
            Err(_) => {
                return self.drop_with("undecryptable (replayed, altered, or an old session)");
            }
        };
        let Ok(payload) = Payload::decode(&plain) else {
            return self.drop_with("malformed payload");
        };
        let mut ops = vec![Op::Put(Ns::Seen, seen.clone(), vec![])];
        let mut notices = Vec::new();
        // an introduction (a device list first) makes a device known
        let (list, payload) = match payload {
            Payload::Intro(list, inner) => (Some(list), *inner),
            Payload::DeviceList(list) => (Some(list.clone()), Payload::DeviceList(list)),
            p => (None, p),
        };
        let mut from = from;
        if let Some(bytes) = list {
            match SignedDeviceList::verify(&bytes) {
                Ok(l) if l.list().user != env.user => {
                    return self.forget_stranger(&from, &sender, "a device list of another user");
                }
                Ok(l)
                    if l.list()
                        .device(&sender)
                        .is_none_or(|d| d.curve != device.curve) =>
                {
                    return self.forget_stranger(
                        &from,
                        &sender,
                        "a device list without its sender",
                    );
                }
                Ok(l) => {
                    self.learn_list(t, l, None, &mut ops, &mut notices);
                    if let From::Stranger(_) = from {
                        match self.from(&sender, &env) {
                            Ok(f @ (From::Own(_) | From::Contact(_))) => from = f,
                            _ => {
                                return self.forget_stranger(
                                    &from,
                                    &sender,
                                    "an introduction older than the device list known",
                                );
                            }
                        }
                    }
                }
                Err(_) => {
                    return self.forget_stranger(
                        &from,
                        &sender,
                        "a device list that does not verify",
                    );
                }
            }
        }
        if let From::Stranger(_) = from {
            return self.forget_stranger(
                &from,
                &sender,
                "a message from an unknown device without an introduction",
            );
        }
        ops.push(Op::Put(
            Ns::Session,
            sender.to_vec(),
            self.olm.sessions_pickle(&sender),
        ));
        let applied = match (&from, payload) {
            (From::Contact(_), Payload::Text(text)) => {
                self.profile.lamport = self.profile.lamport.max(text.lamport);
                let m = Message {
                    id: env.id,
                    conv: env.user,
                    from_me: false,
                    author: sender,
                    lamport: text.lamport,
                    sent_at: text.sent_at,
                    body: text.body,
                    attachment: text.attachment,
                    state: State::Received,
                    stored,
                    targets: vec![],
                };
                self.keep_message(m, &mut ops, &mut notices);
                Ok(())
            }
            (From::Own(_), Payload::Sync { to, text }) => {
                self.profile.lamport = self.profile.lamport.max(text.lamport);
                let m = Message {
                    id: env.id,
                    conv: to,
                    from_me: true,
                    author: sender,
                    lamport: text.lamport,
                    sent_at: text.sent_at,
                    body: text.body,
                    attachment: text.attachment,
                    state: State::OtherDevice,
                    stored,
                    targets: vec![],
                };
                self.keep_message(m, &mut ops, &mut notices);
                Ok(())
            }
            (From::Own(_), Payload::Contacts(list)) => {
                for (bytes, name) in list {
                    if let Ok(l) = SignedDeviceList::verify(&bytes) {
                        self.learn_list(t, l, Some(name), &mut ops, &mut notices);
                    }
                }
                Ok(())
            }
            // applied above
            (_, Payload::DeviceList(_)) => Ok(()),
            _ => Err("a payload this sender may not send"),
        };
        if let Err(reason) = applied {
            // what was learned (a device list) is kept all the same
            self.drop_with(reason);
        }
        ops.push(Op::Put(Ns::Profile, vec![], self.profile.encode()));
        if let Err(e) = self.store.write(&ops) {
            // not stored, so not shown: the sender's node was told it arrived, but this
            // device cannot keep it (the disk?)
            self.notices.push_back(Notice::SendFailed(e.to_string()));
            return;
        }
        self.seen.insert(seen);
        self.notices.extend(notices);
    }

    /// Drops a message; a session opened for a device not known is forgotten.
    fn forget_stranger(&mut self, from: &From, sender: &[u8; 32], reason: &'static str) {
        if matches!(from, From::Stranger(_)) {
            self.olm.forget(sender);
        }
        self.drop_with(reason);
    }

    fn keep_message(&mut self, m: Message, ops: &mut Vec<Op>, notices: &mut Vec<Notice>) {
        if self.messages.contains_key(&m.id) {
            return;
        }
        ops.push(Op::Put(Ns::Message, m.id.to_vec(), m.encode()));
        notices.push(Notice::Message {
            conv: m.conv,
            id: m.id,
        });
        self.messages.insert(m.id, m);
    }

    /// A device list: this user's (a newer version: devices linked or revoked), a contact's
    /// (a newer version), or a new contact's (an introduction, or from this user's other
    /// device with a name).
    pub(crate) fn learn_list(
        &mut self,
        t: &mut dyn Transport,
        list: SignedDeviceList,
        name: Option<String>,
        ops: &mut Vec<Op>,
        notices: &mut Vec<Notice>,
    ) {
        let user = list.list().user;
        if Some(user) == self.user() {
            let Some(own) = self.profile.list.clone() else {
                return;
            };
            if list.supersedes(&own).is_err() {
                return;
            }
            for d in &own.list().devices {
                if list.list().device(&d.node_key).is_none() {
                    self.olm.forget(&d.node_key);
                }
            }
            for d in &list.list().devices {
                let _ = t.add_contact(&d.node_key);
            }
            if list.list().device(&self.profile.node_key).is_none() {
                self.profile.revoked = true;
                notices.push(Notice::Revoked);
            } else {
                notices.push(Notice::Devices);
            }
            self.profile.list = Some(list);
            return;
        }
        let contact = match self.contacts.get(&user) {
            Some(known) => {
                if list.supersedes(&known.list).is_err() {
                    // not newer: only a name from this user's other device changes
                    match name {
                        Some(n) if n != known.name => Contact {
                            name: n,
                            ..known.clone()
                        },
                        _ => return,
                    }
                } else {
                    for d in &known.list.list().devices {
                        if list.list().device(&d.node_key).is_none() {
                            self.olm.forget(&d.node_key);
                        }
                    }
                    Contact {
                        list,
                        name: name.unwrap_or_else(|| known.name.clone()),
                        verified: known.verified,
                    }
                }
            }
            None => Contact {
                name: name.unwrap_or_else(|| format!("new-{}", &crate::core::hex(&user)[..8])),
                list,
                verified: false,
            },
        };
        for d in &contact.list.list().devices {
            let _ = t.add_contact(&d.node_key);
        }
        ops.push(Op::Put(Ns::Contact, user.to_vec(), contact.encode()));
        self.contacts.insert(user, contact);
        notices.push(Notice::Contact(user));
    }

    /// Envelopes kept from before linking, now handled.
    pub(crate) fn replay_early(&mut self, t: &mut dyn Transport) {
        while let Some((sender, env, stored)) = self.early.pop_front() {
            self.on_olm(t, sender, env, stored);
        }
    }
}
