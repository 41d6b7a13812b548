//! Ingress: a batch of datagrams checked for size, unwrapped together (their X25519
//! ladders side by side), retried under the previous epoch's key and the keys prepared
//! ahead, checked against the
//! replay filter, then held for their delay or delivered.

use std::sync::Arc;

use std::net::SocketAddr;

use crypto_simd::sphinx::{
    self, Delay, HEADER_LEN, MixSecretKey, ProcessError, Processed, Routing,
};
use scheduler::Timestamp;

use super::{COVER_IDENTIFIER, Engine, Event, MAX_AHEAD, MAX_BATCH, MAX_EVENTS};
use crate::counters::DropReason;
use crate::replay::{ReplayCheck, Seen};

/// The keys a packet may be under, most likely first, each with its replay filter.
type Keys = [Option<(MixSecretKey, Arc<dyn ReplayCheck>)>; 2 + MAX_AHEAD];

/// Most datagrams staged for one unwrap (the pool lends at most 16 buffers at once).
pub(super) const MAX_STAGE: usize = 16;

impl Engine {
    /// Handles a batch of received datagrams (any number). With
    /// [`EngineConfig::ingress_hold`](super::EngineConfig::ingress_hold) zero they are
    /// unwrapped here, 64 at a time, their ladders side by side, each buffer in place;
    /// otherwise each is copied into a pool buffer and staged until a full group of the
    /// X25519 backend's lanes is in or the oldest has waited the hold (see
    /// [`Self::poll_timeout`]), and a staged forward keeps its pool buffer.
    pub fn handle_datagrams<B: AsMut<[u8]>>(&mut self, now: Timestamp, datagrams: &mut [B]) {
        self.counters.received += datagrams.len() as u64;
        self.counters.batch(datagrams.len());
        if self.config.ingress_hold.is_zero() || self.stage_target <= 1 {
            for chunk in datagrams.chunks_mut(MAX_BATCH) {
                self.handle_chunk(now, chunk);
            }
            return;
        }
        for d in datagrams.iter_mut() {
            let d = d.as_mut();
            if self.packet_size == 0 {
                self.counters.drop(DropReason::NoKey);
                continue;
            }
            if d.len() != self.packet_size {
                self.counters.drop(DropReason::WrongSize);
                continue;
            }
            let Some(buf) = self.pool.take() else {
                self.counters.drop(DropReason::PoolFull);
                continue;
            };
            self.pool.get_mut(buf).copy_from_slice(d);
            if self.staged_len == 0 {
                self.staged_since = now;
            }
            self.staged[self.staged_len] = buf;
            self.staged_len += 1;
            if self.staged_len >= self.stage_target {
                self.flush_staged(now);
            }
        }
    }

    /// When the staged datagrams must be unwrapped, if any wait.
    pub(super) fn stage_deadline(&self) -> Option<Timestamp> {
        (self.staged_len > 0).then(|| self.staged_since.saturating_add(self.config.ingress_hold))
    }

    /// Unwraps the staged datagrams in their pool buffers, together.
    pub(super) fn flush_staged(&mut self, now: Timestamp) {
        let n = self.staged_len;
        if n == 0 {
            return;
        }
        self.staged_len = 0;
        let bufs = self.staged;
        let Some(keys) = self.keys_at(now) else {
            for &b in &bufs[..n] {
                self.pool.give_back(b);
                self.counters.drop(DropReason::NoKey);
            }
            return;
        };
        let mut results = [Err(ProcessError::TooShort); MAX_STAGE];
        let mut under = [0usize; MAX_STAGE];
        {
            let mut refs = self.pool.many_mut(&bufs[..n]);
            unwrap_under(&keys, &mut refs[..n], &mut results[..n], &mut under[..n]);
        }
        for j in 0..n {
            let buf = bufs[j];
            let processed = match results[j] {
                Err(e) => {
                    self.counters.drop(DropReason::from_process(e));
                    self.pool.give_back(buf);
                    continue;
                }
                Ok(p) => p,
            };
            let Some((_, filter)) = &keys[under[j]] else {
                self.pool.give_back(buf);
                continue;
            };
            match filter.check_and_insert(&processed.replay_tag) {
                Seen::Replay => {
                    self.counters.drop(DropReason::Replay);
                    self.pool.give_back(buf);
                }
                Seen::Full => {
                    self.counters.drop(DropReason::ReplayFilterFull);
                    self.pool.give_back(buf);
                }
                Seen::New => self.route_staged(now, buf, processed),
            }
        }
    }

    /// [`Self::route`] for a packet in a pool buffer: a forward keeps the buffer.
    fn route_staged(&mut self, now: Timestamp, buf: u32, processed: Processed) {
        match processed.routing {
            Routing::Forward { next_hop, delay } => match self.forward_to(&next_hop.0, delay) {
                Ok(to) => self.hold(now, buf, to, delay),
                Err(reason) => {
                    self.counters.drop(reason);
                    self.pool.give_back(buf);
                }
            },
            Routing::Final { .. } => {
                let mut scratch = std::mem::take(&mut self.scratch);
                scratch.clear();
                scratch.extend_from_slice(self.pool.get(buf));
                self.pool.give_back(buf);
                self.route(now, &scratch, processed);
                self.scratch = scratch;
            }
        }
    }

    /// The keys a packet may be under at `now`, most likely first: the installed epoch's,
    /// the previous epoch's through its grace, then the keys prepared ahead; `None` before
    /// the first epoch is installed (the packet size is unknown and nothing can be routed:
    /// keys prepared ahead wait for it).
    fn keys_at(&self, now: Timestamp) -> Option<Keys> {
        let mut keys: Keys = Default::default();
        let mut k = 0;
        if let Some(c) = &self.current {
            keys[k] = Some((c.keys.secret.clone(), Arc::clone(&c.keys.replay)));
            k += 1;
        }
        if let Some((p, until)) = &self.previous
            && now <= *until
        {
            keys[k] = Some((p.keys.secret.clone(), Arc::clone(&p.keys.replay)));
            k += 1;
        }
        for a in &self.ahead {
            keys[k] = Some((a.secret.clone(), Arc::clone(&a.replay)));
            k += 1;
        }
        (k > 0 && self.packet_size > 0).then_some(keys)
    }

    pub(super) fn handle_chunk<B: AsMut<[u8]>>(&mut self, now: Timestamp, chunk: &mut [B]) {
        let Some(keys) = self.keys_at(now) else {
            for _ in chunk.iter() {
                self.counters.drop(DropReason::NoKey);
            }
            return;
        };

        let mut refs: [&mut [u8]; MAX_BATCH] = core::array::from_fn(|_| &mut [][..]);
        let mut n = 0;
        for d in chunk.iter_mut() {
            let d = d.as_mut();
            if d.len() == self.packet_size {
                refs[n] = d;
                n += 1;
            } else {
                self.counters.drop(DropReason::WrongSize);
            }
        }
        let mut results = [Err(ProcessError::TooShort); MAX_BATCH];
        // which of `keys` each packet opened under
        let mut under = [0usize; MAX_BATCH];
        unwrap_under(&keys, &mut refs[..n], &mut results[..n], &mut under[..n]);

        for j in 0..n {
            match results[j] {
                Err(e) => self.counters.drop(DropReason::from_process(e)),
                Ok(processed) => {
                    let Some((_, filter)) = &keys[under[j]] else {
                        continue;
                    };
                    match filter.check_and_insert(&processed.replay_tag) {
                        Seen::Replay => self.counters.drop(DropReason::Replay),
                        Seen::Full => self.counters.drop(DropReason::ReplayFilterFull),
                        Seen::New => self.route(now, refs[j], processed),
                    }
                }
            }
        }
    }

    /// A new, authentic packet: hold a forward for its delay, deliver a final hop.
    pub(super) fn route(&mut self, now: Timestamp, packet: &[u8], processed: Processed) {
        match processed.routing {
            Routing::Forward { next_hop, delay } => {
                let to = match self.forward_to(&next_hop.0, delay) {
                    Ok(to) => to,
                    Err(reason) => return self.counters.drop(reason),
                };
                let Some(buf) = self.pool.take() else {
                    return self.counters.drop(DropReason::PoolFull);
                };
                self.pool.get_mut(buf).copy_from_slice(packet);
                self.hold(now, buf, to, delay);
            }
            Routing::Final { destination } => {
                self.counters.final_hops += 1;
                if destination.address != self.config.node_id {
                    return self.counters.drop(DropReason::NotForUs);
                }
                // drop cover, by its identifier: its body is random bytes (or, from a node
                // of an earlier version, an empty plaintext) and nobody reads it
                if destination.identifier == COVER_IDENTIFIER {
                    self.counters.cover_received += 1;
                    return;
                }
                let Ok(plaintext) = sphinx::recover_plaintext(&packet[HEADER_LEN..]) else {
                    // a reply through a SURB, or damage: the layer above tells them apart
                    self.delivery_arrived();
                    if self.events.len() >= MAX_EVENTS {
                        return self.counters.drop(DropReason::EventQueueFull);
                    }
                    self.counters.sealed += 1;
                    self.events.push_back(Event::Sealed {
                        identifier: destination.identifier,
                        payload: packet[HEADER_LEN..].to_vec(),
                    });
                    return;
                };
                if self.loops.returned(&destination.identifier, now).is_some() {
                    self.counters.loops_returned += 1;
                    return;
                }
                self.delivery_arrived();
                if self.events.len() >= MAX_EVENTS {
                    return self.counters.drop(DropReason::EventQueueFull);
                }
                self.counters.delivered += 1;
                self.events.push_back(Event::Message {
                    identifier: destination.identifier,
                    payload: plaintext.to_vec(),
                });
            }
        }
    }

    /// Whether a forward to `next_hop` after `delay` may be held, and where it goes.
    fn forward_to(&mut self, next_hop: &[u8; 32], delay: Delay) -> Result<SocketAddr, DropReason> {
        self.counters.forward_hops += 1;
        if !self.config.forwarding {
            return Err(DropReason::NotForwarding);
        }
        if self.alert {
            return Err(DropReason::HighAlert);
        }
        if delay.as_duration() > self.config.max_delay {
            return Err(DropReason::DelayTooLong);
        }
        if self.is_me(next_hop) {
            return Err(DropReason::SelfAddressed);
        }
        self.address_of(next_hop).ok_or_else(|| {
            let listed = self
                .current
                .as_ref()
                .is_some_and(|c| c.keys.consensus.node(next_hop).is_some());
            if listed {
                DropReason::UnreachableNextHop
            } else {
                DropReason::UnknownNextHop
            }
        })
    }

    /// Holds the forward in `buf` for its delay, then it goes to `to`.
    fn hold(&mut self, now: Timestamp, buf: u32, to: SocketAddr, delay: Delay) {
        self.next_hop[buf as usize] = Some(to);
        let deadline = self
            .clock
            .deadline_tick(now.saturating_add(delay.as_duration()));
        if self.wheel.insert(deadline, buf).is_err() {
            self.pool.give_back(buf);
            self.counters.drop(DropReason::WheelFull);
        }
    }

    /// A packet for this node that is neither a loop of its own nor cover: with shaping on,
    /// it will take the place of one of the next loops.
    fn delivery_arrived(&mut self) {
        if self.config.shape_incoming {
            self.shaping_credit = (self.shaping_credit + 1).min(super::MAX_SHAPING_CREDIT);
        }
    }
}

/// Unwraps `refs` under the first of `keys`; those failing the MAC are tried under the
/// others in turn (a failed MAC check leaves the buffer as it was). `under[j]` says which
/// key packet `j` opened under.
fn unwrap_under(
    keys: &Keys,
    refs: &mut [&mut [u8]],
    results: &mut [Result<Processed, ProcessError>],
    under: &mut [usize],
) {
    let n = refs.len();
    if let Some((first, _)) = &keys[0] {
        // lengths always match here
        let _ = sphinx::process_batch_in_place(first, refs, &mut results[..n]);
    }
    for (key_index, key) in keys.iter().enumerate().skip(1) {
        let Some((secret, _)) = key else { break };
        let mut retry: [&mut [u8]; MAX_BATCH] = core::array::from_fn(|_| &mut [][..]);
        let mut which = [0usize; MAX_BATCH];
        let mut m = 0;
        for (j, r) in refs.iter_mut().enumerate() {
            if results[j] == Err(ProcessError::HeaderMac) {
                retry[m] = &mut **r;
                which[m] = j;
                m += 1;
            }
        }
        if m == 0 {
            break;
        }
        let mut again = [Err(ProcessError::TooShort); MAX_BATCH];
        let _ = sphinx::process_batch_in_place(secret, &mut retry[..m], &mut again[..m]);
        for k in 0..m {
            if again[k].is_ok() {
                results[which[k]] = again[k];
                under[which[k]] = key_index;
            }
        }
    }
}
