"""OpenVINO INT8 by NNCF, OpenVINO's own quantizer — the alternative to rtseg's Q/DQ + gate repair.

rtseg's int8 path writes one Q/DQ ONNX (``rtseg.calib.calibrate``) and repairs an engine that fails
the accuracy gate by keeping layers in float, ranked in the engine's own backend
(``rtseg.gate.check``). NNCF quantizes the OpenVINO model itself:

* :func:`quantize_nncf` with ``accuracy_control=False``: ``nncf.quantize`` (post-training
  quantization, its default "performance" preset: symmetric int8 weights and activations, fast
  bias correction) on the same calibration images rtseg uses;
* with ``accuracy_control=True``: ``nncf.quantize_with_accuracy_control``, which reverts the layers
  that cost most of the task metric back to float until the drop is at most ``max_drop_pt`` — what
  rtseg's gate repair does for OpenVINO. Its validation function is rtseg's gate metric
  (:func:`rtseg.gate.check.task_score`: per-image Dice ×100 / mIoU ×100, predictions mapped back to
  each image's resolution) on the gate images.

:func:`layer_precisions` reads from the compiled model which compute layers OpenVINO runs in int8
and which in float, so both paths are compared on what the CPU really executes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import RtsegError
from ..runtime.base import Backend

#: OpenVINO CPU runtime layer types that carry weights (the ones int8 quantization is for)
COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul")


def nncf_version() -> str:
    """The installed NNCF version.

    Raises:
        RtsegError: NNCF is not installed (``pip install 'rtseg[nncf]'``).
    """
    from ..errors import require

    return str(require("nncf", "nncf", "--int8-quantizer nncf (or use rtseg's own int8 path, the default)").__version__)


class CompiledBackend(Backend):
    """A :class:`~rtseg.runtime.base.Backend` around an OpenVINO ``CompiledModel`` (NNCF hands its
    candidates to the validation function compiled), so the gate metric scores it like any engine.

    ``infer(float32[N, 3, H, W]) -> float32[N, C, H, W]`` logits.
    """

    name = "openvino-compiled"

    def __init__(self, compiled, model_meta: dict, input_hw: tuple[int, int]):
        super().__init__(precision="int8", input_hw=input_hw, num_classes=int(model_meta.get("num_classes", 1)),
                         mean=tuple(model_meta["mean"]), std=tuple(model_meta["std"]), meta={"model": model_meta},
                         max_batch=None)
        self._request = compiled.create_infer_request()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.check_nchw(batch)
        out = self._request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.array(out[0], dtype=np.float32, copy=True)


def layer_precisions(compiled) -> dict[str, Any]:
    """Which compute layers (:data:`COMPUTE_LAYERS`) of a compiled OpenVINO CPU model run in int8.

    Returns:
        ``{"int8": n, "float": n, "float_layers": [names]}`` from the runtime model's
        ``layerType`` / ``runtimePrecision`` (what the CPU plugin executes after its int8
        transformations).
    """
    def value(rt, key: str) -> str:
        return rt[key].astype(str) if key in rt else ""

    int8, floats = 0, []
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if value(rt, "layerType") not in COMPUTE_LAYERS:
            continue
        if value(rt, "runtimePrecision").lower() in ("i8", "u8"):
            int8 += 1
        else:
            floats.append(op.get_friendly_name())
    return {"int8": int8, "float": len(floats), "float_layers": floats}


@dataclass
class NNCFOptions:
    """Settings of :func:`quantize_nncf`.

    Attributes:
        accuracy_control: ``nncf.quantize_with_accuracy_control`` (needs ``gate``) instead of ``nncf.quantize``.
        max_drop_pt: allowed drop of the gate metric in points (NNCF ``max_drop`` = this / 100, absolute).
        threads: ``INFERENCE_NUM_THREADS`` of the models NNCF compiles (``None``: OpenVINO's default).
        max_num_iterations: accuracy control: most layers reverted to float (NNCF's own default otherwise).
    """

    accuracy_control: bool = True
    max_drop_pt: float = 0.5
    threads: int | None = None
    max_num_iterations: int | None = None


def quantize_nncf(fp32_onnx: str | Path, out_xml: str | Path, calib_x: np.ndarray, gate=None,
                  options: NNCFOptions | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Quantize the FP32 ONNX with NNCF and save the int8 OpenVINO IR.

    Args:
        fp32_onnx: the FP32 ``model.onnx`` (input ``float32[N, 3, H, W]``, N dynamic).
        out_xml: where to save the IR (``model.xml`` + ``.bin``, float weights kept uncompressed).
        calib_x: ``float32[n, 3, H, W]``: rtseg's calibration images, preprocessed (the same
            selection, seed and preprocessing as ``rtseg calibrate``).
        gate: a :class:`rtseg.gate.check.GateSet` (labelled held-out images) with ``model_meta``
            attached as ``gate.model_meta`` — required with ``accuracy_control``.
        options: :class:`NNCFOptions`.

    Returns:
        ``{"tool": "nncf", "nncf_version", "mode", "calibration_images", "max_drop_pt",
        "layers": layer_precisions(...), "seconds"}`` (the ``engine.json`` record of this path).

    Raises:
        RtsegError: NNCF missing, accuracy control without gate images, or NNCF failing on the model.
    """
    import openvino as ov

    o = options or NNCFOptions()
    version = nncf_version()
    import nncf

    log = log or (lambda m: None)
    x = np.asarray(calib_x, np.float32)
    calib = nncf.Dataset([x[i:i + 1] for i in range(len(x))])
    from ..onnx_files import check_external_data

    check_external_data(fp32_onnx)
    model = ov.Core().read_model(str(fp32_onnx))
    t0 = time.perf_counter()
    if o.accuracy_control:
        if gate is None:
            raise RtsegError("NNCF accuracy control needs labelled gate images; pass --gate-data or drop accuracy control")
        quantized = _with_accuracy_control(nncf, model, calib, len(x), gate, o, log)
        mode = "quantize_with_accuracy_control"
    else:
        log(f"nncf.quantize on {len(x)} calibration images")
        quantized = nncf.quantize(model, calib, subset_size=len(x))
        mode = "quantize"
    seconds = time.perf_counter() - t0
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
    compiled = ov.Core().compile_model(str(out_xml), "CPU", _config(o.threads))
    return {"tool": "nncf", "nncf_version": version, "mode": mode, "calibration_images": len(x),
            "max_drop_pt": o.max_drop_pt if o.accuracy_control else None, "layers": layer_precisions(compiled),
            "seconds": round(seconds, 2)}


def _config(threads: int | None) -> dict[str, str]:
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(int(threads))
    return config


def _with_accuracy_control(nncf, model, calib, n_calib: int, gate, o: NNCFOptions, log):
    """``nncf.quantize_with_accuracy_control`` with rtseg's gate metric (points → NNCF's fraction)."""
    from .check import GateSet, task_score

    hw = tuple(int(v) for v in gate.model_meta["input_size"])
    indices = list(range(len(gate.samples)))

    def validate(compiled, items) -> float:
        subset = GateSet([gate.samples[i] for i in items], gate.reader, gate.description, gate.metric)
        return task_score(CompiledBackend(compiled, gate.model_meta, hw), subset) / 100.0

    log(f"nncf.quantize_with_accuracy_control: {n_calib} calibration images, {len(indices)} gate images, "
        f"max drop {o.max_drop_pt} pt")
    extra = {}
    if o.max_num_iterations is not None:
        extra["advanced_accuracy_restorer_parameters"] = nncf.AdvancedAccuracyRestorerParameters(
            max_num_iterations=o.max_num_iterations)
    return nncf.quantize_with_accuracy_control(
        model, calib, nncf.Dataset(indices), validation_fn=validate, max_drop=o.max_drop_pt / 100.0,
        drop_type=nncf.DropType.ABSOLUTE, subset_size=n_calib, **extra)


def calibration_images(folder: Path, meta) -> np.ndarray:
    """The calibration images ``calib.json`` in ``folder`` lists, preprocessed like rtseg's
    calibration (``float32[n, 3, H, W]``); each file's SHA-256 is checked against the record.

    Raises:
        RtsegError: a listed image is missing or changed since the calibration.
    """
    import json

    from ..calib.images import preprocess_images, sha256_file

    rec = json.loads((folder / "calib.json").read_text())
    root = Path(rec["source"]["root"])
    paths = []
    for entry in rec["images"]:
        path = root / entry["file"]
        if not path.is_file() or sha256_file(path) != entry["sha256"]:
            raise RtsegError(f"calibration image {path} is missing or changed since calibration; restore it or re-run "
                             f"'rtseg calibrate'")
        paths.append(path)
    pre = rec["preprocessing"]
    return preprocess_images(paths, tuple(pre["input_hw"]), pre["resize"], tuple(pre["mean"]), tuple(pre["std"]))


def build_openvino_nncf(folder: Path, meta, sample: np.ndarray, mode: str, gate_options=None, threads: int | None = None,
                        log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build the OpenVINO int8 engine in ``folder`` with NNCF (``build-engine --int8-quantizer nncf|nncf-ac``).

    ``folder`` already holds ``model.onnx`` (FP32) and the calibration (``calib.json``, with the Q/DQ
    ONNX other backends use); NNCF quantizes the FP32 model on the same calibration images
    (:func:`calibration_images`), ``nncf-ac`` against the gate metric on the gate images
    (``gate_options``: :class:`rtseg.gate.check.GateOptions`). The IR is compiled once in a child
    process, as every OpenVINO engine (:func:`rtseg.runtime.openvino_backend.verify_openvino`).

    Args:
        sample: ``float32[n, 3, H, W]`` real images; their logits are returned as ``output_sample``.

    Returns:
        the backend's ``engine.json`` entries (``backend_version``, ``device``, ``engine_file``,
        ``compile_config``, ``quantizer`` = the :func:`quantize_nncf` record) and ``output_sample``.

    Raises:
        RtsegError: NNCF missing, ``nncf-ac`` without labelled gate images, changed calibration
            images, or OpenVINO failing on the result.
    """
    from ..runtime.openvino_backend import openvino_device_info, openvino_version, verify_openvino
    from . import check as g

    log = log or (lambda m: None)
    gs = None
    if mode == "nncf-ac":
        go = gate_options or g.GateOptions()
        gs = g.gate_set(meta.to_dict(), go.data, go.split, g.DEFAULT_GATE_IMAGES if go.images is None else go.images)
        gs.model_meta = meta.to_dict()
        drop = g.DEFAULT_TOLERANCE[gs.metric] if go.tolerance_pt is None else go.tolerance_pt
    x = calibration_images(folder, meta)
    options = NNCFOptions(accuracy_control=mode == "nncf-ac", threads=threads,
                          max_drop_pt=float(drop) if mode == "nncf-ac" else 0.5)
    record = quantize_nncf(folder / "model.onnx", folder / "model.xml", x, gs, options, log)
    log(f"NNCF {record['mode']}: {record['layers']['int8']} compute layers in int8, {record['layers']['float']} in float")
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    y = verify_openvino(folder / "model.xml", sample, config,
                        fix="build with --int8-quantizer rtseg instead, or report the model")
    return {"backend_version": openvino_version(), "device": openvino_device_info(), "engine_file": "model.xml",
            "compile_config": config, "compiled_in_child": True, "quantizer": record, "output_sample": y}


__all__ = ["COMPUTE_LAYERS", "CompiledBackend", "NNCFOptions", "build_openvino_nncf", "calibration_images", "layer_precisions",
           "nncf_version", "quantize_nncf"]
