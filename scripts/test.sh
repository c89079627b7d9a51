#!/usr/bin/env bash
# Install rtseg with its test dependencies into .venv and run the test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch/torchvision first, pinned to the builds the project is tested with (CPU use; CUDA build on x86_64)
python -m pip install -q torch==2.14.1 torchvision==0.29.1
python -m pip install -q -e '.[dev]'
python -m pytest -q "$@"
