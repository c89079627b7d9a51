"""Build TensorRT engines (fp32 / fp16 / int8) from rtseg's ONNX graphs.

``build_tensorrt_engine`` turns the FP32 ONNX (fp32, fp16) or the calibrated Q/DQ ONNX (int8) into
``model.engine`` with TensorRT's ONNX parser, one optimisation profile (dynamic batch, fixed
3×H×W), a reusable timing cache and optional version/hardware compatibility. It returns the
``engine.json`` entries it owns; ``rtseg.export.command`` writes the file (docs/internals.md).

Precision per TensorRT major version (docs/architecture.md, "Why one quantized ONNX"):

==========  =======================================  ==========================================
precision   TensorRT 10                              TensorRT 11
==========  =======================================  ==========================================
fp32        FP32 ONNX, strongly typed, TF32 off      FP32 ONNX (strongly typed), TF32 off
fp16        FP32 ONNX + ``BuilderFlag.FP16``         FP16 ONNX from :func:`fp16_onnx` (strongly typed)
int8        Q/DQ ONNX, strongly typed                Q/DQ ONNX (strongly typed)
==========  =======================================  ==========================================

int8 uses a strongly typed network on both majors: NVIDIA's explicit-quantization guide says "Use
explicit quantization with Strong Typing. Precision-control build flags are not required and should
not be specified" (docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html).
Layers outside Q/DQ pairs then run in FP32, as in ONNX Runtime and OpenVINO.

TensorRT API calls used here and where each was checked (search tool, docs corpus unless noted):

* ``trt.Logger``, ``trt.Builder(logger)``, ``builder.create_network(flags)``,
  ``builder.create_builder_config()``, ``trt.OnnxParser(network, logger)``, ``parser.parse(...)``,
  ``builder.build_serialized_network(network, config)`` — TensorRT 10→11 Python migration page
  (docs.nvidia.com/deeplearning/tensorrt/11.4.0/api/migration/tensorrt-10x-to-11x-python-api-patterns.html).
* ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` — Python API "Builder" page (10.x: opt-in flag;
  11.0: "[DEPRECATED] ... Strongly typed mode is always enabled ... ignored"), so on 11 we pass 0.
* ``BuilderFlag.FP16`` / ``INT8`` removed in 11 — "Removed Python APIs and Replacements" (11.x).
* ``OnnxParser.parse_from_file``, ``num_errors``, ``get_error`` — Python "Onnx Parser" page.
* ``IBuilderConfig.set_memory_pool_limit(MemoryPoolType.WORKSPACE, bytes)`` — MemoryPoolType
  ``kWORKSPACE`` (C++ enum docs) and real use in NVIDIA/TensorRT samples (code corpus).
* ``create_optimization_profile``, ``IOptimizationProfile.set_shape(name, min, opt, max)``,
  ``add_optimization_profile`` — C++ IBuilder/IBuilderConfig member lists (10.15, 11.4) and code corpus.
* ``create_timing_cache(bytes)``, ``set_timing_cache(cache, ignore_mismatch)`` (returns a bool:
  False for a cache whose CUDA device properties differ from this GPU's),
  ``get_timing_cache().serialize()`` (``None`` when no cache is attached) — IBuilderConfig member
  list (10.14, 11.4.1: createTimingCache) and code corpus. A refused cache is replaced by a fresh
  one (``RuntimeWarning``) and the fresh cache is written back.
* ``BuilderFlag.VERSION_COMPATIBLE`` — "Version Compatibility" page (10.16.1) shows
  ``builder_config.set_flag(tensorrt.BuilderFlag.VERSION_COMPATIBLE)``; engines from 10 run on 11.
* ``config.hardware_compatibility_level = HardwareCompatibilityLevel.AMPERE_PLUS`` /
  ``SAME_COMPUTE_CAPABILITY`` — HardwareCompatibilityLevel enum (kNONE, kAMPERE_PLUS,
  kSAME_COMPUTE_CAPABILITY) and IBuilderConfig getHardwareCompatibilityLevel (10.14, 11.4.1);
  kSAME_COMPUTE_CAPABILITY exists only from TensorRT 10.9 ("Added a new hardware compatibility
  level, kSAME_COMPUTE_CAPABILITY" — 10.9.0 release notes), so older 10.x refuse it with an RtsegError.
* ``BuilderFlag.TF32`` ("Allow ... TF32 ... Enabled by default") — BuilderFlag enum, still present
  in the 11.x flag list.

Every ``trt.*`` name and every call above is checked against the real bindings of TensorRT 10.0.1,
10.8, 10.9, 10.16.1, 11.0 and 11.4 by ``tests/runtime/test_trt_bindings.py`` (no GPU needed). A name that
exists only in some versions carries its guard next to the code: a ``# trt-guard: <11`` comment, or
:data:`HARDWARE_LEVEL_SINCE`; the test requires each guarded name to exist exactly where the guard says.

No CUDA call is made through pycuda: the GPU name and compute capability come from
``torch.cuda`` (the project's torch is a CUDA build).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ...errors import RtsegError

ENGINE_FILE = "model.engine"
FP16_ONNX_FILE = "model.fp16.onnx"
PRECISIONS = ("fp32", "fp16", "int8")
HARDWARE_LEVELS = ("none", "ampere_plus", "same_compute_capability")

TRT_MISSING = ("TensorRT is not installed: pip install 'rtseg[tensorrt]' on a machine with an NVIDIA GPU; "
               "on this machine build --backend openvino")


# -- environment ----------------------------------------------------------------------------------
def import_tensorrt():
    """Import and return the ``tensorrt`` module.

    Raises:
        RtsegError: TensorRT is not importable (message: how to install it / what to use instead),
            or its major version is below 10.
    """
    try:
        import tensorrt as trt  # noqa: PLC0415 - lazy on purpose
    except Exception:  # ImportError, or a broken install whose shared libraries do not load
        raise RtsegError(TRT_MISSING) from None
    if trt_major(trt.__version__) < 10:
        raise RtsegError(f"TensorRT {trt.__version__} is too old; rtseg needs TensorRT 10 or 11: "
                         f"pip install 'rtseg[tensorrt]'")
    return trt


def trt_major(version: str) -> int:
    """Major version of a TensorRT version string (``"10.3.0.26"`` → 10)."""
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


def cuda_device_info(index: int | None = None) -> dict[str, Any]:
    """The CUDA device TensorRT will use, as ``engine.json`` records it.

    Returns:
        ``{"type": "cuda", "index": int, "name": str, "compute_capability": "8.6",
        "capabilities": ["sm_86", "fp16", "int8"], "memory_mb": int}``.

    Raises:
        RtsegError: no CUDA device is visible.
    """
    import torch

    if not torch.cuda.is_available():
        raise RtsegError("no CUDA device is available: TensorRT engines need an NVIDIA GPU with a working driver; "
                         "on this machine build --backend openvino or --backend onnxruntime")
    idx = torch.cuda.current_device() if index is None else int(index)
    major, minor = torch.cuda.get_device_capability(idx)
    props = torch.cuda.get_device_properties(idx)
    caps = [f"sm_{major}{minor}"]
    if (major, minor) >= (5, 3):
        caps.append("fp16")
    if (major, minor) >= (6, 1):
        caps.append("int8")
    return {"type": "cuda", "index": idx, "name": torch.cuda.get_device_name(idx),
            "compute_capability": f"{major}.{minor}", "capabilities": caps,
            "memory_mb": int(props.total_memory // (1 << 20))}


# -- FP16 ONNX ------------------------------------------------------------------------------------
def _toposort(graph) -> None:
    """Sort ``graph.node`` topologically in place (the float16 converter appends its input casts)."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    nodes = list(graph.node)
    ordered, pending = [], nodes
    while pending:
        rest = []
        for n in pending:
            if all(i in known for i in n.input):
                ordered.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):  # a cycle or an input from an outer scope: keep the rest as is
            ordered.extend(rest)
            break
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def fp16_onnx(onnx_in: str | Path, onnx_out: str | Path, *, keep_io_types: bool = True,
              op_block_list: list[str] | None = None) -> Path:
    """Convert an FP32 ONNX to FP16 weights and activations, keeping float32 I/O.

    This is the FP16 source for TensorRT 11's strongly typed networks (TensorRT 11 removed
    ``BuilderFlag.FP16``; NVIDIA's migration guide converts the ONNX before the build with
    ``keep_io_types=True``). The conversion is ONNX Runtime's ``onnxruntime.transformers.float16``
    (the same code as ``onnxconverter_common.float16``; onnxruntime is already a dependency):
    initializers and activations become float16, ``Cast`` nodes are inserted at the float32 graph
    inputs/outputs, ops in ONNX Runtime's default block list plus ``LayerNormalization`` stay
    float32 (variance overflow in FP16). The result is sorted topologically and checked with
    ``onnx.checker``.

    Args:
        onnx_in: FP32 ONNX path (no Q/DQ nodes).
        onnx_out: where to write the FP16 ONNX.
        keep_io_types: keep graph inputs/outputs float32 (default).
        op_block_list: op types to keep in float32 (default: ORT's list + LayerNormalization).

    Returns:
        ``Path(onnx_out)``.

    Raises:
        RtsegError: unreadable input, or a Q/DQ graph (INT8 engines are built from the Q/DQ ONNX as is).
    """
    import onnx

    from ...onnx_files import load_onnx
    from .onnx_check import has_qdq

    try:
        model = load_onnx(onnx_in)
    except RtsegError:
        raise
    except Exception as e:
        raise RtsegError(f"cannot read {onnx_in} ({e}); re-export with 'rtseg export'") from None
    if has_qdq(model):
        raise RtsegError(f"{onnx_in} is a Q/DQ (INT8) graph; FP16 conversion needs the FP32 ONNX (model.onnx)")
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    block = list(DEFAULT_OP_BLOCK_LIST) + ["LayerNormalization"] if op_block_list is None else list(op_block_list)
    m16 = convert_float_to_float16(model, keep_io_types=keep_io_types, op_block_list=block)
    _toposort(m16.graph)
    onnx.checker.check_model(m16)
    out = Path(onnx_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from ...safe_io import atomic_write_bytes

    atomic_write_bytes(out, m16.SerializeToString(), fsync=False)
    return out


# -- parity with the ONNX reference ---------------------------------------------------------------
#: Build-time parity of TensorRT engines with the ONNX they came from (ONNX Runtime, CPU):
#: max |engine − reference| ≤ rel × max |reference| + abs, and mask agreement ≥ mask. fp32 is built
#: with TF32 off, so it must match closely; fp16 within half-precision rounding. int8 is recorded
#: only: its accuracy is the gate's decision (task metric on labelled images).
PARITY_BOUNDS = {"fp32": {"rel": 1e-3, "abs": 1e-4, "mask": 0.999}, "fp16": {"rel": 2e-2, "abs": 1e-3, "mask": 0.99}}


def onnx_reference(onnx_path: str | Path, x):
    """Logits ``float32[N, C, H, W]`` of ``onnx_path`` on ``x`` (``float32[N, 3, H, W]``) in ONNX Runtime (CPU)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def check_onnx_parity(output, reference, precision: str, what: str = "the engine") -> dict[str, Any]:
    """Compare engine logits with the ONNX reference (both ``float32[N, C, H, W]``).

    Returns:
        ``{"reference", "max_abs_diff", "logit_scale", "bound", "mask_agreement", "passed"}``
        (``bound``/``passed`` ``None`` for int8: the accuracy gate decides).

    Raises:
        RtsegError: an fp32/fp16 engine outside :data:`PARITY_BOUNDS` (one line with the numbers).
    """
    import numpy as np

    y, ref = np.asarray(output, np.float64), np.asarray(reference, np.float64)
    if y.shape != ref.shape:
        raise RtsegError(f"{what} returned logits of shape {y.shape}, the ONNX {ref.shape}; rebuild it")
    diff, scale = float(np.max(np.abs(y - ref))), float(np.max(np.abs(ref)))
    masks = (y > 0, ref > 0) if y.shape[1] == 1 else (y.argmax(1), ref.argmax(1))
    agree = float(np.mean(masks[0] == masks[1]))
    b = PARITY_BOUNDS.get(precision)
    bound = None if b is None else b["rel"] * scale + b["abs"]
    passed = None if b is None else bool(diff <= bound and agree >= b["mask"])
    if passed is False:
        raise RtsegError(f"{what} ({precision}) does not match its ONNX: max abs diff {diff:.3g} (bound {bound:.3g}), "
                         f"mask agreement {agree:.4f} (needs {b['mask']}); rebuild with --verbose and report it, "
                         f"or use --backend onnxruntime")
    return {"reference": "ONNX Runtime (CPU) on the source ONNX", "max_abs_diff": diff, "logit_scale": scale,
            "bound": bound, "mask_agreement": agree, "passed": passed}


# -- build ----------------------------------------------------------------------------------------
#: The first TensorRT version with each hardware compatibility level (``kSAME_COMPUTE_CAPABILITY``:
#: "Added a new hardware compatibility level" in the TensorRT 10.9.0 release notes).
HARDWARE_LEVEL_SINCE = {"ampere_plus": "8.6", "same_compute_capability": "10.9"}


@dataclass
class TensorRTBuildOptions:
    """Options of :func:`build_tensorrt_engine` (the CLI's ``--min-batch``, ``--workspace-mb``, ...).

    Attributes:
        input_hw: (H, W) in pixels; must equal the ONNX input's H and W. Required: ``None`` raises
            :class:`~rtseg.errors.RtsegError` at build time.
        min_batch, opt_batch, max_batch: the batch optimisation profile (1 ≤ min ≤ opt ≤ max).
        workspace_mb: ``MemoryPoolType.WORKSPACE`` limit in MiB.
        timing_cache: path of a TensorRT timing cache, read if present and written back after the
            build (reused across builds of any model on the same GPU/TensorRT version). The file
            name gets the TensorRT version and compute capability (:func:`timing_cache_file`:
            ``timing.cache`` → ``timing.trt10.3.0.sm86.cache``). A cache TensorRT refuses anyway
            (copied from another GPU) is replaced by a fresh one, with a ``RuntimeWarning``.
        version_compatible: set ``BuilderFlag.VERSION_COMPATIBLE`` (engine also runs on later
            TensorRT versions; may be slower; loading then allows the embedded lean runtime).
        hardware_compatibility_level: ``None``/``"none"``, ``"ampere_plus"`` (TensorRT ≥ 8.6) or
            ``"same_compute_capability"`` (TensorRT ≥ 10.9).
        fp16_onnx_path: an FP16 ONNX to use for ``precision="fp16"``; it is then built strongly
            typed on TensorRT 10 as well. Default on TensorRT 11: converted with :func:`fp16_onnx`.
        builder_optimization_level: ``IBuilderConfig.builder_optimization_level`` (0-5), default
            TensorRT's (3).
        verbose: TensorRT log level VERBOSE instead of WARNING.
    """

    input_hw: tuple[int, int] | None = None
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    workspace_mb: int = 4096
    timing_cache: str | Path | None = None
    version_compatible: bool = False
    hardware_compatibility_level: str | None = None
    fp16_onnx_path: str | Path | None = None
    builder_optimization_level: int | None = None
    verbose: bool = False


@dataclass
class _Network:
    """Which ONNX TensorRT parses and how it is typed (see the module table)."""

    onnx: Path
    strongly_typed: bool = True
    fp16_flag: bool = False


def _validate(precision: str, o: TensorRTBuildOptions) -> tuple[tuple[int, int], str]:
    """(H, W) and the normalised hardware compatibility level, or an RtsegError naming the option."""
    if precision not in PRECISIONS:
        raise RtsegError(f"TensorRT precision {precision!r} is not one of {', '.join(PRECISIONS)}; pass --precision fp16")
    try:
        h, w = (int(v) for v in o.input_hw)
    except (TypeError, ValueError):
        raise RtsegError(f"input size {o.input_hw!r} is not (H, W); pass --img-size HxW") from None
    if h <= 0 or w <= 0:
        raise RtsegError(f"input size {h}x{w} must be positive; pass --img-size HxW")
    if not (1 <= int(o.min_batch) <= int(o.opt_batch) <= int(o.max_batch)):
        raise RtsegError(f"batch profile min={o.min_batch} opt={o.opt_batch} max={o.max_batch} must satisfy "
                         f"1 <= min <= opt <= max; fix --min-batch/--opt-batch/--max-batch")
    if int(o.workspace_mb) <= 0:
        raise RtsegError(f"workspace of {o.workspace_mb} MiB must be positive; pass --workspace-mb 4096")
    given = o.hardware_compatibility_level
    level = "none" if given in (None, "") else str(given).lower().replace("-", "_")
    if level not in HARDWARE_LEVELS:
        raise RtsegError(f"hardware compatibility level {given!r} is not one of "
                         f"{', '.join(HARDWARE_LEVELS)}; fix --hardware-compatibility-level")
    return (h, w), level


def _preflight(onnx_path: Path, precision: str, hw: tuple[int, int], batches: tuple[int, int, int]):
    """TensorRT-free checks of the ONNX (operators, static dims, Q/DQ layout) → the input name."""
    import onnx

    from .onnx_check import non_batch_dynamic_dims, unsupported_ops

    if not onnx_path.is_file():
        raise RtsegError(f"ONNX file {onnx_path} does not exist; run 'rtseg export' (or 'rtseg calibrate' for int8) first")
    model = onnx.load(str(onnx_path), load_external_data=False)
    bad = unsupported_ops(model)
    if bad:
        raise RtsegError(f"{onnx_path.name} uses operators TensorRT's ONNX parser does not support: {', '.join(bad[:8])}; "
                         f"change the model or use --backend openvino/onnxruntime")
    # inputs only: output dims computed through shape ops (a final Resize) may be declared
    # symbolic although TensorRT resolves them; the runtime reads them from the context
    dyn = [p for p in non_batch_dynamic_dims(model) if p.startswith("input")]
    if dyn:
        raise RtsegError(f"{onnx_path.name}: {dyn[0]}; TensorRT engines need a fixed C×H×W — re-export with only the batch dynamic")
    inp = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inp) != 1:
        raise RtsegError(f"{onnx_path.name} has {len(inp)} inputs; rtseg engines take one image tensor — re-export the model")
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in inp[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] != 3 or tuple(dims[2:]) != tuple(hw):
        raise RtsegError(f"{onnx_path.name} input is {dims}, not [N, 3, {hw[0]}, {hw[1]}]; re-export at --img-size {hw[1]}x{hw[0]}")
    if dims[0] > 0 and set(batches) != {dims[0]}:
        raise RtsegError(f"{onnx_path.name} has a fixed batch of {dims[0]}; re-export with a dynamic batch ('rtseg export')")
    _check_quantization(model, onnx_path.name, precision)
    return inp[0].name


def _check_quantization(model, name: str, precision: str) -> None:
    """int8 needs a Q/DQ graph laid out for TensorRT; fp32/fp16 need a graph without Q/DQ nodes."""
    from .onnx_check import has_qdq, qdq_placement_issues

    qdq = has_qdq(model)
    if precision == "int8":
        if not qdq:
            raise RtsegError(f"{name} has no Q/DQ nodes; INT8 engines are built from the calibrated model.qdq.onnx "
                             f"— run 'rtseg calibrate' first")
        issues = qdq_placement_issues(model)
        if issues:
            more = f" (+{len(issues) - 1} more)" if len(issues) > 1 else ""
            raise RtsegError(f"{name} is not quantized the way TensorRT expects: {issues[0]}{more}; "
                             f"re-run 'rtseg calibrate'")
    elif qdq:
        raise RtsegError(f"{name} is a Q/DQ graph; {precision} engines are built from the FP32 model.onnx")


def _atomic_write(path: Path, data) -> None:
    from ...safe_io import atomic_write_bytes

    atomic_write_bytes(path, data)


def _dims_list(dims) -> list[int]:
    return [int(d) for d in dims]


def _dtype_name(t) -> str:
    """NumPy-style name of a TensorRT tensor's dtype (``DataType.HALF`` → ``"float16"``)."""
    return {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32", "UINT8": "uint8",
            "BOOL": "bool", "BF16": "bfloat16", "INT64": "int64"}.get(str(t.dtype).split(".")[-1], str(t.dtype))


def _network_source(onnx_path: Path, out_dir: Path, precision: str, fp16_onnx_path, major: int) -> _Network:
    """The graph to parse and its typing: fp32/int8 strongly typed on both majors (weak typing is
    deprecated since 10.12); fp16 from an FP16 ONNX (given, or converted on 11) or the FP16 flag (10)."""
    if precision != "fp16":
        return _Network(onnx_path)
    if fp16_onnx_path is not None:
        network_onnx = Path(fp16_onnx_path)
        if not network_onnx.is_file():
            raise RtsegError(f"FP16 ONNX {network_onnx} does not exist; omit it to convert model.onnx automatically")
        return _Network(network_onnx)
    if major >= 11:
        return _Network(fp16_onnx(onnx_path, out_dir / FP16_ONNX_FILE))
    return _Network(onnx_path, strongly_typed=False, fp16_flag=True)


def _parse_network(trt, builder, logger, net: _Network, major: int):
    """Create the network definition and parse ``net.onnx`` into it.

    Raises:
        RtsegError: a parser error (the first one, on one line), or not exactly one input.
    """
    from ...onnx_files import check_external_data

    check_external_data(net.onnx)
    flags = 0
    if net.strongly_typed and major < 11:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(net.onnx)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        first = " ".join(errors[0].split()) if errors else "no parser error recorded"
        raise RtsegError(f"TensorRT {trt.__version__} could not parse {net.onnx.name}: {first}; "
                         f"check the operator list (rtseg.runtime.tensorrt.onnx_check) or use --backend onnxruntime")
    if network.num_inputs != 1:
        raise RtsegError(f"{net.onnx.name} parsed to {network.num_inputs} inputs; rtseg engines take one image tensor")
    return network, parser


def _set_flags(trt, config, o: TensorRTBuildOptions, level: str, fp16_flag: bool) -> None:
    """Workspace, precision and compatibility flags, optimisation level.

    Raises:
        RtsegError: this TensorRT lacks the hardware compatibility level (``same_compute_capability``
            needs TensorRT ≥ 10.9).
    """
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(o.workspace_mb) << 20)
    if fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)  # trt-guard: <11 (fp16_flag is set on TensorRT 10 only)
    config.clear_flag(trt.BuilderFlag.TF32)  # "fp32" means FP32 math; TF32 is on by default
    if o.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if level != "none":
        enum_name = level.upper()
        hcl = getattr(trt, "HardwareCompatibilityLevel", None)
        if hcl is None or not hasattr(hcl, enum_name):
            raise RtsegError(f"TensorRT {trt.__version__} has no hardware compatibility level {level} (it needs TensorRT "
                             f"≥ {HARDWARE_LEVEL_SINCE[level]}); upgrade TensorRT or drop --hardware-compatibility-level")
        config.hardware_compatibility_level = getattr(hcl, enum_name)
    if o.builder_optimization_level is not None:
        config.builder_optimization_level = int(o.builder_optimization_level)


def _add_profile(builder, config, inp, hw: tuple[int, int], o: TensorRTBuildOptions) -> int:
    """One optimisation profile: dynamic batch min/opt/max, fixed C×H×W → C."""
    profile = builder.create_optimization_profile()
    c = _dims_list(inp.shape)[1]
    profile.set_shape(inp.name, (int(o.min_batch), c, *hw), (int(o.opt_batch), c, *hw), (int(o.max_batch), c, *hw))
    config.add_optimization_profile(profile)
    return c


def timing_cache_file(path: str | Path, trt_version: str, compute_capability: str) -> Path:
    """The timing cache file of this TensorRT version and GPU for the ``--timing-cache`` path given.

    A timing cache fits one TensorRT version and one GPU, so its file name carries both: ``PATH``'s
    suffix is preceded by ``.trt<version>.sm<cc>`` (``engines/timing.cache`` on TensorRT 10.3.0 and an
    A10 → ``engines/timing.trt10.3.0.sm86.cache``); a directory (existing, or given with a trailing
    ``/``) gets ``timing.trt<version>.sm<cc>.cache`` inside. One ``--timing-cache`` path can then be
    shared by several GPUs and TensorRT versions without one build refusing the others' cache.
    """
    tag = f"trt{trt_version}.sm{str(compute_capability).replace('.', '')}"
    p = Path(path)
    if p.is_dir() or str(path).endswith(("/", "\\")):
        return p / f"timing.{tag}.cache"
    if f".{tag}" in p.name:
        return p
    return p.with_name(f"{p.stem}.{tag}{p.suffix or '.cache'}")


def _load_timing_cache(config, cache_path: Path) -> None:
    """Attach the timing cache at ``cache_path`` (empty if the file is missing).

    ``IBuilderConfig.set_timing_cache(cache, ignore_mismatch=False)`` returns False for a cache
    whose CUDA device properties differ from this GPU's (and ``create_timing_cache`` may give no
    cache for unreadable bytes); such a cache is replaced by a fresh one with a ``RuntimeWarning``,
    and the build goes on.
    """
    blob = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return
    warnings.warn(f"timing cache {cache_path} does not fit this GPU or TensorRT version (made on another device?); "
                  f"building with a fresh cache, which replaces it", RuntimeWarning, stacklevel=4)
    fresh = config.create_timing_cache(b"")
    config.set_timing_cache(fresh, ignore_mismatch=False)


def _save_timing_cache(config, cache_path: Path) -> None:
    """Write the builder's timing cache back to ``cache_path`` (atomically); nothing if no cache is attached."""
    cache = config.get_timing_cache()
    if cache is None:
        return
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(cache_path, memoryview(cache.serialize()))


def _build_plan(trt, builder, network, config, precision: str, net: _Network, engine_path: Path) -> float:
    """Build and write the serialized engine → build time in seconds.

    Raises:
        RtsegError: TensorRT returned no plan (its log says why).
    """
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if plan is None:
        raise RtsegError(f"TensorRT {trt.__version__} failed to build the {precision} engine from {net.onnx.name} "
                         f"(see the TensorRT log above); try a larger --workspace-mb or --verbose")
    _atomic_write(engine_path, memoryview(plan))
    return seconds


def _relative(path: Path, out_dir: Path) -> str:
    return path.name if path.parent == out_dir else str(path)


def _build_entries(o: TensorRTBuildOptions, net: _Network, major: int, level: str, sources: dict[str, str],
                   seconds: float) -> dict[str, Any]:
    """The ``engine.json`` "build" entry; ``sources``: network_onnx, source_onnx, onnx_input."""
    return {
        "trt_major": major,
        "strongly_typed": bool(net.strongly_typed or major >= 11),
        "fp16_flag": net.fp16_flag,
        **sources,
        "workspace_mb": int(o.workspace_mb),
        "timing_cache": str(Path(o.timing_cache)) if o.timing_cache else None,
        "version_compatible": bool(o.version_compatible),
        "hardware_compatibility_level": level,
        "builder_optimization_level": o.builder_optimization_level,
        "tf32": False,
        "seconds": round(seconds, 2),
    }


def _run_builder(trt, net: _Network, o: TensorRTBuildOptions, hw: tuple[int, int], level: str, precision: str,
                 engine_path: Path) -> tuple[Any, Any, int, float]:
    """Parse, configure, build and write the engine (timing cache loaded before, saved after).

    Returns:
        (network input tensor, network output tensor, input channels C, build time in s).
    """
    major = trt_major(trt.__version__)
    logger = trt.Logger(trt.Logger.VERBOSE if o.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse_network(trt, builder, logger, net, major)  # the parser must outlive the build
    inp, out = network.get_input(0), network.get_output(0)
    config = builder.create_builder_config()
    _set_flags(trt, config, o, level, net.fp16_flag)
    c = _add_profile(builder, config, inp, hw, o)
    cache_path = Path(o.timing_cache) if o.timing_cache else None
    if cache_path is not None:
        _load_timing_cache(config, cache_path)
    seconds = _build_plan(trt, builder, network, config, precision, net, engine_path)
    if cache_path is not None:
        _save_timing_cache(config, cache_path)
    return inp, out, c, seconds


def build_tensorrt_engine(onnx_path: str | Path, out_dir: str | Path, precision: str,
                          options: TensorRTBuildOptions | None = None) -> dict[str, Any]:
    """Build ``out_dir/model.engine`` from an ONNX graph.

    Args:
        onnx_path: the FP32 ``model.onnx`` (fp32, fp16) or the calibrated ``model.qdq.onnx`` (int8);
            input ``float32[N, 3, H, W]`` (NCHW) with only N dynamic.
        out_dir: engine folder (created). Receives ``model.engine`` and, for FP16 on TensorRT 11,
            ``model.fp16.onnx``.
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"`` (see the module table).
        options: :class:`TensorRTBuildOptions`; ``options.input_hw`` is required.

    Returns:
        The ``engine.json`` entries this builder owns::

            {"backend": "tensorrt", "backend_version": "10.x.y", "precision": ...,
             "device": {"type": "cuda", "name": ..., "compute_capability": "8.6", ...},
             "engine_file": "model.engine",
             "input": {"name", "shape": [-1, 3, H, W], "dtype": "float32", "layout": "NCHW"},
             "output": {"name", "shape": [-1, C, H, W], "dtype": "float32"},
             "batch": {"min", "opt", "max"},
             "build": {"trt_major", "strongly_typed", "network_onnx", "workspace_mb", "timing_cache",
                       "version_compatible", "hardware_compatibility_level", "tf32", "seconds" (build
                       time in s), ...}}

    Warns:
        RuntimeWarning: the timing cache file does not fit this GPU/TensorRT; a fresh cache is used
            and written back.

    Raises:
        RtsegError: invalid options (``input_hw`` missing included); TensorRT not installed or older
            than 10; no CUDA device; an ONNX that fails the pre-flight checks (unsupported operators,
            dynamic H/W, Q/DQ layout, wrong input size); a hardware compatibility level this TensorRT
            lacks; a parser error; a failed build (message includes the first parser error or the
            hint to raise the workspace).
    """
    o = options if options is not None else TensorRTBuildOptions()
    hw, level = _validate(precision, o)
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    trt = import_tensorrt()
    device = cuda_device_info()
    major = trt_major(trt.__version__)
    input_name = _preflight(onnx_path, precision, hw, (int(o.min_batch), int(o.opt_batch), int(o.max_batch)))
    out_dir.mkdir(parents=True, exist_ok=True)
    net = _network_source(onnx_path, out_dir, precision, o.fp16_onnx_path, major)
    if o.timing_cache:
        o = replace(o, timing_cache=timing_cache_file(o.timing_cache, trt.__version__, device["compute_capability"]))
    inp, out, c, seconds = _run_builder(trt, net, o, hw, level, precision, out_dir / ENGINE_FILE)
    sources = {"network_onnx": _relative(net.onnx, out_dir), "source_onnx": _relative(onnx_path, out_dir),
               "onnx_input": input_name}
    return {
        "backend": "tensorrt", "backend_version": str(trt.__version__), "precision": precision, "device": device,
        "engine_file": ENGINE_FILE,
        "input": {"name": inp.name, "shape": [-1, c, *hw], "dtype": _dtype_name(inp), "layout": "NCHW"},
        "output": {"name": out.name, "shape": [-1, *_dims_list(out.shape)[1:]], "dtype": _dtype_name(out)},
        "batch": {"min": int(o.min_batch), "opt": int(o.opt_batch), "max": int(o.max_batch)},
        "build": _build_entries(o, net, major, level, sources, seconds),
    }


__all__ = ["ENGINE_FILE", "FP16_ONNX_FILE", "HARDWARE_LEVELS", "HARDWARE_LEVEL_SINCE", "PRECISIONS", "TRT_MISSING",
           "PARITY_BOUNDS", "TensorRTBuildOptions", "build_tensorrt_engine", "check_onnx_parity", "cuda_device_info",
           "fp16_onnx", "import_tensorrt", "onnx_reference", "timing_cache_file", "trt_major"]
