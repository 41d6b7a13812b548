//! A node's protocol stack behind one sans-IO contract, in the shape of quinn-proto: the
//! [`Engine`] (unwrap, mix, emit at the constant rate B) with what sits on it, the
//! [`Upper`] layer (the messenger of this process, or the queues to a messenger on another
//! thread), and the glue between them written once:
//!
//! - deliveries (`Message`, `Sealed`) and alerts go up as soon as the engine makes them;
//! - own packets come down into the engine's own-data queue, ACKs and NACKs ahead of
//!   everything, message packets while fewer than the upper layer's `own_ahead` wait;
//! - loop outcomes and per-node reliabilities go up once a second (q, and Algorithm 1's
//!   weights).
//!
//! Every driver runs a [`Stack`] and nothing else: the node's runtime (io_uring or
//! portable, one per core) and the deterministic network of [`sim`]. A driver calls
//! [`Stack::handle_datagrams`] with what it received, [`Stack::handle_timeout`] at
//! [`Stack::poll_timeout`], then drains [`Stack::poll_transmit`] and [`Stack::poll_event`].

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::time::Duration;

use engine::{Engine, EpochKeys, Event, InstallError, Paths, Transmit};
use scheduler::Timestamp;

pub mod messenger;
pub mod services;
pub mod sim;

/// How often loop outcomes and reliabilities go up.
pub const MEASURE_EVERY: Duration = Duration::from_secs(1);

/// What sits on the engine: it takes deliveries and hands down the node's own packets.
pub trait Upper {
    /// What it tells the application.
    type Event: std::fmt::Debug;

    /// An event of the engine: a message or sealed reply for this node, or an alert.
    fn deliver(&mut self, now: Timestamp, event: Event);

    /// A new epoch's paths.
    fn set_paths(&mut self, paths: Paths);

    /// Loops returned and lost so far, and each tested node's reliability.
    fn measured(&mut self, returned: u64, lost: u64, reliability: &HashMap<[u8; 32], f64>);

    /// Writes the next control packet (ACK, NACK) into `buf`, resized to the packet size;
    /// returns its first hop.
    fn poll_control(&mut self, buf: &mut Vec<u8>) -> Option<[u8; 32]>;

    /// Writes up to `bufs.len()` message packets; their first hops into `hops`; returns how
    /// many.
    fn poll_packets(
        &mut self,
        now: Timestamp,
        bufs: &mut [Vec<u8>],
        hops: &mut [[u8; 32]],
    ) -> usize;

    /// Message packets to keep queued in the engine (control packets need no room).
    fn own_ahead(&self) -> usize;

    /// Its timers, due at [`Self::poll_timeout`].
    fn handle_timeout(&mut self, now: Timestamp);

    /// When [`Self::handle_timeout`] is due.
    fn poll_timeout(&self) -> Option<Timestamp>;

    /// The next event for the application.
    fn poll_event(&mut self) -> Option<Self::Event>;
}

/// The engine alone: deliveries kept as they are, nothing sent of its own but what
/// [`Engine::send_message`] queues. For tests of the engine and for pure relays.
#[derive(Debug, Default)]
pub struct Raw {
    events: std::collections::VecDeque<Event>,
    /// Deliveries dropped because [`RAW_EVENTS`] waited.
    pub dropped: u64,
}

/// Deliveries a [`Raw`] upper keeps for the application, at most.
pub const RAW_EVENTS: usize = 4096;

impl Upper for Raw {
    type Event = Event;

    fn deliver(&mut self, _now: Timestamp, event: Event) {
        if self.events.len() >= RAW_EVENTS {
            self.dropped += 1;
            return;
        }
        self.events.push_back(event);
    }

    fn set_paths(&mut self, _paths: Paths) {}

    fn measured(&mut self, _: u64, _: u64, _: &HashMap<[u8; 32], f64>) {}

    fn poll_control(&mut self, _buf: &mut Vec<u8>) -> Option<[u8; 32]> {
        None
    }

    fn poll_packets(&mut self, _: Timestamp, _: &mut [Vec<u8>], _: &mut [[u8; 32]]) -> usize {
        0
    }

    fn own_ahead(&self) -> usize {
        0
    }

    fn handle_timeout(&mut self, _now: Timestamp) {}

    fn poll_timeout(&self) -> Option<Timestamp> {
        None
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

/// The engine and its upper layer, glued.
#[derive(Debug)]
pub struct Stack<U> {
    engine: Engine,
    upper: U,
    /// Packet buffers for the upper layer to build into (a batch of them).
    bufs: Vec<Vec<u8>>,
    next_measure: Timestamp,
}

impl<U: Upper> Stack<U> {
    /// A stack of `engine` under `upper`.
    pub fn new(engine: Engine, upper: U) -> Self {
        Stack {
            engine,
            upper,
            bufs: vec![Vec::new(); engine::FORWARD_BATCH],
            next_measure: Timestamp::ZERO,
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The engine, to command it (forwarding on or off, a one-packet message).
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// The upper layer.
    pub fn upper(&self) -> &U {
        &self.upper
    }

    /// The upper layer, to put work in (a message to send); call [`Self::handle_timeout`]
    /// after, so its packets go down.
    pub fn upper_mut(&mut self) -> &mut U {
        &mut self.upper
    }

    /// Installs an epoch in the engine and gives the upper layer its paths.
    #[must_use = "an epoch that was not installed leaves the node on the old one"]
    pub fn install_epoch(&mut self, keys: EpochKeys, now: Timestamp) -> Result<(), InstallError> {
        self.engine.install_epoch(keys, now)?;
        if let Some(paths) = self.engine.paths() {
            self.upper.set_paths(paths);
        }
        Ok(())
    }

    /// Handles a batch of received datagrams (processed in place), then moves what they
    /// produced up and down.
    pub fn handle_datagrams<B: AsMut<[u8]>>(&mut self, now: Timestamp, datagrams: &mut [B]) {
        self.engine.handle_datagrams(now, datagrams);
        self.pump(now);
    }

    /// Handles the timers due at `now`, the engine's and the upper layer's, then moves what
    /// they produced up and down. Call at [`Self::poll_timeout`] (or later), then drain
    /// [`Self::poll_transmit`].
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.engine.poll_timeout().is_some_and(|t| t <= now) {
            self.engine.handle_timeout(now);
        }
        if self.upper.poll_timeout().is_some_and(|t| t <= now) {
            self.upper.handle_timeout(now);
        }
        self.pump(now);
    }

    /// The glue: events up, loop measurements up once a second, own packets down.
    fn pump(&mut self, now: Timestamp) {
        while let Some(e) = self.engine.poll_event() {
            self.upper.deliver(now, e);
        }
        if now >= self.next_measure {
            self.next_measure = now.saturating_add(MEASURE_EVERY);
            let (returned, lost) = self.engine.loop_outcomes();
            self.upper
                .measured(returned, lost, self.engine.reliabilities());
        }
        // ACKs and NACKs first, as long as the own-data queue has room
        let mut buf = std::mem::take(&mut self.bufs[0]);
        while self.engine.own_room() > 0 {
            let Some(hop) = self.upper.poll_control(&mut buf) else {
                break;
            };
            // a packet that cannot be queued is lost as on the wire: retries cover it
            let _ = self.engine.queue_control(&buf, &hop);
        }
        self.bufs[0] = buf;
        // then message packets, built in batches, while fewer than own_ahead wait
        loop {
            let room = self
                .upper
                .own_ahead()
                .saturating_sub(self.engine.own_queued())
                .min(self.engine.own_room())
                .min(self.bufs.len());
            if room == 0 {
                break;
            }
            let mut hops = [[0u8; 32]; engine::FORWARD_BATCH];
            let n = self
                .upper
                .poll_packets(now, &mut self.bufs[..room], &mut hops[..room]);
            for (b, hop) in self.bufs.iter().zip(hops).take(n) {
                let _ = self.engine.queue_own(b, &hop);
            }
            if n < room {
                break;
            }
        }
    }

    /// The next datagram to send now, written into `out`; `None` when there is none. Call
    /// until `None` after every `handle_*`.
    #[must_use = "a transmit not sent is a slot of the constant rate lost"]
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> Option<Transmit> {
        self.engine.poll_transmit(out)
    }

    /// When to call [`Self::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        [
            self.engine.poll_timeout(),
            self.upper.poll_timeout(),
            Some(self.next_measure),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<U::Event> {
        self.upper.poll_event()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_deliveries_are_bounded_and_counted() {
        let mut raw = Raw::default();
        let event = |i: u32| Event::Message {
            identifier: [0; 16],
            payload: i.to_le_bytes().to_vec(),
        };
        for i in 0..(RAW_EVENTS as u32 + 3) {
            raw.deliver(Timestamp::ZERO, event(i));
        }
        assert_eq!(raw.dropped, 3);
        let mut n = 0;
        while raw.poll_event().is_some() {
            n += 1;
        }
        assert_eq!(n, RAW_EVENTS);
    }
}
