//! The directory of a mixed network, client side: the signed consensus document of each
//! epoch (paper, section 4.1), its verification, the documents nodes sign, path selection
//! (Algorithm 1), and the HTTP client that fetches and registers.
//!
//! The security of every path rests on all nodes seeing the same, correctly signed view of
//! the network: a consensus is usable only after a majority of the configured authorities'
//! signatures and its validity window have been checked ([`verify`]).

#![forbid(unsafe_code)]

pub mod client;
pub mod consensus;
pub mod descriptor;
pub mod encoding;
pub mod json;
pub mod path;
pub mod verify;

pub use client::{AuthorityEndpoint, AuthorityStatus, ClientError, PkiClient, Which};
pub use consensus::{
    Consensus, ConsensusNode, ConsensusSignature, NetworkParams, SignedConsensus, Vote, VoteError,
};
pub use descriptor::{
    DescriptorError, IdentityKey, IdentitySecret, MixKeys, NodeDescriptor, Roles, SignedDescriptor,
    SignedWithdrawal, Withdrawal,
};
pub use encoding::DecodeError;
pub use path::{PathError, select_hops};
pub use verify::{
    AuthoritySet, SignatureChecked, UnverifiedConsensus, VerifiedConsensus, VerifyError,
};
