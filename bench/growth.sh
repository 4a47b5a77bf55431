#!/usr/bin/env bash
# Growth benchmark: does a node's cost stay flat as its catalog and store grow? Three data directories
# made by `node/examples/growth_fixture.rs` — 1 repository of FILES files, REPOS repositories of
# FILES files (default 10,000 × 100: a million files in the catalog and a million blobs on disk), and
# 1 repository of WIDE_FILES files (default 100,000; its manifest is stored in pages) — are
# each served by the release binary pinned to CPU 0 (clients on CPU 1), with upstream unreachable (every
# answer must come from the node). For each it measures: start-up (exec to the `node` line, when the
# node serves), RSS after start, warm GET requests/s and server CPU µs per request for one file (hey -c 64,
# 10 s) and for files spread over the whole catalog (wrk -c 64, 10 s, a random one of 1,000 sampled
# URLs per request), and peak RSS; for the single repositories also a walk of the whole recursive tree
# by its cursors (8 clients at once) and paths-info requests of 100 paths. Prints two Markdown tables.
# The fixtures are kept under target/bench-growth/ (REBUILD=1 makes them again).
#   bench/growth.sh            # 10,000 × 100
#   REPOS=1000 bench/growth.sh # smaller
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
REPOS=${REPOS:-10000}
FILES=${FILES:-100}
WIDE_FILES=${WIDE_FILES:-100000}
bench_setup hfm-growth hey=hey wrk=wrk taskset=util-linux
cargo build --locked --release -p hfm-node --example growth_fixture >&2
fixture_bin="$root/target/release/examples/growth_fixture"
server_cpu=0
client_cpu=1
on_client() { taskset -c "$client_cpu" "$@"; }

fixtures="$root/target/bench-growth"
# fixture NAME REPOS FILES: makes (once) the data directory and its URL list; prints its directory.
fixture() {
  local files=$3
  local dir="$fixtures/$1-$2x$files"
  if [ -n "${REBUILD:-}" ] || [ ! -f "$dir/.complete" ]; then
    rm -rf "$dir"; mkdir -p "$dir"
    local started; started=$(date +%s.%N)
    "$fixture_bin" "$dir/data" "$2" "$files" | awk '/^url /{print $2}' >"$dir/urls"
    python3 -c "print(f'fixture $1: $2 repos x $files files made in {$(date +%s.%N) - $started:.0f} s')" >&2
    touch "$dir/.complete"
  fi
  echo "$dir"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
kib() { awk "/^$2:/ {print \$2}" "/proc/$1/status"; }
mib() { python3 -c "print(f'{$1/1024:.0f}')"; }

# measure DIR [walk FILES]: one line "startup_s rss_start_kib one_rps one_us spread_rps spread_us peak_kib blobs listed_s
# rss_listed_kib walked_pages ms_per_page paths_info_ms peak_before_walk_kib" (the last four "-" without walk)
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
  local walk="- - - -"
  if [ "${2:-}" = walk ]; then # $3: the repo's file count
    local before_walk; before_walk=$(kib "$pid" VmHWM)
    # The whole recursive tree of the repo by its Link cursors, by 8 clients at once, then paths-info
    # of 100 paths per request: what a large repo costs a node's memory per request.
    walk=$(on_client python3 - "$node" "$(head -n 1 "$dir/urls")" "$3" <<'PY'
import json, re, sys, threading, time, urllib.request
node, first, files = sys.argv[1], sys.argv[2], int(sys.argv[3])
repo, commit = re.match(r"/(.+)/resolve/([0-9a-f]{40})/", first).groups()
pages, lock = [0], threading.Lock()
def walk():
    url = f"{node}/api/models/{repo}/tree/{commit}?recursive=true"
    while url:
        with urllib.request.urlopen(url) as reply:
            body, link = reply.read(), reply.headers.get("Link")
        assert json.loads(body), url
        with lock:
            pages[0] += 1
        found = re.search(r'<([^>]+)>; rel="next"', link or "")
        url = found.group(1) if found else None
started = time.time()
walkers = [threading.Thread(target=walk) for _ in range(8)]
for walker in walkers: walker.start()
for walker in walkers: walker.join()
walked = time.time() - started
paths = [f"configs/part-{index:04}.json" for index in range(0, files, max(1, files // 100))]
body = json.dumps({"paths": paths}).encode()
started = time.time()
for _ in range(50):
    request = urllib.request.Request(f"{node}/api/models/{repo}/paths-info/{commit}", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as reply:
        assert len(json.loads(reply.read())) == len(paths)
print(pages[0], f"{walked * 1000 / pages[0]:.1f}", f"{(time.time() - started) * 1000 / 50:.1f}")
PY
)
    walk="$walk $before_walk"
  fi
  local peak; peak=$(kib "$pid" VmHWM)
  local blobs; blobs=$(find "$dir/data/blobs" -type f ! -name '*.sums' | wc -l)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 - "$startup" "$rss_start" "$one_rps" "$one_requests" "$one_ticks" "$spread_rps" "$spread_requests" "$spread_ticks" "$peak" "$blobs" "$listed" "$rss_listed" $walk <<'PY'
import os, sys
startup, rss, one_rps, one_req, one_ticks, spread_rps, spread_req, spread_ticks, peak, blobs, listed, rss_listed = sys.argv[1:13]
walk = sys.argv[13:]
tick = 1e6 / os.sysconf('SC_CLK_TCK')
print(startup, rss, one_rps, f"{int(one_ticks) * tick / int(one_req):.1f}", spread_rps,
      f"{int(spread_ticks) * tick / int(spread_req):.1f}", peak, blobs, listed, rss_listed, *walk)
PY
}

small_dir=$(fixture one 1 "$FILES")
big_dir=$(fixture many "$REPOS" "$FILES")
wide_dir=$(fixture wide 1 "$WIDE_FILES")
read -r s_start s_rss s_one s_one_us s_spread s_spread_us s_peak s_blobs s_listed s_rss_listed s_pages s_page_ms s_info_ms s_pre_walk <<<"$(measure "$small_dir" walk "$FILES")"
read -r b_start b_rss b_one b_one_us b_spread b_spread_us b_peak b_blobs b_listed b_rss_listed _ <<<"$(measure "$big_dir")"
read -r w_start w_rss w_one w_one_us w_spread w_spread_us w_peak w_blobs w_listed w_rss_listed w_pages w_page_ms w_info_ms w_pre_walk <<<"$(measure "$wide_dir" walk "$WIDE_FILES")"
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

cat <<EOF

| one large repository | 1 repo × $FILES files | 1 repo × $WIDE_FILES files | ratio |
|---|---|---|---|
| start-up until the node serves, s | $s_start | $w_start | $(ratio "$w_start" "$s_start") |
| RSS once the store is listed, MiB | $(mib "$s_rss_listed") | $(mib "$w_rss_listed") | $(ratio "$w_rss_listed" "$s_rss_listed") |
| files spread over the repo: server CPU µs per GET | $s_spread_us | $w_spread_us | $(ratio "$w_spread_us" "$s_spread_us") |
| recursive tree by cursor, 8 clients at once: pages walked | $s_pages | $w_pages | |
| … ms per page (1,000 entries) | $s_page_ms | $w_page_ms | |
| paths-info of 100 paths, ms per request | $s_info_ms | $w_info_ms | $(ratio "$w_info_ms" "$s_info_ms") |
| peak RSS after the GET loads, before the walk, MiB | $(mib "$s_pre_walk") | $(mib "$w_pre_walk") | $(ratio "$w_pre_walk" "$s_pre_walk") |
| peak RSS (after the loads, the walk and paths-info), MiB | $(mib "$s_peak") | $(mib "$w_peak") | $(ratio "$w_peak" "$s_peak") |
EOF
