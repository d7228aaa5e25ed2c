#!/usr/bin/env bash
# A routing table of many routes on one node (issue 22's scale targets): N route PUTs through
# the API until all are live in the proxy, then single changes at that size, timed from the
# PUT's answer to the proxy's first new answer; the node's memory and CPU per route.
#
#   misc/bench/routes.sh [routes]        (default 100000)
#
# Prints one JSON line (misc/bench/README.md has the figures).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
routes=${1:-100000}
cd "$root"
cargo build --release -q -p rood -p roo-bench
work=$(mktemp -d)
node=""
cleanup() {
  [ -n "$node" ] && kill -9 "$node" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ROO_LOG=warn ROO_ACME=false ROO_SWARM=off target/release/rood --data-dir "$work/d" \
  --api-addr 127.0.0.1:17299 --http-addr 127.0.0.1:17080 --https-addr 127.0.0.1:17443 \
  2>"$work/node.log" &
node=$!
for _ in $(seq 1 200); do
  curl -fsS -o /dev/null 127.0.0.1:17299/roo/ping 2>/dev/null && break
  sleep 0.1
done
timeout 900 target/release/routescale --api 127.0.0.1:17299 --http 127.0.0.1:17080 \
  --pid "$node" --routes "$routes"
