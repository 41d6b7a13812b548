//! Collecting: the contacts' streams asked for box by box, stored messages decoded and
//! delivered once, receipts both ways.

use super::*;

impl Offline {
    /// One GET: the first box of a stream that is not at rest, not in flight, and not
    /// answered Empty by every provider in this round.
    pub(super) fn send_get(&mut self, now: Timestamp, messenger: &mut Messenger) {
        let providers = providers(messenger);
        if providers.is_empty() {
            return;
        }
        let window = self.config.window;
        // streams take turns: start after a random contact
        let ids: Vec<[u8; 32]> = self.contacts.keys().copied().collect();
        let start = (self.rng.next_u32() as usize) % ids.len().max(1);
        for k in 0..ids.len() {
            let contact = ids[(start + k) % ids.len()];
            let Some(pick) = self.next_box(now, &providers, contact, window) else {
                continue;
            };
            let (index, box_id, sp) = pick;
            let request = protocol::encode_get(&index.to_be_bytes(), &box_id);
            let options = self.request_options();
            if let Ok(id) = messenger.send(now, sp, &request, options) {
                if let Some(b) = self
                    .contacts
                    .get_mut(&contact)
                    .and_then(|c| c.get.get_mut(&index))
                {
                    b.waiting = true;
                }
                self.requests
                    .insert(id, (Pending::Get { contact, index, sp }, None));
                self.counters.gets += 1;
            }
            return;
        }
    }

    /// The box of `contact`'s stream to ask for next, and whom.
    pub(super) fn next_box(
        &mut self,
        now: Timestamp,
        providers: &[[u8; 32]],
        contact: [u8; 32],
        window: usize,
    ) -> Option<(u64, [u8; 32], [u8; 32])> {
        let c = self.contacts.get(&contact)?;
        if now < c.idle_until {
            return None;
        }
        let boxes = c.reader.expected(window).ok()?;
        let mut pick = None;
        for b in &boxes {
            let state = c.get.get(&b.index);
            if state.is_some_and(|s| s.waiting) {
                continue;
            }
            // the providers that did not say Empty yet, those that answer first; a box is
            // done for this round once every answering provider said Empty (one that
            // stopped answering is not waited for)
            let order = self.order(providers, &b.id);
            let asked = state.map_or(&[][..], |s| &s.empty_at[..]);
            let best = providers
                .iter()
                .map(|p| self.rate_of(p))
                .fold(0.0f64, f64::max);
            if let Some(sp) = order
                .iter()
                .find(|sp| !asked.contains(sp) && self.rate_of(sp) >= ALIVE * best)
            {
                pick = Some((b.index, b.id, *sp));
                break;
            }
        }
        let c = self.contacts.get_mut(&contact)?;
        match pick {
            Some((index, id, sp)) => {
                c.get.entry(index).or_default();
                Some((index, id, sp))
            }
            None => {
                // every box in the window answered Empty everywhere (or is in flight):
                // the stream rests, and its boxes start a new round afterwards
                if c.get.values().all(|g| !g.waiting) {
                    c.idle_until = now.saturating_add(self.config.idle_poll);
                    for g in c.get.values_mut() {
                        g.empty_at.clear();
                    }
                }
                None
            }
        }
    }

    pub(super) fn on_get(
        &mut self,
        now: Timestamp,
        messenger: &mut Messenger,
        contact: [u8; 32],
        index: u64,
        sp: [u8; 32],
        response: &Response,
    ) {
        self.sample(sp, true);
        let Some(c) = self.contacts.get_mut(&contact) else {
            return;
        };
        let Some(g) = c.get.get_mut(&index) else {
            return;
        };
        g.waiting = false;
        if matches!(response.status, Status::Tombstoned | Status::Expired) {
            // the box will never be read: its writer closed it (the message was
            // delivered), or it outlived the retention
            c.get.remove(&index);
            let _ = c.reader.consumed(index);
            self.counters.skipped += 1;
            return;
        }
        if response.status != Status::Found {
            g.empty_at.push(sp);
            // a hole the writer left (a later box was found) is skipped after two rounds
            if c.last_found.is_some_and(|l| l > index) && g.empty_at.len() >= 2 {
                g.empty_rounds += 1;
                if g.empty_rounds >= 2 || g.empty_at.len() >= 4 {
                    c.get.remove(&index);
                    let _ = c.reader.consumed(index);
                    self.counters.skipped += 1;
                }
            }
            return;
        }
        let window = self.config.window;
        let opened = response.sealed().and_then(|s| {
            let b = c
                .reader
                .expected(window)
                .ok()?
                .into_iter()
                .find(|b| b.index == index)?;
            b.open(&s).ok()
        });
        // the box's position, kept by a message still being decoded (a restart reads
        // again from there)
        let frontier = c.reader.frontier();
        let position = index
            .checked_sub(frontier.index())
            .and_then(|steps| frontier.advance(steps).ok());
        c.get.remove(&index);
        let _ = c.reader.consumed(index);
        c.last_found = Some(c.last_found.map_or(index, |l| l.max(index)));
        let (Some(plain), Some(position)) = (opened, position) else {
            self.counters.malformed += 1;
            return;
        };
        self.on_stored_symbol(now, messenger, contact, position, &plain);
    }

    pub(super) fn on_stored_symbol(
        &mut self,
        now: Timestamp,
        messenger: &mut Messenger,
        contact: [u8; 32],
        position: Position,
        plain: &[u8],
    ) {
        if plain.len() != STORED_HEADER + STORED_SYMBOL || plain[0] != STORED_VERSION {
            self.counters.malformed += 1;
            return;
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&plain[1..17]);
        let object_len = u32::from_be_bytes([plain[17], plain[18], plain[19], plain[20]]);
        let esi = u32::from_be_bytes([plain[21], plain[22], plain[23], plain[24]]);
        if messenger.was_received(&id) || self.delivered.contains(&id) {
            // delivered already (directly, or from other symbols): the sender may not know
            self.receipt(now, messenger, contact, id);
            return;
        }
        let max_decoding = self.config.max_decoding;
        let Some(c) = self.contacts.get_mut(&contact) else {
            return;
        };
        if !c.decoding.contains_key(&id) {
            if c.decoding.len() >= max_decoding {
                self.counters.malformed += 1;
                return;
            }
            let Ok(decoder) = ObjectDecoder::new(object_len as usize, STORED_SYMBOL) else {
                self.counters.malformed += 1;
                return;
            };
            c.decoding.insert(
                id,
                Decoding {
                    decoder,
                    esis: HashSet::new(),
                    first: position.clone(),
                },
            );
        }
        let Some(d) = c.decoding.get_mut(&id) else {
            return;
        };
        if position.index() < d.first.index() {
            d.first = position;
        }
        if !d.esis.insert(esi) {
            return;
        }
        if d.decoder.add(esi, &plain[STORED_HEADER..]).is_none() {
            return;
        }
        let object = d.decoder.take();
        c.decoding.remove(&id);
        let identity = c.identity;
        let Some(object) = object else { return };
        self.counters.recovered += 1;
        let parsed = (object.len() >= STORED_OBJECT_HEADER && object[0] == STORED_VERSION)
            .then(|| {
                let port = u16::from_be_bytes([object[1], object[2]]);
                let len = u32::from_be_bytes([object[3], object[4], object[5], object[6]]);
                let data = object.get(STORED_OBJECT_HEADER..STORED_OBJECT_HEADER + len as usize)?;
                Some((port, data.to_vec()))
            })
            .flatten();
        let Some((port, data)) = parsed else {
            self.counters.malformed += 1;
            return;
        };
        messenger.mark_received(now, id);
        self.delivered_now(id);
        self.events.push_back(MessengerEvent::Received(Received {
            id,
            port,
            data,
            sender: Some(identity),
            reply: None,
            in_reply_to: None,
            stored: true,
        }));
        self.receipt(now, messenger, contact, id);
    }

    /// Tells the sender its stored message arrived (once per message and session).
    pub(super) fn receipt(
        &mut self,
        now: Timestamp,
        messenger: &mut Messenger,
        contact: [u8; 32],
        id: MessageId,
    ) {
        if !self.receipted.insert(id) {
            self.counters.duplicates += 1;
            return;
        }
        let mut body = [0u8; 17];
        body[0] = STORED_VERSION;
        body[1..].copy_from_slice(&id);
        let options = SendOptions {
            port: RECEIPT_PORT,
            reveal_identity: true,
            ..SendOptions::default()
        };
        if let Ok(rid) = messenger.send(now, contact, &body, options) {
            self.receipts.insert(rid);
            self.counters.receipts_sent += 1;
        }
    }

    pub(super) fn on_receipt(&mut self, r: &Received) {
        let Some(id) = (r.data.len() == 17 && r.data[0] == STORED_VERSION)
            .then(|| <[u8; 16]>::try_from(&r.data[1..]).ok())
            .flatten()
        else {
            self.counters.malformed += 1;
            return;
        };
        let contact = self
            .awaiting
            .get(&id)
            .copied()
            .or_else(|| self.uploads.iter().find(|u| u.id == id).map(|u| u.contact));
        let Some(contact) = contact else { return };
        // only the recipient itself can confirm (its identity, revealed and verified)
        if self.contacts.get(&contact).map(|c| c.identity) != r.sender || r.sender.is_none() {
            self.counters.malformed += 1;
            return;
        }
        self.awaiting.remove(&id);
        if let Some(i) = self.uploads.iter().position(|u| u.id == id) {
            self.uploads.remove(i);
            if let Some(c) = self.contacts.get_mut(&contact) {
                c.put.retain(|_, b| b.upload != id || b.waiting);
            }
        }
        self.counters.delivered += 1;
        self.events.push_back(MessengerEvent::Delivered { id });
    }
}

/// Receipts remembered, so a message recovered twice is confirmed once.
pub(super) const RECEIPTS_REMEMBERED: usize = 8192;
