//! The consensus document of an epoch, the authorities' votes it is computed from, and the
//! network parameters it carries.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use sha2::{Digest, Sha256};

use crate::descriptor::{
    IdentityKey, IdentitySecret, Roles, SignedDescriptor, decode_addresses, decode_roles,
    encode_addresses, encode_roles,
};
use crate::encoding::{DecodeError, Reader, Writer};

/// Most nodes one consensus lists.
pub const MAX_NODES: usize = 20_000;
/// Most authorities (and so signatures) a consensus can carry.
pub const MAX_AUTHORITIES: usize = 32;
/// Largest encoded consensus accepted (about 250 bytes a node).
pub const MAX_CONSENSUS_BYTES: usize = 8 << 20;

const CONSENSUS_MAGIC: &[u8; 5] = b"MXCS\x01";
const SIGNED_CONSENSUS_MAGIC: &[u8; 5] = b"MXSC\x01";
const VOTE_MAGIC: &[u8; 5] = b"MXVT\x01";
pub(crate) const CONSENSUS_CONTEXT: &[u8] = b"mixed consensus v1\0";
const VOTE_CONTEXT: &[u8] = b"mixed vote v1\0";

/// The longest mean per-hop delay 1/lambda a consensus may set: one day (the delay
/// sampler's own limit).
pub const MAX_MEAN_DELAY_MICROS: u64 = 86_400 * 1_000_000;
/// The most loops L a consensus may ask of each node.
pub const MAX_LOOPS: u32 = 1_000;
/// The highest b_loop a consensus may set, in thousandths of a packet a second.
pub const MAX_LOOP_RATE_MILLIS: u32 = 1_000_000;

/// The parameters every node of an epoch uses, with the paper's names. Fixed-point where
/// the paper's symbol is a real number, so the encoding is exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetworkParams {
    /// Sphinx packet size in bytes: one UDP datagram (default 1,452).
    pub packet_size: u32,
    /// h: hops of a path, 1 to 5 (section 4.2).
    pub hops: u8,
    /// rho, in thousandths: the leniency factor (section 4.2.3).
    pub rho_permille: u32,
    /// 1/lambda, in microseconds: the mean per-hop delay (section 4).
    pub mean_delay_micros: u64,
    /// L: loops each node keeps in flight (section 4.4).
    pub loops: u32,
    /// b_loop, in thousandths of a packet a second: what each loop costs.
    pub loop_rate_millis: u32,
    /// Length of an epoch, seconds (20 minutes in production, seconds in tests).
    pub epoch_seconds: u64,
    /// Unix time at which epoch 0 starts.
    pub genesis_unix: u64,
}

impl NetworkParams {
    /// Checks ranges: a packet that fits a datagram, 1 to 5 hops, rho >= 1, an epoch of at
    /// least a second, a mean delay of at most a day, at most 1,000 loops of at most 1,000
    /// packets a second. The reason names the field; a consensus out of range does not
    /// verify.
    pub fn validate(&self) -> Result<(), &'static str> {
        if !(381..=65_507).contains(&self.packet_size) {
            return Err("packet_size must be 381 to 65,507 bytes");
        }
        if !(1..=5).contains(&self.hops) {
            return Err("hops must be 1 to 5");
        }
        if self.rho_permille < 1000 {
            return Err("rho must be at least 1");
        }
        if self.epoch_seconds == 0 {
            return Err("epoch_seconds must be at least 1");
        }
        if self.mean_delay_micros > MAX_MEAN_DELAY_MICROS {
            return Err("mean_delay_micros must be at most one day (86,400,000,000)");
        }
        if self.loops > MAX_LOOPS {
            return Err("loops must be at most 1,000");
        }
        if self.loop_rate_millis > MAX_LOOP_RATE_MILLIS {
            return Err("loop_rate_millis must be at most 1,000,000 (1,000 packets a second)");
        }
        Ok(())
    }

    /// The epoch unix time `now` falls in (0 before genesis).
    pub fn epoch_at(&self, now_unix: u64) -> u64 {
        now_unix.saturating_sub(self.genesis_unix) / self.epoch_seconds.max(1)
    }

    /// When `epoch` starts, unix seconds.
    pub fn epoch_start(&self, epoch: u64) -> u64 {
        self.genesis_unix
            .saturating_add(epoch.saturating_mul(self.epoch_seconds))
    }

    fn encode_into(&self, w: &mut Writer) {
        w.u32(self.packet_size);
        w.u8(self.hops);
        w.u32(self.rho_permille);
        w.u64(self.mean_delay_micros);
        w.u32(self.loops);
        w.u32(self.loop_rate_millis);
        w.u64(self.epoch_seconds);
        w.u64(self.genesis_unix);
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let params = NetworkParams {
            packet_size: r.u32()?,
            hops: r.u8()?,
            rho_permille: r.u32()?,
            mean_delay_micros: r.u64()?,
            loops: r.u32()?,
            loop_rate_millis: r.u32()?,
            epoch_seconds: r.u64()?,
            genesis_unix: r.u64()?,
        };
        params.validate().map_err(|why| r.invalid(why))?;
        Ok(params)
    }
}

/// What the consensus says about one node for its epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsensusNode {
    /// Identity key; its hash is the node ID.
    pub identity: IdentityKey,
    /// Where to send it packets.
    pub addresses: Vec<SocketAddr>,
    /// B_i, packets a second.
    pub bandwidth: u32,
    /// Mix, service provider.
    pub roles: Roles,
    /// Its X25519 mix key for this epoch.
    pub mix_key: [u8; 32],
    /// Its mix key for the next epoch, if it published one.
    pub next_mix_key: Option<[u8; 32]>,
    /// The node ID, the hash of `identity` (computed once).
    id: [u8; 32],
}

impl ConsensusNode {
    /// An entry for a node.
    pub fn new(
        identity: IdentityKey,
        addresses: Vec<SocketAddr>,
        bandwidth: u32,
        roles: Roles,
        mix_key: [u8; 32],
        next_mix_key: Option<[u8; 32]>,
    ) -> Self {
        ConsensusNode {
            id: identity.node_id(),
            identity,
            addresses,
            bandwidth,
            roles,
            mix_key,
            next_mix_key,
        }
    }

    /// The node ID.
    pub fn id(&self) -> [u8; 32] {
        self.id
    }

    fn encode_into(&self, w: &mut Writer) {
        w.bytes(&self.identity.0);
        encode_addresses(w, &self.addresses);
        w.u32(self.bandwidth);
        encode_roles(w, &self.roles);
        w.bytes(&self.mix_key);
        match &self.next_mix_key {
            Some(k) => {
                w.u8(1);
                w.bytes(k);
            }
            None => w.u8(0),
        }
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let identity = IdentityKey(r.array()?);
        let addresses = decode_addresses(r)?;
        if addresses.is_empty() {
            return Err(r.invalid("addresses"));
        }
        let bandwidth = r.u32()?;
        let roles = decode_roles(r)?;
        let mix_key = r.array()?;
        let next_mix_key = match r.u8()? {
            0 => None,
            1 => Some(r.array()?),
            _ => return Err(r.invalid("next mix key flag")),
        };
        Ok(ConsensusNode::new(
            identity,
            addresses,
            bandwidth,
            roles,
            mix_key,
            next_mix_key,
        ))
    }
}

/// The consensus of one epoch: its validity window, the network parameters, and its nodes
/// sorted by node ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consensus {
    /// The epoch.
    pub epoch: u64,
    /// Not valid before this unix time.
    pub valid_after: u64,
    /// Not valid after this unix time.
    pub valid_until: u64,
    /// The parameters.
    pub params: NetworkParams,
    /// The nodes, sorted by node ID, each once.
    pub nodes: Vec<ConsensusNode>,
}

impl Consensus {
    /// The canonical bytes that get signed.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes(CONSENSUS_MAGIC);
        w.u64(self.epoch);
        w.u64(self.valid_after);
        w.u64(self.valid_until);
        self.params.encode_into(&mut w);
        w.u16(self.nodes.len() as u16);
        for n in &self.nodes {
            n.encode_into(&mut w);
        }
        w.buf
    }

    /// Reads the canonical bytes; nodes must be sorted by node ID without repeats.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.expect_magic(CONSENSUS_MAGIC, "consensus")?;
        let epoch = r.u64()?;
        let valid_after = r.u64()?;
        let valid_until = r.u64()?;
        let params = NetworkParams::decode_from(&mut r)?;
        let count = r.count("nodes", MAX_NODES)?;
        let mut nodes: Vec<ConsensusNode> = Vec::with_capacity(count);
        let mut last: Option<[u8; 32]> = None;
        for _ in 0..count {
            let node = ConsensusNode::decode_from(&mut r)?;
            let id = node.id();
            if last.is_some_and(|l| l >= id) {
                return Err(r.invalid("node order (sorted by node ID, no repeats)"));
            }
            last = Some(id);
            nodes.push(node);
        }
        r.finish()?;
        Ok(Consensus {
            epoch,
            valid_after,
            valid_until,
            params,
            nodes,
        })
    }

    /// Computes the consensus of `epoch` from the authorities' votes, deterministically: a
    /// node is in when at least `majority` votes (one per authority) hold a valid descriptor
    /// for it that has a mix key for the epoch; its entry comes from the highest-sequence
    /// such descriptor (ties broken by the smaller encoding). The same votes give the same
    /// bytes on every authority.
    pub fn compute(
        epoch: u64,
        params: NetworkParams,
        votes: &[&Vote],
        majority: usize,
    ) -> Consensus {
        let mut by_identity: BTreeMap<[u8; 32], (usize, Option<&SignedDescriptor>)> =
            BTreeMap::new();
        let mut seen_authorities = Vec::new();
        for vote in votes {
            if vote.epoch != epoch || seen_authorities.contains(&vote.authority) {
                continue;
            }
            seen_authorities.push(vote.authority);
            let mut counted = Vec::new();
            for d in &vote.descriptors {
                let desc = d.descriptor();
                if desc.mix_keys.for_epoch(epoch).is_none() || counted.contains(&desc.identity) {
                    continue;
                }
                counted.push(desc.identity);
                let entry = by_identity.entry(desc.identity.0).or_insert((0, None));
                entry.0 += 1;
                let better = match entry.1 {
                    None => true,
                    Some(best) => {
                        let b = best.descriptor();
                        (desc.sequence, std::cmp::Reverse(d.to_bytes()))
                            > (b.sequence, std::cmp::Reverse(best.to_bytes()))
                    }
                };
                if better {
                    entry.1 = Some(d);
                }
            }
        }
        let mut nodes: Vec<ConsensusNode> = by_identity
            .into_values()
            .filter(|(count, _)| *count >= majority)
            .filter_map(|(_, d)| d)
            .filter_map(|d| {
                let desc = d.descriptor();
                Some(ConsensusNode::new(
                    desc.identity,
                    desc.addresses.clone(),
                    desc.bandwidth,
                    desc.roles.clone(),
                    desc.mix_keys.for_epoch(epoch)?,
                    desc.mix_keys.for_epoch(epoch + 1),
                ))
            })
            .collect();
        nodes.sort_by_key(ConsensusNode::id);
        nodes.truncate(MAX_NODES);
        let start = params.epoch_start(epoch);
        Consensus {
            epoch,
            valid_after: start,
            // valid through its epoch and half the next: room for the next one to be late
            valid_until: params
                .epoch_start(epoch + 1)
                .saturating_add(params.epoch_seconds / 2),
            params,
            nodes,
        }
    }

    /// SHA-256 of the canonical bytes: what the authorities compare and sign.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }

    /// An authority's signature over the canonical bytes.
    pub fn sign(&self, secret: &IdentitySecret) -> ConsensusSignature {
        ConsensusSignature {
            authority: secret.public(),
            signature: secret.sign(CONSENSUS_CONTEXT, &self.encode()),
        }
    }
}

/// One authority's signature over a consensus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsensusSignature {
    /// The authority.
    pub authority: IdentityKey,
    /// Ed25519 over "mixed consensus v1\0" || the canonical bytes.
    pub signature: [u8; 64],
}

impl ConsensusSignature {
    /// Whether this is a valid signature of `authority` over `body`.
    pub fn verifies(&self, body: &[u8]) -> bool {
        self.authority
            .verify(CONSENSUS_CONTEXT, body, &self.signature)
    }

    /// authority || signature.
    pub fn to_bytes(&self) -> [u8; 96] {
        let mut out = [0u8; 96];
        out[..32].copy_from_slice(&self.authority.0);
        out[32..].copy_from_slice(&self.signature);
        out
    }

    /// Reads 96 bytes (the signature is not checked here).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let sig = ConsensusSignature {
            authority: IdentityKey(r.array()?),
            signature: r.array()?,
        };
        r.finish()?;
        Ok(sig)
    }
}

/// A consensus as served: its canonical bytes and the authorities' signatures. Its content
/// is only reachable through verification ([`crate::verify`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedConsensus {
    pub(crate) body: Vec<u8>,
    pub(crate) signatures: Vec<ConsensusSignature>,
}

impl SignedConsensus {
    /// A consensus with the given signatures (which the receiver will check).
    pub fn new(consensus: &Consensus, signatures: Vec<ConsensusSignature>) -> Self {
        SignedConsensus {
            body: consensus.encode(),
            signatures,
        }
    }

    /// The wire form: magic, the body, the signatures.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes(SIGNED_CONSENSUS_MAGIC);
        w.blob(&self.body);
        w.u16(self.signatures.len() as u16);
        for s in &self.signatures {
            w.bytes(&s.to_bytes());
        }
        w.buf
    }

    /// Reads the wire form (nothing is checked beyond the encoding).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_CONSENSUS_BYTES {
            return Err(DecodeError::TooLong {
                what: "consensus",
                at: 0,
            });
        }
        let mut r = Reader::new(bytes);
        r.expect_magic(SIGNED_CONSENSUS_MAGIC, "signed consensus")?;
        let body = r.blob("consensus body", MAX_CONSENSUS_BYTES)?.to_vec();
        let n = r.count("signatures", MAX_AUTHORITIES)?;
        let signatures = (0..n)
            .map(|_| {
                Ok(ConsensusSignature {
                    authority: IdentityKey(r.array()?),
                    signature: r.array()?,
                })
            })
            .collect::<Result<_, DecodeError>>()?;
        r.finish()?;
        Ok(SignedConsensus { body, signatures })
    }

    /// The signatures it carries.
    pub fn signatures(&self) -> &[ConsensusSignature] {
        &self.signatures
    }
}

/// An authority's vote for an epoch: the valid, not withdrawn descriptors it holds that
/// cover the epoch. Signed by the authority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vote {
    /// The authority.
    pub authority: IdentityKey,
    /// The epoch voted on.
    pub epoch: u64,
    /// The descriptors, sorted by identity.
    pub descriptors: Vec<SignedDescriptor>,
}

impl Vote {
    fn body(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes(VOTE_MAGIC);
        w.bytes(&self.authority.0);
        w.u64(self.epoch);
        w.u16(self.descriptors.len() as u16);
        for d in &self.descriptors {
            w.blob(&d.to_bytes());
        }
        w.buf
    }

    /// The signed wire form: body || signature.
    pub fn sign(&self, secret: &IdentitySecret) -> Vec<u8> {
        let body = self.body();
        let signature = secret.sign(VOTE_CONTEXT, &body);
        let mut out = body;
        out.extend_from_slice(&signature);
        out
    }

    /// Reads a signed vote, checking the authority's signature and every descriptor's.
    pub fn from_signed_bytes(bytes: &[u8]) -> Result<Self, VoteError> {
        let split = bytes
            .len()
            .checked_sub(64)
            .ok_or(VoteError::Malformed(DecodeError::Truncated { at: 0 }))?;
        let (body, signature) = bytes.split_at(split);
        let mut r = Reader::new(body);
        r.expect_magic(VOTE_MAGIC, "vote")?;
        let authority = IdentityKey(r.array()?);
        let epoch = r.u64()?;
        let n = r.count("descriptors", MAX_NODES)?;
        let mut descriptors = Vec::with_capacity(n);
        for _ in 0..n {
            let raw = r.blob("descriptor", crate::descriptor::MAX_DESCRIPTOR_BYTES)?;
            descriptors.push(SignedDescriptor::from_bytes(raw).map_err(VoteError::Descriptor)?);
        }
        r.finish()?;
        let mut sig = [0u8; 64];
        sig.copy_from_slice(signature);
        if !authority.verify(VOTE_CONTEXT, body, &sig) {
            return Err(VoteError::BadSignature);
        }
        Ok(Vote {
            authority,
            epoch,
            descriptors,
        })
    }
}

/// Why a vote was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VoteError {
    /// The bytes do not decode.
    #[error("malformed vote: {0}")]
    Malformed(#[from] DecodeError),
    /// A descriptor inside does not check.
    #[error("vote carries a bad descriptor: {0}")]
    Descriptor(crate::descriptor::DescriptorError),
    /// Not signed by the authority it names.
    #[error("vote signature does not verify")]
    BadSignature,
}
