//! Algorithm 2 in simulation, with fixed seeds: what a node emits does not depend on what it
//! has to send; own data keeps to rho * B / h over every window of a second or more; forwards
//! beyond the budget are dropped without bias.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod common;

use common::{CHI_SQUARE_CRITICAL_001, chi_square_uniform, ks_two_sample};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use scheduler::{Emission, EmissionCounters, EmissionParams, Emitter, PoissonClock, Timestamp};

/// B = 1,000 packets/s, rho = 1.5, h = 3 (own data up to 500/s), L = 4 loops of 25/s
/// (100/s): a forward budget of 400/s.
const PARAMS: EmissionParams = EmissionParams {
    b: 1000.0,
    rho: 1.5,
    h: 3,
    l: 4,
    b_loop: 25.0,
    forward_queue: 256,
};

/// Simulated time: 1,000 s at B = 1,000 packets/s, a million slots.
const SECONDS: u64 = 1_000;
const SLOTS: usize = 1_000_000;
const BURST: usize = 8;

struct Run {
    slot_times: Vec<u64>,
    own_times: Vec<u64>,
    counters: EmissionCounters,
    /// forwards dropped, by their position in the burst they arrived in
    drops_by_position: [u64; BURST],
}

/// Runs `SECONDS` of an emitter with own data always waiting (or never) and forwards
/// arriving in bursts of `BURST` at `forward_rate` packets a second (Poisson bursts).
fn simulate(own_saturating: bool, forward_rate: f64, seed: u64) -> Run {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut emitter = Emitter::<usize>::new(PARAMS, Timestamp::ZERO, &mut rng).unwrap();
    let bursts =
        (forward_rate > 0.0).then(|| PoissonClock::new(forward_rate / BURST as f64).unwrap());
    let mut next_burst = match &bursts {
        Some(c) => Timestamp::ZERO.saturating_add(c.next_gap(&mut rng)),
        None => Timestamp::from_nanos(u64::MAX),
    };
    let mut run = Run {
        slot_times: Vec::with_capacity(SLOTS + SLOTS / 50),
        own_times: vec![],
        counters: EmissionCounters::default(),
        drops_by_position: [0; BURST],
    };
    let end = Timestamp::from_nanos(SECONDS * 1_000_000_000);
    while emitter.poll_timeout() <= end {
        if next_burst < emitter.poll_timeout() {
            for position in 0..BURST {
                if let Err((dropped, _)) = emitter.push_forward(position, &mut rng) {
                    run.drops_by_position[dropped] += 1;
                }
            }
            let gap = bursts.as_ref().unwrap().next_gap(&mut rng);
            next_burst = next_burst.saturating_add(gap);
            continue;
        }
        let now = emitter.poll_timeout();
        let (at, emission) = emitter.on_slot(now, own_saturating).unwrap();
        assert_eq!(at, now);
        run.slot_times.push(at.as_nanos());
        if emission == Emission::Own {
            run.own_times.push(at.as_nanos());
        }
    }
    run.counters = *emitter.counters();
    run
}

fn gaps(times: &[u64]) -> Vec<f64> {
    times.windows(2).map(|w| (w[1] - w[0]) as f64).collect()
}

#[test]
fn emission_is_the_same_whatever_the_load() {
    let budget = PARAMS.forward_budget();
    let baseline = simulate(false, 0.0, 1);
    let baseline_count = baseline.slot_times.len() as f64;
    assert!(baseline_count > 0.99 * SLOTS as f64);
    let baseline_gaps = gaps(&baseline.slot_times);
    let scenarios = [
        ("own saturating, no forwards", true, 0.0),
        ("idle, nominal forwards", false, budget),
        ("idle, 3x forwards", false, 3.0 * budget),
        ("own saturating, nominal forwards", true, budget),
        ("own saturating, 3x forwards", true, 3.0 * budget),
    ];
    for (i, (name, own, forwards)) in scenarios.into_iter().enumerate() {
        let run = simulate(own, forwards, 10 + i as u64);
        // same number of packets over the same time, within 1%
        let count = run.slot_times.len() as f64;
        let ratio = count / baseline_count;
        assert!(
            (ratio - 1.0).abs() < 0.01,
            "{name}: {count} packets against {baseline_count}"
        );
        // the same distribution of gaps: two-sample KS does not reject at p = 0.01
        let (d, p) = ks_two_sample(&mut baseline_gaps.clone(), &mut gaps(&run.slot_times));
        eprintln!(
            "{name}: count ratio {ratio:.5}, KS D = {d:.5}, p = {p:.3}, {:?}",
            run.counters
        );
        assert!(p > 0.01, "{name}: KS rejects, D = {d}, p = {p}");
        assert_eq!(run.counters.emitted(), run.slot_times.len() as u64);
        if own {
            assert!(run.counters.own > 0);
        }
        if forwards > 0.0 {
            assert!(run.counters.forwards > 0);
        }
        if forwards > 2.0 * budget {
            assert!(
                run.counters.dropped_forwards > 0,
                "{name}: overload dropped nothing"
            );
        }
    }
    // and the idle node sent only loops
    assert_eq!(baseline.counters.own + baseline.counters.forwards, 0);
}

/// Section 5.0.1: the forwarding rate must not reveal whether the node sends its own data.
#[test]
fn forwarding_does_not_depend_on_own_data() {
    let budget = PARAMS.forward_budget();
    for load in [0.5 * budget, budget, 3.0 * budget] {
        // the same seed: the same forwards arrive at the same times in both runs
        let idle = simulate(false, load, 20);
        let busy = simulate(true, load, 20);
        let ratio = busy.counters.forwards as f64 / idle.counters.forwards as f64;
        eprintln!(
            "forward load {load}: {} forwarded idle, {} busy",
            idle.counters.forwards, busy.counters.forwards
        );
        assert!(
            (ratio - 1.0).abs() < 0.01,
            "load {load}: forwards busy/idle = {ratio}"
        );
        // own data still gets most of its share, forwards taking theirs first
        assert!(busy.counters.own as f64 > 0.9 * PARAMS.own_rate() * SECONDS as f64);
    }
}

#[test]
fn own_data_keeps_to_rho_b_over_h_over_every_window_of_a_second_or_more() {
    let run = simulate(true, 3.0 * PARAMS.forward_budget(), 2);
    let r = PARAMS.own_rate();
    let s: Vec<f64> = run.own_times.iter().map(|&t| t as f64 / 1e9).collect();
    assert!(s.len() > 100_000);
    // windows shorter than a second are held to a whole second: at most r sends in any
    // window [s_i, s_i + 1]
    let mut j = 0;
    for i in 0..s.len() {
        while j < s.len() && s[j] <= s[i] + 1.0 {
            j += 1;
        }
        assert!(
            (j - i) as f64 <= r,
            "{} sends in the second from {}",
            j - i,
            s[i]
        );
    }
    // longer windows [s_i, s_j] (w = s_j - s_i >= 1): j - i + 1 <= r w, i.e.
    // (j + 1) - r s_j <= i - r s_i for every i with s_i <= s_j - 1
    let f = |k: usize| k as f64 - r * s[k];
    let (mut i, mut min_f) = (0, f64::INFINITY);
    for j in 0..s.len() {
        while i < j && s[i] <= s[j] - 1.0 {
            min_f = min_f.min(f(i));
            i += 1;
        }
        assert!(
            f(j) + 1.0 <= min_f + 1e-9,
            "a window ending at {} exceeds r * w",
            s[j]
        );
    }
    // the limit is used, not merely respected (issue 12): at least 95% of r with forwards
    // at three times their budget taking their share first, which leaves own data r free
    // slots a second on average and no more
    let rate = s.len() as f64 / s[s.len() - 1];
    eprintln!("own rate {rate:.1} of r = {r} ({:.1}%)", rate / r * 100.0);
    assert!(rate >= 0.95 * r && rate <= r, "own rate {rate} for r = {r}");
}

#[test]
fn forward_drops_are_unbiased_across_packets() {
    let run = simulate(false, 3.0 * PARAMS.forward_budget(), 3);
    let total: u64 = run.drops_by_position.iter().sum();
    assert!(total > 500_000, "{total} drops");
    let chi2 = chi_square_uniform(&run.drops_by_position);
    eprintln!(
        "drops by position in burst: {:?}, chi-square {chi2:.2}",
        run.drops_by_position
    );
    assert!(
        chi2 < CHI_SQUARE_CRITICAL_001[BURST - 2],
        "chi-square {chi2} rejects uniformity"
    );
}

#[test]
fn bad_parameters_are_refused() {
    use scheduler::ParamsError;
    let with = |f: fn(&mut EmissionParams)| {
        let mut p = PARAMS;
        f(&mut p);
        Emitter::<u32>::new(p, Timestamp::ZERO, &mut ChaCha20Rng::seed_from_u64(0)).err()
    };
    assert!(matches!(with(|p| p.b = 0.0), Some(ParamsError::Rate(_))));
    assert!(matches!(
        with(|p| p.b = f64::NAN),
        Some(ParamsError::Rate(_))
    ));
    assert_eq!(with(|p| p.rho = 0.5), Some(ParamsError::Rho));
    assert_eq!(with(|p| p.h = 0), Some(ParamsError::Hops));
    assert_eq!(with(|p| p.h = 6), Some(ParamsError::Hops));
    assert_eq!(with(|p| p.b_loop = -1.0), Some(ParamsError::LoopRate));
    assert_eq!(
        with(|p| p.b_loop = f64::INFINITY),
        Some(ParamsError::LoopRate)
    );
    assert_eq!(with(|p| p.l = 1000), Some(ParamsError::OverBudget));
    assert_eq!(
        with(|p| {
            p.b = 2.0;
            p.l = 0;
        }),
        Some(ParamsError::OwnRateTooLow)
    );
    assert_eq!(with(|p| p.forward_queue = 0), Some(ParamsError::QueueSize));
    assert_eq!(with(|_| {}), None);
    // no loops at all is fine
    assert_eq!(with(|p| p.l = 0), None);
}

/// Forwards arriving one at a time, a Poisson stream at `load` times the forward budget of
/// a node with h = 5, rho = 1, no loops (the budget is 80% of B), for 1,000 s at B = 1,000,
/// with a ready queue of `queue`; returns (arrived, dropped for the budget, dropped at a
/// full queue).
fn offered_share(load: f64, seed: u64, queue: usize) -> (u64, u64, u64) {
    let params = EmissionParams {
        b: 1000.0,
        rho: 1.0,
        h: 5,
        l: 0,
        b_loop: 0.0,
        forward_queue: queue,
    };
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut emitter = Emitter::<()>::new(params, Timestamp::ZERO, &mut rng).unwrap();
    let arrivals = PoissonClock::new(load * params.forward_budget()).unwrap();
    let mut next = Timestamp::ZERO.saturating_add(arrivals.next_gap(&mut rng));
    let end = Timestamp::from_nanos(SECONDS * 1_000_000_000);
    let mut arrived = 0;
    while emitter.poll_timeout() <= end {
        if next < emitter.poll_timeout() {
            arrived += 1;
            let _ = emitter.push_forward((), &mut rng);
            next = next.saturating_add(arrivals.next_gap(&mut rng));
            continue;
        }
        let now = emitter.poll_timeout();
        let _ = emitter.on_slot(now, false);
    }
    let c = emitter.counters();
    (arrived, c.dropped_forwards, c.overflowed_forwards)
}

#[test]
fn forwards_below_the_budget_are_all_served() {
    // at 95% of the budget the slots carry every forward (the queue of 256 absorbs the
    // Poisson bursts): the budget is a rate of slots, none of it lost to a long gap
    let (arrived, budget, full) = offered_share(0.95, 11, 256);
    eprintln!("at 95% of the budget: {arrived} arrived, {budget} dropped, {full} at a full queue");
    assert!(
        budget + full <= arrived / 1000,
        "{budget} + {full} of {arrived} dropped at 95% of the budget"
    );
    // above the budget, what is served is the budget: the drops are the excess
    let (arrived, budget, full) = offered_share(1.25, 12, 256);
    let served = (arrived - budget - full) as f64 / SECONDS as f64;
    eprintln!("at 125% of the budget: {served:.1}/s served of 800/s");
    assert!((790.0..=805.0).contains(&served), "{served}/s served");
}

/// The ready queue as a jitter buffer: at 95% of the budget a queue of 256 (random drops
/// from 64) still drops several forwards in 10,000 to the Poisson bursts, whatever the
/// rate (the queue's law depends on the load, not on B); the queue a node fitted to its
/// rate gets at B = 30,000 (`engine::READY_SPAN` of slots, 1,500) drops none of them.
/// Above the budget both serve the budget.
#[test]
fn a_ready_queue_of_fifty_milliseconds_of_slots_absorbs_the_bursts() {
    let mut drops = Vec::new();
    for queue in [256, 1500] {
        let (arrived, budget, full) = offered_share(0.95, 13, queue);
        eprintln!(
            "queue {queue}, 95% of the budget: {arrived} arrived, {budget} dropped, {full} at \
             a full queue"
        );
        drops.push((budget + full, arrived));
    }
    let (small, arrived) = drops[0];
    assert!(
        small * 10_000 > arrived,
        "a queue of 256 dropped only {small} of {arrived}: the comparison shows nothing"
    );
    let (large, arrived) = drops[1];
    assert!(
        large * 100_000 <= arrived,
        "a queue of 1,500 dropped {large} of {arrived}"
    );
    let (arrived, budget, full) = offered_share(1.25, 14, 1500);
    let served = (arrived - budget - full) as f64 / SECONDS as f64;
    assert!((790.0..=805.0).contains(&served), "{served}/s served");
}

/// The departures of `n` emitters of rate `b` each over 100 s, merged into one stream: a
/// node of n cores, whose runtime gives each core's engine B / n and a seed of its own
/// (`same_seed`: every core the same seed, the mistake the test must catch).
fn merged(n: usize, b: f64, same_seed: bool) -> Vec<u64> {
    let params = EmissionParams { b, ..PARAMS };
    let end = Timestamp::from_nanos(100 * 1_000_000_000);
    let mut times = Vec::new();
    for core in 0..n {
        let seed = if same_seed { 500 } else { 500 + core as u64 };
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut e = Emitter::<usize>::new(params, Timestamp::ZERO, &mut rng).unwrap();
        while e.poll_timeout() <= end {
            let now = e.poll_timeout();
            let (at, _) = e.on_slot(now, false).unwrap();
            times.push(at.as_nanos());
        }
    }
    times.sort_unstable();
    times
}

/// The variance of the counts in 10 ms windows over their mean: 1 for a Poisson process.
fn dispersion(times: &[u64]) -> f64 {
    let windows = 100 * 100;
    let mut counts = vec![0u64; windows];
    for t in times {
        if let Some(c) = counts.get_mut((*t / 10_000_000) as usize) {
            *c += 1;
        }
    }
    let mean = counts.iter().sum::<u64>() as f64 / windows as f64;
    let var = counts
        .iter()
        .map(|&c| (c as f64 - mean).powi(2))
        .sum::<f64>()
        / (windows - 1) as f64;
    var / mean
}

/// Several cores, one rate (line-rate issue): the per-core Poisson clocks of rate B / n add
/// up to one process of rate B. The merged departures of 2, 4 and 8 cores against one
/// emitter of rate B: the same count within 1%, the same law of gaps (two-sample KS does
/// not reject at p = 0.01), and window counts as dispersed as a Poisson process's. Cores
/// that shared a seed would depart together: the test rejects that.
#[test]
fn per_core_clocks_add_up_to_one_process_of_rate_b() {
    const B: f64 = 8_000.0;
    let one = merged(1, B, false);
    let one_gaps = gaps(&one);
    for n in [2usize, 4, 8] {
        let cores = merged(n, B / n as f64, false);
        let ratio = cores.len() as f64 / one.len() as f64;
        let (d, p) = ks_two_sample(&mut one_gaps.clone(), &mut gaps(&cores));
        let disp = dispersion(&cores);
        eprintln!(
            "{n} cores: count ratio {ratio:.4}, KS D = {d:.5} p = {p:.3}, dispersion {disp:.3}"
        );
        assert!((ratio - 1.0).abs() < 0.01, "{n} cores: {ratio}");
        assert!(p > 0.01, "{n} cores: KS rejects, D = {d}, p = {p}");
        // 10,000 windows: the index's standard error is about 0.014
        assert!((disp - 1.0).abs() < 0.06, "{n} cores: dispersion {disp}");
    }
    // the control: four cores on one seed emit in lockstep
    let lockstep = merged(4, B / 4.0, true);
    let (_, p) = ks_two_sample(&mut one_gaps.clone(), &mut gaps(&lockstep));
    let disp = dispersion(&lockstep);
    eprintln!("4 cores, one seed: KS p = {p:.3}, dispersion {disp:.3}");
    assert!(
        p < 0.01 && disp > 3.0,
        "lockstep not caught: p = {p}, dispersion {disp}"
    );
}
