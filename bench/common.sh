# Shared by the benchmark scripts (sourced, after `cd` to the repository root):
#   bench_setup PREFIX TOOL=PACKAGE…  makes $work (removed on exit), installs the missing tools with
#                                     apt-get, builds the release binary into $bin;
#   pids+=(PID)                       processes killed on exit;
#   wait_line FILE PATTERN            waits (60 s at most) for a line in FILE;
#   free_port                         prints a free TCP port on 127.0.0.1;
#   start_nginx CPU SERVERS           runs one nginx worker pinned to CPU (sendfile on, no access log)
#                                     with the given server blocks; its files under $work/nginx/www
#                                     (root) and $work/nginx/cache; sets $nginx_worker.
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

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_nginx() { # cpu server-blocks
  mkdir -p "$work/nginx/www" "$work/nginx/logs" "$work/nginx/cache"
  cat >"$work/nginx/nginx.conf" <<CONF
daemon off;
user root;
worker_processes 1;
worker_cpu_affinity $((1 << $1));
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
$2
}
CONF
  taskset -c "$1" nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" &
  pids+=($!)
  for _ in $(seq 1 50); do [ -s "$work/nginx/nginx.pid" ] && break; sleep 0.1; done
  nginx_worker=$(pgrep -P "$(cat "$work/nginx/nginx.pid")" | head -n 1)
}
