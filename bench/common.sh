# Shared by the benchmark scripts (sourced, after `cd` to the repository root):
#   bench_setup PREFIX TOOL=PACKAGE…  makes $work (removed on exit), installs the missing tools with
#                                     apt-get, builds the release binary into $bin;
#   pids+=(PID)                       processes killed on exit;
#   wait_line FILE PATTERN            waits (60 s at most) for a line in FILE.
root=$(pwd)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

bench_setup() { # prefix, tool=package…
  work=$(mktemp -d "/tmp/$1.XXXXXX")
  trap cleanup EXIT
  shift
  local need=() tool
  for tool in "$@"; do
    command -v "${tool%%=*}" >/dev/null || need+=("${tool#*=}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  cargo build --locked --release -p hfm-node --bin hf-mirror >&2
  bin="$root/target/release/hf-mirror"
}

wait_line() { # file pattern
  for _ in $(seq 1 600); do
    if grep -q "$2" "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}
