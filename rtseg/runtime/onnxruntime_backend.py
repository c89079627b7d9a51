"""ONNX Runtime backend (CPUExecutionProvider): runs ``model.ort.onnx`` of an engine folder.

docs/internals.md "Engine folder" and "Backend". ``model.ort.onnx`` is the FP32 ONNX (fp32) or the
Q/DQ ONNX (int8) after ONNX Runtime's *extended* graph optimisations, saved at build time (portable
across x86 CPUs; the hardware-specific layout optimisations run at load time, level ALL).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RtsegError
from .base import Backend, check_engine_header, check_io_shapes, engine_settings
from .registry import BackendSpec, BuildRequest, LoadOptions

PRECISIONS = ("fp32", "int8")
_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile",
              "asimd", "sve")


def onnxruntime_version() -> str:
    """Installed ONNX Runtime version, e.g. ``"1.32.0"``."""
    import onnxruntime as ort

    return ort.__version__


def cpu_device_info() -> dict[str, Any]:
    """``{"type": "cpu", "name": model name, "capabilities": [ISA flags relevant to inference]}``
    read from ``/proc/cpuinfo`` (Linux) or :mod:`platform` elsewhere."""
    from ..limits import cpu_info

    name, flags = cpu_info()
    return {"type": "cpu", "name": name, "capabilities": sorted(f for f in _CPU_FLAGS if f in flags)}


def make_session(path: str | Path, num_threads: int | None = None, level: str = "all",
                 optimized_model_filepath: str | Path | None = None):
    """An ``onnxruntime.InferenceSession`` on the CPU provider.

    Args:
        path: ONNX file.
        num_threads: intra-op threads (``None`` = ORT default, all physical cores).
        level: graph optimisation ``"disable" | "basic" | "extended" | "all"``.
        optimized_model_filepath: if given, ORT writes the optimised graph there.

    Raises:
        RtsegError: external data outside the model's folder (:func:`rtseg.onnx_files.check_external_data`).
    """
    import onnxruntime as ort

    from ..onnx_files import check_external_data

    check_external_data(path)

    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[level]
    so.log_severity_level = 3
    if num_threads:
        so.intra_op_num_threads = int(num_threads)
        so.inter_op_num_threads = 1
    if optimized_model_filepath is not None:
        so.optimized_model_filepath = str(optimized_model_filepath)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class ORTBackend(Backend):
    """ONNX Runtime inference on an engine folder (``engine.json`` ``backend == "onnxruntime"``).

    Args:
        folder: the engine folder.
        meta: its ``engine.json``.
        num_threads: intra-op threads (``None`` = ORT default).
        check_version: refuse an engine built with another ONNX Runtime version (default True).

    ``infer(float32[N, 3, H, W]) -> float32[N, C, H, W]``; ``infer_u8`` normalises with NumPy
    (:meth:`Backend.normalize`) and calls :meth:`infer`.

    Raises:
        RtsegError: another backend's folder, another ONNX Runtime version, or a missing engine
            file (each with a rebuild hint).
    """

    name = "onnxruntime"

    def __init__(self, folder: str | Path, meta: dict, num_threads: int | None = None, check_version: bool = True,
                 **_: Any):
        folder = Path(folder)
        rebuild = check_engine_header(folder, meta, "onnxruntime", "ONNX Runtime", onnxruntime_version(), check_version)
        settings = engine_settings(folder, meta)
        if settings["precision"] not in PRECISIONS:
            raise RtsegError(f"{folder}: ONNX Runtime engines are fp32 or int8, not {settings['precision']!r}; {rebuild}")
        path = folder / meta["engine_file"]
        if not path.is_file():
            raise RtsegError(f"{folder} lacks its engine file {path.name}; {rebuild}")
        super().__init__(**settings)
        try:
            self._session = make_session(path, num_threads, level="all")
        except RtsegError:  # the external-data rule's own line
            raise
        except Exception as e:  # onnxruntime raises its own exception types
            raise RtsegError(f"ONNX Runtime cannot load {path} ({str(e).strip().splitlines()[0]}); {rebuild}") from None
        self._in = self._session.get_inputs()[0].name
        self._out = self._session.get_outputs()[0].name
        check_io_shapes(folder, meta, self._session.get_inputs()[0].shape, self._session.get_outputs()[0].shape, rebuild)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """``float32[N, 3, H, W]`` normalised RGB → logits ``float32[N, C, H, W]``.

        Raises:
            RtsegError: wrong shape for this engine.
        """
        self.check_nchw(batch)
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return self._session.run([self._out], {self._in: x})[0]  # InferenceSession.run is thread-safe

    def close(self) -> None:
        self._session = None


def build_onnxruntime(req: BuildRequest) -> dict[str, Any]:
    """Save ``req.onnx`` after ONNX Runtime's *extended* graph optimisations as ``model.ort.onnx``
    (portable across x86 CPUs; the hardware-specific ones run at load, level ALL) and run the sample.

    Returns the ``engine.json`` entries and ``output_sample`` (logits ``float32[n, C, H, W]``).

    Raises:
        RtsegError: ONNX Runtime cannot load or run the graph.
    """
    target = req.folder / "model.ort.onnx"
    try:
        make_session(req.onnx, num_threads=1, level="extended", optimized_model_filepath=target)
        sess = make_session(target, level="all")
        y = sess.run(None, {sess.get_inputs()[0].name: req.sample})[0]
    except RtsegError:
        raise
    except Exception as e:  # onnxruntime raises its own types
        raise RtsegError(f"ONNX Runtime cannot run {req.onnx.name} ({str(e).strip().splitlines()[0]}); report the model") from None
    return {"backend_version": onnxruntime_version(), "device": cpu_device_info(), "engine_file": target.name,
            "graph_optimization": "extended (saved), all (at load)", "output_sample": y}


def _load(folder: Path, meta: dict, opts: LoadOptions) -> ORTBackend:
    return ORTBackend(folder, meta, num_threads=opts.num_threads, **opts.extra)


SPEC = BackendSpec(
    name="onnxruntime", label="ONNX Runtime", precisions=PRECISIONS, engine_file="model.ort.onnx",
    version=onnxruntime_version, device_info=cpu_device_info, build=build_onnxruntime, load=_load,
    description="ONNX Runtime, CPUExecutionProvider (the portable fallback): fp32, int8")
