//! One core: a thread, pinned, with its own SO_REUSEPORT socket, its I/O backend and its
//! [`Stack`]. The stack's upper layer is [`CoreLink`]: deliveries go to the messaging
//! service, the packets the service built come back through lock-free queues. Nothing else
//! crosses cores on the packet path but the shared replay filter of each key; commands reach
//! a core through its bounded inbox, drained once per turn of its loop.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;

use engine::{EpochKeys, Event, OutCategory, Paths, SendError};
use scheduler::Timestamp;
use scheduler::handoff::Inbox;
use stack::{Stack, Upper};

use crate::clock::Clock;
use crate::io::Io;
use crate::metrics::{CoreSnapshot, Metrics};
use crate::service::{Input, OWN_AHEAD, OwnQueues};

/// Longest a core waits for I/O before looking at its inbox again.
const MAX_WAIT: Duration = Duration::from_millis(20);
/// Commands a core's inbox holds.
pub(crate) const INBOX: usize = 1024;

/// A raw delivery of a core ([`crate::Node::tap`]).
#[derive(Clone, Debug, PartialEq)]
pub struct NodeEvent {
    /// When, on the node's clock.
    pub at: Timestamp,
    /// What.
    pub event: Event,
}

/// A command for a core.
pub(crate) enum Command {
    Install(EpochKeys),
    /// Honour this node's key for an epoch not yet installed ([`engine::Engine::prepare_key`]).
    PrepareKey {
        epoch: u64,
        secret: crypto_simd::sphinx::MixSecretKey,
        replay: Arc<dyn engine::ReplayCheck>,
    },
    SetForwarding(bool),
    Send {
        to: [u8; 32],
        payload: Vec<u8>,
        reply: SyncSender<Result<[u8; 16], SendError>>,
    },
    /// Copy raw deliveries to this channel ([`crate::Node::tap`]).
    Tap(SyncSender<NodeEvent>),
}

/// A core's upper layer: the messaging service on its own thread, reached through bounded
/// queues (deliveries up by channel, built packets down by lock-free queues).
pub(crate) struct CoreLink {
    pub(crate) core: usize,
    pub(crate) service: SyncSender<Input>,
    pub(crate) own: Arc<OwnQueues>,
    pub(crate) metrics: Arc<Metrics>,
    /// Raw deliveries, for tests and tools that send one-packet messages
    /// ([`crate::Node::send`]); `None` in production.
    pub(crate) raw: Option<SyncSender<NodeEvent>>,
}

impl Upper for CoreLink {
    type Event = Infallible;

    fn deliver(&mut self, now: Timestamp, event: Event) {
        match event {
            Event::LoopCollapse { recent, usual } | Event::LoopsRecovered { recent, usual } => {
                let raised = matches!(event, Event::LoopCollapse { .. });
                if raised {
                    tracing::warn!(
                        core = self.core,
                        recent,
                        usual,
                        "loops stopped returning: a possible (n-1) attack around this node; high-alert mode: withdrawing from the consensus and forwarding nothing until they return"
                    );
                } else {
                    tracing::warn!(
                        core = self.core,
                        recent,
                        usual,
                        "loops return again: high-alert mode over, registering and forwarding again"
                    );
                }
                self.metrics.set_alert(raised);
                if let Err(TrySendError::Full(_)) = self.service.try_send(Input::Core(event)) {
                    self.metrics.count_undeliverable();
                }
            }
            event => {
                if let Some(raw) = &self.raw {
                    let _ = raw.try_send(NodeEvent {
                        at: now,
                        event: event.clone(),
                    });
                }
                if let Err(TrySendError::Full(_)) = self.service.try_send(Input::Core(event)) {
                    self.metrics.count_undeliverable();
                }
            }
        }
    }

    fn set_paths(&mut self, _paths: Paths) {
        // the control thread gives the service its paths
    }

    fn measured(&mut self, _returned: u64, _lost: u64, reliability: &HashMap<[u8; 32], f64>) {
        let nodes = reliability.iter().map(|(id, r)| (*id, *r)).collect();
        let _ = self.service.try_send(Input::Reliability {
            core: self.core,
            nodes,
        });
    }

    fn poll_control(&mut self, buf: &mut Vec<u8>) -> Option<[u8; 32]> {
        let mut p = self.own.control.pop()?;
        std::mem::swap(buf, &mut p.bytes);
        let _ = self.own.free.push(p.bytes);
        Some(p.hop)
    }

    fn poll_packets(&mut self, _: Timestamp, bufs: &mut [Vec<u8>], hops: &mut [[u8; 32]]) -> usize {
        let mut n = 0;
        for (buf, hop) in bufs.iter_mut().zip(hops.iter_mut()) {
            let Some(mut p) = self.own.data.pop() else {
                break;
            };
            std::mem::swap(buf, &mut p.bytes);
            let _ = self.own.free.push(p.bytes);
            *hop = p.hop;
            n += 1;
        }
        n
    }

    fn own_ahead(&self) -> usize {
        OWN_AHEAD
    }

    fn handle_timeout(&mut self, _now: Timestamp) {}

    fn poll_timeout(&self) -> Option<Timestamp> {
        None
    }

    fn poll_event(&mut self) -> Option<Infallible> {
        None
    }
}

/// What a core runs on.
pub(crate) struct CoreTask {
    pub(crate) index: usize,
    pub(crate) stack: Stack<CoreLink>,
    pub(crate) io: Io,
    pub(crate) inbox: Inbox<Command>,
    pub(crate) clock: Clock,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) metrics: Arc<Metrics>,
}

impl CoreTask {
    /// The core's loop, until the node stops: commands, receive (up to the stack's next
    /// deadline), timers, then every datagram the slots decided.
    pub(crate) fn run(self) {
        let CoreTask {
            index,
            mut stack,
            mut io,
            inbox,
            clock,
            stop,
            metrics,
        } = self;
        let mut lateness = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 2)
            .unwrap_or_else(|_| {
                hdrhistogram::Histogram::new(2).unwrap_or_else(|_| unreachable_histogram())
            });
        let mut last_publish = clock.now();
        let mut refused = Refusals::default();
        let mut waker = Waker::default();
        while !stop.load(Ordering::Relaxed) {
            // the one point where other threads' commands enter this core
            inbox.drain(INBOX, |cmd| match cmd {
                Command::Install(keys) => {
                    let epoch = keys.consensus.epoch();
                    match stack.install_epoch(keys, clock.now()) {
                        Ok(()) => metrics.set_epoch(epoch),
                        Err(e) => tracing::error!(core = index, %e, "cannot install the epoch"),
                    }
                }
                Command::PrepareKey {
                    epoch,
                    secret,
                    replay,
                } => stack.engine_mut().prepare_key(epoch, secret, replay),
                Command::SetForwarding(on) => stack.engine_mut().set_forwarding(on),
                Command::Send { to, payload, reply } => {
                    let _ = reply.try_send(stack.engine_mut().send_message(to, &payload));
                }
                Command::Tap(tx) => stack.upper_mut().raw = Some(tx),
            });
            let now = clock.now();
            let wait = stack
                .poll_timeout()
                .map(|t| t.saturating_since(now))
                .unwrap_or(MAX_WAIT)
                .min(MAX_WAIT);
            // wake early by what sleeps have overshot lately, and do not sleep at all for
            // less than that: a slot is due then (on a busy or virtual machine a timed wait
            // can end milliseconds late, and every departure after it would be as late)
            let wait = wait.saturating_sub(waker.margin());
            let mut got = 0;
            let received = io.recv(wait, |batch| {
                got = batch.len();
                stack.handle_datagrams(clock.now(), batch)
            });
            if got == 0 && !wait.is_zero() {
                waker.slept(wait, clock.now().saturating_since(now));
            }
            if let Err(e) = received {
                tracing::error!(core = index, %e, "receive failed");
                std::thread::sleep(Duration::from_millis(10));
            }
            // timers due, and the service's packets taken in (the stack's pump)
            let now = clock.now();
            stack.handle_timeout(now);
            // send what the slots decided, in batches written straight into the backend's
            // transmit buffers
            loop {
                let mut categories = [OutCategory::Cover; crate::io::BATCH];
                let mut n = 0;
                let sent = io.send_batch(|buf| {
                    let t = stack.poll_transmit(buf)?;
                    let late = now.saturating_since(t.due).as_nanos() as u64;
                    let _ = lateness.record(late.max(1));
                    if let Some(c) = categories.get_mut(n) {
                        *c = t.category;
                    }
                    n += 1;
                    Some((t.to, t.len))
                });
                match sent {
                    Ok(s) if s.filled == 0 => break,
                    Ok(s) => {
                        if s.failed != 0 {
                            for (i, c) in categories.iter().enumerate().take(s.filled) {
                                if s.failed & (1 << i) != 0 {
                                    metrics.count_send_failed(*c);
                                }
                            }
                            refused.note(index, s.failed.count_ones(), s.error, now);
                        }
                    }
                    Err(e) => {
                        tracing::error!(core = index, %e, "send failed");
                        break;
                    }
                }
            }
            if now.saturating_since(last_publish) >= Duration::from_millis(100) {
                last_publish = now;
                metrics.publish(index, snapshot(&stack, &lateness, &io));
            }
        }
        metrics.publish(index, snapshot(&stack, &lateness, &io));
    }
}

/// How early a core wakes for its next deadline: a moving average of how far its timed
/// waits overshot (an eighth of each new one), plus [`Waker::FLOOR`], at most
/// [`Waker::CAP`]. A core whose next slot is closer than that does not sleep.
#[derive(Debug, Default)]
struct Waker {
    /// The average overshoot, nanoseconds.
    overshoot: u64,
}

impl Waker {
    /// Added to the average: the cost of entering and leaving a wait.
    const FLOOR: Duration = Duration::from_micros(20);
    /// The most a core wakes early (spinning that long before each slot at most: an idle
    /// node of B = 50 spends at most 50 times this a second awake).
    const CAP: Duration = Duration::from_micros(300);

    fn margin(&self) -> Duration {
        (Duration::from_nanos(self.overshoot) + Self::FLOOR).min(Self::CAP)
    }

    /// A wait of `asked` that ended, with nothing received, after `took`.
    fn slept(&mut self, asked: Duration, took: Duration) {
        let over = took.saturating_sub(asked).min(Self::CAP).as_nanos() as u64;
        self.overshoot = self.overshoot - self.overshoot / 8 + over / 8;
    }
}

/// Datagrams the kernel refused, logged at most once a minute per core (with how many and
/// the last reason), never per datagram.
#[derive(Default)]
struct Refusals {
    since_log: u64,
    last_log: Option<Timestamp>,
}

impl Refusals {
    fn note(&mut self, core: usize, n: u32, errno: Option<i32>, now: Timestamp) {
        self.since_log += u64::from(n);
        if self
            .last_log
            .is_some_and(|t| now.saturating_since(t) < Duration::from_secs(60))
        {
            return;
        }
        let reason = errno.map_or_else(
            || "unknown".to_string(),
            |e| std::io::Error::from_raw_os_error(e).to_string(),
        );
        tracing::warn!(
            core,
            refused = self.since_log,
            %reason,
            "the kernel refused datagrams (counted in mixed_send_failed_total; logged at most once a minute)"
        );
        self.since_log = 0;
        self.last_log = Some(now);
    }
}

fn snapshot(
    stack: &Stack<CoreLink>,
    lateness: &hdrhistogram::Histogram<u64>,
    io: &Io,
) -> CoreSnapshot {
    let engine = stack.engine();
    CoreSnapshot {
        counters: engine.counters().clone(),
        held: engine.held(),
        own_queued: engine.own_queued(),
        lateness: lateness.clone(),
        io: io.name(),
        socket_drops: io.socket_drops(),
    }
}

#[allow(clippy::panic)]
fn unreachable_histogram() -> hdrhistogram::Histogram<u64> {
    panic!("a two-digit histogram is always valid")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_core_wakes_early_by_what_its_waits_overshoot() {
        let mut w = Waker::default();
        assert_eq!(w.margin(), Waker::FLOOR);
        // waits that end 100 us late: the margin climbs towards 100 us
        for _ in 0..64 {
            w.slept(Duration::from_millis(5), Duration::from_micros(5100));
        }
        assert!(w.margin() > Duration::from_micros(110), "{:?}", w.margin());
        // an absurd overshoot counts for the cap at most
        w.slept(Duration::from_millis(1), Duration::from_secs(10));
        assert!(w.margin() <= Waker::CAP);
        // punctual waits bring it back down
        for _ in 0..64 {
            w.slept(Duration::from_millis(5), Duration::from_millis(5));
        }
        assert!(w.margin() < Duration::from_micros(40), "{:?}", w.margin());
    }

    #[test]
    fn deliveries_past_the_services_queue_are_counted_not_blocking() {
        let (service, inputs) = std::sync::mpsc::sync_channel(2);
        let metrics = Arc::new(Metrics::new(1));
        let mut link = CoreLink {
            core: 0,
            service,
            own: Arc::new(OwnQueues::new()),
            metrics: Arc::clone(&metrics),
            raw: None,
        };
        for i in 0..5u8 {
            let event = Event::Message {
                identifier: [i; 16],
                payload: vec![i],
            };
            link.deliver(Timestamp::ZERO, event);
        }
        assert_eq!(metrics.undeliverable(), 3);
        assert_eq!(inputs.try_iter().count(), 2);
    }
}
