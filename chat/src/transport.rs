//! What the messenger needs of a node: the anonymity API (sendanon, recvanon, a reply
//! through SURBs) and offline delivery's contacts. [`Transport`] is implemented for a node's
//! local API socket here ([`local_client::Client`]), for a node embedded in the process by
//! the `node` crate, and for the deterministic test network by the tests.

use std::time::Duration;

use anon::MessageId;
use anon::local::{ApiError, Code, Frame};

/// The port the messenger receives on.
pub const CHAT_PORT: u16 = 0x6d63;

/// A failure of the node under the messenger.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the node: {0}")]
pub struct TransportError(pub String);

impl From<ApiError> for TransportError {
    fn from(e: ApiError) -> Self {
        TransportError(e.to_string())
    }
}

/// A message that arrived.
#[derive(Clone, Debug)]
pub struct Incoming {
    /// The transport's message ID.
    pub id: MessageId,
    /// The sending node's identity key, revealed and verified by the node.
    pub sender: Option<[u8; 32]>,
    /// The bytes.
    pub data: Vec<u8>,
    /// Collected from storage providers (sent while this device was offline).
    pub stored: bool,
    /// SURBs to answer through, when the sender attached some.
    pub reply: Option<Vec<u8>>,
}

/// What the node reports.
#[derive(Clone, Debug)]
pub enum TransportEvent {
    /// A message for the messenger.
    Received(Incoming),
    /// The recipient's node acknowledged a message.
    Acknowledged(MessageId),
    /// A message was parked at storage providers (its recipient seemed offline).
    Stored(MessageId),
    /// A stored message reached its recipient.
    Delivered(MessageId),
    /// A message could not be delivered nor stored.
    Failed(MessageId, String),
}

/// The node under the messenger.
pub trait Transport {
    /// The identity key of this device's node.
    fn node_key(&self) -> [u8; 32];
    /// sendanon to the node whose identity key is `to` (its sender identity revealed, on
    /// [`CHAT_PORT`]), with `reply_surbs` SURBs for an answer.
    fn send(
        &mut self,
        to: &[u8; 32],
        data: &[u8],
        reply_surbs: u8,
    ) -> Result<MessageId, TransportError>;
    /// Answers through the SURBs of an [`Incoming`].
    fn reply(&mut self, reply: &[u8], data: &[u8]) -> Result<MessageId, TransportError>;
    /// Makes `node_key` a contact of the node: what goes to it is stored at providers when
    /// it seems offline, and what it stored for this node is collected.
    fn add_contact(&mut self, node_key: &[u8; 32]) -> Result<(), TransportError>;
    /// The next event, waiting up to `timeout` (`None`: nothing came).
    fn poll(&mut self, timeout: Duration) -> Result<Option<TransportEvent>, TransportError>;
}

/// A node's ID: the hash of its identity key.
pub fn node_id(node_key: &[u8; 32]) -> [u8; 32] {
    pki_client::IdentityKey(*node_key).node_id()
}

/// The options of every messenger send.
pub fn send_options(reply_surbs: u8) -> anon::SendOptions {
    anon::SendOptions {
        reply_surbs,
        reveal_identity: true,
        port: CHAT_PORT,
        ..anon::SendOptions::default()
    }
}

impl Transport for local_client::Client {
    fn node_key(&self) -> [u8; 32] {
        self.identity_key()
    }

    fn send(
        &mut self,
        to: &[u8; 32],
        data: &[u8],
        reply_surbs: u8,
    ) -> Result<MessageId, TransportError> {
        Ok(local_client::Client::send(
            self,
            node_id(to),
            data,
            send_options(reply_surbs),
        )?)
    }

    fn reply(&mut self, reply: &[u8], data: &[u8]) -> Result<MessageId, TransportError> {
        Ok(local_client::Client::reply(self, reply, CHAT_PORT, data)?)
    }

    fn add_contact(&mut self, node_key: &[u8; 32]) -> Result<(), TransportError> {
        Ok(local_client::Client::add_contact(self, *node_key)?)
    }

    fn poll(&mut self, timeout: Duration) -> Result<Option<TransportEvent>, TransportError> {
        let frame = match self.recv(timeout) {
            Ok(f) => f,
            Err(e) if e.code == Code::Timeout => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(match frame {
            Frame::Message {
                id,
                sender,
                handle,
                data,
                stored,
                ..
            } => Some(TransportEvent::Received(Incoming {
                id,
                sender,
                data,
                stored,
                reply: (!handle.is_empty()).then_some(handle),
            })),
            Frame::Acknowledged { id, .. } => Some(TransportEvent::Acknowledged(id)),
            Frame::Stored { id } => Some(TransportEvent::Stored(id)),
            Frame::Delivered { id } => Some(TransportEvent::Delivered(id)),
            Frame::Offline { id } => Some(TransportEvent::Failed(
                id,
                "offline, and not stored (no storage provider?)".into(),
            )),
            Frame::Undelivered { id, reason } => {
                Some(TransportEvent::Failed(id, format!("{reason:?}")))
            }
            _ => None,
        })
    }
}
