//! Ingress: a batch of datagrams checked for size, unwrapped together (their X25519
//! ladders side by side), retried under the previous epoch's key, checked against the
//! replay filter, then held for their delay or delivered.

use std::sync::Arc;

use crypto_simd::sphinx::{self, HEADER_LEN, ProcessError, Processed, Routing};
use scheduler::Timestamp;

use super::{COVER_IDENTIFIER, Engine, Event, MAX_BATCH, MAX_EVENTS};
use crate::counters::DropReason;
use crate::replay::Seen;

impl Engine {
    /// Handles a batch of received datagrams (any number; unwrapped 64 at a time, their
    /// ladders side by side). Each buffer is processed in place.
    pub fn handle_datagrams<B: AsMut<[u8]>>(&mut self, now: Timestamp, datagrams: &mut [B]) {
        self.counters.received += datagrams.len() as u64;
        self.counters.batch(datagrams.len());
        for chunk in datagrams.chunks_mut(MAX_BATCH) {
            self.handle_chunk(now, chunk);
        }
    }

    pub(super) fn handle_chunk<B: AsMut<[u8]>>(&mut self, now: Timestamp, chunk: &mut [B]) {
        let Some(current) = &self.current else {
            for _ in chunk.iter() {
                self.counters.drop(DropReason::NoKey);
            }
            return;
        };
        let secret = current.keys.secret.clone();
        let replay = Arc::clone(&current.keys.replay);
        let previous = match &self.previous {
            Some((p, until)) if now <= *until => {
                Some((p.keys.secret.clone(), Arc::clone(&p.keys.replay)))
            }
            _ => None,
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
        let mut under_previous = [false; MAX_BATCH];
        // lengths always match here
        let _ = sphinx::process_batch_in_place(&secret, &mut refs[..n], &mut results[..n]);

        // packets that fail the MAC may be under the previous epoch's key
        if let Some((prev_secret, _)) = &previous {
            let mut retry: [&mut [u8]; MAX_BATCH] = core::array::from_fn(|_| &mut [][..]);
            let mut which = [0usize; MAX_BATCH];
            let mut m = 0;
            for (j, r) in refs[..n].iter_mut().enumerate() {
                if results[j] == Err(ProcessError::HeaderMac) {
                    retry[m] = &mut **r;
                    which[m] = j;
                    m += 1;
                }
            }
            let mut again = [Err(ProcessError::TooShort); MAX_BATCH];
            let _ = sphinx::process_batch_in_place(prev_secret, &mut retry[..m], &mut again[..m]);
            for k in 0..m {
                if again[k].is_ok() {
                    results[which[k]] = again[k];
                    under_previous[which[k]] = true;
                }
            }
        }

        for j in 0..n {
            match results[j] {
                Err(e) => self.counters.drop(DropReason::from_process(e)),
                Ok(processed) => {
                    let filter = match (&previous, under_previous[j]) {
                        (Some((_, f)), true) => f,
                        _ => &replay,
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
                self.counters.forward_hops += 1;
                if !self.config.forwarding {
                    return self.counters.drop(DropReason::NotForwarding);
                }
                if delay.as_duration() > self.config.max_delay {
                    return self.counters.drop(DropReason::DelayTooLong);
                }
                let Some(to) = self.address_of(&next_hop.0) else {
                    return self.counters.drop(DropReason::UnknownNextHop);
                };
                let Some(buf) = self.pool.take() else {
                    return self.counters.drop(DropReason::PoolFull);
                };
                self.pool.get_mut(buf).copy_from_slice(packet);
                self.next_hop[buf as usize] = Some(to);
                let deadline = self
                    .clock
                    .deadline_tick(now.saturating_add(delay.as_duration()));
                if self.wheel.insert(deadline, buf).is_err() {
                    self.pool.give_back(buf);
                    self.counters.drop(DropReason::WheelFull);
                }
            }
            Routing::Final { destination } => {
                self.counters.final_hops += 1;
                if destination.address != self.config.node_id {
                    return self.counters.drop(DropReason::NotForUs);
                }
                let Ok(plaintext) = sphinx::recover_plaintext(&packet[HEADER_LEN..]) else {
                    // a reply through a SURB, or damage: the layer above tells them apart
                    if destination.identifier == COVER_IDENTIFIER {
                        return self.counters.drop(DropReason::CorruptPayload);
                    }
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
                if destination.identifier == COVER_IDENTIFIER && plaintext.is_empty() {
                    self.counters.cover_received += 1;
                    return;
                }
                if self.loops.returned(&destination.identifier, now).is_some() {
                    self.counters.loops_returned += 1;
                    return;
                }
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
}
