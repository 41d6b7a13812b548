//! The engine fidelity: the real engine with real Sphinx, the real messenger (RaptorQ,
//! SURB ACKs and NACKs, three attempts) and real storage providers (offline delivery),
//! every node a `stack::Stack` on the deterministic network of `stack::sim`. For hundreds
//! of nodes.
//!
//! The observer is the fast mode's ([`crate::observer`]), fed from the network's tap (every
//! datagram: sender, receiver, time, bytes). What it is told of the truth (whether a node
//! forwards what it received, how many pools a datagram passed, which datagram delivered
//! a node's own packet) the simulator learns as a global observer holding every node's mix
//! key would: it unwraps each datagram with its receiver's key and recognises the result
//! when the receiver sends it on. Nothing of that reaches the observer's vectors beyond
//! what the fast mode gives it.
//!
//! Differences from the fast mode, by construction: every node has the same B (the first
//! bandwidth class; `stack::sim` takes one rate); the reliability factor of Algorithm 1 is
//! in; a target is any packet of a node's own data (message symbols, ACKs, storage
//! requests), not only the first of a message; churn takes nodes down and back up with the
//! consensus unchanged (a node down stays listed: the harsh case); one node in ten is a
//! storage provider (the last ones), and providers never churn.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::Duration;

use anon::offline::OfflineConfig;
use anon::{MessengerEvent, SendOptions};
use engine::OutCategory;
use pki_client::NetworkParams;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use scheduler::Timestamp;
use stack::services::Served;
use stack::sim::{LinkModel, Sim, Tapped};

use crate::RunError;
use crate::classifier::Classifier;
use crate::observer::{Observer, Vectors};
use crate::paths::uniform;
use crate::report::{AlarmEvent, COVER, Counts, LOOP, MESSAGE, Summary};
use crate::scenario::Scenario;
use crate::world::{at, exp_gap, secs};

/// Most nodes the engine fidelity runs.
pub const MAX_NODES: usize = 2000;
/// Virtual seconds after the scenario's end for what is in flight, stored or retried to
/// arrive (every node up again); the drain ends sooner once every message has arrived or
/// been given up by its sender.
const DRAIN: f64 = 900.0;
/// The network is run in steps of this long between the observer's turns.
const STEP: f64 = 0.25;
/// Bytes of each message.
const MESSAGE_BYTES: usize = 400;

/// What the simulator knows of a packet after a hop: the pools it passed, whose it is,
/// what its first datagram carried, the target it is, and when it was last seen.
#[derive(Clone, Copy, Debug)]
struct Link {
    /// When its origin sent its first datagram.
    born: f64,
    stage: usize,
    origin: u32,
    category: OutCategory,
    target: Option<(u64, usize)>,
    seen: f64,
}

/// A datagram on its way, for the observer.
#[derive(Debug)]
struct Flying {
    tapped: Tapped,
    vectors: Vectors,
    link: Link,
}

/// Runs `sc` on the real engine.
pub fn run(
    sc: &Scenario,
    seed: u64,
    progress: &mut dyn FnMut(f64, u64),
) -> Result<Summary, RunError> {
    let n = sc.network.nodes;
    if n > MAX_NODES {
        return Err(RunError::Engine(format!(
            "at most {MAX_NODES} nodes on the real engine (the scenario has {n})"
        )));
    }
    let net = &sc.network;
    let params = NetworkParams {
        packet_size: 1452,
        hops: net.hops as u8,
        rho_permille: (net.rho * 1000.0).round() as u32,
        mean_delay_micros: (net.mean_delay_ms * 1000.0).round() as u64,
        loops: net.loops,
        loop_rate_millis: (net.loop_rate * 1000.0).round() as u32,
        epoch_seconds: 1 << 30,
        genesis_unix: 0,
    };
    let link = LinkModel {
        delay: Duration::from_secs_f64(sc.link.delay_ms / 1000.0),
        jitter: Duration::from_secs_f64(sc.link.jitter_ms / 1000.0),
        loss: sc.link.loss,
        ..LinkModel::PERFECT
    };
    let b = net.bandwidth[0].b;
    // a provider per ten nodes (the storage traffic of every node with contacts lands on them)
    let providers: Vec<usize> = (n - (n / 10).max(2)..n).collect();
    // the providers' block stores: a folder of this run's own (runs may go side by side)
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("mixed-sim-{}-{run}-{seed}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let limits = storage::Limits {
        reserve_bytes: 0,
        ..storage::Limits::default()
    };
    // the scenario's loop timeout (the test network's 2 s is too short once storage
    // traffic queues at the providers: loops come back late and count lost)
    let loop_timeout = Duration::from_secs_f64(net.loop_timeout);
    let mut sim =
        match Sim::served_tweaked(n, seed, params, b, link, &providers, &dir, limits, &|c| {
            c.loop_timeout = loop_timeout
        }) {
            Ok(sim) => sim,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(RunError::Engine(format!("storage provider: {e}")));
            }
        };
    let result = drive(sc, seed, &mut sim, &providers, progress);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The offline layer's pace: a deployment's rates (one PUT a second at most, a GET every
/// two seconds on average, which every node with contacts pays in own packets), with
/// shorter waits than a deployment's minute, so that a run covers minutes.
fn offline_config() -> OfflineConfig {
    OfflineConfig {
        request_timeout: Duration::from_secs(10),
        idle_poll: Duration::from_secs(10),
        ..OfflineConfig::default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Send(usize),
    Down(usize),
    Up(usize),
    Epoch,
}

fn drive(
    sc: &Scenario,
    seed: u64,
    sim: &mut Sim<Served>,
    providers: &[usize],
    progress: &mut dyn FnMut(f64, u64),
) -> Result<Summary, RunError> {
    let n = sc.network.nodes;
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x5eed_0fe4_614e);
    let users: Vec<usize> = (0..n).filter(|i| !providers.contains(i)).collect();
    let senders = (sc.workload.senders * users.len() as f64).round() as usize;
    // contacts, both ways (a recipient's offline layer must know the sender to collect)
    let mut contacts: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut sends_to: Vec<Vec<usize>> = vec![Vec::new(); n];
    for &s in users.iter().take(senders) {
        let want = sc.workload.contacts.max(1).min(users.len() - 1);
        while sends_to[s].len() < want {
            let r = users[((uniform(&mut rng) * users.len() as f64) as usize).min(users.len() - 1)];
            if r != s && !sends_to[s].contains(&r) {
                sends_to[s].push(r);
                contacts.entry(s).or_default().push(r);
                contacts.entry(r).or_default().push(s);
            }
        }
    }
    // the offline layer (storage providers) where nodes come and go: without churn its
    // polling would only add traffic the fast mode does not have
    if sc.churn.per_epoch > 0.0 {
        for (&i, list) in &contacts {
            let mut list = list.clone();
            list.sort_unstable();
            list.dedup();
            sim.offline(i, offline_config(), &list);
        }
    }
    let mut events: BinaryHeap<Reverse<(Timestamp, u64, Ev)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |events: &mut BinaryHeap<Reverse<(Timestamp, u64, Ev)>>, t: f64, e: Ev| {
        seq += 1;
        events.push(Reverse((at(t), seq, e)));
    };
    if sc.workload.rate > 0.0 {
        for &s in users.iter().take(senders) {
            push(
                &mut events,
                exp_gap(&mut rng, 1.0 / sc.workload.rate),
                Ev::Send(s),
            );
        }
    }
    if sc.churn.per_epoch > 0.0 {
        push(&mut events, sc.warmup, Ev::Epoch);
    }
    let observer = Observer::for_scenario(sc, n);
    let mut watch = Watcher {
        observer,
        classifier: Classifier::new(n, sc.metrics.classifier_window, sc.warmup),
        counts: Counts::default(),
        warmup: sc.warmup,
        links: HashMap::new(),
        flying: BinaryHeap::new(),
        store: Vec::new(),
        free: Vec::new(),
        next_tick: 0.0,
        secrets: (0..n)
            .map(|i| sim.mix_secret(i).cloned())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| RunError::Engine("a node has no mix key".into()))?,
        scratch: vec![0u8; 1452],
    };
    sim.set_tap(true);
    let mut sent: BTreeMap<[u8; 16], (f64, usize, usize)> = BTreeMap::new();
    let mut received = Received::new(n);
    let mut down = vec![false; n];
    let end = sc.seconds;
    let mut t = 0.0;
    while t < end + DRAIN {
        let step_end = t + STEP;
        // the scenario's events in this step, in order
        while let Some(Reverse((when, _, e))) = events.peek().copied() {
            if secs(when) > step_end {
                break;
            }
            events.pop();
            let now = secs(when);
            sim.run_until(when);
            watch.feed(sim.take_tap(), now);
            if now >= end {
                continue;
            }
            match e {
                Ev::Send(s) => {
                    push(
                        &mut events,
                        now + exp_gap(&mut rng, 1.0 / sc.workload.rate),
                        Ev::Send(s),
                    );
                    if down[s] || sends_to[s].is_empty() {
                        continue;
                    }
                    let list = &sends_to[s];
                    let r = list
                        [((uniform(&mut rng) * list.len() as f64) as usize).min(list.len() - 1)];
                    let to = sim.node_id(r);
                    let mut data = format!("{s}->{r} at {now:.3}").into_bytes();
                    data.resize(MESSAGE_BYTES, b'.');
                    if let Ok(id) = sim.upper(s).send(when, to, &data, SendOptions::default())
                        && now >= sc.warmup
                    {
                        sent.insert(id, (now, s, r));
                        watch.counts.messages += 1;
                        watch.classifier.message(s, true);
                    }
                }
                Ev::Epoch => {
                    let e = sc.network.epoch_seconds;
                    let up: Vec<usize> = users.iter().copied().filter(|&u| !down[u]).collect();
                    let count = (sc.churn.per_epoch * users.len() as f64).round() as usize;
                    let mut chosen = up;
                    for k in (1..chosen.len()).rev() {
                        let j = ((uniform(&mut rng) * (k + 1) as f64) as usize).min(k);
                        chosen.swap(k, j);
                    }
                    for &u in chosen.iter().take(count) {
                        let leave = now + uniform(&mut rng) * e;
                        push(&mut events, leave, Ev::Down(u));
                        push(&mut events, leave + e, Ev::Up(u));
                    }
                    push(&mut events, now + e, Ev::Epoch);
                }
                Ev::Down(u) => {
                    down[u] = true;
                    sim.set_down(u, true);
                    watch.observer.node_down(u);
                }
                Ev::Up(u) => {
                    down[u] = false;
                    sim.set_down(u, false);
                }
            }
        }
        if t < end && step_end >= end {
            // the end: every node up again for the drain
            for (u, d) in down.iter_mut().enumerate() {
                if *d {
                    *d = false;
                    sim.set_down(u, false);
                }
            }
        }
        sim.run_until(at(step_end));
        watch.feed(sim.take_tap(), step_end);
        t = step_end;
        progress(t, watch.counts.events);
        received.scan(sim, &mut watch.counts.alarms, &mut watch.counts.undelivered);
        // the drain ends once every message counted has arrived or been given up
        if t >= end
            && sent
                .keys()
                .all(|id| received.seen.contains_key(id) || received.given_up.contains(id))
        {
            break;
        }
    }
    let seen = received.seen;
    // what the engines dropped, into the counts
    for node in &sim.nodes {
        let c = node.engine().counters();
        watch.counts.dropped_budget += c.drops(engine::DropReason::ForwardBudget);
        watch.counts.dropped_queue += c.drops(engine::DropReason::ForwardQueueFull);
        watch.counts.dropped_alert += c.drops(engine::DropReason::HighAlert);
        watch.counts.replays_caught += c.drops(engine::DropReason::Replay);
    }
    watch
        .counts
        .alarms
        .sort_by(|a, b| a.time.total_cmp(&b.time).then(a.node.cmp(&b.node)));
    for (id, (t0, _, r)) in &sent {
        match seen.get(id) {
            Some((t1, stored, rr)) if rr == r => {
                watch.counts.delivered += 1;
                if *stored {
                    watch.counts.delivered_stored += 1;
                }
                watch.counts.latency.add(t1 - t0);
            }
            _ => watch.counts.failed += 1,
        }
    }
    watch.classifier.tick(sc.seconds);
    Ok(Summary {
        value: f64::NAN,
        classifier: watch.classifier.accuracy(),
        targets: std::mem::take(&mut watch.observer.results),
        waves_cut: watch.observer.waves_cut,
        watched: std::mem::take(&mut watch.observer.watched),
        attack: crate::attack_window(sc),
        counts: watch.counts,
        warmup: sc.warmup,
        nodes: n,
        measured_seconds: sc.seconds - sc.warmup,
    })
}

/// What the nodes received and the alarms they raised, read from their events as they
/// come.
struct Received {
    cursor: Vec<usize>,
    /// Per message ID: when it first arrived, whether from storage, where.
    seen: BTreeMap<[u8; 16], (f64, bool, usize)>,
    /// Messages their sender gave up.
    given_up: std::collections::BTreeSet<[u8; 16]>,
}

impl Received {
    fn new(n: usize) -> Self {
        Received {
            cursor: vec![0; n],
            seen: BTreeMap::new(),
            given_up: std::collections::BTreeSet::new(),
        }
    }

    fn scan(
        &mut self,
        sim: &Sim<Served>,
        alarms: &mut Vec<AlarmEvent>,
        undelivered: &mut Vec<(f64, u32, String)>,
    ) {
        for (r, node) in sim.nodes.iter().enumerate() {
            for (when, e) in &node.events[self.cursor[r]..] {
                match e {
                    MessengerEvent::Received(m) => {
                        self.seen.entry(m.id).or_insert((secs(*when), m.stored, r));
                    }
                    MessengerEvent::Undelivered { id, reason } => {
                        self.given_up.insert(*id);
                        undelivered.push((secs(*when), r as u32, format!("{reason:?}")));
                    }
                    MessengerEvent::Offline { id } => {
                        self.given_up.insert(*id);
                        undelivered.push((secs(*when), r as u32, "Offline".to_string()));
                    }
                    MessengerEvent::Alert { raised } => alarms.push(AlarmEvent {
                        time: secs(*when),
                        node: r as u32,
                        raised: *raised,
                    }),
                    _ => {}
                }
            }
            self.cursor[r] = node.events.len();
        }
    }
}

/// The observer's side: the tapped datagrams in time order, emissions and arrivals.
struct Watcher {
    observer: Observer,
    classifier: Classifier,
    counts: Counts,
    warmup: f64,
    /// What each node will send on, by a fingerprint of the bytes it will send.
    links: HashMap<u64, Link>,
    /// Datagrams on their way, by arrival time: (time, sequence, index in `store`).
    flying: BinaryHeap<Reverse<(Timestamp, u64, usize)>>,
    store: Vec<Option<Flying>>,
    free: Vec<usize>,
    next_tick: f64,
    secrets: Vec<crypto_simd::sphinx::MixSecretKey>,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h = 0u64;
    stack::sim::trace(&mut h, bytes);
    h
}

impl Watcher {
    /// Takes the datagrams sent up to `now` (in sending order) and every arrival due by it.
    fn feed(&mut self, tapped: Vec<Tapped>, now: f64) {
        let mut seq = 0u64;
        for d in tapped {
            self.arrivals_until(d.sent);
            self.tick(secs(d.sent));
            self.emit(d, &mut seq);
        }
        self.arrivals_until(at(now));
        self.tick(now);
    }

    fn tick(&mut self, now: f64) {
        while now >= self.next_tick {
            if self.observer.tick(self.next_tick, self.warmup) {
                for f in self.store.iter_mut().flatten() {
                    f.vectors.target = crate::observer::NONE;
                    f.link.target = None;
                }
                for l in self.links.values_mut() {
                    l.target = None;
                }
                // links never used (their packet dropped) are forgotten after a minute
                let t = self.next_tick;
                self.links.retain(|_, l| t - l.seen < 60.0);
            }
            self.classifier.tick(self.next_tick);
            self.next_tick += 1.0;
        }
    }

    fn emit(&mut self, d: Tapped, seq: &mut u64) {
        let now = secs(d.sent);
        let x = d.from;
        self.counts.events += 1;
        let link = match d.category {
            OutCategory::Forward => self.links.remove(&fingerprint(&d.bytes)).unwrap_or(Link {
                born: now,
                stage: 1,
                origin: x as u32,
                category: OutCategory::Forward,
                target: None,
                seen: now,
            }),
            c => Link {
                born: now,
                stage: 0,
                origin: x as u32,
                category: c,
                target: None,
                seen: now,
            },
        };
        if now >= self.warmup {
            let k = match link.category {
                OutCategory::Loop => LOOP,
                OutCategory::Cover => COVER,
                _ => MESSAGE,
            };
            self.counts.datagrams[k] += 1;
        }
        self.classifier.datagram(x, true);
        let forward = d.category == OutCategory::Forward;
        let target = (d.category == OutCategory::Own).then_some((x as u32, u32::MAX));
        let vectors = self.observer.emit(now, x, forward, false, None, target);
        let mut link = Link { seen: now, ..link };
        if let Some(j) = self.observer.last_target() {
            link.target = Some((self.observer.wave(), j));
        }
        match d.arrives {
            None => {
                if now >= self.warmup {
                    self.counts.lost_link += 1;
                }
                self.observer.lost(vectors);
            }
            Some(when) => {
                *seq += 1;
                let f = Flying {
                    tapped: d,
                    vectors,
                    link,
                };
                let i = match self.free.pop() {
                    Some(i) => {
                        self.store[i] = Some(f);
                        i
                    }
                    None => {
                        self.store.push(Some(f));
                        self.store.len() - 1
                    }
                };
                self.flying.push(Reverse((when, *seq, i)));
            }
        }
    }

    fn arrivals_until(&mut self, t: Timestamp) {
        while let Some(Reverse((when, _, i))) = self.flying.peek().copied() {
            if when > t {
                break;
            }
            self.flying.pop();
            let Some(f) = self.store[i].take() else {
                continue;
            };
            self.free.push(i);
            self.arrive(f);
        }
    }

    fn arrive(&mut self, f: Flying) {
        let y = f.tapped.to;
        let now = f.tapped.arrives.map_or(0.0, secs);
        self.counts.events += 1;
        self.classifier.datagram(y, false);
        let len = f.tapped.bytes.len();
        if self.scratch.len() != len {
            self.scratch.resize(len, 0);
        }
        let routing =
            crypto_simd::sphinx::process(&self.secrets[y], &f.tapped.bytes, &mut self.scratch)
                .map(|p| p.routing);
        let pooled = matches!(routing, Ok(crypto_simd::sphinx::Routing::Forward { .. }));
        if pooled {
            self.links.insert(
                fingerprint(&self.scratch),
                Link {
                    stage: f.link.stage + 1,
                    seen: now,
                    ..f.link
                },
            );
        } else if f.link.category == OutCategory::Own
            && let Some((wave, j)) = f.link.target
        {
            self.observer.set_receiver(wave, j, y as u32);
        }
        let final_own = !pooled && f.link.category == OutCategory::Own && routing.is_ok();
        let want = final_own && self.observer.senders();
        let (_, h) = self
            .observer
            .arrive(y, f.vectors, f.link.stage, pooled, false, want);
        if let (Some(h), true) = (h, now >= self.warmup) {
            self.counts.sender_entropy.push((now, f.link.origin, h));
        }
        if final_own && now >= self.warmup {
            self.classifier.message(y, false);
            self.counts.packet_latency.add(now - f.link.born);
        }
    }
}
