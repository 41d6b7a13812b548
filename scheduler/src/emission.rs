//! Constant-rate emission: Algorithm 2 of the paper ("Bandwidth Allocation and Forwarding").
//!
//! A node emits exactly one packet at every event of a Poisson clock of rate B, whatever it
//! has to send: that is what makes sending indistinguishable from forwarding. Each category
//! has its share of B as in Algorithm 2: own data at most rho * B / h, L loops of b_loop
//! packets a second each (their own Poisson process, rate L * b_loop), forwards the rest,
//! `B - rho * B / h - L * b_loop`. At each slot the node takes, in this order,
//!
//! 1. a scheduled loop, if one is due;
//! 2. a forward whose delay has expired, if the forward budget allows (a token bucket
//!    filled by the budget's share of each slot, (B - rho * B / h - L * b_loop) / B);
//! 3. its own data, if it has some and the own-data limit allows;
//! 4. otherwise cover, to fill the slot (see [`Emission::Cover`]).
//!
//! Forwards come before own data, unlike the order in which Algorithm 2 lists them, so that
//! the forwarding rate depends on the forward load alone: were own data served first, a
//! node busy sending would forward less, and an adversary flooding it with forwards would
//! see its own traffic (section 5.0.1). Own data still gets its full share, since the
//! shares add up to B.
//!
//! Forwards beyond the budget are dropped at random, each independently: a forward arriving
//! is dropped with a probability that ramps from 0 to 1 as the ready queue fills from a
//! quarter to three quarters of its size, the probability being fixed at each slot, so that
//! every forward arriving between two slots runs the same risk whatever its place in a
//! burst. Tail drop would punish the end of every burst, and picking a random victim in the
//! queue punishes the packets that wait longest; both are biased. The queue's hard limit is
//! never reached by that ramp unless one burst between two slots is larger than a quarter of
//! the queue; a forward arriving at a full queue is then dropped and counted apart. The
//! budget of forwards does not grow when own data is idle: otherwise the forwarding rate
//! would reveal when the node sends (the flooding attack of section 5.0.1).
//!
//! Own data is rate-limited so that over *every* window of w >= 1 second the node sends at
//! most `r * w` own packets, r = rho * B / h, and so that an application that always has
//! data gets as much of r as that bound allows. A token bucket cannot do both: to keep the
//! bound its capacity c must come out of its rate (at most c + (r - c) w in a window), and
//! a bucket of c ~ 1 that is full when no slot is free loses the tokens that keep coming
//! (issue 12 measured 55% of r). The limiter here is the greedy one, which is the most
//! permissive that keeps the bound: an own packet may take a slot at t exactly when it
//! breaks no window ending at t, that is when (a) fewer than floor(r) own packets left in
//! the last second, and (b) for every own packet that left at t_j <= t - 1, the packets
//! from t_j to t, this one included, are at most r (t - t_j). With phi(t) = r t - N(t), N
//! the own packets before t, (b) reads phi(t) >= 1 + max phi(t_j-) over those t_j: the
//! limiter keeps the last second's departures (at most floor(r) of them) and one running
//! maximum. What it cannot give back is a slot that never came: own data takes the slots
//! loops and forwards leave, on a Poisson clock, so a gap with no free slot is budget lost
//! for good (the bound forbids making it up); with r = 50 and 60 free slots a second it
//! uses ~91% of r, ~97% from r = 200, ~99% at r = 500 with twice r free
//! (docs/benchmarks.md).

use std::collections::VecDeque;

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use crate::sampler::{PoissonClock, SamplerError};
use crate::time::Timestamp;

/// Most scheduled loops that can wait for a slot; beyond that a due loop is skipped (and
/// counted): the slots it would take are filled with loops anyway.
pub const MAX_LOOPS_DUE: u32 = 64;
/// Largest ready queue of forwards.
pub const MAX_FORWARD_QUEUE: usize = 1 << 20;
/// Forward tokens saved up while no forward was ready, at most.
const FORWARD_BURST: f64 = 2.0;
/// Largest rho * B / h: the limiter keeps up to that many departure times.
pub const MAX_OWN_RATE: f64 = 1_048_576.0;

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
    /// rho * B / h is at most 1 packet a second (no own packet fits the one-second
    /// window), or above [`MAX_OWN_RATE`].
    #[error("rho * B / h must exceed 1 packet a second and be at most 1,048,576")]
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
    /// Cover that fills a slot nothing else wanted. Algorithm 2 fills with loops, but a
    /// loop of h hops makes h forwards elsewhere, and an idle network filling every slot
    /// with loops would carry h / (h + 1) of its capacity as forwards, more than the
    /// forward budget `1 - rho / h`: it would drop its own loops. The engine sends drop
    /// cover instead (Loopix's): one hop, discarded by the node it reaches, and keeps the
    /// L scheduled loops for measuring the network.
    Cover,
}

/// Why a forward was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardDrop {
    /// At random: the forward load exceeds the budget.
    Budget,
    /// The ready queue was full.
    QueueFull,
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
    /// Slots filled with cover.
    pub cover: u64,
    /// Forwards dropped at random because the load exceeds the forward budget.
    pub dropped_forwards: u64,
    /// Forwards dropped because the ready queue was full (a burst larger than a quarter of
    /// the queue arrived between two slots).
    pub overflowed_forwards: u64,
    /// Scheduled loops skipped because [`MAX_LOOPS_DUE`] were already waiting.
    pub skipped_loops: u64,
}

impl EmissionCounters {
    /// Every slot emitted.
    pub fn emitted(&self) -> u64 {
        self.own + self.scheduled_loops + self.forwards + self.cover
    }
}

/// The emission scheduler of one node. Sans-IO: the driver passes the time and the RNG.
#[derive(Debug)]
pub struct Emitter<T> {
    params: EmissionParams,
    /// The randomness of the slot and loop clocks, and theirs alone: the departure times
    /// are a function of the seed, whatever the node has to send.
    clock_rng: ChaCha20Rng,
    clock: PoissonClock,
    loop_clock: Option<PoissonClock>,
    next_slot: Timestamp,
    next_loop: Timestamp,
    loops_due: u32,
    own: OwnLimit,
    drop_probability: f64,
    /// The forward budget's share of the slots.
    forward_share: f64,
    forward_tokens: f64,
    ready: VecDeque<T>,
    counters: EmissionCounters,
}

impl<T> Emitter<T> {
    /// An emitter whose first slot follows `now` by a Poisson gap. Its clocks draw from
    /// their own generator, seeded from `rng`: no other use of randomness (dropping,
    /// building packets) can shift a departure.
    pub fn new<R: Rng + ?Sized>(
        params: EmissionParams,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Self, ParamsError> {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let mut clock_rng = ChaCha20Rng::from_seed(seed);
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
        if params.own_rate() <= 1.0 || params.own_rate() > MAX_OWN_RATE {
            return Err(ParamsError::OwnRateTooLow);
        }
        if params.forward_queue == 0 || params.forward_queue > MAX_FORWARD_QUEUE {
            return Err(ParamsError::QueueSize);
        }
        let loop_clock = if params.loop_rate() > 0.0 {
            Some(PoissonClock::new(params.loop_rate()).map_err(|_| ParamsError::LoopRate)?)
        } else {
            None
        };
        let next_slot = now.saturating_add(clock.next_gap(&mut clock_rng));
        let next_loop = match &loop_clock {
            Some(c) => now.saturating_add(c.next_gap(&mut clock_rng)),
            None => now,
        };
        Ok(Emitter {
            params,
            clock_rng,
            clock,
            loop_clock,
            next_slot,
            next_loop,
            loops_due: 0,
            own: OwnLimit::new(params.own_rate(), now),
            drop_probability: 0.0,
            forward_share: params.forward_budget() / params.b,
            forward_tokens: 0.0,
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

    /// Queues a forward whose delay has expired, or drops it and gives it back with the
    /// reason (the caller frees its buffer): at random with the probability set at the last
    /// slot, or because the queue is full. Allocates nothing.
    pub fn push_forward<R: Rng + ?Sized>(
        &mut self,
        item: T,
        rng: &mut R,
    ) -> Result<(), (T, ForwardDrop)> {
        let p = self.drop_probability;
        if p > 0.0 && (p >= 1.0 || uniform_unit(rng) < p) {
            self.counters.dropped_forwards += 1;
            return Err((item, ForwardDrop::Budget));
        }
        if self.ready.len() >= self.params.forward_queue {
            self.counters.overflowed_forwards += 1;
            return Err((item, ForwardDrop::QueueFull));
        }
        self.ready.push_back(item);
        Ok(())
    }

    /// Decides the slot due at [`Self::poll_timeout`], if `now` has reached it, and
    /// schedules the next one. `own_waiting` says whether own data is queued. Returns the
    /// slot's time (when the packet should leave) and what it carries. Allocates nothing.
    pub fn on_slot(
        &mut self,
        now: Timestamp,
        own_waiting: bool,
    ) -> Option<(Timestamp, Emission<T>)> {
        let rng = &mut self.clock_rng;
        if now < self.next_slot {
            return None;
        }
        let slot = self.next_slot;
        self.next_slot = slot.saturating_add(self.clock.next_gap(&mut *rng));

        if let Some(loop_clock) = &self.loop_clock {
            while self.next_loop <= slot {
                if self.loops_due < MAX_LOOPS_DUE {
                    self.loops_due += 1;
                } else {
                    self.counters.skipped_loops += 1;
                }
                self.next_loop = self
                    .next_loop
                    .saturating_add(loop_clock.next_gap(&mut *rng));
            }
        }
        // the budget's share of every slot, (B - rho B / h - L b_loop) / B: a rate of
        // slots, not of time, so that a long gap between two slots loses none of it (a
        // bucket filled by time overflows in the gap, and at 95% of the budget dropped 15%
        // of the forwards)
        self.forward_tokens = (self.forward_tokens + self.forward_share).min(FORWARD_BURST);

        let emission = if self.loops_due > 0 {
            self.loops_due -= 1;
            self.counters.scheduled_loops += 1;
            Emission::ScheduledLoop
        } else if self.forward_tokens >= 1.0
            && let Some(item) = self.ready.pop_front()
        {
            self.forward_tokens -= 1.0;
            self.counters.forwards += 1;
            Emission::Forward(item)
        } else if own_waiting && self.own.take(slot) {
            self.counters.own += 1;
            Emission::Own
        } else {
            self.counters.cover += 1;
            Emission::Cover
        };

        // the drop probability until the next slot: 0 below a quarter of the queue, 1 from
        // three quarters, linear between
        let size = self.params.forward_queue as f64;
        let fill = self.ready.len() as f64;
        self.drop_probability = ((fill - 0.25 * size) / (0.5 * size)).clamp(0.0, 1.0);
        Some((slot, emission))
    }
}

/// The own-data limit: never more than r * w own packets in a window of w >= 1 second,
/// and every slot that keeps to it taken (see the module's documentation).
#[derive(Debug)]
struct OwnLimit {
    /// r, packets a second.
    rate: f64,
    /// floor(r): the most own packets in any second.
    per_second: usize,
    origin: Timestamp,
    /// Own packets so far: N.
    sent: u64,
    /// Departures of the last second: (time, phi just before it).
    recent: VecDeque<(Timestamp, f64)>,
    /// The largest phi just before a departure at least a second old.
    older_max: f64,
}

impl OwnLimit {
    fn new(rate: f64, origin: Timestamp) -> Self {
        let per_second = rate.floor() as usize;
        OwnLimit {
            rate,
            per_second,
            origin,
            sent: 0,
            recent: VecDeque::with_capacity(per_second),
            older_max: f64::NEG_INFINITY,
        }
    }

    /// Takes the slot at `t` (not before the last one) for an own packet if that keeps to
    /// the bound. Allocates nothing: `recent` never holds more than floor(r).
    fn take(&mut self, t: Timestamp) -> bool {
        while let Some(&(at, phi)) = self.recent.front() {
            if t.saturating_since(at) < std::time::Duration::from_secs(1) {
                break;
            }
            self.older_max = self.older_max.max(phi);
            self.recent.pop_front();
        }
        let phi = self.rate * (t.saturating_since(self.origin).as_nanos() as f64 / 1e9)
            - self.sent as f64;
        if self.recent.len() >= self.per_second || phi < 1.0 + self.older_max {
            return false;
        }
        self.recent.push_back((t, phi));
        self.sent += 1;
        true
    }
}

/// A uniform number in [0, 1) with 53 random bits.
fn uniform_unit<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}
