//! The service-provider protocol: one request in, exactly one response out (paper section
//! 4.6), versioned, reusable by services other than storage. docs/storage.md has the
//! tables. Every integer is big-endian. Parsing never panics.
//!
//! Every response has the same length, [`RESPONSE_LEN`], whatever it answers: a GET of an
//! empty box and a GET of a full one cannot be told apart by size, nor a refusal from an
//! answer.

use crate::bacap::{BLOCK_LEN, BOX_ID_LEN, BoxId, SIGNATURE_LEN};

/// The protocol version this code speaks.
pub const VERSION: u8 = 1;
/// The storage service.
pub const SERVICE_STORAGE: u8 = 1;
/// The name a provider of the storage service lists among its roles in its descriptor.
pub const STORAGE_ROLE: &str = "storage";
/// The messenger port requests to a service provider are sent to (and its responses come
/// back on).
pub const SERVICE_PORT: u16 = 0xfff0;
/// Bytes of the tag a client picks and the response echoes.
pub const TAG_LEN: usize = 8;
/// Bytes before the operation's own fields: version, service, tag, operation, box ID.
pub const REQUEST_HEADER: usize = 1 + 1 + TAG_LEN + 1 + BOX_ID_LEN;
/// The longest request: a PUT of a full block.
pub const REQUEST_MAX: usize = REQUEST_HEADER + SIGNATURE_LEN + 2 + BLOCK_LEN;
/// Bytes of every response.
pub const RESPONSE_LEN: usize =
    1 + 1 + TAG_LEN + 1 + 1 + BOX_ID_LEN + SIGNATURE_LEN + 2 + BLOCK_LEN;

/// A tag: the client's name for its request.
pub type Tag = [u8; TAG_LEN];

/// An operation of the storage service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Store a block in an empty box.
    Put = 1,
    /// Read a box.
    Get = 2,
    /// Delete a box for good.
    Tombstone = 3,
}

impl Op {
    fn from_u8(b: u8) -> Option<Op> {
        match b {
            1 => Some(Op::Put),
            2 => Some(Op::Get),
            3 => Some(Op::Tombstone),
            _ => None,
        }
    }
}

/// A parsed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// PUT: a block and its signature under the box ID.
    Put {
        /// The client's tag.
        tag: Tag,
        /// The box.
        box_id: BoxId,
        /// The signature over the PUT.
        signature: [u8; SIGNATURE_LEN],
        /// The block.
        block: &'a [u8],
    },
    /// GET.
    Get {
        /// The client's tag.
        tag: Tag,
        /// The box.
        box_id: BoxId,
    },
    /// TOMBSTONE: the box's tombstone signature.
    Tombstone {
        /// The client's tag.
        tag: Tag,
        /// The box.
        box_id: BoxId,
        /// The tombstone signature.
        signature: [u8; SIGNATURE_LEN],
    },
}

/// What a response says. Codes below 16 are answers, from 16 refusals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// PUT: the block is stored (committed to disk before this answer), now or before.
    Stored = 0,
    /// GET: the block follows.
    Found = 1,
    /// GET: nothing in this box.
    Empty = 2,
    /// TOMBSTONE: the box is deleted for good.
    Deleted = 3,
    /// Not a request of this protocol (too short, lengths that disagree, trailing bytes).
    Malformed = 16,
    /// A protocol version this provider does not speak.
    Version = 17,
    /// A service this provider does not offer.
    UnknownService = 18,
    /// An operation the service does not have.
    UnknownOp = 19,
    /// The signature does not verify under the box ID (or the box ID is no key).
    BadSignature = 20,
    /// PUT: the box holds another block already (writes are immutable).
    Exists = 21,
    /// PUT: the block is over the block size.
    TooLarge = 22,
    /// PUT: the provider is at its quota or its free-space reserve.
    Full = 23,
    /// The box's block outlived the retention period.
    Expired = 24,
    /// The box was deleted.
    Tombstoned = 25,
    /// The provider could not reach its storage; nothing was stored.
    Unavailable = 26,
}

impl Status {
    /// Every status, answers first.
    pub const ALL: [Status; 15] = [
        Status::Stored,
        Status::Found,
        Status::Empty,
        Status::Deleted,
        Status::Malformed,
        Status::Version,
        Status::UnknownService,
        Status::UnknownOp,
        Status::BadSignature,
        Status::Exists,
        Status::TooLarge,
        Status::Full,
        Status::Expired,
        Status::Tombstoned,
        Status::Unavailable,
    ];

    /// The status of a code.
    pub fn from_u8(b: u8) -> Option<Status> {
        Status::ALL.into_iter().find(|s| *s as u8 == b)
    }

    /// Whether this is a refusal.
    pub fn is_refusal(self) -> bool {
        self as u8 >= 16
    }

    /// A short name, for metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Status::Stored => "stored",
            Status::Found => "found",
            Status::Empty => "empty",
            Status::Deleted => "deleted",
            Status::Malformed => "malformed",
            Status::Version => "version",
            Status::UnknownService => "unknown_service",
            Status::UnknownOp => "unknown_op",
            Status::BadSignature => "bad_signature",
            Status::Exists => "exists",
            Status::TooLarge => "too_large",
            Status::Full => "full",
            Status::Expired => "expired",
            Status::Tombstoned => "tombstoned",
            Status::Unavailable => "unavailable",
        }
    }

    /// The position of this status in [`Status::ALL`].
    pub fn index(self) -> usize {
        Status::ALL.iter().position(|s| *s == self).unwrap_or(0)
    }
}

/// Why a request did not parse: the status to answer with and what can be echoed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The answer.
    pub status: Status,
    /// The tag, when the request got that far (zeros otherwise).
    pub tag: Tag,
    /// The operation byte, when the request got that far.
    pub op: u8,
}

fn take<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at + N)?.try_into().ok()
}

/// Parses a request. A refusal says what to answer.
pub fn parse_request(b: &[u8]) -> Result<Request<'_>, Refused> {
    let refused = |status, tag, op| Refused { status, tag, op };
    let (Some(&version), Some(&service)) = (b.first(), b.get(1)) else {
        return Err(refused(Status::Malformed, [0; TAG_LEN], 0));
    };
    let Some(tag) = take::<TAG_LEN>(b, 2) else {
        return Err(refused(Status::Malformed, [0; TAG_LEN], 0));
    };
    if version != VERSION {
        return Err(refused(Status::Version, tag, 0));
    }
    if service != SERVICE_STORAGE {
        return Err(refused(Status::UnknownService, tag, 0));
    }
    let Some(&op_byte) = b.get(2 + TAG_LEN) else {
        return Err(refused(Status::Malformed, tag, 0));
    };
    let Some(op) = Op::from_u8(op_byte) else {
        return Err(refused(Status::UnknownOp, tag, op_byte));
    };
    let malformed = refused(Status::Malformed, tag, op_byte);
    let box_id = take::<BOX_ID_LEN>(b, 3 + TAG_LEN).ok_or(malformed)?;
    let rest = &b[REQUEST_HEADER..];
    match op {
        Op::Get if rest.is_empty() => Ok(Request::Get { tag, box_id }),
        Op::Tombstone if rest.len() == SIGNATURE_LEN => Ok(Request::Tombstone {
            tag,
            box_id,
            signature: take::<SIGNATURE_LEN>(rest, 0).ok_or(malformed)?,
        }),
        Op::Put => {
            let signature = take::<SIGNATURE_LEN>(rest, 0).ok_or(malformed)?;
            let len = usize::from(u16::from_be_bytes(
                take::<2>(rest, SIGNATURE_LEN).ok_or(malformed)?,
            ));
            let block = &rest[SIGNATURE_LEN + 2..];
            if len > BLOCK_LEN {
                return Err(refused(Status::TooLarge, tag, op_byte));
            }
            if block.len() != len {
                return Err(malformed);
            }
            Ok(Request::Put {
                tag,
                box_id,
                signature,
                block,
            })
        }
        _ => Err(malformed),
    }
}

fn header(out: &mut Vec<u8>, service: u8, tag: &Tag, op: Op, box_id: &BoxId) {
    out.push(VERSION);
    out.push(service);
    out.extend_from_slice(tag);
    out.push(op as u8);
    out.extend_from_slice(box_id);
}

/// Encodes a PUT (the block may be at most [`BLOCK_LEN`]; longer is encoded as asked, for
/// tests of the provider's refusal, with its length field saturated).
pub fn encode_put(tag: &Tag, box_id: &BoxId, signature: &[u8; 64], block: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(REQUEST_HEADER + SIGNATURE_LEN + 2 + block.len());
    header(&mut out, SERVICE_STORAGE, tag, Op::Put, box_id);
    out.extend_from_slice(signature);
    out.extend_from_slice(&u16::try_from(block.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(block);
    out
}

/// Encodes a GET.
pub fn encode_get(tag: &Tag, box_id: &BoxId) -> Vec<u8> {
    let mut out = Vec::with_capacity(REQUEST_HEADER);
    header(&mut out, SERVICE_STORAGE, tag, Op::Get, box_id);
    out
}

/// Encodes a TOMBSTONE.
pub fn encode_tombstone(tag: &Tag, box_id: &BoxId, signature: &[u8; 64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(REQUEST_HEADER + SIGNATURE_LEN);
    header(&mut out, SERVICE_STORAGE, tag, Op::Tombstone, box_id);
    out.extend_from_slice(signature);
    out
}

/// A response.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    /// The service answering.
    pub service: u8,
    /// The request's tag.
    pub tag: Tag,
    /// The request's operation byte (0 when it did not parse that far).
    pub op: u8,
    /// The answer.
    pub status: Status,
    /// The box asked about (zeros when the request did not parse that far).
    pub box_id: BoxId,
    /// For `Found`: the block's signature; zeros otherwise.
    pub signature: [u8; SIGNATURE_LEN],
    /// For `Found`: the block's length.
    pub block_len: u16,
    /// For `Found`: the block, zero-padded; zeros otherwise.
    pub block: [u8; BLOCK_LEN],
}

impl core::fmt::Debug for Response {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Response")
            .field("op", &self.op)
            .field("status", &self.status)
            .field("block_len", &self.block_len)
            .finish_non_exhaustive()
    }
}

impl Response {
    /// A response without a block.
    pub fn bare(tag: Tag, op: u8, status: Status, box_id: BoxId) -> Response {
        Response {
            service: SERVICE_STORAGE,
            tag,
            op,
            status,
            box_id,
            signature: [0; SIGNATURE_LEN],
            block_len: 0,
            block: [0; BLOCK_LEN],
        }
    }

    /// The fixed-size encoding.
    pub fn encode(&self) -> [u8; RESPONSE_LEN] {
        let mut out = [0u8; RESPONSE_LEN];
        out[0] = VERSION;
        out[1] = self.service;
        out[2..2 + TAG_LEN].copy_from_slice(&self.tag);
        let mut at = 2 + TAG_LEN;
        out[at] = self.op;
        out[at + 1] = self.status as u8;
        at += 2;
        out[at..at + BOX_ID_LEN].copy_from_slice(&self.box_id);
        at += BOX_ID_LEN;
        out[at..at + SIGNATURE_LEN].copy_from_slice(&self.signature);
        at += SIGNATURE_LEN;
        out[at..at + 2].copy_from_slice(&self.block_len.to_be_bytes());
        at += 2;
        out[at..].copy_from_slice(&self.block);
        out
    }

    /// Parses a response; `None` unless it is [`RESPONSE_LEN`] bytes of this version with a
    /// known status and a block length in range.
    pub fn decode(b: &[u8]) -> Option<Response> {
        if b.len() != RESPONSE_LEN || b[0] != VERSION {
            return None;
        }
        let mut at = 2 + TAG_LEN;
        let status = Status::from_u8(b[at + 1])?;
        let op = b[at];
        at += 2;
        let box_id = take::<BOX_ID_LEN>(b, at)?;
        at += BOX_ID_LEN;
        let signature = take::<SIGNATURE_LEN>(b, at)?;
        at += SIGNATURE_LEN;
        let block_len = u16::from_be_bytes(take::<2>(b, at)?);
        at += 2;
        if usize::from(block_len) > BLOCK_LEN {
            return None;
        }
        Some(Response {
            service: b[1],
            tag: take::<TAG_LEN>(b, 2)?,
            op,
            status,
            box_id,
            signature,
            block_len,
            block: take::<BLOCK_LEN>(b, at)?,
        })
    }
}
