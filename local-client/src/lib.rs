//! A blocking client of a node's local API socket (docs/local-api.md): one session, over
//! `std::os::unix::net::UnixStream`. The framing is [`anon::local`], which does no I/O;
//! this crate is the one place that does it for applications, and what `libmixed` (the C
//! ABI) runs on.

use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anon::MessageId;
pub use anon::SendOptions;
pub use anon::local::{ApiError, Code, Frame};
use anon::local::{read_frame, write_frame};

/// Messages kept that arrive before WELCOME, at most.
const MAX_EARLY: usize = 4096;

/// A blocking client of the local API: one session with a node.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    node_id: [u8; 32],
    identity: [u8; 32],
    max_message: u32,
    next_request: u32,
    /// Events that arrived while waiting for an answer.
    pending: VecDeque<Frame>,
}

impl Client {
    /// Opens a session with the node whose API socket is `path`, receiving on `port`.
    pub fn connect(path: &Path, port: Option<u16>) -> Result<Client, ApiError> {
        let mut stream = UnixStream::connect(path).map_err(|e| {
            ApiError::new(
                Code::Io,
                format!("cannot reach the node's API socket {}: {e}", path.display()),
            )
        })?;
        write_frame(&mut stream, &Frame::Hello { port })
            .map_err(|e| ApiError::new(Code::Io, e.to_string()))?;
        // messages held for the port may be handed over as the session opens, before
        // WELCOME: they are kept for recv
        let mut pending = VecDeque::new();
        loop {
            match read_frame(&mut stream)? {
                Frame::Welcome {
                    node_id,
                    identity,
                    max_message,
                    ..
                } => {
                    return Ok(Client {
                        stream,
                        node_id,
                        identity,
                        max_message,
                        next_request: 1,
                        pending,
                    });
                }
                Frame::Error { code, text, .. } => return Err(ApiError::new(code, text)),
                f @ Frame::Message { .. } if pending.len() < MAX_EARLY => pending.push_back(f),
                _ => return Err(ApiError::new(Code::Protocol, "unexpected answer to HELLO")),
            }
        }
    }

    /// The node's ID.
    pub fn node_id(&self) -> [u8; 32] {
        self.node_id
    }

    /// The node's identity key (its node ID is the key's hash).
    pub fn identity_key(&self) -> [u8; 32] {
        self.identity
    }

    /// The largest message the node takes.
    pub fn max_message(&self) -> usize {
        self.max_message as usize
    }

    fn request(&mut self, make: impl FnOnce(u32) -> Frame) -> Result<MessageId, ApiError> {
        let request = self.next_request;
        self.next_request = self.next_request.wrapping_add(1).max(1);
        write_frame(&mut self.stream, &make(request))
            .map_err(|e| ApiError::new(Code::Io, e.to_string()))?;
        self.stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| ApiError::new(Code::Io, e.to_string()))?;
        loop {
            match read_frame(&mut self.stream)? {
                Frame::Done { request: r, id } if r == request => return Ok(id),
                Frame::Error {
                    request: r,
                    code,
                    text,
                } if r == request || r == 0 => return Err(ApiError::new(code, text)),
                other @ (Frame::Message { .. }
                | Frame::Acknowledged { .. }
                | Frame::Offline { .. }
                | Frame::Stored { .. }
                | Frame::Delivered { .. }
                | Frame::Undelivered { .. }
                | Frame::Alert { .. }) => self.pending.push_back(other),
                _ => return Err(ApiError::new(Code::Protocol, "unexpected frame")),
            }
        }
    }

    /// sendanon: queues `data` for `destination`; returns the message ID.
    pub fn send(
        &mut self,
        destination: [u8; 32],
        data: &[u8],
        options: SendOptions,
    ) -> Result<MessageId, ApiError> {
        if data.len() > self.max_message as usize {
            return Err(ApiError::new(
                Code::TooLarge,
                format!(
                    "message of {} bytes exceeds the maximum of {}",
                    data.len(),
                    self.max_message
                ),
            ));
        }
        self.request(|request| Frame::Send {
            request,
            destination,
            options,
            data: data.to_vec(),
        })
    }

    /// Replies through the handle that came with a message.
    pub fn reply(&mut self, handle: &[u8], port: u16, data: &[u8]) -> Result<MessageId, ApiError> {
        self.request(|request| Frame::Reply {
            request,
            port,
            handle: handle.to_vec(),
            data: data.to_vec(),
        })
    }

    /// bindanon.
    pub fn bind(&mut self, bandwidth: f64) -> Result<(), ApiError> {
        self.request(|request| Frame::Bind { request, bandwidth })
            .map(|_| ())
    }

    /// unbindanon.
    pub fn unbind(&mut self) -> Result<(), ApiError> {
        self.request(|request| Frame::Unbind { request })
            .map(|_| ())
    }

    /// Adds a contact by its Ed25519 identity key (offline delivery: docs/storage.md).
    pub fn add_contact(&mut self, identity: [u8; 32]) -> Result<(), ApiError> {
        self.request(|request| Frame::AddContact { request, identity })
            .map(|_| ())
    }

    /// recvanon: the next event (a message, an ACK, an offline report), waiting up to
    /// `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Result<Frame, ApiError> {
        if let Some(f) = self.pending.pop_front() {
            return Ok(f);
        }
        self.stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(|e| ApiError::new(Code::Io, e.to_string()))?;
        let f = read_frame(&mut self.stream)?;
        match f {
            Frame::Error { code, text, .. } => Err(ApiError::new(code, text)),
            other => Ok(other),
        }
    }
}
