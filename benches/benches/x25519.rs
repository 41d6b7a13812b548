//! X25519 throughput: our batched ladders on every backend this CPU supports against
//! x25519-dalek's `x25519()`, in the same run. `cargo bench -p benches --bench x25519`.

#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use crypto_simd::x25519::{Backend, selection, x25519_batch_on};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

const BATCH: usize = 64;

fn inputs() -> (Vec<[u8; 32]>, Vec<[u8; 32]>) {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let mut k = vec![[0u8; 32]; BATCH];
    let mut u = vec![[0u8; 32]; BATCH];
    for (k, u) in k.iter_mut().zip(u.iter_mut()) {
        rng.fill_bytes(k);
        // a valid point: some public key
        *u = x25519_dalek::x25519(*k, x25519_dalek::X25519_BASEPOINT_BYTES);
        rng.fill_bytes(k);
    }
    (k, u)
}

fn x25519(c: &mut Criterion) {
    println!("x25519 backend selected at run time: {:?}", selection());
    let (k, u) = inputs();
    let mut group = c.benchmark_group("x25519");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("x25519-dalek", |b| {
        b.iter(|| {
            for (k, u) in k.iter().zip(&u) {
                black_box(x25519_dalek::x25519(*k, *u));
            }
        })
    });
    let mut out = vec![[0u8; 32]; BATCH];
    for backend in Backend::supported() {
        group.bench_function(BenchmarkId::new("batched", backend.name()), |b| {
            b.iter(|| x25519_batch_on(backend, black_box(&k), &u, &mut out).unwrap())
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(4));
    targets = x25519
}
criterion_main!(benches);
