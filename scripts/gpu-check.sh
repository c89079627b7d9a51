#!/usr/bin/env bash
# GPU acceptance check: run on a machine with an NVIDIA GPU, its driver, CUDA and TensorRT 10/11
# (pip install -e '.[dev,tensorrt]'), from the repository root, with the real data in ../shared/data
# (or $RTSEG_SHARED_DATA). Budget: under 10 minutes (each step has its own timeout).
#
#   bash scripts/gpu-check.sh            # writes gpu-check/ (logs, engines, JSON), exits 1 if a check failed
#
# Every line it prints is "PASS|FAIL|INFO <check> ...", in this order (docs/tensorrt.md "GPU acceptance check"):
#   versions      GPU, driver, compute capability, CUDA, torch, TensorRT
#   pytest-gpu    pytest -m gpu tests/runtime/test_tensorrt.py (small EUNet engines vs ONNX Runtime, CUDA graphs, batches)
#   build-*       fp32/fp16/int8 TensorRT engines of eunet-s (tests/assets/eunet-tiny-kvasir64) and the default model,
#                 one shared timing cache; fp32/fp16 must match their ONNX at build (engine.json verify.onnx),
#                 fp16/int8 must pass the accuracy gate (0.5 pt Dice on the val split)
#   variant-*     the default model's fp16 engine built --version-compatible and --hardware-compatibility-level ampere_plus
#   cache-reuse   a second build reads the timing cache (no "does not fit" warning) and it is not empty
#   dice-*        Dice on the Kvasir-SEG test split of each engine vs the CPU reference (OpenVINO fp32):
#                 |Δ| ≤ 0.1 pt fp32, 0.5 pt fp16, 1.0 pt int8
#   cudagraph     CUDA-graph replay gives the same logits as plain execution, bit for bit, batches 1 and 4
#   gpu-preproc   uint8 frames normalised on the GPU equal the CPU (NumPy) path bit for bit, and so do the masks
#   stream        rtseg stream of endo_laparoscopy.mp4 through the default fp16 engine (frames in = frames out)
#   bench         rtseg bench of the default model's engines (latency p50/p99 per batch, stream FPS) → bench.json
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DATA=${RTSEG_SHARED_DATA:-../shared/data}
KVASIR=$DATA/kvasir-seg-256
CLIP=$DATA/video/endo_laparoscopy.mp4
OUT=${GPU_CHECK_OUT:-gpu-check}
mkdir -p "$OUT/logs" "$OUT/engines"
FAILS=0
T0=$(date +%s)

run() {  # run NAME TIMEOUT_S CMD...: PASS/FAIL line, output in $OUT/logs/NAME.log
  local name=$1 limit=$2; shift 2
  local t=$(date +%s)
  if timeout "$limit" "$@" >"$OUT/logs/$name.log" 2>&1; then
    echo "PASS $name ($(( $(date +%s) - t )) s)"
  else
    echo "FAIL $name (exit $?, $(( $(date +%s) - t )) s): $(grep -m1 -E 'error:|Error|FAILED|assert' "$OUT/logs/$name.log" | cut -c1-200) — see $OUT/logs/$name.log"
    FAILS=$((FAILS + 1))
  fi
}

rtseg() { "$PY" -m rtseg "$@"; }

# -- versions ---------------------------------------------------------------------------------------
echo "INFO versions $(nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader 2>/dev/null | head -1)"
"$PY" - <<'EOF' | sed 's/^/INFO versions /'
import torch
try:
    import tensorrt as trt
    v = trt.__version__
except Exception as e:  # reported, and every TensorRT step below fails with rtseg's own message
    v = f"missing ({type(e).__name__})"
print(f"torch {torch.__version__} CUDA {torch.version.cuda} available={torch.cuda.is_available()} TensorRT {v}")
EOF

# -- 1. the GPU tests -------------------------------------------------------------------------------
run pytest-gpu 240 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/runtime/test_tensorrt.py

# -- 2. engines: two models × three precisions, one timing cache ------------------------------------
CACHE=$OUT/timing.cache
declare -A CKPT=([eunet-s]=tests/assets/eunet-tiny-kvasir64 [default]=rtseg/weights/default)
GATE=(--gate-images 100 --gate-max-rounds 2 --threads 4)
for m in eunet-s default; do
  for p in fp32 fp16 int8; do
    run "build-$m-$p" 150 rtseg build-engine --checkpoint "${CKPT[$m]}" --backend tensorrt --precision "$p" \
      --max-batch 8 --opt-batch 4 --timing-cache "$CACHE" "${GATE[@]}" --out "$OUT/engines/$m/tensorrt-$p"
  done
done
run variant-version-compatible 120 rtseg build-engine --checkpoint rtseg/weights/default --backend tensorrt --precision fp16 \
  --max-batch 8 --version-compatible --timing-cache "$CACHE" "${GATE[@]}" --out "$OUT/engines/default/tensorrt-fp16-vc"
run variant-ampere-plus 120 rtseg build-engine --checkpoint rtseg/weights/default --backend tensorrt --precision fp16 \
  --max-batch 8 --hardware-compatibility-level ampere_plus --timing-cache "$CACHE" "${GATE[@]}" \
  --out "$OUT/engines/default/tensorrt-fp16-ampere"
run cache-reuse 10 bash -c "ls $OUT/timing.trt*.cache >/dev/null && [ -s \"\$(ls $OUT/timing.trt*.cache | head -1)\" ] \
  && ! grep -l 'does not fit' $OUT/logs/variant-*.log"

# -- 3. accuracy on the Kvasir test split vs the CPU reference ---------------------------------------
for m in eunet-s default; do
  run "cpu-reference-$m" 120 rtseg build-engine --checkpoint "${CKPT[$m]}" --backend openvino --precision fp32 \
    --out "$OUT/engines/$m/openvino-fp32"
  rtseg eval --engine "$OUT/engines/$m/openvino-fp32" --data "$KVASIR" --split test --json \
    --out "$OUT/eval-$m-cpu.json" >"$OUT/logs/eval-$m-cpu.log" 2>&1
  for p in fp32 fp16 int8; do
    rtseg eval --engine "$OUT/engines/$m/tensorrt-$p" --data "$KVASIR" --split test --json \
      --out "$OUT/eval-$m-$p.json" >"$OUT/logs/eval-$m-$p.log" 2>&1
    run "dice-$m-$p" 10 "$PY" - "$OUT/eval-$m-cpu.json" "$OUT/eval-$m-$p.json" "$p" <<'EOF'
import json, sys
ref, got = (json.load(open(f))["per_image"]["dice"] * 100 for f in sys.argv[1:3])
bound = {"fp32": 0.1, "fp16": 0.5, "int8": 1.0}[sys.argv[3]]
print(f"Dice {got:.2f} vs CPU {ref:.2f} ({got - ref:+.2f} pt, bound {bound} pt)")
sys.exit(0 if abs(got - ref) <= bound else 1)
EOF
    sed -n 1p "$OUT/logs/dice-$m-$p.log" | sed "s/^/INFO dice-$m-$p /"
  done
done

# -- 4. CUDA graphs and GPU preprocessing, bit for bit, on real frames -------------------------------
cat >"$OUT/bitexact.py" <<'EOF'
import sys
import cv2
import numpy as np
import torch
from rtseg.runtime import load_engine

folder, clip, what = sys.argv[1], sys.argv[2], sys.argv[3]
plain = load_engine(folder)
h, w = plain.input_hw
cap = cv2.VideoCapture(clip)
frames = []
while len(frames) < 4:
    ok, f = cap.read()
    assert ok, "cannot read the clip"
    frames.append(cv2.resize(cv2.cvtColor(f, cv2.COLOR_BGR2RGB), (w, h), interpolation=cv2.INTER_AREA))
frames = np.stack(frames)
if what == "cudagraph":
    graph = load_engine(folder, cuda_graph=True)
    for n in (1, 4, 1):
        a, b = graph.infer_u8(frames[:n]), plain.infer_u8(frames[:n])
        assert np.array_equal(a, b), f"batch {n}: max |graph - plain| = {np.abs(a - b).max()}"
    assert graph.cuda_graph, "CUDA graph capture fell back to plain execution"
    print("CUDA graph == plain execution, bit for bit (batches 1, 4)")
else:
    x_cpu = plain.normalize(frames)                                   # NumPy path
    x_gpu = torch.empty((4, 3, h, w), dtype=torch.float32, device=plain.device)
    plain._normalize_into(torch.from_numpy(frames).to(plain.device), x_gpu)
    torch.cuda.synchronize()
    assert np.array_equal(x_gpu.cpu().numpy(), x_cpu), f"normalised input differs: {np.abs(x_gpu.cpu().numpy() - x_cpu).max()}"
    a, b = plain.infer_u8(frames), plain.infer(x_cpu)
    assert np.array_equal(a, b), f"logits differ: {np.abs(a - b).max()}"
    assert np.array_equal(plain.predict_u8(frames), plain.predict_u8(torch.from_numpy(frames).cuda()).cpu().numpy())
    print("GPU preprocessing == CPU preprocessing, bit for bit (inputs, logits, masks)")
EOF
run cudagraph 60 "$PY" "$OUT/bitexact.py" "$OUT/engines/default/tensorrt-fp16" "$CLIP" cudagraph
run gpu-preproc 60 "$PY" "$OUT/bitexact.py" "$OUT/engines/default/tensorrt-fp32" "$CLIP" preproc

# -- 5. stream and bench ----------------------------------------------------------------------------
run stream 120 rtseg stream --engine "$OUT/engines/default/tensorrt-fp16" --source "$CLIP" --output "$OUT/stream.mp4" \
  --batch-size 4 --json
grep -o '"fps"[^,]*' "$OUT/logs/stream.log" | head -1 | sed 's/^/INFO stream /'
run bench 180 rtseg bench --engine "$OUT/engines/default/tensorrt-fp32" --engine "$OUT/engines/default/tensorrt-fp16" \
  --engine "$OUT/engines/default/tensorrt-int8" --backend tensorrt --video "$CLIP" --batch-sizes 1,4,8 --seconds 2 \
  --stream-batch 4 --json --out "$OUT/bench.json"

echo "INFO total $(( $(date +%s) - T0 )) s, $FAILS failed check(s); logs in $OUT/logs"
[ "$FAILS" -eq 0 ]
