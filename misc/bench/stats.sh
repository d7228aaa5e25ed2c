#!/usr/bin/env bash
# What a cluster-wide statistics query costs with ROUTES routes (default 1000) live on a 3-node
# cluster on loopback: each route has two backends and traffic through every node, so every node
# holds counts of every route and backend. Then, from the API of node 1:
# 1. one route's `GET /roo/v1/stats/<route>?window_s=600` (the longest window) at a time, for SAMPLES random routes:
#    median and p99 time;
# 2. every route's, 8 at a time (what a page listing all routes would ask): total time;
# 3. the bytes of a query: the answer, and each peer's answer over the peer channel.
#
#   misc/bench/stats.sh [routes] [samples]
#
# Prints markdown; README's figures come from it.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
routes=${1:-1000}
samples=${2:-300}
cd "$root"
cargo build --release -q -p rood
rood=$root/target/release/rood

. "$root/misc/bench/lib.sh"
three_nodes

python3 - "$routes" "$samples" <<'EOF'
import http.client, http.server, json, random, statistics, sys, threading, time
from concurrent.futures import ThreadPoolExecutor

routes, samples = int(sys.argv[1]), int(sys.argv[2])

class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
up = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
threading.Thread(target=up.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{up.server_port}"

def conn(node, port=16299):
    return http.client.HTTPConnection(f"127.0.0.{node}", port, timeout=10)

api = conn(1)
def call(c, method, path, body=None, headers={}):
    c.request(method, path, body, headers)
    rsp = c.getresponse()
    data = rsp.read()
    if rsp.status != 200:
        raise SystemExit(f"{method} {path}: {rsp.status} {data[:200]}")
    return data

names = [f"s{i}.bench:http" for i in range(routes)]
for i in range(routes):
    call(api, "PUT", f"/roo/v1/kv/com.roo.host:s{i}.bench:http", json.dumps({"backends": [
        {"name": "v1", "url": url, "weight": 50}, {"name": "v2", "url": url, "weight": 50}]}))
# Every route through every node, a few times, so every node counts both backends of each.
def traffic(node):
    c = conn(node, 18080)
    for _ in range(4):
        for i in range(routes):
            c.request("GET", "/", headers={"host": f"s{i}.bench"})
            rsp = c.getresponse()
            rsp.read()
            assert rsp.status == 200, rsp.status
threads = [threading.Thread(target=traffic, args=(n,)) for n in (1, 2, 3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
time.sleep(1.5)  # the second the last requests fell in is closed

def stats(c, name):
    return call(c, "GET", f"/roo/v1/stats/{name}?window_s=600")

first = json.loads(stats(api, names[0]))
assert len(first["nodes"]["answered"]) == 3 and not first["nodes"]["missing"], first
assert first["backends"]["v1"]["requests"] + first["backends"]["v2"]["requests"] == 12, first

times = []
for name in random.choices(names, k=samples):
    t = time.perf_counter()
    stats(api, name)
    times.append((time.perf_counter() - t) * 1000)
times.sort()
p99 = times[min(len(times) - 1, int(0.99 * len(times)))]

local = threading.local()
def one(name):
    if not hasattr(local, "c"):
        local.c = conn(1)
    return len(stats(local.c, name))
t = time.perf_counter()
with ThreadPoolExecutor(8) as pool:
    sizes = list(pool.map(one, names))
every = time.perf_counter() - t

peer = [len(call(conn(n), "GET", f"/roo/v1/peer/stats/{names[0]}?window_ms=600000",
                 headers={"x-roo-cluster-secret": "bench"})) for n in (2, 3)]
print(f"| routes | one route's stats, median | p99 | every route's, 8 at a time | answer bytes | peers' bytes a query |")
print(f"|---|---|---|---|---|---|")
print(f"| {routes} | {statistics.median(times):.2f} ms | {p99:.2f} ms | {every:.2f} s ({routes / every:.0f} a second) "
      f"| {statistics.median(sizes):.0f} | {sum(peer)} ({peer[0]} + {peer[1]}) |")
EOF
