//! The paper's design, fast mode: what is not a packet or a slot. Applications and their
//! retries, epochs and churn (joins, graceful leaves, crashes, unbind/bind), adversaries'
//! cuts and floods, the observer's clock.

use std::cmp::Reverse;
use std::time::Duration;

use engine::loops::LoopTracker;
use scheduler::Emitter;

use super::{Ev, MAX_LOOPS, Mixed, OWN_QUEUE, emission_params, rng_below, shuffle};
use crate::paths::{Directory, MAX_PATH, uniform};
use crate::report::FLOOD;
use crate::scenario::Adversary;
use crate::world::{Kind, Message, exp_gap};

impl Mixed {
    pub(super) fn event(&mut self, e: Ev) {
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
            Ev::Epoch => self.epoch(),
            Ev::Send(x) => self.app_send(x),
            Ev::Retry(slot, generation) => self.retry(slot, generation),
            Ev::Collect(slot, generation) => self.collect(slot, generation),
            Ev::Crash(x) if self.t() < self.sc.seconds => self.go_down(x),
            Ev::Crash(_) => {}
            Ev::Join(x) => self.join(x),
            Ev::AttackStart(i) => self.attack(i, true),
            Ev::AttackEnd(i) => self.attack(i, false),
            Ev::Flood(i) => self.flood(i),
        }
    }

    /// Node `x`'s application sends a message to one of its contacts: n packets, each on
    /// its own path of h - 1 mixes drawn now.
    fn app_send(&mut self, x: u32) {
        let xi = x as usize;
        if self.t() >= self.sc.seconds {
            return;
        }
        let gap = exp_gap(&mut self.rng, 1.0 / self.sc.workload.rate);
        self.clock.schedule(
            self.now.saturating_add(Duration::from_secs_f64(gap)),
            Ev::Send(x),
        );
        if !self.nodes[xi].up {
            return;
        }
        let n = self.sc.workload.n as usize;
        if self.nodes[xi].own.len() + n > OWN_QUEUE {
            if self.measuring() {
                self.watch.counts.own_full += 1;
            }
            return;
        }
        let contacts = &self.nodes[xi].contacts;
        let to = if contacts.is_empty() {
            // any other node
            let n = self.nodes.len() as u64;
            let r = rng_below(&mut self.rng, n - 1) as u32;
            if r >= x { r + 1 } else { r }
        } else {
            contacts[rng_below(&mut self.rng, contacts.len() as u64) as usize]
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
            self.watch.classifier.message(xi, true);
        }
        self.queue_attempt(slot, generation, true);
        let after = Duration::from_secs_f64(self.sc.workload.retry_after);
        self.clock
            .schedule(self.now.saturating_add(after), Ev::Retry(slot, generation));
    }

    /// Queues one attempt's n packets of the message in `slot`.
    fn queue_attempt(&mut self, slot: u32, generation: u32, first_attempt: bool) {
        let Some(m) = self.messages.get_mut(slot, generation) else {
            return;
        };
        let (from, to) = (m.from, m.to);
        let mixes = (self.sc.network.hops as usize).saturating_sub(1).max(1);
        for k in 0..self.sc.workload.n {
            let mut route = [0u32; MAX_PATH];
            let Some(count) =
                self.dir
                    .route(&mut self.rng, Some(from), Some(to), mixes, &mut route)
            else {
                return;
            };
            route[count] = to;
            let i = self.new_packet(
                from,
                &route[..=count],
                Kind::Message { slot, generation },
                first_attempt && k == 0,
            );
            if self.measuring() {
                self.watch.counts.message_packets += 1;
            }
            self.nodes[from as usize].own.push_back(i);
        }
    }

    /// A packet of a message reached its recipient.
    pub(super) fn message_packet(&mut self, slot: u32, generation: u32) {
        let k = self.sc.workload.k;
        let Some(m) = self.messages.get_mut(slot, generation) else {
            return;
        };
        m.received += 1;
        if m.received >= k {
            let to = m.to as usize;
            self.deliver(slot, generation, false);
            // incoming shaping: this delivery takes the place of one of the next loops
            let node = &mut self.nodes[to];
            node.shaping = (node.shaping + 1).min(engine::engine::MAX_SHAPING_CREDIT);
        }
    }

    fn deliver(&mut self, slot: u32, generation: u32, stored: bool) {
        let now = self.t();
        let Some(m) = self.messages.get_mut(slot, generation) else {
            return;
        };
        let (created, to) = (m.created, m.to);
        self.messages.remove(slot);
        if created >= self.watch.warmup {
            let c = &mut self.watch.counts;
            c.delivered += 1;
            if stored {
                c.delivered_stored += 1;
            }
            c.latency.add(now - created);
        }
        if self.measuring() {
            self.watch.classifier.message(to as usize, false);
        }
    }

    fn retry(&mut self, slot: u32, generation: u32) {
        let attempts = self.sc.workload.attempts;
        let after = Duration::from_secs_f64(self.sc.workload.retry_after);
        let Some(m) = self.messages.get_mut(slot, generation) else {
            return;
        };
        let (from, to) = (m.from as usize, m.to as usize);
        if !self.nodes[from].up {
            // the sender is away: it tries again once back (its state kept)
            self.clock
                .schedule(self.now.saturating_add(after), Ev::Retry(slot, generation));
            return;
        }
        if m.attempt < attempts {
            m.attempt += 1;
            self.queue_attempt(slot, generation, false);
            self.clock
                .schedule(self.now.saturating_add(after), Ev::Retry(slot, generation));
            return;
        }
        // after its attempts, the message goes to storage; the recipient collects it
        m.stored = true;
        if self.nodes[to].up {
            let t = Duration::from_secs_f64(self.sc.workload.collect_after);
            self.clock
                .schedule(self.now.saturating_add(t), Ev::Collect(slot, generation));
        } else {
            self.nodes[to].stored.push((slot, generation));
        }
    }

    fn collect(&mut self, slot: u32, generation: u32) {
        let Some(m) = self.messages.get_mut(slot, generation) else {
            return;
        };
        let to = m.to as usize;
        if self.nodes[to].up {
            self.deliver(slot, generation, true);
        } else {
            self.nodes[to].stored.push((slot, generation));
        }
    }

    /// An epoch begins: leavers go, the churn of the epoch is drawn, the consensus is made
    /// of the nodes up, bound and not in high alert.
    fn epoch(&mut self) {
        let n = self.nodes.len();
        let epoch = Duration::from_secs_f64(self.sc.network.epoch_seconds);
        if self.t() >= self.sc.seconds {
            return;
        }
        for x in 0..n as u32 {
            if self.nodes[x as usize].leaving {
                self.nodes[x as usize].leaving = false;
                self.go_down(x);
            }
        }
        let churn = self.sc.churn;
        let count = (churn.per_epoch * n as f64).round() as usize;
        let mut up: Vec<u32> = (0..n as u32)
            .filter(|&x| self.nodes[x as usize].up)
            .collect();
        let mut down: Vec<u32> = (0..n as u32)
            .filter(|&x| !self.nodes[x as usize].up)
            .collect();
        shuffle(&mut up, &mut self.rng);
        shuffle(&mut down, &mut self.rng);
        for &x in up.iter().take(count) {
            if uniform(&mut self.rng) < churn.crash {
                let t = epoch.mul_f64(uniform(&mut self.rng));
                self.clock
                    .schedule(self.now.saturating_add(t), Ev::Crash(x));
            } else {
                // graceful: out of the next consensus, down when it starts
                self.nodes[x as usize].leaving = true;
            }
        }
        for &x in down.iter().take(count) {
            let t = epoch.mul_f64(uniform(&mut self.rng));
            self.clock.schedule(self.now.saturating_add(t), Ev::Join(x));
        }
        let unbind = (churn.unbind * n as f64).round() as usize;
        for node in &mut self.nodes {
            node.bound = true;
        }
        for &x in up.iter().skip(count).take(unbind) {
            self.nodes[x as usize].bound = false;
        }
        for node in &mut self.nodes {
            node.listed_before = node.listed;
            node.listed = node.up && node.bound && !node.alert && !node.leaving;
        }
        self.dir = Directory::new(
            self.nodes
                .iter()
                .enumerate()
                .filter(|(_, d)| d.listed)
                .map(|(i, d)| (i as u32, d.b)),
        );
        self.clock
            .schedule(self.now.saturating_add(epoch), Ev::Epoch);
    }

    /// Node `x` goes down (a crash, or a graceful leave at an epoch's start): what it held
    /// is lost.
    fn go_down(&mut self, x: u32) {
        let xi = x as usize;
        if !self.nodes[xi].up {
            return;
        }
        self.watch.classifier.absent(xi);
        let node = &mut self.nodes[xi];
        node.up = false;
        node.emitter = None;
        node.generation = node.generation.wrapping_add(1);
        let own: Vec<u32> = node.own.drain(..).collect();
        for i in own {
            self.drop_packet(i);
        }
        self.watch.observer.node_down(xi);
    }

    /// Node `x` comes up: a fresh emitter and loop tracker; bound from the next epoch;
    /// what was stored for it is collected.
    fn join(&mut self, x: u32) {
        let xi = x as usize;
        if self.nodes[xi].up {
            return;
        }
        let params = emission_params(&self.sc, self.nodes[xi].b);
        let Ok(emitter) = Emitter::new(params, self.now, &mut self.rng) else {
            return;
        };
        self.watch.classifier.absent(xi);
        let node = &mut self.nodes[xi];
        node.up = true;
        node.bound = true;
        node.alert = false;
        node.shaping = 0;
        node.loops = LoopTracker::new(MAX_LOOPS);
        self.slots
            .push(Reverse((emitter.poll_timeout(), x, node.generation)));
        node.emitter = Some(emitter);
        let stored = std::mem::take(&mut node.stored);
        let t = Duration::from_secs_f64(self.sc.workload.collect_after);
        for (slot, generation) in stored {
            self.clock
                .schedule(self.now.saturating_add(t), Ev::Collect(slot, generation));
        }
    }

    /// The scenario's end: every node back up (bound from the next epoch) for the drain.
    pub(super) fn end_of_scenario(&mut self) {
        for x in 0..self.nodes.len() as u32 {
            self.join(x);
            self.nodes[x as usize].leaving = false;
        }
    }

    fn attack(&mut self, i: usize, start: bool) {
        self.attacking[i] = start;
        match self.sc.adversary[i] {
            Adversary::NMinusOne {
                target, attacker, ..
            } => {
                self.cut[target] = start.then_some(attacker as u32);
                if start {
                    self.clock.schedule(self.now, Ev::Flood(i));
                }
            }
            Adversary::Flooder { .. } if start => self.clock.schedule(self.now, Ev::Flood(i)),
            _ => {}
        }
    }

    /// The attacker sends one packet through the target and back to itself, known to the
    /// observer; the (n-1) attacker fills the target's forward budget so, the flooder at
    /// its rate.
    fn flood(&mut self, i: usize) {
        if !self.attacking[i] {
            return;
        }
        let (target, attacker, rate) = match self.sc.adversary[i] {
            Adversary::NMinusOne {
                target, attacker, ..
            } => {
                let p = emission_params(&self.sc, self.nodes[target].b);
                (target, attacker, p.forward_budget().max(0.1))
            }
            Adversary::Flooder {
                target,
                attacker,
                rate,
                ..
            } => (target, attacker, rate.max(0.001)),
            _ => return,
        };
        let gap = exp_gap(&mut self.rng, 1.0 / rate);
        self.clock.schedule(
            self.now.saturating_add(Duration::from_secs_f64(gap)),
            Ev::Flood(i),
        );
        let p = self.new_packet(
            attacker as u32,
            &[target as u32, attacker as u32],
            Kind::Flood,
            false,
        );
        if self.measuring() {
            self.watch.counts.datagrams[FLOOD] += 1;
        }
        self.transmit(attacker as u32, p);
    }
}
