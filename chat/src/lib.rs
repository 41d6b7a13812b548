//! The messenger of a mixed network: the paper's application (abstract, sections 1 and
//! 4.3), on the anonymity API. A **user** has one long-term identity key and any number of
//! **devices**, each a mixed node with its own keys, certified by a signed, versioned
//! **device list** that contacts verify ([`identity`]). Every pair of devices talks through
//! an Olm double-ratchet session ([`olm`]: forward secrecy, healing after compromise) inside
//! the mixnet's own encryption. A message to a user goes to each of their devices, and a
//! copy to each of the sender's other devices; a device that is offline gets it later from
//! the storage providers (the node's offline delivery). Everything a device knows lives in
//! an encrypted redb store ([`store`]). See docs/messenger.md.

#![forbid(unsafe_code)]

pub mod cli;
pub mod codec;
pub mod core;
pub mod identity;
pub mod link;
pub mod model;
pub mod olm;
pub mod protocol;
mod receive;
pub mod store;
pub mod transport;
pub mod tui;

pub use crate::core::{Chat, ChatCounters, ChatError, Notice, hex};
pub use identity::{LinkCode, SignedDeviceList, UserKey, safety_number};
pub use model::{Contact, Message, State};
pub use store::KdfParams;
pub use transport::{CHAT_PORT, Incoming, Transport, TransportError, TransportEvent};
