//! Storing: a message's symbols PUT box by box at providers, until as many are
//! acknowledged as the model asks.

use super::*;

impl Offline {
    pub(super) fn start_upload(&mut self, _now: Timestamp, messenger: &Messenger, id: MessageId) {
        let Some(t) = self.untrack(&id) else {
            return;
        };
        let providers = providers(messenger);
        let mut object = Vec::with_capacity(STORED_OBJECT_HEADER + t.data.len());
        object.push(STORED_VERSION);
        object.extend_from_slice(&t.port.to_be_bytes());
        object.extend_from_slice(&(t.data.len() as u32).to_be_bytes());
        object.extend_from_slice(&t.data);
        let encoder = ObjectEncoder::new(&object, STORED_SYMBOL);
        let (Ok(encoder), false) = (encoder, providers.is_empty()) else {
            self.counters.not_stored += 1;
            self.events.push_back(MessengerEvent::Offline { id });
            return;
        };
        let k = encoder.k() as usize;
        let q = self.answer_rate(&providers);
        let need = coding::symbols_for(k, q, self.config.target, 4 * k + 16);
        self.counters.uploads += 1;
        self.uploads.push_back(Upload {
            id,
            contact: t.to,
            encoder,
            object_len: object.len() as u32,
            need,
            acked: 0,
            next_esi: 0,
        });
    }

    /// One PUT: a retry of a box that timed out, or the next symbol of the first upload in
    /// the next box of its stream. `false` when nothing could go.
    pub(super) fn send_put(&mut self, now: Timestamp, messenger: &mut Messenger) -> bool {
        let providers = providers(messenger);
        if providers.is_empty() {
            return false;
        }
        // a retry first
        let retry = self.contacts.iter().find_map(|(id, c)| {
            c.put
                .iter()
                .find(|(_, b)| !b.waiting)
                .map(|(index, _)| (*id, *index))
        });
        if let Some((contact, index)) = retry {
            return self.put_box(now, messenger, &providers, contact, index);
        }
        // the next symbol of the first upload whose stream has room
        let window = self.config.window;
        let Some(u) = self.uploads.iter_mut().find(|u| {
            u.acked + pending_for(&self.contacts, u) < u.need
                && self
                    .contacts
                    .get(&u.contact)
                    .is_some_and(|c| c.put.len() < window)
        }) else {
            return false;
        };
        let Some(c) = self.contacts.get_mut(&u.contact) else {
            return false;
        };
        let Ok(boxes) = c.writer.pending(window) else {
            return false;
        };
        let Some(b) = boxes.into_iter().find(|b| !c.put.contains_key(&b.index)) else {
            return false;
        };
        let t = STORED_SYMBOL;
        let mut plain = vec![0u8; STORED_HEADER + t];
        plain[0] = STORED_VERSION;
        plain[1..17].copy_from_slice(&u.id);
        plain[17..21].copy_from_slice(&u.object_len.to_be_bytes());
        plain[21..25].copy_from_slice(&u.next_esi.to_be_bytes());
        u.encoder.symbol(u.next_esi, &mut plain[STORED_HEADER..]);
        u.next_esi += 1;
        let Ok(sealed) = b.seal(&plain) else {
            return false;
        };
        let request = protocol::encode_put(
            &b.index.to_be_bytes(),
            &sealed.box_id,
            &sealed.signature,
            &sealed.block,
        );
        let (contact, index) = (u.contact, b.index);
        c.put.insert(
            index,
            BoxPut {
                request,
                upload: u.id,
                tries: 0,
                tried: Vec::new(),
                waiting: false,
            },
        );
        self.put_box(now, messenger, &providers, contact, index)
    }

    pub(super) fn put_box(
        &mut self,
        now: Timestamp,
        messenger: &mut Messenger,
        providers: &[[u8; 32]],
        contact: [u8; 32],
        index: u64,
    ) -> bool {
        let Some(box_id) = self.contacts.get(&contact).and_then(|c| {
            c.put
                .get(&index)
                .and_then(|b| {
                    b.request
                        .get(protocol::REQUEST_HEADER - 32..protocol::REQUEST_HEADER)
                })
                .and_then(|s| <[u8; 32]>::try_from(s).ok())
        }) else {
            return false;
        };
        let order = self.order(providers, &box_id);
        let options = self.request_options();
        let Some(c) = self.contacts.get_mut(&contact) else {
            return false;
        };
        let Some(b) = c.put.get_mut(&index) else {
            return false;
        };
        // the providers not tried yet first, in order
        let sp = order
            .iter()
            .find(|sp| !b.tried.contains(sp))
            .or(order.first())
            .copied();
        let Some(sp) = sp else { return false };
        match messenger.send(now, sp, &b.request, options) {
            Ok(id) => {
                b.tries += 1;
                b.tried.push(sp);
                b.waiting = true;
                self.requests
                    .insert(id, (Pending::Put { contact, index, sp }, None));
                self.counters.puts += 1;
                true
            }
            Err(_) => false,
        }
    }

    pub(super) fn on_put(
        &mut self,
        contact: [u8; 32],
        index: u64,
        sp: [u8; 32],
        response: &Response,
    ) {
        self.sample(sp, true);
        let Some(c) = self.contacts.get_mut(&contact) else {
            return;
        };
        let Some(b) = c.put.get_mut(&index) else {
            return;
        };
        b.waiting = false;
        match response.status {
            Status::Stored => {
                let upload = b.upload;
                c.put.remove(&index);
                let _ = c.writer.acknowledged(index);
                let done = self.uploads.iter_mut().position(|u| {
                    if u.id == upload {
                        u.acked += 1;
                    }
                    u.id == upload && u.acked >= u.need
                });
                if let Some(i) = done
                    && let Some(u) = self.uploads.remove(i)
                {
                    self.counters.stored += 1;
                    self.awaiting.insert(u.id, u.contact);
                    self.events.push_back(MessengerEvent::Stored { id: u.id });
                }
            }
            // the box is taken (another block, or deleted): skip it for good
            Status::Exists | Status::Tombstoned | Status::Expired => {
                c.put.remove(&index);
                let _ = c.writer.acknowledged(index);
                self.counters.abandoned += 1;
            }
            // full, unavailable or a refusal: another provider next time
            _ => {
                let tries = self.config.put_tries;
                if b.tries >= tries {
                    c.put.remove(&index);
                    let _ = c.writer.acknowledged(index);
                    self.counters.abandoned += 1;
                }
            }
        }
    }
}

/// PUTs in flight for an upload.
fn pending_for(contacts: &BTreeMap<[u8; 32], Contact>, u: &Upload) -> usize {
    contacts
        .get(&u.contact)
        .map_or(0, |c| c.put.values().filter(|b| b.upload == u.id).count())
}
