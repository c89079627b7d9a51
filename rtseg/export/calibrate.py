"""INT8 calibration: FP32 ONNX + real images → one Q/DQ ONNX for every backend (issue 5).

docs/architecture.md "Why one quantized ONNX". The Q/DQ graph is written by ONNX Runtime's
``quantize_static`` (QDQ format) with the scheme :data:`QDQ_SCHEME`:

* weights: signed int8, symmetric (zero point 0), per output channel;
* activations: signed int8, symmetric (zero point 0), per tensor;
* Q/DQ pairs only on the inputs of the compute ops (:data:`QUANT_OP_TYPES`: Conv, ConvTranspose,
  MatMul, Gemm); biases stay float.

That is the layout TensorRT's explicit-quantization mode expects (int8 with zero point 0, per-channel
weights — ConvTranspose on axis 0 —, per-tensor activations, no int32 bias DQ;
:func:`rtseg.export.trt_onnx_check.qdq_placement_issues` finds nothing) and OpenVINO's low-precision
transformations turn into int8 convolutions.

What was measured with OpenVINO 2026.4.1 on this AVX2 CPU (EUNet-s; see the engine report):

* ONNX Runtime's default scheme (uint8 asymmetric activations, Q/DQ on every op) **segfaults** the
  compiler when the batch is static (dynamic batch compiles). Quantizing BatchNormalization inputs
  alone, or HardSwish + Mul + Concat together, is enough to crash; uint8 Conv-only and int8
  symmetric (any op set) compile. Every Q/DQ ONNX is therefore compiled by OpenVINO in a child
  process, dynamic and static batch (:func:`verify_openvino`): a native crash becomes an
  :class:`~rtseg.errors.RtsegError`, never a dead ``rtseg``.
* With int8 activations, a Conv fed by a Concat of a shared tensor (EUNet's head) is computed
  **wrongly, silently** (:func:`openvino_unsafe_nodes`): such nodes stay float.
* Without VNNI, int8 is not faster than fp32 here (1×1 convs equal, depthwise int8 slower).
* Range estimator: ``entropy`` (TensorRT's KL calibration, :func:`entropy_amax`) is the default.
  On a (briefly) trained EUNet-s its int8 masks agreed with fp32 on 98.0–98.3 % of the pixels of 50
  Kvasir val/test images (OpenVINO and ONNX Runtime); ``minmax`` and ``percentile`` reached only
  87–97 % (activation outliers).

Determinism: the images are chosen by sorting the candidates by ``sha256(f"{seed}:{relative path}")``
and taking the first N (independent of file-system order and Python version); preprocessing is the
runtime's own (``Preprocessor`` + ``normalize``); ONNX Runtime's temporary (augmented) models live in
a private temporary folder and do not reach the output. Two runs on the same inputs write the same
Q/DQ ONNX bytes (``tests/test_calibrate.py``).

Calibration folder (``calib/<model>-<method>-n<N>-s<seed>/`` by default): ``model.onnx`` (FP32),
``model.qdq.onnx`` (INT8 Q/DQ), ``calib.json`` (record: image list with SHA-256 of each file,
preprocessing, method, seed, scheme, tool versions) and, on request, ``calib.cache`` (TensorRT ≤ 10
calibration cache, :func:`write_tensorrt_cache`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import os
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import RtsegError

METHODS = ("minmax", "entropy", "percentile")
DEFAULT_METHOD = "entropy"
DEFAULT_NUM_IMAGES = 100
DEFAULT_PERCENTILE = 99.999
DEFAULT_WEIGHT_BITS = 8
ENTROPY_BINS = 2048  # |x| histogram bins (TensorRT's entropy calibrator: 2048 bins, 128 int8 levels)
QUANT_OP_TYPES = ("Conv", "ConvTranspose", "MatMul", "Gemm")
CALIB_FORMAT = "rtseg-calib/1"
CALIB_JSON = "calib.json"
FP32_ONNX = "model.onnx"
QDQ_ONNX = "model.qdq.onnx"
TRT_CACHE = "calib.cache"

#: The quantization scheme every rtseg Q/DQ ONNX uses (recorded in ``calib.json``).
QDQ_SCHEME: dict[str, Any] = {
    "format": "QDQ",
    "weights": {"type": "int8", "symmetric": True, "granularity": "per-channel"},
    "activations": {"type": "int8", "symmetric": True, "granularity": "per-tensor"},
    "op_types": list(QUANT_OP_TYPES),
    "bias": "float",
    "tool": "onnxruntime.quantization.quantize_static",
}


# ------------------------------------------------------------------------------------------------
# image selection and preprocessing
# ------------------------------------------------------------------------------------------------
def _selection_key(seed: int, name: str) -> str:
    return hashlib.sha256(f"{int(seed)}:{name}".encode("utf-8")).hexdigest()


def select_images(candidates: Sequence[Path], num_images: int, seed: int = 0, root: Path | None = None) -> list[Path]:
    """Choose ``num_images`` of ``candidates`` reproducibly (all of them when there are fewer).

    Order: by ``sha256(f"{seed}:{name}")`` where ``name`` is the path relative to ``root`` (or the
    file name); the result is returned sorted by name.

    Raises:
        RtsegError: no candidates, or ``num_images < 1``.
    """
    if num_images < 1:
        raise RtsegError(f"--num-images must be ≥ 1, got {num_images}; calibration needs real images")
    if not candidates:
        raise RtsegError("no calibration images; pass --calib-data DIR with representative images (never random data)")

    def name(p: Path) -> str:
        return _rel(p, root)

    chosen = sorted(candidates, key=lambda p: _selection_key(seed, name(p)))[:num_images]
    return sorted(chosen, key=name)


def _rel(p: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return Path(p).resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return Path(p).name


def sha256_file(path: str | Path) -> str:
    """SHA-256 hex digest of a file."""
    from ..checkpoint import file_sha256

    return file_sha256(path)


def preprocess_images(paths: Iterable[Path], input_hw: tuple[int, int], resize: str,
                      mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Read images exactly as the runtime does → ``float32[N, 3, H, W]`` normalised RGB.

    ``read_image`` (OpenCV, → RGB) → ``Preprocessor(input_hw, resize)`` (stretch or letterbox;
    area interpolation down, bilinear up) → ``(x/255 − mean)/std`` → NCHW.

    Raises:
        RtsegError: an unreadable image.
    """
    from ..data.folder import read_image
    from ..data.transforms import Preprocessor, normalize

    pre = Preprocessor(tuple(input_hw), resize)
    out = [normalize(pre(read_image(p))[0], mean, std) for p in paths]
    return np.stack(out).astype(np.float32, copy=False)


def default_calib_source(meta) -> tuple[list[Path], Path, dict[str, Any]]:
    """Images of the checkpoint's training split (``model.json`` → ``data.root``, split ``train``).

    Returns ``(image paths, root, source record)``.

    Raises:
        RtsegError: the checkpoint names no data root, or it is missing — pass ``--calib-data``.
    """
    from ..data.folder import load_split

    data = getattr(meta, "data", None) or {}
    root = data.get("root")
    if not root:
        raise RtsegError("no calibration data: the checkpoint's model.json names no training data root; "
                         "pass --calib-data DIR with representative images (rtseg never calibrates on random data)")
    root = Path(root)
    if not root.is_dir():
        raise RtsegError(f"no calibration data: the checkpoint's training data {root} is not on this machine; "
                         f"pass --calib-data DIR with representative images")
    samples = load_split(root, "train")
    return [s.image for s in samples], root, {"root": str(root.resolve()), "split": "train",
                                             "fingerprint": data.get("fingerprint")}


def calib_source(calib_data: str | Path | None, meta) -> tuple[list[Path], Path, dict[str, Any]]:
    """Candidate images: ``calib_data`` (a folder, its ``images/`` sub-folder, or one file) or the
    default (:func:`default_calib_source`). Returns ``(paths, root, source record)``.

    Raises:
        RtsegError: missing folder or no images in it.
    """
    if calib_data is None:
        return default_calib_source(meta)
    from ..data.folder import list_images

    p = Path(calib_data)
    if not p.exists():
        raise RtsegError(f"calibration data {p} does not exist; pass --calib-data DIR with representative images")
    files = list_images(p)
    root = p if p.is_dir() else p.parent
    return files, root, {"root": str(root.resolve()), "split": None, "fingerprint": None}


# ------------------------------------------------------------------------------------------------
# quantization
# ------------------------------------------------------------------------------------------------
def _reader(data: np.ndarray, input_name: str):
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        """Feeds ``data[i:i+1]``; ``set_range`` lets ORT process the set in strides (bounded memory)."""

        def __init__(self):
            self.start, self.end, self.i = 0, len(data), 0

        def __len__(self):
            return len(data)

        def set_range(self, start_index: int, end_index: int):
            self.start, self.end, self.i = start_index, min(end_index, len(data)), start_index

        def get_next(self):
            if self.i >= self.end:
                return None
            x = data[self.i:self.i + 1]
            self.i += 1
            return {input_name: x}

        def rewind(self):
            self.i = self.start

    return _Reader()


def _xlogx(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)


def entropy_amax(hist: np.ndarray, edges: np.ndarray, num_bits: int = 8, start_bin: int = 128) -> float:
    """TensorRT's entropy (KL-divergence) calibration of one tensor: the clipping value ``amax``.

    Args:
        hist: counts of ``|x|`` over the bins ``edges`` (``len(edges) == len(hist) + 1``, from 0).
        num_bits: 8 → 128 quantized levels (signed int8 half-range).
        start_bin: smallest candidate (TensorRT / pytorch-quantization: 128).

    Every candidate ``i`` in ``start_bin..len(hist)`` is scored, as pytorch-quantization's
    ``_compute_amax_entropy`` does: the reference distribution is ``hist[:i]`` with the outliers
    added to its last bin; the candidate distribution merges ``hist[:i]`` into 128 levels and spreads
    each level evenly over its non-empty bins; ``amax = edges[i]`` for the least
    KL(reference ‖ candidate), the last one on ties. (The zero bin is set to its neighbour's
    count first, as there.) Closed form with prefix sums, all candidates at once:
    ``KL = E/T − cross/T + log(Q/T)`` with ``E = Σ p̃ log p̃``, ``cross = Σ_levels S̃ log(S/C)``,
    ``T`` all counts, ``Q`` the counts below ``i`` (S, C: a level's count and non-empty bins).
    """
    bins = np.asarray(hist, dtype=np.float64).copy()
    n = bins.size
    if n <= start_bin or bins.sum() <= 0:
        return float(edges[-1])
    bins[0] = bins[1]
    nq = 1 << (num_bits - 1)
    zero = np.zeros(1)
    P = np.concatenate([zero, np.cumsum(bins)])
    NZ = np.concatenate([zero, np.cumsum(bins > 0)])
    PL = np.concatenate([zero, np.cumsum(_xlogx(bins))])
    T = P[-1]
    I = np.arange(start_bin, n + 1)
    g = np.arange(nq + 1)
    B = (g[None, :] * I[:, None] + nq - 1) // nq  # first bin of each level; B[:, nq] == I
    S = P[B[:, 1:]] - P[B[:, :-1]]
    C = NZ[B[:, 1:]] - NZ[B[:, :-1]]
    tail = T - P[I]
    last = bins[I - 1]
    E = PL[I - 1] + _xlogx(last + tail)
    St = S.copy()
    St[:, -1] += tail
    cross = np.where(C > 0, St * np.log(np.where(C > 0, S, 1.0) / np.maximum(C, 1)), 0.0).sum(1)
    Q = P[I]
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = E / T - cross / T + np.log(Q / T)
    kl[(last == 0) & (tail > 0)] = np.inf  # mass where the candidate has none
    kl[Q <= 0] = np.inf
    if not np.isfinite(kl).any():
        return float(edges[-1])
    best = np.flatnonzero(kl <= kl.min() + 1e-12 * abs(kl.min()))[-1]
    return float(edges[I[best]])


def _stride(n: int, cap: int = 8) -> int:
    return max(d for d in range(1, min(cap, n) + 1) if n % d == 0)


def openvino_unsafe_nodes(model) -> dict[str, str]:
    """Compute nodes whose Q/DQ OpenVINO 2026.4's CPU plugin computes wrongly: ``{node name: reason}``.

    Found here (tests/test_calibrate.py keeps the regression): a Conv fed by a ``Concat`` one of whose
    inputs also feeds another branch (a U-Net skip, e.g. EUNet's head ``Conv(Concat(up, x0))``).
    OpenVINO's low-precision transformations move the Concat's FakeQuantize onto the shared tensor and
    then *convert* it f32→i8 without scaling (a ``Reorder f32→i8`` in the runtime graph): the outputs
    are garbage (EUNet: mask agreement 88 % vs 99.7 % in ONNX Runtime) — silently. Those nodes stay
    float; for EUNet that is the 1×1 head (< 1 % of the MACs).
    """
    consumers: dict[str, int] = {}
    producer = {}
    for n in model.graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
        for o in n.output:
            producer[o] = n
    unsafe = {}
    for n in model.graph.node:
        if n.op_type not in QUANT_OP_TYPES or not n.input:
            continue
        src = producer.get(n.input[0])
        if src is not None and src.op_type == "Concat" and any(consumers.get(i, 0) > 1 for i in src.input):
            unsafe[n.name] = "input is a Concat of a shared tensor: OpenVINO 2026.4 mis-quantizes it (f32→i8 convert)"
    return unsafe


def calibrate_onnx(onnx_path: str | Path, qdq_path: str | Path, data: np.ndarray, method: str = DEFAULT_METHOD,
                   percentile: float = DEFAULT_PERCENTILE, activation: str = "int8", symmetric: bool = True,
                   op_types: Sequence[str] | None = QUANT_OP_TYPES, weight_bits: int = DEFAULT_WEIGHT_BITS,
                   exclude_unsafe: bool = True) -> dict[str, Any]:
    """Quantize an FP32 ONNX into a Q/DQ ONNX calibrated on ``data``.

    Args:
        onnx_path: FP32 ONNX with one input ``float32[batch, 3, H, W]``.
        qdq_path: output Q/DQ ONNX (written atomically).
        data: ``float32[N, 3, H, W]`` preprocessed calibration images (N ≥ 1), fed one at a time.
        method: ``"minmax"`` (max |x|), ``"entropy"`` (KL divergence, TensorRT's entropy
            calibrator) or ``"percentile"`` (``percentile`` of |x|).
        activation, symmetric, op_types: the scheme (:data:`QDQ_SCHEME`). Only the defaults are
            supported for deployment; ``activation="uint8", symmetric=False, op_types=None`` is
            ONNX Runtime's default, kept for the OpenVINO crash regression test.
        weight_bits: 8 (range ±127) or 7 (±63, ORT's ``reduce_range``): 7 avoids the int16
            saturation of ``vpmaddubsw`` on CPUs without VNNI (AVX2 only); measured here it lifted
            ONNX Runtime's int8 mask agreement with fp32 from 98.0 to 98.8 % (OpenVINO: unchanged).
        exclude_unsafe: keep :func:`openvino_unsafe_nodes` in float.

    Returns:
        the quantization settings as recorded in ``calib.json``.

    Raises:
        RtsegError: no data (never random scales), a wrong data shape, or an unknown method.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, create_calibrator, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    if method not in METHODS:
        raise RtsegError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    if data is None or len(data) == 0:
        raise RtsegError("no calibration data; pass --calib-data DIR with representative images (rtseg never uses random scales)")
    model = onnx.load(str(onnx_path))
    inp = model.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in inp.type.tensor_type.shape.dim]
    data = np.ascontiguousarray(data, dtype=np.float32)
    if data.ndim != 4 or list(data.shape[1:]) != dims[1:]:
        raise RtsegError(f"calibration data has shape {tuple(data.shape)} but the model takes {dims}; preprocess to the model's input size")

    cal = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}[method]
    act_type = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[activation]
    extra: dict[str, Any] = {
        "ActivationSymmetric": bool(symmetric),
        "WeightSymmetric": True,
        "QuantizeBias": False,
        "QDQDisableWeightAdjustForInt32Bias": True,  # biases stay float: no int32-bias weight-scale tweak
    }
    # Ranges are computed here, not inside quantize_static: its histogram calibrators cannot be given
    # num_bins, and ORT's entropy default (128 bins, 128 quantized bins) has a single candidate
    # threshold — it is minmax — while its 2048-bin search is a Python loop (~100 s per model).
    # "entropy" is TensorRT's KL search (entropy_amax) on ORT's 2048-bin |x| histograms.
    calib_opts: dict[str, Any] = {}
    if method in ("entropy", "percentile"):
        calib_opts = {"num_bins": ENTROPY_BINS, "percentile": float(percentile), "symmetric": True}
    if weight_bits not in (7, 8):
        raise RtsegError(f"--weight-bits must be 7 or 8, got {weight_bits}")
    excluded = openvino_unsafe_nodes(model) if exclude_unsafe and op_types else {}
    if op_types:
        # ORT quantizes ConvTranspose weights per output channel (axis 1); TensorRT's deconvolution
        # kernels take per-channel scales on axis 0 only (NVIDIA/TensorRT#2380) — rtseg.export.trt_onnx_check
        inits = {t.name for t in model.graph.initializer}
        overrides = {n.input[1]: [{"axis": 0}] for n in model.graph.node
                     if n.op_type == "ConvTranspose" and len(n.input) > 1 and n.input[1] in inits}
        if overrides:
            extra["TensorQuantOverrides"] = overrides
    settings = {"method": method, "activation": activation, "symmetric": bool(symmetric),
                "op_types": list(op_types) if op_types else None,
                "percentile": float(percentile) if method == "percentile" else None,
                "histogram": calib_opts or None,
                "weight_bits": int(weight_bits), "excluded_nodes": excluded,
                "num_calibration_inputs": int(len(data))}
    qdq_path = Path(qdq_path)
    qdq_path.parent.mkdir(parents=True, exist_ok=True)
    import logging

    ort_log = logging.getLogger()
    level = ort_log.level
    with tempfile.TemporaryDirectory(prefix="rtseg-calib-") as tmp:
        tmp_out = Path(tmp) / "model.qdq.onnx"
        ranges = Path(tmp) / "ranges.json"
        ort_log.setLevel(logging.ERROR)  # ORT warns through the root logger ("consider pre-processing ...")
        try:
            # ORT's histogram calibrators print() progress; keep the user's stdout clean
            with contextlib.redirect_stdout(io.StringIO()):
                collect = CalibrationMethod.Percentile if method == "entropy" else cal  # |x| histograms
                calibrator = create_calibrator(Path(onnx_path), list(op_types) if op_types else None,
                                               augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                               calibrate_method=collect, extra_options=calib_opts)
                reader, stride = _reader(data, inp.name), _stride(len(data))
                for start in range(0, len(data), stride):  # bounded memory: histograms merge per stride
                    reader.set_range(start, start + stride)
                    calibrator.collect_data(reader)
                if method == "entropy":
                    tensors = {}
                    for name, (hist, edges, *_rest) in sorted(calibrator.collector.histogram_dict.items()):
                        amax = np.asarray(entropy_amax(np.asarray(hist), np.asarray(edges)), dtype=np.float32)
                        tensors[name] = TensorData(lowest=-amax, highest=amax)
                    tensors_range = TensorsData(CalibrationMethod.Entropy, tensors)
                else:
                    tensors_range = calibrator.compute_data()
                save_tensors_data(tensors_range, ranges)
                del calibrator
                quantize_static(str(onnx_path), str(tmp_out), None, quant_format=QuantFormat.QDQ,
                                activation_type=act_type, weight_type=QuantType.QInt8, per_channel=True,
                                reduce_range=weight_bits == 7, nodes_to_exclude=sorted(excluded) or None,
                                op_types_to_quantize=list(op_types) if op_types else None,
                                calibrate_method=cal, extra_options=extra, calibration_cache_path=ranges)
        except RtsegError:
            raise
        except Exception as e:  # ORT raises ValueError/RuntimeError/onnx errors
            raise RtsegError(f"quantization failed ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
                             f"try another --method or report the model") from None
        finally:
            ort_log.setLevel(level)
        q = onnx.load(str(tmp_out))
        _canonicalize(q)
        tmp_final = qdq_path.with_name(f".{qdq_path.name}.tmp{os.getpid()}")
        tmp_final.write_bytes(q.SerializeToString())
        os.replace(tmp_final, qdq_path)
    return settings


def _canonicalize(model) -> None:
    """Remove what could make two runs' bytes differ: tool-written doc strings and metadata."""
    model.graph.doc_string = ""
    for node in model.graph.node:
        node.doc_string = ""


def qdq_summary(path: str | Path) -> dict[str, Any]:
    """Count the Q/DQ nodes of an ONNX and check the scheme: ``{"quantize", "dequantize",
    "int8_zero_points", "nonzero_zero_points", "quantized_ops": {op_type: n}}``."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    consumers: dict[str, list] = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    q = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    zps_int8 = nonzero = 0
    for n in q + dq:
        if len(n.input) > 2 and n.input[2] in inits:
            z = numpy_helper.to_array(inits[n.input[2]])
            zps_int8 += int(z.dtype == np.int8)
            nonzero += int(np.any(z != 0))
    ops: dict[str, int] = {}
    for n in dq:
        for c in consumers.get(n.output[0], []):
            ops[c.op_type] = ops.get(c.op_type, 0) + 1
    return {"quantize": len(q), "dequantize": len(dq), "int8_zero_points": zps_int8,
            "nonzero_zero_points": nonzero, "quantized_ops": dict(sorted(ops.items()))}


# ------------------------------------------------------------------------------------------------
# TensorRT <= 10 calibration cache
# ------------------------------------------------------------------------------------------------
def activation_scales(qdq_path: str | Path) -> dict[str, float]:
    """Per-tensor activation scales of a Q/DQ ONNX: ``{float tensor name: scale}`` (the tensor that
    feeds each activation ``QuantizeLinear``)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(qdq_path))
    inits = {t.name: t for t in m.graph.initializer}
    scales: dict[str, float] = {}
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits and n.input[1] in inits:
            s = numpy_helper.to_array(inits[n.input[1]])
            if s.size == 1:
                scales[n.input[0]] = float(s.reshape(()))
    return scales


def write_tensorrt_cache(qdq_path: str | Path, out: str | Path, trt_version: int = 8601,
                         calibrator: str = "EntropyCalibration2") -> Path:
    """Write a TensorRT ≤ 10 (implicit-quantization) calibration cache from a Q/DQ ONNX's scales.

    Layout (TensorRT's ``IInt8Calibrator::writeCalibrationCache`` text format): a header line
    ``TRT-<version as int, e.g. 8601>-<calibrator name>``, then one line per tensor
    ``<tensor name>: <scale as big-endian IEEE-754 float32, 8 hex digits>``. Tensor names are the
    FP32 ONNX's (the ONNX parser keeps them); the scale is ``amax / 127``. Build the TensorRT
    engine from the FP32 ``model.onnx`` with this cache, not from the Q/DQ ONNX.

    Returns the cache path.
    """
    scales = activation_scales(qdq_path)
    if not scales:
        raise RtsegError(f"{qdq_path} has no activation scales; re-run 'rtseg calibrate'")
    lines = [f"TRT-{int(trt_version)}-{calibrator}"]
    lines += [f"{name}: {struct.pack('>f', s).hex()}" for name, s in scales.items()]
    out = Path(out)
    out.write_text("\n".join(lines) + "\n")
    return out


def read_tensorrt_cache(path: str | Path) -> tuple[str, dict[str, float]]:
    """Parse a TensorRT calibration cache → ``(header, {tensor name: scale})``.

    Raises:
        RtsegError: not a TensorRT calibration cache.
    """
    lines = Path(path).read_text().splitlines()
    if not lines or not lines[0].startswith("TRT-"):
        raise RtsegError(f"{path} is not a TensorRT calibration cache (first line must be TRT-<version>-<calibrator>)")
    scales = {}
    for ln in lines[1:]:
        if not ln.strip():
            continue
        name, _, hexval = ln.rpartition(": ")
        if not name or len(hexval) != 8:
            raise RtsegError(f"{path}: bad line {ln!r}; expected '<tensor>: <8 hex digits>'")
        scales[name] = struct.unpack(">f", bytes.fromhex(hexval))[0]
    return lines[0], scales


# ------------------------------------------------------------------------------------------------
# the whole step
# ------------------------------------------------------------------------------------------------
def tool_versions() -> dict[str, str]:
    """Versions of the tools that shape the Q/DQ ONNX (recorded in ``calib.json``)."""
    import cv2
    import onnx
    import onnxruntime
    import torch

    from .. import __version__

    v = {"rtseg": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
         "onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "opencv": cv2.__version__,
         "python": sys.version.split()[0]}
    try:
        from ..runtime.openvino_backend import openvino_version

        v["openvino"] = openvino_version()
    except ImportError:
        pass
    return v


def default_calib_dir(model: str, method: str, num_images: int, seed: int) -> Path:
    """``calib/<model>-<method>-n<num_images>-s<seed>`` relative to the current directory."""
    return Path("calib") / f"{model}-{method}-n{num_images}-s{seed}"


def calibrate_checkpoint(checkpoint: str | Path, calib_data: str | Path | None = None, method: str = DEFAULT_METHOD,
                         num_images: int = DEFAULT_NUM_IMAGES, seed: int = 0, out: str | Path | None = None,
                         img_size: tuple[int, int] | None = None, opset: int = 17, verify: bool = True,
                         trt_cache: bool = False, percentile: float = DEFAULT_PERCENTILE,
                         weight_bits: int = DEFAULT_WEIGHT_BITS,
                         onnx_path: str | Path | None = None, export_info: dict | None = None,
                         log=None) -> dict[str, Any]:
    """Checkpoint → ``model.onnx`` → ``model.qdq.onnx`` + ``calib.json`` in ``out``.

    Args:
        checkpoint: checkpoint folder (``model.safetensors`` + ``model.json``).
        calib_data: folder of representative images (or its ``images/``); ``None`` = the
            checkpoint's training split (``model.json`` ``data.root``, split ``train``).
        method: ``minmax`` | ``entropy`` | ``percentile``.
        num_images: how many images to use (all when fewer); seed: image-selection seed.
        out: calibration folder (default :func:`default_calib_dir`, relative to the CWD).
        img_size: (H, W) network input; default ``model.json`` ``input_size``.
        verify: compile the Q/DQ ONNX with OpenVINO in a child process (crash guard).
        trt_cache: also write ``calib.cache`` (TensorRT ≤ 10).
        percentile, weight_bits: see :func:`calibrate_onnx`.
        onnx_path, export_info: reuse an FP32 ONNX already exported at this size (build-engine).

    Returns:
        the calibration record (also written to ``out/calib.json``) with ``"folder"`` added.

    Raises:
        RtsegError: bad checkpoint, no calibration data, unreadable images, or a Q/DQ graph that
            OpenVINO cannot compile.
    """
    from ..checkpoint import load_checkpoint, resolve_checkpoint, write_json
    from .onnx import export_onnx

    log = log or (lambda msg: None)
    if method not in METHODS:
        raise RtsegError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    ckpt = resolve_checkpoint(checkpoint)
    model, meta = load_checkpoint(ckpt)
    hw = tuple(int(v) for v in (img_size or meta.input_hw))
    candidates, root, source = calib_source(calib_data, meta)
    chosen = select_images(candidates, num_images, seed, root)
    out = Path(out) if out is not None else default_calib_dir(meta.model, method, num_images, seed)
    out.mkdir(parents=True, exist_ok=True)
    log(f"calibration: {len(chosen)} of {len(candidates)} images from {root} (seed {seed}, {method})")
    data = preprocess_images(chosen, hw, meta.resize, meta.mean, meta.std)

    fp32 = out / FP32_ONNX
    if onnx_path is not None and Path(onnx_path).resolve() != fp32.resolve():
        import shutil

        shutil.copyfile(onnx_path, fp32)
        info = dict(export_info or {})
    elif onnx_path is not None:
        info = dict(export_info or {})
    else:
        info = export_onnx(model, fp32, hw, opset=opset, sample=data[:2])
    qdq = out / QDQ_ONNX
    settings = calibrate_onnx(fp32, qdq, data, method=method, percentile=percentile, weight_bits=weight_bits)
    entries = [{"file": _rel(p, root), "sha256": sha256_file(p)} for p in chosen]
    listing = "".join(f"{e['file']}\t{e['sha256']}\n" for e in entries)
    record: dict[str, Any] = {
        "format": CALIB_FORMAT,
        "checkpoint": {"path": str(ckpt.resolve()), "sha256": sha256_file(ckpt / "model.safetensors")},
        "model": meta.model,
        "source": source,
        "selection": f"first {num_images} of {len(candidates)} candidates sorted by sha256('<seed>:<relative path>')",
        "seed": int(seed),
        "method": method,
        "num_images": len(entries),
        "images_sha256": hashlib.sha256(listing.encode()).hexdigest(),
        "images": entries,
        "preprocessing": {"input_hw": list(hw), "resize": meta.resize, "mean": list(meta.mean), "std": list(meta.std),
                          "read": "cv2.imread → RGB", "interpolation": "INTER_AREA down / INTER_LINEAR up",
                          "normalize": "(x/255 - mean)/std", "layout": "NCHW", "dtype": "float32"},
        "quantization": {**QDQ_SCHEME, **settings},
        "onnx_file": FP32_ONNX, "onnx_sha256": sha256_file(fp32),
        "qdq_file": QDQ_ONNX, "qdq_sha256": sha256_file(qdq),
        "qdq_summary": qdq_summary(qdq),
        "export": {k: info.get(k) for k in ("opset", "max_abs_diff", "tolerance", "torch_version")},
        "tools": tool_versions(),
        "verified": {},
        "tensorrt_cache": None,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if verify:
        from ..runtime.openvino_backend import openvino_version

        from ..runtime.onnxruntime_backend import make_session

        log("checking the Q/DQ ONNX with OpenVINO in a child process")
        probe = data[:2]
        from ..runtime.openvino_backend import verify_openvino

        y = verify_openvino(qdq, probe, {"INFERENCE_PRECISION_HINT": "f32"})
        sess = make_session(qdq, num_threads=1)
        y_ort = sess.run(None, {sess.get_inputs()[0].name: probe})[0]
        from ..runtime.base import logits_to_mask

        record["verified"]["openvino"] = {
            "version": openvino_version(), "compiled": True, "output_finite": bool(np.isfinite(y).all()),
            "vs_onnxruntime": {"images": int(len(probe)), "max_abs_diff": float(np.max(np.abs(y - y_ort))),
                               "mask_agreement": float(np.mean(logits_to_mask(y) == logits_to_mask(y_ort)))}}
    if trt_cache:
        write_tensorrt_cache(qdq, out / TRT_CACHE)
        record["tensorrt_cache"] = {"file": TRT_CACHE, "format": "TRT-8601-EntropyCalibration2 text (TensorRT <= 10)",
                                    "note": "use with the FP32 model.onnx, implicit quantization"}
    write_json(out / CALIB_JSON, record)
    record["folder"] = str(out)
    return record


def read_calib_record(folder: str | Path) -> dict[str, Any]:
    """Read ``calib.json`` of a calibration folder.

    Raises:
        RtsegError: not a calibration folder (no ``calib.json`` or no ``model.qdq.onnx``).
    """
    folder = Path(folder)
    f = folder / CALIB_JSON
    if not f.is_file() or not (folder / QDQ_ONNX).is_file():
        raise RtsegError(f"{folder} is not a calibration folder ({CALIB_JSON} and {QDQ_ONNX} expected); "
                         f"create one with 'rtseg calibrate --checkpoint CKPT'")
    try:
        rec = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RtsegError(f"{f} is unreadable ({e}); re-run 'rtseg calibrate'") from None
    if rec.get("format") != CALIB_FORMAT:
        raise RtsegError(f"{f} has format {rec.get('format')!r}, expected {CALIB_FORMAT!r}; re-run 'rtseg calibrate'")
    return rec
