//! `mixed sim`: the network at scale, from a scenario (TOML) and a seed.
//!
//! Two fidelities of one scenario: the **fast mode** ([`mixed`], [`loopix`]) keeps the real
//! scheduler (the timer wheel and the emitter of Algorithm 2) and the law of Algorithm 1's
//! path selection, with packets as opaque identities, for 10,000 to 100,000 nodes; the
//! **engine fidelity** ([`real`]) runs the real engine with real Sphinx through
//! `stack::sim`, for hundreds of nodes. Both feed one observer ([`observer`]): the global
//! passive adversary's probability vectors, from which come the per-message entropies.
//!
//! Notation (the paper's, section 4): N nodes; B (B_i) the constant emission rate of a node,
//! packets a second; rho the leniency factor, own data at most rho B / h; h the hops of a
//! path (the destination included); lambda the rate of the exponential per-hop delay, mean
//! 1/lambda; L loops of b_loop packets a second each; k of n packets needed to decode a
//! message (section 4.5); q the probability that one packet arrives.
//!
//! Sans-IO and deterministic: virtual time, every random draw from the seed (ChaCha20),
//! no hash-map order in any output. Only [`cli`] touches files and the wall clock (the
//! progress bar), and nothing it reads from the clock reaches the output.

#![forbid(unsafe_code)]

pub mod classifier;
pub mod cli;
pub mod loopix;
pub mod mixed;
pub mod observer;
pub mod paths;
pub mod plot;
pub mod real;
pub mod report;
pub mod scenario;
pub mod world;

use report::Summary;
use scenario::{Design, Fidelity, Scenario};

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The scenario cannot be set up.
    #[error(transparent)]
    Setup(#[from] mixed::SetupError),
    /// A sweep value is out of range.
    #[error(transparent)]
    Scenario(#[from] scenario::ScenarioError),
    /// The engine fidelity failed.
    #[error("engine fidelity: {0}")]
    Engine(String),
}

/// Runs `sc` with `seed`, once per value of its sweep; `progress(run, virtual seconds,
/// events)` now and then.
pub fn run(
    sc: &Scenario,
    seed: u64,
    progress: &mut dyn FnMut(usize, f64, u64),
) -> Result<Vec<Summary>, RunError> {
    let plan: Vec<(f64, Scenario)> = match &sc.sweep {
        None => vec![(f64::NAN, sc.clone())],
        Some(sw) => sw
            .values
            .iter()
            .map(|&v| sc.with(&sw.parameter, v).map(|s| (v, s)))
            .collect::<Result<_, _>>()?,
    };
    let mut out = Vec::new();
    for (k, (value, s)) in plan.into_iter().enumerate() {
        let mut p = |t: f64, e: u64| progress(k, t, e);
        let mut summary = run_one(&s, seed, &mut p)?;
        summary.value = value;
        out.push(summary);
    }
    Ok(out)
}

/// One run of `sc` (no sweep).
pub fn run_one(
    sc: &Scenario,
    seed: u64,
    progress: &mut dyn FnMut(f64, u64),
) -> Result<Summary, RunError> {
    Ok(match (sc.design, sc.fidelity) {
        (Design::Mixed, Fidelity::Fast) => mixed::Mixed::new(sc, seed)?.run(progress),
        (Design::Loopix, _) => loopix::Loopix::new(sc, seed).run(progress),
        (Design::Mixed, Fidelity::Engine) => real::run(sc, seed, progress)?,
    })
}

/// The window of the first attack on the watched node (an (n-1) attacker or a flooder
/// whose target is `metrics.watch`).
pub fn attack_window(sc: &Scenario) -> Option<(f64, f64)> {
    let watched = sc.metrics.watch?;
    sc.adversary.iter().find_map(|a| match *a {
        scenario::Adversary::NMinusOne {
            target, start, end, ..
        }
        | scenario::Adversary::Flooder {
            target, start, end, ..
        } if target == watched => Some((start, end)),
        _ => None,
    })
}

/// The design, as a word.
pub fn design_name(sc: &Scenario) -> &'static str {
    match sc.design {
        Design::Mixed => "mixed",
        Design::Loopix => "loopix",
    }
}

/// The fidelity, as a word.
pub fn fidelity_name(sc: &Scenario) -> &'static str {
    match sc.fidelity {
        Fidelity::Fast => "fast",
        Fidelity::Engine => "engine",
    }
}
