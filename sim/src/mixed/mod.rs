//! The paper's design in the fast mode: every node a mix emitting at its constant rate B
//! through the real emitter (`scheduler::Emitter`, Algorithm 2), forwards held for
//! exponential delays (mean 1/lambda) in the real timer wheel (`scheduler::TimerWheel`),
//! paths by Algorithm 1's law (`crate::paths`), the (n-1) alarm by the engine's own loop
//! tracker (`engine::loops::LoopTracker`), incoming shaping as the engine does it (a
//! delivery takes the place of one of the next loops, one loop in four always kept).
//! Packets are opaque identities: no cryptography.
//!
//! What it leaves out of the engine, and why: the reliability factor of Algorithm 1 (a
//! table per builder of every node would not fit 100,000 nodes); ACKs, NACKs and SURBs
//! (a sender learns that its message arrived at once: an oracle, so the ACK traffic is
//! not on the wire); storage providers (a message whose attempts failed is collected by
//! its recipient `collect_after` seconds after it is up again). The engine fidelity runs
//! all of that for real.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use engine::loops::{Alarm, LoopTracker};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use scheduler::{Emission, EmissionParams, Emitter, ForwardDrop, Timestamp};

use crate::classifier::Classifier;
use crate::observer::{Observer, Vectors};
use crate::paths::{Directory, MAX_PATH, uniform};
use crate::report::{AlarmEvent, COVER, Counts, FLOOD, LOOP, MESSAGE, REPLAY, Summary};
use crate::scenario::{Adversary, Scenario};
use crate::world::{Clock, Kind, Messages, Packet, Packets, Watch, at, exp_gap, link_delay, secs};

mod events;

/// Own packets a node queues at most (the engine's `own_queue`).
const OWN_QUEUE: usize = 256;
/// Loops tracked in flight per node (the engine's `max_loops`).
const MAX_LOOPS: usize = 4096;
/// Seconds after the scenario's end for the messages in flight, in retries or stored to
/// arrive (every node up again, no new message).
pub const DRAIN: f64 = 300.0;

/// What a dishonest node does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Honest,
    /// Forwards at once and tells the observer (section 5.0.3).
    SkipDelays,
    /// Drops what it should forward.
    Drop,
    /// Sends every forward twice.
    Replay,
}

#[derive(Debug)]
struct Node {
    b: f64,
    emitter: Option<Emitter<u32>>,
    up: bool,
    /// Wants to be in the consensus (bound).
    bound: bool,
    /// In this epoch's consensus, and in the previous one (forwards under its paths).
    listed: bool,
    listed_before: bool,
    /// Leaves at the next epoch (graceful).
    leaving: bool,
    own: VecDeque<u32>,
    loops: LoopTracker,
    shaping: u32,
    loop_slots: u64,
    alert: bool,
    role: Role,
    contacts: Vec<u32>,
    /// Generation of its slot chain (a restart starts a new one).
    generation: u32,
    /// Messages stored for it while it was down: (slot, generation).
    stored: Vec<(u32, u32)>,
}

impl Node {
    fn forwards(&self) -> bool {
        self.up && !self.alert && self.role != Role::Drop && (self.listed || self.listed_before)
    }
}

/// Events other than packets and slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// The observer's and the classifier's clock, every second.
    Tick,
    /// An epoch begins.
    Epoch,
    /// Node's application sends a message.
    Send(u32),
    /// A message's ACK did not come in time.
    Retry(u32, u32),
    /// A stored message is collected.
    Collect(u32, u32),
    /// A node crashes.
    Crash(u32),
    /// A node comes (back) up.
    Join(u32),
    /// Adversary `i` begins, sends a packet, ends.
    AttackStart(usize),
    Flood(usize),
    AttackEnd(usize),
}

/// The paper's network in the fast mode.
#[derive(Debug)]
pub struct Mixed {
    sc: Scenario,
    rng: ChaCha20Rng,
    nodes: Vec<Node>,
    dir: Directory,
    packets: Packets,
    messages: Messages,
    clock: Clock<Ev>,
    slots: BinaryHeap<Reverse<(Timestamp, u32, u32)>>,
    watch: Watch,
    /// Per node under an (n-1) cut: the one node whose datagrams still reach it.
    cut: Vec<Option<u32>>,
    /// Adversaries active now.
    attacking: Vec<bool>,
    loop_seq: u64,
    now: Timestamp,
    mean_delay: f64,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A node's emission parameters are refused (Algorithm 2).
    #[error("node {node}: B = {b}: {error}")]
    Emission {
        /// The node.
        node: usize,
        /// Its B.
        b: f64,
        /// Why.
        error: scheduler::ParamsError,
    },
}

fn emission_params(sc: &Scenario, b: f64) -> EmissionParams {
    EmissionParams {
        b,
        rho: sc.network.rho,
        h: sc.network.hops,
        l: sc.network.loops,
        b_loop: sc.network.loop_rate,
        forward_queue: sc.network.forward_queue,
    }
}

impl Mixed {
    /// The network of `sc`, everything random from `seed`.
    pub fn new(sc: &Scenario, seed: u64) -> Result<Self, SetupError> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let n = sc.network.nodes;
        let total_share: f64 = sc.network.bandwidth.iter().map(|c| c.share).sum();
        let mut nodes = Vec::with_capacity(n);
        let mut rate_sum = 0.0;
        for i in 0..n {
            // classes in order, by share
            let pos = (i as f64 + 0.5) / n as f64 * total_share;
            let mut acc = 0.0;
            let mut b = sc.network.bandwidth[0].b;
            for c in &sc.network.bandwidth {
                acc += c.share;
                b = c.b;
                if pos < acc {
                    break;
                }
            }
            rate_sum += b;
            let emitter = Emitter::new(emission_params(sc, b), Timestamp::ZERO, &mut rng)
                .map_err(|error| SetupError::Emission { node: i, b, error })?;
            nodes.push(Node {
                b,
                emitter: Some(emitter),
                up: true,
                bound: true,
                listed: true,
                listed_before: true,
                leaving: false,
                own: VecDeque::new(),
                loops: LoopTracker::new(MAX_LOOPS),
                shaping: 0,
                loop_slots: 0,
                alert: false,
                role: Role::Honest,
                contacts: Vec::new(),
                generation: 0,
                stored: Vec::new(),
            });
        }
        // who sends, to whom; who is dishonest (never an attacked node or an attacker)
        let mut order: Vec<u32> = (0..n as u32).collect();
        shuffle(&mut order, &mut rng);
        let senders = (sc.workload.senders * n as f64).round() as usize;
        let mut app_nodes: Vec<u32> = order[..senders].to_vec();
        if let Some(w) = sc.metrics.watch
            && !app_nodes.contains(&(w as u32))
        {
            app_nodes.push(w as u32);
        }
        for &s in &app_nodes {
            let mut contacts = Vec::new();
            while contacts.len() < sc.workload.contacts.min(n - 1) {
                let c = (rng_below(&mut rng, n as u64)) as u32;
                if c != s && !contacts.contains(&c) {
                    contacts.push(c);
                }
            }
            nodes[s as usize].contacts = contacts;
        }
        let mut protected: Vec<u32> = sc.metrics.watch.map(|w| w as u32).into_iter().collect();
        for a in &sc.adversary {
            if let Adversary::NMinusOne {
                target, attacker, ..
            }
            | Adversary::Flooder {
                target, attacker, ..
            } = *a
            {
                protected.extend([target as u32, attacker as u32]);
            }
        }
        shuffle(&mut order, &mut rng);
        let mut pick = order.iter().filter(|x| !protected.contains(x));
        for a in &sc.adversary {
            let (role, fraction) = match *a {
                Adversary::SkipDelays { fraction } => (Role::SkipDelays, fraction),
                Adversary::Drop { fraction } => (Role::Drop, fraction),
                Adversary::Replay { fraction } => (Role::Replay, fraction),
                _ => continue,
            };
            for &x in pick.by_ref().take((fraction * n as f64).round() as usize) {
                nodes[x as usize].role = role;
            }
        }
        let dir = Directory::new(nodes.iter().enumerate().map(|(i, d)| (i as u32, d.b)));
        let link = sc.link;
        let held = (link.delay_ms + link.jitter_ms) / 1000.0
            + 8.0 * sc.network.mean_delay_ms / 1000.0
            + 1.0;
        let capacity = ((rate_sum * held * 2.0) as usize + 65_536).min(1 << 28);
        let mut clock = Clock::new(capacity);
        let mut slots = BinaryHeap::new();
        for (i, node) in nodes.iter().enumerate() {
            if let Some(e) = &node.emitter {
                slots.push(Reverse((e.poll_timeout(), i as u32, 0)));
            }
        }
        clock.schedule(Timestamp::ZERO, Ev::Tick);
        clock.schedule(at(sc.network.epoch_seconds), Ev::Epoch);
        if sc.workload.rate > 0.0 {
            for &s in &app_nodes {
                let t = exp_gap(&mut rng, 1.0 / sc.workload.rate);
                clock.schedule(at(t), Ev::Send(s));
            }
        }
        for (i, a) in sc.adversary.iter().enumerate() {
            if let Adversary::NMinusOne { start, end, .. } | Adversary::Flooder { start, end, .. } =
                *a
            {
                clock.schedule(at(start), Ev::AttackStart(i));
                clock.schedule(at(end), Ev::AttackEnd(i));
            }
        }
        let observer = Observer::for_scenario(sc, n);
        Ok(Mixed {
            rng,
            nodes,
            dir,
            packets: Packets::default(),
            messages: Messages::default(),
            clock,
            slots,
            watch: Watch {
                observer,
                classifier: Classifier::new(n, sc.metrics.classifier_window, sc.warmup),
                counts: Counts::default(),
                warmup: sc.warmup,
            },
            cut: vec![None; n],
            attacking: vec![false; sc.adversary.len()],
            loop_seq: 0,
            now: Timestamp::ZERO,
            mean_delay: sc.network.mean_delay_ms / 1000.0,
            sc: sc.clone(),
        })
    }

    /// Runs to the scenario's end, then drains: no new message, every node back up, until
    /// every message counted is resolved or [`DRAIN`] seconds have passed;
    /// `progress(virtual seconds, events)` now and then.
    pub fn run(mut self, progress: &mut dyn FnMut(f64, u64)) -> Summary {
        let scenario_end = at(self.sc.seconds);
        let end = at(self.sc.seconds + DRAIN);
        let mut ended = false;
        loop {
            if !ended && self.now >= scenario_end {
                ended = true;
                self.end_of_scenario();
            }
            if ended && self.watch.counts.messages == self.watch.counts.delivered {
                break;
            }
            let tw = self.clock.wheel_next();
            let ts = self.slots.peek().map(|Reverse((t, ..))| *t);
            let te = self.clock.event_next();
            let Some(next) = [tw, ts, te].into_iter().flatten().min() else {
                break;
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            if tw == Some(next) {
                while let Some(p) = self.clock.pop_wheel(self.now) {
                    self.watch.counts.events += 1;
                    self.packet_due(p);
                }
            } else if ts == Some(next) {
                if let Some(Reverse((_, x, generation))) = self.slots.pop() {
                    self.watch.counts.events += 1;
                    self.slot(x, generation);
                }
            } else if let Some((_, e)) = self.clock.pop_event(self.now) {
                self.watch.counts.events += 1;
                self.event(e);
            }
            if self.watch.counts.events & 0xffff == 0 {
                progress(secs(self.now), self.watch.counts.events);
            }
        }
        progress(secs(self.now), self.watch.counts.events);
        self.finish()
    }

    fn finish(mut self) -> Summary {
        let warmup = self.watch.warmup;
        let failed = self.messages.live().filter(|m| m.created >= warmup).count() as u64;
        self.watch.counts.failed += failed;
        self.watch.classifier.tick(self.sc.seconds);
        Summary {
            value: f64::NAN,
            classifier: self.watch.classifier.accuracy(),
            targets: std::mem::take(&mut self.watch.observer.results),
            waves_cut: self.watch.observer.waves_cut,
            watched: std::mem::take(&mut self.watch.observer.watched),
            attack: crate::attack_window(&self.sc),
            counts: self.watch.counts,
            warmup,
            nodes: self.nodes.len(),
            measured_seconds: self.sc.seconds - warmup,
        }
    }

    fn t(&self) -> f64 {
        secs(self.now)
    }

    /// Whether what happens now counts: after the warm-up, before the scenario's end.
    fn measuring(&self) -> bool {
        let t = self.t();
        self.watch.measuring(t) && t < self.sc.seconds
    }

    /// A packet's time in the wheel is up: it arrives at its next hop, or its delay ended.
    fn packet_due(&mut self, i: u32) {
        let p = *self.packets.get(i);
        let y = p.node() as usize;
        if !self.nodes[y].up {
            if self.measuring() {
                self.watch.counts.lost_down += 1;
            }
            self.drop_packet(i);
            return;
        }
        if p.arriving {
            self.arrive(i);
            return;
        }
        // the delay ended: to the emitter's ready queue
        let Some(emitter) = self.nodes[y].emitter.as_mut() else {
            self.drop_packet(i);
            return;
        };
        if let Err((_, why)) = emitter.push_forward(i, &mut self.rng) {
            if self.watch.measuring(secs(self.now)) {
                match why {
                    ForwardDrop::Budget => self.watch.counts.dropped_budget += 1,
                    ForwardDrop::QueueFull => self.watch.counts.dropped_queue += 1,
                }
            }
            self.drop_packet(i);
        }
    }

    /// Frees a packet whose vectors are lost with it.
    fn drop_packet(&mut self, i: u32) {
        let v = self.packets.get(i).vectors;
        self.watch.observer.lost(v);
        self.packets.remove(i);
    }

    fn arrive(&mut self, i: u32) {
        let p = *self.packets.get(i);
        let y = p.node() as usize;
        let measuring = self.measuring();
        let known = p.kind == Kind::Flood;
        let stage = usize::from(p.at);
        if !known {
            self.watch.classifier.datagram(y, false);
        }
        if p.kind == Kind::Replay {
            if measuring {
                self.watch.counts.replays_caught += 1;
            }
            self.watch
                .observer
                .arrive(y, Vectors::NONE, stage, false, false, false);
            self.packets.remove(i);
            return;
        }
        let linked = self.nodes[y].role == Role::SkipDelays;
        if p.at_end() {
            if !known {
                let want = matches!(p.kind, Kind::Message { .. }) && self.watch.observer.senders();
                let (_, h) = self
                    .watch
                    .observer
                    .arrive(y, p.vectors, stage, false, linked, want);
                if let (Some(h), true) = (h, measuring) {
                    self.watch
                        .counts
                        .sender_entropy
                        .push((self.t(), p.origin, h));
                }
            }
            match p.kind {
                Kind::Message { slot, generation } => {
                    if measuring {
                        let t = self.t();
                        self.watch.counts.packet_latency.add(t - p.sent_at);
                    }
                    self.message_packet(slot, generation)
                }
                Kind::Loop(id) if p.origin as usize == y => {
                    let now = self.now;
                    self.nodes[y].loops.returned(&loop_id(id), now);
                }
                _ => {}
            }
            self.packets.remove(i);
            return;
        }
        if !self.nodes[y].forwards() {
            if measuring {
                if self.nodes[y].alert {
                    self.watch.counts.dropped_alert += 1;
                } else {
                    self.watch.counts.dropped_not_forwarding += 1;
                }
            }
            if !known {
                self.watch
                    .observer
                    .arrive(y, p.vectors, stage, false, false, false);
            }
            self.packets.remove(i);
            return;
        }
        let keep = if known {
            Vectors::NONE
        } else {
            self.watch
                .observer
                .arrive(y, p.vectors, stage, true, linked, false)
                .0
        };
        let delay = if linked {
            0.0
        } else {
            exp_gap(&mut self.rng, self.mean_delay)
        };
        let q = self.packets.get_mut(i);
        q.vectors = keep;
        q.arriving = false;
        let t = self
            .now
            .saturating_add(std::time::Duration::from_secs_f64(delay));
        if !self.clock.hold(t, i) {
            self.drop_packet(i);
        }
    }

    /// A node's emission slot.
    fn slot(&mut self, x: u32, generation: u32) {
        let xi = x as usize;
        let now = self.now;
        if !self.nodes[xi].up || self.nodes[xi].generation != generation {
            return;
        }
        // loops that did not return, and the (n-1) alarm (section 5.0.2)
        let node = &mut self.nodes[xi];
        node.loops.expire(now);
        if let Some(alarm) = node.loops.alarm() {
            let raised = matches!(alarm, Alarm::Raised { .. });
            node.alert = raised;
            self.watch.counts.alarms.push(AlarmEvent {
                time: secs(now),
                node: x,
                raised,
            });
        }
        let own_waiting = !node.own.is_empty();
        let Some(emitter) = node.emitter.as_mut() else {
            return;
        };
        let Some((_, emission)) = emitter.on_slot(now, own_waiting) else {
            self.slots
                .push(Reverse((emitter.poll_timeout(), x, generation)));
            return;
        };
        let next = emitter.poll_timeout();
        self.slots.push(Reverse((next, x, generation)));
        match emission {
            Emission::ScheduledLoop => {
                let node = &mut self.nodes[xi];
                node.loop_slots += 1;
                if node.shaping > 0
                    && !node
                        .loop_slots
                        .is_multiple_of(engine::engine::KEEP_LOOP_EVERY)
                {
                    node.shaping -= 1;
                    self.send_cover(x);
                } else {
                    self.send_loop(x);
                }
            }
            Emission::Forward(i) => self.send(x, i, true),
            Emission::Own => match self.nodes[xi].own.pop_front() {
                Some(i) => self.send(x, i, false),
                None => self.send_cover(x),
            },
            Emission::Cover => self.send_cover(x),
        }
    }

    /// Node `x` sends packet `i` (a forward if `forward`) to its next hop.
    fn send(&mut self, x: u32, i: u32, forward: bool) {
        let xi = x as usize;
        let mut p = *self.packets.get(i);
        if forward {
            p.at += 1;
        }
        let known = p.kind == Kind::Flood;
        if self.measuring() {
            let k = match p.kind {
                Kind::Message { .. } => MESSAGE,
                Kind::Loop(_) => LOOP,
                Kind::Cover => COVER,
                Kind::Flood => FLOOD,
                Kind::Replay => REPLAY,
            };
            self.watch.counts.datagrams[k] += 1;
        }
        if !known {
            self.watch.classifier.datagram(xi, true);
        }
        let role = self.nodes[xi].role;
        let linked = (forward && role == Role::SkipDelays).then_some(p.vectors);
        let target = match p.kind {
            Kind::Message { .. } if p.first && !forward => {
                Some((p.origin, p.path[usize::from(p.len) - 1]))
            }
            _ => None,
        };
        let now = self.t();
        if !forward {
            p.sent_at = now;
        }
        p.vectors = self
            .watch
            .observer
            .emit(now, xi, forward, known, linked, target);
        *self.packets.get_mut(i) = p;
        if forward && role == Role::Replay {
            let mut copy = p;
            copy.kind = Kind::Replay;
            copy.vectors = Vectors::NONE;
            if self.measuring() {
                self.watch.counts.datagrams[REPLAY] += 1;
            }
            let c = self.packets.add(copy);
            self.transmit(x, c);
        }
        self.transmit(x, i);
    }

    /// Puts packet `i` on the link from `x` to its next hop.
    fn transmit(&mut self, x: u32, i: u32) {
        let p = self.packets.get(i);
        let y = p.node() as usize;
        let measuring = self.measuring();
        if let Some(except) = self.cut[y]
            && except != x
        {
            if measuring {
                self.watch.counts.cut += 1;
            }
            self.drop_packet(i);
            return;
        }
        if uniform(&mut self.rng) < self.sc.link.loss {
            if measuring {
                self.watch.counts.lost_link += 1;
            }
            self.drop_packet(i);
            return;
        }
        let d = link_delay(
            &mut self.rng,
            self.sc.link.delay_ms / 1000.0,
            self.sc.link.jitter_ms / 1000.0,
        );
        self.packets.get_mut(i).arriving = true;
        if !self.clock.hold(self.now.saturating_add(d), i) {
            self.drop_packet(i);
        }
    }

    fn new_packet(&mut self, origin: u32, path: &[u32], kind: Kind, first: bool) -> u32 {
        let mut full = [0u32; MAX_PATH];
        full[..path.len()].copy_from_slice(path);
        self.packets.add(Packet {
            path: full,
            len: path.len() as u8,
            at: 0,
            kind,
            origin,
            vectors: Vectors::NONE,
            arriving: false,
            sent_at: secs(self.now),
            first,
        })
    }

    fn send_loop(&mut self, x: u32) {
        let h = (self.sc.network.hops as usize).clamp(1, 4);
        let mut route = [0u32; MAX_PATH];
        let Some(count) = self
            .dir
            .route(&mut self.rng, Some(x), Some(x), h, &mut route)
        else {
            self.send_cover(x);
            return;
        };
        route[count] = x;
        self.loop_seq += 1;
        let id = self.loop_seq;
        let timeout = std::time::Duration::from_secs_f64(self.sc.network.loop_timeout);
        let now = self.now;
        self.nodes[x as usize]
            .loops
            .sent(loop_id(id), [[0u8; 32]; 4], 0, now, timeout);
        let i = self.new_packet(x, &route[..=count], Kind::Loop(id), false);
        self.send(x, i, false);
    }

    fn send_cover(&mut self, x: u32) {
        let Some(y) = self.dir.draw(&mut self.rng, &[x]) else {
            return;
        };
        let i = self.new_packet(x, &[y], Kind::Cover, false);
        self.send(x, i, false);
    }
}

/// A loop's identifier for the loop tracker.
fn loop_id(id: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&id.to_le_bytes());
    out
}

/// A uniform integer below `n`.
fn rng_below(rng: &mut ChaCha20Rng, n: u64) -> u64 {
    ((uniform(rng) * n as f64) as u64).min(n.saturating_sub(1))
}

/// Fisher-Yates.
fn shuffle(v: &mut [u32], rng: &mut ChaCha20Rng) {
    for i in (1..v.len()).rev() {
        let j = rng_below(rng, i as u64 + 1) as usize;
        v.swap(i, j);
    }
}
