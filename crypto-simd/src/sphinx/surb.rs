//! Single-use reply blocks (SURBs) in the single-seed form of `sphinx-packet` 0.8 (version
//! 260).
//!
//! The SURB's creator builds a header for a route that ends at itself, and hands out the
//! header, the first hop's ID and the last hop's payload key seed. Whoever replies adds one
//! Lioness layer with that seed's key; every hop, the creator's included, removes one layer
//! with its own key; only the creator, holding every hop's seed in its [`SurbRecovery`], can
//! undo the hops' work and read the reply. Handing out every seed (version 259) would let
//! the replier precompute the payload at each hop and link the reply to its recipient.

use rand_core::CryptoRng;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::error::{BuildError, PayloadError, SurbError};
use super::geometry::{HEADER_LEN, IDENTIFIER_LEN, MAX_HOPS, NODE_ID_LEN, payload_size_ok};
use super::header::{HeaderRandomness, build_header, check_route, derive_route_keys, header_mut};
use super::keys::{PAYLOAD_SEED_LEN, PayloadSeed, payload_key_from_seed};
use super::payload::{add_layer, encode_plaintext, recover_plaintext, remove_layer};
use super::route::{Delay, Destination, Hop, NodeId, Version};

/// A single-use reply block: a precomputed header, the first hop, and the payload key
/// seed(s) the replier encrypts with. Bytes: header (348) || first hop (32) || seeds (16
/// each; one for the single-seed form this crate creates, one per hop for version 259).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Surb {
    header: [u8; HEADER_LEN],
    first_hop: [u8; NODE_ID_LEN],
    seeds: [PayloadSeed; MAX_HOPS],
    seed_count: usize,
}

impl core::fmt::Debug for Surb {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Surb")
            .field("seeds", &self.seed_count)
            .finish_non_exhaustive()
    }
}

/// What only a SURB's creator keeps: the SURB's identifier and every hop's payload key seed,
/// in route order. Bytes: identifier (16) || seeds (16 each).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SurbRecovery {
    identifier: [u8; IDENTIFIER_LEN],
    seeds: [PayloadSeed; MAX_HOPS],
    seed_count: usize,
}

impl core::fmt::Debug for SurbRecovery {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SurbRecovery")
            .field("hops", &self.seed_count)
            .finish_non_exhaustive()
    }
}

fn parse_seeds(bytes: &[u8]) -> Result<([PayloadSeed; MAX_HOPS], usize), SurbError> {
    let (chunks, rest) = bytes.as_chunks::<PAYLOAD_SEED_LEN>();
    if !rest.is_empty() || chunks.len() > MAX_HOPS {
        return Err(SurbError::Length);
    }
    if chunks.is_empty() {
        return Err(SurbError::NoSeeds);
    }
    let mut seeds = [[0u8; PAYLOAD_SEED_LEN]; MAX_HOPS];
    seeds[..chunks.len()].copy_from_slice(chunks);
    Ok((seeds, chunks.len()))
}

impl Surb {
    /// Creates a SURB for a reply along `route` (which should end at the creator) with one
    /// delay per hop but the last, delivered to `destination`, whose identifier must not be
    /// zero (it is what the creator finds the [`SurbRecovery`] by). Randomness comes from
    /// `rng`, as for [`super::build_packet`].
    pub fn new<R: CryptoRng + ?Sized>(
        route: &[Hop],
        delays: &[Delay],
        destination: &Destination,
        rng: &mut R,
    ) -> Result<(Self, SurbRecovery), BuildError> {
        check_route(route, delays)?;
        if destination.identifier == [0u8; IDENTIFIER_LEN] {
            return Err(BuildError::ZeroIdentifier);
        }
        let randomness = HeaderRandomness::draw(route.len(), rng);
        let keys = derive_route_keys(&randomness.secret, route)?;
        let mut header = [0u8; HEADER_LEN];
        build_header(
            &keys,
            route,
            delays,
            destination,
            Version::SINGLE_SEED_SURB,
            &randomness,
            &mut header,
        );

        let mut seeds = [[0u8; PAYLOAD_SEED_LEN]; MAX_HOPS];
        for (seed, hop) in seeds.iter_mut().zip(keys.hops()) {
            *seed = hop.payload_seed();
        }
        let n = keys.hops().len();
        let mut surb_seeds = [[0u8; PAYLOAD_SEED_LEN]; MAX_HOPS];
        surb_seeds[0] = seeds[n - 1];
        let surb = Surb {
            header,
            first_hop: route[0].id.0,
            seeds: surb_seeds,
            seed_count: 1,
        };
        let recovery = SurbRecovery {
            identifier: destination.identifier,
            seeds,
            seed_count: n,
        };
        Ok((surb, recovery))
    }

    /// The node the reply is sent to first.
    pub fn first_hop(&self) -> NodeId {
        NodeId(self.first_hop)
    }

    /// Writes a reply carrying `message` into `out` (header + payload; `out.len() - 348` is
    /// the payload size) and returns the node to send it to.
    pub fn write_reply(&self, message: &[u8], out: &mut [u8]) -> Result<NodeId, BuildError> {
        let (header, payload) = header_mut(out).ok_or(BuildError::PayloadSize)?;
        if !payload_size_ok(payload.len()) {
            return Err(BuildError::PayloadSize);
        }
        encode_plaintext(message, payload)?;
        for seed in self.seeds[..self.seed_count].iter().rev() {
            let mut key = payload_key_from_seed(seed);
            add_layer(&key, payload);
            key.zeroize();
        }
        header.copy_from_slice(&self.header);
        Ok(self.first_hop())
    }

    /// The length of [`Self::to_bytes`].
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + NODE_ID_LEN + PAYLOAD_SEED_LEN * self.seed_count
    }

    /// header || first hop || seeds.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&self.first_hop);
        for seed in &self.seeds[..self.seed_count] {
            out.extend_from_slice(seed);
        }
        out
    }

    /// Reads a SURB written by [`Self::to_bytes`] or by `sphinx-packet` 0.8.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SurbError> {
        let (header, rest) = bytes
            .split_first_chunk::<HEADER_LEN>()
            .ok_or(SurbError::Length)?;
        let (first_hop, seeds) = rest
            .split_first_chunk::<NODE_ID_LEN>()
            .ok_or(SurbError::Length)?;
        let (seeds, seed_count) = parse_seeds(seeds)?;
        Ok(Self {
            header: *header,
            first_hop: *first_hop,
            seeds,
            seed_count,
        })
    }
}

impl SurbRecovery {
    /// The identifier the reply arrives with.
    pub fn identifier(&self) -> [u8; IDENTIFIER_LEN] {
        self.identifier
    }

    /// Recovers the reply's plaintext from its payload as the final hop (the creator)
    /// decrypted it, in place: re-adds every hop's layer, last hop first, which leaves the one
    /// layer the replier added, then removes it.
    pub fn recover<'a>(&self, payload: &'a mut [u8]) -> Result<&'a [u8], PayloadError> {
        if !payload_size_ok(payload.len()) {
            return Err(PayloadError::TooShort);
        }
        let seeds = &self.seeds[..self.seed_count];
        let Some(last) = seeds.last() else {
            return Err(PayloadError::Corrupt);
        };
        for seed in seeds.iter().rev() {
            let mut key = payload_key_from_seed(seed);
            add_layer(&key, payload);
            key.zeroize();
        }
        let mut key = payload_key_from_seed(last);
        remove_layer(&key, payload);
        key.zeroize();
        recover_plaintext(payload)
    }

    /// identifier || seeds.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(IDENTIFIER_LEN + PAYLOAD_SEED_LEN * self.seed_count);
        out.extend_from_slice(&self.identifier);
        for seed in &self.seeds[..self.seed_count] {
            out.extend_from_slice(seed);
        }
        out
    }

    /// Reads recovery material written by [`Self::to_bytes`] or by `sphinx-packet` 0.8.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SurbError> {
        let (identifier, seeds) = bytes
            .split_first_chunk::<IDENTIFIER_LEN>()
            .ok_or(SurbError::Length)?;
        let (seeds, seed_count) = parse_seeds(seeds)?;
        Ok(Self {
            identifier: *identifier,
            seeds,
            seed_count,
        })
    }
}
