#!/usr/bin/env bash
# Runs the real-client suite (tests/clients) once per client venv, sequentially.
#   HF_MIRROR_BIN         mirror binary (default target/debug/hf-mirror)
#   HF_MIRROR_BUILD_DIR   where venvs live (default target; venvs under $HF_MIRROR_BUILD_DIR/venvs)
#   VENV_NAMES            subset of venvs, e.g. "hub2" (default: hub036 hub1 hub2)
#   HF_HUB_CLIENT_BIN     the Rust hf-hub client (tests/hf-hub-client), built by scripts/test-all.sh
#                         (default target/hf-hub-client/debug/hf-hub-client)
# Tests that do not use huggingface_hub (the Rust hf-hub client, the site in Chromium) run in one venv
# only: hub2 when it is in the list, else the last one (HF_MIRROR_RUN_ONCE=1 there, 0 elsewhere).
# Extra arguments go to pytest, e.g. `tests/clients/run.sh -k fake_hub` or `-x`.
# Exits non-zero if any venv's run failed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
BUILD_DIR="${HF_MIRROR_BUILD_DIR:-target}"
case "$BUILD_DIR" in /*) ;; *) BUILD_DIR="$ROOT/$BUILD_DIR" ;; esac
export HF_MIRROR_BIN="${HF_MIRROR_BIN:-target/debug/hf-mirror}"
export HF_HUB_CLIENT_BIN="${HF_HUB_CLIENT_BIN:-target/hf-hub-client/debug/hf-hub-client}"

bash tests/clients/setup-venvs.sh || { echo "setup-venvs.sh failed"; exit 2; }

NAMES=(${VENV_NAMES:-hub036 hub1 hub2})
ONCE_VENV=hub2
[[ " ${NAMES[*]} " == *" hub2 "* ]] || ONCE_VENV="${NAMES[-1]}"
declare -a SUMMARY=()
FAILED=0
for name in "${NAMES[@]}"; do
  py="$BUILD_DIR/venvs/$name/bin/python"
  version="$("$py" -c 'import huggingface_hub as h; print(h.__version__)')"
  echo "=== $name (huggingface_hub $version) ==="
  log="$(mktemp)"
  HF_MIRROR_RUN_ONCE=$([[ $name == "$ONCE_VENV" ]] && echo 1 || echo 0) \
    "$py" -m pytest tests/clients -q -p no:cacheprovider "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  last="$(grep -E '(passed|failed|error|no tests ran)' "$log" | tail -n 1)"
  rm -f "$log"
  SUMMARY+=("$name (huggingface_hub $version): rc=$rc ${last:-no summary}")
  if [[ $rc -ne 0 ]]; then FAILED=1; fi
done

echo "=== summary ==="
for line in "${SUMMARY[@]}"; do echo "$line"; done
exit $FAILED
