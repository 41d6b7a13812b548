//! The replay filter of one mix key: every replay tag seen under the key, in a fixed-size,
//! lock-free hash set of 64-bit tag fingerprints that any core may check and insert into.
//!
//! A compare-and-swap claims each slot, so of two copies of one packet arriving at the same
//! instant on two cores exactly one is new. Fingerprints are 64 bits of the 256-bit tag
//! (itself an HKDF output): two different packets collide with probability 2^-64 per pair.
//! The table holds `capacity` tags at most (half its slots, so probes stay short); a tag
//! that finds no room is reported as [`Seen::Full`] and the packet is dropped and counted.

use std::sync::atomic::{AtomicU64, Ordering};

use crypto_simd::sphinx::ReplayTag;

/// Most probes before a table is called full.
const MAX_PROBES: usize = 64;

/// What the filter says of a tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// First time: now remembered.
    New,
    /// Seen before under this key: a replay.
    Replay,
    /// No room: the filter is full for this key's epoch.
    Full,
}

/// What the engine asks of a replay filter: one call per authentic packet, from any core.
/// [`ReplayFilter`] is the one in memory; the node's filter that survives restarts
/// (`node/src/replay.rs`) implements the same call around it.
pub trait ReplayCheck: std::fmt::Debug + Send + Sync {
    /// Whether `tag` was seen before under this key, remembering it if not.
    fn check_and_insert(&self, tag: &ReplayTag) -> Seen;
}

impl ReplayCheck for ReplayFilter {
    fn check_and_insert(&self, tag: &ReplayTag) -> Seen {
        ReplayFilter::check_and_insert(self, tag)
    }
}

/// A replay filter.
#[derive(Debug)]
pub struct ReplayFilter {
    slots: Box<[AtomicU64]>,
    capacity: usize,
    len: AtomicU64,
}

impl ReplayFilter {
    /// A filter for up to `capacity` tags (its table has twice as many slots).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(16);
        let slots = (0..capacity * 2).map(|_| AtomicU64::new(0)).collect();
        ReplayFilter {
            slots,
            capacity,
            len: AtomicU64::new(0),
        }
    }

    /// Tags remembered.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed) as usize
    }

    /// Whether no tag is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks a tag and remembers it. Lock-free; safe from any number of threads.
    pub fn check_and_insert(&self, tag: &ReplayTag) -> Seen {
        self.check_and_insert_fingerprint(Self::fingerprint(tag))
    }

    /// The 64 bits of a tag the filter keeps (never zero): what a filter that survives
    /// restarts writes down and reads back.
    pub fn fingerprint(tag: &ReplayTag) -> u64 {
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&tag.0[..8]);
        // zero marks an empty slot
        u64::from_le_bytes(fp).max(1)
    }

    /// [`Self::check_and_insert`] by fingerprint ([`Self::fingerprint`]).
    pub fn check_and_insert_fingerprint(&self, fp: u64) -> Seen {
        let fp = fp.max(1);
        if self.len() >= self.capacity {
            return if self.contains(fp) {
                Seen::Replay
            } else {
                Seen::Full
            };
        }
        let n = self.slots.len();
        let mut i = (fp as usize) % n;
        for _ in 0..MAX_PROBES {
            let slot = &self.slots[i];
            match slot.compare_exchange(0, fp, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.len.fetch_add(1, Ordering::Relaxed);
                    return Seen::New;
                }
                Err(existing) if existing == fp => return Seen::Replay,
                Err(_) => i = (i + 1) % n,
            }
        }
        Seen::Full
    }

    fn contains(&self, fp: u64) -> bool {
        let n = self.slots.len();
        let mut i = (fp as usize) % n;
        for _ in 0..MAX_PROBES {
            match self.slots[i].load(Ordering::Acquire) {
                0 => return false,
                x if x == fp => return true,
                _ => i = (i + 1) % n,
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(i: u64) -> ReplayTag {
        let mut t = [0u8; 32];
        t[..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
        ReplayTag(t)
    }

    #[test]
    fn new_then_replay_then_full() {
        let f = ReplayFilter::new(100);
        for i in 0..100 {
            assert_eq!(f.check_and_insert(&tag(i)), Seen::New);
        }
        for i in 0..100 {
            assert_eq!(f.check_and_insert(&tag(i)), Seen::Replay);
        }
        assert_eq!(f.check_and_insert(&tag(1000)), Seen::Full);
        assert_eq!(f.len(), 100);
    }

    #[test]
    fn exactly_one_thread_wins_each_tag() {
        let f = std::sync::Arc::new(ReplayFilter::new(20_000));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let f = std::sync::Arc::clone(&f);
                std::thread::spawn(move || {
                    (0..10_000u64)
                        .filter(|&i| f.check_and_insert(&tag(i)) == Seen::New)
                        .count()
                })
            })
            .collect();
        let won: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(won, 10_000);
    }
}
