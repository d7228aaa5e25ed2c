#!/usr/bin/env bash
# Time from `docker service create` (with roo's labels) to a routed answer through the roo stack,
# and, with Pebble as the ACME server, to a valid certificate, over N runs on this machine's Docker
# engine (swarm mode; the tests initialise it if needed).
#
#   misc/bench/swarm.sh [runs]      (needs: Docker, apt-get install pebble busybox-static)
#
# Each run is rood/tests/swarm.rs: `the_roo_stack_...` (image built FROM scratch, stack deployed,
# a labelled busybox-httpd service, then GETs through the published port until it answers) and
# `a_labelled_service_gets_its_certificate_from_pebble` (a rood process watching the engine,
# Pebble validating it). Prints each time and the medians; README's figures come from it.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${1:-5}
cd "$root"
cargo build -q -p rood --tests
routed=(); certs=()
ms() { python3 -c "import sys; v=sys.argv[1]; print(round(float(v[:-2]) if v.endswith('ms') else float(v[:-1])*1000))" "$1"; }
for i in $(seq 1 "$runs"); do
  out=$(cargo nextest run -p rood --test swarm -E 'test(the_roo_stack) | test(pebble)' --no-capture 2>&1) \
    || { echo "$out" | tail -30 >&2; exit 1; }
  r=$(ms "$(echo "$out" | sed -n 's/.*docker service create to a routed answer: \(.*\)$/\1/p')")
  c=$(ms "$(echo "$out" | sed -n 's/.*docker service create to a valid certificate: \(.*\)$/\1/p')")
  echo "run $i: routed answer $r ms, valid certificate $c ms"
  routed+=("$r"); certs+=("$c")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "median: routed answer $(median "${routed[@]}") ms, valid certificate $(median "${certs[@]}") ms over $runs runs"
