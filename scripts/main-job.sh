#!/usr/bin/env bash
# The main job on real input with the defaults, on the CPU: install rtseg, evaluate the shipped
# default polyp model on the Kvasir-SEG test split in ../shared/data (its OpenVINO engine is built
# into the cache on first use), and stream the real 720p laparoscopy clip through it into
# out/endo_overlay.mp4 (H.264). No training step: the weights ship inside the package.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${RTSEG_SHARED_DATA:-../shared/data}
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.14.1 torchvision==0.29.1
python -m pip install -q -e .
mkdir -p out
rtseg eval --data "$DATA/kvasir-seg-256" --split test
rtseg stream --source "$DATA/video/endo_laparoscopy.mp4" --output out/endo_overlay.mp4 --batch-size 4
echo "overlaid video: out/endo_overlay.mp4"
