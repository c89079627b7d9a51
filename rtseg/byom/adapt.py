"""Checks and edits that turn a third-party segmentation ONNX into rtseg's contract (:mod:`rtseg.byom`).

rtseg's contract: one input ``float32[batch, 3, H, W]`` (normalised RGB, NCHW) and one output
``float32[batch, C, H, W]`` of logits (C = 1: a sigmoid logit, mask = logit > 0; C > 1: argmax).
A graph that differs in a way the metadata declares is edited with standard ONNX nodes:

=================================  ============================================================
what the graph has                 edit (appended/prepended nodes)
=================================  ============================================================
NHWC input ``[N, H, W, 3]``        ``Transpose(perm=[0, 2, 3, 1])`` from a new NCHW input ``input``
NHWC output ``[N, h, w, C]``       ``Transpose(perm=[0, 3, 1, 2])``
probabilities, C = 1               ``Log(p / (1 − p))`` after ``Clip(p, 1e-6, 1 − 1e-6)`` (the logit)
probabilities, C > 1               ``Log(Clip(p, 1e-12, 1))`` (softmax of it gives back p)
class indices ``[N, h, w]``        C = 1: ``2·idx − 1``; C > 1: ``OneHot(idx, C, values=[−1, 1], axis=1)``
output at ``H/s × W/s``            ``Resize`` by ``s`` (bilinear, half-pixel, as PyTorch's
                                   ``interpolate(align_corners=False)``; nearest for indices)
non-float32 output                 ``Cast(to=FLOAT)``
=================================  ============================================================

Anything else is refused with one :class:`~rtseg.errors.RtsegError` line naming the tensor or node
and the fix: no image input, several inputs, an undeclared NHWC input, a non-float input, an input or
output size other than the metadata's, a channel count other than the class count, an opset below
:data:`MIN_OPSET`, an operator outside the ONNX standard (no backend can run it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import RtsegError
from ..onnx_files import load_onnx  # noqa: F401  (re-exported: the one ONNX reader)

#: oldest opset accepted (Resize with scales, Clip with inputs)
MIN_OPSET = 11
OUTPUT_NAME = "logits"
_STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")


def opset_of(model) -> int:
    """The default-domain opset of ``model``."""
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def check_opset_and_operators(model, name: str) -> int:
    """Opset in ``MIN_OPSET..onnx``'s newest, and every node a standard ONNX operator; returns the opset.

    Raises:
        RtsegError: opset out of range, or a node whose operator is not in the ONNX standard (named).
    """
    import onnx

    opset = opset_of(model)
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise RtsegError(f"{name} uses opset {opset}; rtseg imports opsets {MIN_OPSET}..{newest} — re-export with "
                         f"opset 17 (torch.onnx.export(..., opset_version=17)) or convert it with onnx.version_converter")
    for node in model.graph.node:
        if node.domain not in _STANDARD_DOMAINS or not onnx.defs.has(node.op_type, node.domain or ""):
            op = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
            raise RtsegError(f"node {node.name or node.output[0]!r} of {name} uses operator {op}, which is not an ONNX standard "
                             f"operator: OpenVINO, ONNX Runtime's CPU provider and TensorRT cannot run it — re-export the model "
                             f"with standard operators (no custom symbolic or plugin)")
    return opset


def dims_of(vi) -> list:
    """Dims of a value info: ints, or the dim_param string (``"?"`` when unnamed)."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]


@dataclass
class InputInfo:
    """The image input found in a graph: ``name``, ``dims`` (ints or symbols), ``layout`` (NCHW/NHWC)."""

    name: str
    dims: list
    layout: str


def image_input(model, name: str, layout: str, hw: tuple[int, int]) -> InputInfo:
    """Find and check the one image input of ``model`` against the declared ``layout`` and ``hw`` (H, W).

    Raises:
        RtsegError: no image input (4-D float with 3 channels), several inputs, an NHWC input not
            declared, a non-float32 input, or fixed spatial dims other than ``hw``.
    """
    import onnx

    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) > 1:
        raise RtsegError(f"{name} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); rtseg models take one image "
                         f"input — re-export with only the image tensor as input")
    dims = dims_of(inputs[0]) if inputs else []
    three = [k for k in (1, 3) if len(dims) == 4 and dims[k] == 3]
    if not inputs or not three:
        what = f"'{inputs[0].name}' {dims}" if inputs else "none"
        raise RtsegError(f"{name} has no image input (a 4-D tensor with 3 colour channels, [N, 3, H, W] or [N, H, W, 3]; "
                         f"found {what}); import a segmentation model that takes one RGB image batch")
    vi = inputs[0]
    if layout == "NCHW" and 1 not in three:
        raise RtsegError(f"input '{vi.name}' of {name} is NHWC {dims} but the metadata declares input.layout NCHW; "
                         f"set 'input: {{layout: NHWC}}' in the metadata file")
    if layout == "NHWC" and 3 not in three:
        raise RtsegError(f"input '{vi.name}' of {name} is NCHW {dims} but the metadata declares input.layout NHWC; "
                         f"set 'input: {{layout: NCHW}}' in the metadata file")
    elem = vi.type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:
        raise RtsegError(f"input '{vi.name}' of {name} is {onnx.TensorProto.DataType.Name(elem).lower()}, not float32; rtseg "
                         f"feeds normalised float32 RGB — re-export the model with a float32 input (normalisation in the metadata)")
    spatial = dims[2:4] if layout == "NCHW" else dims[1:3]
    if any(isinstance(d, int) and d > 0 and d != want for d, want in zip(spatial, hw)):
        raise RtsegError(f"input '{vi.name}' of {name} is fixed at {spatial[0]}x{spatial[1]} (HxW) but the metadata says "
                         f"input.size [{hw[0]}, {hw[1]}]; set 'input: {{size: [{spatial[0]}, {spatial[1]}]}}'")
    return InputInfo(vi.name, dims, layout)


def set_input(model, info: InputInfo, hw: tuple[int, int], batch: int | None) -> str:
    """Make the graph input ``float32[batch, 3, H, W]`` (``batch`` None = dynamic ``"batch"``), adding a
    Transpose for NHWC; returns the input name. Clears ``value_info`` (ONNX Runtime re-infers it)."""
    from onnx import TensorProto, helper

    g = model.graph
    shape = ["batch" if batch is None else batch, 3, hw[0], hw[1]]
    if info.layout == "NHWC":
        new = helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)
        old = next(i for i in g.input if i.name == info.name)
        g.input.remove(old)
        g.input.insert(0, new)
        g.node.insert(0, helper.make_node("Transpose", ["input"], [info.name], perm=[0, 2, 3, 1], name="rtseg_input_nchw_to_nhwc"))
        name = "input"
    else:
        vi = next(i for i in g.input if i.name == info.name)
        vi.CopyFrom(helper.make_tensor_value_info(info.name, TensorProto.FLOAT, shape))
        name = info.name
    del g.value_info[:]
    for o in g.output:  # the batch of every output follows the input's
        d0 = o.type.tensor_type.shape.dim
        if len(d0):
            d0[0].Clear()
            if batch is None:
                d0[0].dim_param = "batch"
            else:
                d0[0].dim_value = batch
    return name


def select_output(model, wanted: str | None, name: str) -> str:
    """Keep one graph output (``wanted``, or the only one); returns its name.

    Raises:
        RtsegError: ``wanted`` missing, or several outputs and none chosen.
    """
    outs = [o.name for o in model.graph.output]
    if wanted is not None:
        if wanted not in outs:
            raise RtsegError(f"{name} has no output '{wanted}' (outputs: {', '.join(outs)}); fix output.name in the metadata")
    elif len(outs) != 1:
        raise RtsegError(f"{name} has {len(outs)} outputs ({', '.join(outs)}); set output.name in the metadata to the "
                         f"segmentation output")
    keep = wanted or outs[0]
    for o in [o for o in model.graph.output if o.name != keep]:
        model.graph.output.remove(o)
    return keep


def ort_run(model_or_bytes, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """The first output of ``model`` (proto or bytes) on ``x`` in ONNX Runtime (CPU, no graph optimisation).

    Raises:
        RtsegError: ONNX Runtime cannot load or run the graph (its first message line, which names the node).
    """
    import onnxruntime as ort

    data = model_or_bytes if isinstance(model_or_bytes, bytes) else model_or_bytes.SerializeToString()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]
    except Exception as e:  # onnxruntime raises its own types
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RtsegError(f"ONNX Runtime cannot run the model ({msg[:300]}); re-export it with standard operators "
                         f"and a static H×W") from None


@dataclass
class OutputSpec:
    """What the chosen output holds (from the metadata): ``kind`` logits | probabilities | indices,
    ``layout`` NCHW | NHWC, ``stride`` (output = input / stride), ``num_classes`` (1 = binary)."""

    kind: str
    layout: str
    stride: int
    num_classes: int


def check_output(y: np.ndarray, out_name: str, spec: OutputSpec, hw: tuple[int, int]) -> tuple[int, int]:
    """Check the probed output ``y`` (batch 1) against the metadata; returns its (h, w).

    Raises:
        RtsegError: wrong rank, dtype, channel count or spatial size (one line naming the output and the fix).
    """
    shape = list(y.shape)
    if spec.kind == "indices":
        if not (y.ndim == 3 or (y.ndim == 4 and shape[1] == 1)):
            raise RtsegError(f"output '{out_name}' is {shape}; class indices must be [N, H, W] or [N, 1, H, W] — "
                             f"fix output.kind in the metadata (logits or probabilities for [N, C, H, W])")
        h, w = shape[-2:]
    else:
        if y.ndim != 4:
            raise RtsegError(f"output '{out_name}' is {y.ndim}-D {shape}; {spec.kind} must be [N, C, H, W] (or NHWC) — "
                             f"set output.kind: indices if it holds class indices")
        if not np.issubdtype(y.dtype, np.floating):
            raise RtsegError(f"output '{out_name}' is {y.dtype}, not float; set output.kind: indices if it holds class indices")
        c, h, w = (shape[1], shape[2], shape[3]) if spec.layout == "NCHW" else (shape[3], shape[1], shape[2])
        if c != spec.num_classes:
            need = "1 (task binary: one sigmoid logit)" if spec.num_classes == 1 else f"{spec.num_classes} (one per class)"
            raise RtsegError(f"output '{out_name}' has {c} channels ({spec.layout} {shape}) but the metadata needs {need}; "
                             f"fix task/classes or output.layout in the metadata")
    if (h * spec.stride, w * spec.stride) != tuple(hw):
        fix = (f"set output.stride: {hw[0] // h}" if h and hw[0] % h == 0 and hw[0] // h == hw[1] // max(w, 1)
               and hw[1] % max(w, 1) == 0 else "fix input.size or output.layout")
        raise RtsegError(f"output '{out_name}' is {h}x{w} (HxW) but the metadata's input.size {hw[0]}x{hw[1]} with output.stride "
                         f"{spec.stride} needs {hw[0] // spec.stride}x{hw[1] // spec.stride}; {fix} in the metadata")
    return h, w


class _Chain:
    """Appends nodes after a graph output, tracking the current tensor name."""

    def __init__(self, model, start: str):
        self.g, self.cur, self.n, self.edits = model.graph, start, 0, []

    def const(self, value, dtype=np.float32) -> str:
        from onnx import numpy_helper

        name = f"rtseg_const_{len(self.g.initializer)}_{self.n}"
        self.g.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def add(self, op: str, extra_inputs: list[str] | None = None, first: str | None = None, **attrs) -> str:
        from onnx import helper

        self.n += 1
        out = f"rtseg_out_{self.n}"
        self.g.node.append(helper.make_node(op, [first or self.cur, *(extra_inputs or [])], [out], name=f"rtseg_{op.lower()}_{self.n}", **attrs))
        self.cur = out
        return out


def _indices_to_logits(ch: _Chain, spec: OutputSpec, ndim: int, h: int, w: int) -> None:
    from onnx import TensorProto

    ch.add("Cast", to=TensorProto.INT64)
    if spec.num_classes == 1:
        ch.add("Cast", to=TensorProto.FLOAT)
        ch.add("Mul", [ch.const(2.0)])
        ch.add("Sub", [ch.const(1.0)])
        ch.add("Reshape", [ch.const([0, 1, h, w], np.int64)])
        ch.edits.append("class indices → logit 2·idx − 1")
        return
    ch.add("OneHot", [ch.const([spec.num_classes], np.int64), ch.const([-1.0, 1.0])], axis=1)
    if ndim == 4:
        ch.add("Reshape", [ch.const([0, spec.num_classes, h, w], np.int64)])
    ch.edits.append(f"class indices → one-hot logits ±1 over {spec.num_classes} classes")


def _float_to_logits(ch: _Chain, spec: OutputSpec, dtype) -> None:
    from onnx import TensorProto

    if dtype != np.float32:
        ch.add("Cast", to=TensorProto.FLOAT)
        ch.edits.append(f"{dtype} output → float32")
    if spec.layout == "NHWC":
        ch.add("Transpose", perm=[0, 3, 1, 2])
        ch.edits.append("NHWC output → NCHW (Transpose)")
    if spec.kind == "probabilities":
        if spec.num_classes == 1:
            p = ch.add("Clip", [ch.const(1e-6), ch.const(1.0 - 1e-6)])
            q = ch.add("Sub", [p], first=ch.const(1.0))
            ch.add("Div", [q], first=p)
            ch.add("Log")
            ch.edits.append("probability → logit log(p / (1 − p))")
        else:
            ch.add("Clip", [ch.const(1e-12), ch.const(1.0)])
            ch.add("Log")
            ch.edits.append("probabilities → log-probabilities log(p)")


def _rename(model, old: str, new: str) -> str:
    """Rename tensor ``old`` to ``new`` everywhere in the graph (node inputs/outputs, graph outputs); returns ``new``."""
    for node in model.graph.node:
        for seq in (node.input, node.output):
            for k, name in enumerate(seq):
                if name == old:
                    seq[k] = new
    for o in model.graph.output:
        if o.name == old:
            o.name = new
    return new


def adapt_output(model, out_name: str, y: np.ndarray, spec: OutputSpec, hw: tuple[int, int], batch: int | None) -> list[str]:
    """Append the nodes that make ``out_name`` logits ``float32[batch, C, H, W]`` named :data:`OUTPUT_NAME`
    (module table); returns the list of edits made (empty: the output already follows the contract)."""
    from onnx import TensorProto, helper

    h, w = check_output(y, out_name, spec, hw)
    if out_name == OUTPUT_NAME:  # the edited output takes this name: rename the original tensor first
        out_name = _rename(model, OUTPUT_NAME, "rtseg_raw_" + OUTPUT_NAME)
    ch = _Chain(model, out_name)
    if spec.kind == "indices":
        _indices_to_logits(ch, spec, y.ndim, h, w)
    else:
        _float_to_logits(ch, spec, y.dtype)
    if spec.stride > 1:
        mode = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"} \
            if spec.kind == "indices" else {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
        ch.add("Resize", [ch.const(np.zeros(0, np.float32)), ch.const([1.0, 1.0, float(spec.stride), float(spec.stride)])], **mode)
        ch.edits.append(f"output ×{spec.stride} upsampled ({mode['mode']})")
    if not ch.edits:
        return []
    model.graph.node[-1].output[0] = OUTPUT_NAME
    model.graph.output.remove(model.graph.output[0])
    shape = ["batch" if batch is None else batch, spec.num_classes, hw[0], hw[1]]
    model.graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, shape))
    return ch.edits


def float_params(model) -> int:
    """Number of parameters: elements of the floating-point initializers."""
    from onnx import TensorProto

    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)
    return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in floats))


__all__ = ["InputInfo", "MIN_OPSET", "dims_of", "OUTPUT_NAME", "OutputSpec", "adapt_output", "check_opset_and_operators", "check_output",
           "float_params", "image_input", "load_onnx", "opset_of", "ort_run", "select_output", "set_input"]
