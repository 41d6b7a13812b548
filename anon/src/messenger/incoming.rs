//! Receiving: symbols kept per message under bounds on messages and bytes and decoded as
//! soon as enough arrived; a NACK after a quiet time when they do not; ACKs when they do;
//! the IDs of recovered messages remembered for a while, so late symbols are ignored and a
//! retry is answered with a fresh ACK rather than a second delivery.

use std::collections::HashSet;
use std::time::Duration;

use crypto_simd::sphinx::Surb;
use engine::Paths;
use pki_client::IdentityKey;
use scheduler::Timestamp;

use super::timers::{Kind, Timer};
use super::{ACK_SURBS, Messenger, MessengerEvent, Received, ReplyHandle};
use crate::coding::{self, ObjectDecoder};
use crate::identity;
use crate::wire::{self, MessageId, Plain};

#[derive(Debug)]
pub(super) struct Incoming {
    decoder: ObjectDecoder,
    object_len: u32,
    k: u32,
    esis: HashSet<u32>,
    bytes: usize,
    last: Timestamp,
    quiet: Duration,
    nack_surbs: Vec<Surb>,
    nack_attempt: u8,
    nacked_attempt: u8,
    in_reply_to: Option<MessageId>,
    /// Which arming of its timer is live, and for when.
    generation: u32,
    armed: Option<Timestamp>,
}

#[derive(Debug)]
pub(super) struct Completed {
    reacked_attempt: u8,
}

impl Messenger {
    pub(super) fn handle_plaintext(
        &mut self,
        now: Timestamp,
        bytes: &[u8],
        in_reply_to: Option<MessageId>,
    ) {
        let parsed = match wire::parse(bytes) {
            Ok(p) => p,
            Err(_) => {
                self.counters.malformed += 1;
                return;
            }
        };
        match parsed {
            Plain::Symbol {
                id,
                attempt: _,
                object_len,
                esi,
                symbol,
            } => self.on_symbol(now, id, object_len, esi, symbol, in_reply_to),
            Plain::NackSurbs {
                id,
                attempt,
                object_len,
                quiet_ms,
                surbs,
            } => self.on_nack_surbs(now, id, attempt, object_len, quiet_ms, surbs),
            Plain::Ack { id } => self.on_ack(id),
            Plain::Nack {
                id,
                attempt,
                have: _,
                need,
            } => self.on_nack(id, attempt, need),
        }
    }

    fn on_symbol(
        &mut self,
        now: Timestamp,
        id: MessageId,
        object_len: u32,
        esi: u32,
        symbol: &[u8],
        in_reply_to: Option<MessageId>,
    ) {
        if self.completed.contains_key(&id) {
            self.counters.symbols_ignored += 1;
            return;
        }
        let Some(t) = self.symbol_size() else {
            return;
        };
        // the sender's packets have our packet size, so its symbols our symbol size
        if symbol.len() != t || object_len as usize > self.max_object() || object_len == 0 {
            self.counters.malformed += 1;
            return;
        }
        let symbol = &symbol[..t];
        if !self.open_incoming(now, id, object_len, t, in_reply_to) {
            return;
        }
        let Some(inc) = self.incoming.get_mut(&id) else {
            return;
        };
        if inc.object_len != object_len {
            self.counters.malformed += 1;
            return;
        }
        if !inc.esis.insert(esi) {
            self.counters.symbols_ignored += 1;
            return;
        }
        if self.incoming_bytes + t > self.config.max_incoming_bytes {
            inc.esis.remove(&esi);
            self.counters.incoming_full += 1;
            return;
        }
        inc.bytes += t;
        self.incoming_bytes += t;
        inc.last = now;
        self.counters.symbols_received += 1;
        if inc.decoder.add(esi, symbol).is_some() {
            self.on_decoded(now, id);
        }
    }

    /// Makes room for a message being received, unless it is there already; `false` when
    /// the bounds are reached or its length is not one we can decode.
    fn open_incoming(
        &mut self,
        now: Timestamp,
        id: MessageId,
        object_len: u32,
        t: usize,
        in_reply_to: Option<MessageId>,
    ) -> bool {
        if self.incoming.contains_key(&id) {
            return true;
        }
        if self.incoming.len() >= self.config.max_incoming
            || self.incoming_bytes + t > self.config.max_incoming_bytes
        {
            self.counters.incoming_full += 1;
            return false;
        }
        let Ok(decoder) = ObjectDecoder::new(object_len as usize, t) else {
            self.counters.malformed += 1;
            return false;
        };
        let quiet = self.path_bound(self.paths.as_ref().map_or(3, Paths::default_hops));
        self.incoming.insert(
            id,
            Incoming {
                decoder,
                object_len,
                k: coding::source_symbols(object_len as usize, t) as u32,
                esis: HashSet::new(),
                bytes: 0,
                last: now,
                quiet,
                nack_surbs: Vec::new(),
                nack_attempt: 0,
                nacked_attempt: 0,
                in_reply_to,
                generation: 0,
                armed: None,
            },
        );
        self.arm_incoming(&id);
        true
    }

    fn on_nack_surbs(
        &mut self,
        now: Timestamp,
        id: MessageId,
        attempt: u8,
        object_len: u32,
        quiet_ms: u32,
        surbs: Vec<Surb>,
    ) {
        if let Some(done) = self.completed.get_mut(&id) {
            // the sender retries: our ACKs were lost; answer once per attempt, through
            // every SURB it sent
            if done.reacked_attempt < attempt {
                done.reacked_attempt = attempt;
                for surb in surbs {
                    let mut ack = Vec::new();
                    wire::write_ack(&mut ack, &id);
                    if self.push_control(surb, ack) {
                        self.counters.acks_sent += 1;
                    }
                }
            }
            return;
        }
        // the SURBs may come before any symbol (each packet takes its own delays), or alone
        // when every symbol was lost: either way the message exists and can be NACKed
        let Some(t) = self.symbol_size() else {
            return;
        };
        if object_len == 0
            || object_len as usize > self.max_object()
            || !self.open_incoming(now, id, object_len, t, None)
        {
            return;
        }
        let Some(inc) = self.incoming.get_mut(&id) else {
            return;
        };
        if inc.object_len != object_len {
            self.counters.malformed += 1;
            return;
        }
        if attempt >= inc.nack_attempt {
            inc.nack_attempt = attempt;
            inc.nack_surbs = surbs;
            inc.quiet = Duration::from_millis(u64::from(quiet_ms)).min(Duration::from_secs(600));
            inc.last = inc.last.max(now);
        }
        self.arm_incoming(&id);
    }

    fn on_decoded(&mut self, now: Timestamp, id: MessageId) {
        let Some(mut inc) = self.incoming.remove(&id) else {
            return;
        };
        self.incoming_bytes = self.incoming_bytes.saturating_sub(inc.bytes);
        self.remember(now, id, inc.nack_attempt);
        let Some(object) = inc.decoder.take() else {
            return;
        };
        let Ok(o) = wire::parse_object(&object) else {
            self.counters.bad_objects += 1;
            return;
        };
        if identity::digest(&id, o.port, o.data) != o.digest
            || o.data.len() > self.config.max_message
        {
            self.counters.bad_objects += 1;
            return;
        }
        let sender = match o.sender {
            None => None,
            Some((key, mac)) => {
                let key = IdentityKey(key);
                if identity::verify(&self.identity, &key, &id, &o.digest, &mac) {
                    Some(key)
                } else {
                    self.counters.bad_identity += 1;
                    return;
                }
            }
        };
        for ack in o.ack_surbs.into_iter().take(ACK_SURBS) {
            let mut plain = Vec::new();
            wire::write_ack(&mut plain, &id);
            if self.push_control(ack, plain) {
                self.counters.acks_sent += 1;
            }
        }
        let reply = (!o.reply_surbs.is_empty()).then(|| ReplyHandle {
            in_reply_to: id,
            surbs: o.reply_surbs,
        });
        self.counters.messages_received += 1;
        self.push_event(MessengerEvent::Received(Received {
            id,
            port: o.port,
            data: o.data.to_vec(),
            sender,
            reply,
            in_reply_to: inc.in_reply_to,
            stored: false,
        }));
    }

    pub(super) fn remember(&mut self, now: Timestamp, id: MessageId, attempt: u8) {
        let expires = now.saturating_add(self.config.remember_for);
        self.completed.insert(
            id,
            Completed {
                reacked_attempt: attempt,
            },
        );
        self.completed_order.push_back((id, expires));
        while self.completed_order.len() > self.config.remembered {
            if let Some((old, _)) = self.completed_order.pop_front() {
                self.completed.remove(&old);
            }
        }
    }

    /// When a message being received next needs attention: its NACK after the quiet time,
    /// or its expiry.
    fn incoming_deadline(&self, inc: &Incoming) -> Timestamp {
        let expiry = inc.last.saturating_add(self.config.incoming_expiry);
        if inc.nack_attempt > inc.nacked_attempt && !inc.nack_surbs.is_empty() {
            inc.last.saturating_add(inc.quiet).min(expiry)
        } else {
            expiry
        }
    }

    /// Arms the timer of a message being received, unless one fires before it is due
    /// anyway (that one re-arms when it fires).
    fn arm_incoming(&mut self, id: &MessageId) {
        let Some(inc) = self.incoming.get(id) else {
            return;
        };
        let deadline = self.incoming_deadline(inc);
        let Some(inc) = self.incoming.get_mut(id) else {
            return;
        };
        if inc.armed.is_some_and(|a| a <= deadline) {
            return;
        }
        inc.generation = inc.generation.wrapping_add(1);
        inc.armed = Some(deadline);
        let timer = Timer {
            kind: Kind::Incoming,
            id: *id,
            generation: inc.generation,
        };
        self.timers.insert(deadline, timer);
    }

    /// A message being received came due: expire it, or NACK through every SURB of its
    /// attempt (one NACK is lost as often as a packet), then re-arm.
    pub(super) fn on_incoming_timer(&mut self, now: Timestamp, timer: Timer) {
        let expiry = self.config.incoming_expiry;
        let Some(inc) = self.incoming.get_mut(&timer.id) else {
            return;
        };
        if inc.generation != timer.generation {
            return;
        }
        inc.armed = None;
        let id = timer.id;
        if now >= inc.last.saturating_add(expiry) {
            if let Some(inc) = self.incoming.remove(&id) {
                self.incoming_bytes = self.incoming_bytes.saturating_sub(inc.bytes);
                self.counters.incoming_expired += 1;
            }
            return;
        }
        if inc.nack_attempt > inc.nacked_attempt
            && now >= inc.last.saturating_add(inc.quiet)
            && !inc.nack_surbs.is_empty()
        {
            inc.nacked_attempt = inc.nack_attempt;
            let have = inc.esis.len() as u32;
            let need = inc.k.saturating_sub(have).max(1);
            let attempt = inc.nack_attempt;
            let surbs = std::mem::take(&mut inc.nack_surbs);
            for surb in surbs {
                let mut plain = Vec::new();
                wire::write_nack(&mut plain, &id, attempt, have, need);
                if self.push_control(surb, plain) {
                    self.counters.nacks_sent += 1;
                }
            }
        }
        self.arm_incoming(&id);
    }
}
