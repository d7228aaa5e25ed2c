#!/usr/bin/env bash
# rood next to nginx, HAProxy and Caddy in front of the same upstream on loopback, in the same
# run: HTTP/1.1 keep-alive requests/s and p99 and HTTPS keep-alive (wrk), a new TLS connection
# per request with a full handshake and with a resumed one (tlsbench, misc/bench/src: each
# client offers the ticket its last connection got, or none), and resident memory with 9000 idle
# connections. wrk is not used for handshakes: it resumes its sessions (an SSL_clear keeps the
# session), so its `Connection: close` runs are resumed handshakes. Each row: seven rounds (ROUNDS),
# the proxies taking turns, medians; rood/nginx: the median of the rounds' ratios, and their
# range. HAProxy and Caddy are extra columns, left out when not installed.
#
#   misc/bench/proxy.sh [seconds-per-round]
#   ROWS="http https handshake resumed idle" (the default: all five) picks rows.
#   (needs: apt-get install nginx wrk openssl; optional: haproxy caddy)
#
# wrk sends SNI from the URL's host, so bench.test is added to /etc/hosts for the run (and taken
# out again). Prints a markdown table; README's figures come from it.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-10}
rounds=${ROUNDS:-7}
rows=${ROWS:-http https handshake resumed idle}
cd "$root"
cargo build --profile dist -q -p rood
cargo build --release -q -p roo-bench --bin tlsbench
rood=$root/target/dist/rood
tlsbench=$root/target/release/tlsbench
for t in nginx wrk openssl python3; do command -v $t >/dev/null || { echo "$t not found" >&2; exit 1; }; done
have_haproxy=0; command -v haproxy >/dev/null && have_haproxy=1
have_caddy=0; command -v caddy >/dev/null && have_caddy=1
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

# Each proxy's two workers are kept on a CPU each (rood --proxy-cpu-affinity auto, nginx
# worker_cpu_affinity auto, HAProxy cpu-map; Caddy's Go runtime has no such setting): left to the
# scheduler, two workers at times shared a CPU while wrk and the upstream had the other, and the
# p99 of one run of rood or nginx came out anywhere from 2.5 to 6 ms; pinned, 1.6 to 2.4 ms.

# nginx as the proxy: two workers (rood runs two proxy workers), keep-alive to the upstream, TLS
# 1.2 and 1.3 like rood (Debian's nginx 1.22 offers only up to 1.2 unless told), the forwarding
# headers rood sets (Host, X-Forwarded-For, -Proto, -Host, X-Real-IP): each proxy sends the
# upstream the same request.
cat > "$work/proxy.conf" <<CONF
worker_processes 2; worker_cpu_affinity auto; pid $work/proxy.pid; error_log $work/proxy.err;
worker_rlimit_nofile 20000;
events { worker_connections 16384; }
http { access_log off; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:18080; keepalive 64; }
  server { listen 127.0.0.1:18081; listen 127.0.0.1:18443 ssl http2; server_name bench.test;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;
    ssl_session_tickets on;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme; proxy_set_header X-Forwarded-Host \$host;
      proxy_set_header X-Real-IP \$remote_addr; } } }
CONF
nginx -c "$work/proxy.conf" -g 'daemon off;' & pids+=($!)

# HAProxy: two threads, connections to the upstream reused across requests, the same forwarding
# headers.
if [ "$have_haproxy" = 1 ]; then
  cat "$work/cert.pem" "$work/key.pem" > "$work/haproxy.pem"
  cat > "$work/haproxy.cfg" <<CONF
global
  nbthread 2
  cpu-map auto:1/1-2 0-1
  # Two descriptors a connection, under this machine's 20000 limit (the idle row opens 9000).
  maxconn 9500
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  option forwardfor
  http-reuse always
frontend plain
  bind 127.0.0.1:18083
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header X-Real-IP %[src]
  default_backend app
frontend tls
  bind 127.0.0.1:18445 ssl crt $work/haproxy.pem alpn h2,http/1.1
  http-request set-header X-Forwarded-Proto https
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header X-Real-IP %[src]
  default_backend app
backend app
  server up 127.0.0.1:18080
CONF
  haproxy -f "$work/haproxy.cfg" -db & pids+=($!)
  haproxy_pid=$!
fi

# Caddy: two Go threads (GOMAXPROCS), keep-alive to the upstream (its default), no access log,
# the same forwarding headers (X-Forwarded-* are its defaults).
if [ "$have_caddy" = 1 ]; then
  cat > "$work/Caddyfile" <<CONF
{
  admin off
  auto_https off
  storage file_system $work/caddy
}
http://bench.test:18084 {
  bind 127.0.0.1
  reverse_proxy 127.0.0.1:18080 {
    header_up X-Real-IP {remote_host}
  }
}
https://bench.test:18446 {
  bind 127.0.0.1
  tls $work/cert.pem $work/key.pem
  reverse_proxy 127.0.0.1:18080 {
    header_up X-Real-IP {remote_host}
  }
}
CONF
  HOME=$work XDG_DATA_HOME=$work XDG_CONFIG_HOME=$work GOMAXPROCS=2 \
    caddy run --config "$work/Caddyfile" --adapter caddyfile 2>"$work/caddy.log" & pids+=($!)
  caddy_pid=$!
fi

# rood: one node, routes and certificate put through its API.
# ACME and the swarm watcher off: the certificate is a manual one, and nothing leaves the machine.
ROO_LOG=warn "$rood" --data-dir "$work/roo" --api-addr 127.0.0.1:16300 --acme false --swarm off \
  --proxy-cpu-affinity auto --http-addr 127.0.0.1:18082 --https-addr 127.0.0.1:18444 2>"$work/rood.log" & pids+=($!)
rood_pid=$!
for _ in $(seq 1 100); do curl -fsS -o /dev/null 127.0.0.1:16300/roo/ping 2>/dev/null && break; sleep 0.1; done
curl -fsS -X PUT 127.0.0.1:16300/roo/v1/kv/com.roo.host:bench.test:http -d http://127.0.0.1:18080 >/dev/null
curl -fsS -X PUT 127.0.0.1:16300/roo/v1/kv/com.roo.host:bench.test:https -d http://127.0.0.1:18080 >/dev/null
python3 -c 'import json,sys; print(json.dumps({"cert_pem": open(sys.argv[1]).read(), "key_pem": open(sys.argv[2]).read(), "source": "manual"}))' \
  "$work/cert.pem" "$work/key.pem" | curl -fsS -X PUT 127.0.0.1:16300/roo/v1/kv/com.roo.cert:bench.test --data-binary @- >/dev/null
for _ in $(seq 1 100); do curl -fsS -o /dev/null -H 'Host: bench.test' 127.0.0.1:18082/ 2>/dev/null && break; sleep 0.1; done

# wrk: prints "requests/s p99_ms requests", or fails on errors.
run_wrk() { # url, extra args...
  local url=$1; shift
  local out; out=$(wrk -t2 -c64 -d"${secs}s" --latency -H 'Host: bench.test' "$@" "$url")
  if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then echo "WARNING: errors against $url: $(grep -E 'Non-2xx|Socket errors' <<<"$out")" >&2; fi
  local rps p99 n
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' <<<"$out")
  echo "$rps $p99 $n"
}
# tlsbench: the same three figures, a new connection a request (--resume: offering a ticket); a
# run with --resume where a handshake was not resumed says so.
run_tls() { # url, extra args...
  local url=$1; shift
  local addr=${url#https://}; addr=127.0.0.1:${addr#*:}; addr=${addr%/}
  local out; out=$("$tlsbench" --addr "$addr" --host bench.test --clients 64 --seconds "$secs" "$@")
  python3 - "$out" "$*" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
if r["errors"]:
    print(f"WARNING: {r['errors']} errors: {r['last_error']}", file=sys.stderr)
if "--resume" in sys.argv[2] and r["resumed"] < 0.99 * r["requests"]:
    print(f"WARNING: only {r['resumed']} of {r['requests']} handshakes resumed", file=sys.stderr)
print(f"{r['requests_per_sec']:.0f} {r['p99_ms']:.2f} {r['requests']}")
PY
}
# CPU time (user and system clock ticks) the processes in a comma-separated pid list have used.
ticks() {
  local p user=0 system=0 u s
  for p in ${1//,/ }; do read -r u s < <(awk '{print $14, $15}' "/proc/$p/stat"); user=$((user + u)); system=$((system + s)); done
  echo "$user $system"
}
tick_us=$((1000000 / $(getconf CLK_TCK)))
cpu_notes=""
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }

# The proxies: name, plain port, TLS port, pids whose memory and CPU time count.
peers=("rood 18082 18444 $rood_pid")
# nginx's memory: its master's and its two workers' (waited for: they start after the pid file).
nginx_master="" nginx_pids=""
for _ in $(seq 1 100); do
  [ -s "$work/proxy.pid" ] && nginx_master=$(cat "$work/proxy.pid")
  [ -n "$nginx_master" ] && nginx_pids=$(pgrep -d, -P "$nginx_master" || true)
  [ "$(tr ',' '\n' <<<"$nginx_pids" | grep -c .)" -ge 2 ] && break
  sleep 0.1
done
peers+=("nginx 18081 18443 $nginx_pids,$nginx_master")
[ "$have_haproxy" = 1 ] && peers+=("haproxy 18083 18445 $haproxy_pid")
[ "$have_caddy" = 1 ] && peers+=("caddy 18084 18446 $caddy_pid")
for peer in "${peers[@]}"; do
  read -r name port _ _ <<<"$peer"
  for _ in $(seq 1 100); do curl -fsS -o /dev/null -H 'Host: bench.test' "127.0.0.1:$port/" 2>/dev/null && break; sleep 0.1; done
done

median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
# "median (lowest-highest)" of ratios.
spread() { python3 -c 'import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print(f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})")' "$@"; }
header="| row |"; rule="|---|"
for peer in "${peers[@]}"; do read -r name _ <<<"$peer"; header+=" $name req/s | $name p99 ms |"; rule+="---|---|"; done
echo "$header rood/nginx req/s | rood/nginx p99 |"
echo "$rule---|---|"
row() { # name, scheme, load generator (run_wrk, run_tls), its extra args...
  # Rounds with the proxies taking turns, medians reported: this VM is noisy. rood and nginx run
  # one after the other in each round, in turn first, and the ratio column is the median of the
  # rounds' own ratios (its range after it): the two runs of a round are seconds apart, so what
  # drifts over minutes on this VM moves both.
  local title=$1 scheme=$2 load=$3; shift 3
  declare -A rps p99 user system
  local -a ratios=() p99_ratios=() order
  local round peer name port tport ps url a b n u0 s0 u1 s1
  for round in $(seq 1 "$rounds"); do
    order=("${peers[@]}")
    [ $((round % 2)) = 0 ] && order=("${peers[1]}" "${peers[0]}" "${peers[@]:2}")
    declare -A this_rps=() this_p99=()
    for peer in "${order[@]}"; do
      read -r name port tport ps <<<"$peer"
      if [ "$scheme" = https ]; then url=https://bench.test:$tport/; else url=http://127.0.0.1:$port/; fi
      read -r u0 s0 < <(ticks "$ps")
      read -r a b n < <("$load" "$url" "$@")
      read -r u1 s1 < <(ticks "$ps")
      rps[$name]+=" $a"; p99[$name]+=" $b"
      user[$name]+=" $(( (u1 - u0) * tick_us * 100 / n ))"; system[$name]+=" $(( (s1 - s0) * tick_us * 100 / n ))"
      this_rps[$name]=$a; this_p99[$name]=$b
    done
    ratios+=("$(ratio "${this_rps[rood]}" "${this_rps[nginx]}")")
    p99_ratios+=("$(ratio "${this_p99[rood]}" "${this_p99[nginx]}")")
  done
  local line="| $title |" cpu="$title:"
  for peer in "${peers[@]}"; do
    read -r name _ <<<"$peer"
    a=$(median ${rps[$name]}); b=$(median ${p99[$name]})
    line+=" ${a%.*} | $b |"
    # Hundredths of a µs, medians.
    cpu+=" $name $(python3 -c "print(f'{$(median ${user[$name]})/100:.2f} + {$(median ${system[$name]})/100:.2f}')");"
  done
  cpu_notes+="$cpu"$'\n'
  echo "$line $(spread "${ratios[@]}") | $(spread "${p99_ratios[@]}") |"
}
[[ " $rows " == *" http "* ]] && row "HTTP/1.1 keep-alive" http run_wrk
[[ " $rows " == *" https "* ]] && row "HTTPS keep-alive" https run_wrk
[[ " $rows " == *" handshake "* ]] && row "new TLS handshake per request" https run_tls
[[ " $rows " == *" resumed "* ]] && row "resumed TLS handshake per request" https run_tls --resume

# Memory with 9000 idle keep-alive connections (HAProxy needs two descriptors for each under a
# 20000 descriptor limit), the memory before and with them each read after 5 s without traffic:
# what a proxy holds for them, not what it has yet to give back from earlier rows or from opening
# them all at once.
if [[ " $rows " == *" idle "* ]]; then
  line="| RSS per idle connection (9000), bytes |"; summary="RSS before and with the connections:"
  declare -A per
  for peer in "${peers[@]}"; do
    read -r name port _ ps <<<"$peer"
    read -r before after n < <(python3 "$root/misc/bench/idle_conns.py" 127.0.0.1 "$port" bench.test 9000 "$ps")
    per[$name]=$(python3 -c "print(f'{($after-$before)*1024/$n:.0f}')")
    line+=" ${per[$name]} | |"
    summary+=" $name $((before/1024)) -> $((after/1024)) MiB ($n);"
  done
  echo "$line $(ratio "${per[rood]}" "${per[nginx]}") | |"
  echo
  echo "$summary"
fi

# What each request cost the proxy's processes (from /proc/<pid>/stat over the same runs).
echo
echo "CPU per request, user + system µs (medians):"
printf '%s' "$cpu_notes"
