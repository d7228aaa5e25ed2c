#!/usr/bin/env bash
# Write throughput and latency of a 3-node roo cluster next to a 3-member etcd cluster, on
# loopback, in the same run (alternating, same load generator), then the time a new roo node
# takes to join a store of 100k keys.
#
#   misc/bench/kv.sh [seconds-per-row]      (needs: apt-get install etcd-server)
#
# Prints a markdown table; README's figures come from it.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-10}
cd "$root"
cargo build --release -q -p rood -p roo-bench
rood=$root/target/release/rood
kvbench=$root/target/release/kvbench
command -v etcd >/dev/null || { echo "etcd not found: apt-get install etcd-server" >&2; exit 1; }

. "$root/misc/bench/lib.sh"

wait_http() { # url, what
  for _ in $(seq 1 200); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not come up" >&2
  exit 1
}


start_roo() { # index, data dir, extra args...
  local i=$1 dir=$2; shift 2
  ROO_CLUSTER_SECRET=bench ROO_LOG=warn ROO_ACME=false ROO_SWARM=off "$rood" \
    --api-addr "127.0.0.$i:16299" --data-dir "$dir" \
    --http-addr "127.0.0.$i:0" --https-addr "127.0.0.$i:0" "$@" 2>>"$work/roo$i.log" &
  pids+=($!)
}

# roo: three nodes on 127.0.0.1-3.
start_roo 1 "$work/roo1"
wait_voters 127.0.0.1:16299 1
start_roo 2 "$work/roo2" --join 127.0.0.1:16299
start_roo 3 "$work/roo3" --join 127.0.0.1:16299
wait_voters 127.0.0.1:16299 3
roo_eps=127.0.0.1:16299,127.0.0.2:16299,127.0.0.3:16299

# etcd: three members on 127.0.0.1.
cluster="e1=http://127.0.0.1:12380,e2=http://127.0.0.1:22380,e3=http://127.0.0.1:32380"
for n in 1 2 3; do
  etcd --name "e$n" --data-dir "$work/etcd$n" \
    --listen-client-urls "http://127.0.0.1:${n}2379" --advertise-client-urls "http://127.0.0.1:${n}2379" \
    --listen-peer-urls "http://127.0.0.1:${n}2380" --initial-advertise-peer-urls "http://127.0.0.1:${n}2380" \
    --initial-cluster "$cluster" --initial-cluster-state new --log-level error 2>>"$work/etcd$n.log" &
  pids+=($!)
done
for n in 1 2 3; do wait_http "http://127.0.0.1:${n}2379/health" "etcd member $n"; done
etcd_eps=127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379


echo "| clients | roo writes/s | roo p50 ms | roo p99 ms | etcd writes/s | etcd p50 ms | etcd p99 ms | roo/etcd writes/s | roo/etcd p99 |"
echo "|---|---|---|---|---|---|---|---|---|"
for clients in 1 16 64; do
  # Warm both up, then measure roo and etcd back to back.
  "$kvbench" --target roo --endpoints "$roo_eps" --clients "$clients" --seconds 2 --prefix "warm$clients" >/dev/null
  "$kvbench" --target etcd --endpoints "$etcd_eps" --clients "$clients" --seconds 2 --prefix "warm$clients" >/dev/null
  roo=$("$kvbench" --target roo --endpoints "$roo_eps" --clients "$clients" --seconds "$secs" --prefix "c$clients")
  etcd=$("$kvbench" --target etcd --endpoints "$etcd_eps" --clients "$clients" --seconds "$secs" --prefix "c$clients")
  for r in "$roo" "$etcd"; do
    [ "$(field "$r" errors)" = 0 ] || echo "WARNING: errors in $r" >&2
  done
  rw=$(field "$roo" writes_per_sec); ew=$(field "$etcd" writes_per_sec)
  rp99=$(field "$roo" p99_ms); ep99=$(field "$etcd" p99_ms)
  echo "| $clients | $(fmt "$rw" 0) | $(fmt "$(field "$roo" p50_ms)" 2) | $(fmt "$rp99" 2) | $(fmt "$ew" 0) | $(fmt "$(field "$etcd" p50_ms)" 2) | $(fmt "$ep99" 2) | $(python3 -c "print(f'{$rw/$ew:.2f}')") | $(python3 -c "print(f'{$rp99/$ep99:.2f}')") |"
done

# Join time: a one-node roo store of 100k keys, then a second node joins it.
start_roo 4 "$work/roo4"
wait_voters 127.0.0.4:16299 1
"$kvbench" --target roo --endpoints 127.0.0.4:16299 --clients 64 --total 100000 --seconds 600 --prefix join >/dev/null
keys=$(curl -fsS "http://127.0.0.4:16299/roo/v1/kvs/join/" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["results"]))')
t0=$(date +%s.%N)
start_roo 5 "$work/roo5" --join 127.0.0.4:16299
wait_voters 127.0.0.5:16299 2
t1=$(date +%s.%N)
got=$(curl -fsS "http://127.0.0.5:16299/roo/v1/kvs/join/?consistency=stale" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["results"]))')
echo
echo "join: a new node became a voter of a ${keys}-key store in $(python3 -c "print(f'{$t1-$t0:.2f}')") s (it holds $got keys)"
