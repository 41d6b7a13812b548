//! The JSON rendering of a consensus, for people (the signed form is the binary encoding),
//! and hex helpers for configuration files.

use serde::Serialize;

use crate::consensus::{Consensus, NetworkParams};
use crate::descriptor::hex;

#[derive(Serialize)]
struct NodeJson {
    node_id: String,
    identity: String,
    addresses: Vec<String>,
    bandwidth: u32,
    mix: bool,
    services: Vec<String>,
    mix_key: String,
    next_mix_key: Option<String>,
}

#[derive(Serialize)]
struct ConsensusJson<'a> {
    epoch: u64,
    valid_after: u64,
    valid_until: u64,
    params: &'a NetworkParams,
    nodes: Vec<NodeJson>,
}

impl Consensus {
    /// A pretty JSON rendering (keys and IDs in hex).
    pub fn to_json(&self) -> String {
        let doc = ConsensusJson {
            epoch: self.epoch,
            valid_after: self.valid_after,
            valid_until: self.valid_until,
            params: &self.params,
            nodes: self
                .nodes
                .iter()
                .map(|n| NodeJson {
                    node_id: hex(&n.id()),
                    identity: hex(&n.identity.0),
                    addresses: n.addresses.iter().map(|a| a.to_string()).collect(),
                    bandwidth: n.bandwidth,
                    mix: n.roles.mix,
                    services: n.roles.services.clone(),
                    mix_key: hex(&n.mix_key),
                    next_mix_key: n.next_mix_key.map(|k| hex(&k)),
                })
                .collect(),
        };
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    }
}

/// Parses 64 hex digits into 32 bytes.
pub fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Serde as 64 lowercase hex digits, for identity keys in configuration files.
pub mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::descriptor::{IdentityKey, hex};

    /// Serializes as hex.
    pub fn serialize<S: Serializer>(key: &IdentityKey, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex(&key.0))
    }

    /// Deserializes from hex, with a clear error.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IdentityKey, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_hex32(&s)
            .map(IdentityKey)
            .ok_or_else(|| serde::de::Error::custom("expected 64 hex digits (a 32-byte key)"))
    }
}
