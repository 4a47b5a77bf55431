#!/usr/bin/env bash
# Cold requests, side by side in one run: straight from the fake upstream (its `/resolve/`, then its
# CDN) and through each hf-mirror build given (the release build of this checkout first). Each is the
# first request of its repo on a node started afresh on an empty data directory, so the node asks
# upstream for the repo's policy, the file's content address and the bytes: a plain GET of an LFS
# file (curl, a browser) and huggingface_hub's pattern, a HEAD and then the GET of the same file. The
# builds take turns (A, B, A, B…) so that drift hits them alike. Nodes are pinned to CPU 0, curl and
# the fake Hub to CPU 1; the fake Hub pages trees by 1000 entries, as the Hub does. Prints a Markdown
# table of medians and quartiles, in ms; nothing here asserts a time.
#
# Usage: [SIZE=BYTES] bench/first_byte.sh [ROUNDS] [OTHER_BINARY…]   (default 15 rounds, 16 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
rounds=${1:-15}
shift || true
bench_setup hfm-first-byte curl=curl taskset=util-linux
bins=("$bin")
for other in "$@"; do bins+=("$(realpath "$other")"); done
size=${SIZE:-16777216}

taskset -c 1 python3 tests/fakehub/fake_hub.py --port 0 --cdn-port 0 --page-size 1000 --big-size "$size" --big-dir "$work/big" \
  >"$work/fake.out" 2>"$work/fake.err" &
pids+=($!)
wait_line "$work/fake.out" fakehub
hub=$(awk '{print $2}' "$work/fake.out")

big=/bench/big/resolve/main/big.bin
lfs=/org/model/resolve/main/model.safetensors
# Seconds from sending a GET to the first byte of the file's body (redirects followed): not curl's
# time_starttransfer, which stops at the first byte of the headers — a node sends those as soon as
# the catalog knows the file, before any byte of it came from upstream.
first_byte() { # url
  taskset -c 1 python3 - "$1" <<'PY'
import http.client, sys, time, urllib.parse
url = sys.argv[1]
start = time.perf_counter()
for _ in range(5):
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    connection.request("GET", parts.path + ("?" + parts.query if parts.query else ""))
    answer = connection.getresponse()
    if answer.status in (301, 302, 303, 307, 308):
        url = urllib.parse.urljoin(url, answer.getheader("Location"))
        answer.read()
        connection.close()
        continue
    if answer.status != 200 or len(answer.read(1)) != 1:
        sys.exit(f"GET {url} failed: {answer.status}")
    first = time.perf_counter() - start
    # The rest is read too, so that the node's fill is over before the next request is timed.
    while answer.read(1 << 20):
        pass
    print(first, time.perf_counter() - start)
    connection.close()
    break
else:
    sys.exit(f"GET {sys.argv[1]}: too many redirects")
PY
}
head_time() { # url: seconds for a HEAD, redirects not followed (as huggingface_hub sends it)
  local out; out=$(taskset -c 1 curl -s -I -o /dev/null -w '%{http_code} %{time_total}' "$1")
  set -- $out
  [ "$1" = 200 ] || [ "$1" = 302 ] || { echo "HEAD failed: $out" >&2; exit 1; }
  echo "$2"
}

# Three cold requests, each the first of its repo on a fresh node: a plain GET (curl, a browser),
# and huggingface_hub's pattern — a HEAD, then the GET of the same file.
measure() { # key base-url
  local first whole
  read -r first whole <<<"$(first_byte "$2$big")"
  samples[$1.get]+=" $first"
  samples[$1.whole]+=" $whole"
  samples[$1.head]+=" $(head_time "$2$lfs")"
  read -r first whole <<<"$(first_byte "$2$lfs")"
  samples[$1.then]+=" $first"
}
declare -A samples
for round in $(seq 1 "$rounds"); do
  measure direct "$hub"
  for index in "${!bins[@]}"; do
    data="$work/data-$index-$round"
    taskset -c 0 "${bins[$index]}" serve --listen 127.0.0.1:0 --data-dir "$data" --upstream "$hub" --min-free-disk 0 \
      --access-log off >"$work/node.out" 2>"$work/node.err" &
    node_pid=$!
    pids+=($node_pid)
    wait_line "$work/node.out" '^node '
    measure "$index" "$(awk '/^node /{print $3}' "$work/node.out")"
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
row() { # label key
  local cells="" kind
  for kind in get whole head then; do
    # shellcheck disable=SC2086
    cells+=" $(summary ${samples[$2.$kind]}) | $(ratio "$(median ${samples[$2.$kind]})" "$(median ${samples[direct.$kind]})") |"
  done
  echo "| $1 |$cells"
}
echo "| cold, first request of its repo, $rounds rounds, ms: median (quartiles) | plain GET of a ${size} B LFS file: first body byte | ÷ direct | its last byte | ÷ direct | huggingface_hub's HEAD of an LFS file | ÷ direct | the GET after it: first body byte | ÷ direct |"
echo "|---|---|---|---|---|---|---|---|---|"
row "direct from upstream" direct
for index in "${!bins[@]}"; do
  label="hf-mirror, this checkout"
  [ "$index" = 0 ] || label="hf-mirror, ${bins[$index]}"
  row "$label" "$index"
done
