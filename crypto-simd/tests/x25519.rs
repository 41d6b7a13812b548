//! Batched X25519 on every backend this CPU supports: RFC 7748 vectors and its iterated test,
//! every Wycheproof X25519 vector, and a differential test against x25519-dalek.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crypto_simd::x25519::{
    BACKEND_ENV, Backend, LengthMismatch, Selection, selection, x25519_batch, x25519_batch_on,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

fn hex32(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

fn one(backend: Backend, k: &[u8; 32], u: &[u8; 32]) -> [u8; 32] {
    let mut out = [[0u8; 32]];
    x25519_batch_on(backend, &[*k], &[*u], &mut out).unwrap();
    out[0]
}

fn backends() -> Vec<Backend> {
    let supported = Backend::supported();
    assert!(supported.contains(&Backend::Portable));
    supported
}

#[test]
fn rfc7748_section_5_2_vectors_on_every_backend() {
    let vectors = [
        (
            "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
            "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
            "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
        ),
        (
            "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
            "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
            "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
        ),
    ];
    for backend in backends() {
        for (k, u, r) in vectors {
            assert_eq!(one(backend, &hex32(k), &hex32(u)), hex32(r), "{backend:?}");
        }
    }
}

/// RFC 7748 section 5.2: k = u = 9, then repeatedly (k, u) = (X25519(k, u), k).
fn iterate(backend: Backend, iterations: u32) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[0] = 9;
    let mut u = k;
    for _ in 0..iterations {
        let r = one(backend, &k, &u);
        u = k;
        k = r;
    }
    k
}

#[test]
fn rfc7748_iterated_1_and_1000_times_on_every_backend() {
    for backend in backends() {
        assert_eq!(
            iterate(backend, 1),
            hex32("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"),
            "{backend:?}"
        );
        assert_eq!(
            iterate(backend, 1_000),
            hex32("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"),
            "{backend:?}"
        );
    }
}

#[test]
#[ignore = "1,000,000 sequential ladders per backend take minutes; run with --ignored"]
fn rfc7748_iterated_1_000_000_times_on_every_backend() {
    for backend in backends() {
        assert_eq!(
            iterate(backend, 1_000_000),
            hex32("7c3911e0ab2586fd864497297e575e6f3bc601c0883c30df5f4dd2d24f665424"),
            "{backend:?}"
        );
    }
}

#[test]
fn every_wycheproof_x25519_vector_on_every_backend() {
    use wycheproof::xdh::{TestName, TestSet};
    let set = TestSet::load(TestName::X25519).unwrap();
    let mut scalars = Vec::new();
    let mut points = Vec::new();
    let mut expected = Vec::new();
    for group in &set.test_groups {
        for test in &group.tests {
            // every X25519 vector has 32-byte keys and is valid or acceptable: low-order points
            // give the all-zero secret, non-canonical u and the high bit are reduced/ignored
            assert!(!test.result.must_fail(), "tc {}", test.tc_id);
            scalars.push(<[u8; 32]>::try_from(&test.private_key[..]).unwrap());
            points.push(<[u8; 32]>::try_from(&test.public_key[..]).unwrap());
            expected.push(<[u8; 32]>::try_from(&test.shared_secret[..]).unwrap());
        }
    }
    assert_eq!(scalars.len(), set.number_of_tests);
    assert!(scalars.len() >= 500);
    for backend in backends() {
        // all at once (a long batch with a ragged end) and one by one
        let mut out = vec![[0u8; 32]; scalars.len()];
        x25519_batch_on(backend, &scalars, &points, &mut out).unwrap();
        let mut index = 0;
        for group in &set.test_groups {
            for test in &group.tests {
                assert_eq!(
                    out[index], expected[index],
                    "{backend:?} tc {} ({:?})",
                    test.tc_id, test.flags
                );
                if index % 7 == 0 {
                    assert_eq!(
                        one(backend, &scalars[index], &points[index]),
                        expected[index]
                    );
                }
                index += 1;
            }
        }
    }
}

/// A random u: mostly uniform 32 bytes (the high bit set half the time), sometimes a value
/// at the edge of the field.
fn random_point(rng: &mut ChaCha20Rng) -> [u8; 32] {
    let mut u = [0u8; 32];
    rng.fill_bytes(&mut u);
    match rng.next_u32() % 64 {
        0 => [0u8; 32],
        1 => [0xff; 32],
        2 => {
            // p - 1 + (0, 1, 2) and friends
            let mut p = [0xffu8; 32];
            p[31] = 0x7f;
            p[0] = 0xec + (rng.next_u32() % 19) as u8;
            p
        }
        3 => {
            let mut small = [0u8; 32];
            small[0] = (rng.next_u32() % 20) as u8;
            small
        }
        _ => u,
    }
}

#[test]
fn differential_against_x25519_dalek_100k_pairs_per_backend() {
    const PAIRS: usize = 100_000;
    let mut rng = ChaCha20Rng::seed_from_u64(7748);
    let mut scalars = vec![[0u8; 32]; PAIRS];
    let mut points = vec![[0u8; 32]; PAIRS];
    for (k, u) in scalars.iter_mut().zip(points.iter_mut()) {
        rng.fill_bytes(k);
        *u = random_point(&mut rng);
    }
    let reference: Vec<[u8; 32]> = scalars
        .iter()
        .zip(&points)
        .map(|(k, u)| x25519_dalek::x25519(*k, *u))
        .collect();

    for backend in backends() {
        // batch lengths 1, 2, ..., 2 * lanes + 1, in turn
        let max_batch = 2 * backend.lanes() + 1;
        let mut out = vec![[0u8; 32]; PAIRS];
        let (mut start, mut len) = (0, 1);
        while start < PAIRS {
            let end = (start + len).min(PAIRS);
            x25519_batch_on(
                backend,
                &scalars[start..end],
                &points[start..end],
                &mut out[start..end],
            )
            .unwrap();
            start = end;
            len = len % max_batch + 1;
        }
        for i in 0..PAIRS {
            assert_eq!(out[i], reference[i], "{backend:?} pair {i}");
        }
    }
}

#[test]
fn mismatched_lengths_are_refused() {
    let mut out = [[0u8; 32]; 2];
    for backend in Backend::ALL {
        assert_eq!(
            x25519_batch_on(backend, &[[1; 32]; 2], &[[9; 32]; 3], &mut out),
            Err(LengthMismatch)
        );
        assert_eq!(
            x25519_batch_on(backend, &[[1; 32]; 2], &[[9; 32]; 2], &mut out[..1]),
            Err(LengthMismatch)
        );
    }
    assert_eq!(x25519_batch(&[], &[], &mut []), Ok(()));
}

/// CI runs the crypto tests once per backend with `MIXED_X25519_BACKEND` set: the run must
/// really use that backend (and fail loudly if the machine cannot).
#[test]
fn the_backend_the_environment_forces_is_the_one_used() {
    match std::env::var(BACKEND_ENV) {
        Ok(name) => {
            let forced = Backend::from_name(&name).expect("a known backend name");
            assert_eq!(
                selection(),
                Selection::Forced(forced),
                "{BACKEND_ENV}={name}"
            );
        }
        Err(_) => assert_eq!(selection(), Selection::Detected(Backend::best())),
    }
}
