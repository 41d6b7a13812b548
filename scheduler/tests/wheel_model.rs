//! The timer wheel against a `BTreeMap` model: random inserts (past, near, far and at the
//! limit), cancels (of live and of dead keys) and advances (small steps, exact deadlines,
//! level-crossing jumps), at small capacity and at full capacity.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use scheduler::wheel::MAX_TICKS_AHEAD;
use scheduler::{TimerKey, TimerWheel, WheelError};

struct Model {
    /// (deadline, value) of every pending timer
    pending: BTreeMap<(u64, u32), ()>,
    keys: HashMap<u32, (TimerKey, u64)>,
    dead_keys: Vec<TimerKey>,
}

fn below(rng: &mut ChaCha20Rng, n: u64) -> u64 {
    rng.next_u64() % n.max(1)
}

fn deadline(rng: &mut ChaCha20Rng, now: u64) -> u64 {
    match rng.next_u32() % 10 {
        0 => now.saturating_sub(below(rng, 1000)),  // in the past
        1 => now,                                   // now
        2..=4 => now + 1 + below(rng, 64),          // level 0
        5 | 6 => now + below(rng, 1 << 12),         // level 1
        7 => now + below(rng, 1 << 24),             // levels 2-3
        8 => now + below(rng, MAX_TICKS_AHEAD),     // anywhere, top level included
        _ => now + MAX_TICKS_AHEAD - below(rng, 3), // at the limit
    }
}

fn run(seed: u64, capacity: usize, ops: usize, start: u64) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut wheel = TimerWheel::<u32>::new(capacity, start);
    let mut model = Model {
        pending: BTreeMap::new(),
        keys: HashMap::new(),
        dead_keys: vec![],
    };
    let mut now = start;
    let mut next_value = 0u32;
    let (mut fired_total, mut full_seen) = (0usize, 0usize);

    for op in 0..ops {
        match rng.next_u32() % 100 {
            // insert
            0..=54 => {
                let d = deadline(&mut rng, now);
                let value = next_value;
                next_value += 1;
                match wheel.insert(d, value) {
                    Ok(key) => {
                        model.pending.insert((d, value), ());
                        model.keys.insert(value, (key, d));
                    }
                    Err(WheelError::Full) => {
                        full_seen += 1;
                        // full means: every place taken, by pending timers or by cancelled
                        // ones whose slot has not come due
                        assert!(
                            model.pending.len() == capacity || wheel.stored_entries() >= capacity,
                            "op {op}: Full with {} pending of {capacity}",
                            model.pending.len()
                        );
                    }
                    Err(WheelError::TooFar) => panic!("op {op}: {d} is within reach of {now}"),
                }
            }
            // cancel a live timer, or a dead key
            55..=69 => {
                if rng.next_u32() % 4 == 0 && !model.dead_keys.is_empty() {
                    let i = below(&mut rng, model.dead_keys.len() as u64) as usize;
                    assert!(
                        !wheel.cancel(model.dead_keys[i]),
                        "op {op}: a dead key cancelled"
                    );
                } else if let Some(&value) = model.keys.keys().next() {
                    let (key, d) = model.keys.remove(&value).unwrap();
                    assert!(wheel.cancel(key), "op {op}: a live key not cancelled");
                    model.pending.remove(&(d, value));
                    model.dead_keys.push(key);
                }
            }
            // advance
            _ => {
                let target = match rng.next_u32() % 6 {
                    0 => now,
                    1 | 2 => now + below(&mut rng, 70),
                    3 => wheel.next_deadline().unwrap_or(now).max(now),
                    4 => now + below(&mut rng, 1 << 14),
                    _ => now + below(&mut rng, 1 << 30),
                };
                // next_deadline is never later than the earliest pending deadline
                if let Some(&(earliest, _)) = model.pending.keys().next() {
                    let next = wheel
                        .next_deadline()
                        .expect("pending timers but no deadline");
                    assert!(
                        next <= earliest.max(wheel.now()),
                        "op {op}: next {next} > {earliest}"
                    );
                }
                let mut fired = vec![];
                while let Some(v) = wheel.pop_expired(target) {
                    fired.push(v);
                }
                now = target.max(now);
                let mut due: Vec<u32> = model
                    .pending
                    .range(..=(now, u32::MAX))
                    .map(|(&(_, v), _)| v)
                    .collect();
                for v in &due {
                    let (key, d) = model.keys.remove(v).unwrap();
                    model.pending.remove(&(d, *v));
                    model.dead_keys.push(key);
                }
                fired.sort_unstable();
                due.sort_unstable();
                assert_eq!(fired, due, "op {op}: fired at {now}");
                fired_total += fired.len();
            }
        }
        assert_eq!(wheel.len(), model.pending.len(), "op {op}");
        if model.dead_keys.len() > 10_000 {
            model.dead_keys.drain(..5_000);
        }
    }
    // everything left fires once its time comes
    let mut rest = vec![];
    while let Some(v) = wheel.pop_expired(now + MAX_TICKS_AHEAD) {
        rest.push(v);
    }
    let mut want: Vec<u32> = model.pending.keys().map(|&(_, v)| v).collect();
    rest.sort_unstable();
    want.sort_unstable();
    assert_eq!(rest, want);
    assert!(wheel.is_empty());
    // (cancelled far-future timers hold their places until due, so small wheels fire less)
    assert!(fired_total > 1_000, "only {fired_total} fired");
    if capacity <= 64 {
        assert!(full_seen > 0, "capacity {capacity} never reached");
    }
}

#[test]
fn agrees_with_the_model_at_small_capacity() {
    run(1, 8, 100_000, 0);
    run(2, 64, 100_000, (1 << 36) - 5);
}

#[test]
fn agrees_with_the_model_near_the_top_level_rotation() {
    // start just before a top-level rotation boundary, so deadlines wrap around the top level
    run(3, 4096, 100_000, (1u64 << 36) - 100);
    run(4, 4096, 100_000, 7 * (1u64 << 36) - (1 << 30));
}

#[test]
fn agrees_with_the_model_at_full_capacity() {
    // a wheel filled to its capacity first, then the random mix
    let capacity = 50_000;
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let mut wheel = TimerWheel::<u32>::new(capacity, 0);
    let mut deadlines = vec![];
    for v in 0..capacity as u32 {
        let d = 1 + below(&mut rng, 1 << 20);
        wheel.insert(d, v).unwrap();
        deadlines.push((d, v));
    }
    assert_eq!(wheel.insert(5, 0), Err(WheelError::Full));
    deadlines.sort_unstable();
    // drain in deadline order, checking each poll
    let mut i = 0;
    for step in 0..(1u64 << 20) / 997 + 2 {
        let now = step * 997;
        let mut fired = vec![];
        while let Some(v) = wheel.pop_expired(now) {
            fired.push(v);
        }
        let mut want = vec![];
        while i < deadlines.len() && deadlines[i].0 <= now {
            want.push(deadlines[i].1);
            i += 1;
        }
        fired.sort_unstable();
        want.sort_unstable();
        assert_eq!(fired, want, "at {now}");
    }
    assert!(wheel.is_empty());
    // and the random mix at full capacity
    run(6, capacity, 100_000, 12_345);
}
