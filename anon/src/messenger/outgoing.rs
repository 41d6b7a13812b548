//! Sending: a message becomes a coded object and its attempts, each n symbols then a packet
//! of NACK SURBs; replies go out through the SURBs they came with. Packets are built in
//! batches of [`engine::FORWARD_BATCH`], their X25519 ladders side by side.

use std::collections::VecDeque;
use std::time::Duration;

use crypto_simd::sphinx::Surb;
use engine::Paths;
use rand_core::Rng;
use scheduler::Timestamp;

use super::surbs::Purpose;
use super::timers::{Kind, Timer};
use super::{
    ACK_SURBS, MAX_REPLY_SURBS, MessageError, Messenger, MessengerEvent, NACK_SURBS, ReplyHandle,
    SURB_BYTES, SendOptions, Undelivered,
};
use crate::coding::{self, ObjectEncoder};
use crate::identity;
use crate::wire::{self, MessageId};

#[derive(Debug)]
pub(super) enum Via {
    /// Forward packets to a destination.
    Forward { destination: [u8; 32] },
    /// Through reply SURBs.
    Surbs(VecDeque<Surb>),
}

/// What the next packet of a message needs.
#[derive(Debug, Clone, Copy)]
pub(super) enum Next {
    /// A forward packet to build for `destination`.
    Forward { destination: [u8; 32], hops: usize },
    /// Written through a SURB already: its first hop.
    Built([u8; 32]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OutState {
    Sending,
    Waiting { deadline: Timestamp },
}

#[derive(Debug)]
pub(super) struct Outgoing {
    id: MessageId,
    via: Via,
    hops: usize,
    encoder: ObjectEncoder,
    object_len: u32,
    next_esi: u32,
    attempt: u8,
    /// Symbols of this attempt still to hand out.
    to_send: u32,
    /// The NACK-SURB packet of this attempt is still to hand out.
    nack_surbs_due: bool,
    /// n of the first attempt.
    n_first: u32,
    state: OutState,
    /// A NACK came for the current attempt.
    nacked: bool,
    /// Which arming of its timer is live.
    generation: u32,
}

impl Messenger {
    pub(super) fn new_id(&mut self) -> MessageId {
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        id
    }

    /// Queues a message for `destination` (a node ID in the consensus); returns its ID.
    /// The application hears [`MessengerEvent::Acknowledged`], [`MessengerEvent::Offline`]
    /// or [`MessengerEvent::Undelivered`] about it later.
    pub fn send(
        &mut self,
        now: Timestamp,
        destination: [u8; 32],
        data: &[u8],
        options: SendOptions,
    ) -> Result<MessageId, MessageError> {
        if data.is_empty() {
            return Err(MessageError::Empty);
        }
        if data.len() > self.config.max_message {
            return Err(MessageError::TooLarge {
                len: data.len(),
                max: self.config.max_message,
            });
        }
        if options.reply_surbs > MAX_REPLY_SURBS {
            return Err(MessageError::TooManySurbs);
        }
        if let Some(r) = options.redundancy
            && !(r.is_finite() && r >= 1.0)
        {
            return Err(MessageError::Redundancy);
        }
        let hops = self.hops_for(&options)?;
        let paths = self.paths.clone().ok_or(MessageError::NoConsensus)?;
        let recipient = paths
            .consensus()
            .node(&destination)
            .map(|n| n.identity)
            .ok_or(MessageError::UnknownDestination)?;
        if !paths.can_receive() {
            return Err(MessageError::Unreachable);
        }
        if self.outgoing.len() >= self.config.max_outgoing
            || self.outgoing_bytes + data.len() > self.config.max_outgoing_bytes
            || self.surbs.room() < ACK_SURBS + usize::from(options.reply_surbs) + NACK_SURBS
        {
            return Err(MessageError::Busy);
        }
        let id = self.new_id();
        let digest = identity::digest(&id, options.port, data);
        let sender = if options.reveal_identity {
            identity::seal(&self.identity, &recipient, &id, &digest)
                .map(|mac| (self.identity.public().0, mac))
        } else {
            None
        };
        let expires = now.saturating_add(
            self.attempt_timeout(hops) * u32::from(self.config.attempts) * 4
                + Duration::from_secs_f64(data.len() as f64 / 1000.0 / self.config.own_rate),
        );
        let mut acks = Vec::with_capacity(ACK_SURBS);
        let mut recoveries = Vec::new();
        for _ in 0..ACK_SURBS {
            let (s, r) = paths
                .surb_from(&destination, hops, &mut self.rng)
                .map_err(MessageError::Path)?;
            acks.push(s);
            recoveries.push((r, Purpose::Ack(id), expires));
        }
        let mut reply_surbs = Vec::new();
        let reply_expires = now.saturating_add(self.config.reply_window);
        for _ in 0..options.reply_surbs {
            let (s, r) = paths
                .surb_from(&destination, hops, &mut self.rng)
                .map_err(MessageError::Path)?;
            reply_surbs.push(s);
            recoveries.push((r, Purpose::Reply(id), reply_expires));
        }
        let object = wire::write_object(options.port, &digest, sender, &acks, &reply_surbs, data);
        let t = self.symbol_size().ok_or(MessageError::NoConsensus)?;
        let encoder = ObjectEncoder::new(&object, t).map_err(|_| MessageError::TooLarge {
            len: data.len(),
            max: self.config.max_message,
        })?;
        let k = encoder.k() as usize;
        let n = match options.redundancy {
            Some(r) => ((k as f64 * r).ceil() as usize).max(k),
            None => coding::symbols_for(k, self.q(hops), self.config.target, 4 * k + 64),
        };
        for (r, purpose, expires) in recoveries {
            if self.surbs.insert(r, purpose, expires) {
                self.counters.surbs_evicted += 1;
            }
        }
        self.enqueue(
            id,
            Via::Forward { destination },
            hops,
            encoder,
            object.len(),
            n,
        );
        Ok(id)
    }

    /// Replies through the SURBs of a received message: one packet per SURB, no ACK (the
    /// replier learns nothing of the recipient, so it cannot retry). Uses the SURBs the
    /// reply needs and leaves the rest in `handle`.
    pub fn reply(
        &mut self,
        handle: &mut ReplyHandle,
        data: &[u8],
        port: u16,
    ) -> Result<MessageId, MessageError> {
        if data.is_empty() {
            return Err(MessageError::Empty);
        }
        if handle.surbs.is_empty() {
            return Err(MessageError::ReplyUsed);
        }
        let t = self.symbol_size().ok_or(MessageError::NoConsensus)?;
        let max = Self::reply_capacity(handle.surbs.len(), t);
        if data.len() > max {
            return Err(MessageError::ReplyTooLong {
                len: data.len(),
                max,
            });
        }
        if self.outgoing.len() >= self.config.max_outgoing {
            return Err(MessageError::Busy);
        }
        let id = self.new_id();
        let digest = identity::digest(&id, port, data);
        let object = wire::write_object(port, &digest, None, &[], &[], data);
        let encoder = ObjectEncoder::new(&object, t).map_err(|_| MessageError::TooLarge {
            len: data.len(),
            max,
        })?;
        let k = encoder.k() as usize;
        let hops = self.paths.as_ref().map_or(3, Paths::default_hops);
        let wanted = coding::symbols_for(k, self.q(hops), self.config.target, 4 * k + 64);
        let n = wanted.min(handle.surbs.len()).max(k);
        let surbs: VecDeque<Surb> = handle.surbs.drain(..n).collect();
        self.enqueue(id, Via::Surbs(surbs), hops, encoder, object.len(), n);
        Ok(id)
    }

    /// Takes a coded message for sending: its first attempt of `n` symbols is ready.
    fn enqueue(
        &mut self,
        id: MessageId,
        via: Via,
        hops: usize,
        encoder: ObjectEncoder,
        object_len: usize,
        n: usize,
    ) {
        // a reply goes once, with no SURBs of ours to NACK through
        let nack_surbs_due = matches!(via, Via::Forward { .. });
        self.outgoing_bytes += object_len;
        self.outgoing.insert(
            id,
            Outgoing {
                id,
                via,
                hops,
                object_len: object_len as u32,
                encoder,
                next_esi: 0,
                attempt: 1,
                to_send: n as u32,
                nack_surbs_due,
                n_first: n as u32,
                state: OutState::Sending,
                nacked: false,
                generation: 0,
            },
        );
        self.ready.push_back(id);
        self.counters.messages_sent += 1;
    }

    /// returns its first hop (a node ID or a direct ID), or `None` when nothing waits.
    /// Messages take turns, one packet each. [`Self::poll_packets`] builds several at once,
    /// faster.
    pub fn poll_packet(&mut self, now: Timestamp, out: &mut Vec<u8>) -> Option<[u8; 32]> {
        let mut hop = [[0u8; 32]; 1];
        let n = self.poll_packets(now, std::slice::from_mut(out), &mut hop);
        (n == 1).then_some(hop[0])
    }

    /// Builds up to `outs.len()` (at most [`engine::FORWARD_BATCH`]) next packets of messages
    /// in one batch, their X25519 ladders side by side; writes each first hop to `hops` and
    /// returns how many were built (`outs[..n]`, each resized to the packet size).
    pub fn poll_packets(
        &mut self,
        now: Timestamp,
        outs: &mut [Vec<u8>],
        hops: &mut [[u8; 32]],
    ) -> usize {
        let Some(paths) = self.paths.clone() else {
            return 0;
        };
        let size = paths.packet_size();
        let max = outs.len().min(hops.len()).min(engine::FORWARD_BATCH);
        if self.plaintexts.len() < max {
            self.plaintexts.resize_with(max, Vec::new);
        }
        // what each slot holds: a forward to build (destination, hops, message) or a packet
        // already written through a SURB
        let mut plans: [Option<([u8; 32], usize, MessageId)>; engine::FORWARD_BATCH] =
            [None; engine::FORWARD_BATCH];
        let mut filled = 0;
        while filled < max
            && let Some(id) = self.ready.pop_front()
        {
            outs[filled].resize(size, 0);
            let mut plaintext = std::mem::take(&mut self.plaintexts[filled]);
            let planned = self.next_packet_of(now, &id, &mut plaintext, &mut outs[filled]);
            self.plaintexts[filled] = plaintext;
            match planned {
                Ok(Some((next, more))) => {
                    if more {
                        self.ready.push_back(id);
                    }
                    match next {
                        Next::Forward {
                            destination,
                            hops: h,
                        } => {
                            plans[filled] = Some((destination, h, id));
                        }
                        Next::Built(hop) => {
                            plans[filled] = None;
                            hops[filled] = hop;
                        }
                    }
                    filled += 1;
                }
                Ok(None) => {}
                Err(e) => self.fail(&id, &e),
            }
        }
        // build the forwards together
        let mut items = [engine::ForwardItem {
            destination: [0; 32],
            hops: 1,
            identifier: [0; 16],
            plaintext: &[],
        }; engine::FORWARD_BATCH];
        let mut slots = [0usize; engine::FORWARD_BATCH];
        let mut m = 0;
        for (i, plan) in plans[..filled].iter().enumerate() {
            if let Some((destination, h, _)) = plan {
                let mut identifier = [0u8; 16];
                self.rng.fill_bytes(&mut identifier);
                items[m] = engine::ForwardItem {
                    destination: *destination,
                    hops: *h,
                    identifier,
                    plaintext: &self.plaintexts[i],
                };
                slots[m] = i;
                m += 1;
            }
        }
        let mut results = [Ok(()); engine::FORWARD_BATCH];
        let mut first = [[0u8; 32]; engine::FORWARD_BATCH];
        {
            let mut bufs: [&mut [u8]; engine::FORWARD_BATCH] =
                core::array::from_fn(|_| &mut [][..]);
            // the forward slots' buffers, in item order
            let mut rest: &mut [Vec<u8>] = &mut outs[..filled];
            let mut at = 0;
            for j in 0..m {
                let (_, tail) = rest.split_at_mut(slots[j] - at);
                let (one, tail) = tail.split_at_mut(1);
                bufs[j] = &mut one[0][..];
                rest = tail;
                at = slots[j] + 1;
            }
            paths.forward_batch(
                &items[..m],
                &mut self.rng,
                &mut bufs[..m],
                &mut first[..m],
                &mut results[..m],
            );
        }
        let mut failed = [false; engine::FORWARD_BATCH];
        for j in 0..m {
            let i = slots[j];
            match results[j] {
                Ok(()) => hops[i] = first[j],
                Err(e) => {
                    failed[i] = true;
                    if let Some((_, _, id)) = plans[i] {
                        self.fail(&id, &MessageError::Path(e));
                    }
                }
            }
        }
        // close the gaps the failures left
        let mut n = 0;
        for i in 0..filled {
            if !failed[i] {
                if n != i {
                    outs.swap(n, i);
                    hops[n] = hops[i];
                }
                n += 1;
            }
        }
        n
    }

    fn fail(&mut self, id: &MessageId, e: &MessageError) {
        self.finish(id);
        self.ready.retain(|r| r != id);
        self.push_event(MessengerEvent::Undelivered {
            id: *id,
            reason: Undelivered::Failed(e.clone()),
        });
    }

    /// The next packet of message `id`: its plaintext written into `plaintext` for a
    /// forward the caller builds, or the whole packet written into `out` through a SURB;
    /// and whether more follow in this attempt.
    fn next_packet_of(
        &mut self,
        now: Timestamp,
        id: &MessageId,
        plaintext: &mut Vec<u8>,
        out: &mut [u8],
    ) -> Result<Option<(Next, bool)>, MessageError> {
        let paths = self.paths.clone().ok_or(MessageError::NoConsensus)?;
        let timeout_base = self.attempt_timeout(self.outgoing.get(id).map_or(3, |o| o.hops));
        let quiet = self.path_bound(self.outgoing.get(id).map_or(3, |o| o.hops));
        let Some(o) = self.outgoing.get_mut(id) else {
            return Ok(None);
        };
        if o.state != OutState::Sending {
            return Ok(None);
        }
        let next = if o.to_send > 0 {
            let t = o.encoder.symbol_size();
            wire::write_symbol_header(plaintext, &o.id, o.attempt, o.object_len, o.next_esi);
            let at = plaintext.len();
            plaintext.resize(at + t, 0);
            o.encoder.symbol(o.next_esi, &mut plaintext[at..]);
            o.next_esi = o.next_esi.saturating_add(1).min(coding::MAX_ESI);
            o.to_send -= 1;
            self.counters.symbols_sent += 1;
            match &mut o.via {
                Via::Forward { destination } => Next::Forward {
                    destination: *destination,
                    hops: o.hops,
                },
                Via::Surbs(surbs) => {
                    let Some(surb) = surbs.pop_front() else {
                        return Err(MessageError::ReplyUsed);
                    };
                    Next::Built(
                        surb.write_reply(plaintext, out)
                            .map_err(|_| MessageError::ReplyUsed)?
                            .0,
                    )
                }
            }
        } else if o.nack_surbs_due {
            o.nack_surbs_due = false;
            let Via::Forward { destination } = o.via else {
                return Ok(None);
            };
            let mut surbs = Vec::with_capacity(NACK_SURBS);
            let fits = (paths
                .max_plaintext()
                .saturating_sub(wire::NACK_SURBS_HEADER))
                / SURB_BYTES;
            let expires = now.saturating_add(timeout_base * 2);
            for _ in 0..NACK_SURBS.min(fits) {
                let (s, r) = paths
                    .surb_from(&destination, o.hops, &mut self.rng)
                    .map_err(MessageError::Path)?;
                if self.surbs.insert(r, Purpose::Nack(o.id), expires) {
                    self.counters.surbs_evicted += 1;
                }
                surbs.push(s);
            }
            let quiet_ms = quiet.as_millis().min(u128::from(u32::MAX)) as u32;
            wire::write_nack_surbs(plaintext, &o.id, o.attempt, o.object_len, quiet_ms, &surbs);
            Next::Forward {
                destination,
                hops: o.hops,
            }
        } else {
            return Ok(None);
        };
        let more = o.to_send > 0 || o.nack_surbs_due;
        if !more {
            match o.via {
                // a reply expects no answer: done once handed out
                Via::Surbs(_) => {
                    self.finish(id);
                }
                Via::Forward { .. } => {
                    let deadline = now.saturating_add(timeout_base);
                    o.state = OutState::Waiting { deadline };
                    o.generation = o.generation.wrapping_add(1);
                    let timer = Timer {
                        kind: Kind::Attempt,
                        id: *id,
                        generation: o.generation,
                    };
                    self.timers.insert(deadline, timer);
                }
            }
        }
        Ok(Some((next, more)))
    }

    pub(super) fn finish(&mut self, id: &MessageId) {
        if let Some(o) = self.outgoing.remove(id) {
            self.outgoing_bytes = self.outgoing_bytes.saturating_sub(o.object_len as usize);
        }
    }

    /// Starts attempt `attempt + 1` of `id` with `n` fresh symbols.
    pub(super) fn retry(&mut self, id: &MessageId, n: u32) {
        let Some(o) = self.outgoing.get_mut(id) else {
            return;
        };
        o.attempt += 1;
        o.to_send = n.max(1);
        o.nack_surbs_due = true;
        o.nacked = false;
        o.state = OutState::Sending;
        // fresh symbols: repair symbols past any sent before
        o.next_esi = o.next_esi.max(o.encoder.k());
        self.counters.retries += 1;
        self.ready.push_back(*id);
    }

    /// An ACK of one of our messages: it is delivered.
    pub(super) fn on_ack(&mut self, id: MessageId) {
        if let Some(o) = self.outgoing.get(&id)
            && matches!(o.via, Via::Forward { .. })
        {
            let attempts = o.attempt;
            self.counters.acks_received += 1;
            self.finish(&id);
            self.ready.retain(|r| *r != id);
            self.push_event(MessengerEvent::Acknowledged { id, attempts });
        }
    }

    /// A NACK of one of our messages: the recipient needs `need` more symbols of `attempt`.
    pub(super) fn on_nack(&mut self, id: MessageId, attempt: u8, need: u32) {
        self.counters.nacks_received += 1;
        let attempts = self.config.attempts;
        let target = self.config.target;
        let Some(o) = self.outgoing.get_mut(&id) else {
            return;
        };
        // only a NACK of the attempt whose packets are all out counts
        if o.attempt != attempt || o.nacked || !matches!(o.state, OutState::Waiting { .. }) {
            return;
        }
        o.nacked = true;
        if o.attempt >= attempts {
            self.finish(&id);
            self.push_event(MessengerEvent::Undelivered {
                id,
                reason: Undelivered::NotDecoded { attempts },
            });
            return;
        }
        let hops = o.hops;
        let k = o.encoder.k() as usize;
        let need = (need as usize).clamp(1, k);
        let n = coding::symbols_for(need, self.q(hops), target, 4 * k + 64);
        self.retry(&id, n as u32);
    }

    /// An attempt's timer fired: retry, or declare the recipient offline after the last.
    pub(super) fn on_attempt_timer(&mut self, now: Timestamp, timer: Timer) {
        let Some(o) = self.outgoing.get(&timer.id) else {
            return;
        };
        let due = matches!(o.state, OutState::Waiting { deadline } if deadline <= now);
        if !due || o.generation != timer.generation {
            return;
        }
        if o.attempt >= self.config.attempts {
            self.finish(&timer.id);
            self.counters.offline += 1;
            self.push_event(MessengerEvent::Offline { id: timer.id });
        } else {
            let n = o.n_first;
            self.retry(&timer.id, n);
        }
    }
}
