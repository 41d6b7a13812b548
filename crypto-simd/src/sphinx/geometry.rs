//! The byte geometry of a Sphinx packet, with the arithmetic behind every size.
//!
//! Every constant here follows the `sphinx-packet` 0.8 format (see `docs/sphinx.md`); only
//! [`DEFAULT_PACKET_SIZE`] is a choice of ours.

/// The Sphinx security parameter (Danezis and Goldberg's *k*), in bytes: 128 bits.
///
/// Not to be confused with the paper's *k* of section 4.5, the number of RaptorQ source
/// symbols of a message.
pub const SECURITY_PARAMETER: usize = 16;

/// Most hops a packet can take (Sphinx's *r*). The paper's *h*, the maximum number of hops
/// of the network, can be at most this.
pub const MAX_HOPS: usize = 5;

/// Length of a node ID (the address of a hop inside a header): 32 bytes, the hash of the
/// node's identity key, resolved to IP and port through the consensus document.
pub const NODE_ID_LEN: usize = 2 * SECURITY_PARAMETER;

/// Length of the destination address a final hop reads.
pub const DESTINATION_LEN: usize = 2 * SECURITY_PARAMETER;

/// Length of the destination identifier (the SURB identifier, Sphinx's *I*).
pub const IDENTIFIER_LEN: usize = SECURITY_PARAMETER;

/// Length of an X25519 group element or scalar.
pub const GROUP_ELEMENT_LEN: usize = 32;

/// Length of the truncated HMAC-SHA256 that authenticates the routing information (Sphinx's
/// gamma).
pub const MAC_LEN: usize = SECURITY_PARAMETER;

/// Length of the routing flag byte (1: forward, 2: final).
pub const FLAG_LEN: usize = 1;

/// Length of the version field: three bytes, the first always zero, then a big-endian `u16`.
pub const VERSION_LEN: usize = 3;

/// Length of the per-hop delay: a big-endian `u64` of nanoseconds.
pub const DELAY_LEN: usize = 8;

/// What a forward hop reads in clear: flag, version, next node ID, delay:
/// 1 + 3 + 32 + 8 = 44 bytes.
pub const HOP_META_LEN: usize = FLAG_LEN + VERSION_LEN + NODE_ID_LEN + DELAY_LEN;

/// What a final hop reads in clear: flag, version, destination, identifier:
/// 1 + 3 + 32 + 16 = 52 bytes.
pub const FINAL_META_LEN: usize = FLAG_LEN + VERSION_LEN + DESTINATION_LEN + IDENTIFIER_LEN;

/// The slot one hop takes in the routing information: its meta data and the next hop's MAC,
/// 44 + 16 = 60 bytes. Each hop shifts the routing information left by this much.
pub const HOP_SLOT_LEN: usize = HOP_META_LEN + MAC_LEN;

/// Length of the encrypted routing information (Sphinx's beta): one slot per possible hop,
/// 60 * 5 = 300 bytes.
pub const ROUTING_INFO_LEN: usize = HOP_SLOT_LEN * MAX_HOPS;

/// Length of the keystream a hop draws to decrypt the routing information: beta plus one
/// slot of padding, 300 + 60 = 360 bytes.
pub const STREAM_LEN: usize = ROUTING_INFO_LEN + HOP_SLOT_LEN;

/// Length of a Sphinx header: alpha, gamma, beta: 32 + 16 + 300 = 348 bytes.
pub const HEADER_LEN: usize = GROUP_ELEMENT_LEN + MAC_LEN + ROUTING_INFO_LEN;

/// Offset of the MAC (gamma) in a header.
pub const MAC_OFFSET: usize = GROUP_ELEMENT_LEN;

/// Offset of the routing information (beta) in a header.
pub const ROUTING_INFO_OFFSET: usize = MAC_OFFSET + MAC_LEN;

/// Length of the Lioness block cipher's left part (the BLAKE2b output), which a payload must
/// exceed.
pub const LIONESS_LEFT_LEN: usize = 32;

/// Bytes of a payload the plaintext cannot use: 16 leading zero bytes (which make tampering
/// visible once the payload is decrypted) and the one-byte terminator `0x01`.
pub const PAYLOAD_OVERHEAD: usize = SECURITY_PARAMETER + 1;

/// Smallest payload the format allows: Lioness needs a block strictly longer than its 32-byte
/// left part, so 33 bytes (room for 16 bytes of plaintext).
pub const MIN_PAYLOAD_SIZE: usize = LIONESS_LEFT_LEN + 1;

/// The largest UDP payload over IPv4 (65,535 - 20 - 8), the most one datagram can carry.
pub const MAX_DATAGRAM_SIZE: usize = 65_507;

/// Largest payload: one packet is one UDP datagram, so 65,507 - 348 = 65,159 bytes. (The
/// format itself would allow more; a datagram would not.)
pub const MAX_PAYLOAD_SIZE: usize = MAX_DATAGRAM_SIZE - HEADER_LEN;

/// The largest UDP payload that never needs IP fragmentation on a 1,500-byte MTU path over
/// IPv6: 1,500 - 40 (IPv6 header) - 8 (UDP header) = 1,452 bytes. (IPv4's header is 20
/// bytes, so the same datagram fits there too.)
pub const MTU_SAFE_DATAGRAM_SIZE: usize = 1_500 - 40 - 8;

/// Default packet size: exactly one MTU-safe datagram, 1,452 bytes. The packet size is a
/// network parameter of the consensus document; this is the default it takes.
pub const DEFAULT_PACKET_SIZE: usize = MTU_SAFE_DATAGRAM_SIZE;

/// Default payload size: 1,452 - 348 = 1,104 bytes.
pub const DEFAULT_PAYLOAD_SIZE: usize = DEFAULT_PACKET_SIZE - HEADER_LEN;

/// Largest plaintext a default-size packet carries: 1,104 - 17 = 1,087 bytes.
pub const DEFAULT_MAX_PLAINTEXT: usize = DEFAULT_PAYLOAD_SIZE - PAYLOAD_OVERHEAD;

/// The length of a packet with the given payload size.
pub const fn packet_len(payload_size: usize) -> usize {
    HEADER_LEN + payload_size
}

/// Whether `payload_size` is one the format and a single datagram allow.
pub const fn payload_size_ok(payload_size: usize) -> bool {
    payload_size >= MIN_PAYLOAD_SIZE && payload_size <= MAX_PAYLOAD_SIZE
}

const _: () = {
    assert!(HEADER_LEN == 348);
    assert!(STREAM_LEN == 360);
    assert!(DEFAULT_PACKET_SIZE == 1_452);
    assert!(DEFAULT_PAYLOAD_SIZE == 1_104);
    assert!(payload_size_ok(DEFAULT_PAYLOAD_SIZE));
    assert!(payload_size_ok(1_024));
    // the final hop's meta data fits in what is left of beta on the longest route
    assert!(ROUTING_INFO_LEN - HOP_SLOT_LEN * (MAX_HOPS - 1) >= FINAL_META_LEN);
};
