#!/usr/bin/env bash
# User-space instructions per proxied request, rood next to nginx, counted by valgrind's callgrind:
# a figure that does not move with the load of a shared VM, unlike requests/s. Each proxy runs
# alone under callgrind with one worker in front of the same upstream (an nginx answering "ok"),
# once under wrk (1 thread, 4 keep-alive connections) and once idle for as long; the difference
# over the requests answered is the cost of a request. Kernel time (syscalls) is not counted.
#
#   misc/bench/instructions.sh [seconds]
#   (needs: apt-get install valgrind nginx wrk)
#
# rood's route is Roo's plain URL unless ROUTE gives another value (a JSON route: middlewares,
# weights...); HOSTS=N loads N other routes first (from the data dir, before callgrind starts);
# PEERS (default "rood nginx") says which proxies run; HEADER is one more request header
# (e.g. the Authorization a basic_auth route asks for); KEEP=dir keeps callgrind's outputs there.
#
# Under callgrind the process's threads take turns, and a thread that spins waiting for another
# burns its turn: sled's lazy statics do (never natively: rood idles at ~0 CPU), so their
# instructions are left out of rood's counts.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-15}
peers=${PEERS:-rood nginx}
hosts=${HOSTS:-0}
route=${ROUTE:-http://127.0.0.1:18080}
extra=()
if [ -n "${HEADER:-}" ]; then extra=(-H "$HEADER"); fi
cd "$root"
cargo build --profile dist -q -p rood
rood=$root/target/dist/rood
for t in valgrind callgrind_annotate nginx wrk curl; do command -v $t >/dev/null || { echo "$t not found" >&2; exit 1; }; done

work=$(mktemp -d); chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/upstream.conf" <<CONF
worker_processes 1; pid $work/upstream.pid; error_log $work/upstream.err;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:18080; location / { return 200 "ok\n"; } } }
CONF
nginx -c "$work/upstream.conf" -g 'daemon off;' & pids+=($!)

# nginx as the proxy, setting the forwarding headers rood sets (as in proxy.sh).
cat > "$work/proxy.conf" <<CONF
daemon off; master_process off; worker_processes 1; pid $work/proxy.pid; error_log $work/proxy.err;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:18080; keepalive 64; }
  server { listen 127.0.0.1:18081;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme; proxy_set_header X-Forwarded-Host \$host;
      proxy_set_header X-Real-IP \$remote_addr; } } }
CONF

# Instructions of a callgrind output, less those of functions matching $2 (if any).
instructions() {
  local total skip=0
  total=$(awk '/^(summary|totals):/ {print $2; exit}' "$1")
  if [ -n "${2:-}" ]; then
    skip=$(callgrind_annotate --auto=no --inclusive=no "$1" 2>/dev/null | grep -E "$2" |
      awk '{gsub(",","",$1); s+=$1} END {print s+0}')
  fi
  echo $((total - skip))
}

# $hosts other routes in rood's data dir, put by a rood run natively (not under callgrind).
fill() {
  ROO_LOG=warn "$rood" --data-dir "$work/roo" --api-addr 127.0.0.1:16300 --acme false --swarm off \
    --http-addr 127.0.0.1:18082 --https-addr 127.0.0.1:18444 2>>"$work/fill.log" &
  local pid=$!
  for _ in $(seq 1 300); do curl -fsS -o /dev/null 127.0.0.1:16300/roo/ping 2>/dev/null && break; sleep 0.1; done
  seq 1 "$hosts" | xargs -P 16 -I{} curl -fsS -o /dev/null -X PUT \
    "127.0.0.1:16300/roo/v1/kv/com.roo.host:h{}.other.test:http" -d http://127.0.0.1:18080
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
}

# One run: name, load (1) or idle (0). Prints "requests instructions".
run() {
  local name=$1 load=$2 out="$work/$1.$2.cg" port pid n=0
  case $name in
    rood)
      rm -rf "$work/roo"
      [ "$hosts" -gt 0 ] && fill
      ROO_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" "$rood" --data-dir "$work/roo" \
        --api-addr 127.0.0.1:16300 --acme false --swarm off --proxy-workers 1 \
        --http-addr 127.0.0.1:18082 --https-addr 127.0.0.1:18444 2>"$work/vg.log" &
      pid=$!; port=18082
      for _ in $(seq 1 300); do curl -fsS -o /dev/null 127.0.0.1:16300/roo/ping 2>/dev/null && break; sleep 0.2; done
      curl -fsS -X PUT 127.0.0.1:16300/roo/v1/kv/com.roo.host:bench.test:http -d "$route" >/dev/null ;;
    nginx)
      valgrind --tool=callgrind --callgrind-out-file="$out" nginx -c "$work/proxy.conf" 2>"$work/vg.log" &
      pid=$!; port=18081 ;;
  esac
  for _ in $(seq 1 300); do curl -fsS -o /dev/null -H 'Host: bench.test' "${extra[@]}" "127.0.0.1:$port/" 2>/dev/null && break; sleep 0.2; done
  if [ "$load" = 1 ]; then
    n=$(wrk -t1 -c4 -d"${secs}s" -H 'Host: bench.test' "${extra[@]}" "http://127.0.0.1:$port/" | awk '/requests in/ {print $1}')
  else
    sleep "$secs"
  fi
  if [ "$name" = nginx ]; then kill -QUIT "$pid"; else kill -TERM "$pid"; fi
  wait "$pid" 2>/dev/null || true
  [ -n "${KEEP:-}" ] && cp "$out" "$KEEP/"
  local skip=""; [ "$name" = rood ] && skip='sled::lazy::Lazy'
  echo "$n $(instructions "$out" "$skip")"
}

echo "| proxy | requests | instructions per request |"
echo "|---|---|---|"
declare -A per
for name in $peers; do
  read -r n busy < <(run "$name" 1)
  read -r _ idle < <(run "$name" 0)
  per[$name]=$(( (busy - idle) / n ))
  echo "| $name | $n | ${per[$name]} |"
done
if [ -n "${per[rood]:-}" ] && [ -n "${per[nginx]:-}" ]; then
  echo
  echo "rood/nginx: $(python3 -c "print(f'{${per[rood]}/${per[nginx]}:.2f}')")x the instructions per request"
fi
