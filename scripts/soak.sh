#!/usr/bin/env bash
# A long soak of a multi-host network of separate processes (not in CI): RSS, FDs, traffic
# and drops of every node every 10 s into soak.csv, a node restarted every 5 minutes.
# Needs root (network namespaces). Usage: scripts/soak.sh [minutes, default 30] [csv]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p node --bin mixed --example soak
MIXED_BIN="$PWD/target/release/mixed" ./target/release/examples/soak "${1:-30}" "${2:-soak.csv}"
