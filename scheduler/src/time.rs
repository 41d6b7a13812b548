//! Time as a value: a monotonic [`Timestamp`] the driver passes in, and the [`TickClock`]
//! that turns timestamps into timer-wheel ticks.

use core::time::Duration;

/// A point in monotonic time: nanoseconds since an origin the driver chose (the runtime's
/// start, or zero in a simulation). Never read from a clock here: the driver passes it in.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The origin.
    pub const ZERO: Timestamp = Timestamp(0);

    /// `nanos` nanoseconds after the origin.
    pub const fn from_nanos(nanos: u64) -> Self {
        Timestamp(nanos)
    }

    /// Nanoseconds since the origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating at the end of time (584 years after the origin).
    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }

    /// How long after `earlier` this is; zero if it is not after.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// The default tick of a timer wheel: 100 microseconds, well below the mean per-hop delay
/// 1/lambda (tens of milliseconds or more) it schedules.
pub const DEFAULT_TICK: Duration = Duration::from_micros(100);

/// Converts timestamps to ticks of a fixed length, counted from the origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickClock {
    tick_nanos: u64,
}

/// The tick length is zero or longer than a second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("timer tick must be between 1 nanosecond and 1 second")]
pub struct BadTick;

impl TickClock {
    /// A clock of ticks of `tick` (1 ns to 1 s).
    pub fn new(tick: Duration) -> Result<Self, BadTick> {
        let tick_nanos = u64::try_from(tick.as_nanos()).map_err(|_| BadTick)?;
        if tick_nanos == 0 || tick_nanos > 1_000_000_000 {
            return Err(BadTick);
        }
        Ok(TickClock { tick_nanos })
    }

    /// The tick length.
    pub fn tick(&self) -> Duration {
        Duration::from_nanos(self.tick_nanos)
    }

    /// The tick a deadline at `t` fires in, rounded up: a timer never fires early.
    pub fn deadline_tick(&self, t: Timestamp) -> u64 {
        t.0.div_ceil(self.tick_nanos)
    }

    /// The last tick that has fully begun at `t`, rounded down.
    pub fn now_tick(&self, t: Timestamp) -> u64 {
        t.0 / self.tick_nanos
    }

    /// When tick `tick` begins.
    pub fn tick_start(&self, tick: u64) -> Timestamp {
        Timestamp(tick.saturating_mul(self.tick_nanos))
    }
}

impl Default for TickClock {
    fn default() -> Self {
        TickClock {
            tick_nanos: DEFAULT_TICK.as_nanos() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_up_and_now_rounds_down() {
        let clock = TickClock::new(Duration::from_micros(100)).unwrap();
        assert_eq!(clock.deadline_tick(Timestamp::from_nanos(0)), 0);
        assert_eq!(clock.deadline_tick(Timestamp::from_nanos(1)), 1);
        assert_eq!(clock.deadline_tick(Timestamp::from_nanos(100_000)), 1);
        assert_eq!(clock.deadline_tick(Timestamp::from_nanos(100_001)), 2);
        assert_eq!(clock.now_tick(Timestamp::from_nanos(199_999)), 1);
        // a deadline's tick starts at or after the deadline
        for t in [1u64, 99_999, 100_000, 123_456_789] {
            let t = Timestamp::from_nanos(t);
            assert!(clock.tick_start(clock.deadline_tick(t)) >= t);
        }
        assert_eq!(TickClock::new(Duration::ZERO), Err(BadTick));
        assert_eq!(TickClock::new(Duration::from_secs(2)), Err(BadTick));
        assert_eq!(
            Timestamp::from_nanos(u64::MAX)
                .saturating_add(Duration::MAX)
                .as_nanos(),
            u64::MAX
        );
    }
}
