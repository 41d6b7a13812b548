//! Building a header for a route, and unwrapping one layer of it at a hop.
//!
//! Byte layout (see `docs/sphinx.md`): alpha (32) || gamma (16) || beta (300).

use rand_core::CryptoRng;
use zeroize::Zeroize;

use super::error::{BuildError, ProcessError};
use super::geometry::{
    DELAY_LEN, DESTINATION_LEN, FINAL_META_LEN, FLAG_LEN, GROUP_ELEMENT_LEN, HEADER_LEN,
    HOP_META_LEN, HOP_SLOT_LEN, IDENTIFIER_LEN, MAC_LEN, MAC_OFFSET, MAX_HOPS, NODE_ID_LEN,
    ROUTING_INFO_LEN, ROUTING_INFO_OFFSET, STREAM_LEN, VERSION_LEN,
};
use super::keys::HopKeys;
use super::primitives::{
    aes128_ctr_xor, header_mac, header_mac_ok, is_canonical_u, is_zero, x25519, x25519_base,
};
use super::route::{Delay, Destination, Hop, NodeId, ReplayTag, Version};

/// Routing flag of a forward hop.
const FORWARD_FLAG: u8 = 1;
/// Routing flag of the final hop.
const FINAL_FLAG: u8 = 2;

// offsets inside a decrypted routing slot
const VERSION_AT: usize = FLAG_LEN;
const ADDRESS_AT: usize = VERSION_AT + VERSION_LEN;
const DELAY_AT: usize = ADDRESS_AT + NODE_ID_LEN;
const NEXT_MAC_AT: usize = DELAY_AT + DELAY_LEN;
const IDENTIFIER_AT: usize = ADDRESS_AT + DESTINATION_LEN;
const _: () = assert!(NEXT_MAC_AT == HOP_META_LEN);
const _: () = assert!(IDENTIFIER_AT + IDENTIFIER_LEN == FINAL_META_LEN);

/// What a hop does with a packet, read from its authentic routing information.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Routing {
    /// Hold the packet for `delay`, then send it to `next_hop`.
    Forward {
        /// The next hop's node ID.
        next_hop: NodeId,
        /// How long to hold the packet first.
        delay: Delay,
    },
    /// This hop is the last: deliver the payload to `destination`.
    Final {
        /// The destination address and identifier.
        destination: Destination,
    },
}

/// The outcome of processing a packet at a hop.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Processed {
    /// The packet's replay tag at this node: drop the packet if the tag was seen before
    /// under the same key.
    pub replay_tag: ReplayTag,
    /// The format version the sender wrote for this hop.
    pub version: Version,
    /// What to do with the packet.
    pub routing: Routing,
}

/// A header unwrapped up to the second X25519: the new MAC and routing information are in
/// place, the new alpha is still to be computed as X25519(blinding, alpha) for forward
/// hops. Splitting here lets a batched path run both ladders of many packets across lanes.
pub(crate) struct Unwrapped {
    pub(crate) processed: Processed,
    pub(crate) keys: HopKeys,
}

/// Checks alpha before any ladder runs: it must be a canonical encoding (X25519 ignores bit
/// 255, so a flip there would otherwise pass unnoticed). Reported as a MAC failure: the
/// header is not what its sender wrote.
pub(crate) fn check_alpha(header: &[u8; HEADER_LEN]) -> Result<[u8; 32], ProcessError> {
    let alpha = alpha_of(header);
    if is_canonical_u(&alpha) {
        Ok(alpha)
    } else {
        Err(ProcessError::HeaderMac)
    }
}

pub(crate) fn alpha_of(header: &[u8; HEADER_LEN]) -> [u8; 32] {
    let mut alpha = [0u8; GROUP_ELEMENT_LEN];
    alpha.copy_from_slice(&header[..GROUP_ELEMENT_LEN]);
    alpha
}

/// Unwraps one layer of `header` given the hop's shared secret s = X25519(node secret,
/// alpha): checks the MAC (before anything else of the header is read), decrypts the routing
/// information and, for a forward hop, writes the next hop's MAC and routing information in
/// place. Alpha is left as it was. On error the header is unchanged.
pub(crate) fn unwrap_header(
    shared_secret: &[u8; 32],
    header: &mut [u8; HEADER_LEN],
) -> Result<Unwrapped, ProcessError> {
    if is_zero(shared_secret) {
        return Err(ProcessError::LowOrderAlpha);
    }
    let keys = HopKeys::from_shared_secret(shared_secret);

    let (_, rest) = header.split_at_mut(MAC_OFFSET);
    let (gamma, beta) = rest.split_at_mut(MAC_LEN);
    let mut tag = [0u8; MAC_LEN];
    tag.copy_from_slice(gamma);
    if !header_mac_ok(&keys.mac_key(), beta, &tag) {
        return Err(ProcessError::HeaderMac);
    }

    // (beta || 60 zero bytes) XOR rho, rho = AES-128-CTR(h_rho(s), 0) of 360 bytes
    let mut plain = [0u8; STREAM_LEN];
    plain[..ROUTING_INFO_LEN].copy_from_slice(beta);
    aes128_ctr_xor(&keys.stream_key(), &mut plain);

    let mut version_bytes = [0u8; VERSION_LEN];
    version_bytes.copy_from_slice(&plain[VERSION_AT..ADDRESS_AT]);
    let flag = plain[0];
    if flag != FORWARD_FLAG && flag != FINAL_FLAG {
        plain.zeroize();
        return Err(ProcessError::UnknownFlag);
    }
    let Some(version) = Version::parse(version_bytes) else {
        plain.zeroize();
        return Err(ProcessError::UnknownVersion);
    };

    let routing = if flag == FORWARD_FLAG {
        let mut next_hop = [0u8; NODE_ID_LEN];
        next_hop.copy_from_slice(&plain[ADDRESS_AT..DELAY_AT]);
        let mut delay = [0u8; DELAY_LEN];
        delay.copy_from_slice(&plain[DELAY_AT..NEXT_MAC_AT]);
        gamma.copy_from_slice(&plain[NEXT_MAC_AT..HOP_SLOT_LEN]);
        beta.copy_from_slice(&plain[HOP_SLOT_LEN..]);
        Routing::Forward {
            next_hop: NodeId(next_hop),
            delay: Delay::from_bytes(delay),
        }
    } else {
        let mut address = [0u8; DESTINATION_LEN];
        address.copy_from_slice(&plain[ADDRESS_AT..IDENTIFIER_AT]);
        let mut identifier = [0u8; IDENTIFIER_LEN];
        identifier.copy_from_slice(&plain[IDENTIFIER_AT..FINAL_META_LEN]);
        Routing::Final {
            destination: Destination {
                address,
                identifier,
            },
        }
    };
    plain.zeroize();

    Ok(Unwrapped {
        processed: Processed {
            replay_tag: keys.replay_tag(),
            version,
            routing,
        },
        keys,
    })
}

/// Writes the next hop's alpha.
pub(crate) fn set_alpha(header: &mut [u8; HEADER_LEN], alpha: &[u8; 32]) {
    header[..GROUP_ELEMENT_LEN].copy_from_slice(alpha);
}

/// The keys of every hop of a route, as the sender derives them.
pub(crate) struct RouteKeys {
    pub(crate) hops: [HopKeys; MAX_HOPS],
    pub(crate) len: usize,
    pub(crate) alpha: [u8; 32],
}

impl RouteKeys {
    pub(crate) fn hops(&self) -> &[HopKeys] {
        &self.hops[..self.len]
    }
}

/// Checks a route and its delays.
pub(crate) fn check_route(route: &[Hop], delays: &[Delay]) -> Result<(), BuildError> {
    if route.is_empty() {
        return Err(BuildError::EmptyRoute);
    }
    if route.len() > MAX_HOPS {
        return Err(BuildError::RouteTooLong);
    }
    if delays.len() + 1 != route.len() {
        return Err(BuildError::DelayCount);
    }
    Ok(())
}

/// Derives every hop's keys from the sender's ephemeral secret x: alpha_0 = X25519(x, 9),
/// and for hop i, s_i = X25519(b_{i-1}, ... X25519(b_0, X25519(x, pk_i))) where b_j is hop
/// j's blinding factor (each scalar clamped).
pub(crate) fn derive_route_keys(
    initial_secret: &[u8; 32],
    route: &[Hop],
) -> Result<RouteKeys, BuildError> {
    let mut hops: [HopKeys; MAX_HOPS] = core::array::from_fn(|_| HopKeys::zeroed());
    let mut blinding = [[0u8; 32]; MAX_HOPS];
    for (i, hop) in route.iter().enumerate().take(MAX_HOPS) {
        let mut acc = x25519(initial_secret, &hop.key.0);
        for b in &blinding[..i] {
            acc = x25519(b, &acc);
        }
        if is_zero(&acc) {
            return Err(BuildError::WeakHopKey);
        }
        let keys = HopKeys::from_shared_secret(&acc);
        acc.zeroize();
        blinding[i] = keys.blinding_factor();
        hops[i] = keys;
    }
    blinding.zeroize();
    Ok(RouteKeys {
        hops,
        len: route.len().min(MAX_HOPS),
        alpha: x25519_base(initial_secret),
    })
}

/// The randomness one header takes, drawn in this order: the sender's ephemeral secret x
/// (32 bytes), then the padding of the final hop's routing information.
pub(crate) struct HeaderRandomness {
    pub(crate) secret: [u8; 32],
    padding: [u8; ROUTING_INFO_LEN],
    padding_len: usize,
}

impl HeaderRandomness {
    /// Draws the randomness for a route of `hops` hops (1 to 5, checked by [`check_route`]).
    pub(crate) fn draw<R: CryptoRng + ?Sized>(hops: usize, rng: &mut R) -> Self {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let filler_len = HOP_SLOT_LEN * hops.clamp(1, MAX_HOPS).saturating_sub(1);
        let padding_len = ROUTING_INFO_LEN - filler_len - FINAL_META_LEN;
        let mut padding = [0u8; ROUTING_INFO_LEN];
        rng.fill_bytes(&mut padding[..padding_len]);
        Self {
            secret,
            padding,
            padding_len,
        }
    }

    fn padding(&self) -> &[u8] {
        &self.padding[..self.padding_len]
    }
}

impl Drop for HeaderRandomness {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

/// Builds the header for `route` (checked by [`check_route`]) with keys from
/// [`derive_route_keys`]. The final hop's unused routing space is filled with random padding
/// (random, not zero, against the attack of Kuhn et al.).
pub(crate) fn build_header(
    keys: &RouteKeys,
    route: &[Hop],
    delays: &[Delay],
    destination: &Destination,
    version: Version,
    randomness: &HeaderRandomness,
    header: &mut [u8; HEADER_LEN],
) {
    let hop_keys = keys.hops();
    let n = hop_keys.len();
    let Some(last) = hop_keys.last() else {
        return;
    };
    let filler_len = HOP_SLOT_LEN * (n - 1);
    let final_len = ROUTING_INFO_LEN - filler_len;

    // the final hop's routing information: flag, version, destination, identifier, padding
    let mut beta = [0u8; ROUTING_INFO_LEN];
    beta[0] = FINAL_FLAG;
    beta[VERSION_AT..ADDRESS_AT].copy_from_slice(&version.to_bytes());
    beta[ADDRESS_AT..IDENTIFIER_AT].copy_from_slice(&destination.address);
    beta[IDENTIFIER_AT..FINAL_META_LEN].copy_from_slice(&destination.identifier);
    let padding = randomness.padding();
    debug_assert_eq!(padding.len(), final_len - FINAL_META_LEN);
    beta[FINAL_META_LEN..FINAL_META_LEN + padding.len()].copy_from_slice(padding);
    aes128_ctr_xor(&last.stream_key(), &mut beta[..final_len]);

    // the filler: what hops 0..n-2 will shift in, as the final hop will see it
    let mut rho = [0u8; STREAM_LEN];
    for (i, hop) in hop_keys[..n - 1].iter().enumerate() {
        let grown = HOP_SLOT_LEN * (i + 1);
        rho.fill(0);
        aes128_ctr_xor(&hop.stream_key(), &mut rho);
        for (f, r) in beta[ROUTING_INFO_LEN - filler_len..ROUTING_INFO_LEN - filler_len + grown]
            .iter_mut()
            .zip(&rho[STREAM_LEN - grown..])
        {
            *f ^= r;
        }
    }
    rho.zeroize();
    let mut gamma = header_mac(&last.mac_key(), &beta);

    // wrap the forward hops from the inside out
    for j in (0..n - 1).rev() {
        let mut next = [0u8; ROUTING_INFO_LEN];
        next[0] = FORWARD_FLAG;
        next[VERSION_AT..ADDRESS_AT].copy_from_slice(&version.to_bytes());
        next[ADDRESS_AT..DELAY_AT].copy_from_slice(&route[j + 1].id.0);
        next[DELAY_AT..NEXT_MAC_AT].copy_from_slice(&delays[j].to_bytes());
        next[NEXT_MAC_AT..HOP_SLOT_LEN].copy_from_slice(&gamma);
        next[HOP_SLOT_LEN..].copy_from_slice(&beta[..ROUTING_INFO_LEN - HOP_SLOT_LEN]);
        aes128_ctr_xor(&hop_keys[j].stream_key(), &mut next);
        beta = next;
        gamma = header_mac(&hop_keys[j].mac_key(), &beta);
    }

    header[..GROUP_ELEMENT_LEN].copy_from_slice(&keys.alpha);
    header[MAC_OFFSET..ROUTING_INFO_OFFSET].copy_from_slice(&gamma);
    header[ROUTING_INFO_OFFSET..].copy_from_slice(&beta);
}

/// The header part of a packet buffer that is at least [`HEADER_LEN`] long.
pub(crate) fn header_mut(packet: &mut [u8]) -> Option<(&mut [u8; HEADER_LEN], &mut [u8])> {
    packet.split_first_chunk_mut::<HEADER_LEN>()
}
