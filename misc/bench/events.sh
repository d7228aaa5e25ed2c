#!/usr/bin/env bash
# What the activity stream costs and how fast webhooks hear of a change, on loopback:
# 1. route writes/s of a 3-node cluster that writes an event with each route write, next to one
#    that keeps no stream (--events-kept 0), alternating in the same run, same load generator;
#    then plain key writes (no event: what the stream costs the rest of the KV);
# 2. delivery latency: a route PUT's answer to the webhook receiver's arrival (the receiver
#    matches the PUT's `rev` to `X-Roo-Delivery`), for routes PUT one at a time.
#
#   misc/bench/events.sh [seconds-per-row] [puts]
#
# ROWS (default "routes:1 routes:16 routes:64 plain:64") picks the rows; KEPT (default 10000)
# is the --events-kept of the cluster with events.
#
# Prints markdown; README's figures come from it.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-10}
puts=${2:-300}
cd "$root"
cargo build --release -q -p rood -p roo-bench
rood=$root/target/release/rood
kvbench=$root/target/release/kvbench

. "$root/misc/bench/lib.sh"


start_roo() { # ip, data dir, extra args...
  local ip=$1 dir=$2; shift 2
  ROO_CLUSTER_SECRET=bench ROO_LOG=warn ROO_ACME=false ROO_SWARM=off "$rood" \
    --api-addr "$ip:16299" --data-dir "$dir" \
    --http-addr "$ip:0" --https-addr "$ip:0" "$@" 2>>"$work/$ip.log" &
  pids+=($!)
}

cluster() { # first ip's last byte, extra args...
  local a=$1; shift
  start_roo "127.0.0.$a" "$work/n$a" "$@"
  wait_voters "127.0.0.$a:16299" 1
  for b in $((a + 1)) $((a + 2)); do
    start_roo "127.0.0.$b" "$work/n$b" --join "127.0.0.$a:16299" "$@"
  done
  wait_voters "127.0.0.$a:16299" 3
}

cluster 1 --events-kept "${KEPT:-10000}"
cluster 4 --events-kept 0
on=127.0.0.1:16299,127.0.0.2:16299,127.0.0.3:16299
off=127.0.0.4:16299,127.0.0.5:16299,127.0.0.6:16299


# ROUNDS rounds a row, the order of the two clusters swapped each round; the ratio of the sums,
# and the lowest and highest round's ratio.
echo "| writes | clients | writes/s, events on | p99 ms | events off | p99 ms | on/off writes/s (rounds' range) |"
echo "|---|---|---|---|---|---|---|"
for row in ${ROWS:-routes:1 routes:16 routes:64 plain:64}; do
  what=${row%%:*}; clients=${row##*:}
  mode=(); [ "$what" = routes ] && mode=(--routes)
  for eps in "$on" "$off"; do
    "$kvbench" --target roo "${mode[@]}" --endpoints "$eps" --clients "$clients" --seconds 2 --prefix "warm$what$clients" >/dev/null
  done
  ws=(); wos=(); p99s=(); p99os=(); ratios=()
  for round in $(seq 1 "${ROUNDS:-3}"); do
    order=("$on" "$off"); [ $((round % 2)) = 0 ] && order=("$off" "$on")
    for eps in "${order[@]}"; do
      r=$("$kvbench" --target roo "${mode[@]}" --endpoints "$eps" --clients "$clients" --seconds "$secs" --prefix "$what$clients-$round-${eps%%:*}")
      [ "$(field "$r" errors)" = 0 ] || echo "WARNING: errors in $r" >&2
      if [ "$eps" = "$on" ]; then ws+=("$(field "$r" writes_per_sec)"); p99s+=("$(field "$r" p99_ms)")
      else wos+=("$(field "$r" writes_per_sec)"); p99os+=("$(field "$r" p99_ms)"); fi
    done
    ratios+=("$(python3 -c "print(${ws[-1]}/${wos[-1]})")")
  done
  python3 - "$what | $clients" "${ws[*]}" "${wos[*]}" "${p99s[*]}" "${p99os[*]}" "${ratios[*]}" <<'PY'
import sys, statistics
c, w, wo, p, po, r = sys.argv[1], *[list(map(float, a.split())) for a in sys.argv[2:]]
print(f"| {c} | {statistics.mean(w):.0f} | {statistics.median(p):.2f} | {statistics.mean(wo):.0f} | "
      f"{statistics.median(po):.2f} | {sum(w)/sum(wo):.2f} ({min(r):.2f}-{max(r):.2f}) |")
PY
done

# Delivery latency, on the cluster with events: a receiver on loopback, one webhook.
python3 - "$puts" <<'EOF'
import http.client, http.server, json, sys, threading, time, statistics

puts = int(sys.argv[1])
arrived = {}
class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        t = time.monotonic()
        self.rfile.read(int(self.headers.get("content-length", 0)))
        arrived.setdefault(int(self.headers["x-roo-delivery"]), t)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
threading.Thread(target=server.serve_forever, daemon=True).start()
api = http.client.HTTPConnection("127.0.0.1", 16299)
def put(key, body):
    api.request("PUT", "/roo/v1/kv/" + key, body)
    rsp = api.getresponse()
    answer = json.loads(rsp.read())
    assert rsp.status == 200, answer
    return answer["rev"]

put("com.roo.webhook:bench", json.dumps({"url": f"http://127.0.0.1:{server.server_port}/", "events": ["route."], "secret": "bench"}))
time.sleep(1)
sent = {}
for i in range(puts):
    t = time.monotonic()
    rev = put(f"com.roo.host:lat-{i}.bench:http", "http://127.0.0.1:9")
    sent[rev] = t
    time.sleep(0.02)
deadline = time.monotonic() + 30
while len([r for r in sent if r in arrived]) < puts and time.monotonic() < deadline:
    time.sleep(0.05)
ms = sorted((arrived[r] - t) * 1000 for r, t in sent.items() if r in arrived)
if len(ms) < puts:
    print(f"WARNING: {puts - len(ms)} deliveries missing", file=sys.stderr)
p = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]
print()
print(f"delivery: route PUT sent -> webhook received, {len(ms)} PUTs one at a time: "
      f"median {statistics.median(ms):.1f} ms, p99 {p(0.99):.1f} ms, max {ms[-1]:.1f} ms")
EOF
