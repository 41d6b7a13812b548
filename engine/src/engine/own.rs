//! The node's own packets: queued for its own-data slots (at most rho * B / h a second),
//! control packets (ACKs, NACKs) ahead of the rest.

use std::sync::Arc;

use crypto_simd::sphinx::{self, Delay, Destination, Hop, MixPublicKey, NodeId};
use rand_core::Rng;
use scheduler::Timestamp;

use super::{Engine, Queued, SendError};
use crate::counters::{DropReason, OutCategory};
use crate::paths::draw_route;

impl Engine {
    /// Queues a one-packet message for `destination` (a node ID in the consensus), through
    /// h - 1 random hops; it leaves at one of the node's own-data slots. Returns the
    /// message's identifier.
    pub fn send_message(
        &mut self,
        destination: [u8; 32],
        payload: &[u8],
    ) -> Result<[u8; 16], SendError> {
        let current = self.current.as_ref().ok_or(SendError::NoConsensus)?;
        let consensus = Arc::clone(&current.keys.consensus);
        let dest = consensus
            .node(&destination)
            .ok_or(SendError::UnknownDestination)?;
        if self.own.len() >= self.config.own_queue {
            return Err(SendError::QueueFull);
        }
        let hops = usize::from(consensus.params().hops).clamp(1, 5);
        let last = Hop {
            id: NodeId(destination),
            key: MixPublicKey(dest.mix_key),
        };
        let mut route = [last; 5];
        let mut delays = [Delay::default(); 5];
        let loops = &self.loops;
        let to = crate::paths::Families::of_all(&dest.addresses);
        let mixes = draw_route(
            &consensus,
            &self.delays,
            Some(&self.config.node_id),
            Some(&destination),
            hops - 1,
            (self.config.families, to),
            |id| loops.reliability(id),
            &mut self.rng,
            &mut route,
            &mut delays,
        )?;
        route[mixes] = last;
        let mut identifier = [0u8; 16];
        self.rng.fill_bytes(&mut identifier);
        let to = self
            .address_of(&route[0].id.0)
            .ok_or(SendError::UnknownDestination)?;
        let buf = self.pool.take().ok_or(SendError::PoolFull)?;
        let built = sphinx::build_packet(
            &route[..mixes + 1],
            &delays[..mixes],
            &Destination {
                address: destination,
                identifier,
            },
            payload,
            &mut self.rng,
            self.pool.get_mut(buf),
        );
        if built.is_err() {
            self.pool.give_back(buf);
            return Err(SendError::TooLong);
        }
        self.own.push_back(Queued {
            buf,
            to,
            category: OutCategory::Own,
            due: Timestamp::ZERO,
        });
        Ok(identifier)
    }

    /// Queues a packet the layer above built ([`crate::paths::Paths`]) for one of the
    /// node's own-data slots; `first_hop` is where it goes first (a node ID, or a direct ID).
    pub fn queue_own(&mut self, packet: &[u8], first_hop: &[u8; 32]) -> Result<(), SendError> {
        if self.current.is_none() {
            return Err(SendError::NoConsensus);
        }
        if packet.len() != self.packet_size {
            return Err(SendError::WrongSize);
        }
        if self.own.len() >= self.config.own_queue {
            self.counters.drop(DropReason::OwnQueueFull);
            return Err(SendError::QueueFull);
        }
        if self.is_me(first_hop) {
            self.counters.drop(DropReason::SelfAddressed);
            return Err(SendError::SelfAddressed);
        }
        let to = self
            .address_of(first_hop)
            .ok_or(SendError::UnknownDestination)?;
        let buf = self.pool.take().ok_or(SendError::PoolFull)?;
        self.pool.get_mut(buf).copy_from_slice(packet);
        self.own.push_back(Queued {
            buf,
            to,
            category: OutCategory::Own,
            due: Timestamp::ZERO,
        });
        Ok(())
    }

    /// Queues a packet like [`Self::queue_own`], but ahead of every own packet waiting:
    /// for acknowledgements, which are small and time-critical.
    pub fn queue_control(&mut self, packet: &[u8], first_hop: &[u8; 32]) -> Result<(), SendError> {
        self.queue_own(packet, first_hop)?;
        if let Some(q) = self.own.pop_back() {
            self.own.push_front(q);
        }
        Ok(())
    }

    /// Room left in the own-data queue.
    pub fn own_room(&self) -> usize {
        self.config.own_queue.saturating_sub(self.own.len())
    }

    /// Own messages waiting for a slot.
    pub fn own_queued(&self) -> usize {
        self.own.len()
    }
}
