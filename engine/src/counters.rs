//! What a node counts: packets in and out by category, drops by reason. One `u64` per
//! counter, no allocation; the runtime renders them as Prometheus metrics.

use crypto_simd::sphinx::ProcessError;

/// Why a packet was dropped. Each maps to one counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A datagram whose length is not the network's packet size.
    WrongSize,
    /// The header's MAC failed under every key the node holds (tampered, or not for us).
    HeaderMac,
    /// The packet's group element has small order.
    LowOrderAlpha,
    /// An authentic header with an unknown flag or version.
    BadRouting,
    /// A replay: the tag was seen before under the same key.
    Replay,
    /// The replay filter of the key is full (more packets than the epoch was sized for).
    ReplayFilterFull,
    /// The next hop is not in the consensus.
    UnknownNextHop,
    /// The sender asked for a delay longer than the node holds packets.
    DelayTooLong,
    /// No packet buffer free.
    PoolFull,
    /// The timer wheel is full.
    WheelFull,
    /// Forwards above the forward budget, dropped at random (Algorithm 2).
    ForwardBudget,
    /// The ready queue of forwards overflowed within one slot.
    ForwardQueueFull,
    /// A passive node does not forward.
    NotForwarding,
    /// The transmit queue was full.
    TxQueueFull,
    /// A final hop for another destination.
    NotForUs,
    /// The own-data queue was full.
    OwnQueueFull,
    /// The event queue was full: the layer above does not poll events.
    EventQueueFull,
    /// No epoch installed yet: the node has no key.
    NoKey,
    /// The next hop is in the consensus but has no address in a family this node sends on
    /// (an IPv4-only node asked to forward to an IPv6-only one).
    UnreachableNextHop,
    /// The next hop is this node itself: no path this software draws does that (a node
    /// never sends to itself: on a real interface such a datagram never leaves the host,
    /// and the hole it leaves in the wire's count shows).
    SelfAddressed,
    /// A forward arriving in high-alert mode (loops collapsed: a possible (n-1) attack).
    HighAlert,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 21] = [
        DropReason::WrongSize,
        DropReason::HeaderMac,
        DropReason::LowOrderAlpha,
        DropReason::BadRouting,
        DropReason::Replay,
        DropReason::ReplayFilterFull,
        DropReason::UnknownNextHop,
        DropReason::DelayTooLong,
        DropReason::PoolFull,
        DropReason::WheelFull,
        DropReason::ForwardBudget,
        DropReason::ForwardQueueFull,
        DropReason::NotForwarding,
        DropReason::TxQueueFull,
        DropReason::NotForUs,
        DropReason::OwnQueueFull,
        DropReason::EventQueueFull,
        DropReason::NoKey,
        DropReason::UnreachableNextHop,
        DropReason::SelfAddressed,
        DropReason::HighAlert,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::WrongSize => "wrong_size",
            DropReason::HeaderMac => "header_mac",
            DropReason::LowOrderAlpha => "low_order_alpha",
            DropReason::BadRouting => "bad_routing",
            DropReason::Replay => "replay",
            DropReason::ReplayFilterFull => "replay_filter_full",
            DropReason::UnknownNextHop => "unknown_next_hop",
            DropReason::DelayTooLong => "delay_too_long",
            DropReason::PoolFull => "pool_full",
            DropReason::WheelFull => "wheel_full",
            DropReason::ForwardBudget => "forward_budget",
            DropReason::ForwardQueueFull => "forward_queue_full",
            DropReason::NotForwarding => "not_forwarding",
            DropReason::TxQueueFull => "tx_queue_full",
            DropReason::NotForUs => "not_for_us",
            DropReason::OwnQueueFull => "own_queue_full",
            DropReason::EventQueueFull => "event_queue_full",
            DropReason::NoKey => "no_key",
            DropReason::UnreachableNextHop => "unreachable_next_hop",
            DropReason::SelfAddressed => "self_addressed",
            DropReason::HighAlert => "high_alert",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The reason for a packet the Sphinx layer refused.
    pub fn from_process(e: ProcessError) -> DropReason {
        match e {
            ProcessError::TooShort | ProcessError::TooLong | ProcessError::OutputLength => {
                DropReason::WrongSize
            }
            ProcessError::LowOrderAlpha => DropReason::LowOrderAlpha,
            ProcessError::HeaderMac => DropReason::HeaderMac,
            ProcessError::UnknownFlag | ProcessError::UnknownVersion => DropReason::BadRouting,
        }
    }
}

/// Packets out, by what they carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutCategory {
    /// The node's own data.
    Own,
    /// A packet forwarded for others.
    Forward,
    /// A scheduled loop.
    Loop,
    /// Drop cover filling a slot.
    Cover,
}

/// The counters of one engine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams received.
    pub received: u64,
    /// Packets unwrapped as a forward hop.
    pub forward_hops: u64,
    /// Packets unwrapped as the final hop.
    pub final_hops: u64,
    /// Sealed payloads (SURB replies) handed to the layer above.
    pub sealed: u64,
    /// Packets sent: own, forward, loop.
    pub sent_own: u64,
    /// Forwards sent.
    pub sent_forward: u64,
    /// Loops sent.
    pub sent_loop: u64,
    /// Cover sent.
    pub sent_cover: u64,
    /// Cover received (and discarded).
    pub cover_received: u64,
    /// Loops that came back.
    pub loops_returned: u64,
    /// Loops given up on.
    pub loops_lost: u64,
    /// Loops left out, drop cover sent in their slot, because a delivery to this node came
    /// back in their place (incoming-volume shaping).
    pub loops_shaped: u64,
    /// Messages delivered to the layer above.
    pub delivered: u64,
    drops: [u64; DropReason::ALL.len()],
    /// Sizes of the receive batches, in buckets 1, 2-3, 4-7, 8-15, 16-31, 32-63, 64+.
    pub batch_sizes: [u64; 7],
}

impl Counters {
    /// Counts a drop.
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason.index()] += 1;
    }

    /// Drops for a reason.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    /// Every drop.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Counts a packet sent.
    pub fn sent(&mut self, category: OutCategory) {
        match category {
            OutCategory::Own => self.sent_own += 1,
            OutCategory::Forward => self.sent_forward += 1,
            OutCategory::Loop => self.sent_loop += 1,
            OutCategory::Cover => self.sent_cover += 1,
        }
    }

    /// Every packet sent.
    pub fn total_sent(&self) -> u64 {
        self.sent_own + self.sent_forward + self.sent_loop + self.sent_cover
    }

    /// Counts a receive batch of `n` datagrams.
    pub fn batch(&mut self, n: usize) {
        let bucket = (usize::BITS - n.max(1).leading_zeros() - 1).min(6) as usize;
        self.batch_sizes[bucket] += 1;
    }

    /// Adds another engine's counters (for a node of several cores).
    pub fn add(&mut self, other: &Counters) {
        self.received += other.received;
        self.forward_hops += other.forward_hops;
        self.final_hops += other.final_hops;
        self.sent_own += other.sent_own;
        self.sent_forward += other.sent_forward;
        self.sent_loop += other.sent_loop;
        self.sent_cover += other.sent_cover;
        self.cover_received += other.cover_received;
        self.loops_returned += other.loops_returned;
        self.loops_lost += other.loops_lost;
        self.loops_shaped += other.loops_shaped;
        self.delivered += other.delivered;
        self.sealed += other.sealed;
        for (a, b) in self.drops.iter_mut().zip(other.drops) {
            *a += b;
        }
        for (a, b) in self.batch_sizes.iter_mut().zip(other.batch_sizes) {
            *a += b;
        }
    }
}
