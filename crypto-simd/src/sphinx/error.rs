//! Why an operation failed: small `Copy` enums, one variant per reason, so that a node maps
//! each to one drop counter without allocating.

use super::geometry::{MAX_HOPS, MAX_PAYLOAD_SIZE, MIN_PAYLOAD_SIZE};

/// Why a node could not process a packet. A node drops the packet and counts the reason.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, thiserror::Error)]
pub enum ProcessError {
    /// The packet is shorter than a header and the smallest payload
    /// (348 + 33 bytes). Truncated or not a Sphinx packet.
    #[error(
        "packet too short: needs at least the 348-byte header and a {MIN_PAYLOAD_SIZE}-byte payload"
    )]
    TooShort,
    /// The packet's payload is longer than one UDP datagram can carry.
    #[error("packet too long: the payload exceeds {MAX_PAYLOAD_SIZE} bytes")]
    TooLong,
    /// The output buffer's length differs from the packet's. A caller bug: pass a buffer of
    /// exactly the packet's length.
    #[error("output buffer length differs from the packet length")]
    OutputLength,
    /// The packet's group element (alpha) has small order, so the shared secret is zero and
    /// the packet could have been made by anyone. A crafted packet.
    #[error("the packet's group element has small order")]
    LowOrderAlpha,
    /// The header is not authentic: its MAC does not verify under this node's key, or its
    /// group element carries bits no sender writes (bit 255, or a value at or above
    /// 2^255 - 19). The packet was tampered with, is meant for another node, or was made
    /// under another epoch's key.
    #[error("header MAC mismatch: tampered, or not for this node's key")]
    HeaderMac,
    /// The routing flag is neither forward (1) nor final (2). The sender built a bad header.
    #[error("unknown routing flag in an authentic header")]
    UnknownFlag,
    /// The version in an authentic header is not one the format knows.
    #[error("unknown format version in an authentic header")]
    UnknownVersion,
}

/// Why a packet or SURB could not be built. Each is a caller error the message says how to
/// fix.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, thiserror::Error)]
pub enum BuildError {
    /// The route has no hops.
    #[error("the route is empty: give 1 to {MAX_HOPS} hops")]
    EmptyRoute,
    /// The route has more than five hops.
    #[error("the route is too long: at most {MAX_HOPS} hops")]
    RouteTooLong,
    /// There must be one delay per hop but the last (the final hop delivers, it does not
    /// forward).
    #[error("wrong number of delays: give one per hop except the last")]
    DelayCount,
    /// The output buffer's length gives a payload size outside what the format allows.
    #[error(
        "output buffer gives a payload size outside {MIN_PAYLOAD_SIZE}..={MAX_PAYLOAD_SIZE} bytes (buffer = 348-byte header + payload)"
    )]
    PayloadSize,
    /// The message does not fit the payload: at most the payload size minus 17 bytes.
    #[error("message too long for the payload: at most payload size - 17 bytes")]
    MessageTooLong,
    /// A hop's mix public key has small order: its shared secret would be zero. The key in
    /// the consensus is broken; pick another hop.
    #[error("a hop's mix public key has small order")]
    WeakHopKey,
    /// A SURB needs a non-zero identifier: it is how the creator finds the recovery
    /// material for the reply.
    #[error("a SURB needs a non-zero identifier")]
    ZeroIdentifier,
}

/// Why a decrypted payload yielded no plaintext.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, thiserror::Error)]
pub enum PayloadError {
    /// The payload is shorter than the format allows.
    #[error("payload too short")]
    TooShort,
    /// The 16 leading bytes are not zero: the payload was tampered with in transit, or was
    /// decrypted with the wrong keys.
    #[error("payload corrupt: tampered in transit or decrypted with the wrong keys")]
    Corrupt,
    /// No `0x01` terminator ends the plaintext, or non-zero bytes follow it.
    #[error("payload padding malformed")]
    BadPadding,
}

/// Why bytes could not be read as a SURB or as SURB recovery material.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, thiserror::Error)]
pub enum SurbError {
    /// The length is not header + first hop + 1 to 5 seeds (or identifier + 1 to 5 seeds).
    #[error("wrong length for a SURB or its recovery material")]
    Length,
    /// The recovery material has no seeds.
    #[error("recovery material without seeds")]
    NoSeeds,
}
