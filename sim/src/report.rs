//! What a run counted, its summary, and the CSV files (every series, fixed formatting, so
//! that one seed gives the same bytes).

use std::fmt::Write as _;

use crate::observer::TargetResult;

/// Latency histogram: 1 ms bins up to this many.
const LATENCY_BINS: usize = 600_000;

/// Message latencies, in 1 ms bins (the last bin holds everything longer).
#[derive(Clone, Debug)]
pub struct Latencies {
    bins: Vec<u32>,
    count: u64,
    sum: f64,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            bins: vec![0; LATENCY_BINS],
            count: 0,
            sum: 0.0,
        }
    }
}

impl Latencies {
    /// Records a latency, seconds.
    pub fn add(&mut self, seconds: f64) {
        let i = ((seconds * 1000.0) as usize).min(LATENCY_BINS - 1);
        self.bins[i] += 1;
        self.count += 1;
        self.sum += seconds;
    }

    /// How many.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The mean, seconds.
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            return f64::NAN;
        }
        self.sum / self.count as f64
    }

    /// The `q` quantile, seconds (to the millisecond, upper edge of its bin).
    pub fn quantile(&self, q: f64) -> f64 {
        if self.count == 0 {
            return f64::NAN;
        }
        let want = (q * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (i, &b) in self.bins.iter().enumerate() {
            seen += u64::from(b);
            if seen >= want {
                return (i + 1) as f64 / 1000.0;
            }
        }
        LATENCY_BINS as f64 / 1000.0
    }
}

/// A change of a node's (n-1) alarm (section 5.0.2).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AlarmEvent {
    /// When, seconds.
    pub time: f64,
    /// Which node.
    pub node: u32,
    /// Raised (true) or cleared.
    pub raised: bool,
}

/// What a run counted (after the warm-up, unless said).
#[derive(Clone, Debug, Default)]
pub struct Counts {
    /// Datagrams sent, by what they carry: message packets (every hop), loops, drop cover,
    /// attackers' packets, replayed copies.
    pub datagrams: [u64; 5],
    /// Lost on a link.
    pub lost_link: u64,
    /// Sent to a node that was down.
    pub lost_down: u64,
    /// Dropped by an (n-1) attacker's cut.
    pub cut: u64,
    /// Forwards dropped at random above the forward budget (Algorithm 2).
    pub dropped_budget: u64,
    /// Forwards dropped at a full ready queue.
    pub dropped_queue: u64,
    /// Forwards dropped in high-alert mode.
    pub dropped_alert: u64,
    /// Forwards dropped by a node that does not forward (passive, or a dropping
    /// adversary).
    pub dropped_not_forwarding: u64,
    /// Replays caught by the replay filter.
    pub replays_caught: u64,
    /// Messages refused because the own-data queue was full.
    pub own_full: u64,
    /// Messages sent.
    pub messages: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Of which through storage, after their attempts.
    pub delivered_stored: u64,
    /// Messages given up (never delivered, their chances over).
    pub failed: u64,
    /// Message packets sent (n per attempt).
    pub message_packets: u64,
    /// Latency of the delivered messages (from the application's send to the recipient's
    /// delivery).
    pub latency: Latencies,
    /// Latency of each packet of own data that reached its destination, from its first
    /// datagram to its last.
    pub packet_latency: Latencies,
    /// Alarms raised and cleared (all of the run).
    pub alarms: Vec<AlarmEvent>,
    /// Messages their sender gave up (engine fidelity): (time, sender, why).
    pub undelivered: Vec<(f64, u32, String)>,
    /// Per delivered message with sender vectors: (time, sender, entropy in bits).
    pub sender_entropy: Vec<(f64, u32, f64)>,
    /// Events handled (all of the run).
    pub events: u64,
}

/// Index of message packets in [`Counts::datagrams`].
pub const MESSAGE: usize = 0;
/// Index of loops.
pub const LOOP: usize = 1;
/// Index of drop cover.
pub const COVER: usize = 2;
/// Index of attackers' packets.
pub const FLOOD: usize = 3;
/// Index of replayed copies.
pub const REPLAY: usize = 4;

/// The summary of one run.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The sweep's parameter value (NaN without a sweep).
    pub value: f64,
    /// What was counted.
    pub counts: Counts,
    /// Every target followed.
    pub targets: Vec<TargetResult>,
    /// Waves cut short by their time limit.
    pub waves_cut: u64,
    /// Balanced accuracy of the idle-vs-sending classifier, and of idle-vs-receiving.
    pub classifier: (Option<f64>, Option<f64>),
    /// The watched node's emissions: (time, entropy of their origin, bits).
    pub watched: Vec<(f64, f64)>,
    /// The attack window, if an adversary attacks the watched node: (start, end).
    pub attack: Option<(f64, f64)>,
    /// Nodes.
    pub nodes: usize,
    /// Seconds measured (after the warm-up).
    pub measured_seconds: f64,
    /// The warm-up, seconds.
    pub warmup: f64,
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = xs.fold((0.0, 0u64), |(s, n), x| (s + x, n + 1));
    if n == 0 { f64::NAN } else { s / n as f64 }
}

impl Summary {
    /// Delivered share of the messages resolved (delivered or given up).
    pub fn delivery(&self) -> f64 {
        let resolved = self.counts.delivered + self.counts.failed;
        if resolved == 0 {
            return f64::NAN;
        }
        self.counts.delivered as f64 / resolved as f64
    }

    /// Mean message entropy of the targets, bits.
    pub fn message_entropy(&self) -> f64 {
        mean(self.targets.iter().map(|t| t.message_entropy))
    }

    /// Mean receiver entropy of the targets, bits.
    pub fn receiver_entropy(&self) -> f64 {
        mean(self.targets.iter().map(|t| t.receiver_entropy))
    }

    /// Mean sender entropy of the delivered messages, bits (NaN without sender vectors).
    pub fn sender_entropy(&self) -> f64 {
        mean(self.counts.sender_entropy.iter().map(|s| s.2))
    }

    /// Share of the targets whose recipient the observer's best guess named.
    pub fn who_talks_to_whom(&self) -> f64 {
        mean(
            self.targets
                .iter()
                .map(|t| if t.guessed { 1.0 } else { 0.0 }),
        )
    }

    /// Every datagram sent.
    pub fn datagrams(&self) -> u64 {
        self.counts.datagrams.iter().sum()
    }

    /// Share of the datagrams that are pure cover: loops and drop cover (every hop).
    pub fn cover_share(&self) -> f64 {
        let c = &self.counts.datagrams;
        (c[LOOP] + c[COVER]) as f64 / self.datagrams().max(1) as f64
    }

    /// Pure cover datagrams a second (loops and drop cover, every hop), over the measured
    /// time: the cover bandwidth of the whole network.
    pub fn cover_per_second(&self) -> f64 {
        let c = &self.counts.datagrams;
        (c[LOOP] + c[COVER]) as f64 / self.measured_seconds.max(1e-9)
    }

    /// Share of the datagrams that are drop cover alone.
    pub fn drop_share(&self) -> f64 {
        self.counts.datagrams[COVER] as f64 / self.datagrams().max(1) as f64
    }

    /// Mean entropy of the watched node's emissions before the attack (after the warm-up),
    /// during it, and after it, bits.
    pub fn watched_entropy(&self, warmup: f64) -> [f64; 3] {
        let Some((a, b)) = self.attack else {
            return [mean(self.watched.iter().map(|w| w.1)), f64::NAN, f64::NAN];
        };
        let window = |lo: f64, hi: f64| {
            mean(
                self.watched
                    .iter()
                    .filter(|w| w.0 >= lo && w.0 < hi)
                    .map(|w| w.1),
            )
        };
        [window(warmup, a), window(a, b), window(b, f64::INFINITY)]
    }

    /// The first alarm raised, seconds.
    pub fn first_alarm(&self) -> Option<f64> {
        self.counts.alarms.iter().find(|a| a.raised).map(|a| a.time)
    }
}

/// The header of `summary.csv`.
pub const SUMMARY_HEADER: &str = "scenario,design,fidelity,seed,value,nodes,measured_s,messages,delivered,delivered_stored,failed,delivery,latency_mean_s,latency_p50_s,latency_p99_s,packet_latency_mean_s,message_entropy_bits,receiver_entropy_bits,sender_entropy_bits,targets,waves_cut,who_talks_to_whom,chance_who,classifier_sending,classifier_receiving,datagrams,cover_share,cover_per_s,drop_share,lost_link,lost_down,cut,dropped_budget,dropped_alert,dropped_not_forwarding,replays_caught,alarms_raised,first_alarm_s,watched_entropy_before,watched_entropy_during,watched_entropy_after,events\n";

fn f(x: f64) -> String {
    if x.is_nan() {
        String::new()
    } else {
        format!("{x:.6}")
    }
}

fn o(x: Option<f64>) -> String {
    x.map_or(String::new(), f)
}

/// One row of `summary.csv`.
pub fn summary_row(s: &Summary, scenario: &str, design: &str, fidelity: &str, seed: u64) -> String {
    let c = &s.counts;
    let raised = c.alarms.iter().filter(|a| a.raised).count();
    let w = s.watched_entropy(s.warmup);
    format!(
        "{scenario},{design},{fidelity},{seed},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
        f(s.value),
        s.nodes,
        f(s.measured_seconds),
        c.messages,
        c.delivered,
        c.delivered_stored,
        c.failed,
        f(s.delivery()),
        f(c.latency.mean()),
        f(c.latency.quantile(0.5)),
        f(c.latency.quantile(0.99)),
        f(c.packet_latency.mean()),
        f(s.message_entropy()),
        f(s.receiver_entropy()),
        f(s.sender_entropy()),
        s.targets.len(),
        s.waves_cut,
        f(s.who_talks_to_whom()),
        f(1.0 / (s.nodes.max(2) - 1) as f64),
        o(s.classifier.0),
        o(s.classifier.1),
        s.datagrams(),
        f(s.cover_share()),
        f(s.cover_per_second()),
        f(s.drop_share()),
        c.lost_link,
        c.lost_down,
        c.cut,
        c.dropped_budget,
        c.dropped_alert,
        c.dropped_not_forwarding,
        c.replays_caught,
        raised,
        o(s.first_alarm()),
        f(w[0]),
        f(w[1]),
        f(w[2]),
        c.events,
    )
}

/// `targets.csv`: every target of every run.
pub fn targets_csv(runs: &[Summary]) -> String {
    let mut out = String::from(
        "value,start_s,origin,receiver,message_entropy_bits,receiver_entropy_bits,guessed,accounted\n",
    );
    for s in runs {
        for t in &s.targets {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{}",
                f(s.value),
                f(t.start),
                t.origin,
                t.receiver,
                f(t.message_entropy),
                f(t.receiver_entropy),
                u8::from(t.guessed),
                f(t.accounted)
            );
        }
    }
    out
}

/// `senders.csv`: the sender entropy of every delivered message (with sender vectors).
pub fn senders_csv(runs: &[Summary]) -> String {
    let mut out = String::from("value,time_s,sender,sender_entropy_bits\n");
    for s in runs {
        for (t, x, h) in &s.counts.sender_entropy {
            let _ = writeln!(out, "{},{},{},{}", f(s.value), f(*t), x, f(*h));
        }
    }
    out
}

/// `watch.csv`: the entropy of every datagram the watched node sent.
pub fn watched_csv(runs: &[Summary]) -> String {
    let mut out = String::from("value,time_s,origin_entropy_bits\n");
    for s in runs {
        for (t, h) in &s.watched {
            let _ = writeln!(out, "{},{},{}", f(s.value), f(*t), f(*h));
        }
    }
    out
}

/// `undelivered.csv`: every message its sender gave up (engine fidelity).
pub fn undelivered_csv(runs: &[Summary]) -> String {
    let mut out = String::from("value,time_s,sender,reason\n");
    for s in runs {
        for (t, x, why) in &s.counts.undelivered {
            let _ = writeln!(out, "{},{},{},\"{}\"", f(s.value), f(*t), x, why);
        }
    }
    out
}

/// `alarms.csv`: every alarm raised and cleared.
pub fn alarms_csv(runs: &[Summary]) -> String {
    let mut out = String::from("value,time_s,node,raised\n");
    for s in runs {
        for a in &s.counts.alarms {
            let _ = writeln!(
                out,
                "{},{},{},{}",
                f(s.value),
                f(a.time),
                a.node,
                u8::from(a.raised)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_quantiles_come_from_the_bins() {
        let mut l = Latencies::default();
        for ms in 1..=100 {
            l.add(f64::from(ms) / 1000.0 - 0.0005);
        }
        assert!((l.mean() - 0.05).abs() < 0.001);
        assert_eq!(l.quantile(0.5), 0.050);
        assert_eq!(l.quantile(0.99), 0.099);
        assert!(Latencies::default().mean().is_nan());
    }
}
