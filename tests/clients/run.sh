#!/usr/bin/env bash
# Runs the real-client suite (tests/clients) once per client venv, sequentially.
#   HF_MIRROR_BIN         mirror binary (default target/debug/hf-mirror)
#   HF_MIRROR_BUILD_DIR   where venvs live (default target; venvs under $HF_MIRROR_BUILD_DIR/venvs)
#   VENV_NAMES            subset of venvs, e.g. "hub2" (default: hub036 hub1 hub2 eco)
#   HF_HUB_CLIENT_BIN     the Rust hf-hub client (tests/hf-hub-client), built by scripts/test-all.sh
#                         (default target/hf-hub-client/debug/hf-hub-client)
# Tests that do not use huggingface_hub (the Rust hf-hub client, the site in Chromium) run in one venv
# only: hub2 when it is in the list, else the last one (HF_MIRROR_RUN_ONCE=1 there, 0 elsewhere).
# hub036, hub1 and hub2 run every file but test_ecosystem.py; `eco` (datasets 5.x beside huggingface_hub
# 2.x) runs only test_ecosystem.py (datasets, HfFileSystem, `hf cache verify`, `hf models ls -R`,
# `hf download --include`), so the ecosystem adds one short run, not a fourth pass of the suite.
# Extra arguments go to pytest, e.g. `tests/clients/run.sh -k fake_hub` or `-x`; with extra arguments, a
# venv whose files hold no selected test (pytest's exit 5) does not count as a failure.
# Exits non-zero if any venv's run failed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
BUILD_DIR="${HF_MIRROR_BUILD_DIR:-target}"
case "$BUILD_DIR" in /*) ;; *) BUILD_DIR="$ROOT/$BUILD_DIR" ;; esac
export HF_MIRROR_BIN="${HF_MIRROR_BIN:-target/debug/hf-mirror}"
export HF_HUB_CLIENT_BIN="${HF_HUB_CLIENT_BIN:-target/hf-hub-client/debug/hf-hub-client}"

bash tests/clients/setup-venvs.sh || { echo "setup-venvs.sh failed"; exit 2; }

NAMES=(${VENV_NAMES:-hub036 hub1 hub2 eco})
ECO_FILE=tests/clients/test_ecosystem.py
ONCE_VENV=hub2
if [[ " ${NAMES[*]} " != *" hub2 "* ]]; then
  for n in "${NAMES[@]}"; do [[ $n == eco ]] || ONCE_VENV=$n; done  # eco runs only $ECO_FILE
fi
declare -a SUMMARY=()
FAILED=0
for name in "${NAMES[@]}"; do
  py="$BUILD_DIR/venvs/$name/bin/python"
  version="$("$py" -c 'import huggingface_hub as h; print(h.__version__)')"
  echo "=== $name (huggingface_hub $version) ==="
  log="$(mktemp)"
  if [[ $name == eco ]]; then
    targets=("$ECO_FILE")
  else
    targets=(tests/clients "--ignore=$ECO_FILE")
  fi
  HF_MIRROR_RUN_ONCE=$([[ $name == "$ONCE_VENV" ]] && echo 1 || echo 0) \
    "$py" -m pytest "${targets[@]}" -q -p no:cacheprovider "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  if [[ $rc -eq 5 && $# -gt 0 ]]; then
    echo "(no test of $name's files matches the given arguments)"
    rc=0
  fi
  last="$(grep -E '(passed|failed|error|no tests ran)' "$log" | tail -n 1)"
  rm -f "$log"
  SUMMARY+=("$name (huggingface_hub $version): rc=$rc ${last:-no summary}")
  if [[ $rc -ne 0 ]]; then FAILED=1; fi
done

echo "=== summary ==="
for line in "${SUMMARY[@]}"; do echo "$line"; done
exit $FAILED
