#!/usr/bin/env bash
# Runs every test of hf-mirror from a clean clone: installs what the tests need (Debian packages,
# Python clients in venvs under target/), builds the workspace, runs the Rust tests, then the
# real-client suite against the built binary and the fake Hub, then the Terraform rollout onto
# systemd-nspawn hosts with the release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

say() { printf '\n== %s ==\n' "$*"; }

say "system packages"
needed=()
command -v curl >/dev/null || needed+=(curl)
command -v python3 >/dev/null || needed+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || needed+=(python3-venv)
[ -e /etc/ssl/certs/ca-certificates.crt ] || needed+=(ca-certificates)
# dig, the real DNS client of the DNS tests; ip, for the cluster harness's network namespaces.
command -v dig >/dev/null || needed+=(bind9-dnsutils)
command -v ip >/dev/null || needed+=(iproute2)
# rsync, the daemon every node supervises and the real client of its tests.
command -v rsync >/dev/null || needed+=(rsync)
# libfaketime, which sets node clocks in the clock-skew scenario.
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ] || needed+=(faketime)
# openssl, which makes the TLS tests' CA and certificates (curl drives h1/h2 over TLS).
command -v openssl >/dev/null || needed+=(openssl)
# haproxy, the real reverse proxy in front of a node (PROXY protocol v2) in the connection tests.
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || needed+=(haproxy)
# chromium, the real browser that loads the public site (/ and /status) headless in the site test.
command -v chromium >/dev/null || needed+=(chromium)
if [ ${#needed[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${needed[@]}"
  else
    echo "missing packages: ${needed[*]} (run as root to install them)" >&2
    exit 1
  fi
fi

say "client venvs (in the background, while cargo builds)"
# pip mostly waits on the package index and unpacks wheels, so it overlaps the CPU-bound build; the
# real-client step waits for it and shows its output.
venv_log="$(mktemp)"
bash tests/clients/setup-venvs.sh >"$venv_log" 2>&1 &
venv_pid=$!
# If a later step fails, the pip run stops with the script (jobs -p: only our own running jobs).
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
echo "started (pid $venv_pid)"

say "build"
export CARGO_INCREMENTAL=0
cargo build --locked --workspace --all-targets

say "guard: one TLS provider (ring), no aws-lc-sys"
if cargo tree --locked -i aws-lc-sys >/dev/null 2>&1; then
  echo "aws-lc-sys is in the dependency tree; keep rustls on the ring provider" >&2
  exit 1
fi
echo "ok"

say "rust tests"
cargo test --locked --workspace

say "the catalog at a real size (a million files to a node that starts empty; alone, as it measures its memory)"
cargo test --locked -p hfm-cluster --lib -- --ignored --exact catalog::raft::tests::cluster::a_million_files_and_a_large_manifest_reach_a_node_that_starts_empty --nocapture

say "build: the Rust hf-hub client (tests/hf-hub-client)"
# A real client of the real-client tests, in its own workspace with its own lock and target dir:
# hf-hub pulls reqwest's default TLS (aws-lc-rs) and hf-xet, which stay out of the product's tree.
CARGO_TARGET_DIR="$root/target/hf-hub-client" cargo build --locked --manifest-path tests/hf-hub-client/Cargo.toml

say "real-client tests"
venv_rc=0
wait "$venv_pid" || venv_rc=$?
cat "$venv_log"; rm -f "$venv_log"
if [ "$venv_rc" -ne 0 ]; then
  echo "setting up the client venvs failed (exit $venv_rc)" >&2
  exit 1
fi
HF_MIRROR_BIN="$root/target/debug/hf-mirror" HF_HUB_CLIENT_BIN="$root/target/hf-hub-client/debug/hf-hub-client" \
  bash tests/clients/run.sh

say "rollout: Terraform against systemd hosts (release build)"
# The issue's contract: the rollout deploys the release binary the test command built. It installs
# its own host packages (systemd-container, openssh-server, bird2, nftables) and needs terraform.
cargo build --locked --release --bin hf-mirror
bash tests/rollout/run.sh "$root/target/release/hf-mirror"
