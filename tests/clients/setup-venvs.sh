#!/usr/bin/env bash
# Creates the client venvs used by tests/clients (idempotent).
#   hub036: huggingface_hub 0.36.2 (last 0.x, requests) + transformers 4.x + tokenizers
#   hub1:   huggingface_hub 1.33.0 (newest 1.x, httpx)
#   hub2:   huggingface_hub 2.4.0 (httpx2, pulls hf_xet) + transformers 5.x + requests + xxhash (placement cross-check)
#           + pyarrow (reads the rsync indexes)
#   eco:    huggingface_hub 2.4.0 + hf_xet + datasets 5.2.0 (newest 5.x; pulls pyarrow, fsspec, pandas): runs only
#           test_ecosystem.py (datasets, HfFileSystem, `hf cache verify`, `hf models ls -R`, `hf download --include`)
# Each venv gets a marker file named after the exact package set; when it exists
# the venv is left alone. No torch, no extras.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD_DIR="${HF_MIRROR_BUILD_DIR:-target}"
case "$BUILD_DIR" in /*) ;; *) BUILD_DIR="$ROOT/$BUILD_DIR" ;; esac
VENVS="$BUILD_DIR/venvs"
PYTHON="${PYTHON:-python3}"

declare -A SPECS=(
  [hub036]="huggingface_hub==0.36.2 transformers==4.57.6 tokenizers==0.22.2 pytest"
  [hub1]="huggingface_hub==1.33.0 pytest"
  [hub2]="huggingface_hub==2.4.0 hf_xet transformers==5.24.0 tokenizers pytest requests xxhash pyarrow"
  [eco]="huggingface_hub==2.4.0 hf_xet datasets==5.2.0 pytest"
)
NAMES=(${VENV_NAMES:-hub036 hub1 hub2 eco})

mkdir -p "$VENVS"
for name in "${NAMES[@]}"; do
  spec="${SPECS[$name]}"
  dir="$VENVS/$name"
  tag="$(printf '%s' "$spec" | sha1sum | cut -c1-12)"
  marker="$dir/.installed-$tag"
  if [[ -f "$marker" ]]; then
    echo "venv $name: up to date ($spec)"
    continue
  fi
  echo "venv $name: creating ($spec)"
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir"
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  # shellcheck disable=SC2086
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check $spec
  "$dir/bin/python" - <<'PY'
import importlib.metadata as md
names = ["huggingface_hub", "hf_xet", "transformers", "tokenizers", "datasets", "fsspec", "pytest", "requests", "httpx",
         "httpx2", "pyarrow"]
found = []
for n in names:
    try:
        found.append(f"{n}=={md.version(n)}")
    except md.PackageNotFoundError:
        pass
print("  installed: " + " ".join(found))
PY
  printf '%s\n' "$spec" > "$marker"
done
