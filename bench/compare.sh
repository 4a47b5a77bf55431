#!/usr/bin/env bash
# Compares two builds of hf-mirror side by side, in one run, on this machine: warm small-file GET and
# HEAD requests/s (hey), and a warm big-file download, each node pinned to core 0 and the load
# generator to core 1, the two builds measured in turns (A, B, A, B) so that drift hits both alike.
# Prints a Markdown table; nothing here asserts a time.
#
# Usage: bench/compare.sh OLD_BINARY NEW_BINARY [BIG_SIZE_BYTES]   (default 256 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
old_bin=$(realpath "$1")
new_bin=$(realpath "$2")
size=${3:-268435456}
work=$(mktemp -d /tmp/hfm-compare.XXXXXX)
trap cleanup EXIT
for tool in hey curl taskset; do
  command -v "$tool" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hey curl util-linux >/dev/null; break; }
done

python3 tests/fakehub/fake_hub.py --port 0 --cdn-port 0 --big-size "$size" --big-dir "$work/big" >"$work/fake.out" 2>"$work/fake.err" &
pids+=($!)
wait_line "$work/fake.out" fakehub
hub=$(awk '{print $2}' "$work/fake.out")

start_node() { # name binary
  taskset -c 0 "$2" serve --listen 127.0.0.1:0 --data-dir "$work/$1" --upstream "$hub" --min-free-disk 0 --access-log off \
    >"$work/$1.out" 2>"$work/$1.err" &
  pids+=($!)
  wait_line "$work/$1.out" '^node '
  awk '/^node /{print $3}' "$work/$1.out"
}
old=$(start_node old "$old_bin")
new=$(start_node new "$new_bin")
small=/org/model/resolve/main/config.json
big=/bench/big/resolve/main/big.bin
for url in "$old" "$new"; do
  curl -sf -o /dev/null "$url$small"
  curl -sf -o /dev/null "$url$big"
done
# The fill publishes the blob just after the last byte went out.
sleep 2

hey_rps() { # method url
  taskset -c 1 hey -z 10s -c 32 -m "$1" "$2" >"$work/hey.out"
  awk '/Requests\/sec/ {printf "%.0f", $2}' "$work/hey.out"
}
download_mbps() { # url
  local out; out=$(taskset -c 1 curl -s -o /dev/null -w '%{http_code} %{size_download} %{time_total}' "$1")
  set -- $out
  [ "$1" = 200 ] && [ "$2" = "$size" ] || { echo "download failed: $out" >&2; exit 1; }
  python3 -c "import sys; print(f'{$size/float(sys.argv[1])/1e6:.0f}')" "$3"
}

declare -A results
for round in 1 2; do
  for which in old new; do
    url=${!which}
    results[$which.get.$round]=$(hey_rps GET "$url$small")
    results[$which.head.$round]=$(hey_rps HEAD "$url$small")
    results[$which.big.$round]=$(download_mbps "$url$big")
  done
done
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}')" "$1" "$2"; }
mean() { python3 -c "import sys; print(f'{(float(sys.argv[1])+float(sys.argv[2]))/2:.0f}')" "$1" "$2"; }
cat <<TABLE
| measurement | old (round 1, round 2) | new (round 1, round 2) | new/old (means) |
|---|---|---|---|
| warm small GET, hey -c 32 10 s (req/s) | ${results[old.get.1]}, ${results[old.get.2]} | ${results[new.get.1]}, ${results[new.get.2]} | $(ratio "$(mean "${results[new.get.1]}" "${results[new.get.2]}")" "$(mean "${results[old.get.1]}" "${results[old.get.2]}")") |
| warm small HEAD, hey -c 32 10 s (req/s) | ${results[old.head.1]}, ${results[old.head.2]} | ${results[new.head.1]}, ${results[new.head.2]} | $(ratio "$(mean "${results[new.head.1]}" "${results[new.head.2]}")" "$(mean "${results[old.head.1]}" "${results[old.head.2]}")") |
| warm ${size} B download (MB/s) | ${results[old.big.1]}, ${results[old.big.2]} | ${results[new.big.1]}, ${results[new.big.2]} | $(ratio "$(mean "${results[new.big.1]}" "${results[new.big.2]}")" "$(mean "${results[old.big.1]}" "${results[old.big.2]}")") |
TABLE
