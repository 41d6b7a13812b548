//! What a packet is addressed with: node IDs, mix keys, destinations, delays, versions.

use zeroize::{Zeroize, ZeroizeOnDrop};

use super::geometry::{DESTINATION_LEN, IDENTIFIER_LEN, NODE_ID_LEN};
use super::primitives::x25519_base;

/// The 32-byte ID of a node: the hash of its identity key, resolved to IP and port through
/// the consensus document. It is what a header names as the next hop.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; NODE_ID_LEN]);

impl core::fmt::Debug for NodeId {
    /// Only the first four bytes: logs must not carry routing metadata in full.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "NodeId({:02x}{:02x}{:02x}{:02x}..)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// A node's X25519 mix public key for one epoch.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct MixPublicKey(pub [u8; 32]);

/// A node's X25519 mix secret key for one epoch. Clamped when used, as RFC 7748 says; erased
/// when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MixSecretKey([u8; 32]);

impl MixSecretKey {
    /// A key from 32 secret bytes (clamping happens at use, so any bytes will do).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A fresh key from `rng`.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// The secret bytes (for storing the key; handle with care).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The matching public key: X25519(secret, 9).
    pub fn public_key(&self) -> MixPublicKey {
        MixPublicKey(x25519_base(&self.0))
    }
}

impl core::fmt::Debug for MixSecretKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("MixSecretKey(<redacted>)")
    }
}

/// One hop of a route: the node's ID (written into the previous hop's routing information)
/// and its mix public key for the packet's epoch.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Hop {
    /// The node's ID.
    pub id: NodeId,
    /// The node's mix public key.
    pub key: MixPublicKey,
}

/// Where the final hop delivers a packet: a 32-byte destination address (Sphinx's delta) and
/// a 16-byte identifier (Sphinx's I; for a SURB reply, what its creator looks the recovery
/// material up by).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Destination {
    /// The destination address.
    pub address: [u8; DESTINATION_LEN],
    /// The identifier.
    pub identifier: [u8; IDENTIFIER_LEN],
}

/// How long a hop holds a packet before forwarding it, chosen by the sender: nanoseconds,
/// encoded big-endian in 8 bytes. Senders draw it from Exp(lambda), mean 1/lambda (paper,
/// section 4).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Delay(u64);

impl Delay {
    /// A delay of `nanos` nanoseconds.
    pub const fn from_nanos(nanos: u64) -> Self {
        Self(nanos)
    }

    /// The delay in nanoseconds.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// The delay as a [`core::time::Duration`].
    pub const fn as_duration(self) -> core::time::Duration {
        core::time::Duration::from_nanos(self.0)
    }

    pub(crate) const fn to_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    pub(crate) const fn from_bytes(bytes: [u8; 8]) -> Self {
        Self(u64::from_be_bytes(bytes))
    }
}

/// The 32-byte replay tag of a packet at a hop (Sphinx's h_tau of the shared secret): the same
/// packet gives the same tag at the same node under the same key, so a node remembers the
/// tags of one key's epoch to drop replays.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplayTag(pub [u8; 32]);

impl core::fmt::Debug for ReplayTag {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ReplayTag(<redacted>)")
    }
}

/// The format version a header carries for each hop: three bytes, `[0, hi, lo]`.
///
/// Hop processing is the same for every version except how the payload key is found: the
/// legacy versions (1, 257, 258) use 192 bytes of the expanded secret directly, the others
/// expand a 16-byte seed with HKDF. Versions 259 and 260 differ only in what a SURB carries.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Version(pub u16);

impl Version {
    /// The first released format.
    pub const LEGACY_INITIAL: Self = Self(1);
    /// The second released format.
    pub const LEGACY_UPDATED: Self = Self(257);
    /// X25519 with explicit 192-byte payload keys.
    pub const EXPLICIT_PAYLOAD_KEYS: Self = Self(258);
    /// Payload keys expanded from 16-byte seeds; SURBs carry one seed per hop.
    pub const PAYLOAD_KEY_SEEDS: Self = Self(259);
    /// Like 259, but SURBs carry only the last hop's seed and only their creator can read
    /// a reply. What this crate builds.
    pub const SINGLE_SEED_SURB: Self = Self(260);
    /// The version this crate writes.
    pub const CURRENT: Self = Self::SINGLE_SEED_SURB;

    const KNOWN: [Self; 5] = [
        Self::LEGACY_INITIAL,
        Self::LEGACY_UPDATED,
        Self::EXPLICIT_PAYLOAD_KEYS,
        Self::PAYLOAD_KEY_SEEDS,
        Self::SINGLE_SEED_SURB,
    ];

    /// Whether the format knows this version.
    pub fn is_known(self) -> bool {
        Self::KNOWN.contains(&self)
    }

    /// Whether hops take the 192-byte payload key straight from the expanded secret.
    pub(crate) fn uses_full_payload_keys(self) -> bool {
        matches!(self.0, 1 | 257 | 258)
    }

    pub(crate) fn to_bytes(self) -> [u8; 3] {
        let [hi, lo] = self.0.to_be_bytes();
        [0, hi, lo]
    }

    /// The version of three header bytes, if it is one the format knows.
    pub(crate) fn parse(bytes: [u8; 3]) -> Option<Self> {
        let [zero, hi, lo] = bytes;
        let version = Self(u16::from_be_bytes([hi, lo]));
        (zero == 0 && version.is_known()).then_some(version)
    }
}

impl Default for Version {
    fn default() -> Self {
        Self::CURRENT
    }
}
