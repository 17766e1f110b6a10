#!/usr/bin/env bash
# What tests/test_browser.py needs beyond `pip install -e .[dev]` (which brings the Playwright
# Python package): Debian's Chromium. The test launches /usr/bin/chromium itself, so there is
# no `playwright install` (no browser download). Without it the browser tests skip, saying why.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium
fi
chromium --version || /usr/bin/chromium --version
