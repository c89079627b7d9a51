"""PyTorch → ONNX export with checks (issue 2 step 6; docs/internals.md "Engine folder").

The graph has one input ``input: float32[batch, 3, H, W]`` (normalised RGB, NCHW) and one output
``logits: float32[batch, C, H, W]``; only the batch axis is dynamic, H and W are fixed at export
time (the networks' shape checks run at trace time only).

Checks, in order (each failure is an :class:`~rtseg.errors.RtsegError`):

1. ``onnx.checker.check_model(full_check=True)`` (with shape inference).
2. Parity: ONNX Runtime (CPU, fp32, no graph optimisation) vs PyTorch on a batch of 2 (real images
   when the caller gives them, else seeded Gaussian noise). The export fails when
   ``max_abs_diff > PARITY_ATOL + PARITY_RTOL * max(|torch logits|)`` — i.e. 1e-3 relative to the
   logit scale, plus 1e-4 absolute so that near-zero logits of an untrained net do not trip it.
   FP32 kernels of different libraries differ by ~1e-6 relative; anything near the bound means a
   wrongly exported operator.

The export is deterministic: the same module and input size give the same bytes (the calibration
test relies on it).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RtsegError
from ..limits import check_image_size

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17
PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-3


@contextlib.contextmanager
def quiet_export():
    """Silence the legacy exporter's DeprecationWarning and the TracerWarnings of the networks'
    static shape checks (they are intended: H and W are baked into the graph)."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        yield


def inline_identity_initializers(model) -> int:
    """Replace ``Identity(initializer)`` nodes by a copy of the initializer under the output name.

    The legacy exporter deduplicates equal initializers (e.g. the all-zero BN biases of a fresh
    network) and re-reads them through ``Identity`` nodes; quantizers then see a bias that is "not an
    initializer" and skip it. Returns the number of nodes removed. Works in place on an
    ``onnx.ModelProto``.
    """
    import onnx

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    keep, n = [], 0
    for node in g.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in {o.name for o in g.output}:
            t = onnx.TensorProto()
            t.CopyFrom(inits[node.input[0]])
            t.name = node.output[0]
            g.initializer.append(t)
            inits[t.name] = t
            n += 1
        else:
            keep.append(node)
    if n:
        del g.node[:]
        g.node.extend(keep)
        used = {i for node in g.node for i in node.input} | {o.name for o in g.output}
        unused = [t for t in g.initializer if t.name not in used]
        for t in unused:
            g.initializer.remove(t)
    return n


def _ort_session(path_or_bytes, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(path_or_bytes, so, providers=["CPUExecutionProvider"])


def parity_bound(reference: np.ndarray) -> float:
    """Largest accepted ``max|onnx − torch|`` for reference logits ``reference`` (see module doc)."""
    return float(PARITY_ATOL + PARITY_RTOL * float(np.max(np.abs(reference))) if reference.size else PARITY_ATOL)


def _parity_sample(sample: np.ndarray | None, h: int, w: int) -> tuple[np.ndarray, bool]:
    """(``float32[N ≤ 2, 3, H, W]`` parity input, whether the caller gave it); default: seeded noise of batch 2."""
    if sample is None:
        return np.random.default_rng(0).standard_normal((2, 3, h, w)).astype(np.float32), False
    sample = np.ascontiguousarray(sample[:2], dtype=np.float32)
    if sample.ndim != 4 or sample.shape[1:] != (3, h, w):
        raise RtsegError(f"parity sample has shape {tuple(sample.shape)}, expected [N, 3, {h}, {w}]; pass images at the export size")
    return sample, True


def _torch_reference(model, sample: np.ndarray, h: int, w: int) -> np.ndarray:
    """PyTorch logits ``float32[N, C, H, W]`` of ``sample``; refuses sizes the network rejects and non-NCHW outputs."""
    import torch

    try:
        with torch.inference_mode():
            reference = model(torch.from_numpy(sample)).float().numpy()
    except ValueError as e:  # the networks' own input checks (H, W multiple of ...)
        raise RtsegError(f"cannot export at {w}x{h}: {e}") from None
    if reference.ndim != 4 or reference.shape[0] != sample.shape[0]:
        raise RtsegError(f"model output has shape {tuple(reference.shape)}, expected [N, C, {h}, {w}]; "
                         f"only segmentation networks returning logits can be exported")
    return reference


def _trace(model, dummy, opset: int) -> bytes:
    """The legacy (TorchScript) exporter's ONNX bytes: batch-only dynamic axes, constants folded."""
    import torch

    buf = io.BytesIO()
    try:
        with quiet_export(), torch.no_grad():
            torch.onnx.export(model, (dummy,), buf, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              opset_version=opset, do_constant_folding=True, dynamo=False)
    except Exception as e:  # the exporter raises many types; none is the user's fault to debug
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RtsegError(f"ONNX export failed at opset {opset}: {msg}; try another --opset or report the model") from None
    return buf.getvalue()


def _clean_graph(proto, out_shape: tuple[int, ...]) -> None:
    """In place: inline ``Identity(initializer)`` nodes, stamp the output as ``[batch, C, H, W]``, set the producer."""
    inline_identity_initializers(proto)
    # Static everything but batch: some graphs (ContraFusionNet's final Resize takes its sizes from
    # Shape ops) leave C/H/W symbolic in graph.output; stamp them from the PyTorch output so every
    # consumer (TensorRT profiles, OpenVINO reshape, our own checks) sees [batch, C, H, W].
    out_dims = proto.graph.output[0].type.tensor_type.shape.dim
    for k, size in enumerate(out_shape):
        if k == 0:
            out_dims[0].ClearField("dim_value")
            out_dims[0].dim_param = "batch"
        else:
            out_dims[k].ClearField("dim_param")
            out_dims[k].dim_value = int(size)
    proto.producer_name = "rtseg"
    from .. import __version__

    proto.producer_version = __version__


def _check_graph(proto, data: bytes, sample: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """``onnx.checker`` (full) and ONNX Runtime-vs-PyTorch parity on ``sample`` → (max abs diff, bound).

    Raises:
        RtsegError: an invalid graph, a wrong output shape (batch not dynamic), or a difference above
            :func:`parity_bound`.
    """
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise RtsegError(f"the exported ONNX graph is invalid ({str(e).splitlines()[0]}); try another --opset or report the model") from None
    got = _ort_session(data).run([OUTPUT_NAME], {INPUT_NAME: sample})[0]
    if got.shape != reference.shape:
        raise RtsegError(f"ONNX output shape {got.shape} differs from PyTorch {reference.shape} at batch {sample.shape[0]}; "
                         f"the batch axis is not dynamic in the export — report the model")
    diff = float(np.max(np.abs(got.astype(np.float64) - reference)))
    bound = parity_bound(reference)
    if not np.isfinite(diff) or diff > bound:
        raise RtsegError(f"ONNX output differs from PyTorch by {diff:.3g} (bound {bound:.3g}, logits up to "
                         f"{np.max(np.abs(reference)):.3g}); an operator was exported wrongly — try another --opset or report the model")
    return diff, bound


def _write_atomic(path: Path, data: bytes) -> None:
    from ..safe_io import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data, fsync=False)


def export_onnx(model, path: str | Path, input_hw: tuple[int, int] | list[int], opset: int = DEFAULT_OPSET,
                check: bool = True, sample: np.ndarray | None = None) -> dict[str, Any]:
    """Export ``model`` to ONNX at ``path`` (written atomically) and check it.

    Args:
        model: ``torch.nn.Module`` mapping ``float32[N, 3, H, W]`` → logits ``float32[N, C, H, W]``
            (moved to CPU and put in eval mode).
        path: output ``.onnx`` file (parent folders are created).
        input_hw: (H, W) in pixels, fixed in the graph; must suit the network (EUNet: multiples of 8).
        opset: ONNX opset (≥ 17; 17 is what TensorRT 8.6+/10, OpenVINO and ORT all take).
        check: run ``onnx.checker`` and the ONNX Runtime parity check (module doc).
        sample: optional ``float32[N, 3, H, W]`` normalised input for the parity check (N ≥ 1; the
            first 2 are used); default: seeded Gaussian noise of batch 2.

    Returns:
        ``{"path", "opset", "max_abs_diff", "tolerance", "parity_input", "torch_version",
        "onnx_version", "onnxruntime_version", "input": {"name", "shape"}, "output": {"name", "shape"}}``
        (``max_abs_diff``/``tolerance`` are ``None`` when ``check=False``).

    Raises:
        RtsegError: unsupported opset, an input size the network refuses, an exporter failure, an
            invalid graph, or ONNX-vs-PyTorch mismatch above :func:`parity_bound`.
    """
    import onnx
    import torch

    path = Path(path)
    h, w = int(input_hw[0]), int(input_hw[1])
    if opset < 17:
        raise RtsegError(f"opset {opset} is too old; use --opset 17 or newer (LayerNorm/attention ops and TensorRT 10 need ≥ 17)")
    check_image_size((h, w), frames=2)  # the parity check runs a batch of 2 through PyTorch and ONNX Runtime
    model = model.to("cpu").eval()
    sample, given = _parity_sample(sample, h, w)
    reference = _torch_reference(model, sample, h, w)
    proto = onnx.load_from_string(_trace(model, torch.from_numpy(sample[:1].copy()), opset))
    _clean_graph(proto, reference.shape)
    data = proto.SerializeToString()
    result: dict[str, Any] = {
        "path": str(path), "opset": int(opset), "max_abs_diff": None, "tolerance": None,
        "parity_input": "given" if given else "noise",
        "torch_version": torch.__version__, "onnx_version": onnx.__version__,
        "input": {"name": INPUT_NAME, "shape": [-1, 3, h, w]},
        "output": {"name": OUTPUT_NAME, "shape": [-1, int(reference.shape[1]), int(reference.shape[2]), int(reference.shape[3])]},
    }
    if check:
        import onnxruntime as ort

        diff, bound = _check_graph(proto, data, sample, reference)
        result.update(max_abs_diff=diff, tolerance=bound, onnxruntime_version=ort.__version__)
    _write_atomic(path, data)
    return result


def onnx_io(path: str | Path) -> tuple[dict, dict]:
    """``(input, output)`` of an ONNX file as ``{"name", "shape"}`` with -1 for dynamic axes."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)

    def _shape(vi):
        return [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]

    i, o = m.graph.input[0], m.graph.output[0]
    return {"name": i.name, "shape": _shape(i)}, {"name": o.name, "shape": _shape(o)}
