//! The backends: `serial` is the reference, `avx2` and `ifma` the vector paths.

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod ifma;
pub(crate) mod serial;

/// Runs a `N`-lane `ladder` over a batch of any length, `N` pairs at a time; the last group
/// is padded with dummy lanes (scalar 0, u = 9) whose results are dropped, so the work depends
/// on the batch length only. The slices have equal lengths (checked by the caller).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn in_groups<const N: usize>(
    scalars: &[[u8; 32]],
    points: &[[u8; 32]],
    out: &mut [[u8; 32]],
    mut ladder: impl FnMut(&[[u8; 32]; N], &[[u8; 32]; N]) -> [[u8; 32]; N],
) {
    let mut dummy_point = [0u8; 32];
    dummy_point[0] = 9;
    for ((k, u), o) in scalars
        .chunks(N)
        .zip(points.chunks(N))
        .zip(out.chunks_mut(N))
    {
        let mut ks = [[0u8; 32]; N];
        let mut us = [dummy_point; N];
        ks[..k.len()].copy_from_slice(k);
        us[..u.len()].copy_from_slice(u);
        let results = ladder(&ks, &us);
        let n = o.len();
        o.copy_from_slice(&results[..n]);
    }
}
