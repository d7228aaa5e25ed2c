#!/usr/bin/env bash
# Failover: how long writes stop when the leader dies (kill -9) or freezes (SIGSTOP), for a 3-node
# roo cluster and a 3-member etcd cluster on loopback, in the same run. Each round: writes offered
# at 50 a second through the two followers (each on its own: one that hangs holds back none), the
# leader faulted 2 s in, the longest gap between two acknowledged writes measured
# (misc/bench/src/failover.rs); then the leader brought back.
#
#   misc/bench/failover.sh [rounds]      (needs: apt-get install etcd-server)
#
# Both run with their default timings: roo's election timeout 300-600 ms (--election-timeout-ms),
# etcd's 1000 ms (--election-timeout) with 100 ms heartbeats. Prints a markdown table; README's
# figures come from it.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
rounds=${1:-5}
cd "$root"
cargo build --release -q -p rood -p roo-bench
rood=$root/target/release/rood
failover=$root/target/release/failover
command -v etcd >/dev/null || { echo "etcd not found: apt-get install etcd-server" >&2; exit 1; }

work=$(mktemp -d)
declare -A pid
cleanup() {
  for p in "${pid[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

json() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print($2)" "$1"; }

start_roo() { # index, extra args...
  local i=$1; shift
  ROO_CLUSTER_SECRET=bench ROO_LOG=warn ROO_ACME=false ROO_SWARM=off "$rood" \
    --api-addr "127.0.0.$i:16299" --data-dir "$work/roo$i" \
    --http-addr "127.0.0.$i:0" --https-addr "127.0.0.$i:0" "$@" 2>>"$work/roo$i.log" &
  pid[roo$i]=$!
}

start_etcd() { # index
  local n=$1
  etcd --name "e$n" --data-dir "$work/etcd$n" \
    --listen-client-urls "http://127.0.0.1:${n}2379" --advertise-client-urls "http://127.0.0.1:${n}2379" \
    --listen-peer-urls "http://127.0.0.1:${n}2380" --initial-advertise-peer-urls "http://127.0.0.1:${n}2380" \
    --initial-cluster "e1=http://127.0.0.1:12380,e2=http://127.0.0.1:22380,e3=http://127.0.0.1:32380" \
    --initial-cluster-state new --log-level error 2>>"$work/etcd$n.log" &
  pid[etcd$n]=$!
}

endpoint() { # system, index
  if [ "$1" = roo ]; then echo "127.0.0.$2:16299"; else echo "127.0.0.1:${2}2379"; fi
}

# The index (1-3) of the member all three take for the leader; nothing while they disagree or
# one does not answer.
leader() { # system
  python3 - "$1" <<'PY'
import json, sys, urllib.request
system = sys.argv[1]
def status(i):
    if system == "roo":
        url, data = f"http://127.0.0.{i}:16299/roo/v1/cluster", None
    else:
        url, data = f"http://127.0.0.1:{i}2379/v3/maintenance/status", b"{}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=2) as r:
            return json.load(r)
    except Exception:
        return None
answers = [status(i) for i in (1, 2, 3)]
if all(answers):
    if system == "roo":
        leaders = {(d["leader_id"], len(d["voters"])) for d in answers}
        if len(leaders) == 1 and answers[0]["leader_id"] and len(answers[0]["voters"]) == 3:
            addr = answers[0]["members"][str(answers[0]["leader_id"])]
            print(addr.split(":")[0].split(".")[-1])
    else:
        leaders = {d["leader"] for d in answers}
        ids = [d["header"]["member_id"] for d in answers]
        if len(leaders) == 1 and leaders <= set(ids):
            print(ids.index(leaders.pop()) + 1)
PY
}

wait_leader() { # system
  for _ in $(seq 1 300); do
    l=$(leader "$1")
    [ -n "$l" ] && { echo "$l"; return; }
    sleep 0.1
  done
  echo "$1 never agreed on a leader" >&2
  exit 1
}

# roo: three nodes on 127.0.0.1-3; etcd: three members on 127.0.0.1.
start_roo 1
sleep 1
start_roo 2 --join 127.0.0.1:16299
start_roo 3 --join 127.0.0.1:16299
for n in 1 2 3; do start_etcd "$n"; done
wait_leader roo >/dev/null
wait_leader etcd >/dev/null

declare -A gaps failed
for round in $(seq 1 "$rounds"); do
  for fault in kill STOP; do
    for system in roo etcd; do
      l=$(wait_leader "$system")
      followers=$(for i in 1 2 3; do if [ "$i" != "$l" ]; then printf '%s,' "$(endpoint "$system" "$i")"; fi; done)
      "$failover" --target "$system" --endpoints "${followers%,}" --rate 50 --seconds 7 \
        --prefix "r$round$fault" >"$work/out" &
      load=$!
      sleep 2
      if [ "$fault" = kill ]; then kill -9 "${pid[$system$l]}"; else kill -STOP "${pid[$system$l]}"; fi
      wait "$load"
      gap=$(json "$(cat "$work/out")" 'round(d["max_gap_ms"])')
      errors=$(json "$(cat "$work/out")" 'd["errors"]')
      echo "round $round, $system, $fault of member $l: writes stopped for $gap ms ($errors failed writes)" >&2
      gaps[$system$fault]="${gaps[$system$fault]:-} $gap"
      failed[$system$fault]=$(( ${failed[$system$fault]:-0} + errors ))
      if [ "$fault" = kill ]; then
        if [ "$system" = roo ]; then start_roo "$l"; else start_etcd "$l"; fi
      else
        kill -CONT "${pid[$system$l]}"
      fi
    done
  done
done

stats() { python3 -c "import statistics,sys; v=sorted(int(x) for x in sys.argv[1:]); print(v[0], statistics.median(v), v[-1])" $1; }
echo "| fault | roo min / median / max ms | etcd min / median / max ms | roo/etcd median | failed writes roo / etcd |"
echo "|---|---|---|---|---|"
for fault in kill STOP; do
  read -r rmin rmed rmax <<<"$(stats "${gaps[roo$fault]}")"
  read -r emin emed emax <<<"$(stats "${gaps[etcd$fault]}")"
  name=$([ "$fault" = kill ] && echo "kill -9 of the leader" || echo "SIGSTOP of the leader")
  ratio=$(python3 -c "print(f'{$rmed/$emed:.2f}')")
  echo "| $name | $rmin / $rmed / $rmax | $emin / $emed / $emax | $ratio | ${failed[roo$fault]} / ${failed[etcd$fault]} |"
done
