//! What the messenger's tests share: temporary folders, an in-memory hub of nodes (instant,
//! lossless, every message acknowledged: for the protocol's logic), and a port onto the
//! deterministic mixnet of `stack::sim` (real engines, real Sphinx, storage providers,
//! virtual time: for delivery).

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use anon::{MessageId, MessengerEvent, ReplyHandle};
use chat::transport::{node_id, send_options};
use chat::{CHAT_PORT, Incoming, Transport, TransportError, TransportEvent};
use stack::services::Served;
use stack::sim::Sim;

/// A folder `mixed-chat-<name>-<pid>` under the system's temporary folder, emptied first and
/// removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(name: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("mixed-chat-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Dir(p)
    }

    pub fn sub(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A send held by the hub: (from, to, bytes).
pub type Held = ([u8; 32], [u8; 32], Vec<u8>);

/// In-memory nodes: what one sends reaches the other at once, acknowledged; a node that is
/// `down` gets nothing (and its sender hears `Failed`).
#[derive(Default)]
pub struct Hub {
    queues: HashMap<[u8; 32], VecDeque<TransportEvent>>,
    pub down: HashSet<[u8; 32]>,
    /// Every envelope delivered: (to, bytes).
    pub wire: Vec<([u8; 32], Vec<u8>)>,
    /// When set, sends are kept here (from, to, bytes) instead of delivered, and neither
    /// acknowledged nor failed: the test delivers them (in any order) with [`Hub::inject`].
    pub hold: Option<Vec<Held>>,
    next: u64,
}

/// One node of a [`Hub`].
#[derive(Clone)]
pub struct HubPort {
    pub hub: Rc<RefCell<Hub>>,
    pub key: [u8; 32],
}

impl Hub {
    pub fn port(hub: &Rc<RefCell<Hub>>, i: u8) -> HubPort {
        let key = [i; 32];
        hub.borrow_mut().queues.entry(key).or_default();
        HubPort {
            hub: Rc::clone(hub),
            key,
        }
    }

    fn id(&mut self) -> MessageId {
        self.next += 1;
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.next.to_be_bytes());
        id
    }

    /// Puts raw bytes before `to` as if `from` sent them (an attacker's replay, say).
    pub fn inject(&mut self, from: [u8; 32], to: [u8; 32], data: Vec<u8>) {
        let id = self.id();
        self.queues
            .entry(to)
            .or_default()
            .push_back(TransportEvent::Received(Incoming {
                id,
                sender: Some(from),
                data,
                stored: false,
                reply: None,
            }));
    }
}

impl Transport for HubPort {
    fn node_key(&self) -> [u8; 32] {
        self.key
    }

    fn send(&mut self, to: &[u8; 32], data: &[u8], _: u8) -> Result<MessageId, TransportError> {
        if data.len() > anon::messenger::DEFAULT_MAX_MESSAGE {
            return Err(TransportError(format!("{} bytes: too large", data.len())));
        }
        let mut hub = self.hub.borrow_mut();
        let id = hub.id();
        if let Some(held) = &mut hub.hold {
            held.push((self.key, *to, data.to_vec()));
            return Ok(id);
        }
        if hub.down.contains(to) || !hub.queues.contains_key(to) {
            hub.queues
                .entry(self.key)
                .or_default()
                .push_back(TransportEvent::Failed(id, "down".into()));
            return Ok(id);
        }
        hub.wire.push((*to, data.to_vec()));
        let from = self.key;
        hub.inject(from, *to, data.to_vec());
        hub.queues
            .entry(self.key)
            .or_default()
            .push_back(TransportEvent::Acknowledged(id));
        Ok(id)
    }

    fn reply(&mut self, _: &[u8], _: &[u8]) -> Result<MessageId, TransportError> {
        Err(TransportError("no SURBs in the hub".into()))
    }

    fn add_contact(&mut self, _: &[u8; 32]) -> Result<(), TransportError> {
        Ok(())
    }

    fn poll(&mut self, _: Duration) -> Result<Option<TransportEvent>, TransportError> {
        Ok(self
            .hub
            .borrow_mut()
            .queues
            .get_mut(&self.key)
            .and_then(VecDeque::pop_front))
    }
}

/// Handles everything waiting for each of `chats` until the hub is quiet.
pub fn settle(chats: &mut [(&mut chat::Chat, &mut HubPort)]) {
    for _ in 0..100 {
        let mut any = false;
        for (c, t) in chats.iter_mut() {
            while c.pump(*t, Duration::ZERO, 1_700_000_000).unwrap() {
                any = true;
            }
        }
        if !any {
            return;
        }
    }
}

/// Node `node` of the deterministic mixnet, as a transport; `cursor` counts the node's
/// events already taken.
pub struct SimPort<'a> {
    pub sim: &'a mut Sim<Served>,
    pub node: usize,
    pub cursor: &'a mut usize,
}

impl Transport for SimPort<'_> {
    fn node_key(&self) -> [u8; 32] {
        self.sim.nodes[self.node].identity.public().0
    }

    fn send(
        &mut self,
        to: &[u8; 32],
        data: &[u8],
        reply_surbs: u8,
    ) -> Result<MessageId, TransportError> {
        let now = self.sim.now();
        self.sim
            .upper(self.node)
            .send(now, node_id(to), data, send_options(reply_surbs))
            .map_err(|e| TransportError(e.to_string()))
    }

    fn reply(&mut self, reply: &[u8], data: &[u8]) -> Result<MessageId, TransportError> {
        let mut h = ReplyHandle::from_bytes(reply).ok_or(TransportError("bad handle".into()))?;
        self.sim
            .upper(self.node)
            .messenger
            .reply(&mut h, data, CHAT_PORT)
            .map_err(|e| TransportError(e.to_string()))
    }

    fn add_contact(&mut self, node_key: &[u8; 32]) -> Result<(), TransportError> {
        if let Some(o) = self.sim.upper(self.node).offline.as_mut() {
            o.add_contact(pki_client::IdentityKey(*node_key))
                .map_err(|e| TransportError(e.to_string()))?;
        }
        Ok(())
    }

    fn poll(&mut self, _: Duration) -> Result<Option<TransportEvent>, TransportError> {
        let events = &self.sim.nodes[self.node].events;
        while *self.cursor < events.len() {
            let (_, e) = &events[*self.cursor];
            *self.cursor += 1;
            let out = match e {
                MessengerEvent::Received(r) if r.port == CHAT_PORT => {
                    TransportEvent::Received(Incoming {
                        id: r.id,
                        sender: r.sender.map(|k| k.0),
                        data: r.data.clone(),
                        stored: r.stored,
                        reply: r.reply.as_ref().map(ReplyHandle::to_bytes),
                    })
                }
                MessengerEvent::Acknowledged { id, .. } => TransportEvent::Acknowledged(*id),
                MessengerEvent::Stored { id } => TransportEvent::Stored(*id),
                MessengerEvent::Delivered { id } => TransportEvent::Delivered(*id),
                MessengerEvent::Offline { id } => TransportEvent::Failed(*id, "offline".into()),
                MessengerEvent::Undelivered { id, .. } => {
                    TransportEvent::Failed(*id, "undelivered".into())
                }
                _ => continue,
            };
            return Ok(Some(out));
        }
        Ok(None)
    }
}
