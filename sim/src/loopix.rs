//! The Loopix-style baseline (Piotrowska et al., 2017) in the same fast engine: clients that
//! do not mix, each behind a provider, sending through `layers` layers of mixes
//! (stratified: one mix of each layer, uniformly), every mix and provider holding each
//! packet for an exponential delay. A client's traffic is three Poisson processes: payload
//! slots at lambda_P (a real message if one waits, else drop cover), drop cover at
//! lambda_D, loops at lambda_L; each mix sends loops at lambda_M. Drop cover ends at a
//! random provider (or, without providers, at a last-layer mix); a loop comes back to
//! whoever sent it. Real messages go sender -> its provider -> the layers -> the
//! recipient's provider -> the recipient (delivered at once: Loopix's pull from the
//! provider is not modelled). No retries: delivery is that of one attempt of n packets.
//!
//! With no providers, no cover and messages sent as soon as made, this is MiXiM's network,
//! on which the calibration checks the observer (`sim/scenarios/calibration.toml`).

use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use scheduler::Timestamp;

use crate::classifier::Classifier;
use crate::observer::{Observer, Vectors};
use crate::paths::{MAX_PATH, uniform};
use crate::report::{COVER, Counts, LOOP, MESSAGE, Summary};
use crate::scenario::{Loopix as Shape, Scenario};
use crate::world::{
    Clock, Kind, Message, Messages, Packet, Packets, Watch, at, exp_gap, link_delay, secs,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Tick,
    /// A client's application makes a message.
    Send(u32),
    /// A client's payload slot.
    Payload(u32),
    /// A client's drop cover.
    Drop(u32),
    /// A client's or a mix's loop.
    Loop(u32),
}

/// The baseline network.
#[derive(Debug)]
pub struct Loopix {
    sc: Scenario,
    shape: Shape,
    rng: ChaCha20Rng,
    packets: Packets,
    messages: Messages,
    clock: Clock<Ev>,
    watch: Watch,
    /// Per client: messages waiting for a payload slot.
    queued: Vec<std::collections::VecDeque<(u32, u32)>>,
    contacts: Vec<Vec<u32>>,
    now: Timestamp,
    loop_seq: u64,
}

impl Loopix {
    /// The baseline of `sc`, everything random from `seed`.
    pub fn new(sc: &Scenario, seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let shape = sc.loopix;
        let n = sc.total_nodes();
        let c = shape.clients;
        let senders = (sc.workload.senders * c as f64).round() as usize;
        let mut contacts = vec![Vec::new(); c];
        for (s, list) in contacts.iter_mut().enumerate().take(senders) {
            while list.len() < sc.workload.contacts.min(c - 1) {
                let r = ((uniform(&mut rng) * c as f64) as u32).min(c as u32 - 1);
                if r as usize != s && !list.contains(&r) {
                    list.push(r);
                }
            }
        }
        let mut clock = Clock::new(1 << 22);
        clock.schedule(Timestamp::ZERO, Ev::Tick);
        let start = |rate: f64, e: Ev, clock: &mut Clock<Ev>, rng: &mut ChaCha20Rng| {
            if rate > 0.0 {
                clock.schedule(at(exp_gap(rng, 1.0 / rate)), e);
            }
        };
        for x in 0..c as u32 {
            if (x as usize) < senders {
                start(sc.workload.rate, Ev::Send(x), &mut clock, &mut rng);
            }
            start(shape.payload_rate, Ev::Payload(x), &mut clock, &mut rng);
            start(shape.drop_rate, Ev::Drop(x), &mut clock, &mut rng);
            start(shape.loop_rate, Ev::Loop(x), &mut clock, &mut rng);
        }
        for m in (c + shape.providers)..n {
            start(
                shape.mix_loop_rate,
                Ev::Loop(m as u32),
                &mut clock,
                &mut rng,
            );
        }
        let pools = shape.layers + if shape.providers > 0 { 2 } else { 0 };
        let mut observer = Observer::new(
            n,
            pools,
            sc.metrics.targets,
            sc.metrics.sender_vectors,
            sc.metrics.wave_seconds,
            sc.metrics.wave_residue,
        );
        observer.watch(sc.metrics.watch.map(|w| w as u32));
        Loopix {
            shape,
            rng,
            packets: Packets::default(),
            messages: Messages::default(),
            clock,
            watch: Watch {
                observer,
                classifier: Classifier::new(n, sc.metrics.classifier_window, sc.warmup),
                counts: Counts::default(),
                warmup: sc.warmup,
            },
            queued: vec![std::collections::VecDeque::new(); c],
            contacts,
            now: Timestamp::ZERO,
            loop_seq: 0,
            sc: sc.clone(),
        }
    }

    fn t(&self) -> f64 {
        secs(self.now)
    }

    fn measuring(&self) -> bool {
        self.watch.measuring(self.t())
    }

    fn provider_of(&self, client: u32) -> Option<u32> {
        let p = self.shape.providers as u32;
        (p > 0).then(|| self.shape.clients as u32 + client % p)
    }

    fn mix(&mut self, layer: usize) -> u32 {
        let per = self.shape.mixes_per_layer;
        let k = ((uniform(&mut self.rng) * per as f64) as usize).min(per - 1);
        (self.shape.clients + self.shape.providers + layer * per + k) as u32
    }

    /// The layer of node `x`, if it is a mix.
    fn layer_of(&self, x: u32) -> Option<usize> {
        let first = self.shape.clients + self.shape.providers;
        (x as usize >= first).then(|| (x as usize - first) / self.shape.mixes_per_layer)
    }

    /// A client's path to `end` (a client, a provider, or none: drop at a last mix).
    fn path(&mut self, from: u32, end: Option<u32>, out: &mut [u32; MAX_PATH]) -> usize {
        let mut len = 0;
        if let Some(p) = self.provider_of(from) {
            out[len] = p;
            len += 1;
        }
        for layer in 0..self.shape.layers {
            out[len] = self.mix(layer);
            len += 1;
        }
        if let Some(e) = end {
            if (e as usize) < self.shape.clients
                && let Some(p) = self.provider_of(e)
            {
                out[len] = p;
                len += 1;
            }
            out[len] = e;
            len += 1;
        }
        len
    }

    /// Runs to the scenario's end.
    pub fn run(mut self, progress: &mut dyn FnMut(f64, u64)) -> Summary {
        let end = at(self.sc.seconds);
        loop {
            let tw = self.clock.wheel_next();
            let te = self.clock.event_next();
            let Some(next) = [tw, te].into_iter().flatten().min() else {
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
            } else if let Some((_, e)) = self.clock.pop_event(self.now) {
                self.watch.counts.events += 1;
                self.event(e);
            }
            if self.watch.counts.events & 0xffff == 0 {
                progress(secs(self.now), self.watch.counts.events);
            }
        }
        progress(secs(self.now), self.watch.counts.events);
        let n = self.sc.total_nodes();
        self.watch.classifier.tick(self.sc.seconds);
        // what was never delivered by the end (but long enough before it) failed
        let cutoff = self.sc.seconds - 10.0 * self.shape.mean_delay_ms / 1000.0 - 5.0;
        let warmup = self.watch.warmup;
        self.watch.counts.failed += self
            .messages
            .live()
            .filter(|m| m.created >= warmup && m.created < cutoff)
            .count() as u64;
        Summary {
            value: f64::NAN,
            classifier: self.watch.classifier.accuracy(),
            targets: std::mem::take(&mut self.watch.observer.results),
            waves_cut: self.watch.observer.waves_cut,
            watched: std::mem::take(&mut self.watch.observer.watched),
            attack: crate::attack_window(&self.sc),
            counts: self.watch.counts,
            warmup,
            nodes: n,
            measured_seconds: self.sc.seconds - warmup,
        }
    }

    fn schedule_next(&mut self, rate: f64, e: Ev) {
        if rate > 0.0 {
            let gap = exp_gap(&mut self.rng, 1.0 / rate);
            self.clock
                .schedule(self.now.saturating_add(Duration::from_secs_f64(gap)), e);
        }
    }

    fn event(&mut self, e: Ev) {
        match e {
            Ev::Tick => {
                let t = self.t();
                if self.watch.observer.tick(t, self.watch.warmup) {
                    self.packets.clear_targets();
                }
                self.watch.classifier.tick(t);
                self.clock
                    .schedule(self.now.saturating_add(Duration::from_secs(1)), Ev::Tick);
            }
            Ev::Send(x) => {
                self.schedule_next(self.sc.workload.rate, Ev::Send(x));
                self.app_send(x);
            }
            Ev::Payload(x) => {
                self.schedule_next(self.shape.payload_rate, Ev::Payload(x));
                match self.queued[x as usize].pop_front() {
                    Some((slot, generation)) => self.send_message(x, slot, generation),
                    None => self.send_drop(x),
                }
            }
            Ev::Drop(x) => {
                self.schedule_next(self.shape.drop_rate, Ev::Drop(x));
                self.send_drop(x);
            }
            Ev::Loop(x) => {
                let rate = if (x as usize) < self.shape.clients {
                    self.shape.loop_rate
                } else {
                    self.shape.mix_loop_rate
                };
                self.schedule_next(rate, Ev::Loop(x));
                self.send_loop(x);
            }
        }
    }

    fn app_send(&mut self, x: u32) {
        let list = &self.contacts[x as usize];
        let to = if list.is_empty() {
            // any other client
            let c = self.shape.clients as u32;
            let r = ((uniform(&mut self.rng) * f64::from(c - 1)) as u32).min(c - 2);
            if r >= x { r + 1 } else { r }
        } else {
            list[((uniform(&mut self.rng) * list.len() as f64) as usize).min(list.len() - 1)]
        };
        let created = self.t();
        let (slot, generation) = self.messages.add(Message {
            from: x,
            to,
            created,
            received: 0,
            attempt: 1,
            generation: 0,
            stored: false,
            live: true,
        });
        if self.measuring() {
            self.watch.counts.messages += 1;
            self.watch.classifier.message(x as usize, true);
        }
        if self.shape.send_immediately || self.shape.payload_rate <= 0.0 {
            self.send_message(x, slot, generation);
        } else {
            self.queued[x as usize].push_back((slot, generation));
        }
    }

    fn send_message(&mut self, x: u32, slot: u32, generation: u32) {
        let Some(m) = self.messages.get_mut(slot, generation) else {
            return;
        };
        let to = m.to;
        for k in 0..self.sc.workload.n {
            let mut path = [0u32; MAX_PATH];
            let len = self.path(x, Some(to), &mut path);
            let i = self.new_packet(x, &path[..len], Kind::Message { slot, generation }, k == 0);
            if self.measuring() {
                self.watch.counts.message_packets += 1;
            }
            self.send(x, i, false);
        }
    }

    fn send_drop(&mut self, x: u32) {
        let mut path = [0u32; MAX_PATH];
        let end = (self.shape.providers > 0).then(|| {
            let p = self.shape.providers;
            (self.shape.clients + ((uniform(&mut self.rng) * p as f64) as usize).min(p - 1)) as u32
        });
        let len = self.path(x, end, &mut path);
        let i = self.new_packet(x, &path[..len], Kind::Cover, false);
        self.send(x, i, false);
    }

    fn send_loop(&mut self, x: u32) {
        let mut path = [0u32; MAX_PATH];
        let len = match self.layer_of(x) {
            None => self.path(x, Some(x), &mut path),
            Some(l) => {
                let layers = self.shape.layers;
                let mut len = 0;
                for k in 1..layers {
                    path[len] = self.mix((l + k) % layers);
                    len += 1;
                }
                path[len] = x;
                len + 1
            }
        };
        self.loop_seq += 1;
        let i = self.new_packet(x, &path[..len], Kind::Loop(self.loop_seq), false);
        self.send(x, i, false);
    }

    fn new_packet(&mut self, origin: u32, path: &[u32], kind: Kind, first: bool) -> u32 {
        let mut full = [0u32; MAX_PATH];
        let len = path.len().min(MAX_PATH);
        full[..len].copy_from_slice(&path[..len]);
        self.packets.add(Packet {
            path: full,
            len: len as u8,
            at: 0,
            kind,
            origin,
            vectors: Vectors::NONE,
            arriving: false,
            sent_at: secs(self.now),
            first,
        })
    }

    fn send(&mut self, x: u32, i: u32, forward: bool) {
        let mut p = *self.packets.get(i);
        if forward {
            p.at += 1;
        }
        if self.measuring() {
            let k = match p.kind {
                Kind::Message { .. } => MESSAGE,
                Kind::Loop(_) => LOOP,
                _ => COVER,
            };
            self.watch.counts.datagrams[k] += 1;
        }
        self.watch.classifier.datagram(x as usize, true);
        let target = match p.kind {
            Kind::Message { .. } if p.first && !forward => {
                Some((p.origin, p.path[usize::from(p.len) - 1]))
            }
            _ => None,
        };
        let now = self.t();
        p.vectors = self
            .watch
            .observer
            .emit(now, x as usize, forward, false, None, target);
        p.arriving = true;
        *self.packets.get_mut(i) = p;
        if uniform(&mut self.rng) < self.sc.link.loss {
            if self.measuring() {
                self.watch.counts.lost_link += 1;
            }
            self.watch.observer.lost(p.vectors);
            self.packets.remove(i);
            return;
        }
        let d = link_delay(
            &mut self.rng,
            self.sc.link.delay_ms / 1000.0,
            self.sc.link.jitter_ms / 1000.0,
        );
        if !self.clock.hold(self.now.saturating_add(d), i) {
            self.watch.observer.lost(p.vectors);
            self.packets.remove(i);
        }
    }

    fn packet_due(&mut self, i: u32) {
        let p = *self.packets.get(i);
        let y = p.node();
        if !p.arriving {
            // the delay at a mix or provider ended
            self.send(y, i, true);
            return;
        }
        self.watch.classifier.datagram(y as usize, false);
        let end = p.at_end();
        let want = end && matches!(p.kind, Kind::Message { .. }) && self.watch.observer.senders();
        let (_, h) =
            self.watch
                .observer
                .arrive(y as usize, p.vectors, usize::from(p.at), !end, false, want);
        if let (Some(h), true) = (h, self.measuring()) {
            self.watch
                .counts
                .sender_entropy
                .push((self.t(), p.origin, h));
        }
        if end {
            if let Kind::Message { slot, generation } = p.kind {
                if self.measuring() {
                    let t = self.t();
                    self.watch.counts.packet_latency.add(t - p.sent_at);
                }
                self.delivered(slot, generation);
            }
            self.packets.remove(i);
            return;
        }
        let delay = exp_gap(&mut self.rng, self.shape.mean_delay_ms / 1000.0);
        let q = self.packets.get_mut(i);
        q.vectors = Vectors::NONE;
        q.arriving = false;
        if !self
            .clock
            .hold(self.now.saturating_add(Duration::from_secs_f64(delay)), i)
        {
            self.packets.remove(i);
        }
    }

    fn delivered(&mut self, slot: u32, generation: u32) {
        let k = self.sc.workload.k;
        let now = self.t();
        let warmup = self.watch.warmup;
        let Some(m) = self.messages.get_mut(slot, generation) else {
            return;
        };
        m.received += 1;
        if m.received < k {
            return;
        }
        let (created, to) = (m.created, m.to);
        self.messages.remove(slot);
        if created >= warmup {
            self.watch.counts.delivered += 1;
            self.watch.counts.latency.add(now - created);
        }
        if self.measuring() {
            self.watch.classifier.message(to as usize, false);
        }
    }
}
