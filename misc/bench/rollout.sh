#!/usr/bin/env bash
# How fast a bad canary is taken out, against the bound the plan sets (interval x failure_limit):
# a 3-node cluster on loopback, a stable backend and a canary whose answers are 5xx at the rate
# BAD (default 0.1), clients sending RATE requests a second (default 300) spread over the three
# nodes' proxies. For each row and round: the route back at stable 100 / canary 0, a rollout
# started, and then, from the clients' side, the canary's first bad answer to its last answer
# (weight 0 on every node), and the first bad answer to the API saying `aborted`.
#
#   misc/bench/rollout.sh [rounds]
#
# ROWS (default "1000:2 2000:2 1000:3 5000:2") is interval_ms:failure_limit. Prints markdown;
# README's figures come from it.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
rounds=${1:-3}
cd "$root"
cargo build --release -q -p rood
rood=$root/target/release/rood

. "$root/misc/bench/lib.sh"
three_nodes

python3 - "$rounds" "${ROWS:-1000:2 2000:2 1000:3 5000:2}" "${BAD:-0.1}" "${RATE:-300}" <<'EOF'
import http.client, http.server, json, random, statistics, sys, threading, time

rounds, rows, bad, rate = int(sys.argv[1]), sys.argv[2].split(), float(sys.argv[3]), int(sys.argv[4])
api = http.client.HTTPConnection("127.0.0.1", 16299)

def call(method, path, body=None):
    api.request(method, path, body)
    rsp = api.getresponse()
    answer = json.loads(rsp.read() or b"{}")
    if rsp.status != 200:
        raise SystemExit(f"{method} {path}: {rsp.status} {answer}")
    return answer

def upstream(fail):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            status = 500 if random.random() < fail else 200
            self.send_response(status)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        def log_message(self, *a):
            pass
    s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    return s.server_port

v1, v2 = upstream(0.0), upstream(bad)
route = "/roo/v1/kv/com.roo.host:canary.bench:http"
def reset():
    call("PUT", route, json.dumps({"expose_backend": True, "backends": [
        {"name": "v1", "url": f"http://127.0.0.1:{v1}", "weight": 100},
        {"name": "v2", "url": f"http://127.0.0.1:{v2}", "weight": 0}]}))

# (time, backend, status) of every answer, from clients that each keep one connection to a node.
answers, lock, stop = [], threading.Lock(), threading.Event()
def client(node, per_s):
    conn = http.client.HTTPConnection(f"127.0.0.{node}", 18080, timeout=5)
    gap, due = 1 / per_s, time.monotonic()
    while not stop.is_set():
        due += gap
        try:
            conn.request("GET", "/", headers={"host": "canary.bench"})
            rsp = conn.getresponse()
            rsp.read()
            got = (time.monotonic(), rsp.getheader("x-roo-backend"), rsp.status)
        except Exception:
            conn = http.client.HTTPConnection(f"127.0.0.{node}", 18080, timeout=5)
            got = (time.monotonic(), None, 0)
        with lock:
            answers.append(got)
        time.sleep(max(0, due - time.monotonic()))

reset()
time.sleep(0.5)
threads = [threading.Thread(target=client, args=(n, rate / 6), daemon=True) for n in (1, 2, 3) for _ in range(2)]
for t in threads:
    t.start()

print("| interval ms | failure_limit | bound (interval x limit) | first bad answer -> canary's last answer | -> API says aborted | rounds |")
print("|---|---|---|---|---|---|")
for row in rows:
    interval, limit = map(int, row.split(":"))
    to_last, to_aborted = [], []
    for _ in range(rounds):
        reset()
        time.sleep(1)
        plan = {"canary": "v2", "steps": [10, 25, 50, 100], "interval_ms": interval,
                "failure_limit": limit, "min_requests": 5}
        started = time.monotonic()
        call("PUT", "/roo/v1/rollouts/canary.bench:http", json.dumps(plan))
        while True:
            state = call("GET", "/roo/v1/rollouts/canary.bench:http")["state"]
            if state == "aborted":
                aborted = time.monotonic()
                break
            if state != "progressing" or time.monotonic() - started > 20 * interval * limit / 1000 + 10:
                raise SystemExit(f"the rollout is {state}, not aborted")
            time.sleep(0.01)
        # Answers sent before the abort may still be arriving: let them land.
        time.sleep(1)
        with lock:
            mine = [a for a in answers if a[0] >= started]
        canary = [a for a in mine if a[1] == "v2"]
        first_bad = min(t for t, b, s in canary if s >= 500)
        to_last.append((max(t for t, b, s in canary) - first_bad) * 1000)
        to_aborted.append((aborted - first_bad) * 1000)
    med = lambda v: f"{statistics.median(v):.0f} ms ({min(v):.0f}-{max(v):.0f})"
    print(f"| {interval} | {limit} | {interval * limit} ms | {med(to_last)} | {med(to_aborted)} | {rounds} |")
stop.set()
EOF
