//! A hierarchical timer wheel for one core: the packets a node holds for their exponential
//! delays, millions at once, with O(1) insert, cancel and expiry.
//!
//! The shape is tokio's: time in `u64` ticks, six levels of 64 slots, an `occupied` bit mask
//! per level, a timer's level found from the highest bit in which its deadline differs from
//! the wheel's time. What differs is the storage, built for throughput with a million timers
//! pending: a slot holds a list of fixed-size *blocks* of timers stored inline, so that
//! inserting appends to a block that is hot in cache and cascading or expiring a slot reads
//! its timers sequentially, instead of chasing one pointer per timer through a slab. All
//! blocks are allocated when the wheel is made; the steady state allocates nothing.
//!
//! Cancelling is lazy: it kills the timer's key at once (the timer will never fire), and the
//! dead entry is dropped when its slot comes due; until then it still counts against the
//! capacity, and its key id is not reused, so an id is never in the wheel twice. Which ids
//! are pending is a bit set (128 KiB for a million timers, so it stays in cache): expiring a
//! timer reads one bit, and timers carry no generation of their own.
//!
//! Deadlines are in ticks. A timer never fires before its tick; a deadline at or before the
//! wheel's time fires at the next poll. Use [`TickClock`](crate::TickClock) to turn times
//! into ticks (rounding deadlines up).

/// Bits of a tick per level: 64 slots.
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
/// Levels: the wheel spans 64^6 = 2^36 ticks (about 79 days at 100 microseconds a tick).
const LEVELS: usize = 6;
/// The furthest a deadline may lie ahead of the wheel's time, in ticks.
pub const MAX_TICKS_AHEAD: u64 = (1 << (SLOT_BITS as u64 * LEVELS as u64)) - 1;
/// Timers per block: 64 of 16 bytes (for a 4-byte `T`), 1 KiB; larger blocks keep a
/// million-timer wheel in fewer pages (64 measured 2.5x faster than 16 at a million).
const BLOCK: usize = 64;
/// Every list there can be: one per slot, the expired list, and a detached list being
/// cascaded.
const LISTS: usize = LEVELS * SLOTS + 2;
const NONE: u32 = u32::MAX;

/// Why a timer could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WheelError {
    /// The wheel holds as many timers as it was made for (or, with many cancelled timers not
    /// yet due, as many entries as its blocks hold). Make it bigger, or shed load.
    #[error("timer wheel full")]
    Full,
    /// The deadline is more than [`MAX_TICKS_AHEAD`] ticks away. Clamp long delays first.
    #[error("deadline too far ahead for the timer wheel")]
    TooFar,
}

/// The handle of a timer, to cancel it. After its timer fired or was cancelled, a key is dead:
/// an id's generation counts up each time it is handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerKey {
    id: u32,
    generation: u32,
}

#[derive(Clone, Copy, Debug)]
struct Entry<T> {
    deadline: u64,
    id: u32,
    value: T,
}

/// A list of blocks; `len` of the tail block is in `block_len`.
#[derive(Clone, Copy, Debug)]
struct List {
    head: u32,
    tail: u32,
}

impl List {
    const EMPTY: List = List {
        head: NONE,
        tail: NONE,
    };
}

#[derive(Clone, Copy, Debug)]
struct Level {
    occupied: u64,
    slots: [List; SLOTS],
}

/// A timer wheel holding up to `capacity` timers carrying a `T` each (typically the index of
/// a packet buffer).
#[derive(Debug)]
pub struct TimerWheel<T> {
    /// The wheel's time, in ticks: every deadline at or before it has been moved to
    /// `expired`.
    elapsed: u64,
    levels: Box<[Level; LEVELS]>,
    expired: List,
    /// Block storage: block `b` is `entries[b * BLOCK..(b + 1) * BLOCK]`.
    entries: Vec<Entry<T>>,
    /// Per block: the next block of its list.
    next: Vec<u32>,
    /// Per block: how many entries it holds (the head block of `expired` is consumed from
    /// `expired_read`).
    block_len: Vec<u8>,
    free_blocks: u32,
    /// How far the head block of `expired` has been read.
    expired_read: usize,
    /// Per key id: the generation of its latest key.
    generations: Vec<u32>,
    /// Per key id, one bit: its timer is pending (inserted, neither fired nor cancelled).
    pending: Vec<u64>,
    /// Ids neither pending nor held by a cancelled entry, most recently freed last.
    free_ids: Vec<u32>,
    capacity: usize,
    /// Pending timers.
    live: usize,
    /// Entries in blocks: pending timers and cancelled ones not yet dropped.
    stored: usize,
}

impl<T: Copy + Default> TimerWheel<T> {
    /// A wheel for up to `capacity` pending timers (at least 1; at most 2^31), its time at
    /// tick `now`. Allocates everything it will ever use.
    pub fn new(capacity: usize, now: u64) -> Self {
        let capacity = capacity.clamp(1, 1 << 31);
        // used blocks <= stored / BLOCK + one partial tail per list; stored <= capacity
        let blocks = capacity.div_ceil(BLOCK) + LISTS;
        let filler = Entry {
            deadline: 0,
            id: 0,
            value: T::default(),
        };
        let mut next: Vec<u32> = (1..=blocks as u32).collect();
        if let Some(last) = next.last_mut() {
            *last = NONE;
        }
        TimerWheel {
            elapsed: now,
            levels: Box::new(
                [Level {
                    occupied: 0,
                    slots: [List::EMPTY; SLOTS],
                }; LEVELS],
            ),
            expired: List::EMPTY,
            entries: vec![filler; blocks * BLOCK],
            next,
            block_len: vec![0; blocks],
            free_blocks: 0,
            expired_read: 0,
            generations: vec![0; capacity],
            pending: vec![0; capacity.div_ceil(64)],
            free_ids: (0..capacity as u32).rev().collect(),
            capacity,
            live: 0,
            stored: 0,
        }
    }

    /// Pending timers.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Entries held in blocks: the pending timers and the cancelled ones whose slot has not
    /// come due yet. Inserting fails with [`WheelError::Full`] when this reaches the
    /// capacity.
    pub fn stored_entries(&self) -> usize {
        self.stored
    }

    /// The most timers the wheel holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The wheel's time, in ticks.
    pub fn now(&self) -> u64 {
        self.elapsed
    }

    /// Adds a timer firing at tick `deadline` (at the next poll if that is not after the
    /// wheel's time). O(1); allocates nothing.
    pub fn insert(&mut self, deadline: u64, value: T) -> Result<TimerKey, WheelError> {
        if deadline > self.elapsed && deadline - self.elapsed > MAX_TICKS_AHEAD {
            return Err(WheelError::TooFar);
        }
        // every stored entry holds an id, so the free ids run out exactly at capacity
        let Some(id) = self.free_ids.pop() else {
            return Err(WheelError::Full);
        };
        let generation = self.generations[id as usize].wrapping_add(1);
        self.generations[id as usize] = generation;
        self.set_pending(id, true);
        self.place(Entry {
            deadline,
            id,
            value,
        });
        self.live += 1;
        self.stored += 1;
        Ok(TimerKey { id, generation })
    }

    fn is_pending(&self, id: u32) -> bool {
        self.pending[id as usize / 64] & (1 << (id % 64)) != 0
    }

    fn set_pending(&mut self, id: u32, pending: bool) {
        let word = &mut self.pending[id as usize / 64];
        if pending {
            *word |= 1 << (id % 64);
        } else {
            *word &= !(1 << (id % 64));
        }
    }

    /// Cancels a pending timer: it will not fire. Returns whether it was pending. O(1).
    pub fn cancel(&mut self, key: TimerKey) -> bool {
        let current = self.generations.get(key.id as usize) == Some(&key.generation);
        if !current || !self.is_pending(key.id) {
            return false;
        }
        self.set_pending(key.id, false);
        self.live -= 1;
        true
    }

    /// The tick of the earliest slot that holds timers, if any: poll at or after it. A timer
    /// in a higher level makes this the start of its slot, so a poll then may only move
    /// timers down a level; it is never later than the earliest deadline.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.expired.head != NONE {
            return Some(self.elapsed);
        }
        self.next_expiration().map(|(_, _, deadline)| deadline)
    }

    /// Takes one timer whose deadline is at or before tick `now`, moving the wheel's time
    /// forward as it goes; `None` when no more are due (the wheel's time is then `now`, or
    /// stays if `now` is in its past). Call it until it returns `None`. Amortized O(1) per
    /// timer; allocates nothing.
    pub fn pop_expired(&mut self, now: u64) -> Option<T> {
        loop {
            if let Some(value) = self.pop_expired_list() {
                return Some(value);
            }
            match self.next_expiration() {
                Some((level, slot, deadline)) if deadline <= now => {
                    self.process_slot(level, slot, deadline);
                }
                _ => {
                    if now > self.elapsed {
                        self.elapsed = now;
                    }
                    return None;
                }
            }
        }
    }

    /// Puts an entry into the list its deadline belongs to.
    fn place(&mut self, entry: Entry<T>) {
        if entry.deadline <= self.elapsed {
            let mut list = self.expired;
            self.push(&mut list, entry);
            self.expired = list;
            return;
        }
        let level = level_for(self.elapsed, entry.deadline);
        let slot = slot_for(entry.deadline, level);
        let mut list = self.levels[level].slots[slot];
        self.push(&mut list, entry);
        self.levels[level].slots[slot] = list;
        self.levels[level].occupied |= 1 << slot;
    }

    /// Appends to a list, taking a fresh block when its tail is full.
    fn push(&mut self, list: &mut List, entry: Entry<T>) {
        let tail_full =
            list.tail == NONE || usize::from(self.block_len[list.tail as usize]) == BLOCK;
        if tail_full {
            // never fails: `stored <= capacity` bounds the blocks in use (see `new`)
            let block = self.free_blocks;
            debug_assert_ne!(block, NONE, "block pool exhausted");
            self.free_blocks = self.next[block as usize];
            self.next[block as usize] = NONE;
            self.block_len[block as usize] = 0;
            if list.tail == NONE {
                list.head = block;
            } else {
                self.next[list.tail as usize] = block;
            }
            list.tail = block;
        }
        let tail = list.tail as usize;
        let len = usize::from(self.block_len[tail]);
        self.entries[tail * BLOCK + len] = entry;
        self.block_len[tail] = (len + 1) as u8;
    }

    fn free_block(&mut self, block: u32) {
        self.next[block as usize] = self.free_blocks;
        self.free_blocks = block;
    }

    /// Drops an entry from the wheel and frees its id; whether its timer was pending (false
    /// for a cancelled one).
    fn retire(&mut self, entry: &Entry<T>) -> bool {
        self.stored -= 1;
        self.free_ids.push(entry.id);
        if !self.is_pending(entry.id) {
            return false;
        }
        self.set_pending(entry.id, false);
        self.live -= 1;
        true
    }

    fn pop_expired_list(&mut self) -> Option<T> {
        while self.expired.head != NONE {
            let head = self.expired.head;
            let len = usize::from(self.block_len[head as usize]);
            if self.expired_read < len {
                let entry = self.entries[head as usize * BLOCK + self.expired_read];
                self.expired_read += 1;
                if self.retire(&entry) {
                    return Some(entry.value);
                }
                continue;
            }
            // block consumed
            self.expired.head = self.next[head as usize];
            if self.expired.head == NONE {
                self.expired.tail = NONE;
            }
            self.expired_read = 0;
            self.free_block(head);
        }
        None
    }

    /// The earliest occupied slot: (level, slot, its start tick). Lower levels always hold
    /// earlier timers than higher ones.
    fn next_expiration(&self) -> Option<(usize, usize, u64)> {
        self.levels.iter().enumerate().find_map(|(level, l)| {
            if l.occupied == 0 {
                return None;
            }
            let shift = SLOT_BITS * level as u32;
            let now_slot = ((self.elapsed >> shift) as usize) % SLOTS;
            // timers sit in slots after the wheel's own (its own slot's timers went down a
            // level, or expired); only the top level also holds, in slots up to its own,
            // timers of its next rotation: search from the slot after, wrapping last
            let from = (now_slot + 1) % SLOTS;
            let slot =
                (l.occupied.rotate_right(from as u32).trailing_zeros() as usize + from) % SLOTS;
            let level_range = 1u64 << (shift + SLOT_BITS);
            let level_start = self.elapsed & !(level_range - 1);
            let mut start = level_start + ((slot as u64) << shift);
            if slot <= now_slot {
                debug_assert_eq!(level, LEVELS - 1, "a lower level wrapped");
                start += level_range;
            }
            Some((level, slot, start))
        })
    }

    /// Empties a due slot: level 0 timers expire, higher ones move down.
    fn process_slot(&mut self, level: usize, slot: usize, start: u64) {
        let list = self.levels[level].slots[slot];
        self.levels[level].slots[slot] = List::EMPTY;
        self.levels[level].occupied &= !(1 << slot);
        self.elapsed = start;
        if level == 0 {
            // every timer of a level-0 slot has this very tick as its deadline
            if self.expired.head == NONE {
                self.expired = list;
                self.expired_read = 0;
            } else {
                self.next[self.expired.tail as usize] = list.head;
                self.expired.tail = list.tail;
            }
            return;
        }
        let mut block = list.head;
        while block != NONE {
            let len = usize::from(self.block_len[block as usize]);
            for i in 0..len {
                // cancelled entries move down too: checking them here would cost a lookup
                // per timer for the rare cancelled one
                let entry = self.entries[block as usize * BLOCK + i];
                self.place(entry);
            }
            let next = self.next[block as usize];
            self.free_block(block);
            block = next;
        }
    }
}

/// The level a deadline goes to: the group of six bits holding the highest bit in which it
/// differs from the wheel's time; deadlines in the top level's next rotation (less than one
/// rotation ahead, but across its boundary) go to the top level too, which wraps.
fn level_for(elapsed: u64, deadline: u64) -> usize {
    let masked = (elapsed ^ deadline) | (SLOTS as u64 - 1);
    let significant = 63 - masked.leading_zeros();
    ((significant / SLOT_BITS) as usize).min(LEVELS - 1)
}

fn slot_for(deadline: u64, level: usize) -> usize {
    ((deadline >> (SLOT_BITS * level as u32)) as usize) % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_at_the_deadline_never_before() {
        let mut wheel = TimerWheel::new(16, 0);
        wheel.insert(10, 1u32).unwrap();
        wheel.insert(100, 2).unwrap();
        wheel.insert(5000, 3).unwrap();
        assert_eq!(wheel.pop_expired(9), None);
        assert_eq!(wheel.pop_expired(10), Some(1));
        assert_eq!(wheel.pop_expired(99), None);
        assert_eq!(wheel.next_deadline(), Some(100));
        assert_eq!(wheel.pop_expired(4999), Some(2));
        assert_eq!(wheel.pop_expired(4999), None);
        assert_eq!(wheel.pop_expired(5000), Some(3));
        assert!(wheel.is_empty());
    }

    #[test]
    fn a_deadline_in_the_past_fires_at_the_next_poll() {
        let mut wheel = TimerWheel::new(4, 1000);
        wheel.insert(3, 7u32).unwrap();
        wheel.insert(1000, 8).unwrap();
        assert_eq!(wheel.next_deadline(), Some(1000));
        assert_eq!(wheel.pop_expired(1000), Some(7));
        assert_eq!(wheel.pop_expired(1000), Some(8));
    }

    #[test]
    fn full_and_too_far_are_errors() {
        let mut wheel = TimerWheel::new(2, 0);
        wheel.insert(1, 0u32).unwrap();
        let key = wheel.insert(2, 0).unwrap();
        assert_eq!(wheel.insert(3, 0), Err(WheelError::Full));
        assert!(wheel.cancel(key));
        assert!(!wheel.cancel(key));
        // the cancelled timer holds its place until its slot comes due
        assert_eq!(wheel.insert(3, 0), Err(WheelError::Full));
        assert_eq!(wheel.pop_expired(2), Some(0));
        assert_eq!(wheel.pop_expired(2), None);
        wheel.insert(3, 0).unwrap();
        wheel.insert(4, 0).unwrap();
        let mut wheel = TimerWheel::<u32>::new(2, 5);
        assert_eq!(
            wheel.insert(5 + MAX_TICKS_AHEAD + 1, 0),
            Err(WheelError::TooFar)
        );
        assert!(wheel.insert(5 + MAX_TICKS_AHEAD, 0).is_ok());
        assert_eq!(wheel.pop_expired(5 + MAX_TICKS_AHEAD - 1), None);
        assert_eq!(wheel.pop_expired(5 + MAX_TICKS_AHEAD), Some(0));
    }
}

#[cfg(test)]
mod invariants {
    use super::*;

    impl<T: Copy + Default> TimerWheel<T> {
        /// Every live timer in a slot is due after the wheel's time, in the slot its deadline
        /// names, and the occupied masks match the slots.
        fn check(&self) {
            for (level, l) in self.levels.iter().enumerate() {
                for slot in 0..SLOTS {
                    let list = l.slots[slot];
                    assert_eq!(list.head != NONE, l.occupied & (1 << slot) != 0);
                    let mut b = list.head;
                    while b != NONE {
                        for i in 0..usize::from(self.block_len[b as usize]) {
                            let e = &self.entries[b as usize * BLOCK + i];
                            assert!(e.deadline > self.elapsed, "level {level} slot {slot}");
                            assert_eq!(slot_for(e.deadline, level), slot);
                        }
                        b = self.next[b as usize];
                    }
                }
            }
        }
    }

    #[test]
    fn invariants_hold_across_top_level_rotations() {
        let mut x = 88_172_645_463_325_252u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut wheel = TimerWheel::<u32>::new(64, 0);
        let mut now = 0u64;
        for op in 0..20_000 {
            if rnd() % 3 == 0 {
                let d = match rnd() % 3 {
                    0 => now + rnd() % 64,
                    1 => now + rnd() % (1 << 24),
                    _ => now + rnd() % MAX_TICKS_AHEAD,
                };
                let _ = wheel.insert(d, op);
            } else {
                let target = now
                    + if rnd() % 2 == 0 {
                        rnd() % 100
                    } else {
                        rnd() % (1 << 32)
                    };
                while wheel.pop_expired(target).is_some() {}
                now = target;
            }
            wheel.check();
        }
    }
}
