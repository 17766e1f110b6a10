#!/usr/bin/env bash
# The other ends of the Milvus versions songsight supports, for tests/test_milvus_server.py's
# version tests (scripts/milvus_server_setup.sh installs the newest server, 2.3.5):
#   .venv/milvus-server-2.3.4   the oldest server it supports (PyPI's `milvus` 2.3.4)
#   .venv/milvus-server-2.3.3   the newest one it refuses (a dropped index blocks a new one)
#   .venv/milvus-server-2.3.0   refused too, though it calls itself "v2.2-testing-..."
#   .venv/pymilvus-2.6.0        the oldest client pyproject.toml allows, put on PYTHONPATH in
#                               place of the installed one (with ujson, which 2.6.0 imports)
# pymilvus 3.0.x, the newest, is the one the `milvus` extra installs. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
for version in 2.3.4 2.3.3 2.3.0; do
  bash scripts/milvus_server_setup.sh "$version" ".venv/milvus-server-$version"
done
client=2.6.0
overlay=.venv/pymilvus-$client
if [ ! -d "$overlay/pymilvus-$client.dist-info" ]; then
  .venv/bin/python -m pip install -q --no-deps --target "$overlay" "pymilvus==$client" ujson
fi
echo "pymilvus $client in $overlay"
