#!/usr/bin/env bash
# Time from a route PUT to a valid certificate served by all three nodes of a cluster, with
# Pebble as the CA (validation delays off), over N fresh clusters.
#
#   misc/bench/acme.sh [runs]      (needs: apt-get install pebble)
#
# Each run is rood/tests/acme.rs `one_order_one_certificate_served_by_every_node`: a new Pebble,
# three rood processes on 127.0.0.1..3, the name pointed at a follower, the route PUT, then TLS
# handshakes (trusting Pebble's root) until every node serves the certificate. Prints every time
# and the median; README's figure comes from it.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${1:-10}
cd "$root"
command -v pebble >/dev/null || { echo "pebble not found: apt-get install pebble" >&2; exit 1; }
cargo build --release -q -p rood --tests
times=()
for i in $(seq 1 "$runs"); do
  out=$(cargo nextest run --release -p rood --test acme one_order_one_certificate_served_by_every_node \
    --no-capture 2>&1) || { echo "$out" | tail -30 >&2; exit 1; }
  t=$(echo "$out" | sed -n 's/.*route PUT to a valid certificate on all three nodes: \(.*\)$/\1/p')
  ms=$(python3 -c "import sys; v=sys.argv[1]; print(round(float(v[:-2]) if v.endswith('ms') else float(v[:-1])*1000))" "$t")
  echo "run $i: $ms ms"
  times+=("$ms")
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "median %d ms, min %d ms, max %d ms over %d runs\n", a[int((NR+1)/2)], a[1], a[NR], NR}'
