//! The control thread: follows the epochs (the consensus fetched ahead, mix keys made and
//! erased, the descriptor registered or withdrawn) and hands each new epoch to the cores
//! and to the messaging service.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use engine::EpochKeys;
use pki_client::{
    IdentitySecret, MixKeys, NodeDescriptor, PkiClient, Roles, SignatureChecked, Which,
};
use rand_core::{Rng, SeedableRng};
use scheduler::Timestamp;
use scheduler::handoff::Sender;

use crate::clock::{Clock, unix_now};
use crate::core::Command;
use crate::keys::KeyDir;
use crate::metrics::Metrics;
use crate::service::{Input, Presence};

/// Epochs of mix keys published ahead.
const KEYS_AHEAD: u64 = 3;

/// The control thread's state: follows the epochs.
pub(crate) struct Control {
    pub(crate) client: PkiClient,
    pub(crate) keys: KeyDir,
    pub(crate) identity: IdentitySecret,
    /// The addresses this node publishes.
    pub(crate) addrs: Vec<SocketAddr>,
    /// The families its sockets send on.
    pub(crate) families: engine::Families,
    pub(crate) bandwidth: f64,
    /// The services this node provides, listed in its descriptor.
    pub(crate) services: Vec<String>,
    pub(crate) presence: Arc<Presence>,
    pub(crate) service: SyncSender<Input>,
    pub(crate) senders: Vec<Sender<Command>>,
    pub(crate) installed: Option<u64>,
    pub(crate) registered_in: Option<u64>,
    /// The replay filters' journals.
    pub(crate) journal: Arc<crate::replay::Journal>,
    /// The newest epoch whose key the cores honour ahead of its installation.
    pub(crate) prepared: Option<u64>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) clock: Clock,
    /// When a node that left stops forwarding (unix seconds).
    pub(crate) stop_forwarding_at: Option<u64>,
    /// The consensus installed, and whether it was carried forward (no consensus from the
    /// authorities for its epoch).
    pub(crate) current: Option<Arc<pki_client::VerifiedConsensus>>,
    pub(crate) carried: Option<u64>,
    /// Warnings given, each once per epoch.
    pub(crate) warned: WarnOnce,
    /// The epoch the authorities' identities and clocks were last found right in.
    pub(crate) authorities_checked: Option<u64>,
}

/// The most this node's clock may differ from the authorities' (the tolerance of the
/// consensus validity check) before it refuses to register.
const MAX_SKEW_SECONDS: i64 = 5;

/// Warnings logged once per condition and epoch, never every turn of the loop.
#[derive(Debug, Default)]
pub(crate) struct WarnOnce(Vec<(&'static str, u64)>);

impl WarnOnce {
    /// Whether `what` is new for `epoch` (and remembers it).
    fn first(&mut self, what: &'static str, epoch: u64) -> bool {
        if self.0.contains(&(what, epoch)) {
            return false;
        }
        self.0.retain(|(w, e)| *w != what || *e + 1 >= epoch);
        self.0.push((what, epoch));
        true
    }
}

/// How far into an epoch a node without its consensus carries the previous one forward:
/// a tenth of the epoch, at most 10 s (the authorities publish it half an epoch ahead, so
/// by then it is late).
fn carry_after(p: &pki_client::NetworkParams) -> u64 {
    (p.epoch_seconds / 10).clamp(1, 10)
}

/// How long before the next epoch starts its key is honoured (at most half an epoch):
/// covers the other nodes' clocks and polls being ahead of this node's.
const AHEAD_LEAD: u64 = 30;

/// How long a node that left keeps forwarding after the consensus no longer lists it: the
/// engines' grace for the previous epoch's key.
const LEAVE_GRACE_SECONDS: u64 = 30;
/// [`LEAVE_GRACE_SECONDS`] as a duration, for [`crate::Node::leave`].
pub(crate) const LEAVE_GRACE: Duration = Duration::from_secs(LEAVE_GRACE_SECONDS);

/// Shortest and longest wait after a failed request to the authorities; before the epoch
/// length is known the longest is [`BACKOFF_UNKNOWN`], after it a tenth of an epoch (so a
/// backoff never costs a node its epoch).
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const BACKOFF_UNKNOWN: Duration = Duration::from_secs(2);
/// How often an authority is asked for the epoch while there is no consensus.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Exponential backoff with jitter: after each failure the wait doubles (to
/// [`BACKOFF_MAX`]) and the next try comes at a uniformly random point of the second half
/// of it, so nodes that failed together do not retry together.
#[derive(Debug)]
struct Backoff {
    delay: Duration,
    next: Timestamp,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            delay: BACKOFF_MIN / 2,
            next: Timestamp::ZERO,
        }
    }

    fn ready(&self, now: Timestamp) -> bool {
        now >= self.next
    }

    /// A failure: wait up to twice as long as last time, at most `max`.
    fn failed(&mut self, now: Timestamp, rng: &mut impl Rng, max: Duration) {
        self.delay = (self.delay * 2).clamp(BACKOFF_MIN, max.max(BACKOFF_MIN));
        let half = self.delay / 2;
        let jitter = half.mul_f64((rng.next_u32() as f64) / f64::from(u32::MAX));
        self.next = now.saturating_add(half + jitter);
    }

    /// A success: the next try may come after `pause`.
    fn succeeded(&mut self, now: Timestamp, pause: Duration) {
        self.delay = BACKOFF_MIN / 2;
        self.next = now.saturating_add(pause);
    }
}

impl Control {
    /// Every 100 ms: learn the epoch, register once per epoch (unless passive), install the
    /// current epoch's consensus as soon as it is at hand, fetch the next one from the middle
    /// of the epoch on.
    pub(crate) fn run(&mut self, stop: &AtomicBool) {
        let mut seed = [0u8; 32];
        let _ = getrandom::fill(&mut seed);
        let mut rng = rand_chacha::ChaCha20Rng::from_seed(seed);
        let mut pending: Option<SignatureChecked> = None;
        let mut schedule: Option<pki_client::NetworkParams> = None;
        // every request to the authorities backs off on failure, each kind on its own
        let (mut fetches, mut status, mut writes) =
            (Backoff::new(), Backoff::new(), Backoff::new());
        let mut told_epoch: Option<u64> = None;
        while !stop.load(Ordering::Relaxed) {
            let now = unix_now();
            let t = self.clock.now();
            let max = schedule.map_or(BACKOFF_UNKNOWN, |p| {
                Duration::from_secs(p.epoch_seconds)
                    .div_f64(10.0)
                    .min(BACKOFF_MAX)
            });
            if schedule.is_none() && fetches.ready(t) {
                // the current consensus, or (a network's first epoch, which has none) the
                // next one, published half an epoch ahead: either gives the schedule, and the
                // next one is installed at its start like every other node's
                let which = [
                    Some(Which::Current),
                    told_epoch.map(|e| Which::Epoch(e + 1)),
                ];
                let got = which
                    .into_iter()
                    .flatten()
                    .find_map(|w| self.client.fetch(w, &mut rng).ok());
                match got {
                    Some(c) => {
                        fetches.succeeded(t, Duration::ZERO);
                        let (after, _) = c.validity();
                        if let Ok(v) = c.clone().check_valid_at(after, 0) {
                            schedule = Some(*v.params());
                        }
                        pending = Some(c);
                    }
                    None => fetches.failed(t, &mut rng, max),
                }
            }
            // the epoch: from the schedule, or, before any consensus exists, an authority's word
            let epoch = match schedule {
                Some(p) => Some(p.epoch_at(now)),
                None => {
                    if status.ready(t) {
                        match self.client.current_epoch() {
                            Some(e) => {
                                status.succeeded(t, STATUS_EVERY);
                                told_epoch = Some(e);
                            }
                            None => status.failed(t, &mut rng, max),
                        }
                    }
                    told_epoch
                }
            };
            // high-alert mode (section 5.0.2): out of the consensus until loops return
            let bound = self.presence.bound.load(Ordering::Relaxed) && !self.metrics.in_alert();
            if let Some(e) = epoch
                && bound
                && self.registered_in != Some(e)
                && writes.ready(t)
            {
                if self.register(e) {
                    writes.succeeded(t, Duration::ZERO);
                } else {
                    writes.failed(t, &mut rng, max);
                }
            }
            if let Some(e) = epoch
                && !bound
                && self.registered_in.is_some()
                && writes.ready(t)
            {
                if self.withdraw(e) {
                    writes.succeeded(t, Duration::ZERO);
                } else {
                    writes.failed(t, &mut rng, max);
                }
            }
            if let Some(e) = epoch
                && (self.installed.is_none_or(|i| i < e) || self.carried == Some(e))
            {
                let c = match pending.take() {
                    Some(c) if c.epoch() == e => Some(c),
                    other => {
                        pending = other;
                        if fetches.ready(t) {
                            match self.client.fetch(Which::Epoch(e), &mut rng) {
                                Ok(c) => {
                                    fetches.succeeded(t, Duration::ZERO);
                                    Some(c)
                                }
                                Err(err) => {
                                    fetches.failed(t, &mut rng, max);
                                    // say why, once an epoch (a wrong authority key shows here)
                                    if self.warned.first("fetch", e) {
                                        tracing::warn!(
                                            epoch = e,
                                            %err,
                                            "no consensus for the epoch yet; retrying with backoff (logged once an epoch)"
                                        );
                                    }
                                    None
                                }
                            }
                        } else {
                            None
                        }
                    }
                };
                if let Some(c) = c {
                    if schedule.is_none() {
                        let (after, _) = c.validity();
                        if let Ok(v) = c.clone().check_valid_at(after, 0) {
                            schedule = Some(*v.params());
                        }
                    }
                    match c.check_valid_at(now, 5) {
                        Ok(v) => {
                            if self.carried == Some(e) {
                                tracing::info!(
                                    epoch = e,
                                    "the authorities published the consensus; it replaces the one carried forward"
                                );
                            }
                            self.install(e, v);
                        }
                        Err(err) => {
                            if self.warned.first("invalid", e) {
                                tracing::warn!(%err, epoch = e, "consensus not valid now (logged once an epoch)");
                            }
                        }
                    }
                }
            }
            if let (Some(e), Some(p)) = (epoch, schedule)
                && self.installed.is_some_and(|i| i < e)
                && now >= p.epoch_start(e) + carry_after(&p)
            {
                self.carry_forward(e);
            }
            // a node with nothing installed yet takes the next epoch a little ahead (half as
            // far ahead as the others honour its keys): at the boundary the nodes that did
            // install already send to it, and it would have no key for their packets
            if self.installed.is_none()
                && let Some(p) = schedule
                && let Some(c) = pending.as_ref()
                && c.epoch() == p.epoch_at(now) + 1
                && p.epoch_start(c.epoch()).saturating_sub(now)
                    <= AHEAD_LEAD.min(p.epoch_seconds / 2) / 2
                && let Some(c) = pending.take()
            {
                let e = c.epoch();
                match c.check_valid_at(p.epoch_start(e), 5) {
                    Ok(v) => self.install(e, v),
                    Err(err) => {
                        if self.warned.first("invalid", e) {
                            tracing::warn!(%err, epoch = e, "consensus not valid (logged once an epoch)");
                        }
                    }
                }
            }
            if let Some(params) = schedule {
                let e = params.epoch_at(now);
                let into = now.saturating_sub(params.epoch_start(e));
                if into * 2 >= params.epoch_seconds
                    && pending.as_ref().is_none_or(|p| p.epoch() != e + 1)
                    && fetches.ready(t)
                {
                    match self.client.fetch(Which::Epoch(e + 1), &mut rng) {
                        Ok(c) => {
                            fetches.succeeded(t, Duration::ZERO);
                            pending = Some(c);
                        }
                        Err(_) => fetches.failed(t, &mut rng, max),
                    }
                }
            }
            if let Some(e) = epoch {
                self.prepare_ahead(e, schedule.as_ref(), now);
            }
            if self.presence.bound.load(Ordering::Relaxed) {
                self.stop_forwarding_at = None;
            } else if self.stop_forwarding_at.is_some_and(|at| now >= at) {
                self.stop_forwarding_at = None;
                for s in &self.senders {
                    let _ = s.try_send(Command::SetForwarding(false));
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn descriptor(&self, first_epoch: u64) -> Option<pki_client::SignedDescriptor> {
        let keys: Vec<[u8; 32]> = (first_epoch..=first_epoch + KEYS_AHEAD)
            .map_while(|e| self.keys.mix_key(e).ok().map(|k| k.public_key().0))
            .collect();
        // a sequence that grows across restarts: the wall clock in milliseconds
        let sequence = unix_now() * 1000 + u64::from(self.metrics.bump_sequence() % 1000);
        NodeDescriptor {
            identity: self.identity.public(),
            sequence,
            addresses: self.addrs.clone(),
            bandwidth: self.presence.bandwidth().min(self.bandwidth).max(1.0) as u32,
            roles: Roles {
                mix: true,
                services: self.services.clone(),
            },
            mix_keys: MixKeys { first_epoch, keys },
        }
        .sign(&self.identity)
        .ok()
    }

    /// Before registering (once an epoch): whether a majority of the configured authorities
    /// answer with the identity the configuration lists for them and a clock within
    /// [`MAX_SKEW_SECONDS`] of this node's. A wrong key or a skewed clock would make the
    /// node a dead hop (listed, but unable to verify or use any consensus): it is an error
    /// that names the fix, and the node does not register until it is fixed.
    fn authorities_agree(&mut self, epoch: u64) -> bool {
        if self.authorities_checked == Some(epoch) {
            return true;
        }
        let checks = self.client.check_authorities();
        let local = unix_now() as i64;
        let mut skews = Vec::new();
        let mut agree = 0;
        for (url, r) in &checks {
            match r {
                Ok(s) => {
                    agree += 1;
                    if let Some(t) = s.now {
                        skews.push(local - t as i64);
                    }
                }
                Err(e) if e.starts_with("unreachable") => {}
                Err(e) => {
                    if self.warned.first("authority identity", epoch) {
                        tracing::error!(%url, "authority misconfigured: {e}");
                    }
                }
            }
        }
        skews.sort_unstable();
        let skew = skews.get(skews.len() / 2).copied();
        if let Some(s) = skew {
            self.metrics.set_clock_skew(s);
            if s.abs() > MAX_SKEW_SECONDS {
                if self.warned.first("clock skew", epoch) {
                    tracing::error!(
                        skew_seconds = s,
                        "this machine's clock is {} s {} the authorities': consensus documents \
                         would look {} and the node would idle; fix the system time (NTP). \
                         Not registering until then",
                        s.abs(),
                        if s > 0 { "ahead of" } else { "behind" },
                        if s > 0 { "expired" } else { "not yet valid" },
                    );
                }
                return false;
            }
        }
        let ok = agree * 2 > checks.len();
        if ok {
            self.authorities_checked = Some(epoch);
        }
        ok
    }

    /// Registers for `epoch`; whether a majority took it.
    fn register(&mut self, epoch: u64) -> bool {
        if !self.authorities_agree(epoch) {
            return false;
        }
        let Some(d) = self.descriptor(epoch) else {
            return false;
        };
        let answers = self.client.register(&d);
        let ok = answers.iter().filter(|(_, r)| r.is_ok()).count();
        if ok * 2 > answers.len() {
            self.registered_in = Some(epoch);
            true
        } else {
            if self.warned.first("registration", epoch) {
                for (url, r) in &answers {
                    if let Err(e) = r {
                        tracing::warn!(
                            %url,
                            %e,
                            "registration refused; retrying with backoff (logged once an epoch)"
                        );
                    }
                }
            }
            false
        }
    }

    /// unbindanon: the node leaves the consensus from the next epoch on; whether a majority
    /// took the withdrawal.
    fn withdraw(&mut self, epoch: u64) -> bool {
        let sequence = unix_now() * 1000 + u64::from(self.metrics.bump_sequence() % 1000);
        let Ok(w) = pki_client::Withdrawal {
            identity: self.identity.public(),
            sequence,
            from_epoch: epoch + 1,
        }
        .sign(&self.identity) else {
            return false;
        };
        let answers = self.client.withdraw(&w);
        let taken = answers.iter().filter(|(_, r)| r.is_ok()).count() * 2 > answers.len();
        if taken {
            self.registered_in = None;
        }
        taken
    }

    /// The replay filter of `epoch`'s key, made on first use (its journal read back): the
    /// one filter the key has, whether the cores honour it ahead or installed.
    fn replay_for(
        &mut self,
        epoch: u64,
        epoch_seconds: Option<u64>,
    ) -> Option<Arc<crate::replay::PersistentReplay>> {
        // sized for the epoch: every packet this node may see under the key, four times
        // over (an hour's worth before the epoch length is known)
        let seconds = epoch_seconds.unwrap_or(3600);
        let capacity = ((self.bandwidth * 4.0) as usize)
            .saturating_mul(seconds as usize + 60)
            .clamp(1 << 14, 1 << 27);
        // two seconds of packets at four times B wait for the journal at most
        let queue = ((self.bandwidth * 8.0) as usize).clamp(1 << 12, 1 << 22);
        match self.journal.filter(epoch, capacity, queue) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::error!(epoch, %e, "cannot open the replay journal; the key is not used");
                None
            }
        }
    }

    /// Has the cores honour the key of the next epoch, which other nodes may already send
    /// under, from [`AHEAD_LEAD`] (at most half an epoch) before it starts.
    fn prepare_ahead(
        &mut self,
        epoch: u64,
        schedule: Option<&pki_client::NetworkParams>,
        now: u64,
    ) {
        let mut want = Vec::with_capacity(1);
        if let Some(p) = schedule {
            let lead = AHEAD_LEAD.min(p.epoch_seconds / 2);
            if p.epoch_start(epoch + 1).saturating_sub(now) <= lead {
                want.push(epoch + 1);
            }
        }
        for e in want {
            if self.prepared.is_some_and(|p| p >= e) || self.installed.is_some_and(|i| i >= e) {
                continue;
            }
            let secret = match self.keys.mix_key(e) {
                Ok(k) => k,
                Err(err) => {
                    tracing::error!(%err, "mix key");
                    return;
                }
            };
            let Some(replay) = self.replay_for(e, schedule.map(|p| p.epoch_seconds)) else {
                return;
            };
            for s in &self.senders {
                let _ = s.try_send(Command::PrepareKey {
                    epoch: e,
                    secret: secret.clone(),
                    replay: Arc::clone(&replay) as Arc<dyn engine::ReplayCheck>,
                });
            }
            self.prepared = Some(e);
        }
    }

    /// No consensus for `epoch` from the authorities (an outage): carry the installed one
    /// forward under the keys it lists for `epoch`, as every node does, so keys rotate on
    /// schedule; warn once. A consensus already carried cannot be carried again.
    fn carry_forward(&mut self, epoch: u64) {
        let carried = self
            .current
            .as_ref()
            .filter(|c| c.epoch() + 1 == epoch)
            .and_then(|c| c.carried_forward());
        match carried {
            Some(c) => {
                if self.warned.first("carried", epoch) {
                    tracing::warn!(
                        epoch,
                        nodes = c.nodes().len(),
                        "no consensus from the authorities for this epoch (are they down?): \
                         carrying the previous one forward under the keys it lists for this \
                         epoch; the authorities' consensus replaces it when it comes"
                    );
                }
                self.install(epoch, c);
                self.carried = Some(epoch);
                self.metrics.set_carried(true);
            }
            None => {
                if self.warned.first("expired", epoch) {
                    tracing::warn!(
                        epoch,
                        installed = self.installed,
                        "no consensus from the authorities for this epoch and none to carry \
                         forward: running on an expired consensus, mix keys cannot rotate \
                         until the authorities publish one"
                    );
                }
            }
        }
    }

    fn install(&mut self, epoch: u64, consensus: pki_client::VerifiedConsensus) {
        let secret = match self.keys.mix_key(epoch) {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(%e, "mix key");
                return;
            }
        };
        let Some(replay) = self.replay_for(epoch, Some(consensus.params().epoch_seconds)) else {
            return;
        };
        let consensus = Arc::new(consensus);
        self.current = Some(Arc::clone(&consensus));
        self.carried = None;
        self.metrics.set_carried(false);
        self.metrics.set_nodes(consensus.nodes().len());
        // a node that left forwards until the consensus no longer lists it, and through the
        // previous key's grace after (packets built under the old consensus still come)
        let listed = consensus.node(&self.identity.public().node_id()).is_some();
        self.presence.listed.store(listed, Ordering::Relaxed);
        if !listed && !self.presence.bound.load(Ordering::Relaxed) {
            self.stop_forwarding_at
                .get_or_insert(unix_now() + LEAVE_GRACE_SECONDS);
        }
        let params = *consensus.params();
        let own_rate = f64::from(params.rho_permille) / 1000.0 * self.bandwidth
            / f64::from(params.hops.max(1));
        let mut paths = engine::Paths::new(
            Arc::clone(&consensus),
            self.identity.public().node_id(),
            self.addrs.first().copied(),
            secret.public_key(),
        );
        paths.set_families(self.families);
        let unreachable = consensus
            .nodes()
            .iter()
            .filter(|n| !self.families.meet(engine::Families::of_all(&n.addresses)))
            .count();
        let before = self.metrics.unreachable_nodes();
        self.metrics.set_unreachable_nodes(unreachable);
        // said when it changes, not every epoch
        if unreachable > 0 && unreachable as u64 != before {
            tracing::warn!(
                epoch,
                unreachable,
                of = consensus.nodes().len(),
                "nodes of the consensus have no address in a family this node sends on \
                 (paths avoid them; listen on [::] to reach IPv4 and IPv6 both)"
            );
        }
        let _ = self.service.try_send(Input::Epoch { paths, own_rate });
        for s in &self.senders {
            let keys = EpochKeys {
                consensus: Arc::clone(&consensus),
                secret: secret.clone(),
                replay: Arc::clone(&replay) as Arc<dyn engine::ReplayCheck>,
            };
            if s.try_send(Command::Install(keys)).is_err() {
                tracing::error!("a core's inbox is full; the epoch is not installed there");
            }
        }
        self.installed = Some(epoch);
        // the keys of epochs before the previous one are no longer needed: erase them
        self.keys.erase_before(epoch.saturating_sub(1));
        self.journal.forget_before(epoch.saturating_sub(1));
    }
}
