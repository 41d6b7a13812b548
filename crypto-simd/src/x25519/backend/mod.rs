//! The backends: `serial` is the reference, `avx2` and `ifma` the vector paths.

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod ifma;
pub(crate) mod serial;
