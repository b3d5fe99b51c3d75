#!/usr/bin/env bash
# The project's test command (README and CI run exactly this).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check rayfp tests bench jobs serve
.venv/bin/python -m pytest -q "$@"
