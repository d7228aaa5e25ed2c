# Shell helpers the cluster benchmarks share (sourced by kv.sh, events.sh, rollout.sh and
# stats.sh, with $root set).

# A scratch dir for data and logs, and the processes started: both gone when the script ends.
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The voters the roo node at $1 (host:port) counts.
voters() { curl -fsS "http://$1/roo/v1/cluster" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["voters"]))'; }

wait_voters() { # addr, n
  for _ in $(seq 1 600); do
    [ "$(voters "$1" 2>/dev/null || echo 0)" = "$2" ] && return 0
    sleep 0.1
  done
  echo "roo cluster at $1 never reached $2 voters" >&2
  exit 1
}

# Field $2 of kvbench's JSON answer $1.
field() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d['$2'])" "$1"; }
# $1 with $2 decimals.
fmt() { printf '%.*f' "$2" "$1"; }

# Three roo nodes ($rood) on 127.0.0.1-3 in one cluster: API on :16299, proxy on :18080.
three_nodes() {
  local ip
  for ip in 127.0.0.1 127.0.0.2 127.0.0.3; do
    local join=()
    [ "$ip" = 127.0.0.1 ] || join=(--join 127.0.0.1:16299)
    ROO_CLUSTER_SECRET=bench ROO_LOG=warn ROO_ACME=false ROO_SWARM=off "$rood" \
      --api-addr "$ip:16299" --data-dir "$work/$ip" \
      --http-addr "$ip:18080" --https-addr "$ip:0" "${join[@]}" 2>>"$work/$ip.log" &
    pids+=($!)
    if [ "$ip" = 127.0.0.1 ]; then wait_voters 127.0.0.1:16299 1; fi
  done
  wait_voters 127.0.0.1:16299 3
}
