//! The per-hop key schedule: one X25519 shared secret expanded by HKDF-SHA256 into every
//! key a hop needs, in the byte order of `sphinx-packet` 0.8.

use zeroize::{Zeroize, ZeroizeOnDrop};

use super::primitives::{LIONESS_KEY_LEN, STREAM_KEY_LEN, hkdf_sha256};
use super::route::{ReplayTag, Version};

/// HKDF info of the shared-secret expansion (a legacy string, kept for compatibility).
const EXPAND_INFO: &[u8] =
    b"Dwste mou enan moxlo arketa makru kai ena upomoxlio gia na ton topothetisw kai tha kinisw thn gh.";
/// HKDF salt of the shared-secret expansion: empty, so that a hop can always read the version.
const EXPAND_SALT: &[u8] = b"";
/// HKDF info of the payload-key expansion.
const PAYLOAD_KEY_INFO: &[u8] = b"sphinx-payload-key-V01-CS01-HKDF:SHA256-INFO";
/// HKDF salt of the payload-key expansion.
const PAYLOAD_KEY_SALT: &[u8] = b"sphinx-payload-key-V01-CS01-HKDF:SHA256-SALT";

/// Length of a payload key seed.
pub(crate) const PAYLOAD_SEED_LEN: usize = 16;

const MAC_KEY_LEN: usize = 16;
const BLINDING_LEN: usize = 32;
const REPLAY_TAG_LEN: usize = 32;

/// Length of the expanded secret: 16 + 16 + 192 + 32 + 32 = 288 bytes.
pub(crate) const EXPANDED_LEN: usize =
    STREAM_KEY_LEN + MAC_KEY_LEN + LIONESS_KEY_LEN + BLINDING_LEN + REPLAY_TAG_LEN;

const MAC_KEY_AT: usize = STREAM_KEY_LEN;
const PAYLOAD_AT: usize = MAC_KEY_AT + MAC_KEY_LEN;
const BLINDING_AT: usize = PAYLOAD_AT + LIONESS_KEY_LEN;
const REPLAY_TAG_AT: usize = BLINDING_AT + BLINDING_LEN;

/// A 192-byte Lioness payload key.
pub(crate) type PayloadKey = [u8; LIONESS_KEY_LEN];
/// A 16-byte seed a payload key is expanded from.
pub(crate) type PayloadSeed = [u8; PAYLOAD_SEED_LEN];

/// Everything one hop derives from its shared secret s:
/// `HKDF-SHA256(salt = "", ikm = s, info = EXPAND_INFO)`, 288 bytes, split as
/// stream key (16) || MAC key (16) || legacy payload key (192, whose first 16 bytes are the
/// payload key seed) || blinding factor (32) || replay tag (32).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct HopKeys {
    expanded: [u8; EXPANDED_LEN],
}

impl HopKeys {
    /// All-zero keys, a placeholder for a fixed-size array of them.
    pub(crate) fn zeroed() -> Self {
        Self {
            expanded: [0u8; EXPANDED_LEN],
        }
    }

    /// Expands a 32-byte X25519 shared secret.
    pub(crate) fn from_shared_secret(shared_secret: &[u8; 32]) -> Self {
        let mut expanded = [0u8; EXPANDED_LEN];
        hkdf_sha256(EXPAND_SALT, shared_secret, EXPAND_INFO, &mut expanded);
        Self { expanded }
    }

    /// Sphinx's h_rho: the AES-128-CTR key of the routing information.
    pub(crate) fn stream_key(&self) -> [u8; STREAM_KEY_LEN] {
        let mut k = [0u8; STREAM_KEY_LEN];
        k.copy_from_slice(&self.expanded[..MAC_KEY_AT]);
        k
    }

    /// Sphinx's h_mu: the HMAC key of the routing information.
    pub(crate) fn mac_key(&self) -> [u8; MAC_KEY_LEN] {
        let mut k = [0u8; MAC_KEY_LEN];
        k.copy_from_slice(&self.expanded[MAC_KEY_AT..PAYLOAD_AT]);
        k
    }

    /// Sphinx's h_pi: the seed the payload key is expanded from.
    pub(crate) fn payload_seed(&self) -> PayloadSeed {
        let mut k = [0u8; PAYLOAD_SEED_LEN];
        k.copy_from_slice(&self.expanded[PAYLOAD_AT..PAYLOAD_AT + PAYLOAD_SEED_LEN]);
        k
    }

    /// The payload key a hop of `version` decrypts with.
    pub(crate) fn payload_key(&self, version: Version) -> PayloadKey {
        if version.uses_full_payload_keys() {
            let mut k = [0u8; LIONESS_KEY_LEN];
            k.copy_from_slice(&self.expanded[PAYLOAD_AT..BLINDING_AT]);
            k
        } else {
            payload_key_from_seed(&self.payload_seed())
        }
    }

    /// Sphinx's h_b: the scalar that re-blinds alpha for the next hop (clamped when used).
    pub(crate) fn blinding_factor(&self) -> [u8; BLINDING_LEN] {
        let mut k = [0u8; BLINDING_LEN];
        k.copy_from_slice(&self.expanded[BLINDING_AT..REPLAY_TAG_AT]);
        k
    }

    /// Sphinx's h_tau: the replay tag.
    pub(crate) fn replay_tag(&self) -> ReplayTag {
        let mut k = [0u8; REPLAY_TAG_LEN];
        k.copy_from_slice(&self.expanded[REPLAY_TAG_AT..]);
        ReplayTag(k)
    }
}

/// `HKDF-SHA256(salt = PAYLOAD_KEY_SALT, ikm = seed, info = PAYLOAD_KEY_INFO)`, 192 bytes.
pub(crate) fn payload_key_from_seed(seed: &PayloadSeed) -> PayloadKey {
    let mut key = [0u8; LIONESS_KEY_LEN];
    hkdf_sha256(PAYLOAD_KEY_SALT, seed, PAYLOAD_KEY_INFO, &mut key);
    key
}

const _: () = assert!(EXPANDED_LEN == 288);
