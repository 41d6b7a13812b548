//! The directory authority of a mixed network (paper, section 4.1): it takes node
//! descriptors signed by the nodes' identity keys, votes with its peer authorities, signs
//! the consensus document of each epoch, and serves it over HTTP. Its state lives in an
//! embedded ACID database (redb), so a restart loses nothing.
//!
//! `mixed dirauth --config F` runs one; [`config::EXAMPLE`] shows the file.

#![forbid(unsafe_code)]

pub mod authority;
pub mod config;
pub mod server;
pub mod store;
pub mod timed;

pub use authority::{Authority, SubmitError};
pub use config::{AuthorityConfig, ConfigError};
pub use server::{AuthorityHandle, ServerError, spawn};
