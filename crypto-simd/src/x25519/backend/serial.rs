//! The portable backend, and the reference every vector backend is tested against: one
//! ladder at a time over GF(2^255 - 19) in radix 2^51 (five 64-bit limbs, products in
//! `u128`). Constant time: the ladder's swaps are masks, never branches, and no memory
//! index depends on the scalar.

use core::hint::black_box;

const MASK51: u64 = (1 << 51) - 1;

/// A field element in radix 2^51. Limbs stay below 2^54 between operations, which is what
/// [`Fe::mul`] and [`Fe::square`] accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fe(pub(crate) [u64; 5]);

impl Fe {
    pub(crate) const ZERO: Fe = Fe([0; 5]);
    pub(crate) const ONE: Fe = Fe([1, 0, 0, 0, 0]);

    /// Reads 32 little-endian bytes, ignoring bit 255 (RFC 7748, section 5). The value may
    /// be up to 2^255 - 1, i.e. not reduced; arithmetic does not mind.
    pub(crate) fn from_bytes(bytes: &[u8; 32]) -> Fe {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(w)
        };
        Fe([
            word(0) & MASK51,
            (word(6) >> 3) & MASK51,
            (word(12) >> 6) & MASK51,
            (word(19) >> 1) & MASK51,
            (word(24) >> 12) & MASK51,
        ])
    }

    /// The canonical 32-byte encoding (fully reduced modulo p).
    pub(crate) fn to_bytes(self) -> [u8; 32] {
        let mut l = self.carried().0;
        // l < 2^255 + small: subtract p if l >= p, by computing l + 19 and looking at bit 255
        let mut q = (l[0] + 19) >> 51;
        q = (l[1] + q) >> 51;
        q = (l[2] + q) >> 51;
        q = (l[3] + q) >> 51;
        q = (l[4] + q) >> 51;
        l[0] += 19 * q;
        l[1] += l[0] >> 51;
        l[0] &= MASK51;
        l[2] += l[1] >> 51;
        l[1] &= MASK51;
        l[3] += l[2] >> 51;
        l[2] &= MASK51;
        l[4] += l[3] >> 51;
        l[3] &= MASK51;
        l[4] &= MASK51;

        let mut out = [0u8; 32];
        let words = [
            l[0] | (l[1] << 51),
            (l[1] >> 13) | (l[2] << 38),
            (l[2] >> 26) | (l[3] << 25),
            (l[3] >> 39) | (l[4] << 12),
        ];
        for (chunk, w) in out.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// One carry pass: limbs below 2^51 + 2^13 afterwards.
    fn carried(self) -> Fe {
        let mut l = self.0;
        let c0 = l[0] >> 51;
        let c1 = l[1] >> 51;
        let c2 = l[2] >> 51;
        let c3 = l[3] >> 51;
        let c4 = l[4] >> 51;
        l[0] = (l[0] & MASK51) + c4 * 19;
        l[1] = (l[1] & MASK51) + c0;
        l[2] = (l[2] & MASK51) + c1;
        l[3] = (l[3] & MASK51) + c2;
        l[4] = (l[4] & MASK51) + c3;
        Fe(l)
    }

    pub(crate) fn add(self, rhs: Fe) -> Fe {
        let (a, b) = (self.0, rhs.0);
        Fe([
            a[0] + b[0],
            a[1] + b[1],
            a[2] + b[2],
            a[3] + b[3],
            a[4] + b[4],
        ])
        .carried()
    }

    /// self - rhs, computed as self + 16p - rhs so no limb underflows (inputs below 2^54).
    pub(crate) fn sub(self, rhs: Fe) -> Fe {
        const P16_0: u64 = 16 * ((1 << 51) - 19);
        const P16_N: u64 = 16 * ((1 << 51) - 1);
        let (a, b) = (self.0, rhs.0);
        Fe([
            (a[0] + P16_0) - b[0],
            (a[1] + P16_N) - b[1],
            (a[2] + P16_N) - b[2],
            (a[3] + P16_N) - b[3],
            (a[4] + P16_N) - b[4],
        ])
        .carried()
    }

    pub(crate) fn mul(self, rhs: Fe) -> Fe {
        let m = |x: u64, y: u64| u128::from(x) * u128::from(y);
        let (a, b) = (self.0, rhs.0);
        let b1 = b[1] * 19;
        let b2 = b[2] * 19;
        let b3 = b[3] * 19;
        let b4 = b[4] * 19;
        let c0 = m(a[0], b[0]) + m(a[4], b1) + m(a[3], b2) + m(a[2], b3) + m(a[1], b4);
        let c1 = m(a[1], b[0]) + m(a[0], b[1]) + m(a[4], b2) + m(a[3], b3) + m(a[2], b4);
        let c2 = m(a[2], b[0]) + m(a[1], b[1]) + m(a[0], b[2]) + m(a[4], b3) + m(a[3], b4);
        let c3 = m(a[3], b[0]) + m(a[2], b[1]) + m(a[1], b[2]) + m(a[0], b[3]) + m(a[4], b4);
        let c4 = m(a[4], b[0]) + m(a[3], b[1]) + m(a[2], b[2]) + m(a[1], b[3]) + m(a[0], b[4]);
        reduce_wide([c0, c1, c2, c3, c4])
    }

    pub(crate) fn square(self) -> Fe {
        self.mul(self)
    }

    /// self * k for a small constant k (below 2^20).
    pub(crate) fn mul_small(self, k: u32) -> Fe {
        let k = u128::from(k);
        let a = self.0;
        reduce_wide([
            u128::from(a[0]) * k,
            u128::from(a[1]) * k,
            u128::from(a[2]) * k,
            u128::from(a[3]) * k,
            u128::from(a[4]) * k,
        ])
    }

    /// self^(2^n).
    fn square_times(self, n: u32) -> Fe {
        let mut x = self;
        for _ in 0..n {
            x = x.square();
        }
        x
    }

    /// self^(p - 2) = 1/self (0 for 0), by the usual addition chain of 254 squarings and 11
    /// multiplications.
    pub(crate) fn invert(self) -> Fe {
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

    /// Swaps `a` and `b` when `mask` is all ones, leaves them when it is zero.
    fn conditional_swap(a: &mut Fe, b: &mut Fe, mask: u64) {
        for (x, y) in a.0.iter_mut().zip(b.0.iter_mut()) {
            let t = mask & (*x ^ *y);
            *x ^= t;
            *y ^= t;
        }
    }
}

/// Carries five 128-bit column sums into a field element with limbs below 2^52.
fn reduce_wide(c: [u128; 5]) -> Fe {
    let mut c = c;
    c[1] += c[0] >> 51;
    c[2] += c[1] >> 51;
    c[3] += c[2] >> 51;
    c[4] += c[3] >> 51;
    let top = (c[4] >> 51) as u64;
    let mut l = [
        (c[0] as u64) & MASK51,
        (c[1] as u64) & MASK51,
        (c[2] as u64) & MASK51,
        (c[3] as u64) & MASK51,
        (c[4] as u64) & MASK51,
    ];
    // c[4] holds no factor 19 (below 2^107 for inputs below 2^52), so top < 2^56 and
    // 19 * top fits in a u64
    l[0] += top * 19;
    l[1] += l[0] >> 51;
    l[0] &= MASK51;
    Fe(l)
}

/// RFC 7748's a24 = (486662 - 2) / 4, used as z2 = E * (AA + a24 * E).
pub(crate) const A24: u32 = 121_665;

/// Clamps a scalar as RFC 7748 says: clear bits 0, 1, 2 and 255, set bit 254.
pub(crate) fn clamp(scalar: &[u8; 32]) -> [u8; 32] {
    let mut k = *scalar;
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    k
}

/// X25519(k, u) by the Montgomery ladder of RFC 7748, section 5.
pub(crate) fn x25519(scalar: &[u8; 32], u: &[u8; 32]) -> [u8; 32] {
    let k = clamp(scalar);
    let x1 = Fe::from_bytes(u);
    let mut x2 = Fe::ONE;
    let mut z2 = Fe::ZERO;
    let mut x3 = x1;
    let mut z3 = Fe::ONE;
    let mut swap = 0u64;
    for t in (0..255).rev() {
        let bit = u64::from((k[t / 8] >> (t % 8)) & 1);
        let mask = black_box(0u64.wrapping_sub(swap ^ bit));
        Fe::conditional_swap(&mut x2, &mut x3, mask);
        Fe::conditional_swap(&mut z2, &mut z3, mask);
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
        z2 = e.mul(aa.add(e.mul_small(A24)));
    }
    let mask = black_box(0u64.wrapping_sub(swap));
    Fe::conditional_swap(&mut x2, &mut x3, mask);
    Fe::conditional_swap(&mut z2, &mut z3, mask);
    x2.mul(z2.invert()).to_bytes()
}

/// The portable batch: one ladder after another.
pub(crate) fn x25519_batch(scalars: &[[u8; 32]], points: &[[u8; 32]], out: &mut [[u8; 32]]) {
    for ((k, u), o) in scalars.iter().zip(points).zip(out.iter_mut()) {
        *o = x25519(k, u);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_and_reduces() {
        let mut p_minus_1 = [0xffu8; 32];
        p_minus_1[0] = 0xec;
        p_minus_1[31] = 0x7f;
        assert_eq!(Fe::from_bytes(&p_minus_1).to_bytes(), p_minus_1);
        // p encodes zero, p + 1 encodes one
        let mut p = p_minus_1;
        p[0] = 0xed;
        assert_eq!(Fe::from_bytes(&p).to_bytes(), [0u8; 32]);
        p[0] = 0xee;
        assert_eq!(Fe::from_bytes(&p).to_bytes(), Fe::ONE.to_bytes());
    }

    #[test]
    fn inversion_inverts() {
        let x = Fe::from_bytes(&[0x5a; 32]);
        assert_eq!(x.mul(x.invert()).to_bytes(), Fe::ONE.to_bytes());
        assert_eq!(Fe::ZERO.invert().to_bytes(), [0u8; 32]);
    }
}
