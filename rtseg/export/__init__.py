"""Checkpoint → ONNX → INT8 Q/DQ ONNX → engine folder (docs/architecture.md, issue 2 step 6, issue 5).

* :func:`rtseg.export.onnx.export_onnx` — PyTorch module → ONNX (opset 17, dynamic batch, static
  H×W), checked with ``onnx.checker`` and against PyTorch with ONNX Runtime.
* :func:`rtseg.calib.calibrate.calibrate_checkpoint` / :func:`~rtseg.calib.calibrate.calibrate_onnx` —
  FP32 ONNX + real images → one Q/DQ ONNX for every
  backend, plus its calibration record (``calib.json``).
* :func:`rtseg.export.build.build_engine` — checkpoint → ``engines/<model>/<backend>-<precision>/``.

Imports are lazy so that ``import rtseg.export`` stays cheap.
"""

from __future__ import annotations

__all__ = ["build_engine", "calibrate_checkpoint", "calibrate_onnx", "export_onnx"]


def __getattr__(name: str):
    if name == "export_onnx":
        from .onnx import export_onnx

        return export_onnx
    if name in ("calibrate_checkpoint", "calibrate_onnx"):
        from ..calib.calibrate import calibrate_checkpoint, calibrate_onnx

        return calibrate_checkpoint if name == "calibrate_checkpoint" else calibrate_onnx
    if name == "build_engine":
        from .build import build_engine

        return build_engine
    raise AttributeError(name)
