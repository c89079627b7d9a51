#!/usr/bin/env bash
# The main job on real input with the defaults, on the CPU: install rtseg, evaluate the shipped
# default polyp model on the Kvasir-SEG test split in ../shared/data (its OpenVINO engine is built
# into the cache on first use), stream the real colonoscopy clip (PolypGen sequence 11, 227 frames,
# 720x576, a polyp in 136 of them) through it into out/colonoscopy_overlay.mp4 (H.264), and print
# what it shows there against the clip's per-frame masks (with the model's decision layer: false
# alarms per minute at >= 0.5/1/2 s, detection delay, Dice on the polyp frames, flicker), every frame
# inferred and with the logits smoothed over time (--temporal ema). No training step: the weights ship inside
# the package. The clip and its masks are for evaluation and demos only, never for training.
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
CLIP="$DATA/video/colonoscopy_polypgen_seq11.mp4"
MASKS="$DATA/polypgen-seq11/masks"
rtseg eval --data "$DATA/kvasir-seg-256" --split test
rtseg stream --source "$CLIP" --output out/colonoscopy_overlay.mp4 --batch-size 4
rtseg eval --video "$CLIP" --masks "$MASKS" --batch-size 4 --out out/colonoscopy_eval.json
rtseg eval --video "$CLIP" --masks "$MASKS" --batch-size 4 --temporal ema --out out/colonoscopy_eval_ema.json
echo "overlaid video: out/colonoscopy_overlay.mp4; per-frame plots: out/colonoscopy_eval.png, out/colonoscopy_eval_ema.png"
