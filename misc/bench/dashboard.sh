#!/usr/bin/env bash
# What the dashboard costs (issue 25), one node on loopback with 1,000 routes (two backends each,
# a history record and a route event each):
# 1. render time of each page, whole, as a client on a kept-alive connection times it: median
#    and p99 of 50 GETs;
# 2. the node's proxy throughput (wrk as proxy.sh drives it: 2 threads, 64 connections,
#    keep-alive) with 20 open dashboards on the routes page (dashboards.py: each follows
#    /ui/live and fetches the page again on every message, as the browser's script does) next
#    to none, ROUNDS rounds the order swapped each round; the ratio of each round and the CPU
#    time per request of the node.
#
#   misc/bench/dashboard.sh [seconds-per-round]
#   (needs: apt-get install nginx wrk)
#
# Prints markdown; README's figures come from it.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-10}
rounds=${ROUNDS:-5}
cd "$root"
cargo build --release -q -p rood
rood=$root/target/release/rood
for t in nginx wrk python3; do command -v $t >/dev/null || { echo "$t not found" >&2; exit 1; }; done
. "$root/misc/bench/lib.sh"
ulimit -n "$(ulimit -Hn)"

cat > "$work/upstream.conf" <<CONF
worker_processes 1; pid $work/upstream.pid; error_log $work/upstream.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:18080; location / { return 200 "ok\n"; } } }
CONF
nginx -c "$work/upstream.conf" -g 'daemon off;' &
# nginx's master stops its worker on TERM; kill -9 (lib.sh's cleanup) would leave it bound.
trap 'kill "$(cat "$work/upstream.pid" 2>/dev/null)" 2>/dev/null || true; cleanup' EXIT

api=127.0.0.1:16301
ROO_LOG=warn "$rood" --data-dir "$work/roo" --api-addr $api --acme false --swarm off \
  --proxy-cpu-affinity auto --http-addr 127.0.0.1:18085 --https-addr 127.0.0.1:0 2>"$work/rood.log" &
pids+=($!)
rood_pid=$!
for _ in $(seq 1 100); do curl -fsS -o /dev/null $api/roo/ping 2>/dev/null && break; sleep 0.1; done
curl -fsS -X PUT $api/roo/v1/kv/com.roo.host:bench.test:http -d http://127.0.0.1:18080 >/dev/null
python3 - "$api" <<'PY'
import http.client, json, sys
host, port = sys.argv[1].split(":")
c = http.client.HTTPConnection(host, int(port))
for i in range(1000):
    value = {"backends": [{"name": "v1", "url": "http://127.0.0.1:18080", "weight": 90},
                          {"name": "v2", "url": "http://127.0.0.1:18080", "weight": 10}]}
    c.request("PUT", f"/roo/v1/kv/com.roo.host:r{i:04}.bench.test:http", json.dumps(value))
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
for _ in $(seq 1 100); do curl -fsS -o /dev/null -H 'Host: bench.test' 127.0.0.1:18085/ 2>/dev/null && break; sleep 0.1; done
# Some traffic on a few routes, so that the pages have counts to show.
wrk -t1 -c4 -d2s -H 'Host: r0001.bench.test' http://127.0.0.1:18085/ >/dev/null

echo "| page (1,000 routes) | median ms | p99 ms | bytes |"
echo "|---|---|---|---|"
python3 - "$api" <<'PY'
import http.client, statistics, sys, time
host, port = sys.argv[1].split(":")
c = http.client.HTTPConnection(host, int(port))
for page in ["/ui/", "/ui/routes", "/ui/routes/r0001.bench.test:http", "/ui/certs", "/ui/events"]:
    times, size = [], 0
    for _ in range(50):
        t = time.perf_counter()
        c.request("GET", page)
        r = c.getresponse(); body = r.read()
        times.append((time.perf_counter() - t) * 1000)
        assert r.status == 200, (page, r.status)
        size = len(body)
    times.sort()
    print(f"| {page} | {statistics.median(times):.2f} | {times[int(len(times) * 0.99) - 1]:.2f} | {size:,} |")
PY

ticks() { awk '{print $14 + $15}' "/proc/$rood_pid/stat"; }
tick_us=$((1000000 / $(getconf CLK_TCK)))

# What 20 dashboards cost the node on their own, no other traffic: CPU ms a second.
t0=$(ticks)
idle_fetches=$(python3 "$root/misc/bench/dashboards.py" $api 20 /ui/routes 20)
t1=$(ticks)
idle_ms=$(python3 -c "print(f'{($t1 - $t0) * $tick_us / 1000 / 20:.1f}')")

run_wrk() {
  local out; out=$(wrk -t2 -c64 -d"${secs}s" -H 'Host: bench.test' http://127.0.0.1:18085/)
  if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then echo "WARNING: $(grep -E 'Non-2xx|Socket errors' <<<"$out")" >&2; fi
  echo "$(awk '/Requests\/sec/ {print $2}' <<<"$out") $(awk '/requests in/ {print $1}' <<<"$out")"
}
with=() without=() ratios=() cpu_with=() cpu_without=() fetches=()
for round in $(seq 1 "$rounds"); do
  order=(none dash); [ $((round % 2)) = 0 ] && order=(dash none)
  for mode in "${order[@]}"; do
    if [ "$mode" = dash ]; then
      python3 "$root/misc/bench/dashboards.py" $api 20 /ui/routes $((secs + 2)) >"$work/fetches" &
      dash=$!
      sleep 1
    fi
    t0=$(ticks)
    read -r rps n < <(run_wrk)
    t1=$(ticks)
    cpu=$(( (t1 - t0) * tick_us * 100 / n ))
    if [ "$mode" = dash ]; then
      wait "$dash"; fetches+=("$(cat "$work/fetches")")
      with+=("$rps"); cpu_with+=("$cpu")
    else
      without+=("$rps"); cpu_without+=("$cpu")
    fi
  done
  ratios+=("$(python3 -c "print(${with[-1]}/${without[-1]})")")
done
python3 - "${with[*]}" "${without[*]}" "${ratios[*]}" "${cpu_with[*]}" "${cpu_without[*]}" "${fetches[*]}" "$secs" "$idle_ms" "$idle_fetches" <<'PY'
import statistics, sys
w, wo, r, cw, cwo, f = [list(map(float, a.split())) for a in sys.argv[1:7]]
secs, idle_ms, idle_fetches = float(sys.argv[7]), float(sys.argv[8]), float(sys.argv[9])
print()
print("| proxy, HTTP/1.1 keep-alive | req/s | CPU µs/request | page fetches/s |")
print("|---|---|---|---|")
print(f"| no dashboard | {statistics.median(wo):,.0f} | {statistics.median(cwo)/100:.2f} | |")
print(f"| 20 dashboards on /ui/routes | {statistics.median(w):,.0f} | {statistics.median(cw)/100:.2f} | {statistics.median(f)/(secs+2):.1f} |")
print()
print(f"with/without req/s: median of the rounds' ratios {statistics.median(r):.3f} (range {min(r):.3f}-{max(r):.3f})")
busy_ms = statistics.median(wo) * statistics.median(cwo) / 1000 / 100
print(f"20 dashboards alone: {idle_fetches / 20:.1f} page fetches/s, {idle_ms} ms of the node's CPU a second; "
      f"the proxy at full load without them: {busy_ms:.0f} ms a second, so the dashboards are {idle_ms / busy_ms * 100:.2f}% of it")
PY
