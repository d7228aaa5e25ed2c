# Shell helpers the cluster benchmarks share (sourced by kv.sh and events.sh).

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
