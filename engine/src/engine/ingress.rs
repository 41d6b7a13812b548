//! Ingress: a batch of datagrams checked for size, unwrapped together (their X25519
//! ladders side by side), retried under the previous epoch's key and the keys prepared
//! ahead, checked against the
//! replay filter, then held for their delay or delivered.

use std::sync::Arc;

use crypto_simd::sphinx::{self, HEADER_LEN, MixSecretKey, ProcessError, Processed, Routing};
use scheduler::Timestamp;

use super::{COVER_IDENTIFIER, Engine, Event, MAX_AHEAD, MAX_BATCH, MAX_EVENTS};
use crate::counters::DropReason;
use crate::replay::{ReplayCheck, Seen};

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
        // the keys a packet may be under, most likely first: the installed epoch's, the
        // previous epoch's through its grace, then the keys prepared ahead
        let mut keys: [Option<(MixSecretKey, Arc<dyn ReplayCheck>)>; 2 + MAX_AHEAD] =
            Default::default();
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
        // before the first epoch is installed the packet size is unknown and nothing can be
        // routed: keys prepared ahead wait for it
        if k == 0 || self.packet_size == 0 {
            for _ in chunk.iter() {
                self.counters.drop(DropReason::NoKey);
            }
            return;
        }

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
        if let Some((first, _)) = &keys[0] {
            // lengths always match here
            let _ = sphinx::process_batch_in_place(first, &mut refs[..n], &mut results[..n]);
        }

        // packets that fail the MAC may be under another of the keys (a failed MAC check
        // leaves the buffer as it was)
        for (key_index, key) in keys.iter().enumerate().skip(1) {
            let Some((secret, _)) = key else { break };
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
                self.counters.forward_hops += 1;
                if !self.config.forwarding {
                    return self.counters.drop(DropReason::NotForwarding);
                }
                if self.alert {
                    return self.counters.drop(DropReason::HighAlert);
                }
                if delay.as_duration() > self.config.max_delay {
                    return self.counters.drop(DropReason::DelayTooLong);
                }
                if self.is_me(&next_hop.0) {
                    return self.counters.drop(DropReason::SelfAddressed);
                }
                let Some(to) = self.address_of(&next_hop.0) else {
                    let listed = self
                        .current
                        .as_ref()
                        .is_some_and(|c| c.keys.consensus.node(&next_hop.0).is_some());
                    return self.counters.drop(if listed {
                        DropReason::UnreachableNextHop
                    } else {
                        DropReason::UnknownNextHop
                    });
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
                if destination.identifier == COVER_IDENTIFIER && plaintext.is_empty() {
                    self.counters.cover_received += 1;
                    return;
                }
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

    /// A packet for this node that is neither a loop of its own nor cover: with shaping on,
    /// it will take the place of one of the next loops.
    fn delivery_arrived(&mut self) {
        if self.config.shape_incoming {
            self.shaping_credit = (self.shaping_credit + 1).min(super::MAX_SHAPING_CREDIT);
        }
    }
}
