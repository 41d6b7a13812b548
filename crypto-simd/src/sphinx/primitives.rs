//! The primitives of the `sphinx-packet` 0.8 format, each a thin, allocation-free wrapper
//! over a RustCrypto crate: AES-128-CTR, HMAC-SHA256 (truncated), HKDF-SHA256, X25519, and
//! the Lioness wide-block cipher over ChaCha20 and keyed BLAKE2b (`blake2b_simd`: AVX2 when
//! the CPU has it, and four blocks hashed side by side in a batch).

use aes::Aes128;
use chacha20::ChaCha20;
use ctr::cipher::{KeyIvInit, StreamCipher};
use curve25519_dalek::montgomery::MontgomeryPoint;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::geometry::{LIONESS_LEFT_LEN, MAC_LEN};

type Aes128Ctr = ctr::Ctr64BE<Aes128>;
type HmacSha256 = Hmac<Sha256>;

/// Length of an AES-128 key.
pub(crate) const STREAM_KEY_LEN: usize = 16;
/// Length of a Lioness key: ChaCha20 key (32), BLAKE2b key (64), ChaCha20 key, BLAKE2b key.
pub(crate) const LIONESS_KEY_LEN: usize = 2 * (32 + 64);
/// SHA-256's block size, the length HMAC pads its key to.
const SHA256_BLOCK: usize = 64;
/// SHA-256's output.
const SHA256_OUT: usize = 32;

/// XORs the AES-128-CTR keystream (zero IV, 64-bit big-endian counter) into `data`.
pub(crate) fn aes128_ctr_xor(key: &[u8; STREAM_KEY_LEN], data: &mut [u8]) {
    let iv = [0u8; 16];
    let mut cipher = Aes128Ctr::new(key.into(), (&iv).into());
    cipher.apply_keystream(data);
}

/// An HMAC-SHA256 instance keyed with `key` (at most one block, zero-padded as HMAC does).
fn hmac_keyed(key: &[u8]) -> HmacSha256 {
    debug_assert!(
        key.len() <= SHA256_BLOCK,
        "HMAC keys here are at most one block"
    );
    let mut block = [0u8; SHA256_BLOCK];
    let n = key.len().min(SHA256_BLOCK);
    block[..n].copy_from_slice(&key[..n]);
    <HmacSha256 as KeyInit>::new((&block).into())
}

/// HMAC-SHA256 of `data` under `key`, truncated to [`MAC_LEN`] bytes (Sphinx's gamma).
pub(crate) fn header_mac(key: &[u8; 16], data: &[u8]) -> [u8; MAC_LEN] {
    let mut mac = hmac_keyed(key);
    mac.update(data);
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&full[..MAC_LEN]);
    out
}

/// Whether `tag` is the truncated HMAC-SHA256 of `data` under `key`, compared in constant
/// time.
pub(crate) fn header_mac_ok(key: &[u8; 16], data: &[u8], tag: &[u8; MAC_LEN]) -> bool {
    header_mac(key, data).ct_eq(tag).into()
}

/// HKDF-SHA256 (RFC 5869): extract with `salt` (at most 64 bytes), then expand with `info`
/// into all of `okm` (at most 255 * 32 bytes; every caller asks for a constant length).
pub(crate) fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[u8], okm: &mut [u8]) {
    debug_assert!(okm.len() <= 255 * SHA256_OUT);
    let mut extract = hmac_keyed(salt);
    extract.update(ikm);
    let prk = extract.finalize().into_bytes();
    let keyed = hmac_keyed(&prk);

    let mut previous = [0u8; SHA256_OUT];
    let mut previous_len = 0;
    for (i, chunk) in okm.chunks_mut(SHA256_OUT).enumerate() {
        let mut block = keyed.clone();
        block.update(&previous[..previous_len]);
        block.update(info);
        // at most 255 blocks: every caller's length is a constant well below the limit
        block.update(&[(i as u8).wrapping_add(1)]);
        previous.copy_from_slice(&block.finalize().into_bytes());
        previous_len = SHA256_OUT;
        chunk.copy_from_slice(&previous[..chunk.len()]);
    }
}

/// X25519 (RFC 7748): the scalar is clamped, the high bit of `u` ignored. One ladder on the
/// portable backend; batches go through [`crate::x25519::x25519_batch`].
pub(crate) fn x25519(scalar: &[u8; 32], u: &[u8; 32]) -> [u8; 32] {
    crate::x25519::serial::x25519(scalar, u)
}

/// X25519(scalar, 9), the public key of a secret, through a precomputed table of the base
/// point (several times faster than a ladder; same result).
pub(crate) fn x25519_base(scalar: &[u8; 32]) -> [u8; 32] {
    MontgomeryPoint::mul_base_clamped(*scalar).to_bytes()
}

/// Whether `x` is all zeroes, in constant time (an X25519 output of zero means the peer's
/// point had small order: the exchange contributed nothing).
pub(crate) fn is_zero(x: &[u8; 32]) -> bool {
    x.ct_eq(&[0u8; 32]).into()
}

/// Whether `u` is the canonical encoding of a field element: below p = 2^255 - 19 (which also
/// means bit 255 is clear). Every X25519 output is canonical; X25519 itself ignores bit 255
/// and reduces the rest, so a non-canonical alpha would let a flipped bit go unnoticed.
/// Alpha is public, so this need not be constant time.
pub(crate) fn is_canonical_u(u: &[u8; 32]) -> bool {
    if u[31] & 0x80 != 0 {
        return false;
    }
    // with bit 255 clear, u >= p only for 0x7fff..ffed ..= 0x7fff..ffff
    let top_all_ones = u[31] == 0x7f && u[1..31].iter().all(|&b| b == 0xff);
    !(top_all_ones && u[0] >= 0xed)
}

/// The Lioness wide-block cipher of `sphinx-packet` 0.8 (Anderson and Biham): a four-round
/// Feistel network over a block split into a 32-byte left part L and the rest R, with
/// ChaCha20 (zero nonce) as the stream cipher S and keyed BLAKE2b-256 as the hash H.
/// The 192-byte key is k1 (32) || k2 (64) || k3 (32) || k4 (64).
pub(crate) struct Lioness<'k> {
    key: &'k [u8; LIONESS_KEY_LEN],
}

impl<'k> Lioness<'k> {
    pub(crate) fn new(key: &'k [u8; LIONESS_KEY_LEN]) -> Self {
        Self { key }
    }

    fn k1(&self) -> &[u8] {
        &self.key[0..32]
    }
    fn k2(&self) -> &[u8] {
        &self.key[32..96]
    }
    fn k3(&self) -> &[u8] {
        &self.key[96..128]
    }
    fn k4(&self) -> &[u8] {
        &self.key[128..192]
    }

    /// Encrypts `block` in place. The caller guarantees `block.len() > 32`; shorter blocks
    /// are left unchanged and `false` is returned.
    pub(crate) fn encrypt(&self, block: &mut [u8]) -> bool {
        let Some((left, right)) = block.split_first_chunk_mut::<LIONESS_LEFT_LEN>() else {
            return false;
        };
        if right.is_empty() {
            return false;
        }
        stream_round(left, right, self.k1());
        hash_round(left, right, self.k2());
        stream_round(left, right, self.k3());
        hash_round(left, right, self.k4());
        true
    }

    /// Decrypts `block` in place; the inverse of [`Self::encrypt`].
    pub(crate) fn decrypt(&self, block: &mut [u8]) -> bool {
        let Some((left, right)) = block.split_first_chunk_mut::<LIONESS_LEFT_LEN>() else {
            return false;
        };
        if right.is_empty() {
            return false;
        }
        hash_round(left, right, self.k4());
        stream_round(left, right, self.k3());
        hash_round(left, right, self.k2());
        stream_round(left, right, self.k1());
        true
    }
}

/// R ^= ChaCha20(L ^ k, nonce 0).
fn stream_round(left: &[u8; LIONESS_LEFT_LEN], right: &mut [u8], k: &[u8]) {
    let mut key = [0u8; 32];
    for ((out, l), k) in key.iter_mut().zip(left).zip(k) {
        *out = l ^ k;
    }
    let nonce = [0u8; 12];
    let mut cipher = ChaCha20::new((&key).into(), (&nonce).into());
    cipher.apply_keystream(right);
    zeroize::Zeroize::zeroize(&mut key);
}

/// L ^= BLAKE2b-256(key k, R).
fn hash_round(left: &mut [u8; LIONESS_LEFT_LEN], right: &[u8], k: &[u8]) {
    let digest = blake2b_256(k).hash(right);
    for (l, d) in left.iter_mut().zip(digest.as_bytes()) {
        *l ^= d;
    }
}

/// Keyed BLAKE2b with a 32-byte output.
fn blake2b_256(key: &[u8]) -> blake2b_simd::Params {
    let mut params = blake2b_simd::Params::new();
    params.hash_length(32).key(key);
    params
}

/// Blocks whose Lioness layers are removed side by side: four, the lanes of BLAKE2b's
/// AVX2 backend.
pub(crate) const LIONESS_GROUP: usize = 4;

/// [`Lioness::decrypt`] of up to [`LIONESS_GROUP`] blocks, `blocks[i]` under `keys[i]`,
/// byte for byte the same: the stream rounds one block after another, each hash round of
/// the group as one `hash_many` call. Blocks of 32 bytes or less, and blocks beyond the
/// group or without a key, are left unchanged.
pub(crate) fn lioness_decrypt_group(keys: &[&[u8; LIONESS_KEY_LEN]], blocks: &mut [&mut [u8]]) {
    let n = keys.len().min(blocks.len()).min(LIONESS_GROUP);
    let (keys, blocks) = (&keys[..n], &mut blocks[..n]);
    if blocks.iter().any(|b| b.len() <= LIONESS_LEFT_LEN) {
        // not a payload: each on its own (a short one is refused there)
        for (key, block) in keys.iter().zip(blocks.iter_mut()) {
            Lioness::new(key).decrypt(block);
        }
        return;
    }
    hash_round_group(keys, blocks, 128..192);
    for (key, block) in keys.iter().zip(blocks.iter_mut()) {
        if let Some((left, right)) = block.split_first_chunk_mut::<LIONESS_LEFT_LEN>() {
            stream_round(left, right, &key[96..128]);
        }
    }
    hash_round_group(keys, blocks, 32..96);
    for (key, block) in keys.iter().zip(blocks.iter_mut()) {
        if let Some((left, right)) = block.split_first_chunk_mut::<LIONESS_LEFT_LEN>() {
            stream_round(left, right, &key[0..32]);
        }
    }
}

/// L_i ^= BLAKE2b-256(key keys[i][k], R_i) for each block of the group, hashed together.
fn hash_round_group(
    keys: &[&[u8; LIONESS_KEY_LEN]],
    blocks: &mut [&mut [u8]],
    k: std::ops::Range<usize>,
) {
    let mut digests = [[0u8; 32]; LIONESS_GROUP];
    {
        let params: [Option<blake2b_simd::Params>; LIONESS_GROUP] =
            core::array::from_fn(|i| keys.get(i).map(|key| blake2b_256(&key[k.clone()])));
        let mut jobs: [Option<blake2b_simd::many::HashManyJob<'_>>; LIONESS_GROUP] =
            core::array::from_fn(|i| match (&params[i], blocks.get(i)) {
                (Some(p), Some(b)) => Some(blake2b_simd::many::HashManyJob::new(
                    p,
                    &b[LIONESS_LEFT_LEN..],
                )),
                _ => None,
            });
        blake2b_simd::many::hash_many(jobs.iter_mut().flatten());
        for (digest, job) in digests.iter_mut().zip(&jobs) {
            if let Some(job) = job {
                digest.copy_from_slice(job.to_hash().as_bytes());
            }
        }
    }
    for (block, digest) in blocks.iter_mut().zip(&digests) {
        for (l, d) in block.iter_mut().zip(digest) {
            *l ^= d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn hkdf_matches_rfc5869_test_cases_1_to_3() {
        // RFC 5869 appendix A.1
        let mut okm = [0u8; 42];
        hkdf_sha256(
            &hex("000102030405060708090a0b0c"),
            &hex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b"),
            &hex("f0f1f2f3f4f5f6f7f8f9"),
            &mut okm,
        );
        assert_eq!(
            okm.to_vec(),
            hex(
                "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
            )
        );
        // A.2 uses an 80-byte salt, longer than one block, which no caller here needs.
        // A.3: empty salt and info
        let mut okm = [0u8; 42];
        hkdf_sha256(
            &[],
            &hex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b"),
            &[],
            &mut okm,
        );
        assert_eq!(
            okm.to_vec(),
            hex(
                "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
            )
        );
    }

    #[test]
    fn hmac_matches_rfc4231_test_case_2_truncated() {
        // RFC 4231 test case 2, key "Jefe" (4 bytes, padded like any short key)
        let mut mac = hmac_keyed(b"Jefe");
        mac.update(b"what do ya want for nothing?");
        let full = mac.finalize().into_bytes();
        assert_eq!(
            full.to_vec(),
            hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
    }

    #[test]
    fn canonical_u_bounds() {
        let mut p = [0xffu8; 32];
        p[31] = 0x7f;
        p[0] = 0xed; // p itself
        assert!(!is_canonical_u(&p));
        p[0] = 0xec; // p - 1
        assert!(is_canonical_u(&p));
        let mut base = [0u8; 32];
        base[0] = 9;
        assert!(is_canonical_u(&base));
        let mut high = base;
        high[31] |= 0x80;
        assert!(!is_canonical_u(&high));
    }

    #[test]
    fn lioness_round_trips_and_rejects_short_blocks() {
        let key = [7u8; LIONESS_KEY_LEN];
        let lioness = Lioness::new(&key);
        let original: Vec<u8> = (0..200u8).collect();
        let mut block = original.clone();
        assert!(lioness.encrypt(&mut block));
        assert_ne!(block, original);
        assert!(lioness.decrypt(&mut block));
        assert_eq!(block, original);
        let mut short = [0u8; 32];
        assert!(!lioness.encrypt(&mut short));
        assert!(!lioness.decrypt(&mut short));
    }

    #[test]
    fn a_group_decrypts_as_each_block_alone() {
        let keys: Vec<[u8; LIONESS_KEY_LEN]> = (0..4u8)
            .map(|i| core::array::from_fn(|j| (j as u8).wrapping_mul(31) ^ i))
            .collect();
        for lengths in [
            &[33usize][..],
            &[33, 1420],
            &[100, 1420, 33],
            &[1420; 4],
            &[33, 32, 1420],
        ] {
            let originals: Vec<Vec<u8>> = lengths
                .iter()
                .enumerate()
                .map(|(i, &n)| (0..n).map(|j| (j * 7 + i) as u8).collect())
                .collect();
            let expected: Vec<Vec<u8>> = originals
                .iter()
                .zip(&keys)
                .map(|(o, k)| {
                    let mut b = o.clone();
                    Lioness::new(k).decrypt(&mut b);
                    b
                })
                .collect();
            let mut blocks = originals.clone();
            let mut slices: Vec<&mut [u8]> = blocks.iter_mut().map(|b| b.as_mut_slice()).collect();
            let key_refs: Vec<&[u8; LIONESS_KEY_LEN]> = keys.iter().take(lengths.len()).collect();
            lioness_decrypt_group(&key_refs, &mut slices);
            assert_eq!(blocks, expected, "lengths {lengths:?}");
        }
    }
}
