#!/usr/bin/env bash
# Benchmarks hf-mirror side by side, in one run, on this machine:
#   1. a cold 1 GiB LFS download through the node vs directly from the fake upstream (+ its CDN);
#   2. the same file warm, through the node vs nginx (sendfile) serving the node's own blob file;
#   3. warm small-file HEAD and GET requests/s (hey) through the node vs nginx serving the same file;
#   4. the node's peak RSS during 64 concurrent downloads of the warm 1 GiB file.
# Prints a Markdown table for docs/benchmarks.md. Nothing here asserts a time.
#
# Usage: bench/run.sh [SIZE_BYTES]   (default 1 GiB)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
size=${1:-1073741824}
bench_setup hfm-bench nginx=nginx hey=hey curl=curl

echo "generating a ${size}-byte LFS file in the fake Hub..." >&2
python3 tests/fakehub/fake_hub.py --port 0 --cdn-port 0 --big-size "$size" --big-dir "$work/big" >"$work/fake.out" 2>"$work/fake.err" &
pids+=($!)
wait_line "$work/fake.out" fakehub
hub=$(awk '{print $2}' "$work/fake.out")

"$bin" serve --listen 127.0.0.1:0 --data-dir "$work/data" --upstream "$hub" --min-free-disk 0 >"$work/node.out" 2>"$work/node.err" &
node_pid=$!
pids+=($node_pid)
wait_line "$work/node.out" '^node '
node=$(awk '{print $3}' "$work/node.out")

big_path=/bench/big/resolve/main/big.bin
seconds() { # url: seconds for one full download, failing on a short or failed answer
  local out; out=$(curl -s -L -o /dev/null -w '%{http_code} %{size_download} %{time_total}' "$1")
  set -- $out
  if [ "$1" != 200 ] || [ "$2" != "$size" ]; then echo "download failed: $out" >&2; exit 1; fi
  echo "$3"
}
rate() { python3 -c "import sys; print(f'{$size/float(sys.argv[1])/1e6:.0f}')" "$1"; }

direct_cold=$(seconds "$hub$big_path")
node_cold=$(seconds "$node$big_path")

# The fill publishes the blob (fsync, rename) just after the last byte went out.
blob=""
for _ in $(seq 1 300); do
  blob=$(find "$work/data/blobs" -type f -size +1M | head -n 1)
  [ -n "$blob" ] && break
  sleep 0.1
done
[ -n "$blob" ] || { echo "the node stored no blob" >&2; tail -20 "$work/node.err" >&2; exit 1; }
mkdir -p "$work/nginx/www/small" "$work/nginx/logs"
ln "$blob" "$work/nginx/www/big.bin" 2>/dev/null || cp "$blob" "$work/nginx/www/big.bin"
curl -s -o "$work/nginx/www/small/config.json" "$node/org/model/resolve/main/config.json"
nginx_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/nginx/nginx.conf" <<CONF
daemon off;
user root;
worker_processes 2;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  server {
    listen 127.0.0.1:$nginx_port;
    root $work/nginx/www;
  }
}
CONF
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" &
pids+=($!)
sleep 1
nginx_url="http://127.0.0.1:$nginx_port"

best_of_three() { # url
  local best=999999
  for _ in 1 2 3; do
    local t; t=$(seconds "$1")
    best=$(python3 -c "print(min($best, $t))")
  done
  echo "$best"
}
node_warm=$(best_of_three "$node$big_path")
nginx_warm=$(best_of_three "$nginx_url/big.bin")

# hey, not wrk: wrk waits for a body after a HEAD and stalls.
hey_rps() { # method url
  hey -z 10s -c 32 -m "$1" "$2" >"$work/hey.out"
  awk '/Requests\/sec/ {printf "%.0f", $2}' "$work/hey.out"
}
node_get_rps=$(hey_rps GET "$node/org/model/resolve/main/config.json")
node_head_rps=$(hey_rps HEAD "$node/org/model/resolve/main/config.json")
nginx_get_rps=$(hey_rps GET "$nginx_url/small/config.json")
nginx_head_rps=$(hey_rps HEAD "$nginx_url/small/config.json")

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$node_pid/status"; }
rss_before=$(rss_kib)
peak=0
for _ in $(seq 1 64); do curl -s -o /dev/null "$node$big_path" & done
while jobs -r | grep -q curl; do
  now=$(rss_kib); [ "$now" -gt "$peak" ] && peak=$now
  sleep 0.2
done
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$node_pid/status")

ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}')" "$1" "$2"; }
cat <<TABLE
| measurement | hf-mirror | reference | ratio |
|---|---|---|---|
| cold ${size} B download (s, MB/s) | $node_cold s ($(rate "$node_cold") MB/s) | direct from fake upstream+CDN: $direct_cold s ($(rate "$direct_cold") MB/s) | node/direct time = $(ratio "$node_cold" "$direct_cold") |
| warm ${size} B download, best of 3 (MB/s) | $(rate "$node_warm") MB/s | nginx sendfile: $(rate "$nginx_warm") MB/s | node/nginx throughput = $(ratio "$nginx_warm" "$node_warm") |
| warm small file GET, hey -c 32 for 10 s (req/s) | $node_get_rps | nginx: $nginx_get_rps | $(ratio "$node_get_rps" "$nginx_get_rps") |
| warm small file HEAD, hey -c 32 for 10 s (req/s) | $node_head_rps | nginx: $nginx_head_rps | $(ratio "$node_head_rps" "$nginx_head_rps") |
| node RSS during 64 concurrent warm ${size} B downloads | before ${rss_before} KiB, sampled peak ${peak} KiB, VmHWM ${hwm} KiB | | |
TABLE
