//! The engine of a mixed node, sans-IO (after quinn-proto): unwrap, replay check, hold for
//! the sender's delay, forward through the constant-rate emission of Algorithm 2, loops
//! that measure the network, deliveries to the layer above. It runs inside the `stack`
//! crate's `Stack`, which the node's runtime and the deterministic test network drive.

#![forbid(unsafe_code)]

pub mod counters;
pub mod engine;
pub mod errors;
pub mod loops;
pub mod paths;
pub mod pool;
pub mod replay;

pub use counters::{Counters, DropReason, OutCategory};
pub use engine::{
    AlertPolicy, DEFAULT_INGRESS_HOLD, Engine, EngineConfig, EpochKeys, Event, InstallError,
    MAX_FITTED_BUFFERS, READY_SPAN, SendError, Transmit, held_for, ready_for,
};
pub use paths::{FORWARD_BATCH, Families, ForwardItem, Paths, direct_id, parse_direct_id};
pub use replay::{ReplayCheck, ReplayFilter, Seen};
