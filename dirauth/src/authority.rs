//! The authority's logic, without I/O but its database: registrations, votes, the consensus
//! of each epoch and the signatures over it. Time is passed in (unix seconds); the server
//! (`server.rs`) drives it and talks to the peers.
//!
//! The schedule of the consensus for epoch E, during epoch E - 1 (fractions of the epoch):
//! at 0.3 each authority votes (the descriptors it holds that cover E, not withdrawn) and
//! sends its vote to its peers; at 0.5 it computes the consensus from the votes it has (its
//! own and its peers'), signs it and sends its signature; from then on it serves the document
//! with every peer signature over the same content, once a majority signed it.

use std::collections::BTreeMap;

use pki_client::consensus::ConsensusSignature;
use pki_client::{
    AuthoritySet, Consensus, DescriptorError, IdentityKey, IdentitySecret, NetworkParams,
    SignedConsensus, SignedDescriptor, SignedWithdrawal, Vote, VoteError,
};

use crate::store::{Store, StoreError};

/// When, as a fraction of epoch E - 1, the authorities vote on epoch E.
pub const VOTE_AT: f64 = 0.3;
/// When they compute and sign the consensus of epoch E.
pub const CONSENSUS_AT: f64 = 0.5;
/// The latest an authority that came back in the middle of an epoch (after a crash or an
/// outage) votes, when its peers' votes have not all come: until then it waits for them and
/// adopts the registrations they carry, so its own outage never shrinks the consensus.
pub const LATE_VOTE_AT: f64 = 0.45;
/// Epochs after the one a registration is made in that it counts in the votes of.
pub const REGISTRATION_EPOCHS: u64 = 2;
/// How far ahead of this authority's clock a registration's time (its sequence) may be.
pub const MAX_SEQUENCE_AHEAD_SECONDS: u64 = 60;
/// Epochs of votes, documents and signatures kept.
pub const KEEP_EPOCHS: u64 = 8;

/// Why a submission was refused; each maps to an HTTP status in the server.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Its sequence (the unix time of the registration, in milliseconds) is ahead of this
    /// authority's clock: the node's clock is wrong.
    #[error(
        "registration time {at} (its sequence, unix ms / 1000) is ahead of this authority's clock {now}: fix the node's clock"
    )]
    FromTheFuture {
        /// The registration's time, unix seconds.
        at: u64,
        /// This authority's clock.
        now: u64,
    },
    /// The document does not decode or check.
    #[error(transparent)]
    Document(#[from] DescriptorError),
    /// Its mix keys all end before the current epoch.
    #[error("stale: its mix keys end at epoch {last}, before the current epoch {current}")]
    Stale {
        /// Last epoch it covers.
        last: u64,
        /// The current epoch.
        current: u64,
    },
    /// Its mix keys start too far ahead.
    #[error("too early: its mix keys start at epoch {first}, more than 4 epochs after {current}")]
    TooEarly {
        /// First epoch it covers.
        first: u64,
        /// The current epoch.
        current: u64,
    },
    /// Its sequence is not above what the authority holds: a replay or an old document.
    #[error("replayed or out of date: sequence {got} is not above {held}")]
    Replayed {
        /// The sequence sent.
        got: u64,
        /// The sequence held.
        held: u64,
    },
    /// A vote that does not check.
    #[error(transparent)]
    Vote(#[from] VoteError),
    /// A vote or signature from a key that is not a configured authority.
    #[error("not a configured authority")]
    UnknownAuthority,
    /// A vote for an epoch the authority is not voting on now.
    #[error("vote for epoch {got}, expected {expected}")]
    WrongEpoch {
        /// The epoch sent.
        got: u64,
        /// The epoch being voted on.
        expected: u64,
    },
    /// A signature that does not verify over the consensus this authority computed.
    #[error("signature does not match this authority's consensus for epoch {0}")]
    SignatureMismatch(u64),
    /// The state could not be persisted; nothing was accepted.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the authority knows about one epoch's consensus.
#[derive(Debug, Clone)]
struct EpochConsensus {
    consensus: Consensus,
    body: Vec<u8>,
    signatures: Vec<ConsensusSignature>,
}

/// A directory authority.
#[derive(Debug)]
pub struct Authority {
    secret: IdentitySecret,
    me: IdentityKey,
    set: AuthoritySet,
    params: NetworkParams,
    store: Store,
    descriptors: BTreeMap<IdentityKey, SignedDescriptor>,
    withdrawals: BTreeMap<IdentityKey, (u64, u64)>,
    votes: BTreeMap<(u64, IdentityKey), (Vote, Vec<u8>)>,
    consensus: BTreeMap<u64, EpochConsensus>,
    /// Signatures that came before this authority computed its consensus of their epoch.
    early_signatures: BTreeMap<u64, Vec<ConsensusSignature>>,
    /// Whether its database held anything when it opened: it ran before (a restart, or
    /// the end of an outage), not a new authority.
    ran_before: bool,
    /// The epoch of the first tick, when this authority ran before and came back in the
    /// middle of an epoch (not at its start): in that epoch it is catching up, and votes
    /// only once its peers have (or at [`LATE_VOTE_AT`]).
    catching_up_in: Option<Option<u64>>,
}

/// Something the server should send to the peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// This authority's signed vote.
    Vote(Vec<u8>),
    /// This authority's signature over a consensus: epoch and signature bytes.
    Signature(u64, [u8; 96]),
}

/// Counts for the status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// This authority's identity key, hex.
    pub identity: String,
    /// The current epoch.
    pub epoch: u64,
    /// The authority's clock, unix seconds (nodes measure their clock skew against it).
    pub now: u64,
    /// Descriptors held.
    pub descriptors: usize,
    /// Withdrawals held.
    pub withdrawals: usize,
    /// Epochs with a consensus, and how many valid signatures each has.
    pub consensus: Vec<(u64, usize)>,
}

impl Authority {
    /// An authority with its key, the configured set, the network parameters and its
    /// database, whose content is loaded.
    pub fn open(
        secret: IdentitySecret,
        set: AuthoritySet,
        params: NetworkParams,
        store: Store,
    ) -> Result<Self, StoreError> {
        let loaded = store.load()?;
        let mut a = Authority {
            me: secret.public(),
            secret,
            set,
            params,
            store,
            descriptors: BTreeMap::new(),
            withdrawals: BTreeMap::new(),
            votes: BTreeMap::new(),
            consensus: BTreeMap::new(),
            early_signatures: BTreeMap::new(),
            ran_before: !(loaded.descriptors.is_empty()
                && loaded.votes.is_empty()
                && loaded.consensus.is_empty()),
            catching_up_in: None,
        };
        for (_, bytes) in loaded.descriptors {
            if let Ok(d) = SignedDescriptor::from_bytes(&bytes) {
                a.descriptors.insert(d.descriptor().identity, d);
            }
        }
        for (id, seq, from) in loaded.withdrawals {
            a.withdrawals.insert(IdentityKey(id), (seq, from));
        }
        for (epoch, _, bytes) in loaded.votes {
            if let Ok(v) = Vote::from_signed_bytes(&bytes) {
                a.votes.insert((epoch, v.authority), (v, bytes));
            }
        }
        for (epoch, body) in loaded.consensus {
            if let Ok(consensus) = Consensus::decode(&body) {
                a.consensus.insert(
                    epoch,
                    EpochConsensus {
                        consensus,
                        body,
                        signatures: Vec::new(),
                    },
                );
            }
        }
        for (epoch, _, bytes) in loaded.signatures {
            if let Ok(sig) = ConsensusSignature::from_bytes(&bytes) {
                a.attach_signature(epoch, sig);
            }
        }
        Ok(a)
    }

    /// This authority's identity key.
    pub fn identity(&self) -> IdentityKey {
        self.me
    }

    /// The network parameters.
    pub fn params(&self) -> &NetworkParams {
        &self.params
    }

    /// The epoch at unix time `now`.
    pub fn epoch_at(&self, now: u64) -> u64 {
        self.params.epoch_at(now)
    }

    /// Accepts a node's signed descriptor: checked, not stale, newer than what is held;
    /// persisted before it counts.
    pub fn submit_descriptor(&mut self, bytes: &[u8], now: u64) -> Result<(), SubmitError> {
        let signed = SignedDescriptor::from_bytes(bytes)?;
        let at = signed.descriptor().sequence / 1000;
        if at > now + MAX_SEQUENCE_AHEAD_SECONDS {
            return Err(SubmitError::FromTheFuture { at, now });
        }
        self.take_descriptor(signed, self.epoch_at(now))
    }

    fn take_descriptor(
        &mut self,
        signed: SignedDescriptor,
        current: u64,
    ) -> Result<(), SubmitError> {
        let d = signed.descriptor();
        if d.mix_keys.last_epoch() < current {
            return Err(SubmitError::Stale {
                last: d.mix_keys.last_epoch(),
                current,
            });
        }
        if d.mix_keys.first_epoch > current + 4 {
            return Err(SubmitError::TooEarly {
                first: d.mix_keys.first_epoch,
                current,
            });
        }
        let held = self
            .descriptors
            .get(&d.identity)
            .map(|h| h.descriptor().sequence)
            .into_iter()
            .chain(self.withdrawals.get(&d.identity).map(|w| w.0))
            .max();
        if let Some(held) = held
            && d.sequence <= held
        {
            return Err(SubmitError::Replayed {
                got: d.sequence,
                held,
            });
        }
        self.store
            .put_descriptor(&d.identity.0, &signed.to_bytes())?;
        self.withdrawals.remove(&d.identity);
        self.descriptors.insert(d.identity, signed);
        Ok(())
    }

    /// Accepts a node's signed withdrawal: its sequence must exceed the descriptor's.
    pub fn submit_withdrawal(&mut self, bytes: &[u8]) -> Result<(), SubmitError> {
        let signed = SignedWithdrawal::from_bytes(bytes)?;
        let w = signed.withdrawal();
        let held = self
            .descriptors
            .get(&w.identity)
            .map(|h| h.descriptor().sequence)
            .into_iter()
            .chain(self.withdrawals.get(&w.identity).map(|x| x.0))
            .max();
        if let Some(held) = held
            && w.sequence <= held
        {
            return Err(SubmitError::Replayed {
                got: w.sequence,
                held,
            });
        }
        self.store
            .put_withdrawal(&w.identity.0, w.sequence, w.from_epoch)?;
        self.withdrawals
            .insert(w.identity, (w.sequence, w.from_epoch));
        Ok(())
    }

    /// The descriptors this authority would vote for in `epoch`: those with a mix key for
    /// it, not withdrawn, and registered recently: a descriptor's sequence is the unix time
    /// of its registration in milliseconds, and it counts in the votes of the
    /// [`REGISTRATION_EPOCHS`] epochs after the one it was made in. Nodes register every
    /// epoch, so a live node is always in; one registration missed (an outage) costs
    /// nothing; a node that crashed leaves the consensus two epochs later.
    fn vote_for(&self, epoch: u64) -> Vote {
        let descriptors = self
            .descriptors
            .values()
            .filter(|d| d.descriptor().mix_keys.for_epoch(epoch).is_some())
            .filter(|d| {
                let made = self.params.epoch_at(d.descriptor().sequence / 1000);
                made + REGISTRATION_EPOCHS >= epoch
            })
            .filter(|d| {
                self.withdrawals
                    .get(&d.descriptor().identity)
                    .is_none_or(|&(_, from)| epoch < from)
            })
            .cloned()
            .collect();
        Vote {
            authority: self.me,
            epoch,
            descriptors,
        }
    }

    /// This authority's signed vote for `epoch`, if it has voted.
    pub fn own_vote(&self, epoch: u64) -> Option<&[u8]> {
        self.votes
            .get(&(epoch, self.me))
            .map(|(_, bytes)| bytes.as_slice())
    }

    /// Accepts a peer's vote for the epoch being voted on at `now` (the first vote of each
    /// authority for an epoch counts).
    pub fn submit_vote(&mut self, bytes: &[u8], now: u64) -> Result<(), SubmitError> {
        let vote = Vote::from_signed_bytes(bytes)?;
        if !self.set.contains(&vote.authority) || vote.authority == self.me {
            return Err(SubmitError::UnknownAuthority);
        }
        let expected = self.epoch_at(now) + 1;
        if vote.epoch != expected {
            return Err(SubmitError::WrongEpoch {
                got: vote.epoch,
                expected,
            });
        }
        if self.votes.contains_key(&(vote.epoch, vote.authority)) {
            return Ok(());
        }
        self.store.put_vote(vote.epoch, &vote.authority.0, bytes)?;
        // a peer's vote carries the registrations it holds, each signed by its node: take
        // those this authority missed (while it was down), so its next vote has them too
        // (one older than what is held, or than a withdrawal, is refused as a replay)
        let current = self.epoch_at(now);
        for d in &vote.descriptors {
            let _ = self.take_descriptor(d.clone(), current);
        }
        self.votes
            .insert((vote.epoch, vote.authority), (vote, bytes.to_vec()));
        Ok(())
    }

    /// Accepts a peer's signature over the consensus of `epoch`.
    pub fn submit_signature(&mut self, epoch: u64, bytes: &[u8]) -> Result<(), SubmitError> {
        let sig = ConsensusSignature::from_bytes(bytes)
            .map_err(|e| SubmitError::Document(DescriptorError::Malformed(e)))?;
        if !self.set.contains(&sig.authority) {
            return Err(SubmitError::UnknownAuthority);
        }
        if let Some(c) = self.consensus.get(&epoch)
            && !sig.verifies(&c.body)
        {
            return Err(SubmitError::SignatureMismatch(epoch));
        }
        self.store.put_signature(epoch, &sig.authority.0, bytes)?;
        self.attach_signature(epoch, sig);
        Ok(())
    }

    fn attach_signature(&mut self, epoch: u64, sig: ConsensusSignature) {
        match self.consensus.get_mut(&epoch) {
            Some(c) => {
                if sig.verifies(&c.body)
                    && !c.signatures.iter().any(|s| s.authority == sig.authority)
                {
                    c.signatures.push(sig);
                }
            }
            None => self.early_signatures.entry(epoch).or_default().push(sig),
        }
    }

    /// This authority's own signature over the consensus of `epoch`.
    pub fn own_signature(&self, epoch: u64) -> Option<[u8; 96]> {
        self.consensus
            .get(&epoch)?
            .signatures
            .iter()
            .find(|s| s.authority == self.me)
            .map(ConsensusSignature::to_bytes)
    }

    /// How far into its epoch unix time `now_millis` (milliseconds) is, as a fraction.
    pub fn epoch_fraction(&self, now_millis: u64) -> f64 {
        let current = self.epoch_at(now_millis / 1000);
        let start_millis = self.params.epoch_start(current).saturating_mul(1000);
        now_millis.saturating_sub(start_millis) as f64
            / (self.params.epoch_seconds.max(1) * 1000) as f64
    }

    /// Does what the schedule says is due at `now_millis` (unix time, milliseconds): votes on
    /// the next epoch, then computes and signs its consensus, pruning old epochs. Returns
    /// what to send to the peers.
    pub fn tick(&mut self, now_millis: u64) -> Result<Vec<Outgoing>, StoreError> {
        let current = self.epoch_at(now_millis / 1000);
        let next = current + 1;
        let into = self.epoch_fraction(now_millis);
        let catching_up = *self
            .catching_up_in
            .get_or_insert((self.ran_before && into > 0.02).then_some(current))
            == Some(current);
        let mut out = Vec::new();
        if into >= VOTE_AT
            && !self.votes.contains_key(&(next, self.me))
            && (!catching_up || into >= LATE_VOTE_AT || self.has_all_peer_votes(next))
        {
            let vote = self.vote_for(next);
            let bytes = vote.sign(&self.secret);
            self.store.put_vote(next, &self.me.0, &bytes)?;
            self.votes.insert((next, self.me), (vote, bytes.clone()));
            out.push(Outgoing::Vote(bytes));
        }
        if into >= CONSENSUS_AT && !self.consensus.contains_key(&next) {
            let votes: Vec<&Vote> = self
                .votes
                .range((next, IdentityKey([0; 32]))..=(next, IdentityKey([0xff; 32])))
                .map(|(_, (v, _))| v)
                .collect();
            let consensus = Consensus::compute(next, self.params, &votes, self.set.majority());
            let body = consensus.encode();
            self.store.put_consensus(next, &body)?;
            let own = consensus.sign(&self.secret);
            self.store
                .put_signature(next, &self.me.0, &own.to_bytes())?;
            self.consensus.insert(
                next,
                EpochConsensus {
                    consensus,
                    body,
                    signatures: vec![own],
                },
            );
            for sig in self.early_signatures.remove(&next).unwrap_or_default() {
                self.attach_signature(next, sig);
            }
            out.push(Outgoing::Signature(next, own.to_bytes()));
            self.prune(current)?;
        }
        Ok(out)
    }

    fn has_all_peer_votes(&self, epoch: u64) -> bool {
        self.set
            .keys()
            .iter()
            .filter(|a| **a != self.me)
            .all(|a| self.votes.contains_key(&(epoch, *a)))
    }

    /// Whether the server should pull the peers' votes on the next epoch now: from the
    /// middle of the voting window on, and while this authority waits for them to vote
    /// itself (it came back in the middle of the epoch).
    pub fn wants_peer_votes(&self, now_millis: u64) -> bool {
        let into = self.epoch_fraction(now_millis);
        let next = self.epoch_at(now_millis / 1000) + 1;
        let waiting = into >= VOTE_AT && !self.votes.contains_key(&(next, self.me));
        into < CONSENSUS_AT && (waiting || into >= (VOTE_AT + CONSENSUS_AT) / 2.0)
    }

    fn prune(&mut self, current: u64) -> Result<(), StoreError> {
        let keep_from = current.saturating_sub(KEEP_EPOCHS);
        let expired: Vec<[u8; 32]> = self
            .descriptors
            .iter()
            .filter(|(_, d)| d.descriptor().mix_keys.last_epoch() < current)
            .map(|(id, _)| id.0)
            .collect();
        self.store.prune(keep_from, &expired)?;
        for id in &expired {
            self.descriptors.remove(&IdentityKey(*id));
        }
        self.votes.retain(|(e, _), _| *e >= keep_from);
        self.consensus.retain(|e, _| *e >= keep_from);
        self.early_signatures.retain(|e, _| *e >= keep_from);
        Ok(())
    }

    /// The consensus of `epoch` as served (every valid signature over this authority's
    /// document), or why it is not available.
    pub fn signed_consensus(&self, epoch: u64) -> Result<SignedConsensus, String> {
        let c = self
            .consensus
            .get(&epoch)
            .ok_or_else(|| format!("no consensus for epoch {epoch} yet"))?;
        if c.signatures.len() < self.set.majority() {
            return Err(format!(
                "the consensus for epoch {epoch} has {} of the {} signatures it needs",
                c.signatures.len(),
                self.set.majority()
            ));
        }
        let mut sigs = c.signatures.clone();
        sigs.sort_by_key(|s| s.authority);
        Ok(SignedConsensus::new(&c.consensus, sigs))
    }

    /// The JSON rendering of this authority's consensus of `epoch`.
    pub fn consensus_json(&self, epoch: u64) -> Option<String> {
        self.consensus.get(&epoch).map(|c| c.consensus.to_json())
    }

    /// Whether `authority`'s vote for `epoch` is here.
    pub fn has_vote(&self, epoch: u64, authority: &IdentityKey) -> bool {
        self.votes.contains_key(&(epoch, *authority))
    }

    /// Whether `authority`'s signature over this authority's consensus of `epoch` is here.
    pub fn has_signature(&self, epoch: u64, authority: &IdentityKey) -> bool {
        self.consensus
            .get(&epoch)
            .is_some_and(|c| c.signatures.iter().any(|s| s.authority == *authority))
    }

    /// Counts for the status page.
    pub fn status(&self, now: u64) -> Status {
        Status {
            identity: self.me.to_hex(),
            epoch: self.epoch_at(now),
            now,
            descriptors: self.descriptors.len(),
            withdrawals: self.withdrawals.len(),
            consensus: self
                .consensus
                .iter()
                .map(|(e, c)| (*e, c.signatures.len()))
                .collect(),
        }
    }
}
