#!/usr/bin/env bash
# Debian's Chromium for the web page's browser test (tests/cloud/test_page.py drives it with
# Playwright; Playwright's own browser download is not needed). Idempotent.
set -euo pipefail
if command -v chromium >/dev/null; then
  exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium >/dev/null
chromium --version
