"""Engines from an imported model folder (``model.onnx`` + ``model.json``, :mod:`rtseg.byom`).

:func:`rtseg.export.build.build_engine` calls these in place of the PyTorch export when it is given a
model folder instead of a checkpoint:

* :func:`imported_fp32` — the folder's ``model.onnx`` *is* the FP32 graph: it is copied into the
  engine folder (no export) and run by ONNX Runtime (fp32, no graph optimisation) on the parity
  images; those logits are the reference every engine is compared with (``engine.json`` ``verify``),
  as the accuracy gate already uses the engine folder's ``model.onnx`` in ONNX Runtime.
* INT8 calibration of that ONNX is :func:`rtseg.calib.calibrate.calibrate_checkpoint`'s, which takes
  a model folder too (``calib.json`` ``checkpoint.sha256`` is then the SHA-256 of ``model.onnx``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ..errors import RtsegError


def imported_fp32(folder: Path, meta, dst: Path, hw: tuple[int, int], sample: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray]:
    """Copy ``folder/model.onnx`` to ``dst`` and run it on ``sample`` (``float32[n, 3, H, W]``).

    Returns:
        ``(export info, reference logits float32[n, C, H, W], the sample used)`` — a graph fixed at
        batch 1 gets the first image only.

    Raises:
        RtsegError: ``hw`` other than the folder's input size (its graph is fixed at it).
    """
    from ..checkpoint import MODEL_ONNX
    from ..onnx_files import check_external_data
    from .adapt import ort_run

    if tuple(hw) != tuple(meta.input_hw):
        raise RtsegError(f"model folder {folder} is fixed at {meta.input_hw[1]}x{meta.input_hw[0]}; drop --img-size "
                         f"or re-import the model with another input.size")
    src = meta.source or {}
    if src.get("batch") == "fixed":
        sample = sample[:1]
    check_external_data(folder / MODEL_ONNX)
    shutil.copyfile(folder / MODEL_ONNX, dst)
    reference = ort_run(dst.read_bytes(), np.ascontiguousarray(sample, dtype=np.float32))
    exp = src.get("export") or {}
    import onnx

    info = {"path": dst.name, "opset": src.get("opset"), "max_abs_diff": exp.get("max_abs_diff"),
            "tolerance": exp.get("tolerance"), "torch_version": exp.get("torch_version"), "onnx_version": onnx.__version__,
            "imported": {"kind": src.get("kind"), "edits": src.get("edits", []), "batch": src.get("batch")},
            "input": {"name": None, "shape": [-1, 3, hw[0], hw[1]]},
            "output": {"name": "logits", "shape": [-1, int(meta.num_classes), hw[0], hw[1]]}}
    return info, reference, sample


__all__ = ["imported_fp32"]
