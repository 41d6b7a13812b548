//! Path selection, Algorithm 1 of the paper: h distinct hops, each drawn with probability
//! proportional to its advertised bandwidth b_i among the nodes not drawn yet (sampling
//! without replacement), optionally weighted by a reliability in [0, 1] measured by loops
//! (section 4.4). The RNG is passed in.

use rand_core::Rng;

use crate::verify::VerifiedConsensus;

/// Why no path could be drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Fewer eligible nodes (mixes, not excluded, with a positive weight) than hops.
    #[error("not enough nodes for the path: {needed} hops, {available} eligible mixes")]
    NotEnoughNodes {
        /// Hops asked for.
        needed: usize,
        /// Eligible nodes.
        available: usize,
    },
}

/// Most hops a path has.
pub const MAX_PATH_HOPS: usize = 5;

/// Draws `hops` distinct mix nodes of `consensus`, never one of `exclude` (the caller's own
/// node ID, say), each with probability proportional to `bandwidth * reliability(id)` among
/// those not drawn yet. `reliability` returns a weight in [0, 1] (values outside are
/// clamped; NaN counts as 0). Writes the chosen nodes' indices into the consensus's node
/// list, in path order, into `out[..hops]`.
pub fn select_hops<R: Rng + ?Sized>(
    consensus: &VerifiedConsensus,
    hops: usize,
    exclude: &[[u8; 32]],
    reliability: impl Fn(&[u8; 32]) -> f64,
    rng: &mut R,
    out: &mut [usize],
) -> Result<(), PathError> {
    let nodes = consensus.nodes();
    // each node's weight, computed where it is needed rather than kept in a vector: a
    // relay draws the hops of its cover and loops on its packet path, which allocates
    // nothing. A node already drawn weighs 0 (without replacement). The sums and the walk
    // are those of a vector of the weights, in the same order: the same draws.
    let weight = |i: usize, drawn: &[usize]| {
        let node = &nodes[i];
        if !node.roles.mix || exclude.contains(&node.id()) || drawn.contains(&i) {
            return 0.0;
        }
        let r = reliability(&node.id());
        let r = if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) };
        f64::from(node.bandwidth) * r
    };
    let available = (0..nodes.len()).filter(|&i| weight(i, &[]) > 0.0).count();
    if available < hops || out.len() < hops {
        return Err(PathError::NotEnoughNodes {
            needed: hops,
            available,
        });
    }
    for k in 0..hops {
        let (drawn, rest) = out.split_at_mut(k);
        let total: f64 = (0..nodes.len()).map(|i| weight(i, drawn)).sum();
        let mut target = uniform(rng) * total;
        let mut chosen = None;
        for i in 0..nodes.len() {
            let w = weight(i, drawn);
            if w <= 0.0 {
                continue;
            }
            // the last eligible node if rounding leaves `target` just above the sum
            chosen = Some(i);
            if target < w {
                break;
            }
            target -= w;
        }
        let Some(i) = chosen else {
            return Err(PathError::NotEnoughNodes {
                needed: hops,
                available,
            });
        };
        rest[0] = i;
    }
    Ok(())
}

/// A uniform number in [0, 1) with 53 random bits.
fn uniform<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}
