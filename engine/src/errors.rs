//! Why the engine refuses: a message or packet it cannot queue. Its own module, so that the
//! engine and the path builder both use it without importing each other.

/// Why a message could not be queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No consensus installed yet.
    #[error("no consensus yet")]
    NoConsensus,
    /// The destination is not in the consensus.
    #[error("destination not in the consensus")]
    UnknownDestination,
    /// Not enough nodes for a path.
    #[error("not enough nodes for a path")]
    NoPath,
    /// Longer than one packet carries.
    #[error("message too long for one packet")]
    TooLong,
    /// The own-data queue is full: try again later.
    #[error("own-data queue full")]
    QueueFull,
    /// No packet buffer free.
    #[error("no packet buffer free")]
    PoolFull,
    /// This node is not in the consensus and knows no address of its own: nothing can
    /// reach it, so it cannot make reply blocks.
    #[error("this node cannot be reached: not in the consensus and no address configured")]
    Unreachable,
    /// A packet of the wrong size.
    #[error("packet of the wrong size")]
    WrongSize,
    /// The packet's first hop is this node (a SURB drawn without knowing its user): a node
    /// never sends to itself.
    #[error("the packet's first hop is this node itself")]
    SelfAddressed,
}
