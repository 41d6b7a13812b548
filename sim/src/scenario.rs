//! The scenario file: what network runs, for how long, under which workload, churn and
//! adversaries. TOML, every field documented here, unknown fields refused (a typo is an
//! error, not a silent default). `sim/scenarios/*.toml` are the shipped examples.
//!
//! The paper's symbols (section 4): B the constant emission rate of a node, rho the
//! leniency factor (own data at most rho B / h), h the hops of a path, lambda the rate of
//! the exponential per-hop delay (mean 1/lambda), L the loops of b_loop packets a second
//! each; k and n the symbols needed and sent per message (section 4.5), q the probability
//! that one packet arrives.

use serde::Deserialize;

/// Which network design runs.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Design {
    /// The paper's: every node a mix, constant rate B filled by Algorithm 2.
    #[default]
    Mixed,
    /// The Loopix-style baseline: clients, providers and stratified mixes ([`Loopix`]).
    Loopix,
}

/// How faithfully the nodes are run.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Fidelity {
    /// The real scheduler, emitter (Algorithm 2) and path law (Algorithm 1), packets as
    /// opaque identities: 10,000 to 100,000 nodes.
    #[default]
    Fast,
    /// The real engine with real Sphinx through `stack::sim` (hundreds of nodes).
    Engine,
}

/// A whole scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A name for the output.
    #[serde(default)]
    pub name: String,
    /// The design.
    #[serde(default)]
    pub design: Design,
    /// The fidelity.
    #[serde(default)]
    pub fidelity: Fidelity,
    /// Virtual seconds to run.
    pub seconds: f64,
    /// Virtual seconds before anything is measured (pools fill, loops learn).
    #[serde(default = "default_warmup")]
    pub warmup: f64,
    /// The nodes of the paper's design.
    #[serde(default)]
    pub network: Network,
    /// The links.
    #[serde(default)]
    pub link: Link,
    /// The applications.
    #[serde(default)]
    pub workload: Workload,
    /// Nodes joining, leaving, crashing.
    #[serde(default)]
    pub churn: Churn,
    /// What is measured.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The baseline's shape (with `design = "loopix"`).
    #[serde(default)]
    pub loopix: Loopix,
    /// Adversaries, any number.
    #[serde(default)]
    pub adversary: Vec<Adversary>,
    /// Runs the scenario once per value of one parameter (a series for the plots).
    #[serde(default)]
    pub sweep: Option<Sweep>,
}

fn default_warmup() -> f64 {
    20.0
}

/// A class of nodes by bandwidth.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BandClass {
    /// Share of the nodes in this class (the shares are normalised).
    pub share: f64,
    /// B of its nodes, packets a second.
    pub b: f64,
}

/// The paper's design: every node a mix.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    /// N, the nodes.
    pub nodes: usize,
    /// The distribution of B over the nodes.
    pub bandwidth: Vec<BandClass>,
    /// h: hops of a message's path, the destination included (h - 1 mixes).
    pub hops: u32,
    /// rho: the leniency factor, own data at most rho B / h.
    pub rho: f64,
    /// 1/lambda: the mean per-hop delay, milliseconds.
    pub mean_delay_ms: f64,
    /// L: loops a node keeps.
    pub loops: u32,
    /// b_loop: packets a second each loop costs.
    pub loop_rate: f64,
    /// Forwards that may wait for a slot at a node (Algorithm 2's ready queue).
    pub forward_queue: usize,
    /// Seconds before a loop counts as lost.
    pub loop_timeout: f64,
    /// Length of an epoch (one consensus), seconds.
    pub epoch_seconds: f64,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            nodes: 100,
            bandwidth: vec![BandClass {
                share: 1.0,
                b: 20.0,
            }],
            hops: 3,
            rho: 1.5,
            mean_delay_ms: 100.0,
            loops: 2,
            loop_rate: 1.0,
            forward_queue: 256,
            loop_timeout: 10.0,
            epoch_seconds: 1200.0,
        }
    }
}

/// The links between nodes.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Link {
    /// One-way delay, milliseconds.
    pub delay_ms: f64,
    /// A uniform extra delay up to this, milliseconds.
    pub jitter_ms: f64,
    /// Probability that a datagram is lost.
    pub loss: f64,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            delay_ms: 10.0,
            jitter_ms: 0.0,
            loss: 0.0,
        }
    }
}

/// The applications' messages.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// Share of the nodes whose application sends.
    pub senders: f64,
    /// Messages a second per sending application (a Poisson process).
    pub rate: f64,
    /// Contacts of each sender: it sends to one of them, uniformly, each time (0: to any
    /// other node, uniformly, as MiXiM's clients do).
    pub contacts: usize,
    /// k: packets a message needs to be decoded (section 4.5).
    pub k: u32,
    /// n: packets sent per attempt (n >= k).
    pub n: u32,
    /// Attempts before the message goes to a storage provider (the paper: three).
    pub attempts: u32,
    /// Seconds without an ACK before the next attempt.
    pub retry_after: f64,
    /// Seconds a returning recipient takes to collect what was stored for it.
    pub collect_after: f64,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            senders: 0.5,
            rate: 1.0,
            contacts: 1,
            k: 1,
            n: 1,
            attempts: 3,
            retry_after: 5.0,
            collect_after: 5.0,
        }
    }
}

/// Churn, per epoch.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Churn {
    /// Share of the nodes that leave in each epoch; as many absent ones come back.
    pub per_epoch: f64,
    /// Of those leaving, the share that crash (down at once, still in the consensus until
    /// the next epoch) rather than leave gracefully (unbind, then go at the epoch's end).
    pub crash: f64,
    /// Share of the nodes that unbind for an epoch (passive: they still send and receive,
    /// through others, but are not drawn and forward nothing), then bind again.
    pub unbind: f64,
}

/// What is measured.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// T: target messages whose probability vectors are followed at once (a wave).
    pub targets: usize,
    /// Longest a wave is followed, seconds.
    pub wave_seconds: f64,
    /// A wave ends once every target has less than this share of its mass left in flight.
    pub wave_residue: f64,
    /// Also follow a distribution over all senders on every packet (dense: N floats per
    /// packet; at most 4,096 nodes).
    pub sender_vectors: bool,
    /// Window of the idle-vs-sending classifier, seconds.
    pub classifier_window: f64,
    /// Only messages of this node become targets (the node an adversary attacks).
    pub watch: Option<usize>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            targets: 32,
            wave_seconds: 30.0,
            wave_residue: 0.01,
            sender_vectors: false,
            classifier_window: 10.0,
            watch: None,
        }
    }
}

/// The Loopix-style baseline: clients send through their provider into `layers` layers of
/// mixes (stratified), then the recipient's provider. Rates are per second.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Loopix {
    /// Clients (the users; the workload's senders are among them).
    pub clients: usize,
    /// Providers (0: clients send straight into the first layer, as MiXiM's calibration).
    pub providers: usize,
    /// Layers of mixes.
    pub layers: usize,
    /// Mixes in each layer.
    pub mixes_per_layer: usize,
    /// Mean delay at each mix (and provider), milliseconds.
    pub mean_delay_ms: f64,
    /// lambda_P: a client's payload slots (a real message if one waits, else drop cover).
    pub payload_rate: f64,
    /// lambda_D: a client's extra drop cover.
    pub drop_rate: f64,
    /// lambda_L: a client's loops.
    pub loop_rate: f64,
    /// lambda_M: each mix's loops.
    pub mix_loop_rate: f64,
    /// Send real messages as soon as they are made instead of in payload slots (MiXiM's
    /// clients: a Poisson process of real messages, no cover).
    pub send_immediately: bool,
}

impl Default for Loopix {
    fn default() -> Self {
        Loopix {
            clients: 1000,
            providers: 10,
            layers: 3,
            mixes_per_layer: 10,
            mean_delay_ms: 333.0,
            payload_rate: 2.0,
            drop_rate: 1.0,
            loop_rate: 1.0,
            mix_loop_rate: 1.0,
            send_immediately: false,
        }
    }
}

/// An adversary.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Adversary {
    /// The (n-1) attack of section 5.0.2: from `start` to `end` seconds every datagram to
    /// `target` is dropped but those of node `attacker`.
    NMinusOne {
        /// The node attacked.
        target: usize,
        /// The attacker's own node.
        attacker: usize,
        /// When it begins, seconds.
        start: f64,
        /// When it ends, seconds.
        end: f64,
    },
    /// The flooder of section 5.0.1: from `start` to `end`, `rate` packets a second routed
    /// attacker -> target -> attacker, known to the observer, to fill the target's forward
    /// budget.
    Flooder {
        /// The node flooded.
        target: usize,
        /// The attacker's node.
        attacker: usize,
        /// Packets a second.
        rate: f64,
        /// When it begins, seconds.
        start: f64,
        /// When it ends, seconds.
        end: f64,
    },
    /// Nodes that forward without their delay (section 5.0.3) and tell the observer: a
    /// packet through one is linked in to out.
    SkipDelays {
        /// Share of the nodes.
        fraction: f64,
    },
    /// Nodes that drop every packet they should forward.
    Drop {
        /// Share of the nodes.
        fraction: f64,
    },
    /// Nodes that send every packet they forward twice (a replay, which the next hop's
    /// replay filter catches).
    Replay {
        /// Share of the nodes.
        fraction: f64,
    },
}

/// A series: the scenario run once per value of `parameter`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    /// Which parameter: `mean_delay_ms` (both designs), `loss`, `churn`, `senders`,
    /// `loopix_cover` (lambda_D = lambda_L = lambda_M = value), `bandwidth`
    /// (B of every node), `skip_fraction`, `drop_fraction` (of those adversaries),
    /// `flood_rate` (of the flooders).
    pub parameter: String,
    /// Its values.
    pub values: Vec<f64>,
}

/// Why a scenario was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Not TOML, or a field is wrong or unknown.
    #[error("scenario: {0}")]
    Parse(#[from] toml::de::Error),
    /// A value out of range; the message names it.
    #[error("scenario: {0}")]
    Invalid(String),
}

impl Scenario {
    /// Parses and checks a scenario.
    pub fn from_toml(text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = toml::from_str(text)?;
        s.check()?;
        Ok(s)
    }

    /// Checks ranges; the error names the field and what it must be.
    pub fn check(&self) -> Result<(), ScenarioError> {
        let bad = |m: &str| Err(ScenarioError::Invalid(m.to_string()));
        if !(self.seconds > 0.0 && self.seconds <= 1e6) {
            return bad("seconds must be in (0, 1,000,000]");
        }
        if !(self.warmup >= 0.0 && self.warmup < self.seconds) {
            return bad("warmup must be in [0, seconds)");
        }
        let n = &self.network;
        if n.nodes < 4 || n.nodes > 1_000_000 {
            return bad("network.nodes must be 4 to 1,000,000");
        }
        if n.bandwidth.is_empty()
            || n.bandwidth
                .iter()
                .any(|c| !(c.share >= 0.0 && c.b > 0.0 && c.b <= 1e6))
            || n.bandwidth.iter().map(|c| c.share).sum::<f64>() <= 0.0
        {
            return bad("network.bandwidth: classes with share >= 0 (some > 0) and 0 < b <= 1e6");
        }
        if !(2..=5).contains(&n.hops) {
            return bad("network.hops (h) must be 2 to 5");
        }
        if !(n.mean_delay_ms >= 0.0 && n.mean_delay_ms <= 60_000.0) {
            return bad("network.mean_delay_ms must be 0 to 60,000");
        }
        if !(self.link.loss >= 0.0 && self.link.loss < 1.0) {
            return bad("link.loss must be in [0, 1)");
        }
        if !(self.link.delay_ms >= 0.0 && self.link.jitter_ms >= 0.0) {
            return bad("link.delay_ms and link.jitter_ms must be >= 0");
        }
        let w = &self.workload;
        if !((0.0..=1.0).contains(&w.senders) && (0.0..=1e4).contains(&w.rate)) {
            return bad("workload: senders in [0, 1], 0 <= rate <= 10,000");
        }
        if w.k == 0 || w.n < w.k || w.n > 64 || w.attempts == 0 || w.retry_after <= 0.0 {
            return bad("workload: 1 <= k <= n <= 64, attempts >= 1, retry_after > 0");
        }
        let c = &self.churn;
        if ![c.per_epoch, c.crash, c.unbind]
            .iter()
            .all(|x| (0.0..=1.0).contains(x))
        {
            return bad("churn: per_epoch, crash and unbind must be in [0, 1]");
        }
        let m = &self.metrics;
        if m.targets == 0 || m.targets > 1024 {
            return bad("metrics.targets must be 1 to 1,024");
        }
        if m.sender_vectors && self.total_nodes() > 4096 {
            return bad("metrics.sender_vectors needs at most 4,096 nodes");
        }
        let l = &self.loopix;
        if self.design == Design::Loopix
            && (l.clients < 2 || l.layers == 0 || l.mixes_per_layer == 0 || l.layers > 8)
        {
            return bad("loopix: clients >= 2, 1 <= layers <= 8, mixes_per_layer >= 1");
        }
        for a in &self.adversary {
            let nodes = self.total_nodes();
            match *a {
                Adversary::NMinusOne {
                    target, attacker, ..
                }
                | Adversary::Flooder {
                    target, attacker, ..
                } if target >= nodes || attacker >= nodes || target == attacker => {
                    return bad("adversary: target and attacker must be distinct nodes");
                }
                Adversary::SkipDelays { fraction }
                | Adversary::Drop { fraction }
                | Adversary::Replay { fraction }
                    if !(0.0..=1.0).contains(&fraction) =>
                {
                    return bad("adversary: fraction must be in [0, 1]");
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Every node of the design: N, or clients + providers + mixes.
    pub fn total_nodes(&self) -> usize {
        match self.design {
            Design::Mixed => self.network.nodes,
            Design::Loopix => {
                self.loopix.clients
                    + self.loopix.providers
                    + self.loopix.layers * self.loopix.mixes_per_layer
            }
        }
    }

    /// This scenario with the sweep's `parameter` set to `value`.
    pub fn with(&self, parameter: &str, value: f64) -> Result<Scenario, ScenarioError> {
        let mut s = self.clone();
        s.sweep = None;
        match parameter {
            "mean_delay_ms" => {
                s.network.mean_delay_ms = value;
                s.loopix.mean_delay_ms = value;
            }
            "loss" => s.link.loss = value,
            "churn" => s.churn.per_epoch = value,
            "senders" => s.workload.senders = value,
            "bandwidth" => {
                for c in &mut s.network.bandwidth {
                    c.b = value;
                }
            }
            "skip_fraction" | "drop_fraction" => {
                for a in &mut s.adversary {
                    match a {
                        Adversary::SkipDelays { fraction } if parameter == "skip_fraction" => {
                            *fraction = value
                        }
                        Adversary::Drop { fraction } if parameter == "drop_fraction" => {
                            *fraction = value
                        }
                        _ => {}
                    }
                }
            }
            "flood_rate" => {
                for a in &mut s.adversary {
                    if let Adversary::Flooder { rate, .. } = a {
                        *rate = value;
                    }
                }
            }
            "loopix_cover" => {
                s.loopix.drop_rate = value;
                s.loopix.loop_rate = value;
                s.loopix.mix_loop_rate = value;
            }
            other => {
                return Err(ScenarioError::Invalid(format!(
                    "sweep.parameter: unknown parameter {other:?}"
                )));
            }
        }
        s.check()?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_typos_and_bad_ranges_are_refused() {
        let s = Scenario::from_toml("seconds = 10\nwarmup = 1\n").unwrap();
        assert_eq!(s.design, Design::Mixed);
        assert_eq!(s.network.hops, 3);
        assert!(Scenario::from_toml("seconds = 10\nwarmup = 1\nsecnods = 3\n").is_err());
        assert!(Scenario::from_toml("seconds = 10\nwarmup = 1\n[network]\nhops = 9\n").is_err());
        let a = Scenario::from_toml(
            "seconds = 10\nwarmup = 1\n[[adversary]]\nkind = \"n-minus-one\"\ntarget = 1\nattacker = 2\nstart = 1\nend = 5\n",
        )
        .unwrap();
        assert_eq!(a.adversary.len(), 1);
        let swept = s.with("loss", 0.1).unwrap();
        assert_eq!(swept.link.loss, 0.1);
        assert!(s.with("nonsense", 1.0).is_err());
        assert!(s.with("loss", 1.5).is_err());
    }
}
