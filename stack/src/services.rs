//! Service providers on a node (paper section 4.6): requests arrive as messages on
//! [`SERVICE_PORT`] with reply SURBs attached, and each is answered with exactly one
//! response through them (one in, one out), so the provider's traffic in and out stays
//! matched. The provider is a node like any other: it emits at its constant rate B, and its
//! responses are own packets inside that budget.
//!
//! [`Served`] is the messenger with the services of this node on top: what a provider's
//! stack runs, in the node's runtime and in the deterministic network.

use std::collections::HashMap;

use anon::offline::Offline;
use anon::{Messenger, MessengerEvent, Received};
use engine::{Event, Paths};
use scheduler::Timestamp;
pub use storage::protocol::{SERVICE_PORT, STORAGE_ROLE};
use storage::{Provider, store::StoreError};

use crate::Upper;

/// What the storage service did besides answering (each a request left without its one
/// response, or upkeep).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceCounts {
    /// Responses handed to the messenger.
    pub answered: u64,
    /// Requests that came without reply SURBs: nothing to answer through.
    pub no_surbs: u64,
    /// Responses the messenger refused (busy, or too few SURBs for a response).
    pub reply_failed: u64,
    /// Retention sweeps that failed (the store is unreadable).
    pub sweep_failed: u64,
}

/// The storage service of a node.
#[derive(Debug)]
pub struct StorageService {
    provider: Provider,
    epoch: u64,
    sweep_due: bool,
    counts: ServiceCounts,
}

impl StorageService {
    /// The service over `provider`.
    pub fn new(provider: Provider) -> StorageService {
        StorageService {
            provider,
            epoch: 0,
            sweep_due: false,
            counts: ServiceCounts::default(),
        }
    }

    /// The provider (its store and its counts by status).
    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    /// What it did besides answering.
    pub fn counts(&self) -> ServiceCounts {
        self.counts
    }

    /// The epoch blocks are stamped with and retention counts in.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A new epoch: what outlived the retention goes, a batch per call of
    /// [`Self::upkeep`].
    pub fn set_epoch(&mut self, epoch: u64) {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.sweep_due = true;
        }
    }

    /// One batch of the retention sweep, when one is due.
    pub fn upkeep(&mut self) -> Result<(), StoreError> {
        if !self.sweep_due {
            return Ok(());
        }
        match self.provider.sweep(self.epoch) {
            Ok(s) => {
                self.sweep_due = s.more;
                Ok(())
            }
            Err(e) => {
                self.sweep_due = false;
                self.counts.sweep_failed += 1;
                Err(e)
            }
        }
    }

    /// Answers a request that arrived as message `r` through its reply SURBs.
    pub fn answer(&mut self, messenger: &mut Messenger, r: Received) {
        let response = self.provider.handle(&r.data, self.epoch);
        let Some(mut handle) = r.reply else {
            self.counts.no_surbs += 1;
            return;
        };
        match messenger.reply(&mut handle, &response, SERVICE_PORT) {
            Ok(_) => self.counts.answered += 1,
            Err(_) => self.counts.reply_failed += 1,
        }
    }
}

/// A node's messenger with the services it provides on top (requests to them are answered
/// here and never reach the application) and its offline layer (messages to contacts that
/// seem offline are stored at providers; their stored messages to this node collected).
#[derive(Debug)]
pub struct Served {
    /// The messenger.
    pub messenger: Messenger,
    /// The storage service, on a provider.
    pub storage: Option<StorageService>,
    /// The offline layer, when the node stores and collects messages.
    pub offline: Option<Offline>,
    /// The latest time the driver gave (events are polled without one).
    now: Timestamp,
}

impl Served {
    /// A node that provides nothing (a client).
    pub fn client(messenger: Messenger) -> Served {
        Served {
            messenger,
            storage: None,
            offline: None,
            now: Timestamp::ZERO,
        }
    }

    /// A storage provider.
    pub fn provider(messenger: Messenger, provider: Provider) -> Served {
        Served {
            messenger,
            storage: Some(StorageService::new(provider)),
            offline: None,
            now: Timestamp::ZERO,
        }
    }

    /// Sends a message: through the offline layer when there is one (so that it is stored
    /// if its recipient, a contact, seems offline), else through the messenger.
    pub fn send(
        &mut self,
        now: Timestamp,
        to: [u8; 32],
        data: &[u8],
        options: anon::SendOptions,
    ) -> Result<anon::MessageId, anon::MessageError> {
        match &mut self.offline {
            Some(o) => o.send(now, &mut self.messenger, to, data, options),
            None => self.messenger.send(now, to, data, options),
        }
    }
}

impl Upper for Served {
    type Event = MessengerEvent;

    fn deliver(&mut self, now: Timestamp, event: Event) {
        self.now = self.now.max(now);
        self.messenger.handle_event(now, &event);
    }

    fn set_paths(&mut self, paths: Paths) {
        if let Some(s) = &mut self.storage {
            s.set_epoch(paths.epoch());
        }
        self.messenger.set_paths(paths);
    }

    fn measured(&mut self, returned: u64, lost: u64, reliability: &HashMap<[u8; 32], f64>) {
        <Messenger as Upper>::measured(&mut self.messenger, returned, lost, reliability);
    }

    fn poll_control(&mut self, buf: &mut Vec<u8>) -> Option<[u8; 32]> {
        self.messenger.poll_control(buf)
    }

    fn poll_packets(
        &mut self,
        now: Timestamp,
        bufs: &mut [Vec<u8>],
        hops: &mut [[u8; 32]],
    ) -> usize {
        self.messenger.poll_packets(now, bufs, hops)
    }

    fn own_ahead(&self) -> usize {
        self.messenger.config().own_ahead
    }

    fn handle_timeout(&mut self, now: Timestamp) {
        self.now = self.now.max(now);
        self.messenger.handle_timeout(now);
        if let Some(o) = &mut self.offline {
            o.poll(now, &mut self.messenger);
        }
        if let Some(s) = &mut self.storage {
            // a failed sweep is counted; the service keeps answering
            let _ = s.upkeep();
        }
    }

    fn poll_timeout(&self) -> Option<Timestamp> {
        let offline = self.offline.as_ref().and_then(Offline::poll_timeout);
        [self.messenger.poll_timeout(), offline]
            .into_iter()
            .flatten()
            .min()
    }

    fn poll_event(&mut self) -> Option<MessengerEvent> {
        loop {
            if let Some(e) = self.offline.as_mut().and_then(Offline::poll_event) {
                return Some(e);
            }
            let e = self.messenger.poll_event()?;
            // requests to this provider (responses to this node's requests come back
            // through its SURBs, with `in_reply_to` set)
            let e = match (e, &mut self.storage) {
                (MessengerEvent::Received(r), Some(s))
                    if r.port == SERVICE_PORT && r.in_reply_to.is_none() =>
                {
                    s.answer(&mut self.messenger, r);
                    continue;
                }
                (e, _) => e,
            };
            let now = self.now;
            match &mut self.offline {
                Some(o) => {
                    if let Some(e) = o.filter(now, &mut self.messenger, e) {
                        return Some(e);
                    }
                }
                None => return Some(e),
            }
        }
    }
}
