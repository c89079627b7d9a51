"""The table of inference backends: one :class:`BackendSpec` per backend, registered by name.

Everything that depends on "which backends exist" derives from this table: ``load_engine``'s
dispatch, ``build-engine``'s builder dispatch, the CLI's ``--backend`` choices, ``rtseg bench``'s
``--backend`` filter and ``--precision auto``'s candidate list. A backend is one module that defines
its ``SPEC`` (name, precisions, engine file, ``build``, ``load``, version and device checks) and one
registration line in :mod:`rtseg.runtime` (docs/extending.md, "Add a backend")::

    register_backend("openvino", "rtseg.runtime.openvino_backend:SPEC")   # imported on first use
    register_backend(MY_SPEC)                                             # or a spec object

A server backend (a model on an inference server: nothing to build) registers its URL schemes instead::

    register_server("kserve", "rtseg.runtime.kserve:open_server")        # --engine kserve://HOST:PORT/MODEL

Specs named by ``"module:attribute"`` are imported on first use, so ``rtseg --help`` does not import
OpenVINO or TensorRT, and a backend whose library is missing only fails when it is used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import RtsegError


@dataclass
class BuildRequest:
    """What a backend's ``build`` gets: compile ``onnx`` into the backend's engine file in ``folder``.

    Attributes:
        onnx: the FP32 ``model.onnx`` (fp32/bf16/fp16) or the calibrated ``model.qdq.onnx`` (int8);
            input ``float32[N, 3, H, W]``, N dynamic.
        folder: the (unpublished) engine folder; the engine file goes here.
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"int8"``.
        input_hw: (H, W) in pixels.
        sample: ``float32[n, 3, H, W]`` real preprocessed images: the backend runs them once and
            returns the logits as ``output_sample`` (compared with PyTorch in ``engine.json`` ``verify``).
        options: backend-specific build options (TensorRT: batch profile, workspace, timing cache, ...).
    """

    onnx: Path
    folder: Path
    precision: str
    input_hw: tuple[int, int]
    sample: np.ndarray
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadOptions:
    """How to open an engine: ``num_threads`` CPU inference threads (``None`` = the backend's default)
    and backend-specific ``extra`` keyword arguments (e.g. TensorRT ``cuda_graph``)."""

    num_threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BackendSpec:
    """Everything rtseg needs to know about one inference backend.

    Attributes:
        name: registry name (``engine.json`` ``backend``, ``--backend``).
        label: human name for messages (``"OpenVINO"``).
        precisions: every precision it can build (on a suitable machine).
        engine_file: the engine file it writes into the engine folder.
        version: ``() -> str`` the installed library's version (recorded; a mismatch refuses loading).
        device_info: ``() -> dict`` ``{"type", "name", "capabilities"}`` of the device it builds for.
        build: ``(BuildRequest) -> dict`` writes the engine file; returns ``engine.json`` entries
            (``backend_version``, ``device``, ``engine_file``, optional ``input``/``output``/``batch``,
            build settings) plus ``output_sample`` (logits of ``request.sample``, or ``None``).
        load: ``(folder, engine_json: dict, LoadOptions) -> Backend``.
        unavailable: ``(precision) -> str | None``: why this machine cannot run ``precision``
            (``None`` = it can). Used by ``build-engine`` (refusal) and ``--precision auto`` (skip).
        build_options: names of the backend-specific build options it accepts (CLI flags).
        description: one line for ``--help``.
    """

    name: str
    label: str
    precisions: tuple[str, ...]
    engine_file: str
    version: Callable[[], str]
    device_info: Callable[[], dict]
    build: Callable[[BuildRequest], dict]
    load: Callable[..., Any]
    unavailable: Callable[[str], str | None] = lambda precision: None
    build_options: tuple[str, ...] = ()
    description: str = ""

    def check_precision(self, precision: str) -> None:
        """Raise :class:`RtsegError` unless this backend builds ``precision`` and this machine runs it."""
        if precision not in self.precisions:
            raise RtsegError(f"the {self.name} backend builds {', '.join(self.precisions)} engines, not {precision!r}; "
                             f"pick one of those with --precision")
        why = self.unavailable(precision)
        if why:
            raise RtsegError(why)


_TABLE: dict[str, BackendSpec | str] = {}

#: the backend and precision used when none is named (``build-engine``, the API, the default model's
#: engine): OpenVINO fp32, the CPU path. Measured here, int8 is not faster than fp32 for the sub-GMAC
#: default model even with VNNI (docs/model-card.md, "Limits"); ``--precision auto`` decides per machine.
DEFAULT_BACKEND = "openvino"
DEFAULT_PRECISION = "fp32"


def register_backend(spec: BackendSpec | str, target: str | None = None) -> None:
    """Add a backend to the table: ``register_backend(spec)`` with a :class:`BackendSpec`, or
    ``register_backend(name, "module:attribute")`` naming one (imported on first use).

    Raises:
        ValueError: the name is already registered, or a name without its ``"module:attribute"``.
    """
    if isinstance(spec, BackendSpec):
        key, entry = spec.name, spec
    else:
        if not target or ":" not in target:
            raise ValueError(f"register_backend({spec!r}, target) needs target='module:attribute'")
        key, entry = spec, target
    if key in _TABLE:
        raise ValueError(f"backend {key!r} is already registered")
    _TABLE[key] = entry


def unregister_backend(name: str) -> None:
    """Remove ``name`` from the table (tests and plugins that register temporarily)."""
    _TABLE.pop(name, None)


def backend_names() -> list[str]:
    """Registered backend names, in registration order (the CLI's ``--backend`` choices)."""
    return list(_TABLE)


def get_backend(name: str) -> BackendSpec:
    """The spec of backend ``name`` (importing its module on first use).

    Raises:
        RtsegError: unknown backend (the message lists the known ones).
    """
    entry = _TABLE.get(name)
    if entry is None:
        raise RtsegError(f"unknown backend {name!r}; use one of {', '.join(_TABLE)}")
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
        _TABLE[name] = entry
    return entry


def all_precisions() -> list[str]:
    """Every precision some registered backend builds, in a stable order (the CLI's choices)."""
    seen: list[str] = []
    for name in _TABLE:
        for p in get_backend(name).precisions:
            if p not in seen:
                seen.append(p)
    return seen


#: engine URL scheme → ``"module:function"`` opening a model on an inference server (``open(url, num_threads,
#: **kwargs) -> Backend``): the server backends, which build nothing (their server serves the engine)
_SERVERS: dict[str, str] = {}


def register_server(scheme: str, target: str) -> None:
    """Add a server backend: ``--engine SCHEME://...`` opens with ``target`` (``"module:function"``).

    Raises:
        ValueError: the scheme is already registered, or ``target`` is not ``"module:function"``.
    """
    if ":" not in target:
        raise ValueError(f"register_server({scheme!r}, target) needs target='module:function'")
    if scheme in _SERVERS:
        raise ValueError(f"server scheme {scheme!r} is already registered")
    _SERVERS[scheme] = target


def server_opener(path: Any) -> Callable[..., Any] | None:
    """The opener of a registered engine URL (``kserve://HOST:PORT/MODEL``), or ``None`` for anything else
    (a folder path)."""
    if not isinstance(path, str) or "://" not in path:
        return None
    target = _SERVERS.get(path.split("://", 1)[0].lower())
    if target is None:
        return None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def server_schemes() -> list[str]:
    """Registered engine URL schemes (``kserve``, ``grpc``, ``http``)."""
    return list(_SERVERS)


__all__ = ["BackendSpec", "BuildRequest", "LoadOptions", "all_precisions", "backend_names", "get_backend",
           "register_backend", "register_server", "server_opener", "server_schemes", "unregister_backend"]
