#!/usr/bin/env bash
# Set up, then run the demo: fingerprint tasks built from medical images that ship with the
# dependencies, print each task's nearest neighbour, write plots to demo-output/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/rayfp demo --out demo-output "$@"
