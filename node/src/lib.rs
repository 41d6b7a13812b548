//! The mixed node: the runtime that drives the engine over real sockets (a thread per core,
//! io_uring or recvmmsg/sendmmsg), its key directory, its configuration, its metrics, and the
//! `mixed demo` network.

pub mod api;
pub mod capacity;
pub mod chat;
mod clock;
pub mod config;
mod control;
mod core;
pub mod demo;
pub mod demo_chat;
pub mod durable;
pub mod io;
pub mod keys;
pub mod local;
pub mod metrics;
mod replay;
pub mod runtime;
pub(crate) mod service;
mod session;

pub use config::NodeConfig;
pub use io::IoChoice;
pub use runtime::{Node, NodeError, NodeEvent};
