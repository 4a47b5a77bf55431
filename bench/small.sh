#!/usr/bin/env bash
# Warm small-file GETs and HEADs, rounds interleaved so that the VM's noise falls on every server alike: nginx
# serving the file statically (one worker, sendfile, no access log), hf-mirror (default settings: the
# access log on), the HTTP library's floor (`node/examples/hyper_floor.rs`: hyper answering the same
# headers and body from memory, nothing else), and any other hf-mirror builds given (to compare a
# change with the build before it). Server on CPU 0, the client on CPU 1: h2load --h1 -c 64 for GET,
# hey -c 64 -m HEAD for HEAD (h2load cannot send HEAD over HTTP/1.1; Debian's wrk 4.1 waits for a
# HEAD answer's body). hey, on its one core, tops out below nginx, so for HEAD the server's CPU per
# request is the comparison, not requests/s. For each it reports
# requests/s and the server's CPU time per request (utime + stime over the run, from /proc), best and
# median over the rounds. Prints a Markdown table for docs/benchmarks.md; asserts nothing.
#
# Usage: bench/small.sh [ROUNDS] [OTHER_HF_MIRROR_BINARY…]   (default 5 rounds of 200,000 GETs and
# 100,000 HEADs)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
rounds=${1:-5}
shift || true
requests=${REQUESTS:-200000}
# hey sends requests/connections per connection: a multiple of 64.
head_requests=$((${HEAD_REQUESTS:-100000} / 64 * 64))
bench_setup hfm-small nginx=nginx h2load=nghttp2-client hey=hey curl=curl taskset=util-linux
cargo build --locked --release -p hfm-node --example hyper_floor >&2
floor_bin="$root/target/release/examples/hyper_floor"

taskset -c 1 python3 tests/fakehub/fake_hub.py --port 0 --cdn-port 0 >"$work/fake.out" 2>"$work/fake.err" &
pids+=($!)
wait_line "$work/fake.out" fakehub
hub=$(awk '{print $2}' "$work/fake.out")

names=() urls=() server_pids=()
add() { names+=("$1"); urls+=("$2"); server_pids+=("$3"); }

port=$(free_port)
start_nginx 0 "  server { listen 127.0.0.1:$port; root $work/nginx/www; }"
curl -sf -o "$work/nginx/www/config.json" "$hub/org/model/resolve/main/config.json"
add "nginx static" "http://127.0.0.1:$port/config.json" "$nginx_worker"

index=0
for binary in "$bin" "$@"; do
  index=$((index + 1))
  taskset -c 0 "$binary" serve --listen 127.0.0.1:0 --data-dir "$work/data$index" --upstream "$hub" --min-free-disk 0 \
    >"$work/node$index.out" 2>"$work/node$index.err" &
  node_pid=$!
  pids+=($node_pid)
  wait_line "$work/node$index.out" '^node '
  url="$(awk '/^node /{print $3}' "$work/node$index.out")/org/model/resolve/main/config.json"
  # Twice: the first fills the blob, the second keeps it in memory.
  curl -sf -o /dev/null "$url" && curl -sf -o /dev/null "$url"
  name="hf-mirror"
  [ "$index" -gt 1 ] && name="hf-mirror ($binary)"
  add "$name" "$url" "$node_pid"
done

taskset -c 0 "$floor_bin" >"$work/floor.out" &
pids+=($!)
floor_pid=$!
wait_line "$work/floor.out" '^node '
add "hyper floor" "$(awk '/^node /{print $3}' "$work/floor.out")/config.json" "$floor_pid"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_per_second=$(getconf CLK_TCK)
for i in "${!names[@]}"; do
  taskset -c 1 h2load --h1 -n 20000 -c 64 "${urls[$i]}" >/dev/null # warm-up
done
: >"$work/rounds"
for round in $(seq 1 "$rounds"); do
  for i in "${!names[@]}"; do
    before=$(cpu_ticks "${server_pids[$i]}")
    rate=$(taskset -c 1 h2load --h1 -n "$requests" -c 64 "${urls[$i]}" | awk '/^finished in/ {print int($4)}')
    after=$(cpu_ticks "${server_pids[$i]}")
    echo "$i GET $rate $(((after - before) * 1000000000 / ticks_per_second / requests))" >>"$work/rounds"
    echo "round $round: ${names[$i]} GET $rate req/s" >&2
    before=$(cpu_ticks "${server_pids[$i]}")
    out=$(taskset -c 1 hey -n "$head_requests" -c 64 -m HEAD "${urls[$i]}")
    after=$(cpu_ticks "${server_pids[$i]}")
    rate=$(echo "$out" | awk '/Requests\/sec:/ {print int($2)}')
    if ! echo "$out" | grep -qE "\[200\][[:space:]]+$head_requests responses"; then echo "HEAD not answered 200 every time: $out" >&2; exit 1; fi
    echo "$i HEAD $rate $(((after - before) * 1000000000 / ticks_per_second / head_requests))" >>"$work/rounds"
    echo "round $round: ${names[$i]} HEAD $rate req/s" >&2
  done
done

python3 - "$work/rounds" "${names[@]}" <<'PY'
import sys
rows = [line.split() for line in open(sys.argv[1])]
names = sys.argv[2:]
def median(values):
    values = sorted(values)
    return values[len(values) // 2]
for method, client in (("GET", "h2load --h1 -c 64"), ("HEAD", "hey -c 64 -m HEAD")):
    table = []
    for index, name in enumerate(names):
        rates = [int(rate) for i, m, rate, _ in rows if int(i) == index and m == method]
        cpu = [int(ns) for i, m, _, ns in rows if int(i) == index and m == method]
        table.append((name, max(rates), median(rates), min(cpu) / 1000, median(cpu) / 1000))
    nginx_best, nginx_cpu = table[0][1], table[0][3]
    print(f"warm small {method} (279 bytes), {client}, {len(rows) // len(names) // 2} rounds, server on one core")
    print()
    print("| server | best req/s | median req/s | CPU µs per request (least / median) | best ÷ nginx | nginx's least CPU ÷ its least CPU |")
    print("|---|---|---|---|---|---|")
    for name, best, middle, least_cpu, median_cpu in table:
        print(f"| {name} | {best} | {middle} | {least_cpu:.1f} / {median_cpu:.1f} | {best / nginx_best:.2f} | {nginx_cpu / least_cpu:.2f} |")
    print()
PY
