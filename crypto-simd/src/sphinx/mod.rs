//! Sphinx packets, byte-compatible with the `sphinx-packet` 0.8 crate (Nym's format).
//!
//! A packet is a 348-byte header (alpha: an X25519 group element; gamma: a 16-byte MAC;
//! beta: 300 bytes of layered routing information for up to five hops) followed by a payload
//! wrapped in one Lioness layer per hop. Each hop derives one shared secret with its mix
//! key, checks the MAC, reads its routing slot, removes a payload layer, and re-blinds alpha
//! for the next hop. `docs/sphinx.md` gives the byte layout and the key schedule.
//!
//! Everything here writes into caller-owned buffers; processing a packet allocates nothing,
//! and every failure is a `Copy` reason, never a panic.
//!
//! ```
//! use crypto_simd::sphinx::{self, Delay, Destination, Hop, MixSecretKey, NodeId, Routing};
//! # let mut rng = rand_chacha::ChaCha20Rng::from_seed([7; 32]);
//! # use rand_chacha::rand_core::SeedableRng;
//! let secrets: Vec<MixSecretKey> = (0..3).map(|_| MixSecretKey::generate(&mut rng)).collect();
//! let route: Vec<Hop> = secrets
//!     .iter()
//!     .enumerate()
//!     .map(|(i, s)| Hop { id: NodeId([i as u8; 32]), key: s.public_key() })
//!     .collect();
//! let delays = [Delay::from_nanos(1_000_000); 2];
//! let destination = Destination { address: [9; 32], identifier: [0; 16] };
//! let mut packet = [0u8; sphinx::DEFAULT_PACKET_SIZE];
//! sphinx::build_packet(&route, &delays, &destination, b"hello", &mut rng, &mut packet)?;
//!
//! for secret in &secrets {
//!     let processed = sphinx::process_in_place(secret, &mut packet)?;
//!     if let Routing::Final { destination: d } = processed.routing {
//!         assert_eq!(d, destination);
//!         let message = sphinx::recover_plaintext(&packet[sphinx::HEADER_LEN..])?;
//!         assert_eq!(message, b"hello");
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod batch;
mod error;
pub mod geometry;
mod header;
mod keys;
mod packet;
mod payload;
mod primitives;
mod route;
mod surb;

pub use batch::{
    PacketRequest, build_cover_packets, build_packets, build_packets_on, process_batch_in_place,
    process_batch_in_place_on,
};
pub use error::{BuildError, PayloadError, ProcessError, SurbError};
pub use geometry::{
    DEFAULT_PACKET_SIZE, DEFAULT_PAYLOAD_SIZE, HEADER_LEN, MAX_HOPS, MAX_PAYLOAD_SIZE,
    MIN_PAYLOAD_SIZE, PAYLOAD_OVERHEAD,
};
pub use header::{Processed, Routing};
pub use packet::{Packet, build_packet, process, process_in_place};
pub use payload::recover_plaintext;
pub use route::{Delay, Destination, Hop, MixPublicKey, MixSecretKey, NodeId, ReplayTag, Version};
pub use surb::{Surb, SurbRecovery};
