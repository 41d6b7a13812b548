//! Messengers on the deterministic test network ([`engine::sim`]): one per node, fed the
//! node's events and feeding its own-data queue, all in virtual time.

use std::time::Duration;

use engine::sim::{LinkModel, Sim};
use pki_client::NetworkParams;
use rand_core::Rng;
use scheduler::Timestamp;

use crate::messenger::{Messenger, MessengerConfig, MessengerEvent};

/// How often the messengers are polled, in virtual time.
const STEP: Duration = Duration::from_millis(5);

/// The network with a messenger per node.
#[derive(Debug)]
pub struct TestNet {
    /// The engines and links.
    pub sim: Sim,
    /// The messengers, by node.
    pub messengers: Vec<Messenger>,
    /// What each messenger told its application, with the time.
    pub events: Vec<Vec<(Timestamp, MessengerEvent)>>,
    /// Nodes that are switched off: they neither receive nor send.
    pub offline: Vec<bool>,
    buf: Vec<u8>,
    bufs: Vec<Vec<u8>>,
    next_reliability: Timestamp,
}

impl TestNet {
    /// `n` nodes of rate `rate` under `params` on links `link`, all from `seed`.
    pub fn new(n: usize, seed: u64, params: NetworkParams, rate: f64, link: LinkModel) -> Self {
        let mut sim = Sim::new(n, seed, params, rate, link);
        let own_rate =
            f64::from(params.rho_permille) / 1000.0 * rate / f64::from(params.hops.max(1));
        let mut messengers = Vec::new();
        for i in 0..n {
            let config = MessengerConfig {
                own_rate,
                ..MessengerConfig::default()
            };
            let mut seed = [0u8; 32];
            sim.rng().fill_bytes(&mut seed);
            let mut m = Messenger::new(sim.nodes[i].identity.clone(), config, seed);
            if let Some(p) = sim.nodes[i].engine.paths() {
                m.set_paths(p);
            }
            messengers.push(m);
        }
        TestNet {
            sim,
            messengers,
            events: vec![Vec::new(); n],
            offline: vec![false; n],
            buf: Vec::new(),
            bufs: vec![Vec::new(); engine::FORWARD_BATCH],
            next_reliability: Timestamp::ZERO,
        }
    }

    /// Node `i`'s ID.
    pub fn node_id(&self, i: usize) -> [u8; 32] {
        self.sim.node_id(i)
    }

    /// The virtual time.
    pub fn now(&self) -> Timestamp {
        self.sim.now
    }

    /// Runs until `until`, moving events up and packets down every 5 ms.
    pub fn run_until(&mut self, until: Timestamp) {
        while self.sim.now < until {
            let next = self.sim.now.saturating_add(STEP).min(until);
            self.sim.run_until(next);
            self.pump();
        }
    }

    fn pump(&mut self) {
        let now = self.sim.now;
        for i in 0..self.messengers.len() {
            let node = &mut self.sim.nodes[i];
            let events = std::mem::take(&mut node.events);
            let m = &mut self.messengers[i];
            if self.offline[i] {
                continue;
            }
            for (_, e) in &events {
                m.handle_event(now, e);
            }
            let (returned, lost) = node.engine.loop_outcomes();
            m.set_loop_outcomes(returned, lost);
            if now >= self.next_reliability {
                m.set_reliability(node.engine.reliabilities().clone());
            }
            if m.poll_timeout().is_some_and(|t| t <= now) {
                m.handle_timeout(now);
            }
            while node.engine.own_room() > 0 {
                let Some(hop) = m.poll_control(&mut self.buf) else {
                    break;
                };
                let _ = node.engine.queue_control(&self.buf, &hop);
            }
            let ahead = m.config().own_ahead;
            loop {
                let room = ahead
                    .saturating_sub(node.engine.own_queued())
                    .min(engine::FORWARD_BATCH);
                if room == 0 {
                    break;
                }
                let mut hops = [[0u8; 32]; engine::FORWARD_BATCH];
                let n = m.poll_packets(now, &mut self.bufs[..room], &mut hops[..room]);
                for (b, hop) in self.bufs.iter().zip(hops).take(n) {
                    // a packet that cannot be queued is lost, as on a real link
                    let _ = node.engine.queue_own(b, &hop);
                }
                if n < room {
                    break;
                }
            }
            while let Some(e) = m.poll_event() {
                engine::sim::trace(&mut self.sim.trace, format!("{i} {e:?}").as_bytes());
                self.events[i].push((now, e));
            }
        }
        if now >= self.next_reliability {
            self.next_reliability = now.saturating_add(Duration::from_secs(1));
        }
        for i in 0..self.offline.len() {
            if self.offline[i] {
                self.sim.set_down(i, true);
            }
        }
    }
}
