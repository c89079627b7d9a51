#!/usr/bin/env bash
# The main job on real input, end to end, on the CPU: install rtseg, train a small EUNet on the
# Kvasir-SEG polyp images in ../shared/data, build its OpenVINO engine, and stream the real
# laparoscopy clip through it into out/endo_overlay.mp4.
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
rtseg train --model eunet-s --widths 16,32,64,128 --data "$DATA/kvasir-seg-256" --img-size 128 \
    --epochs 4 --batch-size 8 --lr 5e-3 --out runs/quickstart --quiet
rtseg build-engine --checkpoint runs/quickstart --backend openvino --precision fp32 --out engines/quickstart/openvino-fp32
rtseg eval --engine engines/quickstart/openvino-fp32
rtseg stream --engine engines/quickstart/openvino-fp32 --source "$DATA/video/endo_laparoscopy.mp4" \
    --output out/endo_overlay.mp4
echo "overlaid video: out/endo_overlay.mp4"
