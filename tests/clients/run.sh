#!/usr/bin/env bash
# Runs the real-client suite (tests/clients) once per client venv, sequentially.
#   HF_MIRROR_BIN         mirror binary (default target/debug/hf-mirror)
#   HF_MIRROR_BUILD_DIR   where venvs live (default target; venvs under $HF_MIRROR_BUILD_DIR/venvs)
#   VENV_NAMES            subset of venvs, e.g. "hub2" (default: hub036 hub1 hub2)
# Extra arguments go to pytest, e.g. `tests/clients/run.sh -k fake_hub` or `-x`.
# Exits non-zero if any venv's run failed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
BUILD_DIR="${HF_MIRROR_BUILD_DIR:-target}"
case "$BUILD_DIR" in /*) ;; *) BUILD_DIR="$ROOT/$BUILD_DIR" ;; esac
export HF_MIRROR_BIN="${HF_MIRROR_BIN:-target/debug/hf-mirror}"

bash tests/clients/setup-venvs.sh || { echo "setup-venvs.sh failed"; exit 2; }

NAMES=(${VENV_NAMES:-hub036 hub1 hub2})
declare -a SUMMARY=()
FAILED=0
for name in "${NAMES[@]}"; do
  py="$BUILD_DIR/venvs/$name/bin/python"
  version="$("$py" -c 'import huggingface_hub as h; print(h.__version__)')"
  echo "=== $name (huggingface_hub $version) ==="
  log="$(mktemp)"
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
