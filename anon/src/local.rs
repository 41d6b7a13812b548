//! The local API socket: how applications on the node's machine use its anonymity API
//! (a Unix domain socket, mode 0600). Version 1 of the framing, documented in
//! docs/local-api.md: every frame is `length (u32, big-endian, of what follows) || type
//! (u8) || body`, at most [`MAX_FRAME`] bytes. The client opens with HELLO; the node
//! answers WELCOME, or ERROR and closes. Requests carry a request number the answer
//! repeats; events (messages, ACKs, offline reports) come unasked.
//!
//! This module is the framing, shared by the node's server and every client; it does no
//! I/O of its own (the blocking client is the `local-client` crate).

use std::io::{Read, Write};

use crate::messenger::{MessengerEvent, SendOptions};
use crate::wire::MessageId;

/// The framing's version.
pub const VERSION: u8 = 3;
/// The magic a HELLO starts with.
pub const MAGIC: [u8; 4] = *b"MIXD";
/// The largest frame: a 1 MiB message, 64 reply SURBs and headers.
pub const MAX_FRAME: usize = (1 << 20) + (1 << 16);

/// Result codes, the same on the socket and in the C ABI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Code {
    /// Success.
    Ok = 0,
    /// An argument is out of range (hops, redundancy, SURB count, empty data, null).
    InvalidArgument = 1,
    /// The message is larger than the maximum.
    TooLarge = 2,
    /// The destination is not a node of the consensus.
    UnknownDestination = 3,
    /// The node has no consensus yet.
    NoConsensus = 4,
    /// Too many messages in flight; try again later.
    Busy = 5,
    /// The socket is closed.
    Closed = 6,
    /// A malformed frame or an unknown request.
    Protocol = 7,
    /// An I/O error talking to the node.
    Io = 8,
    /// Nothing arrived in time.
    Timeout = 9,
    /// No path could be drawn, or this node cannot be reached for replies.
    NoPath = 10,
    /// A reply larger than its SURBs carry, or a used reply handle.
    ReplyTooLong = 11,
    /// Another application receives on this port.
    PortInUse = 12,
    /// A bug: a panic was caught at the boundary.
    Internal = 13,
}

impl Code {
    /// The code of a number, `Internal` for an unknown one.
    pub fn from_i32(v: i32) -> Code {
        use Code::*;
        [
            Ok,
            InvalidArgument,
            TooLarge,
            UnknownDestination,
            NoConsensus,
            Busy,
            Closed,
            Protocol,
            Io,
            Timeout,
            NoPath,
            ReplyTooLong,
            PortInUse,
            Internal,
        ]
        .into_iter()
        .find(|c| *c as i32 == v)
        .unwrap_or(Internal)
    }

    /// A short description.
    pub fn describe(self) -> &'static str {
        match self {
            Code::Ok => "ok",
            Code::InvalidArgument => "invalid argument",
            Code::TooLarge => "message too large",
            Code::UnknownDestination => "destination not in the consensus",
            Code::NoConsensus => "the node has no consensus yet",
            Code::Busy => "too many messages in flight; try again later",
            Code::Closed => "socket closed",
            Code::Protocol => "protocol error",
            Code::Io => "I/O error talking to the node",
            Code::Timeout => "timed out",
            Code::NoPath => "no path, or this node cannot receive replies",
            Code::ReplyTooLong => "reply too long for its SURBs, or the handle is used up",
            Code::PortInUse => "another application receives on this port",
            Code::Internal => "internal error",
        }
    }
}

impl From<&crate::MessageError> for Code {
    fn from(e: &crate::MessageError) -> Code {
        use crate::MessageError as E;
        match e {
            E::NoConsensus => Code::NoConsensus,
            E::TooLarge { .. } => Code::TooLarge,
            E::Empty | E::Hops(_) | E::Redundancy | E::TooManySurbs => Code::InvalidArgument,
            E::UnknownDestination => Code::UnknownDestination,
            E::Busy => Code::Busy,
            E::Path(_) | E::Unreachable => Code::NoPath,
            E::ReplyTooLong { .. } | E::ReplyUsed => Code::ReplyTooLong,
        }
    }
}

/// A frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// Client: opens the session, claims `port` to receive on (`None`: send only).
    Hello {
        /// The port, or none.
        port: Option<u16>,
    },
    /// Client: sendanon.
    Send {
        /// Repeated in the answer.
        request: u32,
        /// The recipient's node ID.
        destination: [u8; 32],
        /// How.
        options: SendOptions,
        /// The message.
        data: Vec<u8>,
    },
    /// Client: a reply through the SURBs of a received message.
    Reply {
        /// Repeated in the answer.
        request: u32,
        /// The port the reply goes to.
        port: u16,
        /// The handle that came with the message.
        handle: Vec<u8>,
        /// The reply.
        data: Vec<u8>,
    },
    /// Client: bindanon.
    Bind {
        /// Repeated in the answer.
        request: u32,
        /// The bandwidth to advertise, packets a second.
        bandwidth: f64,
    },
    /// Client: unbindanon.
    Unbind {
        /// Repeated in the answer.
        request: u32,
    },
    /// Client: adds a contact, by its Ed25519 identity key: messages to it are stored at
    /// providers when it seems offline, its stored messages to this node collected.
    AddContact {
        /// Repeated in the answer.
        request: u32,
        /// The contact's identity key.
        identity: [u8; 32],
    },
    /// Node: the session is open.
    Welcome {
        /// The node's ID (its address for others).
        node_id: [u8; 32],
        /// The node's identity key (its node ID is the key's hash; what it reveals as a
        /// sender, and what others add as a contact).
        identity: [u8; 32],
        /// The largest message.
        max_message: u32,
        /// Whether the node is bound (in the PKI, forwarding).
        bound: bool,
    },
    /// Node: a request succeeded (`id` is the message's for SEND and REPLY, zero else).
    Done {
        /// The request.
        request: u32,
        /// The message ID.
        id: MessageId,
    },
    /// Node: a request failed (request 0: the session itself; the node closes it).
    Error {
        /// The request.
        request: u32,
        /// What.
        code: Code,
        /// Why, for people.
        text: String,
    },
    /// Node: a message arrived.
    Message {
        /// Its ID.
        id: MessageId,
        /// The port.
        port: u16,
        /// The sender's identity key, revealed and verified.
        sender: Option<[u8; 32]>,
        /// The message this answers.
        in_reply_to: Option<MessageId>,
        /// The reply handle (empty: none).
        handle: Vec<u8>,
        /// The data.
        data: Vec<u8>,
        /// Collected from storage providers (sent while this node was offline).
        stored: bool,
    },
    /// Node: a message was acknowledged.
    Acknowledged {
        /// The message.
        id: MessageId,
        /// Attempts it took.
        attempts: u8,
    },
    /// Node: the recipient seems offline.
    Offline {
        /// The message.
        id: MessageId,
    },
    /// Node: the recipient seems offline; the message was parked at storage providers.
    Stored {
        /// The message.
        id: MessageId,
    },
    /// Node: the recipient collected a stored message.
    Delivered {
        /// The message.
        id: MessageId,
    },
    /// Node: the message could not be delivered.
    Undelivered {
        /// The message.
        id: MessageId,
        /// Why.
        reason: String,
    },
    /// Node: high-alert mode begins (`raised`) or ends: loops stopped or resumed returning.
    Alert {
        /// Begins or ends.
        raised: bool,
    },
}

const T_HELLO: u8 = 0x01;
const T_SEND: u8 = 0x02;
const T_REPLY: u8 = 0x03;
const T_BIND: u8 = 0x04;
const T_UNBIND: u8 = 0x05;
const T_ADD_CONTACT: u8 = 0x06;
const T_WELCOME: u8 = 0x81;
const T_DONE: u8 = 0x82;
const T_ERROR: u8 = 0x83;
const T_MESSAGE: u8 = 0x84;
const T_ACKED: u8 = 0x85;
const T_OFFLINE: u8 = 0x86;
const T_UNDELIVERED: u8 = 0x87;
const T_ALERT: u8 = 0x88;
const T_STORED: u8 = 0x89;
const T_DELIVERED: u8 = 0x8a;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Longer than [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the maximum of {MAX_FRAME}")]
    TooLong(usize),
    /// A body that does not parse.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        let (a, b) = self
            .0
            .split_at_checked(n)
            .ok_or(FrameError::Malformed("truncated"))?;
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn bytes32(&mut self) -> Result<Vec<u8>, FrameError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn end(&self) -> Result<(), FrameError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Malformed("trailing bytes"))
        }
    }
}

fn put_bytes32(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

impl Frame {
    /// The frame's bytes, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; 4];
        match self {
            Frame::Hello { port } => {
                b.push(T_HELLO);
                b.extend_from_slice(&MAGIC);
                b.push(VERSION);
                match port {
                    Some(p) => {
                        b.push(1);
                        b.extend_from_slice(&p.to_be_bytes());
                    }
                    None => b.extend_from_slice(&[0, 0, 0]),
                }
            }
            Frame::Send {
                request,
                destination,
                options,
                data,
            } => {
                b.push(T_SEND);
                b.extend_from_slice(&request.to_be_bytes());
                b.extend_from_slice(destination);
                b.push(options.hops.map_or(0, |h| h.min(255) as u8));
                let red = options
                    .redundancy
                    .map_or(0, |r| (r * 1000.0).round().clamp(1.0, 65535.0) as u16);
                b.extend_from_slice(&red.to_be_bytes());
                b.push(options.reply_surbs);
                b.push(u8::from(options.reveal_identity));
                b.extend_from_slice(&options.port.to_be_bytes());
                put_bytes32(&mut b, data);
            }
            Frame::Reply {
                request,
                port,
                handle,
                data,
            } => {
                b.push(T_REPLY);
                b.extend_from_slice(&request.to_be_bytes());
                b.extend_from_slice(&port.to_be_bytes());
                put_bytes32(&mut b, handle);
                put_bytes32(&mut b, data);
            }
            Frame::Bind { request, bandwidth } => {
                b.push(T_BIND);
                b.extend_from_slice(&request.to_be_bytes());
                b.extend_from_slice(&bandwidth.to_bits().to_be_bytes());
            }
            Frame::Unbind { request } => {
                b.push(T_UNBIND);
                b.extend_from_slice(&request.to_be_bytes());
            }
            Frame::AddContact { request, identity } => {
                b.push(T_ADD_CONTACT);
                b.extend_from_slice(&request.to_be_bytes());
                b.extend_from_slice(identity);
            }
            Frame::Welcome {
                node_id,
                identity,
                max_message,
                bound,
            } => {
                b.push(T_WELCOME);
                b.push(VERSION);
                b.extend_from_slice(node_id);
                b.extend_from_slice(identity);
                b.extend_from_slice(&max_message.to_be_bytes());
                b.push(u8::from(*bound));
            }
            Frame::Done { request, id } => {
                b.push(T_DONE);
                b.extend_from_slice(&request.to_be_bytes());
                b.extend_from_slice(id);
            }
            Frame::Error {
                request,
                code,
                text,
            } => {
                b.push(T_ERROR);
                b.extend_from_slice(&request.to_be_bytes());
                b.extend_from_slice(&(*code as i32 as u16).to_be_bytes());
                put_bytes32(&mut b, text.as_bytes());
            }
            Frame::Message {
                id,
                port,
                sender,
                in_reply_to,
                handle,
                data,
                stored,
            } => {
                b.push(T_MESSAGE);
                b.extend_from_slice(id);
                b.extend_from_slice(&port.to_be_bytes());
                b.push(
                    u8::from(sender.is_some())
                        | (u8::from(in_reply_to.is_some()) << 1)
                        | (u8::from(*stored) << 2),
                );
                if let Some(s) = sender {
                    b.extend_from_slice(s);
                }
                if let Some(r) = in_reply_to {
                    b.extend_from_slice(r);
                }
                put_bytes32(&mut b, handle);
                put_bytes32(&mut b, data);
            }
            Frame::Acknowledged { id, attempts } => {
                b.push(T_ACKED);
                b.extend_from_slice(id);
                b.push(*attempts);
            }
            Frame::Offline { id } => {
                b.push(T_OFFLINE);
                b.extend_from_slice(id);
            }
            Frame::Stored { id } => {
                b.push(T_STORED);
                b.extend_from_slice(id);
            }
            Frame::Delivered { id } => {
                b.push(T_DELIVERED);
                b.extend_from_slice(id);
            }
            Frame::Undelivered { id, reason } => {
                b.push(T_UNDELIVERED);
                b.extend_from_slice(id);
                put_bytes32(&mut b, reason.as_bytes());
            }
            Frame::Alert { raised } => {
                b.push(T_ALERT);
                b.push(u8::from(*raised));
            }
        }
        let len = (b.len() - 4) as u32;
        b[..4].copy_from_slice(&len.to_be_bytes());
        b
    }

    /// Parses a frame's body (type and what follows, without the length).
    pub fn decode(body: &[u8]) -> Result<Frame, FrameError> {
        let mut c = Cursor(body);
        let frame = match c.u8()? {
            T_HELLO => {
                if c.arr::<4>()? != MAGIC {
                    return Err(FrameError::Malformed("not a mixed client: bad magic"));
                }
                if c.u8()? != VERSION {
                    return Err(FrameError::Malformed(
                        "unsupported version: this node speaks 1",
                    ));
                }
                let has = c.u8()?;
                let port = c.u16()?;
                Frame::Hello {
                    port: (has == 1).then_some(port),
                }
            }
            T_SEND => {
                let request = c.u32()?;
                let destination = c.arr::<32>()?;
                let hops = c.u8()?;
                let red = c.u16()?;
                let reply_surbs = c.u8()?;
                let reveal = c.u8()?;
                let port = c.u16()?;
                let data = c.bytes32()?;
                Frame::Send {
                    request,
                    destination,
                    options: SendOptions {
                        hops: (hops != 0).then_some(usize::from(hops)),
                        redundancy: (red != 0).then_some(f64::from(red) / 1000.0),
                        reply_surbs,
                        reveal_identity: reveal != 0,
                        port,
                    },
                    data,
                }
            }
            T_REPLY => Frame::Reply {
                request: c.u32()?,
                port: c.u16()?,
                handle: c.bytes32()?,
                data: c.bytes32()?,
            },
            T_BIND => Frame::Bind {
                request: c.u32()?,
                bandwidth: f64::from_bits(c.u64()?),
            },
            T_UNBIND => Frame::Unbind { request: c.u32()? },
            T_ADD_CONTACT => Frame::AddContact {
                request: c.u32()?,
                identity: c.arr()?,
            },
            T_WELCOME => {
                if c.u8()? != VERSION {
                    return Err(FrameError::Malformed("unsupported version"));
                }
                Frame::Welcome {
                    node_id: c.arr()?,
                    identity: c.arr()?,
                    max_message: c.u32()?,
                    bound: c.u8()? != 0,
                }
            }
            T_DONE => Frame::Done {
                request: c.u32()?,
                id: c.arr()?,
            },
            T_ERROR => Frame::Error {
                request: c.u32()?,
                code: Code::from_i32(i32::from(c.u16()?)),
                text: String::from_utf8_lossy(&c.bytes32()?).into_owned(),
            },
            T_MESSAGE => {
                let id = c.arr()?;
                let port = c.u16()?;
                let flags = c.u8()?;
                let sender = if flags & 1 != 0 { Some(c.arr()?) } else { None };
                let in_reply_to = if flags & 2 != 0 { Some(c.arr()?) } else { None };
                if flags & !7 != 0 {
                    return Err(FrameError::Malformed("unknown message flags"));
                }
                Frame::Message {
                    id,
                    port,
                    sender,
                    in_reply_to,
                    handle: c.bytes32()?,
                    data: c.bytes32()?,
                    stored: flags & 4 != 0,
                }
            }
            T_ACKED => Frame::Acknowledged {
                id: c.arr()?,
                attempts: c.u8()?,
            },
            T_OFFLINE => Frame::Offline { id: c.arr()? },
            T_STORED => Frame::Stored { id: c.arr()? },
            T_DELIVERED => Frame::Delivered { id: c.arr()? },
            T_UNDELIVERED => Frame::Undelivered {
                id: c.arr()?,
                reason: String::from_utf8_lossy(&c.bytes32()?).into_owned(),
            },
            T_ALERT => match c.u8()? {
                0 => Frame::Alert { raised: false },
                1 => Frame::Alert { raised: true },
                _ => return Err(FrameError::Malformed("alert flag not 0 or 1")),
            },
            _ => return Err(FrameError::Malformed("unknown frame type")),
        };
        c.end()?;
        Ok(frame)
    }

    /// The frame of a messenger event.
    pub fn from_event(e: &MessengerEvent) -> Frame {
        match e {
            MessengerEvent::Received(r) => Frame::Message {
                id: r.id,
                port: r.port,
                sender: r.sender.map(|k| k.0),
                in_reply_to: r.in_reply_to,
                handle: r.reply.as_ref().map(|h| h.to_bytes()).unwrap_or_default(),
                data: r.data.clone(),
                stored: r.stored,
            },
            MessengerEvent::Acknowledged { id, attempts } => Frame::Acknowledged {
                id: *id,
                attempts: *attempts,
            },
            MessengerEvent::Offline { id } => Frame::Offline { id: *id },
            MessengerEvent::Stored { id } => Frame::Stored { id: *id },
            MessengerEvent::Delivered { id } => Frame::Delivered { id: *id },
            MessengerEvent::Undelivered { id, reason } => Frame::Undelivered {
                id: *id,
                reason: reason.to_string(),
            },
            MessengerEvent::Alert { raised } => Frame::Alert { raised: *raised },
        }
    }
}

/// Reads one frame (blocking).
pub fn read_frame(r: &mut impl Read) -> Result<Frame, FrameError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLong(len));
    }
    if len == 0 {
        return Err(FrameError::Malformed("empty frame"));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Frame::decode(&body)
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, f: &Frame) -> std::io::Result<()> {
    w.write_all(&f.encode())
}

/// An error of the client: a code and a text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text}")]
pub struct ApiError {
    /// The code.
    pub code: Code,
    /// Why.
    pub text: String,
}

impl ApiError {
    /// An error of `code` saying `text`.
    pub fn new(code: Code, text: impl Into<String>) -> Self {
        ApiError {
            code,
            text: text.into(),
        }
    }
}

impl From<FrameError> for ApiError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(io)
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.kind() == std::io::ErrorKind::TimedOut =>
            {
                ApiError::new(Code::Timeout, "timed out")
            }
            FrameError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                ApiError::new(Code::Closed, "the node closed the session")
            }
            FrameError::Io(io) => ApiError::new(Code::Io, io.to_string()),
            other => ApiError::new(Code::Protocol, other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Frame::decode(&bytes);
        }
    }

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Hello { port: Some(7) },
            Frame::Hello { port: None },
            Frame::Send {
                request: 3,
                destination: [4; 32],
                options: SendOptions {
                    hops: Some(4),
                    redundancy: Some(1.5),
                    reply_surbs: 2,
                    reveal_identity: true,
                    port: 9,
                },
                data: b"hi".to_vec(),
            },
            Frame::Reply {
                request: 1,
                port: 2,
                handle: vec![1, 2, 3],
                data: vec![4],
            },
            Frame::Bind {
                request: 5,
                bandwidth: 12.5,
            },
            Frame::Unbind { request: 6 },
            Frame::AddContact {
                request: 9,
                identity: [4; 32],
            },
            Frame::Welcome {
                node_id: [1; 32],
                identity: [3; 32],
                max_message: 1 << 20,
                bound: true,
            },
            Frame::Done {
                request: 7,
                id: [2; 16],
            },
            Frame::Error {
                request: 8,
                code: Code::Busy,
                text: "busy".into(),
            },
            Frame::Message {
                id: [3; 16],
                port: 1,
                sender: Some([5; 32]),
                in_reply_to: None,
                handle: vec![],
                data: vec![9; 10],
                stored: false,
            },
            Frame::Message {
                id: [3; 16],
                port: 2,
                sender: None,
                in_reply_to: Some([1; 16]),
                handle: vec![1, 2],
                data: vec![8; 3],
                stored: true,
            },
            Frame::Stored { id: [7; 16] },
            Frame::Delivered { id: [8; 16] },
            Frame::Acknowledged {
                id: [4; 16],
                attempts: 2,
            },
            Frame::Offline { id: [5; 16] },
            Frame::Undelivered {
                id: [6; 16],
                reason: "no".into(),
            },
            Frame::Alert { raised: true },
            Frame::Alert { raised: false },
        ];
        for f in frames {
            let bytes = f.encode();
            let mut r = &bytes[..];
            let back = read_frame(&mut r).map_err(|e| e.to_string());
            assert_eq!(back, Ok(f));
        }
    }
}
