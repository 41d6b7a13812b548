//! Paths for the layer above: forward packets to a destination and single-use reply blocks
//! back to this node, built off the packet path (by the messaging layer's thread) from one
//! epoch's consensus. The engine only queues what is built here ([`crate::Engine::queue_own`]).
//!
//! A node that is not in the consensus (passive mode, section 4.2.1 of the paper) is still
//! reachable as the last hop of its own loops and SURBs: its hop ID is a *direct* ID that
//! carries its address ([`direct_id`]), so the mix before it can deliver without a directory
//! entry. Only the node itself puts such an ID into a header, and only behind its own
//! layers of encryption: no one else learns it but that last mix.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use crypto_simd::sphinx::{
    self, Delay, Destination, HEADER_LEN, Hop, MixPublicKey, NodeId, PAYLOAD_OVERHEAD,
    PacketRequest, Surb, SurbRecovery,
};
use pki_client::{NetworkParams, VerifiedConsensus};
use rand_core::CryptoRng;
use scheduler::ExpDelay;

use crate::errors::SendError;

/// The address families a node sends and receives on: IPv4, IPv6 or both. A node that
/// publishes addresses of both families is taken to reach both; a v4-mapped IPv6 address
/// counts as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Families(u8);

impl Families {
    /// Neither.
    pub const NONE: Families = Families(0);
    /// IPv4 only.
    pub const V4: Families = Families(1);
    /// IPv6 only.
    pub const V6: Families = Families(2);
    /// Both (a dual-stack node).
    pub const BOTH: Families = Families(3);

    /// The family of one address.
    pub fn of(addr: &SocketAddr) -> Families {
        match addr.ip() {
            IpAddr::V4(_) => Families::V4,
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => Families::V4,
            IpAddr::V6(_) => Families::V6,
        }
    }

    /// The families of a list of addresses.
    pub fn of_all(addrs: &[SocketAddr]) -> Families {
        Families(addrs.iter().fold(0, |f, a| f | Families::of(a).0))
    }

    /// Whether the two share a family (a node of one can send to a node of the other).
    pub fn meet(self, other: Families) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether `addr` is of one of these families.
    pub fn contains(self, addr: &SocketAddr) -> bool {
        self.meet(Families::of(addr))
    }

    /// The first of `addrs` of one of these families.
    pub fn pick(self, addrs: &[SocketAddr]) -> Option<SocketAddr> {
        addrs.iter().find(|a| self.contains(a)).copied()
    }
}

/// Draws of a path before [`draw_route`] gives up on one whose consecutive hops share an
/// address family.
const ROUTE_TRIES: usize = 64;

/// The tag a direct ID starts with: `0xff` then `dir` and the format version.
const DIRECT_TAG: [u8; 5] = [0xff, b'd', b'i', b'r', 1];

/// The hop ID that routes straight to `addr`: tag (5) || family (1: 4 or 6) || address (16)
/// || port (2, big-endian) || zeros (8). A SHA-256 node ID has this form with probability
/// 2^-104.
pub fn direct_id(addr: SocketAddr) -> [u8; 32] {
    let mut id = [0u8; 32];
    id[..5].copy_from_slice(&DIRECT_TAG);
    match addr.ip() {
        IpAddr::V4(v4) => {
            id[5] = 4;
            id[6..10].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            id[5] = 6;
            id[6..22].copy_from_slice(&v6.octets());
        }
    }
    id[22..24].copy_from_slice(&addr.port().to_be_bytes());
    id
}

/// The hop ID a node's own loops and SURBs end at: its node ID when the consensus lists it
/// at its address (or it knows none); else a direct ID with its address: when it is not
/// listed (passive), or listed at an address it no longer has (it restarted on another
/// port, and the consensus that lists the new one is not out yet: replies to the old
/// address would be lost). `None`: it cannot be reached.
pub fn own_hop_id(
    listed: Option<&[SocketAddr]>,
    node_id: [u8; 32],
    address: Option<SocketAddr>,
) -> Option<[u8; 32]> {
    match (listed, address) {
        (Some(addrs), Some(a)) if !addrs.contains(&a) => Some(direct_id(a)),
        (Some(_), _) => Some(node_id),
        (None, Some(a)) => Some(direct_id(a)),
        (None, None) => None,
    }
}

/// The address in a direct ID, or `None` when `id` is not one (an ordinary node ID).
pub fn parse_direct_id(id: &[u8; 32]) -> Option<SocketAddr> {
    if id[..5] != DIRECT_TAG || id[24..] != [0u8; 8] {
        return None;
    }
    let port = u16::from_be_bytes([id[22], id[23]]);
    let ip = match id[5] {
        4 => {
            if id[10..22] != [0u8; 12] {
                return None;
            }
            IpAddr::V4(Ipv4Addr::new(id[6], id[7], id[8], id[9]))
        }
        6 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&id[6..22]);
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    if port == 0 || ip.is_unspecified() || ip.is_multicast() {
        return None;
    }
    Some(SocketAddr::new(ip, port))
}

/// Most packets [`Paths::forward_batch`] builds at once: two ladders of IFMA's eight lanes.
pub const FORWARD_BATCH: usize = 16;

/// One packet for [`Paths::forward_batch`].
#[derive(Clone, Copy, Debug)]
pub struct ForwardItem<'a> {
    /// The destination's node ID.
    pub destination: [u8; 32],
    /// Hops of the path, the destination included.
    pub hops: usize,
    /// The identifier the destination gets.
    pub identifier: [u8; 16],
    /// The plaintext.
    pub plaintext: &'a [u8],
}

/// One epoch's paths for one node.
#[derive(Clone, Debug)]
pub struct Paths {
    consensus: Arc<VerifiedConsensus>,
    node_id: [u8; 32],
    families: Families,
    me: Hop,
    delays: ExpDelay,
    reliability: Arc<HashMap<[u8; 32], f64>>,
}

impl Paths {
    /// Paths under `consensus` for the node `node_id`, whose mix key for the epoch is
    /// `mix_public`. When the node is not in the consensus, replies reach it at `address`
    /// (a direct ID); without an address it cannot receive replies and [`Self::surb`] fails.
    pub fn new(
        consensus: Arc<VerifiedConsensus>,
        node_id: [u8; 32],
        address: Option<SocketAddr>,
        mix_public: MixPublicKey,
    ) -> Self {
        let listed = consensus.node(&node_id).map(|n| &n.addresses[..]);
        // unreachable when None: SURBs are refused below
        let hop_id = own_hop_id(listed, node_id, address).unwrap_or([0u8; 32]);
        let params = *consensus.params();
        let delays = ExpDelay::new(std::time::Duration::from_micros(params.mean_delay_micros))
            .unwrap_or(ExpDelay::ZERO);
        Paths {
            consensus,
            node_id,
            families: Families::BOTH,
            me: Hop {
                id: NodeId(hop_id),
                key: mix_public,
            },
            delays,
            reliability: Arc::new(HashMap::new()),
        }
    }

    /// The address families this node sends and receives on (both unless told): every
    /// path's consecutive hops share a family, from this node's first to its last.
    pub fn set_families(&mut self, families: Families) {
        self.families = families;
    }

    /// The address families of a node of the consensus (none for one not listed).
    pub fn families_of(&self, node: &[u8; 32]) -> Families {
        self.consensus
            .node(node)
            .map_or(Families::NONE, |n| Families::of_all(&n.addresses))
    }

    /// Weighs path selection by each node's reliability as this node's loops measured it
    /// (Algorithm 1: bandwidth times reliability); nodes not in the map count as 1.
    pub fn set_reliability(&mut self, reliability: Arc<HashMap<[u8; 32], f64>>) {
        self.reliability = reliability;
    }

    /// The consensus these paths come from.
    pub fn consensus(&self) -> &Arc<VerifiedConsensus> {
        &self.consensus
    }

    /// The network's parameters.
    pub fn params(&self) -> &NetworkParams {
        self.consensus.params()
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.consensus.epoch()
    }

    /// The packet size in bytes.
    pub fn packet_size(&self) -> usize {
        self.params().packet_size as usize
    }

    /// The most plaintext one packet carries.
    pub fn max_plaintext(&self) -> usize {
        self.packet_size()
            .saturating_sub(HEADER_LEN + PAYLOAD_OVERHEAD)
    }

    /// The mean per-hop delay 1/mu.
    pub fn mean_delay(&self) -> std::time::Duration {
        self.delays.mean()
    }

    /// h, the hops of a path by the consensus.
    pub fn default_hops(&self) -> usize {
        usize::from(self.params().hops).clamp(1, sphinx::MAX_HOPS)
    }

    /// Whether this node can receive replies (it is listed, or it knows its address).
    pub fn can_receive(&self) -> bool {
        self.me.id.0 != [0u8; 32]
    }

    /// The hop ID replies to this node end at.
    pub fn my_hop_id(&self) -> [u8; 32] {
        self.me.id.0
    }

    #[allow(clippy::too_many_arguments)] // the parts of draw_route this node fixes
    fn middle<R: CryptoRng + ?Sized>(
        &self,
        mixes: usize,
        emitter: Option<&[u8; 32]>,
        destination: &[u8; 32],
        ends: (Families, Families),
        rng: &mut R,
        route: &mut [Hop; sphinx::MAX_HOPS],
        delays: &mut [Delay; sphinx::MAX_HOPS],
    ) -> Result<usize, SendError> {
        draw_route(
            &self.consensus,
            &self.delays,
            emitter,
            Some(destination),
            mixes,
            ends,
            |id| self.reliability.get(id).copied().unwrap_or(1.0),
            rng,
            route,
            delays,
        )
    }
}

/// The one place every path is drawn: messages, SURBs, loops and cover. Draws `mixes`
/// mixes into `route` (and an exponential delay of mean 1/mu for each into `delays`) for a
/// packet that `emitter` sends first and that ends at `destination`; returns how many it
/// drew: `mixes`, or one more (below).
///
/// **Every hop is drawn by one law, whatever the packet is and whoever it is for**
/// (docs/privacy.md): the next hop of a packet is any mix but the node that sends it there.
/// The first hop is drawn by bandwidth alone, so that everything a node emits (its own
/// packets, loops, cover, replies through SURBs) leaves by one public law; the later ones
/// by bandwidth times `weight` (Algorithm 1's reliability, as the path's builder measured
/// it). In particular neither the destination nor the emitter is kept out of a path:
/// excluding the destination from the first hop made a node's own packets avoid the node
/// it talks to, and excluding the sender from the later hops made the network send less to
/// a node while it sends; a watcher of link counts saw both (issue 12). Two rules keep any
/// node from being asked to send to itself: a hop is never the one before it, and the last
/// mix is never the destination; when the first hop is the destination of a path of one
/// mix, one more mix is drawn after it.
///
/// `ends` are the families of the emitter and of the destination: every consecutive pair
/// shares a family (the mixes after the first are drawn again until they do: the draw
/// conditioned on a path that can be walked; the first hop is conditioned only on the
/// emitter's families, and, for a path of one mix, on the destination's). `emitter` is
/// `None` for a SURB whose user is unknown (then the first hop may be that user, who
/// refuses to send to itself).
#[allow(clippy::too_many_arguments)] // each caller names every part of the draw
pub(crate) fn draw_route<R: CryptoRng + ?Sized>(
    consensus: &VerifiedConsensus,
    mean_delay: &ExpDelay,
    emitter: Option<&[u8; 32]>,
    destination: Option<&[u8; 32]>,
    mixes: usize,
    ends: (Families, Families),
    weight: impl Fn(&[u8; 32]) -> f64,
    rng: &mut R,
    route: &mut [Hop; sphinx::MAX_HOPS],
    delays: &mut [Delay; sphinx::MAX_HOPS],
) -> Result<usize, SendError> {
    if mixes == 0 {
        return Ok(0);
    }
    if mixes > sphinx::MAX_HOPS - 1 {
        return Err(SendError::NoPath);
    }
    let nodes = consensus.nodes();
    let families = |n: usize| Families::of_all(&nodes[n].addresses);
    let is_destination = |n: usize| destination == Some(&nodes[n].id());
    // the first hop: by bandwidth, any mix but the emitter that it can reach
    let mut idx = [0usize; sphinx::MAX_HOPS];
    let mut found = false;
    let not_emitter: &[[u8; 32]] = match emitter {
        Some(e) => core::slice::from_ref(e),
        None => &[],
    };
    for _ in 0..ROUTE_TRIES {
        pki_client::select_hops(consensus, 1, not_emitter, |_| 1.0, rng, &mut idx[..1])
            .map_err(|_| SendError::NoPath)?;
        let f = families(idx[0]);
        // a lone mix that is the destination gets a second mix after it
        let reaches_end = mixes > 1 || is_destination(idx[0]) || f.meet(ends.1);
        if ends.0.meet(f) && reaches_end {
            found = true;
            break;
        }
    }
    if !found {
        return Err(SendError::NoPath);
    }
    let count = if mixes == 1 && is_destination(idx[0]) {
        2
    } else {
        mixes
    };
    // the rest: each any mix but the one before it (and the last not the destination), by
    // bandwidth times the weight, drawn again until the path can be walked
    if count > 1 {
        let mut found = false;
        'tries: for _ in 0..ROUTE_TRIES {
            for i in 1..count {
                let mut exclude = [nodes[idx[i - 1]].id(); 2];
                let excluded = match destination {
                    Some(d) if i == count - 1 => {
                        exclude[1] = *d;
                        2
                    }
                    _ => 1,
                };
                pki_client::select_hops(
                    consensus,
                    1,
                    &exclude[..excluded],
                    &weight,
                    rng,
                    &mut idx[i..i + 1],
                )
                .map_err(|_| SendError::NoPath)?;
                if !families(idx[i - 1]).meet(families(idx[i])) {
                    continue 'tries;
                }
            }
            if families(idx[count - 1]).meet(ends.1) {
                found = true;
                break;
            }
        }
        if !found {
            return Err(SendError::NoPath);
        }
    }
    for (i, &n) in idx[..count].iter().enumerate() {
        let node = &nodes[n];
        route[i] = Hop {
            id: NodeId(node.id()),
            key: MixPublicKey(node.mix_key),
        };
        delays[i] = Delay::from_nanos(mean_delay.sample(rng).as_nanos() as u64);
    }
    Ok(count)
}

impl Paths {
    /// Builds into `out` (the packet size) a packet carrying `plaintext` to `destination`
    /// through `hops - 1` mixes drawn by bandwidth, with `identifier` for the destination.
    /// Returns the first hop's ID.
    pub fn forward<R: CryptoRng + ?Sized>(
        &self,
        destination: &[u8; 32],
        hops: usize,
        identifier: [u8; 16],
        plaintext: &[u8],
        rng: &mut R,
        out: &mut [u8],
    ) -> Result<[u8; 32], SendError> {
        if !(1..=sphinx::MAX_HOPS).contains(&hops) {
            return Err(SendError::NoPath);
        }
        let dest = self
            .consensus
            .node(destination)
            .ok_or(SendError::UnknownDestination)?;
        let last = Hop {
            id: NodeId(*destination),
            key: MixPublicKey(dest.mix_key),
        };
        let mut route = [last; sphinx::MAX_HOPS];
        let mut delays = [Delay::default(); sphinx::MAX_HOPS];
        let to = Families::of_all(&dest.addresses);
        let mixes = self.middle(
            hops - 1,
            Some(&self.node_id),
            destination,
            (self.families, to),
            rng,
            &mut route,
            &mut delays,
        )?;
        route[mixes] = last;
        sphinx::build_packet(
            &route[..mixes + 1],
            &delays[..mixes],
            &Destination {
                address: *destination,
                identifier,
            },
            plaintext,
            rng,
            out,
        )
        .map_err(|_| SendError::TooLong)?;
        Ok(route[0].id.0)
    }

    /// [`Self::forward`] for up to [`FORWARD_BATCH`] packets at once, their X25519
    /// ladders side by side (`sphinx::build_packets`: several times faster per packet than
    /// one at a time). `outs[i]` receives packet `i`, `first_hops[i]` its first hop,
    /// `results[i]` whether it was built; slices shorter than `items` limit the batch.
    pub fn forward_batch<R: CryptoRng + ?Sized>(
        &self,
        items: &[ForwardItem<'_>],
        rng: &mut R,
        outs: &mut [&mut [u8]],
        first_hops: &mut [[u8; 32]],
        results: &mut [Result<(), SendError>],
    ) {
        let n = items
            .len()
            .min(outs.len())
            .min(first_hops.len())
            .min(results.len())
            .min(FORWARD_BATCH);
        if n == 0 {
            return;
        }
        let placeholder = Hop {
            id: NodeId([0; 32]),
            key: MixPublicKey([9; 32]),
        };
        let mut routes = [[placeholder; sphinx::MAX_HOPS]; FORWARD_BATCH];
        let mut delays = [[Delay::default(); sphinx::MAX_HOPS]; FORWARD_BATCH];
        let mut destinations = [Destination {
            address: [0; 32],
            identifier: [0; 16],
        }; FORWARD_BATCH];
        // which items got a route, in order, and how many mixes each
        let mut routed = [0usize; FORWARD_BATCH];
        let mut lengths = [0usize; FORWARD_BATCH];
        let mut m = 0;
        for (i, item) in items[..n].iter().enumerate() {
            results[i] = (|| {
                if !(1..=sphinx::MAX_HOPS).contains(&item.hops) {
                    return Err(SendError::NoPath);
                }
                let dest = self
                    .consensus
                    .node(&item.destination)
                    .ok_or(SendError::UnknownDestination)?;
                let last = Hop {
                    id: NodeId(item.destination),
                    key: MixPublicKey(dest.mix_key),
                };
                let mixes = self.middle(
                    item.hops - 1,
                    Some(&self.node_id),
                    &item.destination,
                    (self.families, Families::of_all(&dest.addresses)),
                    rng,
                    &mut routes[m],
                    &mut delays[m],
                )?;
                routes[m][mixes] = last;
                lengths[m] = mixes + 1;
                destinations[m] = Destination {
                    address: item.destination,
                    identifier: item.identifier,
                };
                Ok(())
            })();
            if results[i].is_ok() {
                routed[m] = i;
                m += 1;
            }
        }
        let requests: [PacketRequest<'_>; FORWARD_BATCH] = core::array::from_fn(|j| {
            let item = &items[routed[j].min(n.saturating_sub(1))];
            let hops = if j < m { lengths[j] } else { 1 };
            PacketRequest {
                route: &routes[j][..hops],
                delays: &delays[j][..hops - 1],
                destination: &destinations[j],
                message: if j < m { item.plaintext } else { &[] },
            }
        });
        let mut built = [Ok(()); FORWARD_BATCH];
        let mut bufs: [&mut [u8]; FORWARD_BATCH] = core::array::from_fn(|_| &mut [][..]);
        // move the routed items' buffers into the batch, then back
        for j in 0..m {
            bufs[j] = core::mem::take(&mut outs[routed[j]]);
        }
        let _ = sphinx::build_packets(&requests[..m], rng, &mut bufs[..m], &mut built[..m]);
        for j in 0..m {
            let i = routed[j];
            outs[i] = core::mem::take(&mut bufs[j]);
            match built[j] {
                Ok(()) => first_hops[i] = routes[j][0].id.0,
                Err(_) => results[i] = Err(SendError::TooLong),
            }
        }
    }

    /// A SURB for a reply to this node through `hops - 1` mixes, and what this node keeps to
    /// read the reply. The reply arrives as [`crate::Event::Sealed`] with the recovery's
    /// identifier (random, never zero). Any node that shares a family with the first mix
    /// can use it: [`Self::surb_from`] when the replier is known, which this is not: the
    /// first mix may then be the replier itself, who cannot use the SURB (a node never
    /// sends to itself), so prefer [`Self::surb_from`].
    pub fn surb<R: CryptoRng + ?Sized>(
        &self,
        hops: usize,
        rng: &mut R,
    ) -> Result<(Surb, SurbRecovery), SendError> {
        self.surb_with(hops, None, Families::BOTH, rng)
    }

    /// [`Self::surb`] for a reply from `replier` (a node of the consensus): its first mix
    /// is drawn as the replier draws the first hop of everything it sends (by bandwidth,
    /// never the replier itself, possibly this node), so that replying does not change the
    /// replier's next hops; it is one the replier can reach.
    pub fn surb_from<R: CryptoRng + ?Sized>(
        &self,
        replier: &[u8; 32],
        hops: usize,
        rng: &mut R,
    ) -> Result<(Surb, SurbRecovery), SendError> {
        let from = self.families_of(replier);
        let from = if from == Families::NONE {
            Families::BOTH
        } else {
            from
        };
        self.surb_with(hops, Some(replier), from, rng)
    }

    fn surb_with<R: CryptoRng + ?Sized>(
        &self,
        hops: usize,
        replier: Option<&[u8; 32]>,
        from: Families,
        rng: &mut R,
    ) -> Result<(Surb, SurbRecovery), SendError> {
        if !(2..=sphinx::MAX_HOPS).contains(&hops) {
            return Err(SendError::NoPath);
        }
        if !self.can_receive() {
            return Err(SendError::Unreachable);
        }
        let mut route = [self.me; sphinx::MAX_HOPS];
        let mut delays = [Delay::default(); sphinx::MAX_HOPS];
        // the replier sends to the first mix: drawn as the replier draws every first hop,
        // this node (the SURB's destination) included
        let mixes = self.middle(
            hops - 1,
            replier,
            &self.node_id,
            (from, self.families),
            rng,
            &mut route,
            &mut delays,
        )?;
        route[mixes] = self.me;
        let mut identifier = [0u8; 16];
        while identifier == [0u8; 16] {
            rng.fill_bytes(&mut identifier);
        }
        Surb::new(
            &route[..mixes + 1],
            &delays[..mixes],
            &Destination {
                address: self.node_id,
                identifier,
            },
            rng,
        )
        .map_err(|_| SendError::NoPath)
    }

    /// The first hop of a SURB, as an address this node can send to.
    pub fn resolve(&self, hop: &[u8; 32]) -> Option<SocketAddr> {
        match self.consensus.node(hop) {
            Some(n) => self.families.pick(&n.addresses),
            None => parse_direct_id(hop).filter(|a| self.families.contains(a)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pki_client::{
        AuthoritySet, Consensus, IdentitySecret, MixKeys, NodeDescriptor, Roles, SignedConsensus,
        UnverifiedConsensus, Vote,
    };
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    /// A verified consensus of `n` mixes of equal bandwidth, all on IPv4.
    fn consensus(n: usize, rng: &mut ChaCha20Rng) -> VerifiedConsensus {
        let authority = IdentitySecret::generate(rng);
        let mut descriptors = Vec::new();
        for i in 0..n {
            let identity = IdentitySecret::generate(rng);
            let d = NodeDescriptor {
                identity: identity.public(),
                sequence: 1,
                addresses: vec![SocketAddr::from(([10, 0, 0, i as u8 + 1], 4000))],
                bandwidth: 100,
                roles: Roles {
                    mix: true,
                    services: vec![],
                },
                mix_keys: MixKeys {
                    first_epoch: 0,
                    keys: vec![
                        crypto_simd::sphinx::MixSecretKey::generate(rng)
                            .public_key()
                            .0,
                    ],
                },
            };
            descriptors.push(d.sign(&identity).unwrap());
        }
        let params = NetworkParams {
            packet_size: 1452,
            hops: 3,
            rho_permille: 1500,
            mean_delay_micros: 1000,
            loops: 2,
            loop_rate_millis: 5000,
            epoch_seconds: 1 << 30,
            genesis_unix: 0,
        };
        let vote = Vote {
            authority: authority.public(),
            epoch: 0,
            descriptors,
        };
        let c = Consensus::compute(0, params, &[&vote], 1);
        let signed = SignedConsensus::new(&c, vec![c.sign(&authority)]);
        UnverifiedConsensus::new(signed)
            .check_signatures(&AuthoritySet::including(authority.public(), []))
            .and_then(|u| u.check_valid_at(c.valid_after, 0))
            .unwrap()
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn every_first_hop_follows_one_law_and_no_node_sends_to_itself() {
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        let n = 6;
        let c = consensus(n, &mut rng);
        let ids: Vec<[u8; 32]> = c.nodes().iter().map(|d| d.id()).collect();
        let (x, r) = (ids[0], ids[3]);
        let delays = ExpDelay::ZERO;
        let mut route = [Hop {
            id: NodeId([0; 32]),
            key: MixPublicKey([9; 32]),
        }; sphinx::MAX_HOPS];
        let mut d = [Delay::default(); sphinx::MAX_HOPS];
        let draws = 30_000;
        // X's own packets to R (one and two mixes), X's loops, X's cover, and SURBs R makes
        // for X's replies: the first hop is every node but X alike, R included
        for (destination, mixes) in [(Some(r), 2), (Some(r), 1), (Some(x), 3), (None, 1)] {
            let mut first = vec![0u32; n];
            for _ in 0..draws {
                let count = draw_route(
                    &c,
                    &delays,
                    Some(&x),
                    destination.as_ref(),
                    mixes,
                    (Families::BOTH, Families::BOTH),
                    |_| 1.0,
                    &mut rng,
                    &mut route,
                    &mut d,
                )
                .unwrap();
                let hops: Vec<[u8; 32]> = route[..count].iter().map(|h| h.id.0).collect();
                first[ids.iter().position(|i| *i == hops[0]).unwrap()] += 1;
                assert_ne!(hops[0], x, "the first hop is never the emitter");
                for w in hops.windows(2) {
                    assert_ne!(w[0], w[1], "a hop is never the one before it");
                }
                if let Some(dest) = destination {
                    assert_ne!(
                        hops[count - 1],
                        dest,
                        "the last mix is never the destination"
                    );
                }
                let extended = mixes == 1 && destination == Some(hops[0]);
                assert_eq!(count, mixes + usize::from(extended));
            }
            assert_eq!(first[0], 0);
            let expected = f64::from(draws) / (n - 1) as f64;
            for (i, &f) in first.iter().enumerate().skip(1) {
                // 5 standard deviations of a binomial of p = 1/5
                assert!(
                    (f64::from(f) - expected).abs() < 5.0 * (expected * 0.8).sqrt(),
                    "{destination:?} {mixes}: node {i} first {f} times of {draws}, expected {expected}"
                );
            }
        }
    }

    #[test]
    fn a_node_listed_at_an_address_it_no_longer_has_ends_its_paths_at_its_address() {
        let (old, new) = (
            SocketAddr::from(([10, 0, 0, 1], 4000)),
            SocketAddr::from(([10, 0, 0, 1], 4001)),
        );
        let id = [5u8; 32];
        assert_eq!(own_hop_id(Some(&[old]), id, Some(old)), Some(id));
        assert_eq!(own_hop_id(Some(&[old]), id, None), Some(id));
        assert_eq!(
            own_hop_id(Some(&[old]), id, Some(new)),
            Some(direct_id(new))
        );
        assert_eq!(own_hop_id(None, id, Some(new)), Some(direct_id(new)));
        assert_eq!(own_hop_id(None, id, None), None);
    }

    #[test]
    fn direct_ids_round_trip_and_ordinary_ids_are_not_direct() {
        for addr in [
            "127.0.0.1:4000".parse::<SocketAddr>(),
            "[2001:db8::7]:65535".parse(),
        ] {
            let addr = addr.unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 1)));
            assert_eq!(parse_direct_id(&direct_id(addr)), Some(addr));
        }
        assert_eq!(parse_direct_id(&[7u8; 32]), None);
        let mut bad = direct_id(SocketAddr::from(([10, 0, 0, 1], 9)));
        bad[31] = 1;
        assert_eq!(parse_direct_id(&bad), None);
        let zero_port = direct_id(SocketAddr::from(([10, 0, 0, 1], 0)));
        assert_eq!(parse_direct_id(&zero_port), None);
    }
}
