//! Arbitrary text as a node's configuration file. Nothing may panic: it parses and checks,
//! or it is a clear error.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = node::NodeConfig::parse(text, std::path::Path::new("/fuzz/node.toml"));
    }
});
