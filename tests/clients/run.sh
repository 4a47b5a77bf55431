#!/usr/bin/env bash
# Runs the real-client suite (tests/clients) once per client venv, HF_CLIENT_JOBS venvs at a time.
#   HF_MIRROR_BIN         mirror binary (default target/debug/hf-mirror)
#   HF_MIRROR_BUILD_DIR   where venvs live (default target; venvs under $HF_MIRROR_BUILD_DIR/venvs)
#   VENV_NAMES            subset of venvs, e.g. "hub2" (default: hub036 hub1 hub2 eco)
#   HF_HUB_CLIENT_BIN     the Rust hf-hub client (tests/hf-hub-client), built by scripts/test-all.sh
#                         (default target/hf-hub-client/debug/hf-hub-client)
#   HF_CLIENT_JOBS        how many venvs run at once (default 2: the suite mostly waits on sockets and
#                         subprocesses, and every fixture owns its ports and directories, so two runs
#                         side by side take about half the time of one after the other)
# Tests that do not use huggingface_hub (the Rust hf-hub client, the site in Chromium) run in one venv
# only: hub2 when it is in the list, else the last one (HF_MIRROR_RUN_ONCE=1 there, 0 elsewhere).
# hub036, hub1 and hub2 run every file but test_ecosystem.py; `eco` (datasets 5.x beside huggingface_hub
# 2.x) runs only test_ecosystem.py (datasets, HfFileSystem, `hf cache verify`, `hf models ls -R`,
# `hf download --include`), so the ecosystem adds one short run, not a fourth pass of the suite.
# Each venv's output is printed whole when its run ends (never interleaved).
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
JOBS="${HF_CLIENT_JOBS:-2}"

bash tests/clients/setup-venvs.sh || { echo "setup-venvs.sh failed"; exit 2; }

# Longest first, so the short `eco` run fills the gap at the end.
NAMES=(${VENV_NAMES:-hub2 hub036 hub1 eco})
ECO_FILE=tests/clients/test_ecosystem.py
ONCE_VENV=hub2
if [[ " ${NAMES[*]} " != *" hub2 "* ]]; then
  for n in "${NAMES[@]}"; do [[ $n == eco ]] || ONCE_VENV=$n; done  # eco runs only $ECO_FILE
fi
LOGS="$(mktemp -d)"
trap 'rm -rf "$LOGS"' EXIT

# One venv's run; its output goes to $LOGS/NAME.log, its exit code and summary line to $LOGS/NAME.rc.
run_venv() {
  local name="$1"; shift
  local py="$BUILD_DIR/venvs/$name/bin/python" log="$LOGS/$name.log" version targets rc last
  version="$("$py" -c 'import huggingface_hub as h; print(h.__version__)')"
  if [[ $name == eco ]]; then
    targets=("$ECO_FILE")
  else
    targets=(tests/clients "--ignore=$ECO_FILE")
  fi
  {
    echo "=== $name (huggingface_hub $version) ==="
    HF_MIRROR_RUN_ONCE=$([[ $name == "$ONCE_VENV" ]] && echo 1 || echo 0) \
      "$py" -m pytest "${targets[@]}" -q -p no:cacheprovider "$@"
  } >"$log" 2>&1
  rc=$?
  if [[ $rc -eq 5 && $# -gt 0 ]]; then
    echo "(no test of $name's files matches the given arguments)" >>"$log"
    rc=0
  fi
  last="$(grep -E '(passed|failed|error|no tests ran)' "$log" | tail -n 1)"
  printf '%s\n' "$rc" "$name (huggingface_hub $version): rc=$rc ${last:-no summary}" >"$LOGS/$name.rc"
}

declare -A RUNNING=()  # pid → venv name
show_finished() {
  local pid
  for pid in "${!RUNNING[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid" 2>/dev/null
      cat "$LOGS/${RUNNING[$pid]}.log"
      unset "RUNNING[$pid]"
    fi
  done
}
for name in "${NAMES[@]}"; do
  while (( ${#RUNNING[@]} >= JOBS )); do
    wait -n 2>/dev/null
    show_finished
  done
  run_venv "$name" "$@" &
  RUNNING[$!]="$name"
done
while (( ${#RUNNING[@]} > 0 )); do
  wait -n 2>/dev/null
  show_finished
done

echo "=== summary ==="
FAILED=0
for name in "${NAMES[@]}"; do
  if [[ -f "$LOGS/$name.rc" ]]; then
    { read -r rc; read -r line; } <"$LOGS/$name.rc"
  else
    rc=1 line="$name: no result (the run died)"
  fi
  echo "$line"
  [[ $rc -eq 0 ]] || FAILED=1
done
exit $FAILED
