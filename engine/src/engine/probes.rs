//! Loops and drop cover, built in chunks of [`BUILD_CHUNK`](super::BUILD_CHUNK) (the
//! X25519 ladders side by side) and kept in stock for the slots that call for them
//! (section 4.4 of the paper).

use std::sync::Arc;

use crypto_simd::sphinx::{
    self, BuildError, Delay, Destination, Hop, MixPublicKey, NodeId, PacketRequest,
};
use rand_core::Rng;
use scheduler::{ExpDelay, Timestamp};

use super::{COVER_IDENTIFIER, Engine, LOOP_STOCK, Queued, StockedLoop};
use crate::counters::OutCategory;
use crate::paths::{Families, draw_route};

impl Engine {
    /// Builds up to `count` loops through random paths back to this node, in one batch.
    pub(super) fn build_loops(&mut self, _now: Timestamp, count: usize) {
        let Some(current) = &self.current else {
            return;
        };
        let consensus = Arc::clone(&current.keys.consensus);
        let params = *consensus.params();
        let key = current.public;
        let Some(my_id) = self.my_hop_id() else {
            return; // nothing can reach this node: no loops
        };
        let me = Hop {
            id: NodeId(my_id),
            key,
        };
        let h = usize::from(params.hops).clamp(1, 4);
        let count = count.min(LOOP_STOCK);
        let mut routes = [[me; 5]; LOOP_STOCK];
        let mut ids = [[[0u8; 32]; 4]; LOOP_STOCK];
        let mut delays = [[Delay::default(); 5]; LOOP_STOCK];
        let mut destinations = [Destination {
            address: self.config.node_id,
            identifier: [0; 16],
        }; LOOP_STOCK];
        let mut built = 0;
        for k in 0..count {
            let loops = &self.loops;
            // the first hop as for every packet this node emits; the loop comes back here, so
            // it is never drawn longer than h
            if draw_route(
                &consensus,
                &self.delays,
                Some(&self.config.node_id),
                Some(&self.config.node_id),
                h,
                (self.config.families, self.config.families),
                |id| loops.reliability(id),
                &mut self.rng,
                &mut routes[k],
                &mut delays[k],
            ) != Ok(h)
            {
                break;
            }
            for i in 0..h {
                ids[k][i] = routes[k][i].id.0;
            }
            routes[k][h] = me;
            self.rng.fill_bytes(&mut destinations[k].identifier);
            built = k + 1;
        }
        let requests: [PacketRequest<'_>; LOOP_STOCK] = core::array::from_fn(|k| PacketRequest {
            route: &routes[k][..h + 1],
            delays: &delays[k][..h],
            destination: &destinations[k],
            message: &[],
        });
        let (bufs, results, taken) = self.build_batch(&requests[..built], false);
        for k in 0..taken {
            let first = routes[k][0].id.0;
            match (results[k], self.address_of(&first)) {
                (Ok(()), Some(to)) => {
                    self.stock.push_back(StockedLoop {
                        buf: bufs[k],
                        to,
                        id: destinations[k].identifier,
                        hops: ids[k],
                        hop_count: h,
                    });
                }
                _ => self.pool.give_back(bufs[k]),
            }
        }
    }

    /// Builds up to `count` drop-cover packets in one batch: one hop to a random node (by
    /// bandwidth), with the cover identifier and a random body
    /// ([`sphinx::build_cover_packets`]); the node discards them.
    pub(super) fn build_cover(&mut self, count: usize) {
        let Some(current) = &self.current else {
            return;
        };
        let consensus = Arc::clone(&current.keys.consensus);
        let count = count.min(LOOP_STOCK);
        let placeholder = Hop {
            id: NodeId([0; 32]),
            key: MixPublicKey([9; 32]),
        };
        let mut routes = [[placeholder; 5]; LOOP_STOCK];
        let mut delays = [Delay::default(); 5];
        let mut destinations = [Destination {
            address: [0; 32],
            identifier: COVER_IDENTIFIER,
        }; LOOP_STOCK];
        let mut built = 0;
        for k in 0..count {
            // one hop, no delay: cover is not mixed, only dropped; its hop is drawn as the
            // first hop of everything this node emits
            if draw_route(
                &consensus,
                &ExpDelay::ZERO,
                Some(&self.config.node_id),
                None,
                1,
                (self.config.families, Families::BOTH),
                |_| 1.0,
                &mut self.rng,
                &mut routes[k],
                &mut delays,
            )
            .is_err()
            {
                break;
            }
            destinations[k].address = routes[k][0].id.0;
            built = k + 1;
        }
        let requests: [PacketRequest<'_>; LOOP_STOCK] = core::array::from_fn(|k| PacketRequest {
            route: &routes[k][..1],
            delays: &[],
            destination: &destinations[k],
            message: &[],
        });
        let (bufs, results, taken) = self.build_batch(&requests[..built], true);
        for k in 0..taken {
            match (results[k], self.address_of(&routes[k][0].id.0)) {
                (Ok(()), Some(to)) => self.cover.push_back(Queued {
                    buf: bufs[k],
                    to,
                    category: OutCategory::Cover,
                    due: Timestamp::ZERO,
                }),
                _ => self.pool.give_back(bufs[k]),
            }
        }
    }

    /// Builds `requests` (at most [`LOOP_STOCK`]) into free pool buffers in one batch, their
    /// X25519 ladders side by side, as many as there are buffers (drop cover, with random
    /// bodies, when `cover`): returns the buffers, each build's result, and how many were
    /// taken.
    fn build_batch(
        &mut self,
        requests: &[PacketRequest<'_>],
        cover: bool,
    ) -> (
        [u32; LOOP_STOCK],
        [Result<(), BuildError>; LOOP_STOCK],
        usize,
    ) {
        let mut bufs = [0u32; LOOP_STOCK];
        let mut taken = 0;
        while taken < requests.len().min(LOOP_STOCK) {
            let Some(b) = self.pool.take() else { break };
            bufs[taken] = b;
            taken += 1;
        }
        let mut results = [Ok(()); LOOP_STOCK];
        let mut outs = self.pool.many_mut(&bufs[..taken]);
        // the lengths match by construction
        let build = if cover {
            sphinx::build_cover_packets
        } else {
            sphinx::build_packets
        };
        let _ = build(
            &requests[..taken],
            &mut self.rng,
            &mut outs[..taken],
            &mut results[..taken],
        );
        (bufs, results, taken)
    }
}
