#!/usr/bin/env bash
# The cluster's numbers for docs/benchmarks.md, from the multi-node harness (tests/cluster) run with
# the release binary: peer QUIC fill vs local disk, upstream fetches for 4 nodes x 8 clients, and the
# time for a dead (killed, cut off, paused) node to leave the live set and for a new catalog leader.
#
#   bench/cluster.sh [BLOB_BYTES]     (default 268435456)
set -euo pipefail
cd "$(dirname "$0")/.."
export HFM_BENCH_SIZE="${1:-268435456}"
cargo build --locked --release --bin hf-mirror
export HF_MIRROR_BIN="$PWD/target/release/hf-mirror"
cargo test --locked --release -p hfm-cluster-tests --test scenarios -- --include-ignored --nocapture --test-threads 1 \
  bench_peer_fill scenario_1 scenario_4 scenario_5 2>&1 | grep -E "^(measure|cluster harness|test )"
