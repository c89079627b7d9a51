"""Writing the Q/DQ ONNX: ONNX Runtime's ``quantize_static`` (QDQ format) with given ranges.

rtseg's scheme (:data:`rtseg.calib.calibrate.QDQ_SCHEME`, :class:`QdqScheme` defaults):

* weights: signed int8, symmetric (zero point 0), per output channel (ConvTranspose on axis 0:
  TensorRT's deconvolution kernels take per-channel scales on axis 0 only, NVIDIA/TensorRT#2380);
* activations: signed int8, symmetric (zero point 0), per tensor;
* Q/DQ pairs only on the inputs of the compute ops (:data:`QUANT_OP_TYPES`); biases stay float
  (no int32 bias DQ).

What was measured with OpenVINO 2026.4.1 on this AVX2 CPU (EUNet-s):

* ONNX Runtime's default scheme (uint8 asymmetric activations, Q/DQ on every op) **segfaults** the
  compiler when the batch is static (dynamic batch compiles). Quantizing BatchNormalization inputs
  alone, or HardSwish + Mul + Concat together, is enough to crash; uint8 Conv-only and int8
  symmetric (any op set) compile.
* With int8 activations, a Conv fed by a Concat of a shared tensor (EUNet's head) is computed
  **wrongly, silently** (:func:`openvino_unsafe_nodes`): such nodes stay float.
* Without VNNI, int8 is not faster than fp32 here (1×1 convs equal, depthwise int8 slower);
  7-bit weights (:attr:`QdqScheme.weight_bits`) avoid ``vpmaddubsw``'s int16 saturation.

Determinism: ``quantize_static`` writes into a private temporary folder; :func:`save_canonical`
drops tool-written doc strings and replaces the output atomically, so two runs on the same inputs
write the same bytes.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import RtsegError
from .ranges import ort_calibration_method

#: The compute ops that get Q/DQ pairs on their inputs; every other op stays float.
QUANT_OP_TYPES = ("Conv", "ConvTranspose", "MatMul", "Gemm")
DEFAULT_WEIGHT_BITS = 8
ACTIVATION_TYPES = ("int8", "uint8")


@dataclass(frozen=True)
class QdqScheme:
    """A Q/DQ quantization scheme; the defaults are rtseg's (the only one supported for deployment).

    Attributes:
        activation: ``"int8"`` (signed) or ``"uint8"`` activations.
        symmetric: symmetric activations (zero point 0).
        op_types: ops whose inputs get Q/DQ pairs; ``None`` = every op (ONNX Runtime's default).
        weight_bits: 8 (weights in ±127) or 7 (±63, ORT's ``reduce_range``).
    """

    activation: str = "int8"
    symmetric: bool = True
    op_types: Sequence[str] | None = QUANT_OP_TYPES
    weight_bits: int = DEFAULT_WEIGHT_BITS


def openvino_unsafe_nodes(model) -> dict[str, str]:
    """Compute nodes whose Q/DQ OpenVINO 2026.4's CPU plugin computes wrongly: ``{node name: reason}``.

    Found here (tests/calib/test_calibrate.py keeps the regression): a Conv fed by a ``Concat`` one of whose
    inputs also feeds another branch (a U-Net skip, e.g. EUNet's head ``Conv(Concat(up, x0))``).
    OpenVINO's low-precision transformations move the Concat's FakeQuantize onto the shared tensor and
    then *convert* it f32→i8 without scaling (a ``Reorder f32→i8`` in the runtime graph): the outputs
    are garbage (EUNet: mask agreement 88 % vs 99.7 % in ONNX Runtime) — silently. Those nodes stay
    float; for EUNet that is the 1×1 head (< 1 % of the MACs).
    """
    consumers: dict[str, int] = {}
    producer = {}
    for n in model.graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
        for o in n.output:
            producer[o] = n
    unsafe = {}
    for n in model.graph.node:
        if n.op_type not in QUANT_OP_TYPES or not n.input:
            continue
        src = producer.get(n.input[0])
        if src is not None and src.op_type == "Concat" and any(consumers.get(i, 0) > 1 for i in src.input):
            unsafe[n.name] = "input is a Concat of a shared tensor: OpenVINO 2026.4 mis-quantizes it (f32→i8 convert)"
    return unsafe


def _extra_options(model, scheme: QdqScheme) -> dict[str, Any]:
    """``quantize_static``'s ``extra_options`` for ``scheme`` on ``model`` (an ``onnx.ModelProto``)."""
    extra: dict[str, Any] = {
        "ActivationSymmetric": bool(scheme.symmetric),
        "WeightSymmetric": True,
        "QuantizeBias": False,
        "QDQDisableWeightAdjustForInt32Bias": True,  # biases stay float: no int32-bias weight-scale tweak
    }
    if scheme.op_types:
        # ORT quantizes ConvTranspose weights per output channel (axis 1); TensorRT's deconvolution
        # kernels take per-channel scales on axis 0 only (NVIDIA/TensorRT#2380) — rtseg.runtime.tensorrt.onnx_check
        inits = {t.name for t in model.graph.initializer}
        overrides = {n.input[1]: [{"axis": 0}] for n in model.graph.node
                     if n.op_type == "ConvTranspose" and len(n.input) > 1 and n.input[1] in inits}
        if overrides:
            extra["TensorQuantOverrides"] = overrides
    return extra


def write_qdq(onnx_path: str | Path, model, ranges: Path, method: str, scheme: QdqScheme,
              excluded: dict[str, str]) -> Path:
    """Quantize the FP32 ONNX with the ranges of :func:`rtseg.calib.ranges.estimate_ranges`.

    Args:
        onnx_path: FP32 ONNX; ``model`` is it loaded (``onnx.ModelProto``).
        ranges: ORT calibration-cache JSON; the raw Q/DQ ONNX is written next to it
            (``model.qdq.onnx`` in that private folder; :func:`save_canonical` publishes it).
        method: ``minmax`` | ``entropy`` | ``percentile`` (recorded by ORT's calibrate method).
        scheme: the quantization scheme; ``excluded``: nodes kept float (``{name: reason}``).

    Returns:
        the path of the raw Q/DQ ONNX.

    Raises:
        whatever ONNX Runtime raises (run it inside :func:`ort_quantization`).
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    act_type = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[scheme.activation]
    out = Path(ranges).parent / "model.qdq.onnx"
    op_types = list(scheme.op_types) if scheme.op_types else None
    quantize_static(str(onnx_path), str(out), None, quant_format=QuantFormat.QDQ,
                    activation_type=act_type, weight_type=QuantType.QInt8, per_channel=True,
                    reduce_range=scheme.weight_bits == 7, nodes_to_exclude=sorted(excluded) or None,
                    op_types_to_quantize=op_types, calibrate_method=ort_calibration_method(method),
                    extra_options=_extra_options(model, scheme), calibration_cache_path=ranges)
    return out


@contextlib.contextmanager
def ort_quantization() -> Iterator[None]:
    """Run ONNX Runtime's calibration/quantization quietly; its failures become
    :class:`~rtseg.errors.RtsegError` ("quantization failed (...); try another --method ...").

    ORT warns through the root logger ("consider pre-processing ...", silenced below ERROR while
    inside) and its histogram calibrators ``print()`` progress (kept off the user's stdout).
    """
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    except RtsegError:
        raise
    except Exception as e:  # ORT raises ValueError/RuntimeError/onnx errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise RtsegError(f"quantization failed ({type(e).__name__}: {first}); "
                         f"try another --method or report the model") from None
    finally:
        root.setLevel(level)


def _canonicalize(model) -> None:
    """Remove what could make two runs' bytes differ: tool-written doc strings and metadata."""
    model.graph.doc_string = ""
    for node in model.graph.node:
        node.doc_string = ""


def save_canonical(src: str | Path, dst: str | Path) -> Path:
    """Copy the ONNX ``src`` to ``dst`` without tool-written doc strings, atomically (a hidden
    temporary file next to ``dst``, then ``os.replace``). Returns ``dst``."""
    from ..onnx_files import load_onnx

    dst = Path(dst)
    q = load_onnx(src)
    _canonicalize(q)
    from ..safe_io import atomic_write_bytes

    atomic_write_bytes(dst, q.SerializeToString(), fsync=False)
    return dst


def qdq_summary(path: str | Path) -> dict[str, Any]:
    """Count the Q/DQ nodes of an ONNX and check the scheme: ``{"quantize", "dequantize",
    "int8_zero_points", "nonzero_zero_points", "quantized_ops": {op_type: n}}``."""
    from onnx import numpy_helper

    from ..onnx_files import load_onnx

    m = load_onnx(path)
    inits = {t.name: t for t in m.graph.initializer}
    consumers: dict[str, list] = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    q = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    zps_int8 = nonzero = 0
    for n in q + dq:
        if len(n.input) > 2 and n.input[2] in inits:
            z = numpy_helper.to_array(inits[n.input[2]])
            zps_int8 += int(z.dtype == np.int8)
            nonzero += int(np.any(z != 0))
    ops: dict[str, int] = {}
    for n in dq:
        for c in consumers.get(n.output[0], []):
            ops[c.op_type] = ops.get(c.op_type, 0) + 1
    return {"quantize": len(q), "dequantize": len(dq), "int8_zero_points": zps_int8,
            "nonzero_zero_points": nonzero, "quantized_ops": dict(sorted(ops.items()))}
