//! Random routes and the conversions between our types and `sphinx-packet` 0.8's, shared by
//! the integration tests.

#![allow(dead_code, unreachable_pub, missing_docs)]

use crypto_simd::sphinx::{
    DEFAULT_PAYLOAD_SIZE, Delay, Destination, Hop, MIN_PAYLOAD_SIZE, MixSecretKey, NodeId,
    PAYLOAD_OVERHEAD,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use sphinx_packet::route::{
    Destination as TheirDestination, DestinationAddressBytes, Node, NodeAddressBytes,
};

/// The payload sizes the differential tests cover: the old default, ours, and the smallest.
pub const PAYLOAD_SIZES: [usize; 3] = [1024, DEFAULT_PAYLOAD_SIZE, MIN_PAYLOAD_SIZE];

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// One node of a test network: its secret in both crates' types and its place in a route.
pub struct TestNode {
    pub secret: MixSecretKey,
    pub their_secret: x25519_dalek::StaticSecret,
    pub hop: Hop,
}

pub struct Case {
    pub nodes: Vec<TestNode>,
    /// One delay per hop but the last (ours).
    pub delays: Vec<Delay>,
    pub destination: Destination,
    pub payload_size: usize,
    pub message: Vec<u8>,
}

impl Case {
    pub fn random(rng: &mut ChaCha20Rng, hops: usize, payload_size: usize) -> Self {
        let nodes = (0..hops)
            .map(|_| {
                let secret = MixSecretKey::generate(rng);
                let mut id = [0u8; 32];
                rng.fill_bytes(&mut id);
                TestNode {
                    their_secret: x25519_dalek::StaticSecret::from(secret.to_bytes()),
                    hop: Hop {
                        id: NodeId(id),
                        key: secret.public_key(),
                    },
                    secret,
                }
            })
            .collect();
        // delays from zero to beyond 2^63 ns, including the extremes now and then
        let delays = (0..hops - 1)
            .map(|_| {
                Delay::from_nanos(match rng.next_u32() % 8 {
                    0 => 0,
                    1 => u64::MAX,
                    _ => rng.next_u64() >> (rng.next_u32() % 64),
                })
            })
            .collect();
        let mut destination = Destination {
            address: [0; 32],
            identifier: [0; 16],
        };
        rng.fill_bytes(&mut destination.address);
        rng.fill_bytes(&mut destination.identifier);
        let max = payload_size - PAYLOAD_OVERHEAD;
        let len = match rng.next_u32() % 4 {
            0 => 0,
            1 => max,
            _ => (rng.next_u32() as usize) % (max + 1),
        };
        let mut message = vec![0u8; len];
        rng.fill_bytes(&mut message);
        Case {
            nodes,
            delays,
            destination,
            payload_size,
            message,
        }
    }

    pub fn route(&self) -> Vec<Hop> {
        self.nodes.iter().map(|n| n.hop).collect()
    }

    pub fn their_route(&self) -> Vec<Node> {
        self.nodes
            .iter()
            .map(|n| {
                Node::new(
                    NodeAddressBytes::from_bytes(n.hop.id.0),
                    x25519_dalek::PublicKey::from(n.hop.key.0),
                )
            })
            .collect()
    }

    /// `sphinx-packet` wants a delay for the final hop too, which it never writes.
    pub fn their_delays(&self) -> Vec<sphinx_packet::header::delays::Delay> {
        self.delays
            .iter()
            .map(|d| d.as_nanos())
            .chain(std::iter::once(0))
            .map(sphinx_packet::header::delays::Delay::new_from_nanos)
            .collect()
    }

    pub fn their_destination(&self) -> TheirDestination {
        TheirDestination::new(
            DestinationAddressBytes::from_bytes(self.destination.address),
            self.destination.identifier,
        )
    }

    pub fn packet_len(&self) -> usize {
        crypto_simd::sphinx::HEADER_LEN + self.payload_size
    }

    /// The case's packet, built by us with randomness from `rng`.
    pub fn build(&self, rng: &mut ChaCha20Rng) -> Vec<u8> {
        let mut packet = vec![0u8; self.packet_len()];
        crypto_simd::sphinx::build_packet(
            &self.route(),
            &self.delays,
            &self.destination,
            &self.message,
            rng,
            &mut packet,
        )
        .expect("build");
        packet
    }
}
