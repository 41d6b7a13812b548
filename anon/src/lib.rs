//! Reliable anonymous messages over the mix network (sections 2.1, 4.2.2, 4.3 and 4.5 of
//! the paper): the [`Messenger`] turns whole messages of up to 1 MiB into RaptorQ-coded
//! packets with redundancy from the binomial model, acknowledges them through SURBs,
//! repairs them on NACK or timeout, and tells the application when a recipient seems
//! offline. It is sans-IO, like the engine it sits on; the `stack` crate glues the two,
//! for the deterministic test network and the node's runtime alike.

#![forbid(unsafe_code)]

pub mod coding;
pub mod identity;
pub mod latency;
pub mod local;
pub mod messenger;
pub mod offline;
pub mod wire;

pub use messenger::{
    MessageError, Messenger, MessengerConfig, MessengerCounters, MessengerEvent, Received,
    ReplyHandle, SendOptions, Undelivered,
};
pub use wire::MessageId;
