"""Inference backends behind one interface (:class:`rtseg.runtime.base.Backend`) and their table.

``load_engine(path)`` opens an engine folder (``engine.json`` inside) with the backend it was built
for, or a checkpoint folder with the PyTorch reference backend. The backends are registered below,
one line each (:mod:`rtseg.runtime.registry`; docs/extending.md "Add a backend").
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import RtsegError
from ..meta import EngineMeta
from .base import Backend, logits_to_mask
from .registry import (
    BackendSpec,
    BuildRequest,
    LoadOptions,
    all_precisions,
    backend_names,
    get_backend,
    register_backend,
    register_server,
    server_opener,
    unregister_backend,
)
from .seal import check_seal, seal_engine

register_backend("openvino", "rtseg.runtime.openvino_backend:SPEC")
register_backend("onnxruntime", "rtseg.runtime.onnxruntime_backend:SPEC")
register_backend("tensorrt", "rtseg.runtime.tensorrt.backend:SPEC")
for _scheme in ("kserve", "grpc", "http"):  # KServe v2 / Open Inference Protocol servers (Triton)
    register_server(_scheme, "rtseg.runtime.kserve:open_server")

ENGINE_JSON = "engine.json"


def read_engine_json(folder: str | Path) -> dict:
    """Read and check ``engine.json`` of an engine folder (:meth:`rtseg.meta.EngineMeta.from_dict`).

    Returns:
        the ``engine.json`` dict.

    Raises:
        RtsegError: missing folder/file, invalid JSON, or a field of the wrong shape (one line naming it).
    """
    folder = Path(folder)
    f = folder / ENGINE_JSON
    if not folder.exists():
        raise RtsegError(f"engine folder {folder} does not exist; build one with 'rtseg build-engine --checkpoint CKPT'")
    if not f.is_file():
        raise RtsegError(f"{folder} has no {ENGINE_JSON}; it is not an engine folder — build one with 'rtseg build-engine'")
    try:
        d = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RtsegError(f"{f} is unreadable ({e}); rebuild the engine with 'rtseg build-engine'") from None
    EngineMeta.from_dict(d, f)
    return d


def load_engine(path: str | Path, backend: str | None = None, num_threads: int | None = None,
                allow_failed_gate: bool = False, allow_unsealed: bool = False, **kwargs) -> Backend:
    """Open ``path`` for inference.

    Args:
        path: an engine folder (``engine.json``), a checkpoint folder (PyTorch reference), an imported
            model folder (``model.onnx`` in ONNX Runtime fp32, :class:`rtseg.runtime.onnx_model.OnnxModelBackend`)
            or a model on an inference server, ``kserve://HOST:PORT/MODEL`` (gRPC) or ``http://HOST:PORT/MODEL``
            (:class:`rtseg.runtime.kserve.KServeBackend`).
        backend: if given, the backend the caller expects; a folder built for another backend is
            refused (``RtsegError``).
        num_threads: CPU inference threads (OpenVINO/ONNX Runtime/torch); ``None`` = backend default.
        allow_failed_gate: open an engine that failed its accuracy gate (``engine.json``
            ``accuracy_gate.status == "failed"``); refused otherwise, never used silently.
        allow_unsealed: open an engine folder whose ``engine.json`` has no seal (built by an older
            rtseg; :mod:`rtseg.runtime.seal`) without checking its files; refused otherwise. An engine
            whose seal does not match (an edited file or record) is refused regardless.
        **kwargs: backend-specific options (e.g. TensorRT ``cuda_graph``).

    Raises:
        RtsegError: not a path, not an engine/checkpoint folder, wrong backend, an engine whose files or
            ``engine.json`` changed after the build (or without a seal), an engine that failed its accuracy
            gate, or an engine built for another backend version or device (with a rebuild hint).
    """
    from ..limits import check_threads

    check_threads(num_threads)
    opener = server_opener(path)
    if opener is not None:  # a model on an inference server (kserve://…: rtseg.runtime.kserve)
        if backend not in (None, "kserve"):
            raise RtsegError(f"{path} is a model on an inference server, not a {backend} engine; drop --backend")
        return opener(path, num_threads=num_threads, **kwargs)
    if not isinstance(path, (str, os.PathLike)):
        raise RtsegError(f"the model to load must be a folder path (str or pathlib.Path), not {type(path).__name__}; "
                         f"pass an engine, checkpoint or model folder")
    p = Path(path)
    if not p.exists():
        raise RtsegError(f"{p} does not exist; pass an engine folder (from 'rtseg build-engine') or a checkpoint folder (from 'rtseg train')")
    if p.is_dir() and not (p / ENGINE_JSON).exists() and (p / "model.json").exists():
        from ..checkpoint import is_model_folder

        if is_model_folder(p):  # imported model folder: its model.onnx in ONNX Runtime fp32 (the reference)
            if backend not in (None, "onnx"):
                raise RtsegError(f"{p} is a model folder, not a {backend} engine; build one with "
                                 f"'rtseg build-engine --checkpoint {p} --backend {backend}'")
            from .onnx_model import OnnxModelBackend

            return OnnxModelBackend(p, num_threads=num_threads)
        return _load_checkpoint(p, backend, num_threads, kwargs)
    meta = read_engine_json(p)
    built_for = meta.get("backend")
    if backend is not None and backend != built_for:
        raise RtsegError(f"{p} is a {built_for} engine, not {backend}; pass --backend {built_for} or build a {backend} engine "
                         f"with 'rtseg build-engine --backend {backend}'")
    check_seal(p, meta, allow_unsealed)  # before any check trusts a field, before the backend reads a file
    check_accuracy_gate(p, meta, allow_failed_gate)
    return backend_from_meta(p, meta, num_threads=num_threads, **kwargs)


def _load_checkpoint(p: Path, backend: str | None, num_threads: int | None, kwargs: dict) -> Backend:
    if backend not in (None, "torch"):
        raise RtsegError(f"{p} is a checkpoint, not a {backend} engine; build one with 'rtseg build-engine --checkpoint {p} --backend {backend}'")
    from .torch_backend import TorchBackend

    if num_threads:
        import torch

        torch.set_num_threads(num_threads)
    backend = TorchBackend.from_checkpoint(p, **kwargs)
    k = int(getattr(backend.model, "input_multiple", 1) or 1)
    h, w = backend.input_hw
    if h % k or w % k:
        raise RtsegError(f"{p}/model.json: 'input_size' [{h}, {w}] is not a multiple of {k} pixels, which "
                         f"{backend.model_meta.model} needs; set it to e.g. [{max(k, h // k * k)}, {max(k, w // k * k)}]")
    return backend


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
    written: the builder's accuracy gate runs engines before it publishes the folder), with the
    backend the table registers under ``meta["backend"]``. The seal is not checked here (an unpublished
    folder has none yet): :func:`load_engine` checks it for published folders.

    Raises:
        RtsegError: unknown backend, or the backend's own checks (version, device, files).
    """
    name = meta.get("backend")
    if name not in backend_names():
        raise RtsegError(f"{Path(folder) / ENGINE_JSON} names an unknown backend {name!r}; rebuild with 'rtseg build-engine'")
    return get_backend(name).load(Path(folder), meta, LoadOptions(num_threads=num_threads, extra=dict(kwargs)))


__all__ = ["Backend", "BackendSpec", "BuildRequest", "ENGINE_JSON", "LoadOptions", "all_precisions", "backend_from_meta",
           "backend_names", "check_accuracy_gate", "check_seal", "get_backend", "load_engine", "logits_to_mask", "read_engine_json",
           "register_backend", "register_server", "seal_engine", "server_opener", "unregister_backend"]
