#!/usr/bin/env bash
# The Triton Inference Server of the KServe tests (tests/runtime/test_kserve.py, tests/servers/triton_server.py):
# NVIDIA PyTriton (it bundles tritonserver and its Python backend; it pins numpy < 2, so it gets its own
# virtualenv, .venv-triton), with rtseg itself and the OpenVINO release of .venv so that the server runs
# the same engines. Run by scripts/test.sh after .venv exists; safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
OV=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('openvino'))")
[ -x .venv-triton/bin/python ] || "${PYTHON:-python3}" -m venv .venv-triton
.venv-triton/bin/python -m pip install -q --upgrade pip
.venv-triton/bin/python -m pip install -q "nvidia-pytriton==0.7.0" "openvino==$OV" "pydantic>=2.5" "pyyaml>=6" "psutil>=5.9"
.venv-triton/bin/python -m pip install -q --no-deps -e .
