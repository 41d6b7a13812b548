//! The global passive observer and its probability vectors (after MiXiM and the Loopix
//! analyses): it sees every datagram (sender, receiver, time) and nothing inside; each
//! datagram gets a distribution, computed from what the observer saw before it, over what
//! it may carry; each node is a pool in which the exponential delay mixes what came in.
//!
//! **What the observer knows.** The datagrams; each node's pool count as it can estimate it
//! (`c`, below); each node's long-run shares: phi_X, the share of X's emissions that are
//! forwards, and psi_X, the share of its arrivals that it forwards (both follow from the
//! public parameters and the load; the simulator gives it the running ratios). It does
//! **not** know which datagram is a forward, own data, a loop or cover: a datagram that
//! leaves X is a forward with probability phi_X (then any packet of X's pool, each as
//! likely, the exponential delay being memoryless) and X's own with probability 1 - phi_X;
//! a datagram that reaches Y is pooled there with probability psi_Y and ends there
//! otherwise. An adversary's own packets are known to it (they are neither pooled nor drawn
//! from a pool), and a node that skips its delay for the observer (section 5.0.3) links
//! what goes in to what comes out.
//!
//! **The pool of node X**: a mass vector P_X and an expected count c_X. A datagram d
//! arriving: P_X += psi_X d, c_X += psi_X. A datagram leaving: it carries
//! phi_X P_X / c_X (+ (1 - phi_X) on X itself for the sender vectors), and
//! P_X -= phi_X P_X / c_X, c_X -= phi_X. With psi = phi = 1 at mixes and 0 at clients
//! this is exactly MiXiM's update, which the Loopix calibration checks.
//!
//! Two kinds of vectors:
//!
//! - **targets** (MiXiM's method): T target messages at a time (a *wave*); a vector on a
//!   datagram is, for each target, the probability that the datagram is it. A target's
//!   mass ends at the datagrams' receivers; the Shannon entropy of where it ended is its
//!   *message entropy* (which datagram delivered it: MiXiM's metric), summed by receiving
//!   node its *receiver entropy*, and the node with the most mass is the observer's guess of
//!   who it talks to. A wave ends when every target's mass has left the network (or after
//!   `wave_seconds`); then every pool is cleared and the next wave begins.
//! - **senders** (optional, N <= 4,096): every datagram carries a distribution over the
//!   nodes that may have originated it; the entropy of the one that delivers a message is
//!   that message's *sender entropy*.

use std::collections::VecDeque;

/// No vector.
pub const NONE: u32 = u32::MAX;

/// A vector lighter than this in every entry is not carried (its mass counts as pruned).
const PRUNE: f32 = 1e-7;

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
    emitted: Vec<u64>,
    emitted_fwd: Vec<u64>,
    arrived: Vec<u64>,
    arrived_fwd: Vec<u64>,
    count: Vec<f64>,
    tpool: Vec<f32>,
    tmass: Vec<f32>,
    tslab: Slab,
    senders: bool,
    spool: Vec<f32>,
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
    /// Waves ended by their time limit rather than by their mass leaving.
    pub waves_cut: u64,
}

impl Observer {
    /// An observer of `n` nodes following `t` targets at a time (waves of at most
    /// `wave_seconds`, ended once less than `residue` of each target's mass is in flight),
    /// with sender vectors if `senders`.
    pub fn new(n: usize, t: usize, senders: bool, wave_seconds: f64, residue: f64) -> Self {
        Observer {
            n,
            t,
            emitted: vec![0; n],
            emitted_fwd: vec![0; n],
            arrived: vec![0; n],
            arrived_fwd: vec![0; n],
            count: vec![0.0; n],
            tpool: vec![0.0; n * t],
            tmass: vec![0.0; n],
            tslab: Slab::new(t),
            senders,
            spool: if senders { vec![0.0; n * n] } else { vec![] },
            sslab: Slab::new(n),
            scratch: vec![0.0; t.max(if senders { n } else { 0 })],
            targets: Vec::with_capacity(t),
            recv: vec![0.0; n * t],
            touched: vec![Vec::new(); t],
            wave_start: None,
            watch: None,
            wave_seconds,
            residue,
            results: Vec::new(),
            waves_cut: 0,
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

    /// phi_X: the share of X's emissions that are forwards.
    fn phi(&self, x: usize) -> f32 {
        ((self.emitted_fwd[x] as f64 + 0.5) / (self.emitted[x] as f64 + 1.0)) as f32
    }

    /// psi_Y: the share of Y's arrivals that it forwards.
    fn psi(&self, y: usize) -> f32 {
        ((self.arrived_fwd[y] as f64 + 0.5) / (self.arrived[y] as f64 + 1.0)) as f32
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
        if known {
            return Vectors::NONE;
        }
        if let Some(v) = linked {
            return v;
        }
        let phi = self.phi(x);
        self.emitted[x] += 1;
        if forward {
            self.emitted_fwd[x] += 1;
        }
        let c = self.count[x] as f32;
        let frac = if c > 0.0 { (phi / c).min(1.0) } else { 0.0 };
        self.count[x] = (self.count[x] - f64::from(phi)).max(0.0);
        let mut out = Vectors::NONE;
        // targets
        if let Some((origin, receiver)) = target.filter(|(o, _)| self.wants_target(*o)) {
            let j = self.targets.len();
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
            self.tslab.get_mut(v)[j] = 1.0;
            out.target = v;
        } else if frac > 0.0 && self.tmass[x] > 0.0 {
            let t = self.t;
            let row = &mut self.tpool[x * t..(x + 1) * t];
            let mut drawn = 0.0;
            let mut heavy = false;
            for (s, p) in self.scratch[..t].iter_mut().zip(row.iter_mut()) {
                *s = frac * *p;
                *p -= *s;
                drawn += *s;
                heavy |= *s > PRUNE;
            }
            self.tmass[x] = (self.tmass[x] - drawn).max(0.0);
            if frac >= 1.0 {
                row.fill(0.0);
                self.tmass[x] = 0.0;
            }
            if heavy {
                let v = self.tslab.alloc();
                self.tslab.get_mut(v).copy_from_slice(&self.scratch[..t]);
                out.target = v;
            } else {
                for (j, tg) in self.targets.iter_mut().enumerate() {
                    tg.pruned += f64::from(self.scratch[j]);
                }
            }
        }
        // senders: phi of the pool, 1 - phi on x itself, normalised
        if self.senders {
            let n = self.n;
            let v = self.sslab.alloc();
            let row = &mut self.spool[x * n..(x + 1) * n];
            let d = self.sslab.get_mut(v);
            let mut sum = 0.0f32;
            if frac > 0.0 {
                for (o, p) in d.iter_mut().zip(row.iter_mut()) {
                    let m = frac * *p;
                    *o = m;
                    *p -= m;
                    sum += m;
                }
            }
            let own = if frac > 0.0 { 1.0 - phi } else { 1.0 };
            d[x] += own;
            sum += own;
            if sum > 0.0 {
                for o in d.iter_mut() {
                    *o /= sum;
                }
            }
            out.sender = v;
        }
        out
    }

    /// A datagram carrying `v` reaches node `y`: pooled with probability psi_Y, ended there
    /// otherwise. `forward`: whether `y` truly forwards it (for psi's running ratio).
    /// `linked`: the observer links it through `y` (a delay-skipping node), so it keeps its
    /// vectors (returned) if `y` forwards it, and ends at `y` for sure otherwise. Returns
    /// the vectors the packet keeps ([`Vectors::NONE`] unless linked and forwarded) and,
    /// when `sender_entropy`, the entropy of its sender vector (bits).
    pub fn arrive(
        &mut self,
        y: usize,
        v: Vectors,
        forward: bool,
        linked: bool,
        sender_entropy: bool,
    ) -> (Vectors, Option<f64>) {
        let h = if sender_entropy && v.sender != NONE {
            Some(entropy_bits(self.sslab.get(v.sender)))
        } else {
            None
        };
        if linked && forward {
            return (v, h);
        }
        let psi = if linked {
            0.0
        } else {
            let psi = self.psi(y);
            self.arrived[y] += 1;
            if forward {
                self.arrived_fwd[y] += 1;
            }
            self.count[y] += f64::from(psi);
            psi
        };
        if v.target != NONE {
            let t = self.t;
            let d = self.tslab.get(v.target);
            let row = &mut self.tpool[y * t..(y + 1) * t];
            let mut added = 0.0;
            for (j, (p, &m)) in row.iter_mut().zip(d).enumerate() {
                if m <= 0.0 {
                    continue;
                }
                *p += psi * m;
                added += psi * m;
                let ended = f64::from((1.0 - psi) * m);
                if ended > 0.0
                    && let Some(tg) = self.targets.get_mut(j)
                {
                    tg.s1 += ended;
                    tg.s2 += ended * ended.ln();
                    let r = &mut self.recv[j * self.n + y];
                    if *r == 0.0 {
                        self.touched[j].push(y as u32);
                    }
                    *r += ended;
                }
            }
            self.tmass[y] += added;
            self.tslab.release(v.target);
        }
        if v.sender != NONE {
            let n = self.n;
            let d = self.sslab.get(v.sender);
            for (p, &m) in self.spool[y * n..(y + 1) * n].iter_mut().zip(d) {
                *p += psi * m;
            }
            self.sslab.release(v.sender);
        }
        (Vectors::NONE, h)
    }

    /// A datagram carrying `v` never arrived (lost on the link, dropped by an attacker, or
    /// its receiver was down): its mass is lost.
    pub fn lost(&mut self, v: Vectors) {
        if v.target != NONE {
            let d = self.tslab.get(v.target);
            for (tg, &m) in self.targets.iter_mut().zip(d) {
                tg.lost += f64::from(m);
            }
            self.tslab.release(v.target);
        }
        self.sslab.release(v.sender);
    }

    /// Node `x` went down: what its pools held is lost.
    pub fn node_down(&mut self, x: usize) {
        let t = self.t;
        for (tg, p) in self
            .targets
            .iter_mut()
            .zip(&mut self.tpool[x * t..(x + 1) * t])
        {
            tg.lost += f64::from(*p);
            *p = 0.0;
        }
        self.tmass[x] = 0.0;
        self.count[x] = 0.0;
        if self.senders {
            let n = self.n;
            self.spool[x * n..(x + 1) * n].fill(0.0);
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
        self.tpool.fill(0.0);
        self.tmass.fill(0.0);
        self.tslab.clear();
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

/// A running window classifier of what each node does, from what the observer counts:
/// per node and window, the datagrams it sent and received, against whether it sent or
/// received a message. At the end it guesses "sending" for a window whose emitted count is
/// above the node's own mean (and "receiving" likewise from its arrivals), and reports the
/// balanced accuracy: 0.5 is chance.
#[derive(Debug)]
pub struct Classifier {
    window: f64,
    next: f64,
    current: Vec<[u32; 2]>,
    label: Vec<[bool; 2]>,
    /// Per node: the windows so far (emitted, arrived, sent, received).
    history: Vec<VecDeque<(u32, u32, bool, bool)>>,
}

/// Windows kept per node, at most (the oldest forgotten).
const MAX_WINDOWS: usize = 4096;

impl Classifier {
    /// Over `n` nodes, windows of `window` seconds from `start`.
    pub fn new(n: usize, window: f64, start: f64) -> Self {
        Classifier {
            window,
            next: start + window,
            current: vec![[0; 2]; n],
            label: vec![[false; 2]; n],
            history: vec![VecDeque::new(); n],
        }
    }

    /// Counts a datagram sent by `x` (`out`) or received by it.
    pub fn datagram(&mut self, x: usize, out: bool) {
        self.current[x][usize::from(!out)] += 1;
    }

    /// Node `x` sent (`sent`) or received a message in this window.
    pub fn message(&mut self, x: usize, sent: bool) {
        self.label[x][usize::from(!sent)] = true;
    }

    /// Closes the windows that ended by `now`.
    pub fn tick(&mut self, now: f64) {
        while now >= self.next {
            self.next += self.window;
            for ((c, l), h) in self
                .current
                .iter_mut()
                .zip(self.label.iter_mut())
                .zip(self.history.iter_mut())
            {
                if h.len() == MAX_WINDOWS {
                    h.pop_front();
                }
                h.push_back((c[0], c[1], l[0], l[1]));
                *c = [0; 2];
                *l = [false; 2];
            }
        }
    }

    /// Balanced accuracy of (sending, receiving), each `None` when no window had both
    /// labels.
    pub fn accuracy(&self) -> (Option<f64>, Option<f64>) {
        let mut score = [[0u64; 4]; 2]; // per kind: tp, positives, tn, negatives
        for h in &self.history {
            if h.len() < 2 {
                continue;
            }
            let mean_out = h.iter().map(|w| f64::from(w.0)).sum::<f64>() / h.len() as f64;
            let mean_in = h.iter().map(|w| f64::from(w.1)).sum::<f64>() / h.len() as f64;
            for &(out, inn, sent, received) in h {
                for (k, (value, mean, label)) in [(out, mean_out, sent), (inn, mean_in, received)]
                    .into_iter()
                    .enumerate()
                {
                    let guess = f64::from(value) > mean;
                    if label {
                        score[k][1] += 1;
                        score[k][0] += u64::from(guess);
                    } else {
                        score[k][3] += 1;
                        score[k][2] += u64::from(!guess);
                    }
                }
            }
        }
        let balanced = |s: [u64; 4]| {
            (s[1] > 0 && s[3] > 0)
                .then(|| 0.5 * (s[0] as f64 / s[1] as f64 + s[2] as f64 / s[3] as f64))
        };
        (balanced(score[0]), balanced(score[1]))
    }
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
        let mut o = Observer::new(n, k, true, 1e9, 1e-6);
        assert!(!o.tick(0.0, 0.0));
        let mix = k;
        // make the mix's shares exactly forwarding (psi = phi = 1) and the receiver's 0
        o.emitted[mix] = u64::MAX / 4;
        o.emitted_fwd[mix] = u64::MAX / 4;
        o.arrived[mix] = u64::MAX / 4;
        o.arrived_fwd[mix] = u64::MAX / 4;
        o.arrived[k + 1] = u64::MAX / 4;
        let mut inputs = Vec::new();
        for s in 0..k {
            let v = o.emit(0.0, s, false, false, None, Some((s as u32, (k + 1) as u32)));
            assert_ne!(v.target, NONE);
            inputs.push(v);
        }
        for v in inputs {
            o.arrive(mix, v, true, false, false);
        }
        let mut outputs = Vec::new();
        for _ in 0..k {
            outputs.push(o.emit(0.0, mix, true, false, None, None));
        }
        let mut hs = Vec::new();
        for v in outputs {
            let (_, h) = o.arrive(k + 1, v, false, false, true);
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
        let mut o = Observer::new(4, 1, true, 1e9, 1e-6);
        let v = o.emit(0.0, 1, false, false, None, None);
        let (_, h) = o.arrive(2, v, false, false, true);
        assert_eq!(h, Some(0.0));
        assert_eq!(o.emit(0.0, 3, true, true, None, None), Vectors::NONE);
        assert!((entropy_bits(&[1.0, 1.0, 1.0, 1.0]) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn the_classifier_sees_a_count_that_follows_the_label_and_not_one_that_does_not() {
        let mut c = Classifier::new(2, 1.0, 0.0);
        for w in 0..100 {
            let sending = w % 2 == 0;
            // node 0 sends more datagrams when it sends; node 1 always the same
            for _ in 0..(10 + if sending { 5 } else { 0 }) {
                c.datagram(0, true);
            }
            for _ in 0..10 {
                c.datagram(1, true);
            }
            if sending {
                c.message(0, true);
                c.message(1, true);
            }
            c.tick(f64::from(w + 1));
        }
        let (send, _) = c.accuracy();
        // node 0 is read perfectly, node 1 never (all at the mean: "idle"): (1 + 0.5) / 2
        assert!((send.unwrap() - 0.75).abs() < 1e-9, "{send:?}");
    }
}
