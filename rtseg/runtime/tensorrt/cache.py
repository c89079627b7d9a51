"""TensorRT ≤ 10 calibration cache (implicit quantization) from a Q/DQ ONNX's activation scales.

The Q/DQ ONNX is TensorRT's explicit-quantization input; TensorRT ≤ 10's implicit quantization
instead builds from the FP32 ``model.onnx`` plus this cache (``calib.cache`` in a calibration
folder, written on request by ``rtseg calibrate --trt-cache``). The cache holds the Q/DQ ONNX's
activation scales, so it records the same calibration.
"""

from __future__ import annotations

import struct
from pathlib import Path

from ...errors import RtsegError
from ...safe_io import atomic_write_bytes


def activation_scales(qdq_path: str | Path) -> dict[str, float]:
    """Per-tensor activation scales of a Q/DQ ONNX: ``{float tensor name: scale}`` (the tensor that
    feeds each activation ``QuantizeLinear``; scale = amax / 127 for rtseg's symmetric int8)."""
    from onnx import numpy_helper

    from ...onnx_files import load_onnx

    m = load_onnx(qdq_path)
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

    Raises:
        RtsegError: the ONNX has no activation scales (not a Q/DQ ONNX).
    """
    scales = activation_scales(qdq_path)
    if not scales:
        raise RtsegError(f"{qdq_path} has no activation scales; re-run 'rtseg calibrate'")
    lines = [f"TRT-{int(trt_version)}-{calibrator}"]
    lines += [f"{name}: {struct.pack('>f', s).hex()}" for name, s in scales.items()]
    out = Path(out)
    atomic_write_bytes(out, ("\n".join(lines) + "\n").encode())
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
