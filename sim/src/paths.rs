//! Path selection for the fast mode: the law of `engine::paths::draw_route` (Algorithm 1 of
//! the paper, hop by hop, by advertised bandwidth B_i) drawn in O(log N) per hop instead of
//! `pki_client::select_hops`'s O(N) scan, so that 100,000 nodes stay cheap.
//!
//! The law, as the engine draws it: the first hop is any listed mix but the emitter, with
//! probability proportional to its bandwidth; each later hop any listed mix but the one
//! before it (and the last mix never the destination), by bandwidth; when the only mix is
//! the destination, one more mix is drawn after it. A hop excluded by a rule is redrawn
//! (rejection), which is exactly sampling from the remaining nodes in proportion to their
//! weights, as `select_hops` does. The fast mode leaves out the reliability factor of the
//! later hops (every node weighs its bandwidth alone: a per-builder table of 100,000 nodes
//! each would not fit); the engine fidelity keeps it. The test below checks the law against
//! `pki_client::select_hops` itself.

use rand_core::Rng;

/// Most hops of a path (the destination included).
pub const MAX_PATH: usize = 6;

/// One epoch's directory: the listed mixes and their bandwidths, for drawing hops.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    /// Node index of each listed mix, in node order.
    ids: Vec<u32>,
    /// Cumulative bandwidth: `cum[i]` = sum of the first i + 1 bandwidths.
    cum: Vec<f64>,
}

impl Directory {
    /// A directory of the mixes `listed` (node index, bandwidth B_i > 0).
    pub fn new(listed: impl IntoIterator<Item = (u32, f64)>) -> Self {
        let mut ids = Vec::new();
        let mut cum = Vec::new();
        let mut total = 0.0;
        for (id, b) in listed {
            if b > 0.0 {
                total += b;
                ids.push(id);
                cum.push(total);
            }
        }
        Directory { ids, cum }
    }

    /// Mixes listed.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no mix is listed.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The listed mixes, in node order.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// One mix by bandwidth, never one of `exclude`; `None` if none is left.
    pub fn draw<R: Rng + ?Sized>(&self, rng: &mut R, exclude: &[u32]) -> Option<u32> {
        let total = *self.cum.last()?;
        for _ in 0..64 {
            let x = uniform(rng) * total;
            let i = self
                .cum
                .partition_point(|&c| c <= x)
                .min(self.ids.len() - 1);
            let id = self.ids[i];
            if !exclude.contains(&id) {
                return Some(id);
            }
        }
        // the excluded nodes hold nearly all the weight: draw among the others exactly
        let mut prev = 0.0;
        let weights: Vec<(u32, f64)> = self
            .ids
            .iter()
            .zip(&self.cum)
            .map(|(&id, &c)| {
                let w = c - prev;
                prev = c;
                (id, if exclude.contains(&id) { 0.0 } else { w })
            })
            .collect();
        let rest: f64 = weights.iter().map(|(_, w)| w).sum();
        if rest <= 0.0 {
            return None;
        }
        let mut x = uniform(rng) * rest;
        let mut last = None;
        for (id, w) in weights {
            if w <= 0.0 {
                continue;
            }
            last = Some(id);
            if x < w {
                break;
            }
            x -= w;
        }
        last
    }

    /// Draws the `mixes` mixes of a packet that `emitter` sends first and that ends at
    /// `destination` into `out`, by the engine's law (module docs); returns how many it
    /// drew (`mixes`, or one more), or `None` when the directory is too small.
    pub fn route<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        emitter: Option<u32>,
        destination: Option<u32>,
        mixes: usize,
        out: &mut [u32; MAX_PATH],
    ) -> Option<usize> {
        if mixes == 0 || mixes >= MAX_PATH {
            return None;
        }
        let not_emitter: &[u32] = match &emitter {
            Some(e) => core::slice::from_ref(e),
            None => &[],
        };
        out[0] = self.draw(rng, not_emitter)?;
        let count = if mixes == 1 && Some(out[0]) == destination {
            2
        } else {
            mixes
        };
        for i in 1..count {
            let mut exclude = [out[i - 1], u32::MAX];
            if i == count - 1
                && let Some(d) = destination
            {
                exclude[1] = d;
            }
            out[i] = self.draw(rng, &exclude)?;
        }
        Some(count)
    }
}

/// A uniform number in [0, 1) with 53 random bits.
pub fn uniform<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pki_client::{
        AuthoritySet, Consensus, IdentitySecret, MixKeys, NetworkParams, NodeDescriptor, Roles,
        SignedConsensus, UnverifiedConsensus, VerifiedConsensus, Vote,
    };
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn consensus(bandwidths: &[u32], rng: &mut ChaCha20Rng) -> VerifiedConsensus {
        let authority = IdentitySecret::generate(rng);
        let descriptors = bandwidths
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                let identity = IdentitySecret::generate(rng);
                NodeDescriptor {
                    identity: identity.public(),
                    sequence: 1,
                    addresses: vec![std::net::SocketAddr::from(([10, 0, 0, i as u8 + 1], 4000))],
                    bandwidth: b,
                    roles: Roles {
                        mix: true,
                        services: vec![],
                    },
                    mix_keys: MixKeys {
                        first_epoch: 0,
                        keys: vec![
                            crypto_simd::sphinx::MixSecretKey::generate(rng)
                                .public_key()
                                .0,
                        ],
                    },
                }
                .sign(&identity)
                .unwrap()
            })
            .collect();
        let params = NetworkParams {
            packet_size: 1452,
            hops: 3,
            rho_permille: 1500,
            mean_delay_micros: 1000,
            loops: 2,
            loop_rate_millis: 5000,
            epoch_seconds: 1 << 30,
            genesis_unix: 0,
        };
        let vote = Vote {
            authority: authority.public(),
            epoch: 0,
            descriptors,
        };
        let c = Consensus::compute(0, params, &[&vote], 1);
        let signed = SignedConsensus::new(&c, vec![c.sign(&authority)]);
        UnverifiedConsensus::new(signed)
            .check_signatures(&AuthoritySet::including(authority.public(), []))
            .and_then(|u| u.check_valid_at(c.valid_after, 0))
            .unwrap()
    }

    /// The fast draw and `pki_client::select_hops` (Algorithm 1) give the same law: the
    /// counts of 40,000 draws each, excluding two nodes, agree by a chi-square test
    /// (7 degrees of freedom; 24.3 is the 0.1% critical value).
    #[test]
    fn the_fast_draw_follows_algorithm_1() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let bandwidths = [10u32, 20, 30, 40, 50, 60, 70, 80, 90, 100];
        let c = consensus(&bandwidths, &mut rng);
        let nodes = c.nodes();
        let dir = Directory::new(
            nodes
                .iter()
                .enumerate()
                .map(|(i, d)| (i as u32, f64::from(d.bandwidth))),
        );
        let exclude_ids = [nodes[2].id(), nodes[7].id()];
        let exclude = [2u32, 7];
        let draws = 40_000;
        let mut fast = vec![0f64; nodes.len()];
        let mut reference = vec![0f64; nodes.len()];
        let mut out = [0usize; 1];
        for _ in 0..draws {
            fast[dir.draw(&mut rng, &exclude).unwrap() as usize] += 1.0;
            pki_client::select_hops(&c, 1, &exclude_ids, |_| 1.0, &mut rng, &mut out).unwrap();
            reference[out[0]] += 1.0;
        }
        assert_eq!(fast[2] + fast[7], 0.0);
        // two-sample chi-square over the eight eligible nodes
        let chi: f64 = fast
            .iter()
            .zip(&reference)
            .filter(|(a, b)| **a + **b > 0.0)
            .map(|(a, b)| (a - b).powi(2) / (a + b))
            .sum();
        assert!(chi < 24.3, "chi-square {chi}: {fast:?} vs {reference:?}");
    }

    #[test]
    fn routes_keep_the_engine_rules() {
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let dir = Directory::new((0..6u32).map(|i| (i, 1.0)));
        let mut out = [0u32; MAX_PATH];
        for _ in 0..5_000 {
            // a message from 0 to 3 through two mixes
            let n = dir.route(&mut rng, Some(0), Some(3), 2, &mut out).unwrap();
            assert_eq!(n, 2);
            assert_ne!(out[0], 0, "never the emitter first");
            assert_ne!(out[0], out[1], "never the hop before");
            assert_ne!(out[1], 3, "the last mix is never the destination");
            // one mix that happens to be the destination gets one more after it
            let n = dir.route(&mut rng, Some(0), Some(3), 1, &mut out).unwrap();
            assert!(n == 1 || (n == 2 && out[0] == 3 && out[1] != 3));
        }
        let tiny = Directory::new([(0u32, 1.0)]);
        assert_eq!(tiny.route(&mut rng, Some(0), None, 1, &mut out), None);
    }
}
