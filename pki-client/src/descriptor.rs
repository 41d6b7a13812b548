//! Node identities and the documents a node signs: its descriptor (what the consensus says
//! about it) and its withdrawal.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::encoding::{DecodeError, Reader, Writer};

/// Most addresses a node lists (IPv4 and IPv6, a couple each).
pub const MAX_ADDRESSES: usize = 4;
/// Most services a service provider lists.
pub const MAX_SERVICES: usize = 8;
/// Longest service name, in bytes (ASCII letters, digits, '-', '_', '.').
pub const MAX_SERVICE_NAME: usize = 32;
/// Most mix keys a descriptor carries: consecutive epochs, this one and the next ones.
pub const MAX_MIX_KEYS: usize = 4;
/// Largest encoded descriptor (with its signature) an authority accepts.
pub const MAX_DESCRIPTOR_BYTES: usize = 1024;

const DESCRIPTOR_MAGIC: &[u8; 5] = b"MXDS\x01";
const WITHDRAWAL_MAGIC: &[u8; 5] = b"MXWD\x01";
const DESCRIPTOR_CONTEXT: &[u8] = b"mixed descriptor v1\0";
const WITHDRAWAL_CONTEXT: &[u8] = b"mixed withdrawal v1\0";
const NODE_ID_CONTEXT: &[u8] = b"mixed node id v1\0";

/// A node's (or an authority's) long-term Ed25519 identity key, public half.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityKey(pub [u8; 32]);

impl core::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "IdentityKey({})", hex_prefix(&self.0))
    }
}

impl IdentityKey {
    /// The node ID routing headers carry: SHA-256("mixed node id v1\0" || key).
    pub fn node_id(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(NODE_ID_CONTEXT);
        h.update(self.0);
        h.finalize().into()
    }

    /// Checks an Ed25519 signature over `context || message`, strictly (no malleable or
    /// small-order forms).
    pub(crate) fn verify(&self, context: &[u8], message: &[u8], signature: &[u8; 64]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        let mut m = Vec::with_capacity(context.len() + message.len());
        m.extend_from_slice(context);
        m.extend_from_slice(message);
        key.verify_strict(&m, &Signature::from_bytes(signature))
            .is_ok()
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// The X25519 public key of the same secret (the birational map from Edwards to
    /// Montgomery form), for static-static Diffie-Hellman between identities; `None` when
    /// the bytes are not a valid Ed25519 key.
    pub fn x25519_public(&self) -> Option<[u8; 32]> {
        VerifyingKey::from_bytes(&self.0)
            .ok()
            .map(|k| k.to_montgomery().to_bytes())
    }
}

/// The secret half of an identity key. Erased when dropped.
#[derive(Clone)]
pub struct IdentitySecret(SigningKey);

impl core::fmt::Debug for IdentitySecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("IdentitySecret(<redacted>)")
    }
}

impl IdentitySecret {
    /// A key from its 32 secret bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        IdentitySecret(SigningKey::from_bytes(&bytes))
    }

    /// A fresh key.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        Self::from_bytes(bytes)
    }

    /// The 32 secret bytes (to store the key; handle with care).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public half.
    pub fn public(&self) -> IdentityKey {
        IdentityKey(self.0.verifying_key().to_bytes())
    }

    /// The X25519 secret scalar of this key (clamped by X25519), whose public key is
    /// [`IdentityKey::x25519_public`] of [`Self::public`]. Handle with care.
    pub fn x25519_secret(&self) -> [u8; 32] {
        self.0.to_scalar_bytes()
    }

    /// An Ed25519 signature over `context || message`.
    pub(crate) fn sign(&self, context: &[u8], message: &[u8]) -> [u8; 64] {
        let mut m = Vec::with_capacity(context.len() + message.len());
        m.extend_from_slice(context);
        m.extend_from_slice(message);
        self.0.sign(&m).to_bytes()
    }
}

/// What a node does in the network.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Roles {
    /// Forwards packets for others.
    pub mix: bool,
    /// Services it provides as a service provider (empty: not a provider), such as
    /// "storage" for offline mailboxes.
    pub services: Vec<String>,
}

/// A node's X25519 mix public keys for consecutive epochs from `first_epoch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MixKeys {
    /// The epoch of the first key.
    pub first_epoch: u64,
    /// One key per epoch, 1 to [`MAX_MIX_KEYS`].
    pub keys: Vec<[u8; 32]>,
}

impl MixKeys {
    /// The key for `epoch`, if this list covers it.
    pub fn for_epoch(&self, epoch: u64) -> Option<[u8; 32]> {
        let i = usize::try_from(epoch.checked_sub(self.first_epoch)?).ok()?;
        self.keys.get(i).copied()
    }

    /// The last epoch covered.
    pub fn last_epoch(&self) -> u64 {
        self.first_epoch
            .saturating_add(self.keys.len().saturating_sub(1) as u64)
    }
}

/// What a node tells the authorities about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeDescriptor {
    /// The node's identity key; its hash is the node ID.
    pub identity: IdentityKey,
    /// Increases with every descriptor the node publishes: an authority keeps the highest
    /// and refuses any other (a replay).
    pub sequence: u64,
    /// Where to send it packets: 1 to 4 IPv4 or IPv6 addresses with ports.
    pub addresses: Vec<SocketAddr>,
    /// B_i: its advertised constant emission rate, packets a second.
    pub bandwidth: u32,
    /// Mix, service provider.
    pub roles: Roles,
    /// Its mix keys for this epoch and the next ones.
    pub mix_keys: MixKeys,
}

/// Why a descriptor or withdrawal was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DescriptorError {
    /// The bytes do not decode.
    #[error("malformed: {0}")]
    Malformed(#[from] DecodeError),
    /// Larger than [`MAX_DESCRIPTOR_BYTES`].
    #[error("too large: at most {MAX_DESCRIPTOR_BYTES} bytes")]
    TooLarge,
    /// A field decodes but is not acceptable.
    #[error("invalid: {0}")]
    Invalid(&'static str),
    /// The signature is not the identity key's over this content.
    #[error("bad signature: not signed by the identity key it names, or altered")]
    BadSignature,
}

impl NodeDescriptor {
    /// Checks what the encoding cannot: at least one address, a non-zero bandwidth, a
    /// mix key, service names in the allowed alphabet.
    pub fn validate(&self) -> Result<(), DescriptorError> {
        if self.addresses.is_empty() || self.addresses.len() > MAX_ADDRESSES {
            return Err(DescriptorError::Invalid("1 to 4 addresses"));
        }
        if self.addresses.iter().any(|a| a.port() == 0) {
            return Err(DescriptorError::Invalid("address with port 0"));
        }
        if self.bandwidth == 0 {
            return Err(DescriptorError::Invalid(
                "bandwidth must be at least 1 packet/s",
            ));
        }
        if self.mix_keys.keys.is_empty() || self.mix_keys.keys.len() > MAX_MIX_KEYS {
            return Err(DescriptorError::Invalid("1 to 4 mix keys"));
        }
        if self
            .mix_keys
            .first_epoch
            .checked_add(MAX_MIX_KEYS as u64)
            .is_none()
        {
            return Err(DescriptorError::Invalid("mix key epoch out of range"));
        }
        if self.roles.services.len() > MAX_SERVICES {
            return Err(DescriptorError::Invalid("at most 8 services"));
        }
        if self.roles.services.iter().any(|s| !valid_service_name(s)) {
            return Err(DescriptorError::Invalid(
                "service names: 1 to 32 of [A-Za-z0-9._-]",
            ));
        }
        Ok(())
    }

    pub(crate) fn encode_into(&self, w: &mut Writer) {
        w.bytes(&self.identity.0);
        w.u64(self.sequence);
        encode_addresses(w, &self.addresses);
        w.u32(self.bandwidth);
        encode_roles(w, &self.roles);
        w.u64(self.mix_keys.first_epoch);
        w.u8(self.mix_keys.keys.len() as u8);
        for k in &self.mix_keys.keys {
            w.bytes(k);
        }
    }

    pub(crate) fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let identity = IdentityKey(r.array()?);
        let sequence = r.u64()?;
        let addresses = decode_addresses(r)?;
        let bandwidth = r.u32()?;
        let roles = decode_roles(r)?;
        let first_epoch = r.u64()?;
        let at = r.offset();
        let n = usize::from(r.u8()?);
        if n == 0 || n > MAX_MIX_KEYS {
            return Err(DecodeError::TooLong {
                what: "mix keys",
                at,
            });
        }
        let keys = (0..n).map(|_| r.array()).collect::<Result<_, _>>()?;
        Ok(NodeDescriptor {
            identity,
            sequence,
            addresses,
            bandwidth,
            roles,
            mix_keys: MixKeys { first_epoch, keys },
        })
    }

    fn body(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes(DESCRIPTOR_MAGIC);
        self.encode_into(&mut w);
        w.buf
    }

    /// Signs the descriptor with the node's identity secret (which must match `identity`).
    pub fn sign(self, secret: &IdentitySecret) -> Result<SignedDescriptor, DescriptorError> {
        self.validate()?;
        if secret.public() != self.identity {
            return Err(DescriptorError::Invalid(
                "signing key differs from the identity",
            ));
        }
        let body = self.body();
        let signature = secret.sign(DESCRIPTOR_CONTEXT, &body);
        Ok(SignedDescriptor {
            descriptor: self,
            body,
            signature,
        })
    }
}

/// A descriptor with a valid signature by the identity key it names. The only way to get
/// one is to sign it or to check the signature of received bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedDescriptor {
    descriptor: NodeDescriptor,
    body: Vec<u8>,
    signature: [u8; 64],
}

impl SignedDescriptor {
    /// The descriptor.
    pub fn descriptor(&self) -> &NodeDescriptor {
        &self.descriptor
    }

    /// body || signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 64);
        out.extend_from_slice(&self.body);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Reads a signed descriptor and checks it: size, encoding, content, signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DescriptorError> {
        if bytes.len() > MAX_DESCRIPTOR_BYTES {
            return Err(DescriptorError::TooLarge);
        }
        let split = bytes
            .len()
            .checked_sub(64)
            .ok_or(DescriptorError::Malformed(DecodeError::Truncated { at: 0 }))?;
        let (body, signature) = bytes.split_at(split);
        let mut r = Reader::new(body);
        r.expect_magic(DESCRIPTOR_MAGIC, "descriptor")?;
        let descriptor = NodeDescriptor::decode_from(&mut r)?;
        r.finish()?;
        descriptor.validate()?;
        let mut sig = [0u8; 64];
        sig.copy_from_slice(signature);
        if !descriptor.identity.verify(DESCRIPTOR_CONTEXT, body, &sig) {
            return Err(DescriptorError::BadSignature);
        }
        Ok(SignedDescriptor {
            descriptor,
            body: body.to_vec(),
            signature: sig,
        })
    }
}

/// A node's signed request to leave the network from `from_epoch` on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Withdrawal {
    /// The node's identity key.
    pub identity: IdentityKey,
    /// Higher than the sequence of the descriptor it withdraws (a replay otherwise).
    pub sequence: u64,
    /// The first epoch the node is no longer in.
    pub from_epoch: u64,
}

/// A withdrawal with a valid signature by the identity it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedWithdrawal {
    withdrawal: Withdrawal,
    body: Vec<u8>,
    signature: [u8; 64],
}

impl Withdrawal {
    fn body(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes(WITHDRAWAL_MAGIC);
        w.bytes(&self.identity.0);
        w.u64(self.sequence);
        w.u64(self.from_epoch);
        w.buf
    }

    /// Signs the withdrawal.
    pub fn sign(self, secret: &IdentitySecret) -> Result<SignedWithdrawal, DescriptorError> {
        if secret.public() != self.identity {
            return Err(DescriptorError::Invalid(
                "signing key differs from the identity",
            ));
        }
        let body = self.body();
        let signature = secret.sign(WITHDRAWAL_CONTEXT, &body);
        Ok(SignedWithdrawal {
            withdrawal: self,
            body,
            signature,
        })
    }
}

impl SignedWithdrawal {
    /// The withdrawal.
    pub fn withdrawal(&self) -> &Withdrawal {
        &self.withdrawal
    }

    /// body || signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.body.clone();
        out.extend_from_slice(&self.signature);
        out
    }

    /// Reads a signed withdrawal and checks its signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DescriptorError> {
        if bytes.len() > MAX_DESCRIPTOR_BYTES {
            return Err(DescriptorError::TooLarge);
        }
        let split = bytes
            .len()
            .checked_sub(64)
            .ok_or(DescriptorError::Malformed(DecodeError::Truncated { at: 0 }))?;
        let (body, signature) = bytes.split_at(split);
        let mut r = Reader::new(body);
        r.expect_magic(WITHDRAWAL_MAGIC, "withdrawal")?;
        let withdrawal = Withdrawal {
            identity: IdentityKey(r.array()?),
            sequence: r.u64()?,
            from_epoch: r.u64()?,
        };
        r.finish()?;
        let mut sig = [0u8; 64];
        sig.copy_from_slice(signature);
        if !withdrawal.identity.verify(WITHDRAWAL_CONTEXT, body, &sig) {
            return Err(DescriptorError::BadSignature);
        }
        Ok(SignedWithdrawal {
            withdrawal,
            body: body.to_vec(),
            signature: sig,
        })
    }
}

fn valid_service_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SERVICE_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub(crate) fn encode_addresses(w: &mut Writer, addresses: &[SocketAddr]) {
    w.u8(addresses.len() as u8);
    for a in addresses {
        match a.ip() {
            IpAddr::V4(ip) => {
                w.u8(4);
                w.bytes(&ip.octets());
            }
            IpAddr::V6(ip) => {
                w.u8(6);
                w.bytes(&ip.octets());
            }
        }
        w.u16(a.port());
    }
}

pub(crate) fn decode_addresses(r: &mut Reader<'_>) -> Result<Vec<SocketAddr>, DecodeError> {
    let at = r.offset();
    let n = usize::from(r.u8()?);
    if n > MAX_ADDRESSES {
        return Err(DecodeError::TooLong {
            what: "addresses",
            at,
        });
    }
    (0..n)
        .map(|_| {
            let ip = match r.u8()? {
                4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
                6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
                _ => return Err(r.invalid("address family")),
            };
            Ok(SocketAddr::new(ip, r.u16()?))
        })
        .collect()
}

pub(crate) fn encode_roles(w: &mut Writer, roles: &Roles) {
    w.u8(u8::from(roles.mix));
    w.u8(roles.services.len() as u8);
    for s in &roles.services {
        w.u8(s.len() as u8);
        w.bytes(s.as_bytes());
    }
}

pub(crate) fn decode_roles(r: &mut Reader<'_>) -> Result<Roles, DecodeError> {
    let mix = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err(r.invalid("mix flag")),
    };
    let at = r.offset();
    let n = usize::from(r.u8()?);
    if n > MAX_SERVICES {
        return Err(DecodeError::TooLong {
            what: "services",
            at,
        });
    }
    let services = (0..n)
        .map(|_| {
            let at = r.offset();
            let len = usize::from(r.u8()?);
            if len > MAX_SERVICE_NAME {
                return Err(DecodeError::TooLong {
                    what: "service name",
                    at,
                });
            }
            let name = core::str::from_utf8(r.take(len)?).map_err(|_| r.invalid("service name"))?;
            if !valid_service_name(name) {
                return Err(r.invalid("service name"));
            }
            Ok(name.to_owned())
        })
        .collect::<Result<_, _>>()?;
    Ok(Roles { mix, services })
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first four bytes in hex, for logs (never a whole key or ID).
pub(crate) fn hex_prefix(bytes: &[u8]) -> String {
    format!("{}..", hex(&bytes[..bytes.len().min(4)]))
}
