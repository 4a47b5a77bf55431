#!/usr/bin/env bash
# Benchmarks hf-mirror side by side, in one run, on this machine, with the server under test pinned to
# CPU 0 and every client (curl, hey) pinned to CPU 1:
#   1. a cold LFS download (time to the last byte and to the first) through the node, through nginx as a caching reverse proxy (proxy_cache with
#      slice 16m and cache lock, redirects to the CDN followed and cached: the recipe an operator would
#      copy), and straight from the fake upstream (its Hub plus CDN redirect);
#   2. the same file warm: the node against nginx serving the node's own blob file with sendfile and
#      against the warm nginx cache;
#   3. warm small-file GET requests/s (h2load --h1 -c 64), GET and HEAD (hey -c 64, 10 s, as before):
#      node, nginx static, nginx cache;
#   4. 32 concurrent warm downloads of the big file: server CPU seconds per GiB sent and peak RSS, for
#      the node and for nginx static (one worker).
# Prints a Markdown table for docs/benchmarks.md. Nothing here asserts a time.
#
# Usage: bench/run.sh [SIZE_BYTES]   (default 1 GiB)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
size=${1:-1073741824}
bench_setup hfm-bench nginx=nginx hey=hey h2load=nghttp2-client curl=curl taskset=util-linux
server_cpu=0
client_cpu=1
on_client() { taskset -c "$client_cpu" "$@"; }

echo "generating a ${size}-byte LFS file in the fake Hub..." >&2
# The upstream shares the client's CPU: the server's core is the server's alone.
taskset -c "$client_cpu" python3 tests/fakehub/fake_hub.py --port 0 --cdn-port 0 --big-size "$size" --big-dir "$work/big" \
  >"$work/fake.out" 2>"$work/fake.err" &
pids+=($!)
wait_line "$work/fake.out" fakehub
hub=$(awk '{print $2}' "$work/fake.out")

taskset -c "$server_cpu" "$bin" serve --listen 127.0.0.1:0 --data-dir "$work/data" --upstream "$hub" --min-free-disk 0 \
  >"$work/node.out" 2>"$work/node.err" &
node_pid=$!
pids+=($node_pid)
wait_line "$work/node.out" '^node '
node=$(awk '/^node /{print $3}' "$work/node.out")

# nginx: a static server and a caching proxy of the same upstream, one worker on the server's CPU.
static_port=$(free_port)
cache_port=$(free_port)
start_nginx "$server_cpu" "$(cat <<CONF
  server {
    listen 127.0.0.1:$static_port;
    root $work/nginx/www;
  }
  proxy_cache_path $work/nginx/cache levels=1:2 keys_zone=hub:64m max_size=100g inactive=7d use_temp_path=off;
  server {
    listen 127.0.0.1:$cache_port;
    proxy_http_version 1.1;
    slice 16m;
    proxy_cache hub;
    proxy_cache_key \$uri\$slice_range;
    proxy_set_header Range \$slice_range;
    proxy_cache_valid 200 206 7d;
    proxy_cache_lock on;
    proxy_cache_lock_timeout 600s;
    proxy_read_timeout 600s;
    location / {
      proxy_pass $hub;
      proxy_intercept_errors on;
      error_page 301 302 307 = @cdn;
    }
    location @cdn {
      set \$cdn_url \$upstream_http_location;
      proxy_pass \$cdn_url;
    }
  }
CONF
)"
mkdir -p "$work/nginx/www/small"
static="http://127.0.0.1:$static_port"
cache="http://127.0.0.1:$cache_port"

big_path=/bench/big/resolve/main/big.bin
small_path=/org/model/resolve/main/config.json
timed() { # url: "seconds to the last byte, seconds to the first" for one full download, failing on a short or failed answer
  local out; out=$(on_client curl -s -L -o /dev/null -w '%{http_code} %{size_download} %{time_total} %{time_starttransfer}' "$1")
  set -- $out
  if [ "$1" != 200 ] || [ "$2" != "$size" ]; then echo "download of $1 failed: $out" >&2; exit 1; fi
  echo "$3 $4"
}
seconds() { timed "$1" | cut -d' ' -f1; }
rate() { python3 -c "import sys; print(f'{$size/float(sys.argv[1])/1e6:.0f}')" "$1"; }

read -r direct_cold direct_first <<<"$(timed "$hub$big_path")"
read -r node_cold node_first <<<"$(timed "$node$big_path")"
read -r cache_cold cache_first <<<"$(timed "$cache$big_path")"
ms() { python3 -c "print(f'{$1*1000:.1f}')"; }

# The fill publishes the blob (fsync, rename) just after the last byte went out.
blob=""
for _ in $(seq 1 300); do
  blob=$(find "$work/data/blobs" -type f -size +1M | head -n 1)
  [ -n "$blob" ] && break
  sleep 0.1
done
[ -n "$blob" ] || { echo "the node stored no blob" >&2; tail -20 "$work/node.err" >&2; exit 1; }
ln "$blob" "$work/nginx/www/big.bin" 2>/dev/null || cp "$blob" "$work/nginx/www/big.bin"
curl -s -o "$work/nginx/www/small/config.json" "$node$small_path"
curl -s -o /dev/null "$node$small_path"
curl -s -o /dev/null "$cache$small_path"

best_of_three() { # url
  local best=999999
  for _ in 1 2 3; do
    local t; t=$(seconds "$1")
    best=$(python3 -c "print(min($best, $t))")
  done
  echo "$best"
}
node_warm=$(best_of_three "$node$big_path")
static_warm=$(best_of_three "$static/big.bin")
cache_warm=$(best_of_three "$cache$big_path")

# hey, not wrk: wrk waits for a body after a HEAD and stalls.
hey_rps() { # method url
  on_client hey -z 10s -c 64 -m "$1" "$2" >"$work/hey.out"
  awk '/Requests\/sec/ {printf "%.0f", $2}' "$work/hey.out"
}
# h2load as well: hey tops out at about 45k requests/s on one core, below what nginx serves, so its
# rows compare hey more than the servers; h2load (nghttp2, C) does not.
h2load_rps() { # url: GET only (h2load's HTTP/1.1 client cannot read an answer to HEAD)
  local out
  out=$(on_client h2load --h1 -n 300000 -c 64 "$1" 2>&1)
  if ! grep -q ' 0 failed, 0 errored' <<<"$out"; then echo "h2load $1 failed: $(grep -E 'requests:|status codes:' <<<"$out")" >&2; exit 1; fi
  awk '/^finished in/ {gsub(",", "", $4); printf "%.0f", $4}' <<<"$out"
}
node_get_h2load=$(h2load_rps "$node$small_path")
static_get_h2load=$(h2load_rps "$static/small/config.json")
cache_get_h2load=$(h2load_rps "$cache$small_path")
node_get=$(hey_rps GET "$node$small_path")
node_head=$(hey_rps HEAD "$node$small_path")
static_get=$(hey_rps GET "$static/small/config.json")
static_head=$(hey_rps HEAD "$static/small/config.json")
cache_get=$(hey_rps GET "$cache$small_path")
cache_head=$(hey_rps HEAD "$cache$small_path")

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# 32 concurrent warm downloads: (server CPU seconds per GiB sent, sampled peak RSS in KiB, RSS before).
concurrent() { # pid url
  local pid=$1 url=$2 before peak now
  before=$(cpu_ticks "$pid"); local rss_before; rss_before=$(rss_kib "$pid"); peak=$rss_before
  local jobs=()
  for _ in $(seq 1 32); do on_client curl -s -o /dev/null "$url" & jobs+=($!); done
  while kill -0 "${jobs[@]}" 2>/dev/null; do
    now=$(rss_kib "$pid"); [ "$now" -gt "$peak" ] && peak=$now
    sleep 0.2
  done
  wait "${jobs[@]}" || true
  local ticks=$(( $(cpu_ticks "$pid") - before ))
  python3 -c "import os,sys; t=$ticks/os.sysconf('SC_CLK_TCK'); print(f'{t/(32*$size/2**30):.3f} {$peak} {$rss_before}')"
}
read -r node_cpu node_peak node_rss0 <<<"$(concurrent "$node_pid" "$node$big_path")"
read -r static_cpu static_peak static_rss0 <<<"$(concurrent "$nginx_worker" "$static/big.bin")"

ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}')" "$1" "$2"; }
mib() { python3 -c "print(f'{$1/1024:.0f}')"; }
cat <<TABLE
| measurement | hf-mirror | nginx static (sendfile) | nginx proxy_cache (slice 16m, lock) | direct from upstream | hf-mirror ratio |
|---|---|---|---|---|---|
| cold ${size} B download, s | $node_cold | — | $cache_cold | $direct_cold | node/direct = $(ratio "$node_cold" "$direct_cold"), cache/direct = $(ratio "$cache_cold" "$direct_cold") |
| cold ${size} B download, time to the first byte of the headers (curl time_starttransfer; bench/first_byte.sh measures the body's), ms | $(ms "$node_first") | — | $(ms "$cache_first") | $(ms "$direct_first") | node/direct = $(ratio "$node_first" "$direct_first") |
| warm ${size} B download, best of 3, MB/s | $(rate "$node_warm") | $(rate "$static_warm") | $(rate "$cache_warm") | — | node/static = $(ratio "$static_warm" "$node_warm") |
| warm small GET, req/s (h2load --h1 -c 64, 300k requests) | $node_get_h2load | $static_get_h2load | $cache_get_h2load | — | node/static = $(ratio "$node_get_h2load" "$static_get_h2load") |
| warm small GET, req/s (hey -c 64, 10 s) | $node_get | $static_get | $cache_get | — | node/static = $(ratio "$node_get" "$static_get") |
| warm small HEAD, req/s (hey) | $node_head | $static_head | $cache_head | — | node/static = $(ratio "$node_head" "$static_head") |
| 32 concurrent warm downloads: server CPU s per GiB | $node_cpu | $static_cpu | — | — | node/static = $(ratio "$node_cpu" "$static_cpu") |
| 32 concurrent warm downloads: sampled peak RSS, MiB (before) | $(mib "$node_peak") ($(mib "$node_rss0")) | $(mib "$static_peak") ($(mib "$static_rss0")) | — | — | |
TABLE
