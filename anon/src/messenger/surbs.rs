//! The SURBs this node made and awaits answers through (ACKs, NACKs, replies): what each
//! is for and how to open what comes back, under a limit, forgotten when they expire.

use std::collections::{BTreeMap, BTreeSet};

use crypto_simd::sphinx::SurbRecovery;
use scheduler::Timestamp;

use crate::wire::MessageId;

/// What an answer through one of our SURBs is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    Ack(MessageId),
    Nack(MessageId),
    Reply(MessageId),
}

#[derive(Debug)]
struct Entry {
    recovery: SurbRecovery,
    purpose: Purpose,
    expires: Timestamp,
}

/// Our SURBs by identifier, at most `limit`, with an index by expiry.
#[derive(Debug)]
pub(super) struct SurbTable {
    entries: BTreeMap<[u8; 16], Entry>,
    by_expiry: BTreeSet<(Timestamp, [u8; 16])>,
    limit: usize,
}

impl SurbTable {
    pub(super) fn new(limit: usize) -> Self {
        SurbTable {
            entries: BTreeMap::new(),
            by_expiry: BTreeSet::new(),
            limit: limit.max(1),
        }
    }

    /// Room for `n` more before the limit.
    pub(super) fn room(&self) -> usize {
        self.limit.saturating_sub(self.entries.len())
    }

    /// Keeps a SURB's recovery until `expires`; when the table is full the one that expires
    /// soonest is forgotten, and `true` returned (the caller counts it).
    pub(super) fn insert(
        &mut self,
        recovery: SurbRecovery,
        purpose: Purpose,
        expires: Timestamp,
    ) -> bool {
        let mut evicted = false;
        if self.entries.len() >= self.limit
            && let Some((_, id)) = self.by_expiry.pop_first()
        {
            self.entries.remove(&id);
            evicted = true;
        }
        let id = recovery.identifier();
        if let Some(old) = self.entries.insert(
            id,
            Entry {
                recovery,
                purpose,
                expires,
            },
        ) {
            self.by_expiry.remove(&(old.expires, id));
        }
        self.by_expiry.insert((expires, id));
        evicted
    }

    /// Takes the SURB an answer came through.
    pub(super) fn take(&mut self, id: &[u8; 16]) -> Option<(SurbRecovery, Purpose)> {
        let e = self.entries.remove(id)?;
        self.by_expiry.remove(&(e.expires, *id));
        Some((e.recovery, e.purpose))
    }

    /// Forgets the SURBs expired at `now`.
    pub(super) fn expire(&mut self, now: Timestamp) {
        while let Some(&(expires, id)) = self.by_expiry.first() {
            if expires > now {
                break;
            }
            self.by_expiry.pop_first();
            self.entries.remove(&id);
        }
    }

    /// When the next one expires.
    pub(super) fn next_expiry(&self) -> Option<Timestamp> {
        self.by_expiry.first().map(|e| e.0)
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}
