//! The AVX-512 IFMA backend: eight X25519 ladders at once, one per 64-bit lane of a 512-bit
//! register, in radix 2^51 with the 52-bit multiply-add instructions `vpmadd52luq` and
//! `vpmadd52huq`.
//!
//! A field element is five vectors, limb `i` of the eight lanes in vector `i`. Between
//! operations every limb is below 2^52 (what the 52-bit multipliers read), which each
//! operation restores with one parallel carry pass. Constant time: the per-lane swaps of
//! the ladder are mask blends, and the scalar bits only ever become masks.

#![allow(unsafe_code)]

use core::arch::x86_64::{
    __m512i, __mmask8, _mm512_add_epi64, _mm512_and_si512, _mm512_loadu_si512,
    _mm512_madd52hi_epu64, _mm512_madd52lo_epu64, _mm512_mask_blend_epi64, _mm512_set1_epi64,
    _mm512_setzero_si512, _mm512_slli_epi64, _mm512_srli_epi64, _mm512_srlv_epi64,
    _mm512_storeu_si512, _mm512_sub_epi64, _mm512_test_epi64_mask,
};

use super::serial::{A24, Fe, clamp};

const LANES: usize = 8;
const MASK51: u64 = (1 << 51) - 1;

/// Eight field elements, limb-sliced.
#[derive(Clone, Copy)]
struct F8([__m512i; 5]);

#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn splat(x: u64) -> __m512i {
    _mm512_set1_epi64(x as i64)
}

#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn add64(a: __m512i, b: __m512i) -> __m512i {
    _mm512_add_epi64(a, b)
}

/// 19 * x as (x << 4) + (x << 1) + x, for x below 2^59.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn times19(x: __m512i) -> __m512i {
    add64(
        add64(_mm512_slli_epi64::<4>(x), _mm512_slli_epi64::<1>(x)),
        x,
    )
}

#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn load(lanes: &[u64; LANES]) -> __m512i {
    // SAFETY: reads 64 bytes from a [u64; 8]; unaligned loads are allowed.
    unsafe { _mm512_loadu_si512(lanes.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn store(v: __m512i) -> [u64; LANES] {
    let mut out = [0u64; LANES];
    // SAFETY: writes 64 bytes into a [u64; 8]; unaligned stores are allowed.
    unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), v) };
    out
}

impl F8 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn splat_fe(fe: &Fe) -> F8 {
        F8(fe.0.map(|l| splat(l)))
    }

    /// Limb-slices eight serial field elements.
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn from_lanes(fes: &[Fe; LANES]) -> F8 {
        let mut limbs = [[0u64; LANES]; 5];
        for (lane, fe) in fes.iter().enumerate() {
            for (limb, value) in limbs.iter_mut().zip(fe.0) {
                limb[lane] = value;
            }
        }
        F8(limbs.map(|l| load(&l)))
    }

    /// Back to eight serial field elements (limbs below 2^52, which `Fe` accepts).
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn to_lanes(self) -> [Fe; LANES] {
        let limbs = self.0.map(|v| store(v));
        core::array::from_fn(|lane| Fe(core::array::from_fn(|i| limbs[i][lane])))
    }

    /// One parallel carry pass over limbs below 2^63: afterwards every limb is below
    /// 2^51 + 19 * 2^12.
    #[inline]
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn carry(x: [__m512i; 5]) -> F8 {
        let mask = splat(MASK51);
        let c = x.map(|v| _mm512_srli_epi64::<51>(v));
        let low = x.map(|v| _mm512_and_si512(v, mask));
        F8([
            add64(low[0], times19(c[4])),
            add64(low[1], c[0]),
            add64(low[2], c[1]),
            add64(low[3], c[2]),
            add64(low[4], c[3]),
        ])
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn add(self, rhs: F8) -> F8 {
        let (a, b) = (self.0, rhs.0);
        F8::carry(core::array::from_fn(|i| add64(a[i], b[i])))
    }

    /// self + 2p - rhs: no limb underflows, since limbs are below 2^52 - 38.
    #[inline]
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn sub(self, rhs: F8) -> F8 {
        let (a, b) = (self.0, rhs.0);
        let p2_0 = splat(2 * ((1 << 51) - 19));
        let p2_n = splat(2 * ((1 << 51) - 1));
        F8::carry(core::array::from_fn(|i| {
            let p2 = if i == 0 { p2_0 } else { p2_n };
            _mm512_sub_epi64(add64(a[i], p2), b[i])
        }))
    }

    /// Folds the ten column sums z_0..z_9 (each below 2^57) of a product: 2^255 = 19 mod p.
    #[inline]
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn reduce_columns(z: [__m512i; 10]) -> F8 {
        F8::carry(core::array::from_fn(|k| add64(z[k], times19(z[k + 5]))))
    }

    /// self * rhs. Each 104-bit partial product a_i * b_j splits into lo (52 bits, weight
    /// 2^(51 (i+j))) and hi (weight 2^(51 (i+j) + 52) = 2 * 2^(51 (i+j+1))), so column k
    /// sums the lo parts of i + j = k and twice the hi parts of i + j = k - 1.
    #[inline]
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn mul(self, rhs: F8) -> F8 {
        let (a, b) = (self.0, rhs.0);
        let zero = _mm512_setzero_si512();
        let mut lo = [zero; 9];
        let mut hi = [zero; 9];
        for i in 0..5 {
            for j in 0..5 {
                lo[i + j] = _mm512_madd52lo_epu64(lo[i + j], a[i], b[j]);
                hi[i + j] = _mm512_madd52hi_epu64(hi[i + j], a[i], b[j]);
            }
        }
        F8::reduce_columns(core::array::from_fn(|k| {
            let l = if k < 9 { lo[k] } else { zero };
            let h = if k > 0 {
                _mm512_slli_epi64::<1>(hi[k - 1])
            } else {
                zero
            };
            add64(l, h)
        }))
    }

    /// self^2, with each cross product a_i a_j (i < j) computed once and counted twice:
    /// column k = diag lo + 2 (cross lo + diag hi of k - 1) + 4 (cross hi of k - 1).
    #[inline]
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn square(self) -> F8 {
        let a = self.0;
        let zero = _mm512_setzero_si512();
        let mut ones = [zero; 10]; // weight 1
        let mut twos = [zero; 10]; // weight 2
        let mut fours = [zero; 10]; // weight 4
        for i in 0..5 {
            ones[2 * i] = _mm512_madd52lo_epu64(ones[2 * i], a[i], a[i]);
            twos[2 * i + 1] = _mm512_madd52hi_epu64(twos[2 * i + 1], a[i], a[i]);
            for j in i + 1..5 {
                twos[i + j] = _mm512_madd52lo_epu64(twos[i + j], a[i], a[j]);
                fours[i + j + 1] = _mm512_madd52hi_epu64(fours[i + j + 1], a[i], a[j]);
            }
        }
        F8::reduce_columns(core::array::from_fn(|k| {
            add64(
                ones[k],
                add64(
                    _mm512_slli_epi64::<1>(twos[k]),
                    _mm512_slli_epi64::<2>(fours[k]),
                ),
            )
        }))
    }

    /// self * a24, left uncarried (limbs below 2^52 + 2^18 + 19 * 2^18): only ever added to
    /// a carried element before use.
    #[inline]
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn mul_a24_uncarried(self) -> [__m512i; 5] {
        let a = self.0;
        let k = splat(u64::from(A24));
        let zero = _mm512_setzero_si512();
        let lo = a.map(|x| _mm512_madd52lo_epu64(zero, x, k));
        let hi = a.map(|x| _mm512_slli_epi64::<1>(_mm512_madd52hi_epu64(zero, x, k)));
        [
            add64(lo[0], times19(hi[4])),
            add64(lo[1], hi[0]),
            add64(lo[2], hi[1]),
            add64(lo[3], hi[2]),
            add64(lo[4], hi[3]),
        ]
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn add_uncarried(self, rhs: [__m512i; 5]) -> F8 {
        let a = self.0;
        F8::carry(core::array::from_fn(|i| add64(a[i], rhs[i])))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn square_times(self, n: u32) -> F8 {
        let mut x = self;
        for _ in 0..n {
            x = x.square();
        }
        x
    }

    /// self^(p - 2), the chain of [`Fe::invert`].
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn invert(self) -> F8 {
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

    /// Swaps lane by lane where `mask` has a bit set.
    #[inline]
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn conditional_swap(a: &mut F8, b: &mut F8, mask: __mmask8) {
        for (x, y) in a.0.iter_mut().zip(b.0.iter_mut()) {
            let new_x = _mm512_mask_blend_epi64(mask, *x, *y);
            let new_y = _mm512_mask_blend_epi64(mask, *y, *x);
            *x = new_x;
            *y = new_y;
        }
    }
}

/// Eight ladders, RFC 7748 section 5, lane by lane.
#[target_feature(enable = "avx512f,avx512ifma")]
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

    let x1 = F8::from_lanes(&points.each_ref().map(Fe::from_bytes));
    let mut x2 = F8::splat_fe(&Fe::ONE);
    let mut z2 = F8::splat_fe(&Fe::ZERO);
    let mut x3 = x1;
    let mut z3 = F8::splat_fe(&Fe::ONE);
    let mut swap: __mmask8 = 0;
    for t in (0..255).rev() {
        // bit t of every lane's scalar, as a mask; t is public, the bits are not
        let shifted = _mm512_srlv_epi64(words[t / 64], splat((t % 64) as u64));
        let bit: __mmask8 = _mm512_test_epi64_mask(shifted, one);
        F8::conditional_swap(&mut x2, &mut x3, swap ^ bit);
        F8::conditional_swap(&mut z2, &mut z3, swap ^ bit);
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
        z2 = e.mul(aa.add_uncarried(e.mul_a24_uncarried()));
    }
    F8::conditional_swap(&mut x2, &mut x3, swap);
    F8::conditional_swap(&mut z2, &mut z3, swap);
    let result = x2.mul(z2.invert()).to_lanes();
    result.map(Fe::to_bytes)
}

/// The batch, eight lanes at a time.
///
/// # Safety
///
/// The CPU must support AVX-512F and AVX-512 IFMA.
#[target_feature(enable = "avx512f,avx512ifma")]
pub(crate) unsafe fn x25519_batch(scalars: &[[u8; 32]], points: &[[u8; 32]], out: &mut [[u8; 32]]) {
    super::in_groups::<LANES>(scalars, points, out, |k, u| ladder(k, u));
}
