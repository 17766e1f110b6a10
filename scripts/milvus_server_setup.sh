#!/usr/bin/env bash
# Install a real Milvus server (PyPI's `milvus` package: the standalone binary with embedded
# etcd and RocksMQ) into a virtual environment of its own, for the server tests and benchmarks:
#   bash scripts/milvus_server_setup.sh                 # milvus 2.3.5 into .venv/milvus-server
#   bash scripts/milvus_server_setup.sh 2.3.0 .venv/milvus-server-2.3.0
# Its launcher pins pymilvus < 2.4, which songsight's own environment cannot share. The binary
# is decompressed once here (~0.3 GB), so a test's start does not pay for it. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-2.3.5}
venv=${2:-.venv/milvus-server}
PY=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  "$PY" -m venv "$venv"
fi
have=$("$venv/bin/python" -c "import milvus; print(milvus.__version__)" 2>/dev/null || true)
if [ "$have" != "$version" ]; then
  "$venv/bin/python" -m pip install -q "milvus==$version"
fi
"$venv/bin/python" -c "
import sys; sys.path.insert(0, 'scripts')
from pathlib import Path
import milvus_server
print('milvus', '$version', 'binaries in', milvus_server.binaries(Path(sys.prefix)))
"
