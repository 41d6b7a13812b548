//! BACAP mailboxes (after Katzenpost's Blinding-and-Capability scheme): a stream of boxes
//! per ordered pair of contacts, each box written once by the holder of the write
//! capability, readable only by the holder of the read capability, and unlinkable to the
//! other boxes of its stream by the storage provider that holds it.
//!
//! docs/storage.md has the construction, its encodings and test vectors; in short:
//!
//! - A stream starts at a [`Position`]: a 64-bit index and a 32-byte chain key, both
//!   random. Position i + 1 is `chain' = HKDF-Expand(chain, "mixed-bacap-v1 next" || i)`
//!   (a one-way ratchet: a reader that drops old positions cannot derive old boxes). There
//!   is no position after index `u64::MAX`: [`BacapError::IndexOverflow`], never a wrap.
//! - Position i yields 96 bytes `HKDF-Expand(chain, "mixed-bacap-v1 box" || i)`: a blinding
//!   factor `f` (the first 64 reduced mod the group order l) and a ChaCha20 key.
//! - The writer's root key is an Ed25519 key (scalar a, public A = aB). The box ID is `fA`;
//!   the writer signs with the blinded scalar `fa` (so a block verifies under the box ID
//!   with plain Ed25519), the reader computes `fA` from A and the chain alone.
//! - A block is `BLOCK_LEN` bytes: ChaCha20(key, nonce 0) of `len (u16) || plaintext ||
//!   zeros`. A PUT is signed over `"mixed-bacap-v1 put" || box ID || block`; a tombstone over
//!   `"mixed-bacap-v1 tombstone" || box ID`. Ed25519 signatures are deterministic, so a
//!   retried PUT is byte-identical to the first and the provider stores one block.

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::hazmat::{ExpandedSecretKey, raw_sign};
use ed25519_dalek::{Signature, VerifyingKey};
use hkdf::Hkdf;
use sha2::{Digest, Sha256, Sha512};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes of a box ID (a compressed Edwards point).
pub const BOX_ID_LEN: usize = 32;
/// Bytes of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Bytes of a stored block: every block has this size, whatever it carries. Chosen so that
/// a GET's response (110 bytes besides the block, [`crate::protocol::RESPONSE_LEN`]) is one
/// coded symbol of a reply through SURBs: 950 bytes at the default 1,452-byte packets. A
/// block carries one symbol of a message and its header.
pub const BLOCK_LEN: usize = 832;
/// The most plaintext one block carries (two bytes hold its length).
pub const PLAINTEXT_MAX: usize = BLOCK_LEN - 2;
/// Bytes of an encoded capability (either kind).
pub const CAP_LEN: usize = 1 + 1 + 32 + 8 + 32;

/// The encoding version of capabilities.
pub const CAP_VERSION: u8 = 1;
const KIND_WRITE: u8 = 0x57; // 'W'
const KIND_READ: u8 = 0x52; // 'R'

const INFO_NEXT: &[u8] = b"mixed-bacap-v1 next";
const INFO_BOX: &[u8] = b"mixed-bacap-v1 box";
const DOMAIN_PREFIX: &[u8] = b"mixed-bacap-v1 prefix";
/// What a PUT's signature covers, before the box ID and the block.
pub const DOMAIN_PUT: &[u8] = b"mixed-bacap-v1 put";
/// What a tombstone's signature covers, before the box ID.
pub const DOMAIN_TOMBSTONE: &[u8] = b"mixed-bacap-v1 tombstone";

/// A box ID: the writer's root key blinded for one position; it is also the Ed25519 key
/// that verifies the box's block.
pub type BoxId = [u8; BOX_ID_LEN];

/// Why a BACAP operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BacapError {
    /// The stream is at index `u64::MAX`: it has no next position.
    #[error("the stream's index would overflow")]
    IndexOverflow,
    /// More plaintext than a block carries.
    #[error("plaintext of {0} bytes is over the {PLAINTEXT_MAX} a block carries")]
    TooLarge(usize),
    /// A capability that is not `CAP_LEN` bytes of a known version and kind, or whose key
    /// is not a point of the prime-order group.
    #[error("malformed capability")]
    Capability,
    /// A signature that does not verify under the box ID, or a box ID that is no key.
    #[error("bad signature")]
    Signature,
    /// A block for another box than the one asked for.
    #[error("block for another box")]
    WrongBox,
    /// A block that decrypts to no valid length and padding.
    #[error("malformed block")]
    Block,
    /// A blinding factor of zero (probability 2^-252: never seen, but never used either).
    #[error("degenerate blinding factor")]
    Degenerate,
}

/// A point in a stream: its index and chain key.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Position {
    index: u64,
    chain: [u8; 32],
}

impl core::fmt::Debug for Position {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Position")
            .field("index", &self.index)
            .finish_non_exhaustive() // the chain key is secret
    }
}

/// What one position yields.
struct Material {
    blind: Scalar,
    key: [u8; 32],
}

impl Drop for Material {
    fn drop(&mut self) {
        self.blind.zeroize();
        self.key.zeroize();
    }
}

fn expand(chain: &[u8; 32], info: &[u8], index: u64, out: &mut [u8]) {
    // a 32-byte chain is a valid PRK for HKDF-SHA-256, and `out` is far below 255 * 32
    // bytes, so neither call can fail
    if let Ok(hk) = Hkdf::<Sha256>::from_prk(chain) {
        let _ = hk.expand_multi_info(&[info, &index.to_be_bytes()], out);
    }
}

impl Position {
    /// The position with this index and chain key.
    pub fn new(index: u64, chain: [u8; 32]) -> Position {
        Position { index, chain }
    }

    /// A random start: random index (below 2^62, so a stream has room) and chain.
    pub fn random<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Position {
        let mut chain = [0u8; 32];
        rng.fill_bytes(&mut chain);
        Position {
            index: rng.next_u64() >> 2,
            chain,
        }
    }

    /// The index.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The next position.
    pub fn next(&self) -> Result<Position, BacapError> {
        let index = self.index.checked_add(1).ok_or(BacapError::IndexOverflow)?;
        let mut chain = [0u8; 32];
        expand(&self.chain, INFO_NEXT, self.index, &mut chain);
        Ok(Position { index, chain })
    }

    /// The position `steps` after this one.
    pub fn advance(&self, steps: u64) -> Result<Position, BacapError> {
        self.index
            .checked_add(steps)
            .ok_or(BacapError::IndexOverflow)?;
        let mut p = self.clone();
        for _ in 0..steps {
            p = p.next()?;
        }
        Ok(p)
    }

    fn material(&self) -> Result<Material, BacapError> {
        let mut okm = [0u8; 96];
        expand(&self.chain, INFO_BOX, self.index, &mut okm);
        let mut wide = [0u8; 64];
        wide.copy_from_slice(&okm[..64]);
        let mut key = [0u8; 32];
        key.copy_from_slice(&okm[64..]);
        let blind = Scalar::from_bytes_mod_order_wide(&wide);
        okm.zeroize();
        wide.zeroize();
        if blind == Scalar::ZERO {
            return Err(BacapError::Degenerate);
        }
        Ok(Material { blind, key })
    }
}

fn encode_cap(kind: u8, key: &[u8; 32], p: &Position) -> [u8; CAP_LEN] {
    let mut out = [0u8; CAP_LEN];
    out[0] = CAP_VERSION;
    out[1] = kind;
    out[2..34].copy_from_slice(key);
    out[34..42].copy_from_slice(&p.index.to_be_bytes());
    out[42..].copy_from_slice(&p.chain);
    out
}

fn decode_cap(bytes: &[u8], kind: u8) -> Result<([u8; 32], Position), BacapError> {
    let b: &[u8; CAP_LEN] = bytes.try_into().map_err(|_| BacapError::Capability)?;
    if b[0] != CAP_VERSION || b[1] != kind {
        return Err(BacapError::Capability);
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&b[2..34]);
    let mut index = [0u8; 8];
    index.copy_from_slice(&b[34..42]);
    let mut chain = [0u8; 32];
    chain.copy_from_slice(&b[42..]);
    Ok((key, Position::new(u64::from_be_bytes(index), chain)))
}

/// The capability to write a stream: the root signing key and the stream's start.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct WriteCap {
    seed: [u8; 32],
    start: Position,
}

impl core::fmt::Debug for WriteCap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("WriteCap")
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

/// A box ready to be written: its ID and the keys to seal and tombstone it.
pub struct WriteBox {
    /// The box ID.
    pub id: BoxId,
    /// The position it belongs to.
    pub index: u64,
    esk: ExpandedSecretKey,
    vk: VerifyingKey,
    key: [u8; 32],
}

impl Drop for WriteBox {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

/// A sealed block: what a PUT carries.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The box it is for.
    pub box_id: BoxId,
    /// The signature under the box ID.
    pub signature: [u8; SIGNATURE_LEN],
    /// The encrypted block.
    pub block: [u8; BLOCK_LEN],
}

impl core::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sealed")
            .field("box_id", &hex(&self.box_id))
            .finish_non_exhaustive()
    }
}

/// Lowercase hex (for logs of box IDs in tests and tools; never routing metadata).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn put_message(box_id: &BoxId, block: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN_PUT.len() + BOX_ID_LEN + block.len());
    m.extend_from_slice(DOMAIN_PUT);
    m.extend_from_slice(box_id);
    m.extend_from_slice(block);
    m
}

fn tombstone_message(box_id: &BoxId) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN_TOMBSTONE.len() + BOX_ID_LEN);
    m.extend_from_slice(DOMAIN_TOMBSTONE);
    m.extend_from_slice(box_id);
    m
}

fn key_of(box_id: &BoxId) -> Result<VerifyingKey, BacapError> {
    let vk = VerifyingKey::from_bytes(box_id).map_err(|_| BacapError::Signature)?;
    // small-order keys are refused (any signature would verify under them); a key with a
    // torsion component is not: whoever holds its secret is its only writer all the same,
    // and the check would cost a second scalar multiplication per PUT
    if vk.is_weak() {
        return Err(BacapError::Signature);
    }
    Ok(vk)
}

/// Whether `signature` is the box's signature over a PUT of `block` (what a provider checks
/// before it stores anything). Strict Ed25519 verification.
pub fn verify_put(box_id: &BoxId, signature: &[u8; 64], block: &[u8]) -> Result<(), BacapError> {
    let vk = key_of(box_id)?;
    vk.verify_strict(
        &put_message(box_id, block),
        &Signature::from_bytes(signature),
    )
    .map_err(|_| BacapError::Signature)
}

/// Whether `signature` is the box's tombstone (bound to this box ID only).
pub fn verify_tombstone(box_id: &BoxId, signature: &[u8; 64]) -> Result<(), BacapError> {
    let vk = key_of(box_id)?;
    vk.verify_strict(
        &tombstone_message(box_id),
        &Signature::from_bytes(signature),
    )
    .map_err(|_| BacapError::Signature)
}

fn keystream(key: &[u8; 32], block: &mut [u8; BLOCK_LEN]) {
    let nonce = [0u8; 12]; // the key is used for this one block only
    let mut c = ChaCha20::new(key.into(), (&nonce).into());
    c.apply_keystream(block);
}

impl WriteCap {
    /// A fresh capability: a random root key and start.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> WriteCap {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        WriteCap {
            seed,
            start: Position::random(rng),
        }
    }

    /// The capability of this root key seed (an Ed25519 secret key) and start.
    pub fn new(seed: [u8; 32], start: Position) -> WriteCap {
        WriteCap { seed, start }
    }

    fn root(&self) -> ExpandedSecretKey {
        let mut h: [u8; 64] = Sha512::digest(self.seed).into();
        let esk = ExpandedSecretKey::from_bytes(&h);
        h.zeroize();
        esk
    }

    /// The root public key A.
    pub fn root_public(&self) -> [u8; 32] {
        EdwardsPoint::mul_base(&self.root().scalar)
            .compress()
            .to_bytes()
    }

    /// The stream's start.
    pub fn start(&self) -> &Position {
        &self.start
    }

    /// The matching read capability.
    pub fn read_cap(&self) -> ReadCap {
        let root = self.root_public();
        ReadCap {
            root,
            point: EdwardsPoint::mul_base(&self.root().scalar),
            start: self.start.clone(),
        }
    }

    /// The 74-byte encoding (handle with care: it is the write capability).
    pub fn to_bytes(&self) -> [u8; CAP_LEN] {
        encode_cap(KIND_WRITE, &self.seed, &self.start)
    }

    /// From [`Self::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<WriteCap, BacapError> {
        let (seed, start) = decode_cap(bytes, KIND_WRITE)?;
        Ok(WriteCap { seed, start })
    }

    /// The box at `position` of this stream.
    pub fn box_at(&self, position: &Position) -> Result<WriteBox, BacapError> {
        let m = position.material()?;
        let root = self.root();
        let scalar = root.scalar * m.blind;
        let mut prefix_hash = Sha512::new();
        prefix_hash.update(DOMAIN_PREFIX);
        prefix_hash.update(root.hash_prefix);
        prefix_hash.update(m.blind.to_bytes());
        let wide: [u8; 64] = prefix_hash.finalize().into();
        let mut hash_prefix = [0u8; 32];
        hash_prefix.copy_from_slice(&wide[..32]);
        let esk = ExpandedSecretKey {
            scalar,
            hash_prefix,
        };
        let vk = VerifyingKey::from(&esk);
        Ok(WriteBox {
            id: vk.to_bytes(),
            index: position.index,
            esk,
            vk,
            key: m.key,
        })
    }
}

impl WriteBox {
    /// Encrypts and signs `plaintext` for this box.
    pub fn seal(&self, plaintext: &[u8]) -> Result<Sealed, BacapError> {
        if plaintext.len() > PLAINTEXT_MAX {
            return Err(BacapError::TooLarge(plaintext.len()));
        }
        let mut block = [0u8; BLOCK_LEN];
        block[..2].copy_from_slice(&(plaintext.len() as u16).to_be_bytes());
        block[2..2 + plaintext.len()].copy_from_slice(plaintext);
        keystream(&self.key, &mut block);
        let sig = raw_sign::<Sha512>(&self.esk, &put_message(&self.id, &block), &self.vk);
        Ok(Sealed {
            box_id: self.id,
            signature: sig.to_bytes(),
            block,
        })
    }

    /// The box's tombstone signature.
    pub fn tombstone(&self) -> [u8; SIGNATURE_LEN] {
        raw_sign::<Sha512>(&self.esk, &tombstone_message(&self.id), &self.vk).to_bytes()
    }
}

/// The capability to read a stream: the writer's root public key and the stream's start.
#[derive(Clone)]
pub struct ReadCap {
    root: [u8; 32],
    point: EdwardsPoint,
    start: Position,
}

impl core::fmt::Debug for ReadCap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReadCap")
            .field("root", &hex(&self.root))
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

/// A box to read: its ID and the key that opens its block.
pub struct ReadBox {
    /// The box ID.
    pub id: BoxId,
    /// The position it belongs to.
    pub index: u64,
    key: [u8; 32],
}

impl Drop for ReadBox {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl ReadCap {
    /// The 74-byte encoding.
    pub fn to_bytes(&self) -> [u8; CAP_LEN] {
        encode_cap(KIND_READ, &self.root, &self.start)
    }

    /// From [`Self::to_bytes`]; the root key must be a point of the prime-order group.
    pub fn from_bytes(bytes: &[u8]) -> Result<ReadCap, BacapError> {
        let (root, start) = decode_cap(bytes, KIND_READ)?;
        let point = CompressedEdwardsY(root)
            .decompress()
            .filter(|p| p.is_torsion_free() && !p.is_small_order())
            .ok_or(BacapError::Capability)?;
        Ok(ReadCap { root, point, start })
    }

    /// The writer's root public key.
    pub fn root_public(&self) -> [u8; 32] {
        self.root
    }

    /// The stream's start.
    pub fn start(&self) -> &Position {
        &self.start
    }

    /// The box at `position` of this stream.
    pub fn box_at(&self, position: &Position) -> Result<ReadBox, BacapError> {
        let m = position.material()?;
        Ok(ReadBox {
            id: (m.blind * self.point).compress().to_bytes(),
            index: position.index,
            key: m.key,
        })
    }
}

impl ReadBox {
    /// Verifies and decrypts a block read from this box.
    pub fn open(&self, sealed: &Sealed) -> Result<Vec<u8>, BacapError> {
        if sealed.box_id != self.id {
            return Err(BacapError::WrongBox);
        }
        verify_put(&self.id, &sealed.signature, &sealed.block)?;
        let mut block = sealed.block;
        keystream(&self.key, &mut block);
        let len = usize::from(u16::from_be_bytes([block[0], block[1]]));
        let ok = len <= PLAINTEXT_MAX && block[2 + len..].iter().all(|&b| b == 0);
        let out = ok.then(|| block[2..2 + len].to_vec());
        block.zeroize();
        out.ok_or(BacapError::Block)
    }
}

/// How far past its acknowledged frontier a writer may have boxes in flight.
pub const WINDOW: u64 = 64;

/// A frontier and the positions done past it (acknowledged for a writer, read for a
/// reader): the shared bookkeeping of both ends of a stream.
#[derive(Debug)]
struct Frontier {
    next: Position,
    done: std::collections::BTreeSet<u64>,
}

impl Frontier {
    fn new(next: Position) -> Frontier {
        Frontier {
            next,
            done: Default::default(),
        }
    }

    /// The next `count` positions not done, at most [`WINDOW`] past the frontier.
    fn open(&self, count: usize) -> Vec<Position> {
        let mut out = Vec::with_capacity(count.min(WINDOW as usize));
        let mut p = self.next.clone();
        for _ in 0..WINDOW {
            if out.len() == count {
                break;
            }
            if !self.done.contains(&p.index) {
                out.push(p.clone());
            }
            match p.next() {
                Ok(n) => p = n,
                Err(_) => break, // the last index of the stream
            }
        }
        out
    }

    /// `index` is done; the frontier moves over a run of done positions.
    fn done(&mut self, index: u64) -> Result<(), BacapError> {
        if index < self.next.index || index - self.next.index >= WINDOW {
            return Err(BacapError::WrongBox);
        }
        self.done.insert(index);
        while self.done.contains(&self.next.index) {
            let Ok(n) = self.next.next() else {
                break; // the stream is spent: the frontier stays on its last box
            };
            self.done.remove(&self.next.index);
            self.next = n;
        }
        Ok(())
    }
}

/// The writing end of a stream: its state advances only over boxes whose PUT was
/// acknowledged, so a write that was lost or refused is retried at the same box.
#[derive(Debug)]
pub struct StreamWriter {
    cap: WriteCap,
    frontier: Frontier,
}

impl StreamWriter {
    /// A writer at the stream's start.
    pub fn new(cap: WriteCap) -> StreamWriter {
        let next = cap.start.clone();
        StreamWriter::resume(cap, next)
    }

    /// A writer at a saved frontier.
    pub fn resume(cap: WriteCap, next: Position) -> StreamWriter {
        StreamWriter {
            cap,
            frontier: Frontier::new(next),
        }
    }

    /// The first position not yet acknowledged (what to persist).
    pub fn frontier(&self) -> &Position {
        &self.frontier.next
    }

    /// The boxes of the next `count` positions that are not acknowledged, in order, at
    /// most [`WINDOW`] positions past the frontier; nothing advances.
    pub fn pending(&self, count: usize) -> Result<Vec<WriteBox>, BacapError> {
        self.frontier
            .open(count)
            .iter()
            .map(|p| self.cap.box_at(p))
            .collect()
    }

    /// The PUT of the box at `index` was acknowledged (`Stored`). An index outside the
    /// window is an error, and the frontier moves only over a run of acknowledged boxes.
    pub fn acknowledged(&mut self, index: u64) -> Result<(), BacapError> {
        self.frontier.done(index)
    }
}

/// The reading end of a stream: the boxes to ask for next, and the frontier of what was
/// read.
#[derive(Debug)]
pub struct StreamReader {
    cap: ReadCap,
    frontier: Frontier,
}

impl StreamReader {
    /// A reader at the stream's start.
    pub fn new(cap: ReadCap) -> StreamReader {
        let next = cap.start.clone();
        StreamReader::resume(cap, next)
    }

    /// A reader at a saved frontier.
    pub fn resume(cap: ReadCap, next: Position) -> StreamReader {
        StreamReader {
            cap,
            frontier: Frontier::new(next),
        }
    }

    /// The first position not yet read.
    pub fn frontier(&self) -> &Position {
        &self.frontier.next
    }

    /// The next `count` boxes not yet read, at most [`WINDOW`] past the frontier.
    pub fn expected(&self, count: usize) -> Result<Vec<ReadBox>, BacapError> {
        self.frontier
            .open(count)
            .iter()
            .map(|p| self.cap.box_at(p))
            .collect()
    }

    /// The box at `index` was read (and opened); the frontier moves over a run of read
    /// boxes, and their chain keys are forgotten.
    pub fn consumed(&mut self, index: u64) -> Result<(), BacapError> {
        self.frontier.done(index)
    }
}

impl Position {
    /// The 40-byte encoding: index, then chain key (handle with care).
    pub fn to_bytes(&self) -> [u8; 40] {
        let mut b = [0u8; 40];
        b[..8].copy_from_slice(&self.index.to_be_bytes());
        b[8..].copy_from_slice(&self.chain);
        b
    }

    /// From [`Self::to_bytes`].
    pub fn from_bytes(b: &[u8; 40]) -> Position {
        let mut index = [0u8; 8];
        index.copy_from_slice(&b[..8]);
        let mut chain = [0u8; 32];
        chain.copy_from_slice(&b[8..]);
        Position::new(u64::from_be_bytes(index), chain)
    }
}
