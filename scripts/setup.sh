#!/usr/bin/env bash
# Create .venv and install songsight with everything its tests and demo need (idempotent).
# torch and torchvision are pinned as a matching pair: on the project machines pip takes
# torch 2.14.1 + torchvision 0.29.1 from local disk, and PyPI's torchvision fails to import
# beside another torch build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.songsight-installed
want=$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" -e ".[dev,ann,ui,milvus,int8]"
  echo "$want" > "$stamp"
fi
