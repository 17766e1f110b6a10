 httpx: Starlette.*#!/usr/bin/env bash
 httpx: Starlette.*# CI: what tests/test_browser.py needs beyond `pip install -e .[dev,ui]`: Debian's Chromium
 httpx: Starlette.*# and the Playwright Python package. The test launches /usr/bin/chromium itself, so no
 httpx: Starlette.*# `playwright install` (no browser download). Without these the browser tests skip, saying why.
 httpx: Starlette.*# Run after scripts/setup.sh (it installs into .venv). Idempotent.
 httpx: Starlette.*set -euo pipefail
 httpx: Starlette.*cd "$(dirname "$0")/.."
 httpx: Starlette.*if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
 httpx: Starlette.*  SUDO=""
 httpx: Starlette.*  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
 httpx: Starlette.*  $SUDO apt-get update -q
 httpx: Starlette.*  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium
 httpx: Starlette.*fi
 httpx: Starlette.*# httpx: Starlette's TestClient (tests/test_serve.py) needs it.
 httpx: Starlette.*.venv/bin/python -m pip install -q "playwright>=1.40" "httpx>=0.27"
 httpx: Starlette.*chromium --version || /usr/bin/chromium --version
