"""Inference backends behind one interface (:class:`rtseg.runtime.base.Backend`).

``load_engine(path)`` opens an engine folder (``engine.json`` inside) with the backend it was built
for, or a checkpoint folder with the PyTorch reference backend.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import RtsegError
from .base import Backend, logits_to_mask

ENGINE_JSON = "engine.json"
BACKENDS = ("openvino", "onnxruntime", "tensorrt")


def read_engine_json(folder: str | Path) -> dict:
    """Read ``engine.json`` of an engine folder.

    Raises:
        RtsegError: missing folder/file or invalid JSON.
    """
    folder = Path(folder)
    f = folder / ENGINE_JSON
    if not folder.exists():
        raise RtsegError(f"engine folder {folder} does not exist; build one with 'rtseg build-engine --checkpoint CKPT'")
    if not f.is_file():
        raise RtsegError(f"{folder} has no {ENGINE_JSON}; it is not an engine folder — build one with 'rtseg build-engine'")
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RtsegError(f"{f} is unreadable ({e}); rebuild the engine with 'rtseg build-engine'") from None


def load_engine(path: str | Path, backend: str | None = None, num_threads: int | None = None,
                allow_failed_gate: bool = False, **kwargs) -> Backend:
    """Open ``path`` for inference.

    Args:
        path: an engine folder (``engine.json``) or a checkpoint folder (PyTorch reference).
        backend: if given, the backend the caller expects; a folder built for another backend is
            refused (``RtsegError``).
        num_threads: CPU inference threads (OpenVINO/ONNX Runtime/torch); ``None`` = backend default.
        allow_failed_gate: open an engine that failed its accuracy gate (``engine.json``
            ``accuracy_gate.status == "failed"``); refused otherwise, never used silently.

    Raises:
        RtsegError: not an engine/checkpoint folder, wrong backend, an engine that failed its accuracy
            gate, or an engine built for another backend version or device (with a rebuild hint).
    """
    p = Path(path)
    if not p.exists():
        raise RtsegError(f"{p} does not exist; pass an engine folder (from 'rtseg build-engine') or a checkpoint folder (from 'rtseg train')")
    if p.is_dir() and not (p / ENGINE_JSON).exists() and (p / "model.json").exists():
        if backend not in (None, "torch"):
            raise RtsegError(f"{p} is a checkpoint, not a {backend} engine; build one with 'rtseg build-engine --checkpoint {p} --backend {backend}'")
        from .torch_backend import TorchBackend

        if num_threads:
            import torch

            torch.set_num_threads(num_threads)
        return TorchBackend.from_checkpoint(p, **kwargs)
    meta = read_engine_json(p)
    built_for = meta.get("backend")
    if backend is not None and backend != built_for:
        raise RtsegError(f"{p} is a {built_for} engine, not {backend}; pass --backend {built_for} or build a {backend} engine "
                         f"with 'rtseg build-engine --backend {backend}'")
    check_accuracy_gate(p, meta, allow_failed_gate)
    return backend_from_meta(p, meta, num_threads=num_threads, **kwargs)


def check_accuracy_gate(folder: str | Path, meta: dict, allow_failed_gate: bool = False) -> None:
    """Refuse an engine whose ``engine.json`` ``accuracy_gate.status`` is ``"failed"`` (issue 5).

    Raises:
        RtsegError: the engine failed its accuracy gate and ``allow_failed_gate`` is false.
    """
    gate = meta.get("accuracy_gate") or {}
    if gate.get("status") != "failed" or allow_failed_gate:
        return
    last = gate.get("after") or {}
    raise RtsegError(
        f"{folder} failed its accuracy gate ({meta.get('precision')} {gate.get('metric')} "
        f"{-(last.get('delta_pt') or 0.0):+.2f} pt vs fp32, tolerance {gate.get('tolerance_pt')} pt); rebuild it "
        f"(more --num-calib, another --calib-method, more --gate-max-rounds) or pass --allow-failed-gate to use it anyway")


def backend_from_meta(folder: str | Path, meta: dict, num_threads: int | None = None, **kwargs) -> Backend:
    """Open the engine in ``folder`` described by ``meta`` (an ``engine.json`` dict, possibly not yet
    written: the builder's accuracy gate runs engines before it publishes the folder).

    Raises:
        RtsegError: unknown backend, or the backend's own checks (version, device, files).
    """
    p = Path(folder)
    built_for = meta.get("backend")
    if built_for == "openvino":
        from .openvino_backend import OpenVINOBackend

        return OpenVINOBackend(p, meta, num_threads=num_threads, **kwargs)
    if built_for == "onnxruntime":
        from .onnxruntime_backend import ORTBackend

        return ORTBackend(p, meta, num_threads=num_threads, **kwargs)
    if built_for == "tensorrt":
        from .tensorrt_backend import TensorRTBackend

        return TensorRTBackend(p, meta, **kwargs)
    raise RtsegError(f"{p / ENGINE_JSON} names an unknown backend {built_for!r}; rebuild with 'rtseg build-engine'")


__all__ = ["Backend", "BACKENDS", "ENGINE_JSON", "backend_from_meta", "check_accuracy_gate", "load_engine",
           "logits_to_mask", "read_engine_json"]
