//! End-to-end load tools that drive a node under test over loopback and report forwarding rates. Filled by the node issue.

#![forbid(unsafe_code)]
