#!/usr/bin/env bash
# Builds libmixed and the C example, starts a demo network, runs the example against two of
# its nodes. Exit status: the example's. Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked -p mixed-ffi -p node --bin mixed --lib
out=target/c-example
mkdir -p "$out"
cc -std=c11 -Wall -Wextra -Werror -O2 examples/c/send_receive.c -I ffi/include \
  -L target/release -lmixed -Wl,-rpath,"$PWD/target/release" -o "$out/send_receive"
# the static library links too
cc -std=c11 -O2 examples/c/send_receive.c -I ffi/include target/release/libmixed.a \
  -lpthread -ldl -lm -o "$out/send_receive_static"
list="$out/nodes.txt"
rm -f "$list"
target/release/mixed demo --nodes 6 --epoch-seconds 4 --serve "$list" --seconds 150 &
demo=$!
trap 'kill $demo 2>/dev/null || true' EXIT
for _ in $(seq 1 60); do
  [ -s "$list" ] && break
  sleep 1
done
[ -s "$list" ] || { echo "the demo network did not come up" >&2; exit 1; }
a=$(sed -n 1p "$list" | cut -d' ' -f2)
b=$(sed -n 2p "$list" | cut -d' ' -f2)
"$out/send_receive" "$a" "$b"
c=$(sed -n 3p "$list" | cut -d' ' -f2)
d=$(sed -n 4p "$list" | cut -d' ' -f2)
"$out/send_receive_static" "$c" "$d"
