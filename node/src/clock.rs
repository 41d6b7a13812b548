//! The node's clocks: monotonic time for the engines and the messenger, wall-clock time
//! for epochs and document validity.

use std::time::Instant;

use scheduler::Timestamp;

/// Monotonic time since the node started: the engines' clock.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    #[allow(clippy::disallowed_methods)]
    pub(crate) fn new() -> Self {
        Clock {
            origin: Instant::now(),
        }
    }

    /// Now.
    #[allow(clippy::disallowed_methods)]
    pub fn now(&self) -> Timestamp {
        Timestamp::from_nanos(self.origin.elapsed().as_nanos() as u64)
    }
}

/// Wall-clock time, unix seconds (epochs and document validity).
#[allow(clippy::disallowed_methods)]
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
