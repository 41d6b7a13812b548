//! The cryptography of a mixed node: the Sphinx packet layer ([`sphinx`]), byte-compatible
//! with the `sphinx-packet` 0.8 crate, and (from the SIMD issue) batched X25519 ladders that
//! unwrap many packets at a time across vector lanes.
//!
//! Nothing here reads a clock, touches a socket or calls OS randomness: randomness is passed
//! in as `&mut impl CryptoRng`, so a seeded run builds identical bytes.

pub mod sphinx;
pub mod x25519;
