//! Consensus documents of the directory authorities, their verification, and path selection (Algorithm 1 of the paper). Filled by the PKI issue.

#![forbid(unsafe_code)]
