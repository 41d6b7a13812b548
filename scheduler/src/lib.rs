//! When every packet leaves a node: per-core timer wheels for the exponential per-hop
//! delays, the samplers of the paper's random processes, and the constant-rate emission of
//! Algorithm 2.
//!
//! Pure code: no clock, no thread, no OS randomness. Time ([`Timestamp`]) and randomness
//! (`&mut impl rand_core::Rng`) are passed in, so the io_uring runtime and the deterministic
//! test network drive the same code and one seed reproduces a run.
//!
//! The paper's symbols (section 4): B, the constant emission rate; rho, the leniency
//! factor; h, the hops of a path; lambda, the rate of the exponential per-hop delay (mean
//! 1/lambda); L and b_loop, the loops a node keeps and what each costs.

#![forbid(unsafe_code)]

pub mod emission;
pub mod handoff;
pub mod sampler;
pub mod time;
pub mod wheel;

pub use emission::{
    Emission, EmissionCounters, EmissionParams, Emitter, ForwardDrop, MAX_FORWARD_QUEUE,
    ParamsError,
};
pub use sampler::{ExpDelay, PoissonClock, SamplerError};
pub use time::{DEFAULT_TICK, TickClock, Timestamp};
pub use wheel::{TimerKey, TimerWheel, WheelError};
