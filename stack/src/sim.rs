//! A deterministic test network: many [`Stack`]s in one process, virtual time, and links
//! that delay, lose, duplicate, replay and tamper with datagrams, all drawn from one seed.
//! The same seed replays a run bit for bit, so a failing seed is a reproducible bug report
//! (after TigerBeetle's VOPR). It drives each node's stack through the same contract as the
//! node's runtime: `Sim<Raw>` for engines alone, [`MessageNet`] for messengers on them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crypto_simd::sphinx::MixSecretKey;
use pki_client::{
    AuthoritySet, Consensus, IdentitySecret, MixKeys, NetworkParams, NodeDescriptor, Roles,
    SignedConsensus, UnverifiedConsensus, VerifiedConsensus, Vote,
};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use scheduler::Timestamp;

use anon::{Messenger, MessengerConfig};
use engine::{Engine, EngineConfig, EpochKeys, ReplayFilter};

use crate::services::{STORAGE_ROLE, Served, StorageService};
use crate::{Raw, Stack, Upper};

/// What the links do to datagrams. Probabilities are per datagram.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkModel {
    /// The least one-way delay.
    pub delay: Duration,
    /// A uniform extra delay up to this (so datagrams reorder).
    pub jitter: Duration,
    /// Lost.
    pub loss: f64,
    /// Delivered twice.
    pub duplicate: f64,
    /// Delivered again, up to a second later, as an attacker's replay.
    pub replay: f64,
    /// One byte flipped on the way.
    pub tamper: f64,
}

impl LinkModel {
    /// Perfect links of 1 ms.
    pub const PERFECT: LinkModel = LinkModel {
        delay: Duration::from_millis(1),
        jitter: Duration::ZERO,
        loss: 0.0,
        duplicate: 0.0,
        replay: 0.0,
        tamper: 0.0,
    };
}

/// What happened on the links.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams sent.
    pub sent: u64,
    /// Lost.
    pub lost: u64,
    /// Duplicated.
    pub duplicated: u64,
    /// Replayed.
    pub replayed: u64,
    /// Tampered with.
    pub tampered: u64,
    /// Dropped by an attacker's cut ([`Sim::cut`]).
    pub cut: u64,
}

/// A datagram on a link: arrival time, sequence (ties keep sending order), destination
/// node, bytes.
type InFlight = (Timestamp, u64, usize, Vec<u8>);

/// A datagram as a watcher of every link saw it, with what the network did to it (for the
/// simulator's observer: [`Sim::set_tap`]).
#[derive(Clone, Debug)]
pub struct Tapped {
    /// When it was sent.
    pub sent: Timestamp,
    /// Its sender.
    pub from: usize,
    /// Its receiver.
    pub to: usize,
    /// When it arrives (`None`: lost, cut, or its receiver was down).
    pub arrives: Option<Timestamp>,
    /// What it carries, as its sender's engine counted it (never on the wire).
    pub category: engine::OutCategory,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// One node of the network.
#[derive(Debug)]
pub struct SimNode<U: Upper> {
    /// Its stack.
    pub stack: Stack<U>,
    /// Its address.
    pub addr: SocketAddr,
    /// Its identity.
    pub identity: IdentitySecret,
    /// Events it produced, in order.
    pub events: Vec<(Timestamp, U::Event)>,
}

impl<U: Upper> SimNode<U> {
    /// Its engine.
    pub fn engine(&self) -> &Engine {
        self.stack.engine()
    }
}

/// Messengers on the network: what the message tests run.
pub type MessageNet = Sim<Messenger>;

/// The network.
#[derive(Debug)]
pub struct Sim<U: Upper> {
    /// Virtual time.
    pub now: Timestamp,
    /// The nodes.
    pub nodes: Vec<SimNode<U>>,
    /// The consensus they share.
    pub consensus: Arc<VerifiedConsensus>,
    /// The links.
    pub link: LinkModel,
    /// What the links did.
    pub stats: LinkStats,
    /// The seed.
    pub seed: u64,
    /// A digest of every datagram sent (time, sender, receiver, bytes) and every event, in
    /// order: two runs of one seed agree on it exactly, which the determinism test checks.
    pub trace: u64,
    by_addr: HashMap<SocketAddr, usize>,
    in_flight: BinaryHeap<Reverse<InFlight>>,
    rng: ChaCha20Rng,
    seq: u64,
    buf: Vec<u8>,
    down: Vec<bool>,
    /// Datagrams sent, by (sender, receiver), as a watcher of every link counts them:
    /// `flows[from * n + to]`. A datagram to an address outside the network counts in
    /// [`Sim::strays`].
    flows: Vec<u64>,
    strays: u64,
    /// For each node cut off by an attacker: the one node whose datagrams still reach it.
    cut: Vec<Option<Option<usize>>>,
    /// Each node's mix secret key (for a simulator that links what a node sends to what it
    /// received, as a global observer with every key would).
    mix_secrets: Vec<MixSecretKey>,
    /// Datagrams recorded while the tap is on ([`Sim::set_tap`]).
    tap: Option<Vec<Tapped>>,
}

/// Network parameters for simulations: 1,452-byte packets, `hops` hops, rho = 1.5, mean
/// delay 10 ms, L = 2 loops of 5 packets a second.
pub fn params(hops: u8) -> NetworkParams {
    NetworkParams {
        packet_size: 1452,
        hops,
        rho_permille: 1500,
        mean_delay_micros: 10_000,
        loops: 2,
        loop_rate_millis: 5_000,
        epoch_seconds: 1 << 30,
        genesis_unix: 0,
    }
}

impl Sim<Raw> {
    /// `n` engines emitting `rate` packets a second each, under `params`, on links `link`.
    /// Everything random comes from `seed`.
    pub fn new(n: usize, seed: u64, params: NetworkParams, rate: f64, link: LinkModel) -> Self {
        Sim::build(
            n,
            seed,
            params,
            rate,
            link,
            &|_| {},
            &|_| vec![],
            |_, _, _| Raw::default(),
        )
    }

    /// [`Sim::new`] with every engine's configuration changed by `tweak` (small pools and
    /// queues, for the limit tests).
    pub fn with_engines(
        n: usize,
        seed: u64,
        params: NetworkParams,
        rate: f64,
        link: LinkModel,
        tweak: &dyn Fn(&mut EngineConfig),
    ) -> Self {
        Sim::build(
            n,
            seed,
            params,
            rate,
            link,
            tweak,
            &|_| vec![],
            |_, _, _| Raw::default(),
        )
    }
}

impl Sim<Messenger> {
    /// `n` nodes with a messenger each (own data at rho * B / h), as [`Sim::new`].
    pub fn messengers(
        n: usize,
        seed: u64,
        params: NetworkParams,
        rate: f64,
        link: LinkModel,
    ) -> Self {
        let own_rate =
            f64::from(params.rho_permille) / 1000.0 * rate / f64::from(params.hops.max(1));
        Sim::build(
            n,
            seed,
            params,
            rate,
            link,
            &|_| {},
            &|_| vec![],
            |_, identity, seed| Messenger::new(identity.clone(), messenger_config(own_rate), seed),
        )
    }

    /// Node `i`'s messenger.
    pub fn messenger(&mut self, i: usize) -> &mut Messenger {
        self.nodes[i].stack.upper_mut()
    }

    /// Replaces node `i`'s messenger with one of `config` (seeded from the network).
    pub fn reconfigure(&mut self, i: usize, config: MessengerConfig) {
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let mut m = Messenger::new(self.nodes[i].identity.clone(), config, seed);
        if let Some(p) = self.nodes[i].stack.engine().paths() {
            m.set_paths(p);
        }
        *self.nodes[i].stack.upper_mut() = m;
    }
}

/// The messenger configuration of the simulated nodes: own data at `own_rate`.
fn messenger_config(own_rate: f64) -> MessengerConfig {
    MessengerConfig {
        own_rate,
        ..MessengerConfig::default()
    }
}

impl Sim<Served> {
    #[allow(clippy::too_many_arguments)]
    /// `n` nodes with a messenger each, as [`Sim::messengers`]; the nodes in `providers`
    /// are storage providers (their descriptors list [`STORAGE_ROLE`]), each with a block
    /// store of `limits` in its own directory under `dir`.
    pub fn served(
        n: usize,
        seed: u64,
        params: NetworkParams,
        rate: f64,
        link: LinkModel,
        providers: &[usize],
        dir: &std::path::Path,
        limits: storage::Limits,
    ) -> Result<Self, storage::store::StoreError> {
        Self::served_tweaked(n, seed, params, rate, link, providers, dir, limits, &|_| {})
    }

    #[allow(clippy::too_many_arguments)]
    /// [`Sim::served`] with the engines configured by `tweak` after the defaults.
    pub fn served_tweaked(
        n: usize,
        seed: u64,
        params: NetworkParams,
        rate: f64,
        link: LinkModel,
        providers: &[usize],
        dir: &std::path::Path,
        limits: storage::Limits,
        tweak: &dyn Fn(&mut EngineConfig),
    ) -> Result<Self, storage::store::StoreError> {
        let own_rate =
            f64::from(params.rho_permille) / 1000.0 * rate / f64::from(params.hops.max(1));
        let mut failed = None;
        let sim = Sim::build(
            n,
            seed,
            params,
            rate,
            link,
            tweak,
            &|i| {
                if providers.contains(&i) {
                    vec![STORAGE_ROLE.to_string()]
                } else {
                    vec![]
                }
            },
            |i, identity, seed| {
                let m = Messenger::new(identity.clone(), messenger_config(own_rate), seed);
                if !providers.contains(&i) {
                    return Served::client(m);
                }
                match storage::BlockStore::open(&dir.join(format!("provider-{i}")), limits) {
                    Ok(store) => Served::provider(m, storage::Provider::new(store)),
                    Err(e) => {
                        failed = Some(e);
                        Served::client(m)
                    }
                }
            },
        );
        match failed {
            Some(e) => Err(e),
            None => Ok(sim),
        }
    }

    /// Node `i`'s messenger.
    pub fn messenger(&mut self, i: usize) -> &mut Messenger {
        &mut self.nodes[i].stack.upper_mut().messenger
    }

    /// Gives node `i` an offline layer of `config` with each of `contacts` (node indices)
    /// as a contact.
    pub fn offline(&mut self, i: usize, config: anon::offline::OfflineConfig, contacts: &[usize]) {
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let mut o = anon::offline::Offline::new(self.nodes[i].identity.clone(), config, seed);
        for &c in contacts {
            // the network's own keys, fewer than the limit
            let _ = o.add_contact(self.nodes[c].identity.public());
        }
        self.nodes[i].stack.upper_mut().offline = Some(o);
    }

    /// Restarts node `i`'s upper layer as a crashed node's process would come back: a new
    /// messenger (nothing remembered) and an offline layer of `config` restored from the
    /// durable state it had handed out ([`anon::offline::Offline::take_changes`]).
    pub fn restart(
        &mut self,
        i: usize,
        config: anon::offline::OfflineConfig,
        contacts: &[anon::offline::ContactState],
        delivered: &[anon::MessageId],
    ) {
        let own_rate = self.nodes[i].stack.upper().messenger.config().own_rate;
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let identity = self.nodes[i].identity.clone();
        let mut m = Messenger::new(identity.clone(), messenger_config(own_rate), seed);
        if let Some(p) = self.nodes[i].stack.engine().paths() {
            m.set_paths(p);
        }
        self.rng.fill_bytes(&mut seed);
        let mut o = anon::offline::Offline::new(identity, config, seed);
        for c in contacts {
            // states this layer handed out: valid keys, fewer than the limit
            let _ = o.restore_contact(c);
        }
        o.restore_delivered(delivered.iter().copied());
        let upper = self.nodes[i].stack.upper_mut();
        upper.messenger = m;
        upper.offline = Some(o);
    }

    /// Node `i`'s upper layer.
    pub fn upper(&mut self, i: usize) -> &mut Served {
        self.nodes[i].stack.upper_mut()
    }

    /// Node `i`'s storage service, if it provides one.
    pub fn storage(&self, i: usize) -> Option<&StorageService> {
        self.nodes[i].stack.upper().storage.as_ref()
    }
}

impl<U: Upper> Sim<U> {
    /// `n` nodes emitting `rate` packets a second each, under `params`, on links `link`,
    /// their engines configured by `tweak` after the defaults, node i listing the services
    /// `services(i)` in its descriptor, each with the upper layer `make(i, identity, seed)`
    /// gives. Everything random comes from `seed`.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        n: usize,
        seed: u64,
        params: NetworkParams,
        rate: f64,
        link: LinkModel,
        tweak: &dyn Fn(&mut EngineConfig),
        services: &dyn Fn(usize) -> Vec<String>,
        mut make: impl FnMut(usize, &IdentitySecret, [u8; 32]) -> U,
    ) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let authority = IdentitySecret::generate(&mut rng);
        let mut identities = Vec::new();
        let mut mix_secrets = Vec::new();
        let mut descriptors = Vec::new();
        for i in 0..n {
            let identity = IdentitySecret::generate(&mut rng);
            let mix = MixSecretKey::generate(&mut rng);
            let addr = SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250) as u8 + 1)),
                4000,
            );
            let d = NodeDescriptor {
                identity: identity.public(),
                sequence: 1,
                addresses: vec![addr],
                bandwidth: rate.max(1.0) as u32,
                roles: Roles {
                    mix: true,
                    services: services(i),
                },
                mix_keys: MixKeys {
                    first_epoch: 0,
                    keys: vec![mix.public_key().0],
                },
            };
            // the descriptor is built from valid values; signing cannot fail
            if let Ok(signed) = d.sign(&identity) {
                descriptors.push(signed);
            }
            identities.push((identity, addr));
            mix_secrets.push(mix);
        }
        let vote = Vote {
            authority: authority.public(),
            epoch: 0,
            descriptors,
        };
        let consensus = Consensus::compute(0, params, &[&vote], 1);
        let signed = SignedConsensus::new(&consensus, vec![consensus.sign(&authority)]);
        let verified = UnverifiedConsensus::new(signed)
            .check_signatures(&AuthoritySet::including(authority.public(), []))
            .and_then(|c| c.check_valid_at(consensus.valid_after, 0));
        let verified = match verified {
            Ok(v) => Arc::new(v),
            Err(e) => unreachable_consensus(e),
        };
        let mut nodes = Vec::new();
        let mut by_addr = HashMap::new();
        let kept_secrets = mix_secrets.clone();
        for (i, ((identity, addr), mix)) in identities.into_iter().zip(mix_secrets).enumerate() {
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            let mut config = EngineConfig::new(identity.public().node_id(), rate);
            // loops take tens of milliseconds here: decide their fate quickly
            config.loop_timeout = Duration::from_secs(2);
            tweak(&mut config);
            let engine = match Engine::new(config, seed) {
                Ok(e) => e,
                Err(e) => unreachable_consensus(e),
            };
            let mut upper_seed = [0u8; 32];
            rng.fill_bytes(&mut upper_seed);
            let mut stack = Stack::new(engine, make(i, &identity, upper_seed));
            let keys = EpochKeys {
                consensus: Arc::clone(&verified),
                secret: mix,
                replay: Arc::new(ReplayFilter::new(1 << 20)),
            };
            if let Err(e) = stack.install_epoch(keys, Timestamp::ZERO) {
                unreachable_consensus(e);
            }
            by_addr.insert(addr, i);
            nodes.push(SimNode {
                stack,
                addr,
                identity,
                events: Vec::new(),
            });
        }
        Sim {
            now: Timestamp::ZERO,
            nodes,
            consensus: verified,
            link,
            stats: LinkStats::default(),
            seed,
            trace: 0,
            by_addr,
            in_flight: BinaryHeap::new(),
            rng,
            seq: 0,
            buf: vec![0u8; 65_536],
            down: vec![false; n],
            flows: vec![0; n * n],
            strays: 0,
            cut: vec![None; n],
            mix_secrets: kept_secrets,
            tap: None,
        }
    }

    /// Node `i`'s mix secret key.
    pub fn mix_secret(&self, i: usize) -> Option<&MixSecretKey> {
        self.mix_secrets.get(i)
    }

    /// Records every datagram sent from now on (`true`), or stops and forgets (`false`);
    /// [`Sim::take_tap`] hands over what was recorded. Recording changes nothing else.
    pub fn set_tap(&mut self, on: bool) {
        self.tap = on.then(Vec::new);
    }

    /// The datagrams recorded since the last call, in sending order.
    pub fn take_tap(&mut self) -> Vec<Tapped> {
        self.tap.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// The virtual time.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Node `i`'s ID.
    pub fn node_id(&self, i: usize) -> [u8; 32] {
        self.nodes[i].identity.public().node_id()
    }

    /// The network's randomness (to seed what runs on top of it).
    pub fn rng(&mut self) -> &mut ChaCha20Rng {
        &mut self.rng
    }

    /// Switches node `i` off (or back on): while off it neither runs nor receives, and what
    /// is sent to it is lost.
    pub fn set_down(&mut self, i: usize, down: bool) {
        if let Some(d) = self.down.get_mut(i) {
            *d = down;
        }
    }

    /// Datagrams node `from` has sent to node `to` so far, as a watcher of the links sees
    /// them (whatever the link then does to them).
    pub fn flow(&self, from: usize, to: usize) -> u64 {
        let n = self.nodes.len();
        self.flows.get(from * n + to).copied().unwrap_or(0)
    }

    /// Every flow so far: `flows()[from * n + to]`.
    pub fn flows(&self) -> &[u64] {
        &self.flows
    }

    /// Datagrams sent to addresses outside the network.
    pub fn strays(&self) -> u64 {
        self.strays
    }

    /// An (n-1) attacker around node `i` (section 5.0.2): while set, every datagram to `i`
    /// is dropped but those from `except` (the attacker's own node, whose packets it lets
    /// through to watch them come out); `None` lifts the cut.
    pub fn cut(&mut self, i: usize, cut: Option<Option<usize>>) {
        if let Some(c) = self.cut.get_mut(i) {
            *c = cut;
        }
    }

    fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn schedule(&mut self, at: Timestamp, to: usize, bytes: Vec<u8>) {
        self.seq += 1;
        self.in_flight.push(Reverse((at, self.seq, to, bytes)));
    }

    /// Records a datagram if the tap is on.
    fn record(
        &mut self,
        from: usize,
        to: usize,
        arrives: Option<Timestamp>,
        category: engine::OutCategory,
        bytes: &[u8],
    ) {
        if let Some(tap) = &mut self.tap {
            tap.push(Tapped {
                sent: self.now,
                from,
                to,
                arrives,
                category,
                bytes: bytes.to_vec(),
            });
        }
    }

    /// Puts a datagram from `from` on the link to `to`, as the link model says.
    fn transmit(
        &mut self,
        from: usize,
        to: usize,
        mut bytes: Vec<u8>,
        category: engine::OutCategory,
    ) {
        self.stats.sent += 1;
        let n = self.nodes.len();
        self.flows[from * n + to] += 1;
        if let Some(except) = self.cut[to]
            && except != Some(from)
        {
            self.stats.cut += 1;
            self.record(from, to, None, category, &bytes);
            return;
        }
        if self.down[to] {
            self.stats.lost += 1;
            self.record(from, to, None, category, &bytes);
            return;
        }
        if self.uniform() < self.link.loss {
            self.stats.lost += 1;
            self.record(from, to, None, category, &bytes);
            return;
        }
        if self.uniform() < self.link.tamper && !bytes.is_empty() {
            let at = (self.rng.next_u64() % bytes.len() as u64) as usize;
            bytes[at] ^= 1 << (self.rng.next_u32() % 8);
            self.stats.tampered += 1;
        }
        let jitter = self.link.jitter.mul_f64(self.uniform());
        let at = self.now.saturating_add(self.link.delay + jitter);
        self.record(from, to, Some(at), category, &bytes);
        if self.uniform() < self.link.duplicate {
            self.stats.duplicated += 1;
            self.schedule(at, to, bytes.clone());
        }
        if self.uniform() < self.link.replay {
            self.stats.replayed += 1;
            let later = at.saturating_add(Duration::from_secs(1).mul_f64(self.uniform()));
            self.schedule(later, to, bytes.clone());
        }
        self.schedule(at, to, bytes);
    }

    /// Delivers `bytes` to node `to` after the link delay, as an attacker would (no loss).
    pub fn inject(&mut self, to: usize, bytes: Vec<u8>) {
        let at = self.now.saturating_add(self.link.delay);
        self.schedule(at, to, bytes);
    }

    /// Runs the network until virtual time `until`.
    pub fn run_until(&mut self, until: Timestamp) {
        loop {
            let next_arrival = self.in_flight.peek().map(|Reverse((t, ..))| *t);
            let next_timer = self
                .nodes
                .iter()
                .zip(&self.down)
                .filter(|(_, down)| !**down)
                .filter_map(|(n, _)| n.stack.poll_timeout())
                .min();
            let Some(next) = [next_arrival, next_timer].into_iter().flatten().min() else {
                self.now = until;
                return;
            };
            if next > until {
                self.now = until;
                return;
            }
            self.now = self.now.max(next);
            self.step();
        }
    }

    /// One step at `now`: arrivals due, timers due, then everything the nodes send.
    fn step(&mut self) {
        let mut arrivals: Vec<(usize, Vec<u8>)> = Vec::new();
        while let Some(Reverse((t, ..))) = self.in_flight.peek() {
            if *t > self.now {
                break;
            }
            if let Some(Reverse((_, _, to, bytes))) = self.in_flight.pop()
                && !self.down[to]
            {
                arrivals.push((to, bytes));
            }
        }
        arrivals.sort_by_key(|(to, _)| *to);
        let now = self.now;
        let mut start = 0;
        while start < arrivals.len() {
            let to = arrivals[start].0;
            let end = start
                + arrivals[start..]
                    .iter()
                    .take_while(|(t, _)| *t == to)
                    .count();
            let mut batch: Vec<Vec<u8>> = arrivals[start..end]
                .iter()
                .map(|(_, b)| b.clone())
                .collect();
            self.nodes[to].stack.handle_datagrams(now, &mut batch);
            start = end;
        }
        for (node, _) in self.nodes.iter_mut().zip(&self.down).filter(|(_, d)| !**d) {
            if node.stack.poll_timeout().is_some_and(|t| t <= now) {
                node.stack.handle_timeout(now);
            }
        }
        let mut out = Vec::new();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if self.down[i] {
                continue;
            }
            while let Some(t) = node.stack.poll_transmit(&mut self.buf) {
                trace(&mut self.trace, &now.as_nanos().to_le_bytes());
                trace(&mut self.trace, &(i as u64).to_le_bytes());
                trace(&mut self.trace, t.to.to_string().as_bytes());
                trace(&mut self.trace, &self.buf[..t.len]);
                out.push((i, t.to, self.buf[..t.len].to_vec(), t.category));
            }
            while let Some(e) = node.stack.poll_event() {
                trace(&mut self.trace, format!("{i} {e:?}").as_bytes());
                node.events.push((now, e));
            }
        }
        for (i, to, bytes, category) in out {
            match self.by_addr.get(&to) {
                Some(&j) => self.transmit(i, j, bytes, category),
                None => self.strays += 1,
            }
        }
    }
}

/// Folds `bytes` into a trace digest (64-bit FNV-1a over the bytes and their length: not a
/// cryptographic hash, only a fingerprint of one run).
pub fn trace(digest: &mut u64, bytes: &[u8]) {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = *digest ^ 0xcbf2_9ce4_8422_2325;
    for b in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
        h = (h ^ u64::from(*b)).wrapping_mul(PRIME);
    }
    *digest = h;
}

#[allow(clippy::panic)]
fn unreachable_consensus(e: impl std::fmt::Display) -> ! {
    panic!("the simulation's own consensus failed to verify: {e}")
}
