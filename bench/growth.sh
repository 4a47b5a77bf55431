#!/usr/bin/env bash
# Growth benchmark: does a node's cost stay flat as its catalog and store grow? Two data directories
# made by `node/examples/growth_fixture.rs` — 1 repository of FILES files, and REPOS repositories of
# FILES files (default 10,000 × 100: a million files in the catalog and a million blobs on disk) — are
# each served by the release binary pinned to CPU 0 (clients on CPU 1), with upstream unreachable (every
# answer must come from the node). For each it measures: start-up (exec to the `node` line, when the
# node serves), RSS after start, warm GET requests/s and server CPU µs per request for one file (hey -c 64,
# 10 s) and for files spread over the whole catalog (wrk -c 64, 10 s, a random one of 1,000 sampled
# URLs per request), and peak RSS. Prints a Markdown table. The fixtures are kept under
# target/bench-growth/ (REBUILD=1 makes them again).
#   bench/growth.sh            # 10,000 × 100
#   REPOS=1000 bench/growth.sh # smaller
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
REPOS=${REPOS:-10000}
FILES=${FILES:-100}
bench_setup hfm-growth hey=hey wrk=wrk taskset=util-linux
cargo build --locked --release -p hfm-node --example growth_fixture >&2
fixture_bin="$root/target/release/examples/growth_fixture"
server_cpu=0
client_cpu=1
on_client() { taskset -c "$client_cpu" "$@"; }

fixtures="$root/target/bench-growth"
# fixture NAME REPOS: makes (once) the data directory and its URL list; prints its directory.
fixture() {
  local dir="$fixtures/$1-$2x$FILES"
  if [ -n "${REBUILD:-}" ] || [ ! -f "$dir/.complete" ]; then
    rm -rf "$dir"; mkdir -p "$dir"
    local started; started=$(date +%s.%N)
    "$fixture_bin" "$dir/data" "$2" "$FILES" | awk '/^url /{print $2}' >"$dir/urls"
    python3 -c "print(f'fixture $1: $2 repos x $FILES files made in {$(date +%s.%N) - $started:.0f} s')" >&2
    touch "$dir/.complete"
  fi
  echo "$dir"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
kib() { awk "/^$2:/ {print \$2}" "/proc/$1/status"; }
mib() { python3 -c "print(f'{$1/1024:.0f}')"; }

# measure DIR: one line "startup_s rss_start_kib one_rps one_us spread_rps spread_us peak_kib blobs listed_s rss_listed_kib"
measure() {
  local dir=$1 out="$work/node-$RANDOM"
  local started; started=$(date +%s.%N)
  taskset -c "$server_cpu" "$bin" serve --listen 127.0.0.1:0 --data-dir "$dir/data" --upstream http://127.0.0.1:9 \
    --ref-ttl 100d --policy-ttl 100d --min-free-disk 0 >"$out.out" 2>"$out.err" &
  local pid=$!
  pids+=($pid)
  # Not wait_line (60 s): start-up is what is measured, however long it takes (10 minutes at most).
  for _ in $(seq 1 6000); do grep -q '^node ' "$out.out" && break; sleep 0.1; done
  grep -q '^node ' "$out.out" || { echo "the node did not start in 10 minutes" >&2; cat "$out.err" >&2; exit 1; }
  local startup; startup=$(python3 -c "print(f'{$(date +%s.%N) - $started:.2f}')")
  local node; node=$(awk '/^node /{print $3}' "$out.out")
  local rss_start; rss_start=$(kib "$pid" VmRSS)
  # The store lists its blobs in the background; the loads below measure the node after that (the
  # listing shares the pinned core).
  for _ in $(seq 1 6000); do grep -q 'blob store listed' "$out.err" && break; sleep 0.1; done
  grep -q 'blob store listed' "$out.err" || { echo "the store's listing did not end in 10 minutes" >&2; exit 1; }
  local listed; listed=$(python3 -c "print(f'{$(date +%s.%N) - $started:.2f}')")
  local rss_listed; rss_listed=$(kib "$pid" VmRSS)
  local first; first=$(head -n 1 "$dir/urls")
  # Every answer must be the node's own: no upstream is reachable.
  local cache; cache=$(curl -s -o /dev/null -D - "$node$first" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache" {print $2}')
  [ "$cache" = HIT ] || { echo "expected a HIT for $first, got '$cache'" >&2; cat "$out.err" >&2; exit 1; }
  local before; before=$(cpu_ticks "$pid")
  on_client hey -z 10s -c 64 "$node$first" >"$work/hey.out"
  local one_rps one_requests one_ticks
  one_rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$work/hey.out")
  one_requests=$(awk '$1 == "[200]" {print $2}' "$work/hey.out")
  one_ticks=$(( $(cpu_ticks "$pid") - before ))
  sed "s|^|$node|" "$dir/urls" >"$work/urls"
  cat >"$work/spread.lua" <<LUA
local urls = {}
for line in io.lines("$work/urls") do urls[#urls + 1] = line end
math.randomseed(7)
request = function() return wrk.format("GET", urls[math.random(#urls)]) end
LUA
  before=$(cpu_ticks "$pid")
  on_client wrk -t 1 -c 64 -d 10s -s "$work/spread.lua" "$node" >"$work/wrk.out"
  local spread_rps spread_requests spread_ticks
  spread_rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$work/wrk.out")
  spread_requests=$(awk '/requests in/ {print $1}' "$work/wrk.out")
  spread_ticks=$(( $(cpu_ticks "$pid") - before ))
  if grep -q 'Non-2xx' "$work/wrk.out"; then echo "non-2xx answers in the spread load:" >&2; cat "$work/wrk.out" >&2; exit 1; fi
  local peak; peak=$(kib "$pid" VmHWM)
  local blobs; blobs=$(find "$dir/data/blobs" -type f ! -name '*.sums' | wc -l)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 - "$startup" "$rss_start" "$one_rps" "$one_requests" "$one_ticks" "$spread_rps" "$spread_requests" "$spread_ticks" "$peak" "$blobs" "$listed" "$rss_listed" <<'PY'
import os, sys
startup, rss, one_rps, one_req, one_ticks, spread_rps, spread_req, spread_ticks, peak, blobs, listed, rss_listed = sys.argv[1:]
tick = 1e6 / os.sysconf('SC_CLK_TCK')
print(startup, rss, one_rps, f"{int(one_ticks) * tick / int(one_req):.1f}", spread_rps,
      f"{int(spread_ticks) * tick / int(spread_req):.1f}", peak, blobs, listed, rss_listed)
PY
}

small_dir=$(fixture one 1)
big_dir=$(fixture many "$REPOS")
read -r s_start s_rss s_one s_one_us s_spread s_spread_us s_peak s_blobs s_listed s_rss_listed <<<"$(measure "$small_dir")"
read -r b_start b_rss b_one b_one_us b_spread b_spread_us b_peak b_blobs b_listed b_rss_listed <<<"$(measure "$big_dir")"
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }

cat <<EOF
| measurement | 1 repo × $FILES files | $REPOS repos × $FILES files | ratio |
|---|---|---|---|
| blobs on disk | $s_blobs | $b_blobs | |
| start-up until the node serves, s | $s_start | $b_start | $(ratio "$b_start" "$s_start") |
| RSS after start-up, MiB | $(mib "$s_rss") | $(mib "$b_rss") | $(ratio "$b_rss" "$s_rss") |
| the store's background listing done (from exec), s | $s_listed | $b_listed | |
| RSS once the store is listed, MiB | $(mib "$s_rss_listed") | $(mib "$b_rss_listed") | $(ratio "$b_rss_listed" "$s_rss_listed") |
| one warm file: GET req/s (hey -c 64) | $s_one | $b_one | $(ratio "$b_one" "$s_one") |
| one warm file: server CPU µs per request | $s_one_us | $b_one_us | $(ratio "$b_one_us" "$s_one_us") |
| files spread over the catalog: GET req/s (wrk -c 64) | $s_spread | $b_spread | $(ratio "$b_spread" "$s_spread") |
| files spread over the catalog: server CPU µs per request | $s_spread_us | $b_spread_us | $(ratio "$b_spread_us" "$s_spread_us") |
| peak RSS, MiB | $(mib "$s_peak") | $(mib "$b_peak") | $(ratio "$b_peak" "$s_peak") |
EOF
