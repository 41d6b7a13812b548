//! The scheduler: insert plus expiry with exponential deadlines at 1,000, 100,000 and
//! 1,000,000 pending timers, our timer wheel against `std::collections::BinaryHeap`, same
//! deadlines, same run; and the cost of one emission decision of Algorithm 2.
//! `cargo bench -p benches --bench scheduler`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use scheduler::{Emission, EmissionParams, Emitter, ExpDelay, TimerWheel, Timestamp};

/// Mean delay 1/lambda = 100 ms in ticks of 100 us.
const MEAN_TICKS: u64 = 1_000;
/// Pre-drawn exponential delays, cycled through.
const DRAWS: usize = 1 << 20;

fn delays() -> Vec<u64> {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let exp = ExpDelay::new(std::time::Duration::from_nanos(MEAN_TICKS)).unwrap();
    (0..DRAWS)
        .map(|_| exp.sample(&mut rng).as_nanos() as u64 + 1)
        .collect()
}

fn timers(c: &mut Criterion) {
    let draws = delays();
    let mut group = c.benchmark_group("timer_insert_expire");
    group.throughput(Throughput::Elements(1));
    for pending in [1_000usize, 100_000, 1_000_000] {
        // the wheel, filled with `pending` timers, then in steady state: take the next
        // expiring timer, add one with a fresh deadline
        let mut wheel = TimerWheel::<u32>::new(pending, 0);
        let mut i = 0;
        for _ in 0..pending {
            wheel.insert(draws[i % DRAWS], i as u32).unwrap();
            i += 1;
        }
        let mut now = 0u64;
        group.bench_function(BenchmarkId::new("wheel", pending), |b| {
            b.iter(|| {
                let value = loop {
                    if let Some(v) = wheel.pop_expired(now) {
                        break v;
                    }
                    now = wheel.next_deadline().unwrap();
                };
                wheel.insert(now + draws[i % DRAWS], value).unwrap();
                i += 1;
            })
        });

        let mut heap = BinaryHeap::with_capacity(pending);
        let mut j = 0;
        for _ in 0..pending {
            heap.push(Reverse((draws[j % DRAWS], j as u32)));
            j += 1;
        }
        group.bench_function(BenchmarkId::new("binary_heap", pending), |b| {
            b.iter(|| {
                let Reverse((deadline, value)) = heap.pop().unwrap();
                heap.push(Reverse((deadline + draws[j % DRAWS], value)));
                j += 1;
            })
        });
    }
    group.finish();
}

fn emission(c: &mut Criterion) {
    let params = EmissionParams {
        b: 1000.0,
        rho: 1.5,
        h: 3,
        l: 4,
        b_loop: 25.0,
        forward_queue: 1024,
    };
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut emitter = Emitter::<u32>::new(params, Timestamp::ZERO, &mut rng).unwrap();
    let mut group = c.benchmark_group("emission");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decision", |b| {
        b.iter(|| {
            let _ = emitter.push_forward(7, &mut rng);
            let now = emitter.poll_timeout();
            let (_, e) = emitter.on_slot(now, true).unwrap();
            black_box(matches!(e, Emission::Forward(_)))
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = timers, emission
}
criterion_main!(benches);
