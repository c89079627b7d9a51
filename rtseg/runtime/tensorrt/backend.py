"""TensorRT runtime backend: one deserialised engine, torch CUDA tensors for I/O, an async stream.

``TensorRTBackend(folder, meta)`` is what ``rtseg.runtime.load_engine`` returns for an engine folder
whose ``engine.json`` says ``"backend": "tensorrt"``. Besides the NumPy interface every backend has
(``infer``, ``infer_u8``, ``predict_u8``; rtseg/runtime/base.py) it offers GPU-resident fast paths:

* ``infer_torch(x)``: ``torch.float32[N, 3, H, W]`` on the engine's CUDA device → logits on the
  device. The input and output tensors are bound directly (``set_tensor_address``): no copy.
* ``predict_u8_torch(frames)``: ``torch.uint8[N, H, W, 3]`` RGB on the device → ``torch.uint8[N, H, W]``
  mask on the device; normalisation (uint8 HWC → normalised float NCHW) and argmax / ``logit > 0``
  (sigmoid > 0.5) run on the GPU.
* NumPy calls go through pinned host buffers (``pin_memory=True``) with non-blocking copies on the
  backend's own ``torch.cuda.Stream``; ``predict_u8`` returns only the mask to the host.
* ``cuda_graph=True`` captures one CUDA graph per batch size (fixed shapes) and replays it.

All TensorRT and CUDA imports happen inside functions, so this module imports on machines without
them; :func:`check_engine_meta` is pure Python and testable anywhere.

TensorRT 10/11 API used, and where each call was checked (search tool):

* ``trt.Runtime(logger)``, ``runtime.deserialize_cuda_engine(bytes)`` — TensorRT 8.x→10.x Python
  migration guide (name-based I/O API, docs.nvidia.com/deeplearning/tensorrt/latest/api/migration-guide.html).
* ``runtime.engine_host_code_allowed = True`` for version-compatible plans (the plan embeds the
  lean runtime) — "Version Compatibility" page (10.16.1 / 11.1.0 "Engine Compatibility") and use in
  public code (code corpus).
* ``engine.num_io_tensors``, ``get_tensor_name(i)``, ``get_tensor_mode(name) == TensorIOMode.INPUT``,
  ``get_tensor_dtype``, ``get_tensor_shape``, ``get_tensor_profile_shape(name, 0)`` → (min, opt, max),
  ``create_execution_context()`` — migration guide (allocate_buffers example) and code corpus.
* ``context.set_input_shape(name, shape)``, ``get_tensor_shape(name)`` (output shape for the set
  input shape), ``set_tensor_address(name, ptr)``,
  ``execute_async_v3(stream_handle)`` — IExecutionContext (C++ 10.2: setInputShape / enqueueV3;
  Python IExecutionContext page 10.x/11.4.0) and code corpus.
* CUDA graph capture of ``enqueueV3``: run one enqueue after setting shapes (flushes deferred
  updates), capture on a non-default stream, one execution context per captured shape, the graph
  fixes shapes and addresses — TensorRT developer guide "CUDA Graphs" section (recalled; only the
  general constraints page docs.nvidia.com/dl-cuda-graph was retrievable) and public code.
* TensorRT 11 removed ``ICudaEngine.device_memory_size`` and the binding-index API; neither is used.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import RtsegError
from ..base import Backend
from ..registry import BackendSpec, BuildRequest, LoadOptions
from .build import PRECISIONS

HARDWARE_LEVELS = ("none", "ampere_plus", "same_compute_capability")


# -- engine.json check (no TensorRT needed) -------------------------------------------------------
def _version_tuple(v: str) -> tuple[int, ...]:
    parts = []
    for p in str(v).split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    while len(parts) < 4:
        parts.append(0)
    return tuple(parts[:4])


def _cc_tuple(cc: Any) -> tuple[int, int]:
    if isinstance(cc, (tuple, list)):
        return int(cc[0]), int(cc[1])
    major, _, minor = str(cc).partition(".")
    return int(major), int(minor or 0)


def rebuild_hint(meta: dict) -> str:
    """The command that rebuilds this engine on the current machine."""
    ckpt = (meta.get("checkpoint") or {}).get("path") or "CKPT"
    precision = meta.get("precision") or "fp16"
    batch = meta.get("batch") or {}
    extra = f" --max-batch {batch['max']}" if batch.get("max") else ""
    return f"rebuild it here with 'rtseg build-engine --checkpoint {ckpt} --backend tensorrt --precision {precision}{extra}'"


def check_engine_meta(meta: dict, *, trt_version: str, gpu_name: str, compute_capability: Any,
                      strict_device: bool = True, folder: str | Path | None = None) -> None:
    """Refuse a TensorRT engine built for another TensorRT version or GPU.

    TensorRT plans are specific to the TensorRT version and the GPU they were built with, unless
    built with ``--version-compatible`` (runs on the same or a later TensorRT, at most one major
    version later: "engines built with TensorRT 10 work with TensorRT 11") or a hardware
    compatibility level (``same_compute_capability``: any GPU of the same compute capability;
    ``ampere_plus``: any GPU with compute capability ≥ 8.0). Sources: TensorRT "Version
    Compatibility" / "Hardware Compatibility" pages (10.16.1, 11.1.0).

    Args:
        meta: the engine folder's ``engine.json`` (``backend``, ``backend_version``,
            ``device.name``, ``device.compute_capability``, ``build.version_compatible``,
            ``build.hardware_compatibility_level``).
        trt_version: ``tensorrt.__version__`` of the running process.
        gpu_name: ``torch.cuda.get_device_name()`` of the device the engine would run on.
        compute_capability: ``"8.6"`` or ``(8, 6)``.
        strict_device: also require the same GPU name when no hardware compatibility level was set
            (TensorRT itself only warns across device models of one compute capability).
        folder: the engine folder, for the message.

    Raises:
        RtsegError: wrong backend, missing version/device entries, or a mismatch; the message says
            what differs and how to rebuild.
    """
    where = f"{folder}" if folder else "this engine"
    backend = meta.get("backend")
    if backend != "tensorrt":
        raise RtsegError(f"{where} is a {backend} engine, not tensorrt; pass --backend {backend} or build a TensorRT "
                         f"engine with 'rtseg build-engine --backend tensorrt'")
    hint = rebuild_hint(meta)
    built = meta.get("backend_version")
    device = meta.get("device") or {}
    build = meta.get("build") or {}
    if not built or not device.get("compute_capability"):
        raise RtsegError(f"{where}: engine.json does not record the TensorRT version and GPU it was built for; {hint}")
    b, r = _version_tuple(built), _version_tuple(trt_version)
    if build.get("version_compatible"):
        if r < b or r[0] > b[0] + 1:
            raise RtsegError(f"{where} is a version-compatible engine from TensorRT {built}, which runs on TensorRT "
                             f"{built} up to the next major version, not on {trt_version}; {hint}")
    elif r != b:
        raise RtsegError(f"{where} was built with TensorRT {built} but TensorRT {trt_version} is installed; {hint} "
                         f"(or install tensorrt=={built})")
    level = str(build.get("hardware_compatibility_level") or "none").lower()
    want_cc, have_cc = _cc_tuple(device["compute_capability"]), _cc_tuple(compute_capability)
    have = f"{gpu_name} (compute capability {have_cc[0]}.{have_cc[1]})"
    built_on = f"{device.get('name', '?')} (compute capability {want_cc[0]}.{want_cc[1]})"
    if level == "ampere_plus":
        if have_cc < (8, 0):
            raise RtsegError(f"{where} was built for Ampere and newer GPUs, but this GPU is {have}; {hint}")
    elif level == "same_compute_capability":
        if have_cc != want_cc:
            raise RtsegError(f"{where} was built for GPUs of compute capability {want_cc[0]}.{want_cc[1]} "
                             f"({device.get('name', '?')}), but this GPU is {have}; {hint}")
    elif level == "none":
        if have_cc != want_cc or (strict_device and device.get("name") and device.get("name") != gpu_name):
            raise RtsegError(f"{where} was built on {built_on} and runs only there, but this GPU is {have}; {hint} "
                             f"(or build with --hardware-compatibility-level ampere_plus for portable engines)")
    else:
        raise RtsegError(f"{where}: unknown hardware_compatibility_level {level!r} in engine.json; {hint}")


# -- backend --------------------------------------------------------------------------------------
def _torch_dtype(trt, dt):
    import torch

    table = {"FLOAT": torch.float32, "HALF": torch.float16, "INT8": torch.int8, "INT32": torch.int32,
             "BOOL": torch.bool, "UINT8": torch.uint8, "BF16": torch.bfloat16, "INT64": torch.int64}
    key = str(dt).split(".")[-1]
    if key not in table:
        raise RtsegError(f"engine tensor type {dt} is not supported by rtseg's TensorRT backend; rebuild with float32 I/O")
    return table[key]


@dataclass
class EngineIO:
    """The I/O of a deserialised engine, as :func:`engine_io` reads it (names, dtypes, batch profile)."""

    input_name: str
    output_name: str
    extra_outputs: list[str]
    hw: tuple[int, int]
    min_batch: int
    max_batch: int
    input_dtype: Any
    output_dtype: Any


def deserialize_engine(trt, logger, plan: bytes, version_compatible: bool):
    """``trt.Runtime(logger)`` and the ``ICudaEngine`` of ``plan`` (``None`` when TensorRT refuses it).

    A version-compatible plan embeds its lean runtime: ``engine_host_code_allowed`` lets it run
    (we trust plans from our own engine folders). Returns ``(runtime, engine)``; the runtime must
    outlive the engine.
    """
    runtime = trt.Runtime(logger)
    if version_compatible:
        runtime.engine_host_code_allowed = True
    return runtime, runtime.deserialize_cuda_engine(plan)


def engine_io(trt, engine, want_output: str | None, where: str, hint: str) -> EngineIO:
    """Read the engine's I/O tensors: one ``float32[N, 3, H, W]`` input with fixed H, W, and the
    logits output (``want_output`` when the engine has it, else the first output).

    Raises:
        RtsegError: not exactly one input, no output, or an input that is not [N, 3, H, W].
    """
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    if len(inputs) != 1 or not outputs:
        raise RtsegError(f"{where} has {len(inputs)} inputs and {len(outputs)} outputs; rtseg engines have "
                         f"one image input and a logits output — {hint}")
    output = want_output if want_output in outputs else outputs[0]
    in_shape = tuple(int(d) for d in engine.get_tensor_shape(inputs[0]))
    if len(in_shape) != 4 or in_shape[1] != 3 or min(in_shape[2:]) <= 0:
        raise RtsegError(f"{where} input shape {in_shape} is not [N, 3, H, W] with fixed H, W; {hint}")
    if in_shape[0] < 0:
        pmin, _, pmax = engine.get_tensor_profile_shape(inputs[0], 0)
        min_b, max_b = int(pmin[0]), int(pmax[0])
    else:
        min_b = max_b = in_shape[0]
    return EngineIO(inputs[0], output, [n for n in outputs if n != output], (in_shape[2], in_shape[3]), min_b, max_b,
                    engine.get_tensor_dtype(inputs[0]), engine.get_tensor_dtype(output))


def resolve_output_shape(context, io: EngineIO, where: str, hint: str) -> tuple[int, ...]:
    """Set the input shape to the profile's max batch and read the logits shape ``(N, C, H, W)``
    from the execution context (the engine may report -1 for dims it computes from shape tensors,
    e.g. a final Resize whose sizes come from Shape ops).

    Raises:
        RtsegError: the shape cannot be set, or the output is not [N, C, H, W] at the input's H, W.
    """
    h, w = io.hw
    if not context.set_input_shape(io.input_name, (io.max_batch, 3, h, w)):
        raise RtsegError(f"{where}: cannot set input shape {(io.max_batch, 3, h, w)}; {hint}")
    out_shape = tuple(int(d) for d in context.get_tensor_shape(io.output_name))
    if len(out_shape) != 4 or min(out_shape) <= 0 or tuple(out_shape[2:]) != (h, w):
        raise RtsegError(f"{where} output shape {out_shape} is not [N, C, {h}, {w}]; {hint}")
    return out_shape


class TensorRTBackend(Backend):
    """Runs a TensorRT engine folder on one CUDA device.

    Args:
        folder: engine folder (``engine.json`` + ``model.engine``).
        meta: the parsed ``engine.json``.
        device: CUDA device index (default: the current device).
        cuda_graph: capture and replay a CUDA graph per batch size (fixed shapes; static input/output
            buffers, so ``infer_torch`` then copies its input once).
        strict_device: refuse an engine built on another GPU model of the same compute capability
            (see :func:`check_engine_meta`).
        verbose: TensorRT log level VERBOSE.

    Attributes (besides :class:`~rtseg.runtime.base.Backend`'s): ``device`` (``torch.device``),
    ``stream`` (``torch.cuda.Stream``), ``input_name``, ``output_name``, ``min_batch``, ``trt_version``.

    Raises:
        RtsegError: TensorRT not installed, no CUDA device, an engine built for another TensorRT /
            GPU, a missing or corrupt engine file.

    Not thread-safe: use one backend per thread (they can share a GPU).
    """

    name = "tensorrt"

    def __init__(self, folder: str | Path, meta: dict, *, device: int | None = None, cuda_graph: bool = False,
                 strict_device: bool = True, verbose: bool = False, num_threads: int | None = None, **_ignored: Any):
        from .build import import_tensorrt

        trt = import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise RtsegError("no CUDA device is available: TensorRT engines need an NVIDIA GPU; "
                             "build --backend openvino or --backend onnxruntime for this machine")
        folder = Path(folder)
        idx = torch.cuda.current_device() if device is None else int(device)
        self.device = torch.device("cuda", idx)
        cc = torch.cuda.get_device_capability(idx)
        check_engine_meta(meta, trt_version=trt.__version__, gpu_name=torch.cuda.get_device_name(idx),
                          compute_capability=cc, strict_device=strict_device, folder=folder)
        engine_path = folder / meta.get("engine_file", "model.engine")
        if not engine_path.is_file():
            raise RtsegError(f"{engine_path} is missing; {rebuild_hint(meta)}")

        self._trt = trt
        self.trt_version = trt.__version__
        self._logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
        with torch.cuda.device(idx):
            self._runtime, engine = deserialize_engine(trt, self._logger, engine_path.read_bytes(),
                                                       bool((meta.get("build") or {}).get("version_compatible")))
            if engine is None:
                raise RtsegError(f"TensorRT {trt.__version__} could not load {engine_path} (corrupt or from another "
                                 f"TensorRT/GPU); {rebuild_hint(meta)}")
            self.engine = engine
            io = engine_io(trt, engine, (meta.get("output") or {}).get("name"), f"{engine_path}", rebuild_hint(meta))
            self.input_name, self.output_name, self._extra_outputs = io.input_name, io.output_name, io.extra_outputs
            min_b, max_b, h, w = io.min_batch, io.max_batch, io.hw[0], io.hw[1]
            self._in_dtype = _torch_dtype(trt, io.input_dtype)
            self._out_dtype = _torch_dtype(trt, io.output_dtype)
            self.context = engine.create_execution_context()
            if self.context is None:
                raise RtsegError(f"TensorRT could not create an execution context for {engine_path} (GPU out of memory?)")
            out_shape = resolve_output_shape(self.context, io, f"{engine_path}", rebuild_hint(meta))
            self._shape_set = (max_b, 3, h, w)
            num_classes = int(out_shape[1])

            model = meta.get("model") or {}
            mean = tuple(model.get("mean", (0.485, 0.456, 0.406)))
            std = tuple(model.get("std", (0.229, 0.224, 0.225)))
            if model.get("num_classes") is not None and int(model["num_classes"]) != num_classes:
                raise RtsegError(f"{engine_path} outputs {num_classes} classes but engine.json's model has "
                                 f"{model['num_classes']}; {rebuild_hint(meta)}")
            super().__init__(precision=meta.get("precision", "fp32"), input_hw=(h, w), num_classes=num_classes,
                             mean=mean, std=std, meta=meta, folder=folder, max_batch=max_b)
            self.min_batch = min_b

            self.stream = torch.cuda.Stream(device=self.device)
            # device buffers at the profile's max batch; a batch of n uses the leading [:n] slice,
            # which starts at the same address, so bindings stay valid across batch sizes
            dev = self.device
            self._d_in = torch.empty((max_b, 3, h, w), dtype=self._in_dtype, device=dev)
            self._d_out = torch.empty((max_b, num_classes, h, w), dtype=self._out_dtype, device=dev)
            self._d_u8 = torch.empty((max_b, h, w, 3), dtype=torch.uint8, device=dev)
            self._d_mask = torch.empty((max_b, h, w), dtype=torch.uint8, device=dev)
            self._d_extra = {}
            for n in self._extra_outputs:
                shp = [int(d) for d in self.context.get_tensor_shape(n)]
                self._d_extra[n] = torch.empty(shp, dtype=_torch_dtype(trt, engine.get_tensor_dtype(n)), device=dev)
            self._t_scale = torch.as_tensor(self._scale, device=dev).view(1, 3, 1, 1).to(self._in_dtype)
            self._t_shift = torch.as_tensor(self._shift, device=dev).view(1, 3, 1, 1).to(self._in_dtype)
            self._host: dict[str, Any] = {}
            self.cuda_graph = bool(cuda_graph)
            self._graphs: dict[int, tuple[Any, Any]] = {}

    # -- low level --------------------------------------------------------------------------------
    def _pinned(self, key: str, shape: tuple, dtype) -> Any:
        """A pinned host buffer, allocated on first use at the max batch."""
        import torch

        buf = self._host.get(key)
        if buf is None:
            buf = torch.empty(shape, dtype=dtype, pin_memory=True)
            self._host[key] = buf
        return buf

    def _bind(self, ctx, n: int, in_ptr: int, out_ptr: int) -> None:
        h, w = self.input_hw
        shape = (n, 3, h, w)
        if ctx is not self.context or self._shape_set != shape:
            if not ctx.set_input_shape(self.input_name, shape):
                raise RtsegError(f"batch of {n} is outside this engine's profile {self.min_batch}..{self.max_batch}; "
                                 f"rebuild with other --min-batch/--max-batch")
            if ctx is self.context:
                self._shape_set = shape
        ctx.set_tensor_address(self.input_name, int(in_ptr))
        ctx.set_tensor_address(self.output_name, int(out_ptr))
        for name, buf in self._d_extra.items():
            ctx.set_tensor_address(name, int(buf.data_ptr()))

    def _enqueue(self, ctx) -> None:
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.folder} (see the TensorRT log)")

    def _graph_for(self, n: int):
        """(context, CUDAGraph) replaying the engine on the static buffers for batch n."""
        import torch

        if n in self._graphs:
            return self._graphs[n]
        ctx = self.engine.create_execution_context()
        self._bind(ctx, n, self._d_in.data_ptr(), self._d_out.data_ptr())
        with torch.cuda.stream(self.stream):
            self._enqueue(ctx)  # one plain run first: TensorRT finishes deferred shape work outside capture
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
            self._enqueue(ctx)
        self._graphs[n] = (ctx, graph)
        return self._graphs[n]

    def _run_static(self, n: int) -> None:
        """Run on ``_d_in[:n]`` → ``_d_out[:n]`` on ``self.stream`` (graph replay when enabled)."""
        import torch

        if self.cuda_graph:
            try:
                _, graph = self._graph_for(n)
                with torch.cuda.stream(self.stream):
                    graph.replay()
                return
            except RtsegError:
                raise
            except Exception as e:  # capture not possible for this engine: fall back, once
                warnings.warn(f"CUDA graph capture failed ({e}); running the TensorRT engine without graphs", RuntimeWarning)
                self.cuda_graph = False
                self._graphs.clear()
                self.stream.synchronize()
        self._bind(self.context, n, self._d_in.data_ptr(), self._d_out.data_ptr())
        self._enqueue(self.context)

    def _normalize_into(self, src_u8, dst) -> None:
        """uint8 NHWC RGB (device) → normalised NCHW in ``dst`` (device), on the current stream."""
        dst.copy_(src_u8.permute(0, 3, 1, 2))
        dst.mul_(self._t_scale).add_(self._t_shift)

    def _mask_into(self, logits, dst) -> None:
        """logits [n, C, H, W] → uint8 mask [n, H, W] (C=1: logit > 0 ⇔ sigmoid > 0.5; else argmax)."""
        if logits.shape[1] == 1:
            dst.copy_(logits[:, 0] > 0)
        else:
            dst.copy_(logits.argmax(dim=1))

    def _check_torch(self, x, kind: str):
        import torch

        if not isinstance(x, torch.Tensor) or x.device.type != "cuda":
            raise RtsegError(f"{kind} expects a torch CUDA tensor; use infer()/predict_u8() for NumPy arrays")
        n = int(x.shape[0]) if x.dim() == 4 else -1
        self._check_batch(n)
        if n < self.min_batch:
            raise RtsegError(f"batch of {n} is below this engine's minimum of {self.min_batch}; rebuild with --min-batch 1")
        return n

    # -- GPU fast paths ---------------------------------------------------------------------------
    def infer_torch(self, x, out=None):
        """Logits for a batch already on the GPU.

        Args:
            x: ``torch.float32[N, 3, H, W]`` normalised RGB on the engine's CUDA device (other float
                dtypes/devices/layouts are converted once). Zero-copy when contiguous float32 on
                the engine's device and CUDA graphs are off.
            out: optional ``[N, C, H, W]`` tensor (engine output dtype, contiguous, same device)
                to write into.

        Returns:
            ``torch.float32[N, C, H, W]`` logits on the device, ready on the caller's current stream.

        Raises:
            RtsegError: not a CUDA tensor, wrong shape, batch outside the profile.
        """
        import torch

        n = self._check_torch(x, "infer_torch")
        h, w = self.input_hw
        if tuple(x.shape[1:]) != (3, h, w):
            raise RtsegError(f"engine expects input [N, 3, {h}, {w}]; got {tuple(x.shape)} (rebuild with --img-size to change it)")
        caller = torch.cuda.current_stream(self.device)
        if x.device != self.device or x.dtype != self._in_dtype or not x.is_contiguous():
            x = x.to(device=self.device, dtype=self._in_dtype).contiguous()
        if out is None:
            out = torch.empty((n, self.num_classes, h, w), dtype=self._out_dtype, device=self.device)
        elif tuple(out.shape) != (n, self.num_classes, h, w) or out.dtype != self._out_dtype or not out.is_contiguous():
            raise RtsegError(f"out must be a contiguous {self._out_dtype} tensor [{n}, {self.num_classes}, {h}, {w}]")
        self.stream.wait_stream(caller)
        with torch.cuda.stream(self.stream):
            if self.cuda_graph:
                self._d_in[:n].copy_(x)
                self._run_static(n)
                out.copy_(self._d_out[:n])
            else:
                self._bind(self.context, n, x.data_ptr(), out.data_ptr())
                self._enqueue(self.context)
        x.record_stream(self.stream)
        out.record_stream(self.stream)
        caller.wait_stream(self.stream)
        return out

    def predict_u8_torch(self, frames):
        """``torch.uint8[N, H, W, 3]`` RGB on the GPU → ``torch.uint8[N, H, W]`` mask on the GPU.

        Normalisation, the engine, and argmax / ``logit > 0`` all run on ``self.stream``; the result
        is ready on the caller's current stream.
        """
        import torch

        n = self._check_torch(frames, "predict_u8_torch")
        h, w = self.input_hw
        if frames.dtype != torch.uint8 or tuple(frames.shape[1:]) != (h, w, 3):
            raise RtsegError(f"engine expects uint8 frames [N, {h}, {w}, 3]; got {frames.dtype} {tuple(frames.shape)} "
                             f"(resize or letterbox frames to {w}x{h} first)")
        caller = torch.cuda.current_stream(self.device)
        frames = frames.to(self.device)
        mask = torch.empty((n, h, w), dtype=torch.uint8, device=self.device)
        self.stream.wait_stream(caller)
        with torch.cuda.stream(self.stream):
            self._normalize_into(frames, self._d_in[:n])
            self._run_static(n)
            self._mask_into(self._d_out[:n], mask)
        frames.record_stream(self.stream)
        mask.record_stream(self.stream)
        caller.wait_stream(self.stream)
        return mask

    # -- NumPy interface (pinned host buffers) ----------------------------------------------------
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """``float32[N, 3, H, W]`` normalised (NumPy) → logits ``float32[N, C, H, W]`` (NumPy)."""
        import torch

        self.check_nchw(batch)
        n = batch.shape[0]
        h, w = self.input_hw
        if n < self.min_batch:
            raise RtsegError(f"batch of {n} is below this engine's minimum of {self.min_batch}; rebuild with --min-batch 1")
        h_in = self._pinned("in", (self.max_batch, 3, h, w), torch.float32)
        h_out = self._pinned("out", (self.max_batch, self.num_classes, h, w), torch.float32)
        h_in[:n].numpy()[...] = batch
        with torch.cuda.stream(self.stream):
            self._d_in[:n].copy_(h_in[:n], non_blocking=True)
            self._run_static(n)
            h_out[:n].copy_(self._d_out[:n], non_blocking=True)
        self.stream.synchronize()
        return h_out[:n].numpy().copy()

    def infer_u8(self, frames: np.ndarray) -> np.ndarray:
        """``uint8[N, H, W, 3]`` RGB (NumPy) → logits ``float32[N, C, H, W]``; normalised on the GPU."""
        import torch

        self.check_u8(frames)
        n = frames.shape[0]
        h, w = self.input_hw
        h_u8 = self._pinned("u8", (self.max_batch, h, w, 3), torch.uint8)
        h_out = self._pinned("out", (self.max_batch, self.num_classes, h, w), torch.float32)
        h_u8[:n].numpy()[...] = frames
        with torch.cuda.stream(self.stream):
            self._d_u8[:n].copy_(h_u8[:n], non_blocking=True)
            self._normalize_into(self._d_u8[:n], self._d_in[:n])
            self._run_static(n)
            h_out[:n].copy_(self._d_out[:n], non_blocking=True)
        self.stream.synchronize()
        return h_out[:n].numpy().copy()

    def predict_u8(self, frames):
        """``uint8[N, H, W, 3]`` RGB → mask ``uint8[N, H, W]``; only the mask crosses to the host.

        A torch CUDA tensor in gives a torch CUDA mask out (:meth:`predict_u8_torch`).
        """
        import torch

        if isinstance(frames, torch.Tensor):
            return self.predict_u8_torch(frames)
        self.check_u8(frames)
        n = frames.shape[0]
        h, w = self.input_hw
        h_u8 = self._pinned("u8", (self.max_batch, h, w, 3), torch.uint8)
        h_mask = self._pinned("mask", (self.max_batch, h, w), torch.uint8)
        h_u8[:n].numpy()[...] = frames
        with torch.cuda.stream(self.stream):
            self._d_u8[:n].copy_(h_u8[:n], non_blocking=True)
            self._normalize_into(self._d_u8[:n], self._d_in[:n])
            self._run_static(n)
            self._mask_into(self._d_out[:n], self._d_mask[:n])
            h_mask[:n].copy_(self._d_mask[:n], non_blocking=True)
        self.stream.synchronize()
        return h_mask[:n].numpy().copy()

    def warmup(self, iterations: int = 3, batch: int | None = None) -> None:
        """Run the engine a few times (and capture its CUDA graph) so timings exclude first-run costs."""
        n = batch or self.max_batch or 1
        for _ in range(max(1, iterations)):
            self._run_static(n)
        self.stream.synchronize()

    def describe(self) -> str:
        h, w = self.input_hw
        graph = " +cudagraph" if self.cuda_graph else ""
        return f"tensorrt {self.trt_version} {self.precision} {w}x{h} C={self.num_classes} on {self.device}{graph}"

    def close(self) -> None:
        """Wait for queued work and release the engine, contexts, graphs and buffers."""
        stream = getattr(self, "stream", None)
        if stream is not None:
            stream.synchronize()
        self._graphs = {}
        for attr in ("context", "engine", "_runtime", "_d_in", "_d_out", "_d_u8", "_d_mask"):
            if hasattr(self, attr):
                setattr(self, attr, None)
        self._d_extra = {}
        self._host = {}


#: the TensorRT build options ``build-engine`` passes through (``--min-batch`` ... CLI flags)
BUILD_OPTIONS = ("min_batch", "opt_batch", "max_batch", "workspace_mb", "timing_cache", "version_compatible",
                 "hardware_compatibility_level")


def run_sample(folder: Path, meta: dict, sample: np.ndarray) -> np.ndarray:
    """Logits ``float32[n, C, H, W]`` of the engine just built in ``folder`` on ``sample``
    (``float32[n, 3, H, W]``), in batches the engine's profile accepts (a batch below its minimum
    is padded by repeating images)."""
    backend = TensorRTBackend(folder, meta)
    try:
        outs, n = [], len(sample)
        for i in range(0, n, backend.max_batch):
            x = sample[i:i + backend.max_batch]
            k = len(x)
            if k < backend.min_batch:
                x = np.concatenate([x] * -(-backend.min_batch // k))[:backend.min_batch]
            outs.append(backend.infer(np.ascontiguousarray(x))[:k])
        return np.concatenate(outs)
    finally:
        backend.close()


def build_tensorrt(req: BuildRequest) -> dict[str, Any]:
    """Build ``model.engine`` with :func:`rtseg.runtime.tensorrt.build.build_tensorrt_engine` (options from
    ``req.options``, keys :data:`BUILD_OPTIONS`), run it on ``req.sample`` and check it against the
    ONNX it came from (:func:`~rtseg.runtime.tensorrt.build.check_onnx_parity`, ONNX Runtime on the
    CPU: fp32 and fp16 must match, int8 is recorded for the gate). Returns the ``engine.json``
    entries, ``output_sample`` (compared with PyTorch by the builder: ``verify``) and
    ``verify_onnx`` (the ONNX parity record).

    Raises:
        RtsegError: TensorRT or CUDA missing, the builder's own errors, or an fp32/fp16 engine that
            does not match its ONNX.
    """
    try:
        from .build import TensorRTBuildOptions, build_tensorrt_engine, check_onnx_parity, onnx_reference
    except ImportError as e:
        raise RtsegError(f"the TensorRT builder is unavailable ({e}); install 'rtseg[tensorrt]' on a machine with an "
                         f"NVIDIA GPU, or use --backend openvino") from None
    kwargs = {k: v for k, v in req.options.items() if v is not None and k in BUILD_OPTIONS}
    entries = dict(build_tensorrt_engine(req.onnx, req.folder, req.precision,
                                         TensorRTBuildOptions(input_hw=tuple(req.input_hw), **kwargs)))
    info = {k: v for k, v in entries.items() if k not in ("backend", "precision", "build")}
    info.update(entries.get("build") or {})
    if req.sample is not None:
        meta = {**entries, "model": {"num_classes": None}, "checkpoint": {"path": None}}
        y = run_sample(Path(req.folder), meta, np.asarray(req.sample, np.float32))
        info["verify_onnx"] = check_onnx_parity(y, onnx_reference(req.onnx, req.sample), req.precision,
                                                f"the TensorRT engine in {req.folder}")
        info["output_sample"] = y
    return info


def _version() -> str:
    from .build import import_tensorrt

    return str(import_tensorrt().__version__)


def _device_info() -> dict[str, Any]:
    from .build import cuda_device_info

    return cuda_device_info()


def _load(folder: Path, meta: dict, opts: LoadOptions) -> TensorRTBackend:
    return TensorRTBackend(folder, meta, **opts.extra)


SPEC = BackendSpec(
    name="tensorrt", label="TensorRT", precisions=PRECISIONS, engine_file="model.engine",
    version=_version, device_info=_device_info, build=build_tensorrt, load=_load, build_options=BUILD_OPTIONS,
    description="TensorRT on an NVIDIA GPU: fp32, fp16, int8 (explicit Q/DQ)")

__all__ = ["BUILD_OPTIONS", "SPEC", "EngineIO", "TensorRTBackend", "build_tensorrt", "check_engine_meta", "deserialize_engine",
           "engine_io", "rebuild_hint", "resolve_output_shape", "run_sample"]
