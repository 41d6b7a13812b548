//! Storage service providers (paper sections 4.6 and 4.6.1): where a sender parks the
//! coded symbols of a message for a recipient who is offline, and where the recipient
//! collects them when it comes back.
//!
//! - [`bacap`]: the mailboxes. Per ordered pair of contacts a stream of boxes, each box
//!   written once under its own blinded key, so a provider cannot read a block, cannot
//!   write one without the write capability, and cannot tell that two boxes belong to one
//!   stream.
//! - [`protocol`]: the versioned request/response protocol of service providers. Every
//!   request gets exactly one response, of one fixed size.
//! - [`store`]: the durable block store in redb (each accepted PUT committed before it is
//!   acknowledged), with quotas, a free-space reserve and retention by epochs.
//! - [`provider`]: the service itself, which answers requests and counts its answers.
//!
//! docs/storage.md has the construction, the encodings and the test vectors.

pub mod bacap;
pub mod protocol;
pub mod provider;
pub mod store;

pub use bacap::{BoxId, Position, ReadCap, Sealed, WriteCap};
pub use protocol::{Response, Status};
pub use provider::Provider;
pub use store::{BlockStore, Limits};

impl protocol::Response {
    /// The sealed block of a `Found` response.
    pub fn sealed(&self) -> Option<Sealed> {
        (self.status == Status::Found && usize::from(self.block_len) == bacap::BLOCK_LEN).then_some(
            Sealed {
                box_id: self.box_id,
                signature: self.signature,
                block: self.block,
            },
        )
    }
}
