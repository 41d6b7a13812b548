//! Who a user is: a long-term Ed25519 **identity key**, and a signed, versioned **device
//! list** that certifies each of the user's devices (its node's identity key, which is its
//! address and its authenticated sender identity on the mixnet, and its Olm keys). Contacts
//! verify the list against the identity key and never accept an older version. Also the
//! codes people copy by hand: a **contact code** (the signed device list), a **link code**
//! (shown by the primary device to link a new one), and **safety numbers** to compare.

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256, Sha512};

use crate::codec::{Malformed, Reader, Writer, base32, unbase32};

/// A user's public identity key (Ed25519).
pub type UserKey = [u8; 32];

/// Devices a list holds at most.
pub const MAX_DEVICES: usize = 16;
/// Bytes of a device name at most.
pub const MAX_NAME: usize = 32;

const LIST_VERSION: u8 = 1;
const LIST_CONTEXT: &[u8] = b"mixed-chat-v1 device-list";
const CONTACT_PREFIX: &str = "mixed-contact-1:";
const LINK_PREFIX: &str = "mixed-link-1:";

/// What was wrong with an identity, a device list or a code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Bytes that do not parse.
    #[error(transparent)]
    Malformed(#[from] Malformed),
    /// The signature does not verify under the identity key: the list was altered, or is
    /// not the user's.
    #[error(
        "the device list's signature does not verify: it was tampered with or is not this user's"
    )]
    BadSignature,
    /// An older (or the same, altered) version than the one already known: a rollback.
    #[error("device list version {got} is not newer than the known version {known}")]
    Rollback {
        /// The version offered.
        got: u64,
        /// The version known.
        known: u64,
    },
    /// No devices, too many, or one listed twice.
    #[error("a device list needs 1 to {MAX_DEVICES} distinct devices")]
    Devices,
    /// A code that is not one (wrong prefix, a typo: the checksum failed).
    #[error("not a {0} code (check that it was copied whole; a typo fails its checksum)")]
    Code(&'static str),
}

/// The user's secret identity key: held by the primary device only (it signs device lists,
/// so it links and revokes devices).
#[derive(Clone)]
pub struct UserSecret(SigningKey);

impl std::fmt::Debug for UserSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("UserSecret").field(&self.public()).finish()
    }
}

impl UserSecret {
    /// A new identity from 32 random bytes.
    pub fn from_seed(seed: [u8; 32]) -> UserSecret {
        UserSecret(SigningKey::from_bytes(&seed))
    }

    /// The seed (to store; handle with care).
    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public identity key.
    pub fn public(&self) -> UserKey {
        self.0.verifying_key().to_bytes()
    }

    /// Signs `list` (its `user` must be this identity's).
    pub fn sign(&self, list: DeviceList) -> Result<SignedDeviceList, IdentityError> {
        list.check()?;
        let body = list.encode_body();
        let mut msg = LIST_CONTEXT.to_vec();
        msg.extend_from_slice(&body);
        let signature = ed25519_dalek::Signer::sign(&self.0, &msg).to_bytes();
        let mut bytes = body;
        bytes.extend_from_slice(&signature);
        SignedDeviceList::verify(&bytes)
    }
}

/// One device of a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceEntry {
    /// The device's node identity key (Ed25519): where messages to the device go (its node
    /// ID is the key's hash) and the sender identity its node reveals.
    pub node_key: [u8; 32],
    /// Its Olm identity key (Curve25519).
    pub curve: [u8; 32],
    /// Its Olm fallback key (Curve25519): others open sessions with it, no server needed.
    pub fallback: [u8; 32],
    /// Its Olm signing key (Ed25519).
    pub signing: [u8; 32],
    /// A name its user gave it (at most [`MAX_NAME`] bytes).
    pub name: String,
    /// When it was linked (unix seconds).
    pub added: u64,
}

impl DeviceEntry {
    pub(crate) fn encode(&self, w: &mut Writer) {
        w.bytes(&self.node_key)
            .bytes(&self.curve)
            .bytes(&self.fallback)
            .bytes(&self.signing)
            .u64(self.added)
            .short(truncate(&self.name).as_bytes());
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<DeviceEntry, Malformed> {
        Ok(DeviceEntry {
            node_key: r.arr()?,
            curve: r.arr()?,
            fallback: r.arr()?,
            signing: r.arr()?,
            added: r.u64()?,
            name: r.string()?,
        })
    }

    /// Its encoding alone (what a link request carries).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        self.encode(&mut w);
        w.0
    }

    /// From [`Self::to_bytes`].
    pub fn from_bytes(b: &[u8]) -> Result<DeviceEntry, Malformed> {
        let mut r = Reader::new(b, "device entry");
        let e = DeviceEntry::decode(&mut r)?;
        r.end()?;
        Ok(e)
    }
}

fn truncate(name: &str) -> &str {
    let mut end = name.len().min(MAX_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// A user's devices at one version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceList {
    /// Whose.
    pub user: UserKey,
    /// Increases with every change; contacts refuse anything not newer than what they hold.
    pub version: u64,
    /// The devices.
    pub devices: Vec<DeviceEntry>,
}

impl DeviceList {
    fn check(&self) -> Result<(), IdentityError> {
        let n = self.devices.len();
        let mut keys: Vec<[u8; 32]> = self.devices.iter().map(|d| d.node_key).collect();
        keys.sort_unstable();
        keys.dedup();
        if n == 0 || n > MAX_DEVICES || keys.len() != n {
            return Err(IdentityError::Devices);
        }
        Ok(())
    }

    fn encode_body(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(LIST_VERSION)
            .bytes(&self.user)
            .u64(self.version)
            .u8(self.devices.len() as u8);
        for d in &self.devices {
            d.encode(&mut w);
        }
        w.0
    }

    /// The device whose node key is `node_key`.
    pub fn device(&self, node_key: &[u8; 32]) -> Option<&DeviceEntry> {
        self.devices.iter().find(|d| d.node_key == *node_key)
    }
}

/// A device list whose signature verified under its user's identity key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedDeviceList {
    list: DeviceList,
    bytes: Vec<u8>,
}

impl SignedDeviceList {
    /// Parses and verifies an encoded list (body, then the 64-byte signature).
    pub fn verify(bytes: &[u8]) -> Result<SignedDeviceList, IdentityError> {
        let mut r = Reader::new(bytes, "device list");
        if r.u8()? != LIST_VERSION {
            return Err(Malformed("device list").into());
        }
        let user: UserKey = r.arr()?;
        let version = r.u64()?;
        let n = usize::from(r.u8()?);
        if n == 0 || n > MAX_DEVICES {
            return Err(IdentityError::Devices);
        }
        let mut devices = Vec::with_capacity(n);
        for _ in 0..n {
            devices.push(DeviceEntry::decode(&mut r)?);
        }
        let signature: [u8; 64] = r.arr()?;
        r.end()?;
        let list = DeviceList {
            user,
            version,
            devices,
        };
        list.check()?;
        let key = VerifyingKey::from_bytes(&user).map_err(|_| IdentityError::BadSignature)?;
        let mut msg = LIST_CONTEXT.to_vec();
        msg.extend_from_slice(&bytes[..bytes.len() - 64]);
        key.verify_strict(&msg, &Signature::from_bytes(&signature))
            .map_err(|_| IdentityError::BadSignature)?;
        Ok(SignedDeviceList {
            list,
            bytes: bytes.to_vec(),
        })
    }

    /// The list.
    pub fn list(&self) -> &DeviceList {
        &self.list
    }

    /// Its encoding, signature included.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// `self` as the newer version of `known` (the same user, a higher version), or why not.
    pub fn supersedes(&self, known: &SignedDeviceList) -> Result<(), IdentityError> {
        if self.list.user != known.list.user {
            return Err(IdentityError::BadSignature);
        }
        if self.list.version <= known.list.version {
            return Err(IdentityError::Rollback {
                got: self.list.version,
                known: known.list.version,
            });
        }
        Ok(())
    }

    /// The contact code: what a user gives others so they can write to them.
    pub fn contact_code(&self) -> String {
        format!("{CONTACT_PREFIX}{}", base32(&checked(&self.bytes)))
    }

    /// Reads a contact code.
    pub fn from_contact_code(code: &str) -> Result<SignedDeviceList, IdentityError> {
        let body = code
            .trim()
            .strip_prefix(CONTACT_PREFIX)
            .and_then(unbase32)
            .and_then(|b| unchecked(&b))
            .ok_or(IdentityError::Code("contact"))?;
        SignedDeviceList::verify(&body)
    }
}

/// `b` and 4 bytes of its SHA-256: a typo fails.
fn checked(b: &[u8]) -> Vec<u8> {
    let mut out = b.to_vec();
    out.extend_from_slice(&Sha256::digest(b)[..4]);
    out
}

fn unchecked(b: &[u8]) -> Option<Vec<u8>> {
    let (body, sum) = b.split_at(b.len().checked_sub(4)?);
    (Sha256::digest(body)[..4] == *sum).then(|| body.to_vec())
}

/// What the primary device shows to link a new one: its node key (where the new device
/// asks) and a one-time secret (which proves the new device was shown the code and keys the
/// answer).
#[derive(Clone, PartialEq, Eq)]
pub struct LinkCode {
    /// The primary device's node key.
    pub node_key: [u8; 32],
    /// The one-time secret.
    pub secret: [u8; 16],
}

impl std::fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkCode").finish_non_exhaustive()
    }
}

impl LinkCode {
    /// The string to show.
    pub fn encode(&self) -> String {
        let mut b = self.node_key.to_vec();
        b.extend_from_slice(&self.secret);
        format!("{LINK_PREFIX}{}", base32(&checked(&b)))
    }

    /// Reads one.
    pub fn decode(code: &str) -> Result<LinkCode, IdentityError> {
        let b = code
            .trim()
            .strip_prefix(LINK_PREFIX)
            .and_then(unbase32)
            .and_then(|b| unchecked(&b))
            .filter(|b| b.len() == 48)
            .ok_or(IdentityError::Code("link"))?;
        let mut node_key = [0u8; 32];
        node_key.copy_from_slice(&b[..32]);
        let mut secret = [0u8; 16];
        secret.copy_from_slice(&b[32..]);
        Ok(LinkCode { node_key, secret })
    }
}

/// The 30 digits of one identity key: 5,200 rounds of SHA-512 (as Signal's safety numbers),
/// then six 5-byte chunks, each mod 100,000.
fn fingerprint(key: &UserKey) -> String {
    let mut h = Sha512::new()
        .chain_update([0u8, 0])
        .chain_update(b"mixed-chat-v1 safety")
        .chain_update(key)
        .finalize();
    for _ in 0..5200 {
        h = Sha512::new().chain_update(h).chain_update(key).finalize();
    }
    (0..6)
        .map(|i| {
            let c = &h[i * 5..i * 5 + 5];
            let v = c.iter().fold(0u64, |a, &b| (a << 8) | u64::from(b));
            format!("{:05}", v % 100_000)
        })
        .collect()
}

/// The safety number of two users: 60 digits, the same on both sides (the two fingerprints
/// in order), shown in twelve groups of five. Equal numbers on both screens mean no one sits
/// between them.
pub fn safety_number(a: &UserKey, b: &UserKey) -> String {
    let (mut x, mut y) = (fingerprint(a), fingerprint(b));
    if x > y {
        std::mem::swap(&mut x, &mut y);
    }
    let digits = x + &y;
    digits
        .as_bytes()
        .chunks(5)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    pub(crate) fn entry(i: u8) -> DeviceEntry {
        DeviceEntry {
            node_key: [i; 32],
            curve: [i + 1; 32],
            fallback: [i + 2; 32],
            signing: [i + 3; 32],
            name: format!("device {i}"),
            added: 1_700_000_000,
        }
    }

    #[test]
    fn a_signed_list_verifies_and_any_change_to_it_does_not() {
        let me = UserSecret::from_seed([9; 32]);
        let list = me
            .sign(DeviceList {
                user: me.public(),
                version: 1,
                devices: vec![entry(1), entry(50)],
            })
            .unwrap();
        assert_eq!(SignedDeviceList::verify(list.bytes()).unwrap(), list);
        for i in 0..list.bytes().len() {
            let mut b = list.bytes().to_vec();
            b[i] ^= 0x04;
            assert!(SignedDeviceList::verify(&b).is_err(), "byte {i}");
        }
        // another identity's signature
        let other = UserSecret::from_seed([8; 32]);
        let mut forged = other
            .sign(DeviceList {
                user: other.public(),
                version: 2,
                devices: vec![entry(1)],
            })
            .unwrap()
            .bytes()
            .to_vec();
        forged[1..33].copy_from_slice(&me.public());
        assert_eq!(
            SignedDeviceList::verify(&forged),
            Err(IdentityError::BadSignature)
        );
    }

    #[test]
    fn rollbacks_empty_and_duplicate_lists_are_refused() {
        let me = UserSecret::from_seed([9; 32]);
        let sign = |v, d| {
            me.sign(DeviceList {
                user: me.public(),
                version: v,
                devices: d,
            })
        };
        let v1 = sign(1, vec![entry(1)]).unwrap();
        let v2 = sign(2, vec![entry(1), entry(2)]).unwrap();
        assert!(v2.supersedes(&v1).is_ok());
        assert_eq!(
            v1.supersedes(&v2),
            Err(IdentityError::Rollback { got: 1, known: 2 })
        );
        assert_eq!(sign(3, vec![]), Err(IdentityError::Devices));
        assert_eq!(
            sign(3, vec![entry(1), entry(1)]),
            Err(IdentityError::Devices)
        );
    }

    #[test]
    fn codes_round_trip_and_typos_are_caught() {
        let me = UserSecret::from_seed([9; 32]);
        let list = me
            .sign(DeviceList {
                user: me.public(),
                version: 1,
                devices: vec![entry(1)],
            })
            .unwrap();
        let code = list.contact_code();
        assert_eq!(SignedDeviceList::from_contact_code(&code).unwrap(), list);
        let mut typo = code.clone().into_bytes();
        let at = typo.len() - 10;
        typo[at] = if typo[at] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            SignedDeviceList::from_contact_code(std::str::from_utf8(&typo).unwrap()),
            Err(IdentityError::Code("contact"))
        );
        assert!(SignedDeviceList::from_contact_code("hello").is_err());
        let link = LinkCode {
            node_key: [3; 32],
            secret: [4; 16],
        };
        assert_eq!(LinkCode::decode(&link.encode()).unwrap(), link);
        assert!(LinkCode::decode(&code).is_err());
    }

    #[test]
    fn both_sides_see_the_same_safety_number_and_others_see_another() {
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let n = safety_number(&a, &b);
        assert_eq!(n, safety_number(&b, &a));
        assert_ne!(n, safety_number(&a, &c));
        assert_eq!(n.replace(' ', "").len(), 60);
        assert!(n.replace(' ', "").bytes().all(|d| d.is_ascii_digit()));
    }
}
