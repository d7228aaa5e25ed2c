#!/usr/bin/env bash
# rood next to nginx in front of the same upstream on loopback, in
# the same run, driven by wrk: HTTP/1.1 keep-alive requests/s and p99, HTTPS keep-alive, new TLS
# handshakes/s, and resident memory with 10k idle connections. Each row: three rounds, rood and
# nginx alternating, medians.
#
#   misc/bench/proxy.sh [seconds-per-row]    (needs: apt-get install nginx wrk openssl)
#
# wrk sends SNI from the URL's host, so bench.test is added to /etc/hosts for the run (and taken
# out again). Prints a markdown table; README's figures come from it.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-10}
cd "$root"
cargo build --release -q -p rood
rood=$root/target/release/rood
for t in nginx wrk openssl python3; do command -v $t >/dev/null || { echo "$t not found" >&2; exit 1; }; done
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d); chmod 755 "$work"
pids=()
hosts_added=0
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "$hosts_added" = 1 ] && sed -i '/ bench.test # roo-bench$/d' /etc/hosts
  rm -rf "$work"
}
trap cleanup EXIT
if ! grep -q ' bench.test' /etc/hosts; then echo "127.0.0.1 bench.test # roo-bench" >> /etc/hosts; hosts_added=1; fi

# A certificate for bench.test.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench.test \
  -addext subjectAltName=DNS:bench.test -addext basicConstraints=CA:FALSE \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

# The upstream: nginx answering "ok" on :18080, one worker.
cat > "$work/upstream.conf" <<CONF
worker_processes 1; pid $work/upstream.pid; error_log $work/upstream.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:18080; location / { return 200 "ok\n"; } } }
CONF
nginx -c "$work/upstream.conf" -g 'daemon off;' & pids+=($!)

# nginx as the proxy: two workers (rood runs two tokio workers), keep-alive to the upstream.
cat > "$work/proxy.conf" <<CONF
worker_processes 2; pid $work/proxy.pid; error_log $work/proxy.err;
worker_rlimit_nofile 20000;
events { worker_connections 16384; }
http { access_log off; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:18080; keepalive 64; }
  server { listen 127.0.0.1:18081; listen 127.0.0.1:18443 ssl http2; server_name bench.test;
    ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } } }
CONF
nginx -c "$work/proxy.conf" -g 'daemon off;' & pids+=($!)

# rood: one node, routes and certificate put through its API.
ROO_LOG=warn "$rood" --data-dir "$work/roo" --api-addr 127.0.0.1:16300 \
  --http-addr 127.0.0.1:18082 --https-addr 127.0.0.1:18444 2>"$work/rood.log" & pids+=($!)
rood_pid=$!
for _ in $(seq 1 100); do curl -fsS -o /dev/null 127.0.0.1:16300/roo/ping 2>/dev/null && break; sleep 0.1; done
curl -fsS -X PUT 127.0.0.1:16300/roo/v1/kv/com.roo.host:bench.test:http -d http://127.0.0.1:18080 >/dev/null
curl -fsS -X PUT 127.0.0.1:16300/roo/v1/kv/com.roo.host:bench.test:https -d http://127.0.0.1:18080 >/dev/null
python3 -c 'import json,sys; print(json.dumps({"cert_pem": open(sys.argv[1]).read(), "key_pem": open(sys.argv[2]).read(), "source": "manual"}))' \
  "$work/cert.pem" "$work/key.pem" | curl -fsS -X PUT 127.0.0.1:16300/roo/v1/kv/com.roo.cert:bench.test --data-binary @- >/dev/null
for _ in $(seq 1 100); do curl -fsS -o /dev/null -H 'Host: bench.test' 127.0.0.1:18082/ 2>/dev/null && break; sleep 0.1; done

# wrk: prints "requests/s p99_ms", or fails on errors.
run_wrk() { # url, extra args...
  local url=$1; shift
  local out; out=$(wrk -t2 -c64 -d"${secs}s" --latency -H 'Host: bench.test' "$@" "$url")
  if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then echo "WARNING: errors against $url: $(grep -E 'Non-2xx|Socket errors' <<<"$out")" >&2; fi
  local rps p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' <<<"$out")
  echo "$rps $p99"
}
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }

echo "| row | rood req/s | rood p99 ms | nginx req/s | nginx p99 ms | rood/nginx req/s | rood/nginx p99 |"
echo "|---|---|---|---|---|---|---|"
median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
row() { # name, rood url, nginx url, extra wrk args...
  # Three rounds, rood and nginx alternating, medians reported: this VM is noisy.
  local name=$1 ru=$2 nu=$3; shift 3
  local rr=() rp=() nr=() np=() a b
  for _ in 1 2 3; do
    read -r a b < <(run_wrk "$ru" "$@"); rr+=("$a"); rp+=("$b")
    read -r a b < <(run_wrk "$nu" "$@"); nr+=("$a"); np+=("$b")
  done
  local r_rps r_p99 n_rps n_p99
  r_rps=$(median "${rr[@]}"); r_p99=$(median "${rp[@]}"); n_rps=$(median "${nr[@]}"); n_p99=$(median "${np[@]}")
  echo "| $name | ${r_rps%.*} | $r_p99 | ${n_rps%.*} | $n_p99 | $(ratio "$r_rps" "$n_rps") | $(ratio "$r_p99" "$n_p99") |"
}
row "HTTP/1.1 keep-alive" http://127.0.0.1:18082/ http://127.0.0.1:18081/
row "HTTPS keep-alive" https://bench.test:18444/ https://bench.test:18443/
row "new TLS handshake per request" https://bench.test:18444/ https://bench.test:18443/ -H 'Connection: close'

# Memory with 10k idle keep-alive connections.
nginx_pids=$(pgrep -f "nginx: worker process" | while read -r p; do
  grep -q "proxy.conf" "/proc/$(ps -o ppid= -p "$p" | tr -d ' ')/cmdline" 2>/dev/null && echo "$p"; done | paste -sd,)
nginx_pids="$nginx_pids,$(cat "$work/proxy.pid")"
read -r rb ra rn < <(python3 "$root/misc/bench/idle_conns.py" 127.0.0.1 18082 bench.test 10000 "$rood_pid")
read -r nb na nn < <(python3 "$root/misc/bench/idle_conns.py" 127.0.0.1 18081 bench.test 10000 "$nginx_pids")
r_per=$(python3 -c "print(f'{($ra-$rb)*1024/$rn:.0f}')"); n_per=$(python3 -c "print(f'{($na-$nb)*1024/$nn:.0f}')")
echo "| RSS per idle connection (10k), bytes | $r_per | | $n_per | | $(ratio "$r_per" "$n_per") | |"
echo
echo "RSS: rood $((rb/1024)) MiB idle, $((ra/1024)) MiB with $rn connections; nginx (master + workers) $((nb/1024)) MiB, $((na/1024)) MiB with $nn."
