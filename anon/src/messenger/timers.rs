//! The messenger's timers: one per message at most (an attempt's timeout, or a message being
//! received coming due for its NACK or its expiry), in a [`scheduler::TimerWheel`].
//!
//! The wheel gives O(1) insert and expiry and fires timers in a fixed order, so a seed
//! replays bit for bit. Its cancellation is lazy (a cancelled timer keeps its entry until its
//! slot comes due), so the messenger never cancels: a timer that fires checks that it is
//! still the one its message waits for (its generation), and a message whose deadline moved
//! later is re-armed when the old timer fires. Each message holds at most one live timer of
//! each kind, and stale ones are bounded by the messages that can come and go within one
//! timeout; the wheel is sized for four times the messages the tables hold, and a full wheel
//! falls back to an ordered overflow list (counted), so no timeout is ever lost.

use std::collections::BTreeMap;

use scheduler::{TimerWheel, Timestamp};

use crate::wire::MessageId;

/// Ticks of the messenger's wheel: one millisecond.
const TICK_NANOS: u64 = 1_000_000;

/// What a timer is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Kind {
    /// An outgoing attempt's timeout.
    #[default]
    Attempt,
    /// A message being received: its NACK or its expiry.
    Incoming,
}

/// One timer: what it is for, whose it is, and which arming of it (a message re-armed or
/// finished makes its older timers stale).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Timer {
    pub(super) kind: Kind,
    pub(super) id: MessageId,
    pub(super) generation: u32,
}

/// The timers, in a wheel with an ordered overflow.
#[derive(Debug)]
pub(super) struct Timers {
    wheel: TimerWheel<Timer>,
    /// Timers that did not fit the wheel, by deadline tick (and a sequence, for ties).
    overflow: BTreeMap<(u64, u64), Timer>,
    sequence: u64,
    /// Timers that went to the overflow.
    pub(super) overflowed: u64,
}

impl Timers {
    /// Timers for a messenger holding up to `messages` messages (sent and received).
    pub(super) fn new(messages: usize) -> Self {
        Timers {
            wheel: TimerWheel::new(messages.saturating_mul(4).max(64), 0),
            overflow: BTreeMap::new(),
            sequence: 0,
            overflowed: 0,
        }
    }

    fn tick(t: Timestamp) -> u64 {
        t.as_nanos().div_ceil(TICK_NANOS)
    }

    /// Arms `timer` for `deadline`.
    pub(super) fn insert(&mut self, deadline: Timestamp, timer: Timer) {
        let tick = Self::tick(deadline);
        if self.wheel.insert(tick, timer).is_err() {
            self.overflowed += 1;
            self.sequence += 1;
            self.overflow.insert((tick, self.sequence), timer);
        }
    }

    /// The next timer due at `now`, if any (stale ones included: the caller checks).
    pub(super) fn pop(&mut self, now: Timestamp) -> Option<Timer> {
        let tick = now.as_nanos() / TICK_NANOS;
        if let Some(entry) = self.overflow.first_entry()
            && entry.key().0 <= tick
        {
            return Some(entry.remove());
        }
        self.wheel.pop_expired(tick)
    }

    /// When to poll next (a wheel slot's start may come before its timers: polling then
    /// only moves them down).
    pub(super) fn next(&self) -> Option<Timestamp> {
        let wheel = self.wheel.next_deadline();
        let overflow = self.overflow.keys().next().map(|k| k.0);
        let tick = match (wheel, overflow) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(Timestamp::from_nanos(tick.saturating_mul(TICK_NANOS)))
    }

    /// Timers armed (stale ones included).
    pub(super) fn len(&self) -> usize {
        self.wheel.len() + self.overflow.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_nanos(ms * TICK_NANOS)
    }

    fn timer(n: u8) -> Timer {
        Timer {
            kind: Kind::Attempt,
            id: [n; 16],
            generation: 0,
        }
    }

    #[test]
    fn fires_in_deadline_order_and_never_early() {
        let mut timers = Timers::new(16);
        timers.insert(t(30), timer(3));
        timers.insert(t(10), timer(1));
        timers.insert(t(20), timer(2));
        assert_eq!(timers.pop(t(9)), None);
        let mut fired = Vec::new();
        while let Some(x) = timers.pop(t(25)) {
            fired.push(x.id[0]);
        }
        assert_eq!(fired, vec![1, 2]);
        assert_eq!(timers.pop(t(30)).map(|x| x.id[0]), Some(3));
        assert_eq!(timers.len(), 0);
    }

    #[test]
    fn a_full_wheel_overflows_without_losing_a_timer() {
        let mut timers = Timers::new(1); // a wheel of 64
        for i in 0..200u64 {
            timers.insert(t(1000 - i), timer((i % 250) as u8));
        }
        assert!(timers.overflowed > 0, "the wheel should have filled");
        assert_eq!(timers.len(), 200);
        assert!(timers.next().is_some_and(|n| n <= t(801)));
        let mut n = 0;
        while timers.pop(t(1000)).is_some() {
            n += 1;
        }
        assert_eq!(n, 200);
        assert_eq!(timers.next(), None);
    }
}
