//! The messenger on the engine, in one process: what the deterministic network runs, and a
//! single-threaded node would.

use std::collections::HashMap;

use anon::{Messenger, MessengerEvent};
use engine::{Event, Paths};
use scheduler::Timestamp;

use crate::Upper;

impl Upper for Messenger {
    type Event = MessengerEvent;

    fn deliver(&mut self, now: Timestamp, event: Event) {
        self.handle_event(now, &event);
    }

    fn set_paths(&mut self, paths: Paths) {
        Messenger::set_paths(self, paths);
    }

    fn measured(&mut self, returned: u64, lost: u64, reliability: &HashMap<[u8; 32], f64>) {
        self.set_loop_outcomes(returned, lost);
        self.set_reliability(reliability.clone());
    }

    fn poll_control(&mut self, buf: &mut Vec<u8>) -> Option<[u8; 32]> {
        Messenger::poll_control(self, buf)
    }

    fn poll_packets(
        &mut self,
        now: Timestamp,
        bufs: &mut [Vec<u8>],
        hops: &mut [[u8; 32]],
    ) -> usize {
        Messenger::poll_packets(self, now, bufs, hops)
    }

    fn own_ahead(&self) -> usize {
        self.config().own_ahead
    }

    fn handle_timeout(&mut self, now: Timestamp) {
        Messenger::handle_timeout(self, now);
    }

    fn poll_timeout(&self) -> Option<Timestamp> {
        Messenger::poll_timeout(self)
    }

    fn poll_event(&mut self) -> Option<MessengerEvent> {
        Messenger::poll_event(self)
    }
}
