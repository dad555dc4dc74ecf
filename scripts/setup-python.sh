#!/usr/bin/env bash
# Creates .venv at the repo root with the Python readers used by the interoperability tests
# (safetensors, numpy, tensorboard). Idempotent: does nothing when they already import.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ] && .venv/bin/python -c "import safetensors, numpy, tensorboard" 2>/dev/null; then
  exit 0
fi
echo "setting up .venv (safetensors, numpy, tensorboard)"
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check safetensors numpy tensorboard
