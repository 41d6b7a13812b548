//! Which provider takes a box, and how far each answers: the providers' answer rates
//! (q of the binomial model for stored symbols) and the order a box's providers are asked.

use super::*;

impl Offline {
    /// q of the binomial model for stored symbols: the mean answer rate of the providers
    /// that take the boxes (those not asked last, see [`Self::order`]).
    pub(super) fn answer_rate(&self, providers: &[[u8; 32]]) -> f64 {
        let best = providers
            .iter()
            .map(|p| self.rate_of(p))
            .fold(0.0f64, f64::max);
        let alive: Vec<f64> = providers
            .iter()
            .map(|p| self.rate_of(p))
            .filter(|r| *r >= ALIVE * best)
            .collect();
        if alive.is_empty() {
            return self.config.reliability_prior;
        }
        (alive.iter().sum::<f64>() / alive.len() as f64).clamp(0.05, 1.0)
    }

    pub(super) fn rate_of(&self, sp: &[u8; 32]) -> f64 {
        match self.sp.get(sp) {
            Some(s) if s.samples >= MIN_SAMPLES => s.rate,
            _ => self.config.reliability_prior,
        }
    }

    pub(super) fn sample(&mut self, sp: [u8; 32], answered: bool) {
        let prior = self.config.reliability_prior;
        let s = self.sp.entry(sp).or_insert(SpStats {
            samples: 0,
            rate: prior,
        });
        s.samples = s.samples.saturating_add(1);
        let x = if answered { 1.0 } else { 0.0 };
        s.rate += 0.2 * (x - s.rate);
    }

    /// The providers of a box in the order to ask them: rendezvous hashing of the box ID,
    /// the ones that stopped answering last. "Stopped" is relative to the best provider:
    /// when this node itself was cut off, every provider's rate fell alike, and none is
    /// singled out.
    pub(super) fn order(&self, providers: &[[u8; 32]], box_id: &[u8; 32]) -> Vec<[u8; 32]> {
        let best = providers
            .iter()
            .map(|p| self.rate_of(p))
            .fold(0.0f64, f64::max);
        let mut scored: Vec<(bool, [u8; 8], [u8; 32])> = providers
            .iter()
            .map(|sp| {
                let h = Sha256::new()
                    .chain_update(b"mixed-offline-v1 provider")
                    .chain_update(box_id)
                    .chain_update(sp)
                    .finalize();
                let mut score = [0u8; 8];
                score.copy_from_slice(&h[..8]);
                (self.rate_of(sp) < ALIVE * best, score, *sp)
            })
            .collect();
        // alive first, then the highest score
        scored.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        scored.into_iter().map(|(_, _, sp)| sp).collect()
    }
}

/// The providers of the storage service in the messenger's consensus, by node ID.
pub(super) fn providers(messenger: &Messenger) -> Vec<[u8; 32]> {
    let Some(paths) = messenger.paths() else {
        return Vec::new();
    };
    let mut out: Vec<[u8; 32]> = paths
        .consensus()
        .nodes()
        .iter()
        .filter(|n| n.roles.services.iter().any(|s| s == STORAGE_ROLE))
        .map(|n| n.id())
        .collect();
    out.sort_unstable();
    out
}
