//! Olm sessions per pair of devices (vodozemac: the double ratchet of Signal, audited):
//! forward secrecy (a message key is used once and erased, so today's state does not open
//! yesterday's messages) and healing after compromise (every round trip brings new
//! Diffie-Hellman ratchet keys, so a copied state stops opening the traffic after one).
//!
//! No server hands out one-time keys: a device publishes one **fallback key** in its device
//! list, and others open sessions with it. Both ends may open a session at once; every
//! session with a peer is kept (at most [`MAX_SESSIONS`]), a message is opened with the one
//! it names, and the one that last opened a message sends.

use std::collections::HashMap;

use vodozemac::Curve25519PublicKey;
use vodozemac::olm::{Account, AccountPickle, OlmMessage, Session, SessionConfig, SessionPickle};

use crate::identity::DeviceEntry;

/// Sessions kept per peer device.
pub const MAX_SESSIONS: usize = 4;

/// Why an Olm operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OlmError {
    /// A key in a device entry is no Curve25519 key.
    #[error("the device's keys are not valid")]
    BadKey,
    /// The message is not an Olm message.
    #[error("not an Olm message")]
    Malformed,
    /// No session opens it: replayed (its key was used and erased), altered, or for a
    /// session this device no longer has.
    #[error(
        "the message does not decrypt: replayed, altered, or from a session this device does not have"
    )]
    Undecryptable,
    /// A pickle that does not parse.
    #[error("a stored session does not parse")]
    Pickle,
}

/// This device's Olm account and its sessions with other devices.
pub struct Olm {
    account: Account,
    fallback: [u8; 32],
    sessions: HashMap<[u8; 32], Vec<Session>>,
}

impl std::fmt::Debug for Olm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Olm")
            .field("peers", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Olm {
    /// A new account with its fallback key.
    pub fn new() -> Olm {
        let mut account = Account::new();
        account.generate_fallback_key();
        let fallback = account
            .fallback_key()
            .values()
            .next()
            .map(|k| k.to_bytes())
            .unwrap_or_default();
        account.mark_keys_as_published();
        Olm {
            account,
            fallback,
            sessions: HashMap::new(),
        }
    }

    /// The identity key (Curve25519).
    pub fn curve(&self) -> [u8; 32] {
        self.account.curve25519_key().to_bytes()
    }

    /// The signing key (Ed25519).
    pub fn signing(&self) -> [u8; 32] {
        self.account.ed25519_key().as_bytes().to_owned()
    }

    /// The fallback key others open sessions with.
    pub fn fallback(&self) -> [u8; 32] {
        self.fallback
    }

    /// The account's pickle (to store; secret).
    pub fn account_pickle(&self) -> Vec<u8> {
        let mut out = self.fallback.to_vec();
        out.extend(serde_json::to_vec(&self.account.pickle()).unwrap_or_default());
        out
    }

    /// From [`Self::account_pickle`], with the stored sessions.
    pub fn restore(
        account: &[u8],
        sessions: impl IntoIterator<Item = ([u8; 32], Vec<u8>)>,
    ) -> Result<Olm, OlmError> {
        if account.len() < 32 {
            return Err(OlmError::Pickle);
        }
        let mut fallback = [0u8; 32];
        fallback.copy_from_slice(&account[..32]);
        let pickle: AccountPickle =
            serde_json::from_slice(&account[32..]).map_err(|_| OlmError::Pickle)?;
        let mut olm = Olm {
            account: Account::from_pickle(pickle),
            fallback,
            sessions: HashMap::new(),
        };
        for (peer, bytes) in sessions {
            let pickles: Vec<SessionPickle> =
                serde_json::from_slice(&bytes).map_err(|_| OlmError::Pickle)?;
            olm.sessions.insert(
                peer,
                pickles.into_iter().map(Session::from_pickle).collect(),
            );
        }
        Ok(olm)
    }

    /// The sessions with `peer`, pickled (to store after every use; secret).
    pub fn sessions_pickle(&self, peer: &[u8; 32]) -> Vec<u8> {
        let pickles: Vec<SessionPickle> = self
            .sessions
            .get(peer)
            .map(|v| v.iter().map(Session::pickle).collect())
            .unwrap_or_default();
        serde_json::to_vec(&pickles).unwrap_or_default()
    }

    /// Whether the session that sends to `peer` has heard from it (so `peer` knows this
    /// device).
    pub fn heard_from(&self, peer: &[u8; 32]) -> bool {
        self.sessions
            .get(peer)
            .and_then(|v| v.first())
            .is_some_and(Session::has_received_message)
    }

    /// Forgets the sessions with `peer` (a revoked device).
    pub fn forget(&mut self, peer: &[u8; 32]) {
        self.sessions.remove(peer);
    }

    /// Encrypts for the device `peer`, opening a session with its fallback key if there is
    /// none: (message type, bytes).
    pub fn encrypt(
        &mut self,
        peer: &DeviceEntry,
        plaintext: &[u8],
    ) -> Result<(u8, Vec<u8>), OlmError> {
        let sessions = self.sessions.entry(peer.node_key).or_default();
        if sessions.is_empty() {
            let curve = Curve25519PublicKey::from_bytes(peer.curve);
            let fallback = Curve25519PublicKey::from_bytes(peer.fallback);
            let s = self
                .account
                .create_outbound_session(SessionConfig::version_1(), curve, fallback)
                .map_err(|_| OlmError::BadKey)?;
            sessions.push(s);
        }
        let m = sessions[0]
            .encrypt(plaintext)
            .map_err(|_| OlmError::BadKey)?;
        let (t, bytes) = m.to_parts();
        Ok((t as u8, bytes))
    }

    /// Decrypts a message of the device `peer` (whose Olm identity key must be the one its
    /// device entry lists).
    pub fn decrypt(
        &mut self,
        peer: &DeviceEntry,
        message_type: u8,
        bytes: &[u8],
    ) -> Result<Vec<u8>, OlmError> {
        let m = OlmMessage::from_parts(usize::from(message_type), bytes)
            .map_err(|_| OlmError::Malformed)?;
        let sessions = self.sessions.entry(peer.node_key).or_default();
        if let OlmMessage::PreKey(pre) = &m {
            if pre.identity_key().to_bytes() != peer.curve {
                return Err(OlmError::Undecryptable);
            }
            if let Some(i) = sessions
                .iter()
                .position(|s| s.session_id() == pre.session_id())
            {
                let plain = sessions[i]
                    .decrypt(&m)
                    .map_err(|_| OlmError::Undecryptable)?;
                let s = sessions.remove(i);
                sessions.insert(0, s);
                return Ok(plain);
            }
            let created = self
                .account
                .create_inbound_session(
                    SessionConfig::version_1(),
                    Curve25519PublicKey::from_bytes(peer.curve),
                    pre,
                )
                .map_err(|_| OlmError::Undecryptable)?;
            sessions.insert(0, created.session);
            sessions.truncate(MAX_SESSIONS);
            return Ok(created.plaintext);
        }
        for i in 0..sessions.len() {
            if let Ok(plain) = sessions[i].decrypt(&m) {
                let s = sessions.remove(i);
                sessions.insert(0, s);
                return Ok(plain);
            }
        }
        Err(OlmError::Undecryptable)
    }
}

/// The sender's Olm identity key, when `bytes` are a pre-key message (the first of a
/// session): what a message from a device not yet known is checked against.
pub fn prekey_identity(message_type: u8, bytes: &[u8]) -> Option<[u8; 32]> {
    match OlmMessage::from_parts(usize::from(message_type), bytes).ok()? {
        OlmMessage::PreKey(pre) => Some(pre.identity_key().to_bytes()),
        OlmMessage::Normal(_) => None,
    }
}

impl Default for Olm {
    fn default() -> Self {
        Olm::new()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn entry(olm: &Olm, i: u8) -> DeviceEntry {
        DeviceEntry {
            node_key: [i; 32],
            curve: olm.curve(),
            fallback: olm.fallback(),
            signing: olm.signing(),
            name: String::new(),
            added: 0,
        }
    }

    #[test]
    fn sessions_open_both_ways_and_survive_pickling() {
        let (mut a, mut b) = (Olm::new(), Olm::new());
        let (ea, eb) = (entry(&a, 1), entry(&b, 2));
        let (t, c) = a.encrypt(&eb, b"hello").unwrap();
        assert_eq!(b.decrypt(&ea, t, &c).unwrap(), b"hello");
        let (t, c) = b.encrypt(&ea, b"back").unwrap();
        assert_eq!(a.decrypt(&eb, t, &c).unwrap(), b"back");
        // pickled and restored, both go on
        let a2 = Olm::restore(
            &a.account_pickle(),
            [(eb.node_key, a.sessions_pickle(&eb.node_key))],
        );
        let mut a = a2.unwrap();
        let (t, c) = a.encrypt(&eb, b"again").unwrap();
        assert_eq!(b.decrypt(&ea, t, &c).unwrap(), b"again");
        // a replay does not open
        assert_eq!(b.decrypt(&ea, t, &c), Err(OlmError::Undecryptable));
    }

    #[test]
    fn both_ends_opening_at_once_still_talk() {
        let (mut a, mut b) = (Olm::new(), Olm::new());
        let (ea, eb) = (entry(&a, 1), entry(&b, 2));
        let (ta, ca) = a.encrypt(&eb, b"from a").unwrap();
        let (tb, cb) = b.encrypt(&ea, b"from b").unwrap();
        assert_eq!(b.decrypt(&ea, ta, &ca).unwrap(), b"from a");
        assert_eq!(a.decrypt(&eb, tb, &cb).unwrap(), b"from b");
        for k in 0..4 {
            let (t, c) = a.encrypt(&eb, &[k]).unwrap();
            assert_eq!(b.decrypt(&ea, t, &c).unwrap(), [k]);
            let (t, c) = b.encrypt(&ea, &[k + 10]).unwrap();
            assert_eq!(a.decrypt(&eb, t, &c).unwrap(), [k + 10]);
        }
    }

    #[test]
    fn a_prekey_message_under_another_identity_is_refused() {
        let (mut a, mut b, c) = (Olm::new(), Olm::new(), Olm::new());
        let eb = entry(&b, 2);
        let (t, m) = a.encrypt(&eb, b"hi").unwrap();
        // b believes the sender is c's device
        assert_eq!(
            b.decrypt(&entry(&c, 1), t, &m),
            Err(OlmError::Undecryptable)
        );
    }
}
