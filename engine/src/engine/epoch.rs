//! Epochs: the consensus and this node's key for each, the previous key honoured for a
//! grace after a new epoch starts, the next epoch's key honoured a little before it is
//! installed, the addresses of the epoch's nodes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crypto_simd::sphinx::{self, HEADER_LEN, MixPublicKey, MixSecretKey};
use scheduler::{EmissionParams, Emitter, ExpDelay, Timestamp};

use super::{Engine, EpochKeys};
use crate::pool::PacketPool;
use crate::replay::ReplayCheck;

/// Keys of epochs not yet installed that are honoured at once (the next epoch's, and one
/// more should the driver prepare two).
pub(super) const MAX_AHEAD: usize = 2;

/// The key of an epoch not yet installed.
#[derive(Clone, Debug)]
pub(super) struct AheadKey {
    pub(super) epoch: u64,
    pub(super) secret: MixSecretKey,
    pub(super) replay: Arc<dyn ReplayCheck>,
}

#[derive(Debug)]
pub(super) struct EpochState {
    pub(super) keys: EpochKeys,
    /// Node ID -> address, for this epoch's nodes.
    pub(super) addrs: HashMap<[u8; 32], SocketAddr>,
    /// This node's public mix key for the epoch (computed once: a fixed-base
    /// multiplication costs more than a batched ladder).
    pub(super) public: MixPublicKey,
}

/// Why an epoch could not be installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InstallError {
    /// The consensus's parameters do not make a valid emission schedule with this rate.
    #[error("emission parameters: {0}")]
    Params(scheduler::ParamsError),
    /// The packet size changed; the node must restart to follow.
    #[error("the packet size changed from {was} to {now}: restart the node")]
    PacketSize {
        /// The size in use.
        was: usize,
        /// The new size.
        now: usize,
    },
    /// The mean delay 1/mu is beyond what the delay sampler draws (over a day).
    #[error("mean_delay_micros {0} is over a day")]
    MeanDelay(u64),
    /// The packet size is not one Sphinx allows.
    #[error("packet size {0} outside what Sphinx allows")]
    BadPacketSize(usize),
}

impl Engine {
    /// Grows the wheel and the pool to what this core's rate and `mean_delay` need
    /// ([`super::held_for`]), before the first packet is held (the first consensus): the
    /// wheel is empty and the pool not yet allocated.
    fn fit_to_delay(&mut self, mean_delay: Duration) {
        self.config.forward_queue = self.fitted_forward_queue();
        let held = super::held_for(self.config.rate, mean_delay);
        if held > self.config.wheel_capacity && self.wheel.is_empty() {
            self.config.wheel_capacity = held;
            self.wheel = scheduler::TimerWheel::new(held, self.wheel.now());
        }
        // every held packet, plus what waits for a slot or for the socket
        let pool = (self.config.wheel_capacity
            + self.config.forward_queue
            + self.config.tx_queue
            + self.config.own_queue
            + super::LOOP_STOCK
            + super::COVER_STOCK)
            .min(super::MAX_FITTED_BUFFERS);
        self.config.pool_size = self.config.pool_size.max(pool);
    }

    /// The ready queue the first consensus gives the emitter: fitted to the rate when
    /// [`EngineConfig::fit_to_delay`] is set and no epoch is installed yet, else as
    /// configured.
    ///
    /// [`EngineConfig::fit_to_delay`]: super::EngineConfig::fit_to_delay
    fn fitted_forward_queue(&self) -> usize {
        if self.config.fit_to_delay && self.packet_size == 0 {
            self.config
                .forward_queue
                .max(super::ready_for(self.config.rate))
        } else {
            self.config.forward_queue
        }
    }

    /// Honours this node's key for `epoch` before that epoch is installed: a node that
    /// installed it a moment earlier (its clock or its poll ahead of this one's) already
    /// sends under it, and those packets are authentic. `replay` must be the filter that
    /// [`Engine::install_epoch`] later gets for the epoch. Keys of epochs already installed
    /// are ignored; at most [`MAX_AHEAD`] are kept, the newest. They are used once an epoch
    /// is installed (before that the packet size is unknown and nothing can be routed).
    pub fn prepare_key(&mut self, epoch: u64, secret: MixSecretKey, replay: Arc<dyn ReplayCheck>) {
        if self.epoch().is_some_and(|e| epoch <= e) {
            return;
        }
        self.ahead.retain(|k| k.epoch != epoch);
        self.ahead.push(AheadKey {
            epoch,
            secret,
            replay,
        });
        self.ahead.sort_by_key(|k| k.epoch);
        if self.ahead.len() > MAX_AHEAD {
            self.ahead.remove(0);
        }
    }

    /// Installs an epoch: its consensus, this node's key for it, and the key's replay filter.
    /// The previous epoch's key stays valid for the configured grace. The first epoch
    /// fixes the packet size.
    pub fn install_epoch(&mut self, keys: EpochKeys, now: Timestamp) -> Result<(), InstallError> {
        let params = *keys.consensus.params();
        let size = params.packet_size as usize;
        // every check first: a refused epoch changes nothing
        if self.packet_size == 0
            && !(HEADER_LEN + sphinx::MIN_PAYLOAD_SIZE..=HEADER_LEN + sphinx::MAX_PAYLOAD_SIZE)
                .contains(&size)
        {
            return Err(InstallError::BadPacketSize(size));
        }
        if self.packet_size != 0 && size != self.packet_size {
            return Err(InstallError::PacketSize {
                was: self.packet_size,
                now: size,
            });
        }
        // a verified consensus has a mean delay in range; refuse rather than guess
        let delays = ExpDelay::new(Duration::from_micros(params.mean_delay_micros))
            .map_err(|_| InstallError::MeanDelay(params.mean_delay_micros))?;
        let emission = EmissionParams {
            b: self.config.rate,
            rho: f64::from(params.rho_permille) / 1000.0,
            h: u32::from(params.hops),
            l: params.loops,
            b_loop: f64::from(params.loop_rate_millis) / 1000.0,
            forward_queue: self.fitted_forward_queue(),
        };
        let keep = self
            .emitter
            .as_ref()
            .is_some_and(|e| *e.params() == emission);
        if !keep {
            let emitter =
                Emitter::new(emission, now, &mut self.rng).map_err(InstallError::Params)?;
            self.emitter = Some(emitter);
        }
        if self.packet_size == 0 {
            // fitted while no epoch is installed (the ready queue's size depends on it)
            if self.config.fit_to_delay {
                self.fit_to_delay(Duration::from_micros(params.mean_delay_micros));
            }
            self.packet_size = size;
            self.pool = PacketPool::new(self.config.pool_size, size);
            self.next_hop = vec![None; self.config.pool_size];
            self.scratch = Vec::with_capacity(size);
        }
        self.delays = delays;
        let addrs = keys
            .consensus
            .nodes()
            .iter()
            .filter_map(|n| self.config.families.pick(&n.addresses).map(|a| (n.id(), a)))
            .collect();
        let listed = Arc::clone(&keys.consensus);
        self.loops.retain_nodes(|id| listed.node(id).is_some());
        // room for the loops of this epoch's rate, before its first loop leaves
        self.loops.reserve(
            f64::from(params.loops) * f64::from(params.loop_rate_millis) / 1000.0,
            self.config.loop_timeout,
            listed.nodes().len(),
        );
        let epoch = keys.consensus.epoch();
        self.ahead.retain(|k| k.epoch > epoch);
        let public = keys.secret.public_key();
        let state = EpochState {
            keys,
            addrs,
            public,
        };
        if let Some(old) = self.current.replace(state) {
            self.previous = Some((old, now.saturating_add(self.config.grace)));
        }
        // loops and cover built for the old epoch would use its keys
        while let Some(l) = self.stock.pop_front() {
            self.pool.give_back(l.buf);
        }
        while let Some(c) = self.cover.pop_front() {
            self.pool.give_back(c.buf);
        }
        Ok(())
    }

    pub(super) fn address_of(&self, node: &[u8; 32]) -> Option<SocketAddr> {
        self.current
            .as_ref()
            .and_then(|c| c.addrs.get(node))
            .or_else(|| self.previous.as_ref().and_then(|(p, _)| p.addrs.get(node)))
            .copied()
            .or_else(|| {
                self.config
                    .direct_delivery
                    .then(|| crate::paths::parse_direct_id(node))
                    .flatten()
                    .filter(|a| self.config.families.contains(a))
            })
    }

    /// Whether `hop` names this node: its node ID, or a direct ID with its address.
    pub(super) fn is_me(&self, hop: &[u8; 32]) -> bool {
        *hop == self.config.node_id
            || crate::paths::parse_direct_id(hop).is_some_and(|a| Some(a) == self.config.address)
    }

    /// Nodes of the installed consensus with no address in a family this node sends on:
    /// paths drawn here avoid them, but others' packets may still name them as next hop.
    pub fn unreachable_nodes(&self) -> usize {
        self.current
            .as_ref()
            .map_or(0, |c| c.keys.consensus.nodes().len() - c.addrs.len())
    }

    /// The hop ID this node's loops and SURBs end at ([`crate::paths::own_hop_id`]).
    pub(super) fn my_hop_id(&self) -> Option<[u8; 32]> {
        let current = self.current.as_ref()?;
        let listed = current
            .addrs
            .contains_key(&self.config.node_id)
            .then(|| current.keys.consensus.node(&self.config.node_id))
            .flatten()
            .map(|n| &n.addresses[..]);
        crate::paths::own_hop_id(listed, self.config.node_id, self.config.address)
    }

    /// Paths under the installed epoch, for the layer above to build its packets and
    /// SURBs with.
    pub fn paths(&self) -> Option<crate::paths::Paths> {
        let current = self.current.as_ref()?;
        Some(crate::paths::Paths::new(
            Arc::clone(&current.keys.consensus),
            self.config.node_id,
            self.config.address,
            current.public,
        ))
    }
}
