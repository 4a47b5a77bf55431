#!/usr/bin/env bash
# Time to the first byte of a cold download, side by side in one run: straight from the fake upstream
# (its `/resolve/` redirect, then its CDN), and through each hf-mirror build given (the release build
# of this checkout first). Every round starts each node afresh on an empty data directory, so every
# request is cold: the node asks upstream for the repo's policy, the file's content address and the
# bytes. The builds take turns (A, B, A, B…) so that drift hits them alike. Nodes are pinned to CPU 0,
# curl and the fake Hub to CPU 1; the fake Hub pages trees by 1000 entries, as the Hub does.
# Prints a Markdown table of medians and quartiles, in ms; nothing here asserts a time.
#
# Usage: bench/first_byte.sh [ROUNDS] [OTHER_BINARY…]   (default 15 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
rounds=${1:-15}
shift || true
bench_setup hfm-first-byte curl=curl taskset=util-linux
bins=("$bin")
for other in "$@"; do bins+=("$(realpath "$other")"); done
size=16777216

taskset -c 1 python3 tests/fakehub/fake_hub.py --port 0 --cdn-port 0 --page-size 1000 --big-size "$size" --big-dir "$work/big" \
  >"$work/fake.out" 2>"$work/fake.err" &
pids+=($!)
wait_line "$work/fake.out" fakehub
hub=$(awk '{print $2}' "$work/fake.out")

big=/bench/big/resolve/main/big.bin
small=/org/model/resolve/main/config.json
first_byte() { # url: seconds to the first byte of a full, successful GET
  local out; out=$(taskset -c 1 curl -s -L -o /dev/null -w '%{http_code} %{time_starttransfer}' "$1")
  set -- $out
  [ "$1" = 200 ] || { echo "GET failed: $out" >&2; exit 1; }
  echo "$2"
}

declare -A samples
for round in $(seq 1 "$rounds"); do
  samples[direct.big]+=" $(first_byte "$hub$big")"
  samples[direct.small]+=" $(first_byte "$hub$small")"
  for index in "${!bins[@]}"; do
    data="$work/data-$index-$round"
    taskset -c 0 "${bins[$index]}" serve --listen 127.0.0.1:0 --data-dir "$data" --upstream "$hub" --min-free-disk 0 \
      --access-log off >"$work/node.out" 2>"$work/node.err" &
    node_pid=$!
    pids+=($node_pid)
    wait_line "$work/node.out" '^node '
    node=$(awk '/^node /{print $3}' "$work/node.out")
    samples[$index.big]+=" $(first_byte "$node$big")"
    samples[$index.small]+=" $(first_byte "$node$small")"
    kill "$node_pid"
    wait "$node_pid" 2>/dev/null || true
    rm -f "$work/node.out"
    rm -rf "$data"
  done
done

# "median (lower quartile–upper quartile)" of a list of seconds, in ms.
summary() {
  python3 -c '
import statistics, sys
values = sorted(float(v) * 1000 for v in sys.argv[1:])
q = statistics.quantiles(values, n=4)
print(f"{statistics.median(values):.2f} ({q[0]:.2f}–{q[2]:.2f})")' "$@"
}
median() { python3 -c 'import statistics, sys; print(statistics.median(float(v) for v in sys.argv[1:]))' "$@"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}')" "$1" "$2"; }
echo "| cold download, $rounds rounds | first byte, ${size} B LFS file, ms | ÷ direct | first byte, config.json, ms | ÷ direct |"
echo "|---|---|---|---|---|"
# shellcheck disable=SC2086
echo "| direct from upstream | $(summary ${samples[direct.big]}) | 1.00 | $(summary ${samples[direct.small]}) | 1.00 |"
for index in "${!bins[@]}"; do
  # shellcheck disable=SC2086
  label="hf-mirror, this checkout"
  [ "$index" = 0 ] || label="hf-mirror, ${bins[$index]}"
  echo "| $label | $(summary ${samples[$index.big]}) | $(ratio "$(median ${samples[$index.big]})" "$(median ${samples[direct.big]})") | $(summary ${samples[$index.small]}) | $(ratio "$(median ${samples[$index.small]})" "$(median ${samples[direct.small]})") |"
done
