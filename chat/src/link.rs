//! Linking and revoking devices. The primary device (the one that ran `init`, holding the
//! identity key) shows a **link code**: its node key and a one-time secret. The new device
//! sends it a link request (its device entry, with an HMAC under the secret: proof it was
//! shown the code) through the mixnet, with SURBs for the answer; the primary adds it to
//! the device list, signs the new version, answers with the list sealed under a key from
//! the secret, then sends the new list to every contact's devices and its own, and the
//! contacts to the new device. Revoking signs a list without the device and sends it the
//! same way; the revoked device is told nothing, and nothing is sent to it any more.

use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload as AeadPayload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::codec::{Reader, Writer};
use crate::core::{Chat, ChatError, Notice, rand16};
use crate::identity::{DeviceEntry, DeviceList, LinkCode, MAX_DEVICES, SignedDeviceList};
use crate::model::Profile;
use crate::olm::Olm;
use crate::protocol::{Body, Envelope, Payload};
use crate::store::{KdfParams, Ns, Op, random};
use crate::transport::Transport;

/// How long a link code is good for, seconds.
pub const LINK_TTL: u64 = 600;
/// SURBs a link request carries for the answer.
const LINK_SURBS: u8 = 12;

fn mac(secret: &[u8; 16], entry: &[u8]) -> Option<Hmac<Sha256>> {
    let mut m = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(secret).ok()?;
    m.update(b"mixed-chat-v1 link");
    m.update(entry);
    Some(m)
}

fn grant_cipher(secret: &[u8; 16]) -> XChaCha20Poly1305 {
    let hk = hkdf::Hkdf::<Sha256>::new(None, secret);
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    // a 32-byte output of HKDF-SHA-256 cannot fail
    let _ = hk.expand(b"mixed-chat-v1 grant", &mut key[..]);
    XChaCha20Poly1305::new((&*key).into())
}

/// A link in progress, as stored.
enum Pending {
    /// On the primary: the secret shown, until when.
    Primary { secret: [u8; 16], until: u64 },
    /// On the new device: whom it asked, with which secret, and its request.
    Device {
        primary: [u8; 32],
        secret: [u8; 16],
        request: Vec<u8>,
    },
}

impl Pending {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Pending::Primary { secret, until } => {
                w.u8(1).bytes(secret).u64(*until);
            }
            Pending::Device {
                primary,
                secret,
                request,
            } => {
                w.u8(2).bytes(primary).bytes(secret).long(request);
            }
        }
        w.0
    }

    fn decode(b: &[u8]) -> Option<Pending> {
        let mut r = Reader::new(b, "link");
        Some(match r.u8().ok()? {
            1 => Pending::Primary {
                secret: r.arr().ok()?,
                until: r.u64().ok()?,
            },
            2 => Pending::Device {
                primary: r.arr().ok()?,
                secret: r.arr().ok()?,
                request: r.long(1 << 16).ok()?.to_vec(),
            },
            _ => return None,
        })
    }
}

impl Chat {
    fn pending(&self) -> Option<Pending> {
        self.store
            .get(Ns::Link, &[])
            .ok()
            .flatten()
            .and_then(|b| Pending::decode(&b))
    }

    /// On the primary: a new link code, good for [`LINK_TTL`] seconds (a new one replaces
    /// the last).
    pub fn link_start(&mut self, now: u64) -> Result<LinkCode, ChatError> {
        self.linked()?;
        if !self.is_primary() {
            return Err(ChatError::NotPrimary);
        }
        let secret = rand16()?;
        let p = Pending::Primary {
            secret,
            until: now + LINK_TTL,
        };
        self.store.write(&[Op::Put(Ns::Link, vec![], p.encode())])?;
        Ok(LinkCode {
            node_key: self.profile.node_key,
            secret,
        })
    }

    /// A new device of an existing user: a store in `dir`, and a link request to the
    /// primary device that showed `code`. The device is linked when the primary answers
    /// ([`Notice::Linked`]); until then it sends nothing.
    pub fn link(
        dir: &Path,
        passphrase: &str,
        kdf: KdfParams,
        t: &mut dyn Transport,
        code: &LinkCode,
        device_name: &str,
        now: u64,
    ) -> Result<Chat, ChatError> {
        let olm = Olm::new();
        let entry = Chat::entry(&olm, t.node_key(), device_name, now).to_bytes();
        let mac = mac(&code.secret, &entry)
            .ok_or(ChatError::Randomness)?
            .finalize()
            .into_bytes();
        let mut m = [0u8; 32];
        m.copy_from_slice(&mac);
        let request = Envelope {
            id: rand16()?,
            user: [0; 32],
            body: Body::LinkRequest { entry, mac: m },
        }
        .encode();
        let profile = Profile {
            secret: None,
            node_key: t.node_key(),
            name: device_name.to_string(),
            list: None,
            lamport: 0,
            revoked: false,
        };
        let chat = Chat::create(dir, passphrase, kdf, profile, olm)?;
        let p = Pending::Device {
            primary: code.node_key,
            secret: code.secret,
            request,
        };
        chat.store.write(&[Op::Put(Ns::Link, vec![], p.encode())])?;
        t.add_contact(&code.node_key)?;
        chat.send_link_request(t)?;
        Ok(chat)
    }

    /// On a device not linked yet: sends its link request (again).
    pub fn send_link_request(&self, t: &mut dyn Transport) -> Result<(), ChatError> {
        if let Some(Pending::Device {
            primary, request, ..
        }) = self.pending()
        {
            t.send(&primary, &request, LINK_SURBS)?;
        }
        Ok(())
    }

    pub(crate) fn on_link_request(
        &mut self,
        t: &mut dyn Transport,
        sender: [u8; 32],
        env: Envelope,
        reply: Option<Vec<u8>>,
        now: u64,
    ) {
        let Body::LinkRequest { entry, mac: tag } = env.body else {
            return;
        };
        let (Some(secret), Some(own)) = (
            match self.pending() {
                Some(Pending::Primary { secret, until }) if now <= until => Some(secret),
                _ => None,
            },
            self.profile.list.clone(),
        ) else {
            return self.drop_with("a link request with no link code shown");
        };
        let ok = mac(&secret, &entry).is_some_and(|m| m.verify_slice(&tag).is_ok());
        let Ok(device) = DeviceEntry::from_bytes(&entry) else {
            return self.drop_with("a malformed link request");
        };
        if !ok || device.node_key != sender {
            return self.drop_with("a link request that does not match the code");
        }
        if let Err(e) = self.add_device(t, own, device, &secret, reply) {
            self.notices.push_back(Notice::SendFailed(e.to_string()));
        }
    }

    fn add_device(
        &mut self,
        t: &mut dyn Transport,
        own: SignedDeviceList,
        device: DeviceEntry,
        secret: &[u8; 16],
        reply: Option<Vec<u8>>,
    ) -> Result<(), ChatError> {
        let Some(identity) = self.profile.secret.clone() else {
            return Err(ChatError::NotPrimary);
        };
        let mut devices: Vec<DeviceEntry> = own
            .list()
            .devices
            .iter()
            .filter(|d| d.node_key != device.node_key)
            .cloned()
            .collect();
        if devices.len() >= MAX_DEVICES {
            return Err(crate::identity::IdentityError::Devices.into());
        }
        devices.push(device.clone());
        let list = identity.sign(DeviceList {
            user: own.list().user,
            version: own.list().version + 1,
            devices,
        })?;
        let nonce: [u8; 24] = random().ok_or(ChatError::Randomness)?;
        let sealed = grant_cipher(secret)
            .encrypt(
                &XNonce::from(nonce),
                AeadPayload {
                    msg: list.bytes(),
                    aad: &device.node_key,
                },
            )
            .map_err(|_| ChatError::Randomness)?;
        let grant = Envelope {
            id: rand16()?,
            user: own.list().user,
            body: Body::LinkGrant { nonce, sealed },
        }
        .encode();
        self.profile.list = Some(list.clone());
        self.store.write(&[
            Op::Put(Ns::Profile, vec![], self.profile.encode()),
            Op::Delete(Ns::Link, vec![]),
        ])?;
        t.add_contact(&device.node_key)?;
        match reply {
            Some(r) => t.reply(&r, &grant)?,
            None => t.send(&device.node_key, &grant, 0)?,
        };
        self.broadcast_list(&list)?;
        // the contacts, for the new device
        let all: Vec<(Vec<u8>, String)> = self
            .contacts
            .values()
            .map(|c| (c.list.bytes().to_vec(), c.name.clone()))
            .collect();
        if !all.is_empty() {
            let (mut ops, mut out) = (Vec::new(), Vec::new());
            self.seal(
                &device,
                rand16()?,
                &Payload::Contacts(all),
                &mut ops,
                &mut out,
            )?;
            self.commit(ops, out)?;
        }
        self.notices.push_back(Notice::Devices);
        self.flush(t);
        Ok(())
    }

    /// Sends this user's device list to every device of every contact and to the user's
    /// other devices.
    fn broadcast_list(&mut self, list: &SignedDeviceList) -> Result<(), ChatError> {
        let payload = Payload::DeviceList(list.bytes().to_vec());
        let id = rand16()?;
        let mut targets: Vec<DeviceEntry> = self
            .contacts
            .values()
            .flat_map(|c| c.list.list().devices.clone())
            .collect();
        targets.extend(self.own_others());
        let (mut ops, mut out) = (Vec::new(), Vec::new());
        for d in targets {
            self.seal(&d, id, &payload, &mut ops, &mut out)?;
        }
        self.commit(ops, out)
    }

    /// The primary's answer. It comes through the request's SURBs (no sender then) or,
    /// without them, from the primary's node; the link secret authenticates it.
    pub(crate) fn on_link_grant(
        &mut self,
        t: &mut dyn Transport,
        sender: Option<[u8; 32]>,
        env: Envelope,
    ) {
        let Body::LinkGrant { nonce, sealed } = env.body else {
            return;
        };
        let Some(Pending::Device {
            primary, secret, ..
        }) = self.pending()
        else {
            return self.drop_with("a link grant not asked for");
        };
        if sender.is_some_and(|s| s != primary) {
            return self.drop_with("a link grant from another device");
        }
        let Ok(bytes) = grant_cipher(&secret).decrypt(
            &XNonce::from(nonce),
            AeadPayload {
                msg: &sealed,
                aad: &self.profile.node_key,
            },
        ) else {
            return self.drop_with("a link grant that does not open");
        };
        let Ok(list) = SignedDeviceList::verify(&bytes) else {
            return self.drop_with("a link grant with a list that does not verify");
        };
        let mine = list.list().device(&self.profile.node_key);
        if mine.is_none_or(|d| d.curve != self.olm.curve())
            || list.list().device(&primary).is_none()
        {
            return self.drop_with("a link grant whose list does not hold this device");
        }
        self.profile.list = Some(list);
        let write = self.store.write(&[
            Op::Put(Ns::Profile, vec![], self.profile.encode()),
            Op::Delete(Ns::Link, vec![]),
        ]);
        if let Err(e) = write {
            self.profile.list = None;
            self.notices.push_back(Notice::SendFailed(e.to_string()));
            return;
        }
        let _ = self.tell_node(t);
        self.notices.push_back(Notice::Linked);
        self.replay_early(t);
    }

    /// On the primary: removes a device from the user's list and tells every contact and
    /// the remaining devices; nothing is sent to it afterwards.
    pub fn revoke(&mut self, t: &mut dyn Transport, node_key: &[u8; 32]) -> Result<(), ChatError> {
        let (user, own) = self.linked()?;
        let Some(identity) = self.profile.secret.clone() else {
            return Err(ChatError::NotPrimary);
        };
        if *node_key == self.profile.node_key || own.list().device(node_key).is_none() {
            return Err(ChatError::UnknownDevice);
        }
        let list = identity.sign(DeviceList {
            user,
            version: own.list().version + 1,
            devices: own
                .list()
                .devices
                .iter()
                .filter(|d| d.node_key != *node_key)
                .cloned()
                .collect(),
        })?;
        self.profile.list = Some(list.clone());
        self.olm.forget(node_key);
        self.store.write(&[
            Op::Put(Ns::Profile, vec![], self.profile.encode()),
            Op::Delete(Ns::Session, node_key.to_vec()),
        ])?;
        // what waits for it is not sent
        let dead: Vec<Vec<u8>> = self
            .outbox
            .iter()
            .filter(|(_, o)| o.to == *node_key)
            .map(|(k, _)| k.clone())
            .collect();
        let ops: Vec<Op> = dead
            .iter()
            .map(|k| Op::Delete(Ns::Outbox, k.clone()))
            .collect();
        self.store.write(&ops)?;
        for k in dead {
            self.outbox.remove(&k);
            self.unsent.remove(&k);
        }
        self.broadcast_list(&list)?;
        self.notices.push_back(Notice::Devices);
        self.flush(t);
        Ok(())
    }
}
