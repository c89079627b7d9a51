"""TensorRT-free checks of an ONNX graph before it is handed to TensorRT's ONNX parser.

Everything here runs on any machine (only ``onnx`` and ``numpy``): it is how rtseg tests, without a
GPU, that the graphs it exports will parse and quantize the way TensorRT expects.

* :func:`unsupported_ops` — operators (and a few attribute restrictions) the TensorRT 10.x ONNX
  parser does not support.
* :func:`non_batch_dynamic_dims` — I/O dimensions other than the batch that are not static
  (rtseg engines have one optimisation profile: dynamic batch, fixed C×H×W).
* :func:`qdq_placement_issues` — Q/DQ layout problems for TensorRT's explicit quantization.

Sources (checked with the search tool, read 2026):

* Operator list: ``onnx/onnx-tensorrt`` ``docs/operators.md``, the table headed "TensorRT 10.15
  supports operators in the inclusive range of opset 9 to opset 24". TensorRT 10.0 documents
  opset 9..20 with the same table minus a few newer ops (Attention, RotaryEmbedding,
  RMSNormalization, TensorScatter); rtseg exports opset 17, where the two lists agree for every op
  our networks use. The list is stored below as :data:`TRT_SUPPORTED_OPS` (rows marked ``Y``) and
  :data:`TRT_UNSUPPORTED_OPS` (rows marked ``N``).
* Q/DQ rules: TensorRT developer guide, "Working with Quantized Types" → "Explicit Quantization"
  (docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html):
  symmetric INT8 (zero point 0), per-tensor scales for activations, per-channel scales only for
  weights, Q/DQ pairs on the inputs of the weighted operations (Convolution, Deconvolution,
  MatMul/GEMM), "use explicit quantization with strong typing". The operators.md rows above say
  ``QuantizeLinear``: "`y_zero_point` must be 0" and ``DequantizeLinear``: types INT8/FP8/FP4/INT4
  (no INT32), "`x_zero_point` must be zero".
* Known parser failures reproduced by ONNX Runtime's default ``quantize_static``: INT32-quantized
  Conv bias ("only activation types allowed as input to this layer": onnx/onnx-tensorrt#850,
  microsoft/onnxruntime#17738, NVIDIA/TensorRT#3360) and per-*output*-channel ConvTranspose weights
  (ORT quantizes on axis 1; NVIDIA: "We don't support per-output-channel quant for ConvTranspose",
  the kernels assume axis 0 — NVIDIA/TensorRT#2380, wrong results in NVIDIA/TensorRT#1694).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable, Union

import numpy as np
import onnx
from onnx import numpy_helper

ModelLike = Union[onnx.ModelProto, str, Path]

#: TensorRT version and opset range of the operator table below.
TRT_OPERATORS_SOURCE = "onnx/onnx-tensorrt docs/operators.md (TensorRT 10.15)"
TRT_OPSET_MIN, TRT_OPSET_MAX = 9, 24

#: Operators marked ``Y`` in the TensorRT 10.15 ONNX parser table (see module docstring).
TRT_SUPPORTED_OPS: frozenset[str] = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish
Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization RNN
RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink
Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan
Tanh TensorScatter ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

#: Operators marked ``N`` in the same table (listed so an error can say "not supported" rather
#: than "unknown").
TRT_UNSUPPORTED_OPS: frozenset[str] = frozenset("""
AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im CenterCropPad Compress
ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger MaxRoiPool
MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement
OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty
SequenceErase SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence
StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique
""".split())

_RESIZE_MODES = {"nearest", "linear"}
_RESIZE_COORD = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}

#: The weighted operators whose inputs TensorRT quantizes (input index of the weight, and for
#: each the per-channel axis TensorRT's kernels accept for that weight).
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


# -- loading --------------------------------------------------------------------------------------
def load_model(model: ModelLike) -> onnx.ModelProto:
    """Return ``model`` as a ``ModelProto`` (loads a path; external data stays unloaded)."""
    if isinstance(model, onnx.ModelProto):
        return model
    return onnx.load(str(model), load_external_data=False)


def model_opset(model: ModelLike) -> int:
    """The default-domain (``ai.onnx``) opset the model imports."""
    m = load_model(model)
    for imp in m.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ValueError("model imports no ai.onnx opset")


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _all_nodes(graph: onnx.GraphProto) -> Iterable[onnx.NodeProto]:
    """Nodes of ``graph`` and of every subgraph (If/Loop/Scan bodies)."""
    for node in graph.node:
        yield node
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _all_nodes(g)


# -- operators ------------------------------------------------------------------------------------
def unsupported_ops(onnx_model: ModelLike, opset: int | None = None) -> list[str]:
    """Operators of ``onnx_model`` that TensorRT 10.x's ONNX parser cannot import.

    Args:
        onnx_model: a ``ModelProto`` or a path to an ``.onnx`` file.
        opset: the ai.onnx opset to judge against (default: the model's own).

    Returns:
        A sorted list of problems, empty when the graph only uses supported operators. Each entry is
        either an operator type (``"Unique"``), a custom-domain operator (``"com.microsoft::FusedConv"``),
        an opset outside TensorRT's range (``"opset 8 (TensorRT parses 9..24)"``) or an attribute
        restriction from the parser's table (``"Resize(mode=cubic)"``).
    """
    m = load_model(onnx_model)
    opset = model_opset(m) if opset is None else int(opset)
    problems: set[str] = set()
    if not TRT_OPSET_MIN <= opset <= TRT_OPSET_MAX:
        problems.add(f"opset {opset} (TensorRT parses {TRT_OPSET_MIN}..{TRT_OPSET_MAX})")
    used_outputs = {name for n in _all_nodes(m.graph) for name in n.input} | {o.name for o in m.graph.output}
    for node in _all_nodes(m.graph):
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            problems.add(f"{node.domain}::{op}")
            continue
        if op not in TRT_SUPPORTED_OPS:
            problems.add(op)
            continue
        a = _attrs(node)
        if op == "Resize":
            mode = _str(a.get("mode", "nearest"))
            coord = _str(a.get("coordinate_transformation_mode", "half_pixel"))
            nearest = _str(a.get("nearest_mode", "round_prefer_floor"))
            if mode not in _RESIZE_MODES:
                problems.add(f"Resize(mode={mode})")
            if coord not in _RESIZE_COORD:
                problems.add(f"Resize(coordinate_transformation_mode={coord})")
            if mode == "nearest" and nearest not in _RESIZE_NEAREST:
                problems.add(f"Resize(nearest_mode={nearest})")
            if int(a.get("antialias", 0)):
                problems.add("Resize(antialias=1)")
            if _str(a.get("keep_aspect_ratio_policy", "stretch")) != "stretch":
                problems.add(f"Resize(keep_aspect_ratio_policy={_str(a['keep_aspect_ratio_policy'])})")
        elif op in ("MaxPool", "AveragePool", "LpPool"):
            if any(int(d) != 1 for d in a.get("dilations", [])):
                problems.add(f"{op}(dilations={list(a['dilations'])})")
            if op == "MaxPool" and len(node.output) > 1 and node.output[1] and node.output[1] in used_outputs:
                problems.add("MaxPool(Indices output)")
        elif op == "LayerNormalization":
            if any(o and o in used_outputs for o in node.output[1:]):
                problems.add("LayerNormalization(Mean/InvStdDev outputs)")
        elif op == "TopK" and int(a.get("sorted", 1)) != 1:
            problems.add("TopK(sorted=0)")
    return sorted(problems)


# -- shapes ---------------------------------------------------------------------------------------
def _dims(vi: onnx.ValueInfoProto) -> list:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else None) for d in t.shape.dim]


def non_batch_dynamic_dims(model: ModelLike) -> list[str]:
    """Graph inputs/outputs whose dimensions other than the batch (axis 0) are not static.

    rtseg engines are built with one optimisation profile that varies only the batch; every other
    dimension must be a fixed positive integer in the ONNX graph. Outputs without a declared shape
    are shape-inferred first.

    Returns:
        ``["input 'input' axis 2 is 'H'", ...]``; empty when only the batch is dynamic.
    """
    m = load_model(model)
    outputs = list(m.graph.output)
    if any(not _dims(o) for o in outputs):
        try:
            inferred = onnx.shape_inference.infer_shapes(m)
            outputs = list(inferred.graph.output)
        except Exception:  # pragma: no cover - malformed graph; report what we have
            pass
    initializers = {i.name for i in m.graph.initializer}
    problems = []
    for kind, vis in (("input", [i for i in m.graph.input if i.name not in initializers]), ("output", outputs)):
        for vi in vis:
            dims = _dims(vi)
            if not dims:
                problems.append(f"{kind} {vi.name!r} has no static shape")
                continue
            for axis, d in enumerate(dims[1:], start=1):
                if not isinstance(d, int) or d <= 0:
                    problems.append(f"{kind} {vi.name!r} axis {axis} is {d!r}")
    return problems


# -- Q/DQ -----------------------------------------------------------------------------------------
class _Graph:
    """Producer/consumer maps and constant lookup for one (top-level) graph."""

    def __init__(self, m: onnx.ModelProto):
        g = m.graph
        self.init = {i.name: i for i in g.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in g.node:
            for o in n.output:
                self.producer[o] = n
            for i in n.input:
                if i:
                    self.consumers[i].append(n)
        self.graph_outputs = {o.name for o in g.output}

    def const(self, name: str) -> np.ndarray | None:
        """Value of an initializer or Constant-node output, else ``None``."""
        if not name:
            return None
        if name in self.init:
            return numpy_helper.to_array(self.init[name])
        p = self.producer.get(name)
        if p is not None and p.op_type == "Constant":
            for a in p.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def const_dtype(self, name: str) -> int | None:
        if name in self.init:
            return self.init[name].data_type
        p = self.producer.get(name)
        if p is not None and p.op_type == "Constant":
            for a in p.attribute:
                if a.name == "value":
                    return a.t.data_type
        return None

    def is_const(self, name: str) -> bool:
        return self.const_dtype(name) is not None


def _weight_channel_axis(node: onnx.NodeProto, weight_rank: int) -> int:
    """The per-channel axis TensorRT accepts for the weight (input 1) of a weighted op."""
    if node.op_type == "Conv":
        return 0  # W = [K, C/g, kh, kw]: output channels
    if node.op_type == "ConvTranspose":
        return 0  # W = [C, K/g, kh, kw]: TensorRT's deconvolution kernels use axis 0 (NVIDIA/TensorRT#2380)
    if node.op_type == "Gemm":
        return 0 if int(_attrs(node).get("transB", 0)) else 1
    return weight_rank - 1  # MatMul: B = [..., K, N] → N


def qdq_placement_issues(model: ModelLike) -> list[str]:
    """Check that a Q/DQ ONNX follows TensorRT's explicit-quantization rules (INT8).

    Checks (see module docstring for sources):

    1. every ``QuantizeLinear`` output feeds only ``DequantizeLinear`` nodes (a Q/DQ *pair*);
    2. zero points are INT8 and all 0 (symmetric), ``DequantizeLinear`` inputs are INT8 (no
       INT32 bias, no UINT8);
    3. scales are positive and finite; activation Q/DQ are per-tensor (scalar scale);
    4. weights (constant input 1 of Conv/ConvTranspose/Gemm/MatMul) behind a ``DequantizeLinear``
       are per-tensor or per-channel on the axis TensorRT expects (Conv: 0; ConvTranspose: 0,
       *not* ONNX Runtime's output-channel axis 1; Gemm: 0 if ``transB`` else 1; MatMul: last),
       with one scale per channel;
    5. a weighted op is quantized on both inputs or on neither (a half-quantized Conv would run
       in float with extra conversions);
    6. constant weights are dequantized only for weighted ops (e.g. not BatchNormalization
       scales) and biases stay float.

    Args:
        model: a ``ModelProto`` or path to a Q/DQ ``.onnx``.

    Returns:
        Human-readable problems (node names included); empty when the graph is fine. A graph
        without any Q/DQ node returns ``["no QuantizeLinear/DequantizeLinear nodes: ..."]``.
    """
    m = load_model(model)
    G = _Graph(m)
    q_nodes = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    dq_nodes = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    if not q_nodes and not dq_nodes:
        return ["no QuantizeLinear/DequantizeLinear nodes: not a Q/DQ graph (run 'rtseg calibrate' first)"]
    issues: list[str] = []
    for q in q_nodes:  # checks 1, 2, 3
        issues += _quantize_issues(G, q)
    weight_dq: dict[str, None] = {}  # outputs of DequantizeLinear nodes that dequantize a constant weight (ordered)
    for dq in dq_nodes:  # checks 2, 3
        issues += _dequantize_issues(G, dq, weight_dq)
    for dq_out in weight_dq:  # check 6
        issues += _weight_consumer_issues(G, dq_out)
    for node in m.graph.node:  # checks 4, 5
        if node.op_type in WEIGHTED_OPS and len(node.input) >= 2:
            issues += _weighted_op_issues(G, node)
    return issues


def _qparam_issues(G: _Graph, n: onnx.NodeProto) -> tuple[list[str], np.ndarray | None]:
    """Scale (constant, positive, finite) and zero point (constant INT8 zero) of a Q or DQ node → (issues, scale)."""
    issues = []
    scale = G.const(n.input[1]) if len(n.input) > 1 else None
    if scale is None:
        issues.append(f"{n.op_type} {n.name!r}: scale {n.input[1] if len(n.input) > 1 else ''!r} is not a constant")
    elif not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        issues.append(f"{n.op_type} {n.name!r}: scale must be positive and finite")
    zp_name = n.input[2] if len(n.input) > 2 else ""
    if zp_name:
        zdt = G.const_dtype(zp_name)
        zp = G.const(zp_name)
        if zdt is None:
            issues.append(f"{n.op_type} {n.name!r}: zero point is not a constant")
        else:
            if zdt != onnx.TensorProto.INT8:
                issues.append(f"{n.op_type} {n.name!r}: zero point is {onnx.TensorProto.DataType.Name(zdt)}, "
                              f"TensorRT needs INT8 (quantize with QInt8 activations and weights)")
            if zp is not None and np.any(zp != 0):
                issues.append(f"{n.op_type} {n.name!r}: zero point is not 0 (TensorRT quantization is symmetric)")
    elif n.op_type == "QuantizeLinear":
        # opset < 21 without zero point → uint8 output
        issues.append(f"QuantizeLinear {n.name!r}: no zero point, so the output is UINT8; TensorRT needs INT8")
    return issues, scale


def _quantize_issues(G: _Graph, q: onnx.NodeProto) -> list[str]:
    """A QuantizeLinear: its q-params, feeds only DequantizeLinear nodes (a pair), is no graph output,
    quantizes an activation per-tensor."""
    issues, _ = _qparam_issues(G, q)
    for consumer in G.consumers.get(q.output[0], []):
        if consumer.op_type != "DequantizeLinear":
            issues.append(f"QuantizeLinear {q.name!r} feeds {consumer.op_type} {consumer.name!r}, not a DequantizeLinear")
    if q.output[0] in G.graph_outputs:
        issues.append(f"QuantizeLinear {q.name!r} output is a graph output")
    if not G.is_const(q.input[0]):
        scale = G.const(q.input[1])
        if scale is not None and scale.size != 1:
            issues.append(f"QuantizeLinear {q.name!r}: activation quantized per-channel ({scale.size} scales); "
                          f"TensorRT quantizes activations per-tensor")
    return issues


def _dequantize_issues(G: _Graph, dq: onnx.NodeProto, weight_dq: dict[str, None]) -> list[str]:
    """A DequantizeLinear: its q-params, an INT8 constant or a QuantizeLinear as input, per-tensor for
    activations. Adds its output to ``weight_dq`` when it dequantizes a constant weight."""
    issues, scale = _qparam_issues(G, dq)
    x = dq.input[0]
    if G.is_const(x):
        xdt = G.const_dtype(x)
        if xdt != onnx.TensorProto.INT8:
            name = onnx.TensorProto.DataType.Name(xdt)
            issues.append(f"DequantizeLinear {dq.name!r}: input {x!r} is {name}; TensorRT dequantizes INT8 only"
                          + (" (bias quantized to INT32: quantize with extra_options QuantizeBias=False)" if xdt == onnx.TensorProto.INT32 else ""))
        weight_dq[dq.output[0]] = None
        return issues
    src = G.producer.get(x)
    if src is None or src.op_type != "QuantizeLinear":
        issues.append(f"DequantizeLinear {dq.name!r}: input {x!r} does not come from a QuantizeLinear or a constant")
    elif G.is_const(src.input[0]):
        weight_dq[dq.output[0]] = None  # Q→DQ on a float weight (AddQDQPairToWeight)
    elif scale is not None and scale.size != 1:
        issues.append(f"DequantizeLinear {dq.name!r}: activation dequantized per-channel; TensorRT needs per-tensor")
    return issues


def _weight_consumer_issues(G: _Graph, dq_out: str) -> list[str]:
    """A dequantized constant goes only to the weight input of a weighted op (not a bias, not BatchNormalization)."""
    issues = []
    for consumer in G.consumers.get(dq_out, []):
        idx = [i for i, name in enumerate(consumer.input) if name == dq_out]
        if consumer.op_type in WEIGHTED_OPS and idx == [1]:
            continue
        if consumer.op_type in ("Conv", "ConvTranspose", "Gemm") and idx == [2]:
            issues.append(f"{consumer.op_type} {consumer.name!r}: bias is quantized; keep biases float "
                          f"(extra_options QuantizeBias=False)")
        elif consumer.op_type == "MatMul" and idx == [0]:
            continue  # constant A operand: treated like an activation input
        else:
            issues.append(f"{consumer.op_type} {consumer.name!r}: constant input {dq_out!r} is dequantized; "
                          f"TensorRT quantizes weights only of {', '.join(WEIGHTED_OPS)} "
                          f"(leave {consumer.op_type} out of op_types_to_quantize)")
    return issues


def _weighted_op_issues(G: _Graph, node: onnx.NodeProto) -> list[str]:
    """A Conv/ConvTranspose/Gemm/MatMul: input and weight both quantized or neither; a per-channel
    weight on the axis TensorRT expects, one scale per channel."""
    issues = []
    data_src = G.producer.get(node.input[0])
    w_src = G.producer.get(node.input[1])
    data_q = data_src is not None and data_src.op_type == "DequantizeLinear"
    w_q = w_src is not None and w_src.op_type == "DequantizeLinear"
    if data_q != w_q:
        which = "input" if w_q else "weight"
        issues.append(f"{node.op_type} {node.name!r}: weight and input must both be quantized (the {which} is float); "
                      f"quantize both or neither")
    if not w_q:
        return issues
    w_name = w_src.input[0]
    w_src_q = G.producer.get(w_name)
    if w_src_q is not None and w_src_q.op_type == "QuantizeLinear":
        w_name = w_src_q.input[0]
    w = G.const(w_name)
    if w is None:
        if node.op_type != "MatMul":
            issues.append(f"{node.op_type} {node.name!r}: weight is not a constant behind its DequantizeLinear")
        return issues
    scale = G.const(w_src.input[1])
    if scale is None or scale.size == 1:
        return issues
    want = _weight_channel_axis(node, w.ndim)
    axis = int(_attrs(w_src).get("axis", 1))
    axis = axis + w.ndim if axis < 0 else axis
    if axis != want:
        hint = (" (ONNX Runtime quantizes ConvTranspose on axis 1; pass TensorQuantOverrides "
                "{weight: [{'axis': 0}]} or quantize it per-tensor)") if node.op_type == "ConvTranspose" else ""
        issues.append(f"{node.op_type} {node.name!r}: weight quantized per-channel on axis {axis}, "
                      f"TensorRT needs axis {want}{hint}")
    elif scale.size != w.shape[want]:
        issues.append(f"{node.op_type} {node.name!r}: {scale.size} weight scales for {w.shape[want]} channels")
    return issues


def qdq_summary(model: ModelLike) -> dict:
    """Counts for reports: Q and DQ nodes, weighted ops quantized / left in float.

    Returns ``{"quantize": int, "dequantize": int, "weighted_quantized": int, "weighted_float": int,
    "float_ops": [node names left in float]}``.
    """
    m = load_model(model)
    G = _Graph(m)
    quantized, floats = 0, []
    for node in m.graph.node:
        if node.op_type in WEIGHTED_OPS and len(node.input) >= 2:
            src = G.producer.get(node.input[1])
            if src is not None and src.op_type == "DequantizeLinear":
                quantized += 1
            else:
                floats.append(node.name)
    return {
        "quantize": sum(n.op_type == "QuantizeLinear" for n in m.graph.node),
        "dequantize": sum(n.op_type == "DequantizeLinear" for n in m.graph.node),
        "weighted_quantized": quantized,
        "weighted_float": len(floats),
        "float_ops": floats,
    }


def has_qdq(model: ModelLike) -> bool:
    """True if the graph contains any QuantizeLinear/DequantizeLinear node."""
    m = load_model(model)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in _all_nodes(m.graph))


__all__ = [
    "TRT_OPERATORS_SOURCE", "TRT_OPSET_MAX", "TRT_OPSET_MIN", "TRT_SUPPORTED_OPS", "TRT_UNSUPPORTED_OPS",
    "WEIGHTED_OPS", "has_qdq", "load_model", "model_opset", "non_batch_dynamic_dims", "qdq_placement_issues",
    "qdq_summary", "unsupported_ops",
]
