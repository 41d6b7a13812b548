//! What both fast designs share: packets as opaque identities, the one timer wheel every
//! packet on a link or held for its delay waits in (`scheduler::TimerWheel`, the engine's),
//! the queue of other events, the messages of the applications, and what is counted.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::Rng;
use scheduler::{TickClock, TimerWheel, Timestamp};

use crate::classifier::Classifier;
use crate::observer::{Observer, Vectors};
use crate::paths::MAX_PATH;
use crate::report::Counts;

/// What a packet is (never visible on the wire: for counting and for its end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A packet of an application's message: its slot and generation in [`Messages`].
    Message {
        /// Slot.
        slot: u32,
        /// Generation of the slot when it was sent.
        generation: u32,
    },
    /// A loop of its origin.
    Loop(u64),
    /// Drop cover: its receiver discards it.
    Cover,
    /// An attacker's packet (known to the observer).
    Flood,
    /// A replayed copy (the next hop's replay filter catches it).
    Replay,
}

/// A packet in flight.
#[derive(Clone, Copy, Debug)]
pub struct Packet {
    /// Its hops: `path[len - 1]` is its destination.
    pub path: [u32; MAX_PATH],
    /// Hops in `path`.
    pub len: u8,
    /// The hop it is going to or held at.
    pub at: u8,
    /// What it is.
    pub kind: Kind,
    /// Who made it.
    pub origin: u32,
    /// Its probability vectors.
    pub vectors: Vectors,
    /// In the wheel on a link (true) or held for its delay at `path[at]` (false).
    pub arriving: bool,
    /// When its origin made it, then when its origin sent it (its first datagram), seconds.
    pub sent_at: f64,
    /// The first packet of a message's first attempt (a target candidate).
    pub first: bool,
}

impl Packet {
    /// The node it is at or going to.
    pub fn node(&self) -> u32 {
        self.path[usize::from(self.at)]
    }

    /// Whether that node is its destination.
    pub fn at_end(&self) -> bool {
        usize::from(self.at) + 1 >= usize::from(self.len)
    }
}

/// Packets in flight, by index.
#[derive(Debug, Default)]
pub struct Packets {
    items: Vec<Packet>,
    free: Vec<u32>,
}

impl Packets {
    /// Stores a packet; its index.
    pub fn add(&mut self, p: Packet) -> u32 {
        if let Some(i) = self.free.pop() {
            self.items[i as usize] = p;
            return i;
        }
        self.items.push(p);
        (self.items.len() - 1) as u32
    }

    /// Packet `i`.
    pub fn get(&self, i: u32) -> &Packet {
        &self.items[i as usize]
    }

    /// Packet `i`, to change.
    pub fn get_mut(&mut self, i: u32) -> &mut Packet {
        &mut self.items[i as usize]
    }

    /// Frees packet `i`.
    pub fn remove(&mut self, i: u32) {
        self.free.push(i);
    }

    /// Forgets every target vector (a wave ended).
    pub fn clear_targets(&mut self) {
        for p in &mut self.items {
            p.vectors.target = crate::observer::NONE;
        }
    }

    /// Packets stored (in flight).
    pub fn live(&self) -> usize {
        self.items.len() - self.free.len()
    }
}

/// A message of an application.
#[derive(Clone, Copy, Debug)]
pub struct Message {
    /// Its sender.
    pub from: u32,
    /// Its recipient.
    pub to: u32,
    /// When the application sent it, seconds.
    pub created: f64,
    /// Distinct packets that reached the recipient.
    pub received: u32,
    /// Attempts made.
    pub attempt: u32,
    /// The slot's generation.
    pub generation: u32,
    /// Whether it was handed to storage after its attempts.
    pub stored: bool,
    /// Whether the slot is in use.
    pub live: bool,
}

/// Messages in flight, by slot (a slot is reused once its message is resolved).
#[derive(Debug, Default)]
pub struct Messages {
    items: Vec<Message>,
    free: Vec<u32>,
}

impl Messages {
    /// Stores a message; its slot and generation.
    pub fn add(&mut self, mut m: Message) -> (u32, u32) {
        m.live = true;
        if let Some(i) = self.free.pop() {
            m.generation = self.items[i as usize].generation.wrapping_add(1);
            self.items[i as usize] = m;
            return (i, m.generation);
        }
        m.generation = 0;
        self.items.push(m);
        ((self.items.len() - 1) as u32, 0)
    }

    /// The message in `slot` if it is still of `generation`.
    pub fn get_mut(&mut self, slot: u32, generation: u32) -> Option<&mut Message> {
        self.items
            .get_mut(slot as usize)
            .filter(|m| m.live && m.generation == generation)
    }

    /// Resolves the message in `slot` (delivered or given up): the slot is reused.
    pub fn remove(&mut self, slot: u32) {
        if let Some(m) = self.items.get_mut(slot as usize)
            && m.live
        {
            m.live = false;
            self.free.push(slot);
        }
    }

    /// Messages not resolved yet.
    pub fn live(&self) -> impl Iterator<Item = &Message> {
        self.items.iter().filter(|m| m.live)
    }
}

/// Seconds as a timestamp.
pub fn at(seconds: f64) -> Timestamp {
    Timestamp::from_nanos((seconds.max(0.0) * 1e9) as u64)
}

/// A timestamp in seconds.
pub fn secs(t: Timestamp) -> f64 {
    t.as_nanos() as f64 / 1e9
}

/// An exponential gap of mean `mean` seconds.
pub fn exp_gap<R: Rng + ?Sized>(rng: &mut R, mean: f64) -> f64 {
    -(1.0 - crate::paths::uniform(rng)).ln() * mean
}

/// The clock of a run: the timer wheel of every packet, and the other events in order.
#[derive(Debug)]
pub struct Clock<E: Ord> {
    /// Packets on links and held for their delays.
    pub wheel: TimerWheel<u32>,
    tick: TickClock,
    events: BinaryHeap<Reverse<(Timestamp, u64, E)>>,
    seq: u64,
    /// Packets the wheel had no room for.
    pub wheel_full: u64,
}

impl<E: Ord> Clock<E> {
    /// A clock whose wheel holds up to `capacity` packets.
    pub fn new(capacity: usize) -> Self {
        Clock {
            wheel: TimerWheel::new(capacity, 0),
            tick: TickClock::default(),
            events: BinaryHeap::new(),
            seq: 0,
            wheel_full: 0,
        }
    }

    /// Puts packet `p` in the wheel until `t`; false if the wheel is full.
    pub fn hold(&mut self, t: Timestamp, p: u32) -> bool {
        match self.wheel.insert(self.tick.deadline_tick(t), p) {
            Ok(_) => true,
            Err(_) => {
                self.wheel_full += 1;
                false
            }
        }
    }

    /// Schedules event `e` at `t`.
    pub fn schedule(&mut self, t: Timestamp, e: E) {
        self.seq += 1;
        self.events.push(Reverse((t, self.seq, e)));
    }

    /// When the wheel next has something (the start of its earliest slot).
    pub fn wheel_next(&self) -> Option<Timestamp> {
        self.wheel.next_deadline().map(|d| self.tick.tick_start(d))
    }

    /// Packets due by `t`, one at a time.
    pub fn pop_wheel(&mut self, t: Timestamp) -> Option<u32> {
        self.wheel.pop_expired(self.tick.now_tick(t))
    }

    /// When the next event is due.
    pub fn event_next(&self) -> Option<Timestamp> {
        self.events.peek().map(|Reverse((t, ..))| *t)
    }

    /// The next event if due by `t`.
    pub fn pop_event(&mut self, t: Timestamp) -> Option<(Timestamp, E)> {
        if self.event_next()? > t {
            return None;
        }
        self.events.pop().map(|Reverse((at, _, e))| (at, e))
    }
}

/// A link's delay, with its jitter.
pub fn link_delay(rng: &mut ChaCha20Rng, delay: f64, jitter: f64) -> Duration {
    let j = if jitter > 0.0 {
        jitter * crate::paths::uniform(rng)
    } else {
        0.0
    };
    Duration::from_secs_f64(delay + j)
}

/// The observer, the classifier and the counts of a run, which every design feeds.
#[derive(Debug)]
pub struct Watch {
    /// The global passive observer.
    pub observer: Observer,
    /// Idle vs sending, receiving.
    pub classifier: Classifier,
    /// What was counted.
    pub counts: Counts,
    /// Warm-up, seconds: nothing before it counts.
    pub warmup: f64,
}

impl Watch {
    /// Whether `t` (seconds) is past the warm-up.
    pub fn measuring(&self, t: f64) -> bool {
        t >= self.warmup
    }
}
