"""INT8 calibration: FP32 ONNX + real images → one Q/DQ ONNX for every backend (issue 5).

docs/architecture.md "Why one quantized ONNX". This module runs the steps; each concern lives in
its own module, imported from there (this module re-exports nothing):

* :mod:`rtseg.calib.images` — calibration source, deterministic image selection, the
  runtime's preprocessing (:func:`calib_source`, :func:`select_images`, :func:`preprocess_images`);
* :mod:`rtseg.calib.ranges` — activation ranges: ``minmax``, ``percentile``, ``entropy``
  (TensorRT's KL calibration, :func:`entropy_amax`, the default);
* :mod:`rtseg.calib.qdq` — the Q/DQ ONNX written by ONNX Runtime's ``quantize_static`` with the
  scheme :data:`QDQ_SCHEME`, canonicalised; :func:`openvino_unsafe_nodes`, :func:`qdq_summary`;
* :mod:`rtseg.runtime.tensorrt.cache` — TensorRT ≤ 10 calibration cache (:func:`write_tensorrt_cache`);
* :mod:`rtseg.calib.record` — the calibration folder's file names and its record (``calib.json``).

The scheme (:data:`QDQ_SCHEME`): weights signed int8, symmetric, per output channel; activations
signed int8, symmetric, per tensor; Q/DQ pairs only on the inputs of the compute ops
(:data:`QUANT_OP_TYPES`: Conv, ConvTranspose, MatMul, Gemm); biases stay float. That is the layout
TensorRT's explicit-quantization mode expects (:func:`rtseg.runtime.tensorrt.onnx_check.qdq_placement_issues`
finds nothing) and OpenVINO's low-precision transformations turn into int8 convolutions.

Crash guard: ONNX Runtime's default scheme segfaults OpenVINO 2026.4.1's compiler (static batch;
see :mod:`rtseg.calib.qdq`), so every Q/DQ ONNX is compiled by OpenVINO in a child process,
dynamic and static batch (``verify_openvino``, ``CalibOptions.verify``): a native crash becomes an
:class:`~rtseg.errors.RtsegError`, never a dead ``rtseg``.

Determinism: the images are chosen by sorting the candidates by ``sha256(f"{seed}:{relative path}")``
and taking the first N; preprocessing is the runtime's own (``Preprocessor`` + ``normalize``); ONNX
Runtime's temporary (augmented) models live in a private temporary folder and do not reach the
output. Two runs on the same inputs write the same Q/DQ ONNX bytes (``tests/calib/test_calibrate.py``).

Calibration folder (``calib/<model>-<method>-n<N>-s<seed>/`` by default): ``model.onnx`` (FP32),
``model.qdq.onnx`` (INT8 Q/DQ), ``calib.json`` (record: image list with SHA-256 of each file,
preprocessing, method, seed, scheme, tool versions) and, on request, ``calib.cache`` (TensorRT ≤ 10
calibration cache, :func:`write_tensorrt_cache`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import RtsegError
from ..runtime.tensorrt.cache import write_tensorrt_cache
from .images import DEFAULT_NUM_IMAGES, calib_source, preprocess_images, relative_name, select_images, sha256_file
from .qdq import (
    ACTIVATION_TYPES,
    DEFAULT_WEIGHT_BITS,
    QUANT_OP_TYPES,
    QdqScheme,
    openvino_unsafe_nodes,
    ort_quantization,
    qdq_summary,
    save_canonical,
    write_qdq,
)
from .ranges import DEFAULT_METHOD, DEFAULT_PERCENTILE, check_method, estimate_ranges, histogram_options
from .record import CALIB_FORMAT, CALIB_JSON, FP32_ONNX, QDQ_ONNX, TRT_CACHE

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
# FP32 ONNX → Q/DQ ONNX
# ------------------------------------------------------------------------------------------------
def _checked_data(model, data: np.ndarray) -> np.ndarray:
    """``data`` as C-contiguous float32, checked against the model's input ``[batch, 3, H, W]``."""
    inp = model.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in inp.type.tensor_type.shape.dim]
    data = np.ascontiguousarray(data, dtype=np.float32)
    if data.ndim != 4 or list(data.shape[1:]) != dims[1:]:
        raise RtsegError(f"calibration data has shape {tuple(data.shape)} but the model takes {dims}; "
                         f"preprocess to the model's input size")
    return data


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
            calibrator) or ``"percentile"`` (``percentile`` of |x|, in percent).
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
        RtsegError: no data (never random scales), a wrong data shape, an unknown method or
            activation type, ``weight_bits`` not 7 or 8, or ONNX Runtime failing to quantize.
    """
    from ..onnx_files import load_onnx

    check_method(method)
    if data is None or len(data) == 0:
        raise RtsegError("no calibration data; pass --calib-data DIR with representative images (rtseg never uses random scales)")
    model = load_onnx(onnx_path)
    data = _checked_data(model, data)
    if activation not in ACTIVATION_TYPES:
        raise RtsegError(f"unknown activation type {activation!r}; use one of {', '.join(ACTIVATION_TYPES)}")
    histogram = histogram_options(method, percentile)
    if weight_bits not in (7, 8):
        raise RtsegError(f"--weight-bits must be 7 or 8, got {weight_bits}")
    excluded = openvino_unsafe_nodes(model) if exclude_unsafe and op_types else {}
    scheme = QdqScheme(activation=activation, symmetric=symmetric, op_types=op_types, weight_bits=weight_bits)
    settings = {"method": method, "activation": activation, "symmetric": bool(symmetric),
                "op_types": list(op_types) if op_types else None,
                "percentile": float(percentile) if method == "percentile" else None,
                "histogram": histogram or None,
                "weight_bits": int(weight_bits), "excluded_nodes": excluded,
                "num_calibration_inputs": int(len(data))}
    qdq_path = Path(qdq_path)
    qdq_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rtseg-calib-") as tmp:
        with ort_quantization():
            ranges = estimate_ranges(onnx_path, data, model.graph.input[0].name, method, op_types, histogram, Path(tmp))
            raw = write_qdq(onnx_path, model, ranges, method, scheme, excluded)
        save_canonical(raw, qdq_path)
    return settings


# ------------------------------------------------------------------------------------------------
# checkpoint → calibration folder
# ------------------------------------------------------------------------------------------------
@dataclass
class CalibOptions:
    """Options of :func:`calibrate_checkpoint`.

    Attributes:
        calib_data: folder of representative images (or its ``images/``); ``None`` = the
            checkpoint's training split (``model.json`` ``data.root``, split ``train``).
        method: ``minmax`` | ``entropy`` | ``percentile``.
        num_images: how many images to use (all when fewer); seed: image-selection seed.
        out: calibration folder (default :func:`default_calib_dir`, relative to the CWD).
        img_size: (H, W) network input in pixels; default ``model.json`` ``input_size``.
        opset: ONNX opset of the FP32 export.
        verify: compile the Q/DQ ONNX with OpenVINO in a child process (crash guard) and compare
            it with ONNX Runtime on two images.
        trt_cache: also write ``calib.cache`` (TensorRT ≤ 10).
        percentile: for ``method="percentile"``, in percent; weight_bits: 8 or 7 (see
            :func:`calibrate_onnx`).
        onnx_path, export_info: reuse an FP32 ONNX already exported at this size and its export
            info (build-engine); ``None`` = export the checkpoint.
    """

    calib_data: str | Path | None = None
    method: str = DEFAULT_METHOD
    num_images: int = DEFAULT_NUM_IMAGES
    seed: int = 0
    out: str | Path | None = None
    img_size: tuple[int, int] | None = None
    opset: int = 17
    verify: bool = True
    trt_cache: bool = False
    percentile: float = DEFAULT_PERCENTILE
    weight_bits: int = DEFAULT_WEIGHT_BITS
    onnx_path: str | Path | None = None
    export_info: dict | None = None


@dataclass
class _Selection:
    """The calibration images of one run: ``chosen`` of ``num_candidates`` under ``root``."""

    chosen: list[Path]
    num_candidates: int
    root: Path
    source: dict[str, Any]


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


def _select(opts: CalibOptions, meta) -> _Selection:
    """Candidates of ``opts.calib_data`` (or the training split), then the seeded choice."""
    candidates, root, source = calib_source(opts.calib_data, meta)
    chosen = select_images(candidates, opts.num_images, opts.seed, root)
    return _Selection(chosen=chosen, num_candidates=len(candidates), root=root, source=source)


def _fp32_onnx(model, fp32: Path, hw: tuple[int, int], data: np.ndarray, opts: CalibOptions) -> dict[str, Any]:
    """Put the FP32 ONNX at ``fp32``: a copy of ``opts.onnx_path`` or a fresh export; its export info."""
    if opts.onnx_path is None:
        from ..export.onnx import export_onnx

        return export_onnx(model, fp32, hw, opset=opts.opset, sample=data[:2])
    if Path(opts.onnx_path).resolve() != fp32.resolve():
        import shutil

        from ..onnx_files import check_external_data

        check_external_data(opts.onnx_path)  # where it is: its external data is relative to its own folder
        shutil.copyfile(opts.onnx_path, fp32)
    return dict(opts.export_info or {})


def _preprocessing_record(hw: tuple[int, int], meta) -> dict[str, Any]:
    return {"input_hw": list(hw), "resize": meta.resize, "mean": list(meta.mean), "std": list(meta.std),
            "read": "cv2.imread → RGB", "interpolation": "INTER_AREA down / INTER_LINEAR up",
            "normalize": "(x/255 - mean)/std", "layout": "NCHW", "dtype": "float32"}


def _calib_record(ckpt: Path, meta, opts: CalibOptions, sel: _Selection, hw: tuple[int, int], out: Path,
                  settings: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """The ``calib.json`` record (``verified`` empty, ``tensorrt_cache`` None: filled afterwards)."""
    from ..checkpoint import weights_file

    entries = [{"file": relative_name(p, sel.root), "sha256": sha256_file(p)} for p in sel.chosen]
    listing = "".join(f"{e['file']}\t{e['sha256']}\n" for e in entries)
    fp32, qdq = out / FP32_ONNX, out / QDQ_ONNX
    return {
        "format": CALIB_FORMAT,
        "checkpoint": {"path": str(ckpt.resolve()), "sha256": sha256_file(weights_file(ckpt)),
                       **({"kind": "model folder"} if meta.imported else {})},
        "model": meta.model,
        "source": sel.source,
        "selection": f"first {opts.num_images} of {sel.num_candidates} candidates sorted by sha256('<seed>:<relative path>')",
        "seed": int(opts.seed),
        "method": opts.method,
        "num_images": len(entries),
        "images_sha256": hashlib.sha256(listing.encode()).hexdigest(),
        "images": entries,
        "preprocessing": _preprocessing_record(hw, meta),
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


def _openvino_check(qdq: Path, probe: np.ndarray, log) -> dict[str, Any]:
    """Compile ``qdq`` with OpenVINO in a child process and compare its logits with ONNX Runtime's on
    ``probe`` (``float32[n, 3, H, W]``); the ``verified.openvino`` entry of ``calib.json``.

    Raises:
        RtsegError: OpenVINO crashed or failed compiling the graph (from ``verify_openvino``).
    """
    from ..runtime.base import logits_to_mask
    from ..runtime.onnxruntime_backend import make_session
    from ..runtime.openvino_backend import openvino_version, verify_openvino

    log("checking the Q/DQ ONNX with OpenVINO in a child process")
    y = verify_openvino(qdq, probe, {"INFERENCE_PRECISION_HINT": "f32"})
    sess = make_session(qdq, num_threads=1)
    y_ort = sess.run(None, {sess.get_inputs()[0].name: probe})[0]
    return {"version": openvino_version(), "compiled": True, "output_finite": bool(np.isfinite(y).all()),
            "vs_onnxruntime": {"images": int(len(probe)), "max_abs_diff": float(np.max(np.abs(y - y_ort))),
                               "mask_agreement": float(np.mean(logits_to_mask(y) == logits_to_mask(y_ort)))}}


def _tensorrt_cache_entry(out: Path) -> dict[str, Any]:
    """Write ``out/calib.cache`` from ``out/model.qdq.onnx``; the ``tensorrt_cache`` entry of ``calib.json``."""
    write_tensorrt_cache(out / QDQ_ONNX, out / TRT_CACHE)
    return {"file": TRT_CACHE, "format": "TRT-8601-EntropyCalibration2 text (TensorRT <= 10)",
            "note": "use with the FP32 model.onnx, implicit quantization"}


def _no_log(msg: str) -> None:
    """The default ``log``: progress messages are dropped."""


def _model_and_meta(ckpt: Path, opts: CalibOptions):
    """``(PyTorch model, ModelMeta, options)`` of a checkpoint; for an imported model folder the model is
    ``None`` and ``options.onnx_path`` defaults to its ``model.onnx`` (its graph is fixed at its input size).

    Raises:
        RtsegError: a checkpoint that does not load, or an ``img_size`` other than a model folder's own.
    """
    from dataclasses import replace

    from ..checkpoint import MODEL_ONNX, is_model_folder, load_checkpoint, load_meta

    if not is_model_folder(ckpt):
        model, meta = load_checkpoint(ckpt)
        return model, meta, opts
    meta = load_meta(ckpt)
    if opts.img_size is not None and tuple(opts.img_size) != tuple(meta.input_hw):
        raise RtsegError(f"model folder {ckpt} is fixed at {meta.input_hw[1]}x{meta.input_hw[0]}; drop --img-size")
    if opts.onnx_path is None:
        opts = replace(opts, onnx_path=ckpt / MODEL_ONNX,
                       export_info={"opset": (meta.source or {}).get("opset"), "imported": True})
    return None, meta, opts


def calibrate_checkpoint(checkpoint: str | Path, options: CalibOptions | None = None, log=None) -> dict[str, Any]:
    """Checkpoint → ``model.onnx`` → ``model.qdq.onnx`` + ``calib.json`` in ``options.out``.

    Args:
        checkpoint: checkpoint folder (``model.safetensors`` + ``model.json``), or an imported model
            folder (:mod:`rtseg.byom`: its ``model.onnx`` is the FP32 graph, at its own input size;
            ``calib.json`` ``checkpoint.sha256`` is then that file's SHA-256).
        options: :class:`CalibOptions` (``None``: the defaults — training split, entropy, 100 images).
        log: ``log(message: str)`` for progress lines; ``None``: silent.

    Returns:
        the calibration record (also written to ``out/calib.json``) with ``"folder"`` added.

    Raises:
        RtsegError: unknown method, bad checkpoint, no calibration data, unreadable images, or a Q/DQ
            graph that OpenVINO cannot compile.
    """
    from ..checkpoint import resolve_checkpoint
    from ..safe_io import write_json

    opts = options if options is not None else CalibOptions()
    log = log or _no_log
    check_method(opts.method)
    ckpt = resolve_checkpoint(checkpoint)
    model, meta, opts = _model_and_meta(ckpt, opts)
    hw = tuple(int(v) for v in (opts.img_size or meta.input_hw))
    sel = _select(opts, meta)
    out = Path(opts.out) if opts.out is not None else default_calib_dir(meta.model, opts.method, opts.num_images, opts.seed)
    if out.exists() and not out.is_dir():
        raise RtsegError(f"--out {out} is a file; calibration writes a folder — pass a new or calibration folder name")
    out.mkdir(parents=True, exist_ok=True)
    log(f"calibration: {len(sel.chosen)} of {sel.num_candidates} images from {sel.root} (seed {opts.seed}, {opts.method})")
    data = preprocess_images(sel.chosen, hw, meta.resize, meta.mean, meta.std)
    info = _fp32_onnx(model, out / FP32_ONNX, hw, data, opts)
    settings = calibrate_onnx(out / FP32_ONNX, out / QDQ_ONNX, data, method=opts.method, percentile=opts.percentile,
                              weight_bits=opts.weight_bits)
    record = _calib_record(ckpt, meta, opts, sel, hw, out, settings, info)
    if opts.verify:  # a graph imported with its batch fixed at 1 takes one image at a time
        probe = data[:1] if (meta.source or {}).get("batch") == "fixed" else data[:2]
        record["verified"]["openvino"] = _openvino_check(out / QDQ_ONNX, probe, log)
    if opts.trt_cache:
        record["tensorrt_cache"] = _tensorrt_cache_entry(out)
    write_json(out / CALIB_JSON, record)
    record["folder"] = str(out)
    return record


def read_calib_record(folder: str | Path) -> dict[str, Any]:
    """Read ``calib.json`` of a calibration folder.

    Raises:
        RtsegError: not a calibration folder (no ``calib.json`` or no ``model.qdq.onnx``), or a record
            whose fields are of the wrong type, out of bounds or point outside the data folder
            (:mod:`rtseg.calib.record`).
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
    if isinstance(rec, dict) and rec.get("format") != CALIB_FORMAT:
        raise RtsegError(f"{f} has format {rec.get('format')!r}, expected {CALIB_FORMAT!r}; re-run 'rtseg calibrate'")
    from .record import check_calib_record

    return check_calib_record(rec, str(f))
