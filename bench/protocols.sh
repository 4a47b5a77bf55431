#!/usr/bin/env bash
# Small-file requests/s over HTTP/1.1, HTTP/2 and HTTP/3, with and without TLS, side by side in one
# run on this machine, through one release node (warm: every answer is a HIT from disk), with nginx
# serving the same bytes over HTTP/1.1 as the reference. h2load (nghttp2-client) drives h1 and h2;
# `hf-mirror h3-get --repeat` drives h3 (Debian has no h3 load tool). Also the cost of a TLS
# handshake: requests/s when every request opens a new connection.
# The server under test (the node, then nginx) is pinned to CPU 0 and every client to CPU 1, as in
# bench/run.sh: unpinned, the client and the server's threads fight over both cores and what is
# measured is the scheduler (HTTP/2's one connection task and its stream tasks wake each other across
# cores). Each row is run twice and the better kept; the ratio is to the node's HTTP/1.1 cleartext row.
# Next to requests/s, the server's CPU time per request (utime + stime from /proc, the lesser of the
# two runs): on this VM requests/s moves by a quarter between runs, CPU per request much less, so the
# CPU share (the HTTP/1.1 cleartext row's CPU per request over the row's) is the steadier comparison.
# Prints a Markdown table for docs/benchmarks.md. Nothing here asserts a time.
#
# Usage: bench/protocols.sh [REQUESTS] [CONCURRENCY]   (default 100000 16)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
requests=${1:-100000}
concurrency=${2:-16}
bench_setup hfm-protocols nginx=nginx h2load=nghttp2-client openssl=openssl curl=curl taskset=util-linux
# Servers are started as `taskset -c 0 CMD &` (taskset execs CMD, so `$!` is the server's PID and the
# cleanup stops it); clients run through on_client.
on_client() { taskset -c 1 "$@"; }

# A test CA and a server certificate for 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$work/ca.key" -out "$work/ca.pem" \
  -days 2 -subj "/CN=bench CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$work/node.key" -out "$work/node.csr" \
  -subj "/CN=bench" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$work/node.ext"
openssl x509 -req -in "$work/node.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -out "$work/node.pem" \
  -days 2 -extfile "$work/node.ext" 2>/dev/null

python3 tests/fakehub/fake_hub.py --port 0 --cdn-port 0 > "$work/hub.out" 2> "$work/hub.err" &
pids+=($!)
wait_line "$work/hub.out" '^fakehub '
hub=$(awk '/^fakehub /{print $2}' "$work/hub.out")

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
taskset -c 0 "$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/node" --upstream "$hub" \
  --tls-cert "$work/node.pem" --tls-key "$work/node.key" > "$work/node.out" 2> "$work/node.err" &
node_pid=$!
pids+=($node_pid)
wait_line "$work/node.out" '^node '
path=/org/model/resolve/main/config.json
curl -sSf -o "$work/config.json" "http://127.0.0.1:$port$path"
size=$(stat -c %s "$work/config.json")

# nginx serving the same bytes (HTTP/1.1 cleartext), the reference.
nginx_port=$(free_port)
start_nginx 0 "  server { listen 127.0.0.1:$nginx_port; root $work/nginx/www; }"
mkdir -p "$work/nginx/www$(dirname "$path")"
cp "$work/config.json" "$work/nginx/www$path"

rate() { # h2load output → requests/s
  awk '/^finished in/ { for (i = 1; i <= NF; i++) if ($(i+1) == "req/s,") { print $i; exit } }'
}
failed() { # h2load output → failed requests
  awk '/^requests:/ { for (i = 1; i <= NF; i++) if ($(i+1) == "failed,") { print $i; exit } }'
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_per_second=$(getconf CLK_TCK)
best=0 least_cpu=0
reference= reference_cpu=
row() { # label, requests/s, CPU µs per request, failed: a row with the ratios to the node's HTTP/1.1 cleartext row
  local ratio= share=
  [ -n "$reference" ] && ratio=$(python3 -c "print(f'{$2 / $reference:.2f}')")
  [ -n "$reference_cpu" ] && share=$(python3 -c "print(f'{$reference_cpu / $3:.2f}')")
  printf '| %s | %s | %s | %s | %s | %s |\n' "$1" "$2" "$3" "$ratio" "$share" "$4"
}
measured() { # server pid, command…: runs the client, prints its output, and then the server's CPU µs per request
  local server=$1 before after
  shift
  before=$(cpu_ticks "$server")
  "$@" 2>&1
  after=$(cpu_ticks "$server")
  echo "cpu_us $(python3 -c "print(f'{($after - $before) * 1e6 / $ticks_per_second / $requests:.1f}')")"
}
run_h2load() { # label, server pid, args…: the better of two runs
  local label=$1 server=$2
  shift 2
  local out rate_now cpu_now failed_sum=0
  best=0 least_cpu=1e9
  for _ in 1 2; do
    out=$(measured "$server" on_client h2load "$@")
    rate_now=$(echo "$out" | rate)
    cpu_now=$(echo "$out" | awk '/^cpu_us/ {print $2}')
    failed_sum=$((failed_sum + $(echo "$out" | failed)))
    best=$(python3 -c "print(max($best, float('${rate_now:-0}')))")
    least_cpu=$(python3 -c "print(min($least_cpu, float('$cpu_now')))")
  done
  row "$label" "$best" "$least_cpu" "$failed_sum"
}

base="127.0.0.1:$port$path"
echo "Small file: $size bytes, $requests requests, $concurrency at a time, the better of two runs; every answer a HIT from the node's disk."
echo "Server pinned to CPU 0, clients to CPU 1."
echo
echo "| protocol | requests/s | server CPU µs per request | requests/s ÷ hf-mirror HTTP/1.1 cleartext | CPU share (its CPU per request ÷ this row's) | failed |"
echo "|---|---|---|---|---|---|"
run_h2load "nginx, HTTP/1.1 cleartext ($concurrency connections, one worker)" "$nginx_worker" --h1 -n "$requests" -c "$concurrency" "http://127.0.0.1:$nginx_port$path"
run_h2load "hf-mirror, HTTP/1.1 cleartext ($concurrency connections)" "$node_pid" --h1 -n "$requests" -c "$concurrency" "http://$base"
reference=$best reference_cpu=$least_cpu
run_h2load "hf-mirror, HTTP/2 cleartext h2c (1 connection, $concurrency streams)" "$node_pid" -n "$requests" -c 1 -m "$concurrency" "http://$base"
run_h2load "hf-mirror, HTTP/1.1 + TLS ($concurrency connections)" "$node_pid" --h1 -n "$requests" -c "$concurrency" "https://$base"
run_h2load "hf-mirror, HTTP/2 + TLS (1 connection, $concurrency streams)" "$node_pid" -n "$requests" -c 1 -m "$concurrency" "https://$base"
run_h2load "hf-mirror, HTTP/2 + TLS ($concurrency connections, 1 stream each)" "$node_pid" -n "$requests" -c "$concurrency" -m 1 "https://$base"
h3=$(measured "$node_pid" on_client "$bin" h3-get "https://$base" --cacert "$work/ca.pem" --repeat "$requests" --concurrency "$concurrency")
row "hf-mirror, HTTP/3 (1 connection, $concurrency streams)" \
  "$(echo "$h3" | awk '/^requests/' | sed -E 's/.* ([0-9.]+) req\/s.*/\1/')" "$(echo "$h3" | awk '/^cpu_us/ {print $2}')" \
  "$(echo "$h3" | awk '/^requests/' | sed -E 's/.*failed ([0-9]+).*/\1/')"
# The handshake's cost: a new connection for every request, in waves of 200 (a node keeps at most
# 256 connections per client network open; one h2load run with -n = -c of thousands would be refused
# by that bound, not measure the handshake).
fresh_waves() { # label, url: requests/s over 10 waves of 200 one-request connections, failures summed
  local label=$1 url=$2 total=0 failed=0 seconds=0 out before after
  before=$(cpu_ticks "$node_pid")
  for _ in $(seq 1 10); do
    out=$(on_client h2load --h1 -n 200 -c 200 "$url" 2>&1)
    failed=$((failed + $(echo "$out" | failed)))
    seconds=$(python3 -c "print($seconds + 200 / max(float('$(echo "$out" | rate)' or 0), 1e-9))")
    total=$((total + 200))
  done
  after=$(cpu_ticks "$node_pid")
  row "$label" "$(python3 -c "print(f'{$total / $seconds:.2f}')")" \
    "$(python3 -c "print(f'{($after - $before) * 1e6 / $ticks_per_second / $total:.1f}')")" "$failed"
}
fresh_waves "hf-mirror, HTTP/1.1 cleartext, new connection per request" "http://$base"
fresh_waves "hf-mirror, HTTP/1.1 + TLS, new connection per request" "https://$base"
