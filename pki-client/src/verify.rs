//! Verification as typestates, after arti's `tor-checkable`: a consensus read from the
//! network is an [`UnverifiedConsensus`]; checking its signatures against the configured
//! authorities gives a [`SignatureChecked`] (which may be stored, e.g. fetched ahead of its
//! epoch); checking its validity window against a wall-clock time gives a
//! [`VerifiedConsensus`]. Only the last exposes the node list.

use crate::consensus::{Consensus, ConsensusNode, NetworkParams, SignedConsensus};
use crate::descriptor::IdentityKey;
use crate::encoding::DecodeError;

/// The authorities a client trusts: a consensus needs signatures from a majority of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthoritySet {
    keys: Vec<IdentityKey>,
}

impl AuthoritySet {
    /// The set of these keys (repeats count once). Needs at least one.
    pub fn new(keys: impl IntoIterator<Item = IdentityKey>) -> Option<Self> {
        let mut keys: Vec<IdentityKey> = keys.into_iter().collect();
        keys.sort();
        keys.dedup();
        (!keys.is_empty()).then_some(AuthoritySet { keys })
    }

    /// The set of `key` and `others` (never empty).
    pub fn including(key: IdentityKey, others: impl IntoIterator<Item = IdentityKey>) -> Self {
        let mut keys: Vec<IdentityKey> = others.into_iter().chain([key]).collect();
        keys.sort();
        keys.dedup();
        AuthoritySet { keys }
    }

    /// How many signatures a consensus needs: a majority, n / 2 + 1.
    pub fn majority(&self) -> usize {
        self.keys.len() / 2 + 1
    }

    /// The keys.
    pub fn keys(&self) -> &[IdentityKey] {
        &self.keys
    }

    /// Whether `key` is one of them.
    pub fn contains(&self, key: &IdentityKey) -> bool {
        self.keys.binary_search(key).is_ok()
    }
}

/// Why a consensus was refused. Each says what was wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The bytes do not decode.
    #[error("malformed consensus: {0}")]
    Malformed(#[from] DecodeError),
    /// Fewer valid signatures of distinct configured authorities than a majority.
    #[error(
        "not enough signatures: {valid} valid of the {needed} needed ({invalid} do not verify: altered after signing?; {unknown} from authorities not configured)"
    )]
    NotEnoughSignatures {
        /// Valid signatures by distinct configured authorities.
        valid: usize,
        /// The majority needed.
        needed: usize,
        /// Signatures by configured authorities that do not verify over this content.
        invalid: usize,
        /// Signatures by keys that are not configured authorities.
        unknown: usize,
    },
    /// Checked before its validity window opens (with the skew tolerance).
    #[error("not yet valid: valid after {valid_after}, now {now} (unix seconds)")]
    NotYetValid {
        /// Start of the window.
        valid_after: u64,
        /// The time checked.
        now: u64,
    },
    /// Checked after its validity window closed (with the skew tolerance).
    #[error("expired: valid until {valid_until}, now {now} (unix seconds)")]
    Expired {
        /// End of the window.
        valid_until: u64,
        /// The time checked.
        now: u64,
    },
}

/// A consensus as received, nothing checked yet but its encoding.
#[derive(Clone, Debug)]
pub struct UnverifiedConsensus {
    signed: SignedConsensus,
}

/// A consensus whose signatures are checked; its validity window is not.
#[derive(Clone, Debug)]
pub struct SignatureChecked {
    signed: SignedConsensus,
    consensus: Consensus,
    signed_by: Vec<IdentityKey>,
}

/// A consensus checked in full: signatures by a majority, and valid at the time given.
#[derive(Clone, Debug)]
pub struct VerifiedConsensus {
    consensus: Consensus,
    signed_by: Vec<IdentityKey>,
}

impl UnverifiedConsensus {
    /// Reads the wire form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, VerifyError> {
        Ok(UnverifiedConsensus {
            signed: SignedConsensus::from_bytes(bytes)?,
        })
    }

    /// Wraps a signed consensus from elsewhere.
    pub fn new(signed: SignedConsensus) -> Self {
        UnverifiedConsensus { signed }
    }

    /// Checks that a majority of `authorities` signed exactly this content.
    pub fn check_signatures(
        self,
        authorities: &AuthoritySet,
    ) -> Result<SignatureChecked, VerifyError> {
        let (mut signed_by, mut invalid, mut unknown) = (Vec::new(), 0, 0);
        for s in &self.signed.signatures {
            if !authorities.contains(&s.authority) {
                unknown += 1;
            } else if signed_by.contains(&s.authority) {
                // a repeated authority counts once
            } else if s.verifies(&self.signed.body) {
                signed_by.push(s.authority);
            } else {
                invalid += 1;
            }
        }
        if signed_by.len() < authorities.majority() {
            return Err(VerifyError::NotEnoughSignatures {
                valid: signed_by.len(),
                needed: authorities.majority(),
                invalid,
                unknown,
            });
        }
        let consensus = Consensus::decode(&self.signed.body)?;
        Ok(SignatureChecked {
            signed: self.signed,
            consensus,
            signed_by,
        })
    }
}

impl SignatureChecked {
    /// The epoch it is for (safe to read before the validity check: it is signed).
    pub fn epoch(&self) -> u64 {
        self.consensus.epoch
    }

    /// The validity window, unix seconds.
    pub fn validity(&self) -> (u64, u64) {
        (self.consensus.valid_after, self.consensus.valid_until)
    }

    /// The wire form, to cache.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.signed.to_bytes()
    }

    /// Checks the validity window against unix time `now`, allowing `skew` seconds of clock
    /// difference either way.
    pub fn check_valid_at(self, now: u64, skew: u64) -> Result<VerifiedConsensus, VerifyError> {
        let (after, until) = self.validity();
        if now.saturating_add(skew) < after {
            return Err(VerifyError::NotYetValid {
                valid_after: after,
                now,
            });
        }
        if now.saturating_sub(skew) > until {
            return Err(VerifyError::Expired {
                valid_until: until,
                now,
            });
        }
        Ok(VerifiedConsensus {
            consensus: self.consensus,
            signed_by: self.signed_by,
        })
    }
}

impl VerifiedConsensus {
    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.consensus.epoch
    }

    /// The network parameters.
    pub fn params(&self) -> &NetworkParams {
        &self.consensus.params
    }

    /// The nodes, sorted by node ID.
    pub fn nodes(&self) -> &[ConsensusNode] {
        &self.consensus.nodes
    }

    /// The node with this ID.
    pub fn node(&self, id: &[u8; 32]) -> Option<&ConsensusNode> {
        self.consensus
            .nodes
            .binary_search_by(|n| n.id().cmp(id))
            .ok()
            .and_then(|i| self.consensus.nodes.get(i))
    }

    /// This consensus carried into the next epoch, for when the authorities publish none
    /// for it (an outage): every node that listed a mix key for the next epoch, under that
    /// key, valid through the next epoch. Every node derives the same document from the
    /// same consensus, so mix keys still rotate on schedule, network-wide. `None` when no
    /// node listed a next key (a carried consensus lists none: it is carried once).
    pub fn carried_forward(&self) -> Option<VerifiedConsensus> {
        let c = &self.consensus;
        let nodes: Vec<ConsensusNode> = c
            .nodes
            .iter()
            .filter_map(|n| {
                n.next_mix_key.map(|key| {
                    ConsensusNode::new(
                        n.identity,
                        n.addresses.clone(),
                        n.bandwidth,
                        n.roles.clone(),
                        key,
                        None,
                    )
                })
            })
            .collect();
        if nodes.is_empty() {
            return None;
        }
        let epoch = c.epoch.checked_add(1)?;
        Some(VerifiedConsensus {
            consensus: Consensus {
                epoch,
                valid_after: c.params.epoch_start(epoch),
                valid_until: c.valid_until.saturating_add(c.params.epoch_seconds),
                params: c.params,
                nodes,
            },
            signed_by: self.signed_by.clone(),
        })
    }

    /// The authorities whose valid signatures it carries.
    pub fn signed_by(&self) -> &[IdentityKey] {
        &self.signed_by
    }

    /// The whole document.
    pub fn consensus(&self) -> &Consensus {
        &self.consensus
    }
}
