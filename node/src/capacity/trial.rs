//! What one trial of a capacity search measured, over its own window of the node's
//! metrics.

use super::load::Samples;
use crate::metrics::LATENESS_BUCKETS;

/// A trial tolerates one forward-budget drop in this many packets sent.
pub const NOISE: f64 = 10_000.0;

/// What one trial measured, over its own window.
#[derive(Clone, Debug)]
pub struct Trial {
    /// B of the node under test.
    pub bandwidth: f64,
    /// Packets a second offered.
    pub offered: f64,
    /// Packets sent to the node.
    pub sent: u64,
    /// Packets the kernel refused to send (a full buffer).
    pub refused: u64,
    /// Seconds of sending.
    pub seconds: f64,
    /// Forwards that left the node, a second of sending.
    pub forwards: f64,
    /// Slots (every packet that left), cover and loops, a second of the window.
    pub slots: f64,
    /// Drop cover, a second of the window.
    pub cover: f64,
    /// Loops, a second of the window.
    pub loops: f64,
    /// Core seconds the node's core threads used, a second of the window.
    pub core_load: f64,
    /// Lateness quantiles p50, p99, p99.9 (each the upper bound of its histogram bucket),
    /// seconds.
    pub lateness: [f64; 3],
    /// The p99 lateness allowed ([`BenchNet::lateness_bound`](super::BenchNet::lateness_bound)), seconds.
    pub bound: f64,
    /// Departures later than `bound`, of all in the window (the histogram's cumulative
    /// counts interpolated between its buckets).
    pub late_share: f64,
    /// Drops in the window, by reason (those not zero).
    pub drops: Vec<(String, f64)>,
    /// Packets of the packet size that reached the sink (forwards and cover).
    pub at_sink: u64,
}

impl Trial {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn from_window(
        bound: f64,
        bandwidth: f64,
        offered: f64,
        sent: u64,
        seconds: f64,
        window: f64,
        cpu: f64,
        refused: u64,
        at_sink: u64,
        before: &Samples,
        after: &Samples,
    ) -> Trial {
        let diff = |name: &str| after.get(name) - before.get(name);
        let sent_of = |c: &str| diff(&format!("mixed_packets_sent_total{{category=\"{c}\"}}"));
        let slots = ["forward", "own", "loop", "cover", "control"]
            .iter()
            .map(|c| sent_of(c))
            .sum::<f64>();
        let count = diff("mixed_slot_lateness_seconds_count");
        let below = |le: f64| {
            diff(&format!(
                "mixed_slot_lateness_seconds_bucket{{le=\"{le}\"}}"
            ))
        };
        // the cumulative count at `x`, linear between the buckets around it
        let below_interpolated = |x: f64| {
            let mut lower = (0.0, 0.0);
            for le in LATENESS_BUCKETS {
                let c = below(le);
                if le >= x {
                    let (l, cl) = lower;
                    return cl + (c - cl) * (x - l) / (le - l);
                }
                lower = (le, c);
            }
            count
        };
        let quantile = |q: f64| {
            LATENESS_BUCKETS
                .iter()
                .copied()
                .find(|&le| below(le) >= q * count)
                .unwrap_or(f64::INFINITY)
        };
        let drops = after
            .starting("mixed_drops_total{")
            .map(|(n, v)| {
                let reason = n.split('"').nth(1).unwrap_or(n).to_owned();
                (reason, v - before.get(n))
            })
            .filter(|(_, v)| *v > 0.0)
            .collect();
        Trial {
            bandwidth,
            offered,
            sent,
            refused,
            seconds,
            forwards: sent_of("forward") / seconds.max(1e-9),
            slots: slots / window,
            cover: sent_of("cover") / window,
            loops: sent_of("loop") / window,
            core_load: cpu / window,
            lateness: [quantile(0.5), quantile(0.99), quantile(0.999)],
            bound,
            late_share: if count > 0.0 {
                1.0 - below_interpolated(bound) / count
            } else {
                1.0
            },
            drops,
            at_sink,
        }
    }

    /// Drops of a reason in the window.
    pub fn drops_of(&self, reason: &str) -> f64 {
        self.drops
            .iter()
            .filter(|(r, _)| r == reason)
            .map(|(_, v)| *v)
            .sum()
    }

    /// Core seconds a slot, on average over the window.
    pub fn cpu_per_slot(&self) -> f64 {
        self.core_load / self.slots.max(1e-9)
    }

    /// Whether the node kept up: p99 lateness under `bound`, no forward-budget drop
    /// but one in [`NOISE`] of the packets sent (a stall of the machine of a few
    /// milliseconds fills the ready queue past the drop ramp's start), nothing refused on
    /// the way in, every offered packet forwarded but 0.1%.
    pub fn on_time(&self) -> bool {
        self.late_share <= 0.01
            && self.drops_of("forward_budget") <= self.sent as f64 / NOISE
            && self.refused == 0
            && self.forwards * self.seconds >= 0.999 * self.sent as f64
    }
}
