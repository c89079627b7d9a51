"""OpenVINO backend (CPU): runs the IR (``model.xml``/``model.bin``) of an engine folder.

docs/internals.md "Engine folder" and "Backend". The IR is FP32 (or INT8 Q/DQ → OpenVINO's
low-precision transformations turn it into INT8 kernels); the engine's ``precision`` becomes
``INFERENCE_PRECISION_HINT`` at compile time:

========  ==========================  ======================================================
precision  IR                          compile hint
========  ==========================  ======================================================
fp32      FP32 IR                      ``f32``
bf16      the same FP32 IR             ``bf16`` — needs a CPU with native bf16 (AVX512_BF16 /
                                       AMX); elsewhere OpenVINO silently runs f32, so rtseg
                                       refuses (at build and at load) instead of mislabelling
int8      IR of the Q/DQ ONNX          ``f32`` for the non-quantized remainder
========  ==========================  ======================================================

Load-time checks (docs/internals.md): the folder must be an ``openvino`` engine built with the
installed OpenVINO version (the child-process compile check of ``build-engine`` vouches for that
version only); the device is refused only when it lacks what the precision needs (bf16) — another
CPU model is accepted, the IR is portable.

Two compiled models at most: the plain one (``float32[N, 3, H, W]`` normalised) and, built on the
first :meth:`OpenVINOBackend.infer_u8` call, one whose PrePostProcessor takes ``uint8[N, H, W, 3]``
RGB and does ``(x/255 − mean)/std`` and NHWC→NCHW inside the compiled graph. Each keeps one
reusable infer request; calls are serialised with a lock (one request in flight per model).
"""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RtsegError
from .base import Backend, check_engine_header, check_io_shapes, engine_settings
from .registry import BackendSpec, BuildRequest, LoadOptions

PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def openvino_version() -> str:
    """Short OpenVINO version, e.g. ``"2026.4.1"``."""
    import openvino as ov

    return ov.__version__.split("-")[0]


def openvino_device_info(device: str = "CPU", core=None) -> dict[str, Any]:
    """``{"type": "cpu", "name": FULL_DEVICE_NAME, "capabilities": OPTIMIZATION_CAPABILITIES}``
    of an OpenVINO device (read at run time: capabilities differ between machines)."""
    import openvino as ov

    core = core or ov.Core()
    try:
        name = str(core.get_property(device, "FULL_DEVICE_NAME"))
        caps = [str(c) for c in core.get_property(device, "OPTIMIZATION_CAPABILITIES")]
    except RuntimeError as e:
        raise RtsegError(f"OpenVINO device {device} is unavailable ({str(e).splitlines()[0]}); use --device CPU") from None
    return {"type": device.lower(), "name": name, "capabilities": caps}


def check_precision_supported(precision: str, capabilities: list[str], device: str = "CPU") -> None:
    """Raise :class:`RtsegError` if ``device`` cannot run ``precision`` natively.

    bf16 needs ``"BF16"`` in OPTIMIZATION_CAPABILITIES (AVX512_BF16 or AMX); without it OpenVINO
    would silently fall back to f32.
    """
    if precision not in PRECISION_HINTS:
        raise RtsegError(f"OpenVINO engines support precisions {', '.join(PRECISION_HINTS)}, not {precision!r}; "
                         f"pass --precision fp32, bf16 or int8")
    if precision == "bf16" and "BF16" not in capabilities:
        raise RtsegError(f"this {device} has no native bf16 (OpenVINO OPTIMIZATION_CAPABILITIES = {capabilities}); "
                         f"OpenVINO would silently run f32 — use --precision fp32 or int8 here, or build/run the bf16 "
                         f"engine on a CPU with AVX512_BF16 or AMX")


def _static_dims(port) -> list[int]:
    """A compiled model port's shape, ``-1`` for dynamic dimensions."""
    return [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]


class OpenVINOBackend(Backend):
    """OpenVINO inference on an engine folder (``engine.json`` ``backend == "openvino"``).

    Args:
        folder: the engine folder.
        meta: its ``engine.json`` (as read by :func:`rtseg.runtime.read_engine_json`).
        num_threads: ``INFERENCE_NUM_THREADS`` (``None`` = OpenVINO's default, all cores).
        device: OpenVINO device name (``"CPU"``).
        performance_hint: ``"LATENCY"`` (default; one stream) or ``"THROUGHPUT"``.
        check_version: refuse an engine built with another OpenVINO version (default True).

    ``infer(float32[N, 3, H, W]) -> float32[N, C, H, W]``; ``infer_u8(uint8[N, H, W, 3]) -> float32[N, C, H, W]``.

    Raises:
        RtsegError: the folder was built for another backend, another OpenVINO version, or a
            precision this device cannot run (each with a rebuild hint), or its IR is missing.
    """

    name = "openvino"

    def __init__(self, folder: str | Path, meta: dict, num_threads: int | None = None, device: str = "CPU",
                 performance_hint: str = "LATENCY", check_version: bool = True, **_: Any):
        import openvino as ov

        folder = Path(folder)
        rebuild = check_engine_header(folder, meta, "openvino", "OpenVINO", openvino_version(), check_version)
        settings = engine_settings(folder, meta)
        precision = settings["precision"]
        self._core = ov.Core()
        caps = openvino_device_info(device, self._core)["capabilities"]
        check_precision_supported(precision, caps, device)
        xml = folder / meta["engine_file"]
        if not xml.is_file() or not xml.with_suffix(".bin").is_file():
            raise RtsegError(f"{folder} lacks the IR {xml.name}/{xml.with_suffix('.bin').name}; {rebuild}")
        super().__init__(**settings)
        self.device = device
        self.config: dict[str, str] = {"PERFORMANCE_HINT": performance_hint,
                                       "INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision]}
        if num_threads:
            self.config["INFERENCE_NUM_THREADS"] = str(int(num_threads))
        self._xml = xml
        self._lock = threading.Lock()
        try:
            self._compiled = self._core.compile_model(self._core.read_model(str(xml)), device, self.config)
        except RuntimeError as e:
            raise RtsegError(f"OpenVINO cannot compile {xml} ({str(e).strip().splitlines()[0]}); {rebuild}") from None
        check_io_shapes(folder, meta, _static_dims(self._compiled.inputs[0]), _static_dims(self._compiled.outputs[0]),
                        rebuild)
        if precision == "bf16":
            got = str(self._compiled.get_property("INFERENCE_PRECISION_HINT"))
            if "bf16" not in got and "bfloat16" not in got:  # OpenVINO prints <Type: 'bfloat16'>
                raise RtsegError(f"OpenVINO compiled {folder} at {got}, not bf16, on this {device}; use the fp32 engine here")
        self._request = self._compiled.create_infer_request()
        self._compiled_u8 = None
        self._request_u8 = None

    def _build_u8(self) -> None:
        import openvino as ov
        from openvino.preprocess import PrePostProcessor

        model = self._core.read_model(str(self._xml))
        ppp = PrePostProcessor(model)
        inp = ppp.input()
        inp.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
        inp.model().set_layout(ov.Layout("NCHW"))
        # (x/255 - mean)/std == (x - 255*mean) / (255*std)
        inp.preprocess().convert_element_type(ov.Type.f32).mean([float(255.0 * m) for m in self.mean]) \
            .scale([float(255.0 * s) for s in self.std])
        self._compiled_u8 = self._core.compile_model(ppp.build(), self.device, self.config)
        self._request_u8 = self._compiled_u8.create_infer_request()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """``float32[N, 3, H, W]`` normalised RGB → logits ``float32[N, C, H, W]`` (a new array).

        Raises:
            RtsegError: wrong shape for this engine.
        """
        self.check_nchw(batch)
        x = np.ascontiguousarray(batch, dtype=np.float32)
        with self._lock:
            self._request.infer({0: x}, share_inputs=True)
            return np.array(self._request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def infer_u8(self, frames: np.ndarray) -> np.ndarray:
        """``uint8[N, H, W, 3]`` RGB at the engine size → logits ``float32[N, C, H, W]``; the
        normalisation and layout change run inside the compiled graph (PrePostProcessor).

        Raises:
            RtsegError: wrong dtype/shape for this engine.
        """
        self.check_u8(frames)
        x = np.ascontiguousarray(frames)
        with self._lock:
            if self._compiled_u8 is None:
                self._build_u8()
            self._request_u8.infer({0: x}, share_inputs=True)
            return np.array(self._request_u8.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def close(self) -> None:
        """Drop the compiled models and requests."""
        self._request = self._request_u8 = None
        self._compiled = self._compiled_u8 = None


# ------------------------------------------------------------------------------------------------
# native-crash guard
# ------------------------------------------------------------------------------------------------
# Compiles the model as rtseg runs it (dynamic batch) and once more with the batch fixed to the
# sample's: OpenVINO 2026.4 segfaulted on ONNX Runtime's default Q/DQ only in the static-shape case.
_OV_CHILD = r"""
import json, sys, numpy as np, openvino as ov
path, config, x_path, y_path = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
device = config.pop("device", "CPU")
x = np.load(x_path)
core = ov.Core()
outs = []
for static in (False, True):
    model = core.read_model(path)
    if static:
        model.reshape({model.inputs[0].get_any_name(): list(x.shape)})
    compiled = core.compile_model(model, device, config)
    req = compiled.create_infer_request()
    req.infer({0: x})
    outs.append(np.array(req.get_output_tensor(0).data, dtype=np.float32))
np.save(y_path, outs[0])
print(json.dumps({"precision": str(compiled.get_property("INFERENCE_PRECISION_HINT")),
                  "static_vs_dynamic": float(np.max(np.abs(outs[0] - outs[1])))}))
"""


def verify_openvino(model_path: str | Path, sample: np.ndarray, config: dict[str, str] | None = None,
                    device: str = "CPU", fix: str | None = None, timeout: float = 900.0) -> np.ndarray:
    """Compile ``model_path`` (ONNX or IR) with OpenVINO and run ``sample`` in a child process,
    twice: with its dynamic batch (as :class:`~rtseg.runtime.openvino_backend.OpenVINOBackend` runs
    it) and reshaped to the sample's static shape (where OpenVINO 2026.4 segfaulted on ONNX Runtime's
    default Q/DQ).

    Args:
        model_path: ONNX or ``.xml`` file.
        sample: ``float32[N, 3, H, W]`` input.
        config: compile properties (e.g. ``{"INFERENCE_PRECISION_HINT": "f32"}``).

    Returns:
        the output ``float32[N, C, H, W]``.

    Raises:
        RtsegError: OpenVINO crashed or failed on this graph (message names the cause and the fix).
    """
    cfg = dict(config or {})
    cfg["device"] = device
    fix = fix or ("this Q/DQ graph is not supported by this OpenVINO version; rebuild it with rtseg's default scheme "
                  "('rtseg calibrate', symmetric int8) or use --backend onnxruntime")
    with tempfile.TemporaryDirectory(prefix="rtseg-ov-") as tmp:
        x, y = Path(tmp) / "x.npy", Path(tmp) / "y.npy"
        np.save(x, np.ascontiguousarray(sample, dtype=np.float32))
        from .child import run_guarded

        run_guarded(_OV_CHILD, [str(model_path), json.dumps(cfg), str(x), str(y)],
                    what=f"OpenVINO {openvino_version()} compiling {Path(model_path).name} on {device}", fix=fix,
                    timeout=timeout)
        return np.load(y)


def build_openvino(req: BuildRequest) -> dict[str, Any]:
    """Convert ``req.onnx`` to an FP32 IR (``model.xml/.bin``, ``compress_to_fp16=False``) and compile
    it once in a child process (:func:`verify_openvino`: a compiler crash becomes an error).

    Returns the ``engine.json`` entries and ``output_sample`` (logits ``float32[n, C, H, W]`` of ``req.sample``).

    Raises:
        RtsegError: OpenVINO cannot convert the ONNX, or crashes/fails compiling it.
    """
    import openvino as ov

    from ..onnx_files import check_external_data

    check_external_data(req.onnx)
    try:
        ov_model = ov.convert_model(str(req.onnx))
    except Exception as e:  # OpenVINO's frontend raises its own types
        raise RtsegError(f"OpenVINO cannot convert {req.onnx.name} ({str(e).strip().splitlines()[0]}); "
                         f"use --backend onnxruntime or report the model") from None
    xml = req.folder / "model.xml"
    ov.save_model(ov_model, str(xml), compress_to_fp16=False)
    del ov_model
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": PRECISION_HINTS[req.precision]}
    fix = ("use --backend onnxruntime for this model, or another --precision"
           if req.precision != "int8" else
           "rtseg's Q/DQ scheme should avoid this — use --backend onnxruntime --precision int8 and report the model")
    y = verify_openvino(xml, req.sample, config, fix=fix)
    return {"backend_version": openvino_version(), "device": openvino_device_info(), "engine_file": xml.name,
            "compile_config": config, "compiled_in_child": True, "output_sample": y}


def _unavailable(precision: str) -> str | None:
    try:
        check_precision_supported(precision, openvino_device_info()["capabilities"])
    except RtsegError as e:
        return str(e)
    return None


def _load(folder: Path, meta: dict, opts: LoadOptions) -> OpenVINOBackend:
    return OpenVINOBackend(folder, meta, num_threads=opts.num_threads, **opts.extra)


SPEC = BackendSpec(
    name="openvino", label="OpenVINO", precisions=tuple(PRECISION_HINTS), engine_file="model.xml",
    version=openvino_version, device_info=openvino_device_info, build=build_openvino, load=_load,
    unavailable=_unavailable, description="OpenVINO on the CPU (default without a GPU): fp32, bf16 (native bf16 CPUs), int8")
