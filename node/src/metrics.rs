//! Metrics: each core publishes a snapshot every 100 ms; `GET /metrics` on the configured
//! address (127.0.0.1 by default) renders them in the Prometheus text format. The endpoint
//! is a small blocking HTTP server on its own thread, off the packet path.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use engine::{Counters, DropReason};

/// The upper bounds, in seconds, of the lateness histogram's buckets (1-2-5 steps).
pub const LATENESS_BUCKETS: [f64; 19] = [
    10e-6, 20e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 20e-3, 50e-3, 0.1, 0.2,
    0.5, 1.0, 2.0, 5.0, 10.0,
];

/// What a core last published.
#[derive(Clone, Debug)]
pub struct CoreSnapshot {
    /// Its counters.
    pub counters: Counters,
    /// Packets held for their delay.
    pub held: usize,
    /// Own packets waiting for a slot.
    pub own_queued: usize,
    /// How late packets left after their slot, nanoseconds.
    pub lateness: hdrhistogram::Histogram<u64>,
    /// Its I/O backend.
    pub io: &'static str,
    /// Datagrams the kernel dropped at its socket, the receive queue full while the core
    /// was behind (`SO_MEMINFO`), since the socket was opened.
    pub socket_drops: u64,
}

/// The node's metrics.
#[derive(Debug)]
pub struct Metrics {
    cores: Mutex<Vec<Option<CoreSnapshot>>>,
    epoch: AtomicU64,
    nodes: AtomicU64,
    sequence: AtomicU32,
    messenger: Mutex<anon::MessengerCounters>,
    offline: Mutex<anon::offline::OfflineCounters>,
    undeliverable: AtomicU64,
    /// Datagrams the kernel refused, by category (own, forward, loop, cover).
    send_failed: [AtomicU64; 4],
    unreachable_nodes: AtomicU64,
    replay_unsaved: AtomicU64,
    offline_unsaved: AtomicU64,
    carried: AtomicU64,
    /// This node's clock minus the authorities' (median), seconds.
    clock_skew: std::sync::atomic::AtomicI64,
    /// Cores whose loops collapsed (high-alert mode), and alarms raised so far.
    in_alert: AtomicU64,
    alerts: AtomicU64,
    storage: Mutex<Option<StorageReport>>,
}

/// What a storage provider reports.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StorageReport {
    pub(crate) stats: storage::store::Stats,
    pub(crate) answers: storage::provider::Counts,
    pub(crate) service: stack::services::ServiceCounts,
}

const NO_EPOCH: u64 = u64::MAX;

fn category_index(c: engine::OutCategory) -> usize {
    match c {
        engine::OutCategory::Own => 0,
        engine::OutCategory::Forward => 1,
        engine::OutCategory::Loop => 2,
        engine::OutCategory::Cover => 3,
    }
}

impl Metrics {
    pub(crate) fn new(cores: usize) -> Self {
        Metrics {
            cores: Mutex::new(vec![None; cores]),
            epoch: AtomicU64::new(NO_EPOCH),
            nodes: AtomicU64::new(0),
            sequence: AtomicU32::new(0),
            messenger: Mutex::new(anon::MessengerCounters::default()),
            offline: Mutex::new(anon::offline::OfflineCounters::default()),
            undeliverable: AtomicU64::new(0),
            send_failed: Default::default(),
            unreachable_nodes: AtomicU64::new(0),
            replay_unsaved: AtomicU64::new(0),
            offline_unsaved: AtomicU64::new(0),
            carried: AtomicU64::new(0),
            clock_skew: std::sync::atomic::AtomicI64::new(0),
            in_alert: AtomicU64::new(0),
            alerts: AtomicU64::new(0),
            storage: Mutex::new(None),
        }
    }

    pub(crate) fn set_messenger(&self, c: anon::MessengerCounters) {
        *self.messenger.lock().unwrap_or_else(|e| e.into_inner()) = c;
    }

    pub(crate) fn set_storage(&self, r: StorageReport) {
        *self.storage.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
    }

    /// The storage provider's report, on a provider.
    pub(crate) fn storage(&self) -> Option<StorageReport> {
        *self.storage.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn count_undeliverable(&self) {
        self.undeliverable.fetch_add(1, Ordering::Relaxed);
    }

    /// A datagram the kernel did not take (a full socket buffer, an unreachable address):
    /// counted as failed, not as sent.
    pub(crate) fn count_send_failed(&self, category: engine::OutCategory) {
        self.send_failed[category_index(category)].fetch_add(1, Ordering::Relaxed);
    }

    /// Datagrams the kernel did not take.
    pub fn send_failed(&self) -> u64 {
        self.send_failed
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn set_clock_skew(&self, seconds: i64) {
        self.clock_skew.store(seconds, Ordering::Relaxed);
    }

    /// This node's clock minus the authorities' (their median), seconds, as last measured.
    pub fn clock_skew(&self) -> i64 {
        self.clock_skew.load(Ordering::Relaxed)
    }

    /// A core's loops collapsed (`raised`) or came back.
    pub(crate) fn set_alert(&self, raised: bool) {
        if raised {
            self.in_alert.fetch_add(1, Ordering::Relaxed);
            self.alerts.fetch_add(1, Ordering::Relaxed);
        } else {
            let _ = self
                .in_alert
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// Whether the node is in high-alert mode: the loops of one of its cores collapsed (a
    /// possible (n-1) attack, section 5.0.2) and have not come back.
    pub fn in_alert(&self) -> bool {
        self.in_alert.load(Ordering::Relaxed) > 0
    }

    pub(crate) fn set_carried(&self, carried: bool) {
        self.carried.store(u64::from(carried), Ordering::Relaxed);
    }

    /// Whether the installed consensus was carried forward (the authorities published none
    /// for its epoch).
    pub fn carried(&self) -> bool {
        self.carried.load(Ordering::Relaxed) == 1
    }

    /// A write of the offline layer's durable state failed.
    pub(crate) fn offline_unsaved(&self) {
        self.offline_unsaved.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_replay_unsaved(&self, n: u64) {
        self.replay_unsaved.store(n, Ordering::Relaxed);
    }

    pub(crate) fn set_unreachable_nodes(&self, n: usize) {
        self.unreachable_nodes.store(n as u64, Ordering::Relaxed);
    }

    /// Nodes of the installed consensus this node has no address family in common with.
    pub fn unreachable_nodes(&self) -> u64 {
        self.unreachable_nodes.load(Ordering::Relaxed)
    }

    /// Messages and deliveries dropped for want of room on the way to an application.
    pub fn undeliverable(&self) -> u64 {
        self.undeliverable.load(Ordering::Relaxed)
    }

    /// The messaging layer's counters.
    pub(crate) fn set_offline(&self, c: anon::offline::OfflineCounters) {
        *self.offline.lock().unwrap_or_else(|e| e.into_inner()) = c;
    }

    /// What offline delivery counted (docs/storage.md).
    pub fn offline(&self) -> anon::offline::OfflineCounters {
        *self.offline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the messenger counted.
    pub fn messenger(&self) -> anon::MessengerCounters {
        self.messenger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn cores(&self) -> MutexGuard<'_, Vec<Option<CoreSnapshot>>> {
        self.cores.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn publish(&self, core: usize, snapshot: CoreSnapshot) {
        if let Some(slot) = self.cores().get_mut(core) {
            *slot = Some(snapshot);
        }
    }

    pub(crate) fn set_epoch(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::Relaxed);
    }

    pub(crate) fn set_nodes(&self, n: usize) {
        self.nodes.store(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn bump_sequence(&self) -> u32 {
        self.sequence.fetch_add(1, Ordering::Relaxed)
    }

    /// Nodes in the installed consensus.
    pub fn nodes(&self) -> usize {
        self.nodes.load(Ordering::Relaxed) as usize
    }

    /// The epoch installed, if any.
    pub fn epoch(&self) -> Option<u64> {
        Some(self.epoch.load(Ordering::Relaxed)).filter(|&e| e != NO_EPOCH)
    }

    /// The counters of every core, summed.
    pub fn counters(&self) -> Counters {
        let mut total = Counters::default();
        for c in self.cores().iter().flatten() {
            total.add(&c.counters);
        }
        total
    }

    /// Datagrams each core received.
    pub fn received_per_core(&self) -> Vec<u64> {
        self.cores()
            .iter()
            .map(|c| c.as_ref().map(|c| c.counters.received).unwrap_or(0))
            .collect()
    }

    /// Departure lateness after the slot, all cores: (p50, p99) in microseconds.
    pub fn lateness_micros(&self) -> (f64, f64) {
        let (p50, p99, _, _) = self.lateness();
        (p50, p99)
    }

    /// Departure lateness, all cores: p50 and p99 in microseconds, the sum in seconds and
    /// the count of departures measured.
    fn lateness(&self) -> (f64, f64, f64, u64) {
        self.merged_lateness()
            .map(|h| {
                (
                    h.value_at_quantile(0.5) as f64 / 1e3,
                    h.value_at_quantile(0.99) as f64 / 1e3,
                    h.mean() * h.len() as f64 / 1e9,
                    h.len(),
                )
            })
            .unwrap_or((0.0, 0.0, 0.0, 0))
    }

    /// Every core's departure lateness in one histogram (nanoseconds).
    fn merged_lateness(&self) -> Option<hdrhistogram::Histogram<u64>> {
        let mut h = hdrhistogram::Histogram::<u64>::new(2).ok()?;
        for c in self.cores().iter().flatten() {
            let _ = h.add(&c.lateness);
        }
        Some(h)
    }

    /// The Prometheus text rendering.
    pub fn render(&self) -> String {
        let cores = self.cores().clone();
        let mut total = Counters::default();
        let (mut held, mut own, mut socket_drops) = (0usize, 0usize, 0u64);
        for c in cores.iter().flatten() {
            total.add(&c.counters);
            held += c.held;
            own += c.own_queued;
            socket_drops += c.socket_drops;
        }
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(
                out,
                "# HELP mixed_{name} {help}\n# TYPE mixed_{name} counter"
            );
            for (labels, v) in samples {
                let _ = writeln!(out, "mixed_{name}{labels} {v}");
            }
        };
        counter(
            "packets_received_total",
            "Datagrams received.",
            &[("", total.received)],
        );
        let failed: [u64; 4] =
            core::array::from_fn(|i| self.send_failed[i].load(Ordering::Relaxed));
        counter(
            "packets_sent_total",
            "Packets the kernel took, by what they carried.",
            &[
                (
                    "{category=\"own\"}",
                    total.sent_own.saturating_sub(failed[0]),
                ),
                (
                    "{category=\"forward\"}",
                    total.sent_forward.saturating_sub(failed[1]),
                ),
                (
                    "{category=\"loop\"}",
                    total.sent_loop.saturating_sub(failed[2]),
                ),
                (
                    "{category=\"cover\"}",
                    total.sent_cover.saturating_sub(failed[3]),
                ),
            ],
        );
        counter(
            "hops_total",
            "Packets unwrapped, by kind of hop.",
            &[
                ("{kind=\"forward\"}", total.forward_hops),
                ("{kind=\"final\"}", total.final_hops),
            ],
        );
        let mut drops: Vec<(String, u64)> = DropReason::ALL
            .iter()
            .map(|r| (format!("{{reason=\"{}\"}}", r.label()), total.drops(*r)))
            .collect();
        // the kernel's, before the engine saw them: a core too slow for what it receives
        drops.push(("{reason=\"socket_overflow\"}".into(), socket_drops));
        let drops: Vec<(&str, u64)> = drops.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        counter("drops_total", "Packets dropped, by reason.", &drops);
        counter(
            "loops_total",
            "Loops, by outcome.",
            &[
                ("{outcome=\"returned\"}", total.loops_returned),
                ("{outcome=\"lost\"}", total.loops_lost),
            ],
        );
        counter(
            "messages_delivered_total",
            "Messages delivered to the application.",
            &[("", total.delivered)],
        );
        counter(
            "replies_sealed_total",
            "Packets for this node still sealed: replies through its SURBs (or damaged).",
            &[("", total.sealed)],
        );
        counter(
            "cover_received_total",
            "Drop cover received and discarded.",
            &[("", total.cover_received)],
        );
        let m = self.messenger();
        counter(
            "anon_messages_total",
            "Whole messages, by direction.",
            &[
                ("{direction=\"sent\"}", m.messages_sent),
                ("{direction=\"received\"}", m.messages_received),
            ],
        );
        counter(
            "anon_symbols_total",
            "RaptorQ symbols, by fate.",
            &[
                ("{fate=\"sent\"}", m.symbols_sent),
                ("{fate=\"received\"}", m.symbols_received),
                ("{fate=\"ignored\"}", m.symbols_ignored),
            ],
        );
        counter(
            "anon_acks_total",
            "Acknowledgements, by kind and direction.",
            &[
                ("{kind=\"ack\",direction=\"sent\"}", m.acks_sent),
                ("{kind=\"ack\",direction=\"received\"}", m.acks_received),
                ("{kind=\"nack\",direction=\"sent\"}", m.nacks_sent),
                ("{kind=\"nack\",direction=\"received\"}", m.nacks_received),
            ],
        );
        counter(
            "anon_retries_total",
            "Attempts after the first.",
            &[("", m.retries)],
        );
        counter(
            "anon_offline_total",
            "Messages whose recipient seemed offline after every attempt.",
            &[("", m.offline)],
        );
        let o = self.offline();
        counter(
            "offline_messages_total",
            "Offline delivery: messages to contacts that seemed offline, by fate at the sender (uploads, stored at providers, delivered, not stored), and stored messages collected by this node (recovered).",
            &[
                ("{fate=\"uploaded\"}", o.uploads),
                ("{fate=\"stored\"}", o.stored),
                ("{fate=\"delivered\"}", o.delivered),
                ("{fate=\"not_stored\"}", o.not_stored),
                ("{fate=\"recovered\"}", o.recovered),
            ],
        );
        counter(
            "offline_requests_total",
            "Offline delivery: requests to storage providers, by kind, and those unanswered in time.",
            &[
                ("{kind=\"put\"}", o.puts),
                ("{kind=\"get\"}", o.gets),
                ("{kind=\"timeout\"}", o.timeouts),
            ],
        );
        counter(
            "offline_boxes_total",
            "Offline delivery: boxes the writer abandoned, boxes the reader skipped, blocks or responses that did not verify.",
            &[
                ("{fate=\"abandoned\"}", o.abandoned),
                ("{fate=\"skipped\"}", o.skipped),
                ("{fate=\"malformed\"}", o.malformed),
            ],
        );
        counter(
            "anon_dropped_total",
            "Messaging input dropped, by reason.",
            &[
                ("{reason=\"malformed\"}", m.malformed),
                ("{reason=\"unknown_sealed\"}", m.unknown_sealed),
                ("{reason=\"bad_object\"}", m.bad_objects),
                ("{reason=\"bad_identity\"}", m.bad_identity),
                ("{reason=\"incoming_full\"}", m.incoming_full),
                ("{reason=\"incoming_expired\"}", m.incoming_expired),
                ("{reason=\"events_dropped\"}", m.events_dropped),
                (
                    "{reason=\"undeliverable\"}",
                    self.undeliverable.load(Ordering::Relaxed),
                ),
            ],
        );
        counter(
            "send_failed_total",
            "Datagrams the kernel did not take (full socket buffer, unreachable address), by what they carried.",
            &[
                ("{category=\"own\"}", failed[0]),
                ("{category=\"forward\"}", failed[1]),
                ("{category=\"loop\"}", failed[2]),
                ("{category=\"cover\"}", failed[3]),
            ],
        );
        counter(
            "replay_unsaved_total",
            "Replay tags not written to the journal (queue full, write failed): after a crash their packets could be replayed once.",
            &[("", self.replay_unsaved.load(Ordering::Relaxed))],
        );
        counter(
            "offline_unsaved_total",
            "Writes of the offline state (contacts, stream frontiers, stored messages delivered) that failed: after a restart a stored message could be delivered again.",
            &[("", self.offline_unsaved.load(Ordering::Relaxed))],
        );
        if let Some(st) = self.storage() {
            let by_status: Vec<(String, u64)> = storage::Status::ALL
                .iter()
                .map(|s| (format!("{{status=\"{}\"}}", s.name()), st.answers.get(*s)))
                .collect();
            let by_status: Vec<(&str, u64)> =
                by_status.iter().map(|(l, v)| (l.as_str(), *v)).collect();
            counter(
                "storage_requests_total",
                "Storage requests answered, by status (stored, found, empty, deleted, or why refused).",
                &by_status,
            );
            counter(
                "storage_unanswered_total",
                "Storage requests left without their response, by reason.",
                &[
                    ("{reason=\"no_surbs\"}", st.service.no_surbs),
                    ("{reason=\"reply_failed\"}", st.service.reply_failed),
                ],
            );
        }
        let buckets = ["1", "3", "7", "15", "31", "63", "+Inf"];
        let _ = writeln!(
            out,
            "# HELP mixed_batch_size Receive batch sizes.\n# TYPE mixed_batch_size histogram"
        );
        let mut cumulative = 0;
        for (le, n) in buckets.iter().zip(total.batch_sizes) {
            cumulative += n;
            let _ = writeln!(out, "mixed_batch_size_bucket{{le=\"{le}\"}} {cumulative}");
        }
        // every datagram received was handled in one batch
        let _ = writeln!(out, "mixed_batch_size_sum {}", total.received);
        let _ = writeln!(out, "mixed_batch_size_count {cumulative}");
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(
                out,
                "# HELP mixed_{name} {help}\n# TYPE mixed_{name} gauge\nmixed_{name} {v}"
            );
        };
        if let Some(st) = self.storage() {
            for (name, help, v) in [
                ("storage_blocks", "Blocks the store holds.", st.stats.blocks),
                (
                    "storage_bytes",
                    "Bytes of the blocks the store holds.",
                    st.stats.bytes,
                ),
                (
                    "storage_markers",
                    "Tombstone and expiry markers the store holds.",
                    st.stats.markers,
                ),
            ] {
                gauge(&mut out, name, help, v as f64);
            }
        }
        gauge(
            &mut out,
            "held_packets",
            "Packets held for their delay.",
            held as f64,
        );
        gauge(
            &mut out,
            "own_queued_packets",
            "Own packets waiting for a slot.",
            own as f64,
        );
        gauge(
            &mut out,
            "epoch",
            "The epoch installed (-1: none yet).",
            self.epoch().map(|e| e as f64).unwrap_or(-1.0),
        );
        gauge(
            &mut out,
            "consensus_nodes",
            "Nodes in the installed consensus.",
            self.nodes.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut out,
            "clock_skew_seconds",
            "This node's clock minus the authorities' (their median), as last measured before registering.",
            self.clock_skew.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut out,
            "consensus_carried",
            "1 while the installed consensus is the previous one carried forward (no consensus from the authorities for this epoch).",
            self.carried.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut out,
            "high_alert",
            "1 while the node is in high-alert mode: its loops stopped returning (a possible (n-1) attack); it is withdrawn from the consensus and forwards nothing until they return.",
            f64::from(u8::from(self.in_alert())),
        );
        gauge(
            &mut out,
            "alerts",
            "High-alert modes entered since start (loop collapses).",
            self.alerts.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut out,
            "unreachable_nodes",
            "Nodes of the installed consensus with no address in a family this node sends on.",
            self.unreachable_nodes.load(Ordering::Relaxed) as f64,
        );
        let (p50, p99, sum, count) = self.lateness();
        let _ = writeln!(
            out,
            "# HELP mixed_departure_lateness_seconds How late packets left after their slot.\n# TYPE mixed_departure_lateness_seconds summary"
        );
        let _ = writeln!(
            out,
            "mixed_departure_lateness_seconds{{quantile=\"0.5\"}} {}",
            p50 / 1e6
        );
        let _ = writeln!(
            out,
            "mixed_departure_lateness_seconds{{quantile=\"0.99\"}} {}",
            p99 / 1e6
        );
        let _ = writeln!(out, "mixed_departure_lateness_seconds_sum {sum}");
        let _ = writeln!(out, "mixed_departure_lateness_seconds_count {count}");
        // the same departures as a histogram: cumulative counts, so that a tool reading the
        // metrics twice has the quantiles of the window between (mixed-perf, --self-test)
        let _ = writeln!(
            out,
            "# HELP mixed_slot_lateness_seconds How late packets left after their slot.\n# TYPE mixed_slot_lateness_seconds histogram"
        );
        if let Some(h) = self.merged_lateness() {
            for le in LATENESS_BUCKETS {
                let below = h.count_between(0, (le * 1e9) as u64);
                let _ = writeln!(
                    out,
                    "mixed_slot_lateness_seconds_bucket{{le=\"{le}\"}} {below}"
                );
            }
            let _ = writeln!(
                out,
                "mixed_slot_lateness_seconds_bucket{{le=\"+Inf\"}} {}",
                h.len()
            );
            let _ = writeln!(out, "mixed_slot_lateness_seconds_sum {sum}");
            let _ = writeln!(out, "mixed_slot_lateness_seconds_count {}", h.len());
        }
        let returned = total.loops_returned as f64;
        let ended = (total.loops_returned + total.loops_lost) as f64;
        gauge(
            &mut out,
            "loop_success_ratio",
            "Loops that returned, of those that ended.",
            if ended > 0.0 { returned / ended } else { 1.0 },
        );
        let _ = writeln!(
            out,
            "# HELP mixed_core_info Each core and its I/O backend.\n# TYPE mixed_core_info gauge"
        );
        for (i, c) in cores.iter().enumerate() {
            if let Some(c) = c {
                let _ = writeln!(out, "mixed_core_info{{core=\"{i}\",io=\"{}\"}} 1", c.io);
            }
        }
        out
    }
}

/// Scrapes answered at once; a connection past them is answered 503 at once.
const MAX_SCRAPES: usize = 32;
/// How long a scrape may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(250);

/// Serves `GET /metrics` on `addr` until `stop`: each connection on its own short-lived
/// thread, at most [`MAX_SCRAPES`] at once, each given [`REQUEST_TIMEOUT`] to ask, so idle
/// or slow connections cannot hold up a scrape.
pub(crate) fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot serve metrics on {addr}: {e}"))
    })?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("mixed-metrics".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        if busy.fetch_add(1, Ordering::AcqRel) >= MAX_SCRAPES {
                            busy.fetch_sub(1, Ordering::AcqRel);
                            let _ = respond(&mut stream, "503 Service Unavailable", "busy\n");
                            continue;
                        }
                        let metrics = Arc::clone(&metrics);
                        let done = Arc::clone(&busy);
                        let spawned = std::thread::Builder::new()
                            .name("mixed-scrape".into())
                            .spawn(move || {
                                scrape(&mut stream, &metrics);
                                done.fetch_sub(1, Ordering::AcqRel);
                            });
                        if spawned.is_err() {
                            busy.fetch_sub(1, Ordering::AcqRel);
                            tracing::warn!("cannot start a metrics thread");
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })?;
    Ok(bound)
}

fn scrape(stream: &mut std::net::TcpStream, metrics: &Metrics) {
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let mut request = [0u8; 1024];
    let n = stream.read(&mut request).unwrap_or(0);
    if request[..n].starts_with(b"GET /metrics") {
        let _ = respond(stream, "200 OK", &metrics.render());
    } else {
        let _ = respond(
            stream,
            "404 Not Found",
            "only GET /metrics is served here\n",
        );
    }
}

fn respond(stream: &mut std::net::TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::disallowed_methods)]
mod tests;
