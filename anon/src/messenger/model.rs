//! The redundancy and timeout model (section 4.5 of the paper): q, the per-packet delivery
//! probability, estimated from this node's loops; n from the binomial tail; the timeouts
//! from the Erlang quantile of a path's h - 1 exponential delays.

use std::time::Duration;

use engine::Paths;

use super::{
    ACK_SURBS, MAX_REPLY_SURBS, MIN_LOOP_OUTCOMES, MessageError, Messenger, OBJECT_OVERHEAD,
    PRIOR_Q, SURB_BYTES, SendOptions,
};
use crate::coding;
use crate::latency::erlang_quantile;
use crate::wire;

impl Messenger {
    /// Feeds the loop outcomes the engine counted (returned, lost): q is estimated from
    /// them (section 4.4: loops measure what a message would meet).
    pub fn set_loop_outcomes(&mut self, returned: u64, lost: u64) {
        let n = returned + lost;
        if n < MIN_LOOP_OUTCOMES {
            return;
        }
        let p = returned as f64 / n as f64;
        // a lower confidence bound, two standard errors down
        let lower = p - 2.0 * (p * (1.0 - p) / n as f64).sqrt();
        self.q_loops = Some(lower.clamp(0.05, 1.0));
    }

    /// q for a path of `hops` hops: a loop crosses hops + 1 links (out through h mixes
    /// and back), a message `hops`, so q = q_loop^(h / (h + 1)).
    pub fn q(&self, hops: usize) -> f64 {
        let h = self.paths.as_ref().map_or(3, Paths::default_hops) as f64;
        match self.q_loops {
            Some(ql) => ql.powf(hops as f64 / (h + 1.0)),
            None => PRIOR_Q,
        }
    }

    /// The symbol size: what a packet's plaintext holds past the symbol header, aligned.
    pub fn symbol_size(&self) -> Option<usize> {
        let p = self.paths.as_ref()?.max_plaintext();
        let t = p.checked_sub(wire::SYMBOL_HEADER)? / coding::ALIGNMENT * coding::ALIGNMENT;
        (t > 0).then_some(t)
    }

    /// How long one hop-path takes at most, as the timeouts count it: the 99.9% quantile of
    /// the h - 1 delays, plus the allowance.
    pub fn path_bound(&self, hops: usize) -> Duration {
        let mean = self
            .paths
            .as_ref()
            .map_or(Duration::ZERO, Paths::mean_delay);
        erlang_quantile(hops.saturating_sub(1), mean, 0.999) + self.config.allowance
    }

    /// How long a message of `len` bytes sent alone takes at most to be declared offline:
    /// every attempt's packets leave at the own-data rate, then its timeout runs.
    pub fn offline_bound(&self, len: usize, options: &SendOptions) -> Option<Duration> {
        let hops = self.hops_for(options).ok()?;
        let t = self.symbol_size()?;
        let k = coding::source_symbols(len + Self::object_overhead(options.reply_surbs), t);
        let n = coding::symbols_for(k, self.q(hops), self.config.target, 4 * k + 64);
        let per_attempt = Duration::from_secs_f64((n + 1) as f64 / self.config.own_rate.max(0.1))
            + self.attempt_timeout(hops);
        Some(per_attempt * u32::from(self.config.attempts))
    }

    /// The time from the last packet of an attempt handed out to its timeout: the own
    /// packets queued ahead leave, the symbols cross the path, the recipient waits its
    /// quiet time, its answer crosses back.
    pub fn attempt_timeout(&self, hops: usize) -> Duration {
        let backlog =
            Duration::from_secs_f64(self.config.own_ahead as f64 / self.config.own_rate.max(0.1));
        backlog + self.path_bound(hops) * 3
    }

    pub(super) fn hops_for(&self, options: &SendOptions) -> Result<usize, MessageError> {
        let paths = self.paths.as_ref().ok_or(MessageError::NoConsensus)?;
        let hops = options.hops.unwrap_or_else(|| paths.default_hops());
        if !(2..=crypto_simd::sphinx::MAX_HOPS).contains(&hops) {
            return Err(MessageError::Hops(hops));
        }
        Ok(hops)
    }

    /// The most data a reply through `surbs` SURBs carries, with symbols of `t` bytes.
    pub fn reply_capacity(surbs: usize, t: usize) -> usize {
        // one symbol beyond k, so decoding rarely fails for want of symbols
        let k = surbs.saturating_sub(1).max(surbs.min(1));
        (k * t).saturating_sub(OBJECT_OVERHEAD)
    }

    /// The most data a message carries (the object overhead with `reply_surbs` SURBs).
    pub fn object_overhead(reply_surbs: u8) -> usize {
        OBJECT_OVERHEAD + SURB_BYTES * (ACK_SURBS + usize::from(reply_surbs))
    }

    pub(super) fn max_object(&self) -> usize {
        self.config.max_message + Self::object_overhead(MAX_REPLY_SURBS)
    }
}
