//! The AVX2 backend: four X25519 ladders at once, one per 64-bit lane of a 256-bit register,
//! in radix 2^25.5 (ten limbs of alternately 26 and 25 bits) with the 32 x 32 -> 64-bit
//! multiplier `vpmuludq`.
//!
//! A field element is ten vectors, limb `i` of the four lanes in vector `i`; limb `i` sits at
//! bit `ceil(25.5 i)`. Carried limbs are below 2^26 (even) and 2^25 (odd) plus a little;
//! sums and differences of carried limbs stay below 3 * 2^26, which the multiplier's bounds
//! below allow, so only products are carried. Constant time: the ladder's per-lane swaps are
//! masks, never branches.

#![allow(unsafe_code)]

use core::arch::x86_64::{
    __m256i, _mm256_add_epi64, _mm256_and_si256, _mm256_loadu_si256, _mm256_mul_epu32,
    _mm256_set1_epi64x, _mm256_slli_epi64, _mm256_srli_epi64, _mm256_srlv_epi64,
    _mm256_storeu_si256, _mm256_sub_epi64, _mm256_xor_si256,
};

use super::serial::{A24, Fe, clamp};

const LANES: usize = 4;
const MASK26: u64 = (1 << 26) - 1;
const MASK25: u64 = (1 << 25) - 1;

/// Four field elements, limb-sliced, radix 2^25.5.
#[derive(Clone, Copy)]
struct F4([__m256i; 10]);

#[inline]
#[target_feature(enable = "avx2")]
fn splat(x: u64) -> __m256i {
    _mm256_set1_epi64x(x as i64)
}

#[inline]
#[target_feature(enable = "avx2")]
fn add64(a: __m256i, b: __m256i) -> __m256i {
    _mm256_add_epi64(a, b)
}

/// The sum of a column's terms.
#[inline]
#[target_feature(enable = "avx2")]
fn sum(terms: &[__m256i]) -> __m256i {
    terms.iter().fold(splat(0), |acc, &t| add64(acc, t))
}

/// The low 32 bits of each lane of `a` times those of `b`, as 64-bit lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn mul32(a: __m256i, b: __m256i) -> __m256i {
    _mm256_mul_epu32(a, b)
}

#[inline]
#[target_feature(enable = "avx2")]
fn load(lanes: &[u64; LANES]) -> __m256i {
    // SAFETY: reads 32 bytes from a [u64; 4]; unaligned loads are allowed.
    unsafe { _mm256_loadu_si256(lanes.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn store(v: __m256i) -> [u64; LANES] {
    let mut out = [0u64; LANES];
    // SAFETY: writes 32 bytes into a [u64; 4]; unaligned stores are allowed.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) };
    out
}

impl F4 {
    /// Four serial elements (limbs below 2^51) in radix 2^25.5: serial limb k holds limbs 2k
    /// (26 bits) and 2k + 1 (25 bits), since bit 51 k is where limb 2k starts.
    #[target_feature(enable = "avx2")]
    fn from_lanes(fes: &[Fe; LANES]) -> F4 {
        let mut limbs = [[0u64; LANES]; 10];
        for (lane, fe) in fes.iter().enumerate() {
            for (k, value) in fe.0.iter().enumerate() {
                limbs[2 * k][lane] = value & MASK26;
                limbs[2 * k + 1][lane] = value >> 26;
            }
        }
        F4(limbs.map(|l| load(&l)))
    }

    #[target_feature(enable = "avx2")]
    fn splat_fe(fe: &Fe) -> F4 {
        let limbs: [u64; 10] = core::array::from_fn(|i| {
            if i % 2 == 0 {
                fe.0[i / 2] & MASK26
            } else {
                fe.0[i / 2] >> 26
            }
        });
        F4(limbs.map(|l| splat(l)))
    }

    /// Back to serial elements: limbs below 2^52, which `Fe` accepts.
    #[target_feature(enable = "avx2")]
    fn to_lanes(self) -> [Fe; LANES] {
        let limbs = self.0.map(|v| store(v));
        core::array::from_fn(|lane| {
            Fe(core::array::from_fn(|k| {
                limbs[2 * k][lane] + (limbs[2 * k + 1][lane] << 26)
            }))
        })
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn add(self, rhs: F4) -> F4 {
        F4(core::array::from_fn(|i| add64(self.0[i], rhs.0[i])))
    }

    /// self + 2p - rhs, for carried inputs: no limb underflows, and every limb stays below
    /// 3 * 2^26 (even) or 3 * 2^25 (odd).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn sub(self, rhs: F4) -> F4 {
        let p2_0 = splat(2 * ((1 << 26) - 19));
        let p2_even = splat(2 * MASK26);
        let p2_odd = splat(2 * MASK25);
        F4(core::array::from_fn(|i| {
            let p2 = match i {
                0 => p2_0,
                _ if i % 2 == 0 => p2_even,
                _ => p2_odd,
            };
            _mm256_sub_epi64(add64(self.0[i], p2), rhs.0[i])
        }))
    }

    /// Carries ten column sums (each below 2^63) into limbs of 26 and 25 bits, in two
    /// interleaved chains as ref10 does: afterwards limbs 1 and 5 may exceed their width by
    /// a few bits (below 2^25 + 2^17), every other limb is within it.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn carry(h: [__m256i; 10]) -> F4 {
        let [
            mut h0,
            mut h1,
            mut h2,
            mut h3,
            mut h4,
            mut h5,
            mut h6,
            mut h7,
            mut h8,
            mut h9,
        ] = h;
        let m26 = splat(MASK26);
        let m25 = splat(MASK25);
        // moves the bits of `$from` above `$bits` into `$to`
        macro_rules! carry {
            ($from:ident -> $to:ident, $bits:literal, $mask:ident) => {
                let c = _mm256_srli_epi64::<$bits>($from);
                $from = _mm256_and_si256($from, $mask);
                $to = add64($to, c);
            };
        }
        carry!(h0 -> h1, 26, m26);
        carry!(h4 -> h5, 26, m26);
        carry!(h1 -> h2, 25, m25);
        carry!(h5 -> h6, 25, m25);
        carry!(h2 -> h3, 26, m26);
        carry!(h6 -> h7, 26, m26);
        carry!(h3 -> h4, 25, m25);
        carry!(h7 -> h8, 25, m25);
        carry!(h4 -> h5, 26, m26);
        carry!(h8 -> h9, 26, m26);
        // 2^255 = 19 mod p
        let c = _mm256_srli_epi64::<25>(h9);
        h9 = _mm256_and_si256(h9, m25);
        let c19 = add64(
            add64(_mm256_slli_epi64::<4>(c), _mm256_slli_epi64::<1>(c)),
            c,
        );
        h0 = add64(h0, c19);
        carry!(h0 -> h1, 26, m26);
        F4([h0, h1, h2, h3, h4, h5, h6, h7, h8, h9])
    }

    /// self * rhs, schoolbook over ten limbs: a product f_i g_j lands in column i + j, twice
    /// over when i and j are both odd (25.5-bit radix), and times 19 when i + j >= 10. The
    /// columns are written out (generated, one line per column) so that every index is a
    /// constant.
    ///
    /// Bounds: even limbs below 3 * 2^26 and odd below 3 * 2^25, so 2 f_i (odd i) and
    /// 19 g_j fit 32 bits; each term is below 2^59.5, each column of ten below 2^63.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn mul(self, rhs: F4) -> F4 {
        let f = self.0;
        let g = rhs.0;
        let f2: [__m256i; 10] =
            core::array::from_fn(|i| if i % 2 == 1 { add64(f[i], f[i]) } else { f[i] });
        let nineteen = splat(19);
        let g19: [__m256i; 10] = core::array::from_fn(|j| mul32(g[j], nineteen));
        let m = |a, b| mul32(a, b);
        F4::carry([
            sum(&[
                m(f[0], g[0]),
                m(f2[1], g19[9]),
                m(f[2], g19[8]),
                m(f2[3], g19[7]),
                m(f[4], g19[6]),
                m(f2[5], g19[5]),
                m(f[6], g19[4]),
                m(f2[7], g19[3]),
                m(f[8], g19[2]),
                m(f2[9], g19[1]),
            ]),
            sum(&[
                m(f[0], g[1]),
                m(f[1], g[0]),
                m(f[2], g19[9]),
                m(f[3], g19[8]),
                m(f[4], g19[7]),
                m(f[5], g19[6]),
                m(f[6], g19[5]),
                m(f[7], g19[4]),
                m(f[8], g19[3]),
                m(f[9], g19[2]),
            ]),
            sum(&[
                m(f[0], g[2]),
                m(f2[1], g[1]),
                m(f[2], g[0]),
                m(f2[3], g19[9]),
                m(f[4], g19[8]),
                m(f2[5], g19[7]),
                m(f[6], g19[6]),
                m(f2[7], g19[5]),
                m(f[8], g19[4]),
                m(f2[9], g19[3]),
            ]),
            sum(&[
                m(f[0], g[3]),
                m(f[1], g[2]),
                m(f[2], g[1]),
                m(f[3], g[0]),
                m(f[4], g19[9]),
                m(f[5], g19[8]),
                m(f[6], g19[7]),
                m(f[7], g19[6]),
                m(f[8], g19[5]),
                m(f[9], g19[4]),
            ]),
            sum(&[
                m(f[0], g[4]),
                m(f2[1], g[3]),
                m(f[2], g[2]),
                m(f2[3], g[1]),
                m(f[4], g[0]),
                m(f2[5], g19[9]),
                m(f[6], g19[8]),
                m(f2[7], g19[7]),
                m(f[8], g19[6]),
                m(f2[9], g19[5]),
            ]),
            sum(&[
                m(f[0], g[5]),
                m(f[1], g[4]),
                m(f[2], g[3]),
                m(f[3], g[2]),
                m(f[4], g[1]),
                m(f[5], g[0]),
                m(f[6], g19[9]),
                m(f[7], g19[8]),
                m(f[8], g19[7]),
                m(f[9], g19[6]),
            ]),
            sum(&[
                m(f[0], g[6]),
                m(f2[1], g[5]),
                m(f[2], g[4]),
                m(f2[3], g[3]),
                m(f[4], g[2]),
                m(f2[5], g[1]),
                m(f[6], g[0]),
                m(f2[7], g19[9]),
                m(f[8], g19[8]),
                m(f2[9], g19[7]),
            ]),
            sum(&[
                m(f[0], g[7]),
                m(f[1], g[6]),
                m(f[2], g[5]),
                m(f[3], g[4]),
                m(f[4], g[3]),
                m(f[5], g[2]),
                m(f[6], g[1]),
                m(f[7], g[0]),
                m(f[8], g19[9]),
                m(f[9], g19[8]),
            ]),
            sum(&[
                m(f[0], g[8]),
                m(f2[1], g[7]),
                m(f[2], g[6]),
                m(f2[3], g[5]),
                m(f[4], g[4]),
                m(f2[5], g[3]),
                m(f[6], g[2]),
                m(f2[7], g[1]),
                m(f[8], g[0]),
                m(f2[9], g19[9]),
            ]),
            sum(&[
                m(f[0], g[9]),
                m(f[1], g[8]),
                m(f[2], g[7]),
                m(f[3], g[6]),
                m(f[4], g[5]),
                m(f[5], g[4]),
                m(f[6], g[3]),
                m(f[7], g[2]),
                m(f[8], g[1]),
                m(f[9], g[0]),
            ]),
        ])
    }

    /// self^2: each cross product f_i f_j (i < j) computed once with its factor 2 folded
    /// into the left operand (4 when both are odd), 55 products instead of 100. Bounds as
    /// for [`F4::mul`]: 4 f_i (odd i) and 19 f_j fit 32 bits, each column (at most six
    /// terms) stays below 2^63.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn square(self) -> F4 {
        let f = self.0;
        let f2: [__m256i; 10] = core::array::from_fn(|i| add64(f[i], f[i]));
        let f4: [__m256i; 10] = core::array::from_fn(|i| add64(f2[i], f2[i]));
        let nineteen = splat(19);
        let f19: [__m256i; 10] = core::array::from_fn(|j| mul32(f[j], nineteen));
        let m = |a, b| mul32(a, b);
        F4::carry([
            sum(&[
                m(f[0], f[0]),
                m(f4[1], f19[9]),
                m(f2[2], f19[8]),
                m(f4[3], f19[7]),
                m(f2[4], f19[6]),
                m(f2[5], f19[5]),
            ]),
            sum(&[
                m(f2[0], f[1]),
                m(f2[2], f19[9]),
                m(f2[3], f19[8]),
                m(f2[4], f19[7]),
                m(f2[5], f19[6]),
            ]),
            sum(&[
                m(f2[0], f[2]),
                m(f2[1], f[1]),
                m(f4[3], f19[9]),
                m(f2[4], f19[8]),
                m(f4[5], f19[7]),
                m(f[6], f19[6]),
            ]),
            sum(&[
                m(f2[0], f[3]),
                m(f2[1], f[2]),
                m(f2[4], f19[9]),
                m(f2[5], f19[8]),
                m(f2[6], f19[7]),
            ]),
            sum(&[
                m(f2[0], f[4]),
                m(f4[1], f[3]),
                m(f[2], f[2]),
                m(f4[5], f19[9]),
                m(f2[6], f19[8]),
                m(f2[7], f19[7]),
            ]),
            sum(&[
                m(f2[0], f[5]),
                m(f2[1], f[4]),
                m(f2[2], f[3]),
                m(f2[6], f19[9]),
                m(f2[7], f19[8]),
            ]),
            sum(&[
                m(f2[0], f[6]),
                m(f4[1], f[5]),
                m(f2[2], f[4]),
                m(f2[3], f[3]),
                m(f4[7], f19[9]),
                m(f[8], f19[8]),
            ]),
            sum(&[
                m(f2[0], f[7]),
                m(f2[1], f[6]),
                m(f2[2], f[5]),
                m(f2[3], f[4]),
                m(f2[8], f19[9]),
            ]),
            sum(&[
                m(f2[0], f[8]),
                m(f4[1], f[7]),
                m(f2[2], f[6]),
                m(f4[3], f[5]),
                m(f[4], f[4]),
                m(f2[9], f19[9]),
            ]),
            sum(&[
                m(f2[0], f[9]),
                m(f2[1], f[8]),
                m(f2[2], f[7]),
                m(f2[3], f[6]),
                m(f2[4], f[5]),
            ]),
        ])
    }

    /// self * a24 (a24 < 2^17), carried.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn mul_a24(self) -> F4 {
        let k = splat(u64::from(A24));
        F4::carry(self.0.map(|x| mul32(x, k)))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn square_times(self, n: u32) -> F4 {
        let mut x = self;
        for _ in 0..n {
            x = x.square();
        }
        x
    }

    /// self^(p - 2), the chain of [`Fe::invert`].
    #[target_feature(enable = "avx2")]
    fn invert(self) -> F4 {
        let z2 = self.square();
        let z9 = z2.square_times(2).mul(self);
        let z11 = z9.mul(z2);
        let z2_5_0 = z11.square().mul(z9);
        let z2_10_0 = z2_5_0.square_times(5).mul(z2_5_0);
        let z2_20_0 = z2_10_0.square_times(10).mul(z2_10_0);
        let z2_40_0 = z2_20_0.square_times(20).mul(z2_20_0);
        let z2_50_0 = z2_40_0.square_times(10).mul(z2_10_0);
        let z2_100_0 = z2_50_0.square_times(50).mul(z2_50_0);
        let z2_200_0 = z2_100_0.square_times(100).mul(z2_100_0);
        let z2_250_0 = z2_200_0.square_times(50).mul(z2_50_0);
        z2_250_0.square_times(5).mul(z11)
    }

    /// Swaps lane by lane where `mask` is all ones.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn conditional_swap(a: &mut F4, b: &mut F4, mask: __m256i) {
        for (x, y) in a.0.iter_mut().zip(b.0.iter_mut()) {
            let t = _mm256_and_si256(mask, _mm256_xor_si256(*x, *y));
            *x = _mm256_xor_si256(*x, t);
            *y = _mm256_xor_si256(*y, t);
        }
    }
}

/// Four ladders, RFC 7748 section 5, lane by lane.
#[target_feature(enable = "avx2")]
fn ladder(scalars: &[[u8; 32]; LANES], points: &[[u8; 32]; LANES]) -> [[u8; 32]; LANES] {
    let mut words = [[0u64; LANES]; 4];
    for (lane, k) in scalars.iter().enumerate() {
        let k = clamp(k);
        for (w, word) in words.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&k[8 * w..8 * w + 8]);
            word[lane] = u64::from_le_bytes(b);
        }
    }
    let words = words.map(|w| load(&w));
    let one = splat(1);
    let zero = splat(0);

    let x1 = F4::from_lanes(&points.each_ref().map(Fe::from_bytes));
    let mut x2 = F4::splat_fe(&Fe::ONE);
    let mut z2 = F4::splat_fe(&Fe::ZERO);
    let mut x3 = x1;
    let mut z3 = F4::splat_fe(&Fe::ONE);
    let mut swap = zero;
    for t in (0..255).rev() {
        // bit t of every lane's scalar (t is public, the bits are not), as 0 or all ones
        let bit = _mm256_and_si256(
            _mm256_srlv_epi64(words[t / 64], splat((t % 64) as u64)),
            one,
        );
        let mask = _mm256_sub_epi64(zero, _mm256_xor_si256(swap, bit));
        F4::conditional_swap(&mut x2, &mut x3, mask);
        F4::conditional_swap(&mut z2, &mut z3, mask);
        swap = bit;

        let a = x2.add(z2);
        let aa = a.square();
        let b = x2.sub(z2);
        let bb = b.square();
        let e = aa.sub(bb);
        let c = x3.add(z3);
        let d = x3.sub(z3);
        let da = d.mul(a);
        let cb = c.mul(b);
        x3 = da.add(cb).square();
        z3 = x1.mul(da.sub(cb).square());
        x2 = aa.mul(bb);
        z2 = e.mul(aa.add(e.mul_a24()));
    }
    let mask = _mm256_sub_epi64(zero, swap);
    F4::conditional_swap(&mut x2, &mut x3, mask);
    F4::conditional_swap(&mut z2, &mut z3, mask);
    let result = x2.mul(z2.invert()).to_lanes();
    result.map(Fe::to_bytes)
}

/// The batch, four lanes at a time.
///
/// # Safety
///
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn x25519_batch(scalars: &[[u8; 32]], points: &[[u8; 32]], out: &mut [[u8; 32]]) {
    super::in_groups::<LANES>(scalars, points, out, |k, u| ladder(k, u));
}
