#!/usr/bin/env bash
# The project's test command (README and CI run exactly this).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/browser.sh  # the web page's browser test
.venv/bin/ruff check rayfp tests bench jobs serve
# the slowest tests are listed at the end: the suite must stay well under 30 minutes
.venv/bin/python -m pytest -q --durations=25 "$@"
