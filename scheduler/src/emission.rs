//! Constant-rate emission: Algorithm 2 of the paper ("Bandwidth Allocation and Forwarding").
//!
//! A node emits exactly one packet at every event of a Poisson clock of rate B, whatever it
//! has to send: that is what makes sending indistinguishable from forwarding. At each slot
//! it takes, in this order,
//!
//! 1. its own data, if it has some and its own-data rate stays within rho * B / h;
//! 2. a scheduled loop, if one is due (L loops of b_loop packets a second each, as their
//!    own Poisson process of rate L * b_loop);
//! 3. a forward whose delay has expired, if the forward budget
//!    `B - rho * B / h - L * b_loop` allows (a token bucket at that rate);
//! 4. otherwise a loop, to fill the slot.
//!
//! Forwards beyond the budget wait in a bounded ready queue; when it is full, a packet picked
//! uniformly at random among the queued ones and the newcomer is dropped, never the newest
//! by default (tail drop would punish the end of every burst). The budget of forwards does
//! not grow when own data is idle: otherwise the forwarding rate would reveal when the node
//! sends (the flooding attack of section 5.0.1).
//!
//! Own data is rate-limited so that over *every* window of w >= 1 second the node sends at
//! most `r * w` own packets, r = rho * B / h: consecutive own packets are at least
//! 1 / (r - 1) seconds apart, which gives at most `floor(w (r - 1)) + 1 <= r w` in any window
//! of w >= 1 second (the "- 1" is the price of whole packets).

use core::time::Duration;
use std::collections::VecDeque;

use rand_core::Rng;

use crate::sampler::{PoissonClock, SamplerError};
use crate::time::Timestamp;

/// Most scheduled loops that can wait for a slot; beyond that a due loop is skipped (and
/// counted): the slots it would take are filled with loops anyway.
pub const MAX_LOOPS_DUE: u32 = 64;
/// Largest ready queue of forwards.
pub const MAX_FORWARD_QUEUE: usize = 1 << 20;
/// Forward tokens saved up while no forward was ready, at most.
const FORWARD_BURST: f64 = 2.0;

/// The parameters of Algorithm 2, with the paper's names.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EmissionParams {
    /// B: the node's constant, advertised emission rate, packets a second (section 4.2).
    pub b: f64,
    /// rho: the leniency factor, at least 1; own data is at most rho * B / h (section 4.2.3).
    pub rho: f64,
    /// h: hops of a path, 1 to 5 (section 4.2).
    pub h: u32,
    /// L: loops the node keeps in flight to test the network (section 4.4).
    pub l: u32,
    /// b_loop: packets a second each loop costs.
    pub b_loop: f64,
    /// Forwards that may wait for a slot; beyond, they are dropped at random.
    pub forward_queue: usize,
}

impl EmissionParams {
    /// The own-data rate limit, rho * B / h.
    pub fn own_rate(&self) -> f64 {
        self.rho * self.b / f64::from(self.h)
    }

    /// The scheduled-loop rate, L * b_loop.
    pub fn loop_rate(&self) -> f64 {
        f64::from(self.l) * self.b_loop
    }

    /// The forward budget, B - rho * B / h - L * b_loop.
    pub fn forward_budget(&self) -> f64 {
        self.b - self.own_rate() - self.loop_rate()
    }
}

/// Why emission parameters were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    /// B is not a usable rate.
    #[error("B: {0}")]
    Rate(SamplerError),
    /// rho is not a number of at least 1.
    #[error("rho must be a number of at least 1")]
    Rho,
    /// h is not 1 to 5.
    #[error("h must be 1 to 5 hops")]
    Hops,
    /// b_loop is not a finite, non-negative rate (or L * b_loop is not usable).
    #[error("b_loop must be a finite, non-negative rate")]
    LoopRate,
    /// rho * B / h + L * b_loop exceeds B: no budget is left for forwarding.
    #[error("rho * B / h + L * b_loop exceeds B")]
    OverBudget,
    /// rho * B / h is at most 1 packet a second: no own packet fits the one-second window.
    #[error("rho * B / h must exceed 1 packet a second")]
    OwnRateTooLow,
    /// The forward queue is 0 or larger than MAX_FORWARD_QUEUE.
    #[error("forward queue must hold 1 to 1,048,576 packets")]
    QueueSize,
}

/// What a slot carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emission<T> {
    /// The node's own data: take the next packet of the own-data queue.
    Own,
    /// A scheduled loop.
    ScheduledLoop,
    /// A forward whose delay has expired.
    Forward(T),
    /// A loop that fills a slot nothing else wanted.
    FillerLoop,
}

/// What the emitter did, per category and per drop reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmissionCounters {
    /// Slots that carried own data.
    pub own: u64,
    /// Slots that carried a scheduled loop.
    pub scheduled_loops: u64,
    /// Slots that carried a forward.
    pub forwards: u64,
    /// Slots filled with a loop.
    pub filler_loops: u64,
    /// Forwards dropped at random because the ready queue was full (load above the forward
    /// budget).
    pub dropped_forwards: u64,
    /// Scheduled loops skipped because [`MAX_LOOPS_DUE`] were already waiting.
    pub skipped_loops: u64,
}

impl EmissionCounters {
    /// Every slot emitted.
    pub fn emitted(&self) -> u64 {
        self.own + self.scheduled_loops + self.forwards + self.filler_loops
    }
}

/// The emission scheduler of one node. Sans-IO: the driver passes the time and the RNG.
#[derive(Debug)]
pub struct Emitter<T> {
    params: EmissionParams,
    clock: PoissonClock,
    loop_clock: Option<PoissonClock>,
    next_slot: Timestamp,
    next_loop: Timestamp,
    loops_due: u32,
    own_gap: Duration,
    last_own: Option<Timestamp>,
    forward_rate_per_nano: f64,
    forward_tokens: f64,
    last_slot: Timestamp,
    ready: VecDeque<T>,
    counters: EmissionCounters,
}

impl<T> Emitter<T> {
    /// An emitter whose first slot follows `now` by a Poisson gap.
    pub fn new<R: Rng + ?Sized>(
        params: EmissionParams,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Self, ParamsError> {
        let clock = PoissonClock::new(params.b).map_err(ParamsError::Rate)?;
        if !params.rho.is_finite() || params.rho < 1.0 {
            return Err(ParamsError::Rho);
        }
        if !(1..=5).contains(&params.h) {
            return Err(ParamsError::Hops);
        }
        if !params.b_loop.is_finite() || params.b_loop < 0.0 || !params.loop_rate().is_finite() {
            return Err(ParamsError::LoopRate);
        }
        if params.forward_budget() < 0.0 {
            return Err(ParamsError::OverBudget);
        }
        if params.own_rate() <= 1.0 {
            return Err(ParamsError::OwnRateTooLow);
        }
        if params.forward_queue == 0 || params.forward_queue > MAX_FORWARD_QUEUE {
            return Err(ParamsError::QueueSize);
        }
        let own_gap = Duration::try_from_secs_f64(1.0 / (params.own_rate() - 1.0))
            .map_err(|_| ParamsError::OwnRateTooLow)?;
        let loop_clock = if params.loop_rate() > 0.0 {
            Some(PoissonClock::new(params.loop_rate()).map_err(|_| ParamsError::LoopRate)?)
        } else {
            None
        };
        let next_slot = now.saturating_add(clock.next_gap(rng));
        let next_loop = match &loop_clock {
            Some(c) => now.saturating_add(c.next_gap(rng)),
            None => now,
        };
        Ok(Emitter {
            params,
            clock,
            loop_clock,
            next_slot,
            next_loop,
            loops_due: 0,
            own_gap,
            last_own: None,
            forward_rate_per_nano: params.forward_budget() / 1e9,
            forward_tokens: 0.0,
            last_slot: now,
            ready: VecDeque::with_capacity(params.forward_queue),
            counters: EmissionCounters::default(),
        })
    }

    /// The parameters.
    pub fn params(&self) -> &EmissionParams {
        &self.params
    }

    /// What happened so far.
    pub fn counters(&self) -> &EmissionCounters {
        &self.counters
    }

    /// Forwards waiting for a slot.
    pub fn ready_forwards(&self) -> usize {
        self.ready.len()
    }

    /// When the next slot is due: call [`Self::on_slot`] then (and again, as long as the
    /// time is at or past this, to catch up after a late wake-up).
    pub fn poll_timeout(&self) -> Timestamp {
        self.next_slot
    }

    /// Queues a forward whose delay has expired. If the queue is full, one packet chosen
    /// uniformly at random among the queued ones and this one is dropped and returned (the
    /// caller frees its buffer). Allocates nothing.
    pub fn push_forward<R: Rng + ?Sized>(&mut self, item: T, rng: &mut R) -> Option<T> {
        if self.ready.len() < self.params.forward_queue {
            self.ready.push_back(item);
            return None;
        }
        self.counters.dropped_forwards += 1;
        let victim = uniform_below(rng, self.ready.len() + 1);
        match self.ready.get_mut(victim) {
            Some(queued) => Some(core::mem::replace(queued, item)),
            None => Some(item),
        }
    }

    /// Decides the slot due at [`Self::poll_timeout`], if `now` has reached it, and
    /// schedules the next one. `own_waiting` says whether own data is queued. Returns the
    /// slot's time (when the packet should leave) and what it carries. Allocates nothing.
    pub fn on_slot<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        own_waiting: bool,
        rng: &mut R,
    ) -> Option<(Timestamp, Emission<T>)> {
        if now < self.next_slot {
            return None;
        }
        let slot = self.next_slot;
        self.next_slot = slot.saturating_add(self.clock.next_gap(rng));

        if let Some(loop_clock) = &self.loop_clock {
            while self.next_loop <= slot {
                if self.loops_due < MAX_LOOPS_DUE {
                    self.loops_due += 1;
                } else {
                    self.counters.skipped_loops += 1;
                }
                self.next_loop = self.next_loop.saturating_add(loop_clock.next_gap(rng));
            }
        }
        let elapsed = slot.saturating_since(self.last_slot).as_nanos() as f64;
        self.forward_tokens =
            (self.forward_tokens + elapsed * self.forward_rate_per_nano).min(FORWARD_BURST);
        self.last_slot = slot;

        let own_allowed = match self.last_own {
            None => true,
            Some(last) => slot.saturating_since(last) >= self.own_gap,
        };
        let emission = if own_waiting && own_allowed {
            self.last_own = Some(slot);
            self.counters.own += 1;
            Emission::Own
        } else if self.loops_due > 0 {
            self.loops_due -= 1;
            self.counters.scheduled_loops += 1;
            Emission::ScheduledLoop
        } else if self.forward_tokens >= 1.0
            && let Some(item) = self.ready.pop_front()
        {
            self.forward_tokens -= 1.0;
            self.counters.forwards += 1;
            Emission::Forward(item)
        } else {
            self.counters.filler_loops += 1;
            Emission::FillerLoop
        };
        Some((slot, emission))
    }
}

/// A uniform integer in `0..n` (n >= 1), by Lemire's multiply-shift (bias below n / 2^64).
fn uniform_below<R: Rng + ?Sized>(rng: &mut R, n: usize) -> usize {
    ((u128::from(rng.next_u64()) * n as u128) >> 64) as usize
}
