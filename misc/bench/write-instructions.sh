#!/usr/bin/env bash
# User-space instructions per route write, counted by valgrind's callgrind: what the activity
# stream adds to a write, in a figure that does not move with the load of a shared VM (unlike
# events.sh's writes/s). One node runs under callgrind, with the stream (the default) and then
# without (--events-kept 0); each time, after a warm-up, the counters are zeroed, WRITES route
# PUTs go through the route write path one at a time (kvbench --routes), the counters are dumped,
# and an idle stretch as long as the writes took is counted the same way and taken off. Kernel
# time is not counted.
#
#   misc/bench/write-instructions.sh [writes]
#   (needs: apt-get install valgrind)
#
# ROWS (default "routes changes plain") picks what is written: new routes, changes of routes
# that stand (each has its history), or plain keys (no event).
# KEEP=<dir> keeps the dumps there, for callgrind_annotate.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
writes=${1:-400}
cd "$root"
cargo build --profile dist -q -p rood
cargo build --release -q -p roo-bench --bin kvbench
rood=$root/target/dist/rood
kvbench=$root/target/release/kvbench
for t in valgrind callgrind_control curl python3; do command -v $t >/dev/null || { echo "$t not found" >&2; exit 1; }; done

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The instructions counted since the last zeroing, dumped now.
dump() { # pid, name, tag (of the node)
  rm -f "$work/cg.$1."*
  callgrind_control --dump="$2" "$1" >/dev/null 2>&1
  local f; f=$(ls -t "$work/cg.$1."* | head -1)
  [ -n "${KEEP:-}" ] && cp "$f" "$KEEP/$3.$2"
  awk '/^(summary|totals):/ {print $2; exit}' "$f"
}

# One node: a tag, its flags; prints "instructions-per-write" for each row.
run() {
  local tag=$1; shift
  rm -rf "$work/roo"
  ROO_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" "$rood" \
    --data-dir "$work/roo" --api-addr 127.0.0.1:16301 --acme false --swarm off --proxy-workers 1 \
    --http-addr 127.0.0.1:18092 --https-addr 127.0.0.1:18454 "$@" 2>"$work/vg.log" &
  local pid=$!; pids+=($pid)
  for _ in $(seq 1 600); do curl -fsS -o /dev/null 127.0.0.1:16301/roo/ping 2>/dev/null && break; sleep 0.2; done
  local line="" mode
  # Writes one at a time: how many, their key prefix.
  put() { "$kvbench" --target roo "${mode[@]}" --endpoints 127.0.0.1:16301 --clients 1 --total "$1" --prefix "$2" >/dev/null; }
  for what in ${ROWS:-routes changes plain}; do
    mode=(); [ "$what" != plain ] && mode=(--routes)
    put 50 "warm$what"
    # Changes: the same routes are made first, uncounted, then written again.
    [ "$what" = changes ] && put "$writes" "$what"
    callgrind_control --zero "$pid" >/dev/null 2>&1
    local t0 t1 busy idle
    t0=$(date +%s.%N)
    put "$writes" "$what"
    t1=$(date +%s.%N)
    busy=$(dump "$pid" "$what" "$tag")
    callgrind_control --zero "$pid" >/dev/null 2>&1
    sleep "$(python3 -c "print($t1 - $t0)")"
    idle=$(dump "$pid" "idle$what" "$tag")
    line+=" $(( (busy - idle) / writes ))"
  done
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  echo "$line"
}

read -r -a on < <(run on)
read -r -a off < <(run off --events-kept 0)
echo "| writes | instructions a write, events on | events off | on/off |"
echo "|---|---|---|---|"
i=0
for what in ${ROWS:-routes changes plain}; do
  echo "| $what | ${on[$i]} | ${off[$i]} | $(python3 -c "print(f'{${on[$i]}/${off[$i]}:.3f}')") |"
  i=$((i + 1))
done
