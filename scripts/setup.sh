#!/usr/bin/env bash
# Create .venv with rayfp and everything its demo and tests need (idempotent).
# torch/torchvision are pinned to the builds that lie on this platform's local package disk.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"
.venv/bin/python -c "import rayfp, torch, ray; print('rayfp', rayfp.__version__, '| torch', torch.__version__, '| ray', ray.__version__)"
