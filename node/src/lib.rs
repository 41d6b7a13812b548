//! The mix node: the sans-IO engine, the thread-per-core io_uring runtime and the `mixed` binary. Filled by the node issue.

#![forbid(unsafe_code)]
