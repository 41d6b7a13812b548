//! The global passive observer and its probability vectors (after MiXiM and the Loopix
//! analyses): it sees every datagram (sender, receiver, time) and nothing inside; each
//! datagram gets a distribution, computed from what the observer saw before it, over what
//! it may carry; each node is a pool in which the exponential delay mixes what came in.
//!
//! **What the observer knows.** The datagrams; the public parameters, so that a message
//! passes exactly `pools` pools (h - 1 mixes in the paper's design; providers and layers in
//! the baseline); each node's pool count as it can estimate it (`c`, below); each node's
//! long-run share phi_X of emissions that are forwards, and, per stage, the share psi_s of
//! arrivals that are held and forwarded (these follow from the parameters and the load; the
//! simulator gives it the running ratios). It does **not** know which datagram is a
//! forward, own data, a loop or cover: a datagram that leaves X is a forward with
//! probability phi_X (then any packet of X's pool, each as likely, the exponential delay
//! being memoryless) and X's own otherwise. An adversary's own packets are known to it
//! (neither pooled nor drawn from a pool), and a node that skips its delay for the
//! observer (section 5.0.3) links what goes in to what comes out.
//!
//! Every vector is split by **stage**, the number of pools its mass has passed: a datagram
//! X originates is at stage 0, one drawn from X's pool at stage s + 1 for mass pooled at
//! stage s. **The pool of node X**: mass P_X[s] per stage and an expected count c_X. A
//! datagram arriving: c_X += psi_X, and its mass is pooled by stage. A datagram leaving:
//! it carries phi_X P_X[s] / c_X at stage s + 1 (and, for the sender vectors, 1 - phi_X on
//! X at stage 0); P_X -= phi_X P_X / c_X, c_X -= phi_X. With phi = psi = 1 at mixes and 0 at
//! clients this is MiXiM's update, which the Loopix calibration checks.
//!
//! Two kinds of vectors:
//!
//! - **targets** (MiXiM's method): T target messages at a time (a *wave*); a vector on a
//!   datagram is, for each target and stage, the probability that the datagram is it. A
//!   target is a message, so its mass is pooled at every arrival before stage `pools` and
//!   ends at the arrival at stage `pools`. The Shannon entropy of the datagrams it ended at
//!   is its *message entropy* (MiXiM's metric); summed by receiving node, its *receiver
//!   entropy*; the node with the most mass is the observer's guess of who it talks to. A
//!   wave ends when every target's mass has ended (or after `wave_seconds`); then every pool
//!   is cleared and the next wave begins.
//! - **senders** (optional, N <= 4,096): every datagram carries, per stage, a mass over
//!   the nodes that may have originated it; arriving mass at stage s is pooled with
//!   probability psi_s (cover ends at its first hop, a message at stage `pools`). The
//!   stage-`pools` part of the datagram that delivers a message, normalised, is that
//!   message's sender distribution; its entropy is the *sender entropy*.

/// No vector.
pub const NONE: u32 = u32::MAX;

/// A vector lighter than this in every entry is not carried (its mass counts as pruned).
const PRUNE: f32 = 1e-7;

/// The window of the running shares phi and psi, in datagrams of the node: long enough to
/// be steady, short enough to follow a node that changes (an attacked node in high alert).
const SHARE_WINDOW: f32 = 512.0;

/// Most stages followed (a datagram past them keeps the last).
pub const MAX_STAGES: usize = 8;

/// Vectors of one dimension, allocated from one buffer.
#[derive(Debug, Default)]
struct Slab {
    dim: usize,
    data: Vec<f32>,
    free: Vec<u32>,
}

impl Slab {
    fn new(dim: usize) -> Self {
        Slab {
            dim,
            data: Vec::new(),
            free: Vec::new(),
        }
    }

    /// A zeroed vector.
    fn alloc(&mut self) -> u32 {
        if let Some(i) = self.free.pop() {
            let at = i as usize * self.dim;
            self.data[at..at + self.dim].fill(0.0);
            return i;
        }
        let i = (self.data.len() / self.dim.max(1)) as u32;
        self.data.resize(self.data.len() + self.dim, 0.0);
        i
    }

    fn get(&self, i: u32) -> &[f32] {
        let at = i as usize * self.dim;
        &self.data[at..at + self.dim]
    }

    fn get_mut(&mut self, i: u32) -> &mut [f32] {
        let at = i as usize * self.dim;
        &mut self.data[at..at + self.dim]
    }

    fn release(&mut self, i: u32) {
        if i != NONE {
            self.free.push(i);
        }
    }

    fn clear(&mut self) {
        self.data.clear();
        self.free.clear();
    }
}

/// One target message of a wave.
#[derive(Clone, Debug)]
struct Target {
    start: f64,
    origin: u32,
    receiver: u32,
    /// Sum of the mass that ended, and of m ln m over the datagrams it ended at.
    s1: f64,
    s2: f64,
    lost: f64,
    pruned: f64,
}

/// What became of one target message.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TargetResult {
    /// When it was sent, seconds.
    pub start: f64,
    /// Its sender.
    pub origin: u32,
    /// Its recipient.
    pub receiver: u32,
    /// Entropy of the datagram that delivered it, bits (MiXiM's metric).
    pub message_entropy: f64,
    /// Entropy of the node it ended at, bits (receiver anonymity).
    pub receiver_entropy: f64,
    /// Whether the node with the most mass was the recipient (who talks to whom).
    pub guessed: bool,
    /// Share of its mass that ended at a node (the rest was lost or pruned).
    pub accounted: f64,
}

/// What a datagram carries: its target vector and its sender vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vectors {
    /// Target vector, or [`NONE`].
    pub target: u32,
    /// Sender vector, or [`NONE`].
    pub sender: u32,
}

impl Vectors {
    /// Neither.
    pub const NONE: Vectors = Vectors {
        target: NONE,
        sender: NONE,
    };
}

/// The observer.
#[derive(Debug)]
pub struct Observer {
    n: usize,
    t: usize,
    /// Pools a message passes.
    pools: usize,
    /// Stages followed: pools + 2 (loops pass one pool more than messages).
    stages: usize,
    /// phi_X and psi_X as running averages over the last ~[`SHARE_WINDOW`] datagrams.
    phi: Vec<f32>,
    psi: Vec<f32>,
    /// Per stage: arrivals, and those held and forwarded.
    stage_arrived: [u64; MAX_STAGES],
    stage_pooled: [u64; MAX_STAGES],
    count: Vec<f64>,
    tpool: Vec<f32>,
    tmass: Vec<f32>,
    tslab: Slab,
    senders: bool,
    spool: Vec<f32>,
    smass: Vec<f32>,
    sslab: Slab,
    scratch: Vec<f32>,
    targets: Vec<Target>,
    recv: Vec<f64>,
    touched: Vec<Vec<u32>>,
    wave_start: Option<f64>,
    /// Only messages of this node become targets.
    watch: Option<u32>,
    wave_seconds: f64,
    residue: f64,
    /// Every target followed to its end.
    pub results: Vec<TargetResult>,
    /// With sender vectors and a watched node: per datagram it sent, (time, the entropy of
    /// who originated it, all stages together): how well the watched node's sending hides
    /// among its forwarding (sender unobservability).
    pub watched: Vec<(f64, f64)>,
    /// Waves ended by their time limit rather than by their mass leaving.
    pub waves_cut: u64,
    /// Waves ended so far.
    wave: u64,
    /// The target the last [`Observer::emit`] made, if it made one.
    last_target: Option<usize>,
}

impl Observer {
    /// The observer a scenario asks for on a network of `n` nodes: a message passes
    /// h - 1 pools (the last hop delivers), the metrics section sets the rest, and the
    /// watched node, if any, is followed.
    pub fn for_scenario(sc: &crate::scenario::Scenario, n: usize) -> Self {
        let mut o = Observer::new(
            n,
            (sc.network.hops as usize).saturating_sub(1).max(1),
            sc.metrics.targets,
            sc.metrics.sender_vectors,
            sc.metrics.wave_seconds,
            sc.metrics.wave_residue,
        );
        o.watch(sc.metrics.watch.map(|w| w as u32));
        o
    }

    /// An observer of `n` nodes whose messages pass `pools` pools, following `t` targets
    /// at a time (waves of at most `wave_seconds`, ended once less than `residue` of each
    /// target's mass is in flight), with sender vectors if `senders`.
    pub fn new(
        n: usize,
        pools: usize,
        t: usize,
        senders: bool,
        wave_seconds: f64,
        residue: f64,
    ) -> Self {
        let pools = pools.clamp(1, MAX_STAGES - 2);
        let stages = pools + 2;
        Observer {
            n,
            t,
            pools,
            stages,
            phi: vec![0.5; n],
            psi: vec![0.5; n],
            stage_arrived: [0; MAX_STAGES],
            stage_pooled: [0; MAX_STAGES],
            count: vec![0.0; n],
            tpool: vec![0.0; n * t * stages],
            tmass: vec![0.0; n],
            tslab: Slab::new(t * stages),
            senders,
            spool: if senders {
                vec![0.0; n * n * stages]
            } else {
                vec![]
            },
            smass: if senders { vec![0.0; n] } else { vec![] },
            sslab: Slab::new(n * stages),
            scratch: vec![0.0; (t * stages).max(if senders { n * stages } else { 0 })],
            targets: Vec::with_capacity(t),
            recv: vec![0.0; n * t],
            touched: vec![Vec::new(); t],
            wave_start: None,
            watch: None,
            wave_seconds,
            residue,
            results: Vec::new(),
            watched: Vec::new(),
            waves_cut: 0,
            wave: 0,
            last_target: None,
        }
    }

    /// The current wave (a count of the waves ended).
    pub fn wave(&self) -> u64 {
        self.wave
    }

    /// The target the last [`Self::emit`] made: its index in the wave.
    pub fn last_target(&self) -> Option<usize> {
        self.last_target
    }

    /// Target `j` of wave `wave` turned out to be for `receiver` (when the driver learns
    /// the recipient only as the packet ends); ignored once the wave is over.
    pub fn set_receiver(&mut self, wave: u64, j: usize, receiver: u32) {
        if wave == self.wave
            && let Some(t) = self.targets.get_mut(j)
        {
            t.receiver = receiver;
        }
    }

    /// Only messages sent by `node` become targets (to follow an attacked node).
    pub fn watch(&mut self, node: Option<u32>) {
        self.watch = node;
    }

    /// Whether sender vectors are followed.
    pub fn senders(&self) -> bool {
        self.senders
    }

    /// phi_X: the share of X's recent emissions that are forwards.
    fn phi(&self, x: usize) -> f32 {
        self.phi[x]
    }

    /// psi_Y: the share of Y's recent arrivals that it holds and forwards.
    fn psi(&self, y: usize) -> f32 {
        self.psi[y]
    }

    /// psi_s: the share of arrivals at stage s that are held and forwarded.
    fn psi_stage(&self, s: usize) -> f32 {
        ((self.stage_pooled[s] as f64 + 0.5) / (self.stage_arrived[s] as f64 + 1.0)) as f32
    }

    /// Whether a wave waits for targets: the next message packet offered becomes one.
    pub fn wants_target(&self, origin: u32) -> bool {
        self.wave_start.is_some()
            && self.targets.len() < self.t
            && self.watch.is_none_or(|w| w == origin)
    }

    /// A datagram leaves node `x`. `forward`: whether it truly is a forward (for phi's
    /// running ratio only; the vector does not depend on it). `known`: an adversary's own
    /// packet (no vector). `linked`: the vectors the packet carried in, when the observer
    /// links it through `x` (a delay-skipping node's forward). `target`: this is the first
    /// datagram of a message from `origin` to `receiver` that becomes a target (see
    /// [`Self::wants_target`]). Returns the datagram's vectors.
    pub fn emit(
        &mut self,
        now: f64,
        x: usize,
        forward: bool,
        known: bool,
        linked: Option<Vectors>,
        target: Option<(u32, u32)>,
    ) -> Vectors {
        self.last_target = None;
        if known {
            return Vectors::NONE;
        }
        if let Some(v) = linked {
            // through a node that tells: the same mass, one pool further
            if v.target != NONE {
                shift(self.tslab.get_mut(v.target), self.t);
            }
            if v.sender != NONE {
                shift(self.sslab.get_mut(v.sender), self.n);
            }
            return v;
        }
        let phi = self.phi(x);
        self.phi[x] += (f32::from(u8::from(forward)) - phi) / SHARE_WINDOW;
        let c = self.count[x] as f32;
        let frac = if c > 0.0 { (phi / c).min(1.0) } else { 0.0 };
        self.count[x] = (self.count[x] - f64::from(phi)).max(0.0);
        let mut out = Vectors::NONE;
        let stages = self.stages;
        // targets
        if let Some((origin, receiver)) = target.filter(|(o, _)| self.wants_target(*o)) {
            let j = self.targets.len();
            self.last_target = Some(j);
            self.targets.push(Target {
                start: now,
                origin,
                receiver,
                s1: 0.0,
                s2: 0.0,
                lost: 0.0,
                pruned: 0.0,
            });
            let v = self.tslab.alloc();
            // stage 0: the observer knows this datagram is the target
            self.tslab.get_mut(v)[j] = 1.0;
            out.target = v;
        } else if frac > 0.0 && self.tmass[x] > 0.0 {
            let t = self.t;
            let dim = t * stages;
            let row = &mut self.tpool[x * dim..(x + 1) * dim];
            let scratch = &mut self.scratch[..dim];
            scratch.fill(0.0);
            let (drawn, heavy) = draw(row, scratch, frac, t);
            self.tmass[x] = if frac >= 1.0 {
                0.0
            } else {
                (self.tmass[x] - drawn).max(0.0)
            };
            if heavy {
                let v = self.tslab.alloc();
                self.tslab.get_mut(v).copy_from_slice(scratch);
                out.target = v;
            } else {
                for (j, tg) in self.targets.iter_mut().enumerate() {
                    let m: f32 = (0..stages).map(|s| scratch[s * t + j]).sum();
                    tg.pruned += f64::from(m);
                }
            }
        }
        // senders: phi of the pool one stage on, 1 - phi on x itself at stage 0
        if self.senders {
            let n = self.n;
            let dim = n * stages;
            let v = self.sslab.alloc();
            let d = self.sslab.get_mut(v);
            let mut own = 1.0;
            if frac > 0.0 && self.smass[x] > 0.0 {
                let row = &mut self.spool[x * dim..(x + 1) * dim];
                let (drawn, _) = draw(row, d, frac, n);
                self.smass[x] = if frac >= 1.0 {
                    0.0
                } else {
                    (self.smass[x] - drawn).max(0.0)
                };
                own = 1.0 - phi;
            }
            d[x] += own;
            if self.watch == Some(x as u32) {
                let mut by_origin = vec![0.0f32; n];
                for s in 0..stages {
                    for (o, m) in by_origin.iter_mut().zip(&d[s * n..(s + 1) * n]) {
                        *o += m;
                    }
                }
                self.watched.push((now, entropy_bits(&by_origin)));
            }
            out.sender = v;
        }
        out
    }

    /// A datagram carrying `v` reaches node `y`. `stage`: the pools it truly passed;
    /// `pooled`: whether `y` truly holds and forwards it (both for the running ratios
    /// only). `linked`: the observer links it through `y` (a delay-skipping node), so it
    /// keeps its vectors (returned) when `y` forwards it. Returns the vectors the packet
    /// keeps ([`Vectors::NONE`] unless linked and forwarded) and, when `sender_entropy`,
    /// the entropy of its sender distribution (bits): the stage-`pools` part, normalised.
    pub fn arrive(
        &mut self,
        y: usize,
        v: Vectors,
        stage: usize,
        pooled: bool,
        linked: bool,
        sender_entropy: bool,
    ) -> (Vectors, Option<f64>) {
        let stages = self.stages;
        let h = if sender_entropy && v.sender != NONE {
            let n = self.n;
            let d = self.sslab.get(v.sender);
            Some(entropy_bits(&d[self.pools * n..(self.pools + 1) * n]))
        } else {
            None
        };
        if linked && pooled {
            return (v, h);
        }
        let psi = self.psi(y);
        self.psi[y] += (f32::from(u8::from(pooled)) - psi) / SHARE_WINDOW;
        let s = stage.min(stages - 1);
        self.stage_arrived[s] += 1;
        if pooled {
            self.stage_pooled[s] += 1;
        }
        self.count[y] += f64::from(psi);
        if v.target != NONE {
            let t = self.t;
            let dim = t * stages;
            let d = self.tslab.get(v.target);
            let row = &mut self.tpool[y * dim..(y + 1) * dim];
            let mut added = 0.0;
            for s in 0..stages {
                for j in 0..t {
                    let m = d[s * t + j];
                    if m <= 0.0 {
                        continue;
                    }
                    if s < self.pools {
                        // a message before its last pool is held here
                        row[s * t + j] += m;
                        added += m;
                    } else if let Some(tg) = self.targets.get_mut(j) {
                        let ended = f64::from(m);
                        tg.s1 += ended;
                        tg.s2 += ended * ended.ln();
                        let r = &mut self.recv[j * self.n + y];
                        if *r == 0.0 {
                            self.touched[j].push(y as u32);
                        }
                        *r += ended;
                    }
                }
            }
            self.tmass[y] += added;
            self.tslab.release(v.target);
        }
        if v.sender != NONE {
            let n = self.n;
            let dim = n * stages;
            let psis: Vec<f32> = (0..stages).map(|s| self.psi_stage(s)).collect();
            let d = self.sslab.get(v.sender);
            let row = &mut self.spool[y * dim..(y + 1) * dim];
            let mut added = 0.0;
            for (s, &p) in psis.iter().enumerate() {
                for (r, &m) in row[s * n..(s + 1) * n]
                    .iter_mut()
                    .zip(&d[s * n..(s + 1) * n])
                {
                    *r += p * m;
                    added += p * m;
                }
            }
            self.smass[y] += added;
            self.sslab.release(v.sender);
        }
        (Vectors::NONE, h)
    }

    /// A datagram carrying `v` never arrived (lost on the link, dropped by an attacker, or
    /// its receiver was down): its mass is lost.
    pub fn lost(&mut self, v: Vectors) {
        if v.target != NONE {
            let t = self.t;
            let d = self.tslab.get(v.target);
            for (j, tg) in self.targets.iter_mut().enumerate() {
                let m: f32 = (0..self.stages).map(|s| d[s * t + j]).sum();
                tg.lost += f64::from(m);
            }
            self.tslab.release(v.target);
        }
        self.sslab.release(v.sender);
    }

    /// Node `x` went down: what its pools held is lost.
    pub fn node_down(&mut self, x: usize) {
        let t = self.t;
        let dim = t * self.stages;
        let row = &mut self.tpool[x * dim..(x + 1) * dim];
        for (j, tg) in self.targets.iter_mut().enumerate() {
            let m: f32 = (0..self.stages).map(|s| row[s * t + j]).sum();
            tg.lost += f64::from(m);
        }
        row.fill(0.0);
        self.tmass[x] = 0.0;
        self.count[x] = 0.0;
        if self.senders {
            let dim = self.n * self.stages;
            self.spool[x * dim..(x + 1) * dim].fill(0.0);
            self.smass[x] = 0.0;
        }
    }

    /// Starts, ends and restarts waves. Call every second or so. Returns true when a wave
    /// ended: the caller must then forget every target vector its packets hold (set them to
    /// [`NONE`]) before the next datagram; the observer has already cleared its own.
    pub fn tick(&mut self, now: f64, warmup: f64) -> bool {
        let Some(start) = self.wave_start else {
            if now >= warmup {
                self.wave_start = Some(now);
            }
            return false;
        };
        let full = self.targets.len() == self.t;
        let drained = self
            .targets
            .iter()
            .all(|tg| 1.0 - tg.s1 - tg.lost - tg.pruned < self.residue);
        let late = now - start > self.wave_seconds;
        if !((full && drained) || late) {
            return false;
        }
        if late && !(full && drained) {
            self.waves_cut += 1;
        }
        self.end_wave();
        self.wave_start = Some(now);
        true
    }

    fn end_wave(&mut self) {
        let n = self.n;
        for (j, tg) in self.targets.iter().enumerate() {
            if tg.s1 <= 0.0 {
                continue;
            }
            let message_entropy = (tg.s1.ln() - tg.s2 / tg.s1) / std::f64::consts::LN_2;
            let mut best = (0.0, u32::MAX);
            let mut s2 = 0.0;
            for &y in &self.touched[j] {
                let m = self.recv[j * n + y as usize];
                s2 += m * m.ln();
                if m > best.0 {
                    best = (m, y);
                }
            }
            let receiver_entropy = (tg.s1.ln() - s2 / tg.s1) / std::f64::consts::LN_2;
            self.results.push(TargetResult {
                start: tg.start,
                origin: tg.origin,
                receiver: tg.receiver,
                message_entropy,
                receiver_entropy,
                guessed: best.1 == tg.receiver,
                accounted: tg.s1,
            });
        }
        for (j, list) in self.touched.iter_mut().enumerate() {
            for &y in list.iter() {
                self.recv[j * n + y as usize] = 0.0;
            }
            list.clear();
        }
        self.targets.clear();
        self.wave += 1;
        self.tpool.fill(0.0);
        self.tmass.fill(0.0);
        self.tslab.clear();
    }
}

/// Draws `frac` of a pool `row` (stages of `width`) into `out`, one stage further: returns
/// the mass drawn and whether any entry is worth carrying.
fn draw(row: &mut [f32], out: &mut [f32], frac: f32, width: usize) -> (f32, bool) {
    let stages = row.len() / width.max(1);
    let mut drawn = 0.0;
    let mut heavy = false;
    for s in 0..stages {
        let to = (s + 1).min(stages - 1);
        for j in 0..width {
            let p = &mut row[s * width + j];
            if *p == 0.0 {
                continue;
            }
            let m = if frac >= 1.0 { *p } else { frac * *p };
            *p -= m;
            out[to * width + j] += m;
            drawn += m;
            heavy |= m > PRUNE;
        }
    }
    (drawn, heavy)
}

/// Moves a vector's mass one stage on (the last stage keeps its own).
fn shift(v: &mut [f32], width: usize) {
    let stages = v.len() / width.max(1);
    for s in (1..stages).rev() {
        for j in 0..width {
            let m = v[(s - 1) * width + j];
            v[s * width + j] += m;
            v[(s - 1) * width + j] = 0.0;
        }
    }
}

/// Shannon entropy of a distribution, bits (entries need not sum to 1: normalised here).
pub fn entropy_bits(p: &[f32]) -> f64 {
    let sum: f64 = p.iter().map(|&x| f64::from(x)).sum();
    if sum <= 0.0 {
        return 0.0;
    }
    let mut h = 0.0;
    for &x in p {
        if x > 0.0 {
            let q = f64::from(x) / sum;
            h -= q * q.log2();
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One pool mix fed by k honest datagrams at once, each a target: what leaves spreads
    /// every target over k outputs, log2(k) bits each.
    #[test]
    fn a_pool_of_k_spreads_a_target_over_k_outputs() {
        let k = 8;
        // node 0..k-1 senders, node k the mix, node k+1 the receiver
        let n = k + 2;
        let mut o = Observer::new(n, 1, k, true, 1e9, 1e-6);
        assert!(!o.tick(0.0, 0.0));
        let mix = k;
        // make the mix's shares exactly forwarding (psi = phi = 1) and the others' 0
        o.phi.fill(0.0);
        o.psi.fill(0.0);
        o.phi[mix] = 1.0;
        o.psi[mix] = 1.0;
        o.stage_arrived[0] = u64::MAX / 4;
        o.stage_pooled[0] = u64::MAX / 4;
        let mut inputs = Vec::new();
        for s in 0..k {
            let v = o.emit(0.0, s, false, false, None, Some((s as u32, (k + 1) as u32)));
            assert_ne!(v.target, NONE);
            inputs.push(v);
        }
        for v in inputs {
            o.arrive(mix, v, 0, true, false, false);
        }
        let mut outputs = Vec::new();
        for _ in 0..k {
            outputs.push(o.emit(0.0, mix, true, false, None, None));
        }
        let mut hs = Vec::new();
        for v in outputs {
            let (_, h) = o.arrive(k + 1, v, 1, false, false, true);
            hs.push(h.unwrap());
        }
        assert!(o.tick(1.0, 0.0));
        assert_eq!(o.results.len(), k);
        for r in &o.results {
            assert!(
                (r.message_entropy - (k as f64).log2()).abs() < 0.01,
                "{r:?}"
            );
            assert!(r.receiver_entropy.abs() < 1e-6, "one receiver: {r:?}");
            assert!(r.guessed);
            assert!((r.accounted - 1.0).abs() < 1e-3);
        }
        // the sender vectors: each output is any of the k senders (the mix itself is never
        // a source, phi being 1)
        for h in hs {
            assert!((h - (k as f64).log2()).abs() < 0.05, "{h}");
        }
    }

    #[test]
    fn a_node_that_only_sends_its_own_leaks_its_sender_and_a_known_packet_no_mass() {
        let mut o = Observer::new(4, 1, 1, true, 1e9, 1e-6);
        // a datagram node 1 originates, then node 2 holds it and sends it on to node 3
        let v = o.emit(0.0, 1, false, false, None, None);
        o.arrive(2, v, 0, true, false, false);
        o.phi[2] = 1.0;
        let w = o.emit(0.0, 2, true, false, None, None);
        let (_, h) = o.arrive(3, w, 1, false, false, true);
        assert!(h.unwrap().abs() < 1e-6, "{h:?}");
        assert_eq!(o.emit(0.0, 3, true, true, None, None), Vectors::NONE);
        assert!((entropy_bits(&[1.0, 1.0, 1.0, 1.0]) - 2.0).abs() < 1e-9);
    }
}
