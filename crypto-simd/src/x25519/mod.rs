//! Batched X25519: many independent `X25519(k_i, u_i)` in one call, across vector lanes.
//!
//! Per hop, a Sphinx unwrap is two X25519 ladders (the shared secret and the re-blinding of
//! alpha), over 90% of its cost. A relay core therefore unwraps a batch of packets at a
//! time and runs their ladders side by side, one packet per lane.
//!
//! Backends, with the same API and the same results (the layout follows curve25519-dalek:
//! `backend/serial` is the reference, `backend/{avx2,ifma}` the vector paths):
//!
//! | backend | lanes | needs |
//! |---|---|---|
//! | [`Backend::Portable`] | 1 | nothing (any target) |
//! | [`Backend::Avx2`] | 4 | x86-64 with AVX2 |
//! | [`Backend::Avx512Ifma`] | 8 | x86-64 with AVX-512F and AVX-512 IFMA |
//!
//! The CPU's features are detected once, on first use, and the best backend is taken; the
//! environment variable `MIXED_X25519_BACKEND` (`portable`, `avx2`, `avx512ifma`) forces
//! one, for tests and for comparison runs. Dispatch happens once per batch. Every backend
//! is constant time: no branch and no memory index depends on a scalar or a point.

mod backend;

use std::sync::OnceLock;

pub(crate) use backend::serial;

/// The environment variable that forces a backend.
pub const BACKEND_ENV: &str = "MIXED_X25519_BACKEND";

/// An X25519 implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// One ladder at a time in radix 2^51 (the reference).
    Portable,
    /// Four ladders at once in AVX2 registers, radix 2^25.5.
    Avx2,
    /// Eight ladders at once with AVX-512 IFMA's 52-bit multiply-add, radix 2^51.
    Avx512Ifma,
}

impl Backend {
    /// Every backend, the portable one first.
    pub const ALL: [Backend; 3] = [Backend::Portable, Backend::Avx2, Backend::Avx512Ifma];

    /// How many ladders one pass runs side by side.
    pub fn lanes(self) -> usize {
        match self {
            Backend::Portable => 1,
            Backend::Avx2 => 4,
            Backend::Avx512Ifma => 8,
        }
    }

    /// The name `MIXED_X25519_BACKEND` takes.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Portable => "portable",
            Backend::Avx2 => "avx2",
            Backend::Avx512Ifma => "avx512ifma",
        }
    }

    /// The backend a name stands for.
    pub fn from_name(name: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.name() == name)
    }

    /// Whether this CPU can run the backend.
    pub fn is_supported(self) -> bool {
        match self {
            Backend::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => std::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512Ifma => {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512ifma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The backends this CPU supports, the portable one first.
    pub fn supported() -> Vec<Backend> {
        Backend::ALL
            .into_iter()
            .filter(|b| b.is_supported())
            .collect()
    }

    /// The fastest backend this CPU supports.
    pub fn best() -> Backend {
        Backend::ALL
            .into_iter()
            .rev()
            .find(|b| b.is_supported())
            .unwrap_or(Backend::Portable)
    }
}

/// How the backend was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The best the CPU supports.
    Detected(Backend),
    /// Forced by `MIXED_X25519_BACKEND`.
    Forced(Backend),
    /// `MIXED_X25519_BACKEND` named a backend this CPU cannot run, or no backend at all; the
    /// best supported one was taken instead.
    ForcedUnavailable(Backend),
}

impl Selection {
    /// The backend in use.
    pub fn backend(self) -> Backend {
        match self {
            Selection::Detected(b) | Selection::Forced(b) | Selection::ForcedUnavailable(b) => b,
        }
    }
}

/// The backend batches run on, chosen once per process (see the module docs).
pub fn selection() -> Selection {
    static SELECTION: OnceLock<Selection> = OnceLock::new();
    *SELECTION.get_or_init(|| match std::env::var(BACKEND_ENV) {
        Err(_) => Selection::Detected(Backend::best()),
        Ok(name) => match Backend::from_name(name.trim()) {
            Some(b) if b.is_supported() => Selection::Forced(b),
            _ => Selection::ForcedUnavailable(Backend::best()),
        },
    })
}

/// The backend batches run on.
pub fn selected() -> Backend {
    selection().backend()
}

/// The lengths of a batch's inputs and output differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("batch length mismatch: scalars, points and outputs must have the same length")]
pub struct LengthMismatch;

/// `out[i] = X25519(scalars[i], points[i])` for every `i`, on the selected backend. Scalars
/// are clamped and bit 255 of each point ignored, as RFC 7748 says; a batch of any length
/// works.
pub fn x25519_batch(
    scalars: &[[u8; 32]],
    points: &[[u8; 32]],
    out: &mut [[u8; 32]],
) -> Result<(), LengthMismatch> {
    x25519_batch_on(selected(), scalars, points, out)
}

/// [`x25519_batch`] on a given backend; an unsupported one falls back to the portable
/// backend.
#[allow(unsafe_code)]
pub fn x25519_batch_on(
    backend: Backend,
    scalars: &[[u8; 32]],
    points: &[[u8; 32]],
    out: &mut [[u8; 32]],
) -> Result<(), LengthMismatch> {
    if scalars.len() != points.len() || points.len() != out.len() {
        return Err(LengthMismatch);
    }
    match backend {
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512Ifma if backend.is_supported() => {
            // SAFETY: the CPU supports AVX-512F and AVX-512 IFMA (checked just above).
            unsafe { backend::ifma::x25519_batch(scalars, points, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2 if backend.is_supported() => {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { backend::avx2::x25519_batch(scalars, points, out) }
        }
        _ => serial::x25519_batch(scalars, points, out),
    }
    Ok(())
}

/// One X25519 on the portable backend.
pub fn x25519(scalar: &[u8; 32], point: &[u8; 32]) -> [u8; 32] {
    serial::x25519(scalar, point)
}
