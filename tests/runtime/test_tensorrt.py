"""TensorRT path (issue 7): what can be checked without a GPU, and GPU tests that build engines.

Without TensorRT/CUDA (every machine):
* the ONNX of every registered network (reduced widths, 64×64) uses only operators of TensorRT's
  ONNX parser table, has a static C×H×W and a batch-only dynamic input;
* the Q/DQ ONNX is laid out the way TensorRT's explicit quantization expects, and the known
  ONNX Runtime pitfalls (INT32 bias, ConvTranspose axis 1, uint8 zero points) are caught;
* the FP16 ONNX for TensorRT 11 keeps float32 I/O and matches FP32 in ONNX Runtime;
* ``check_engine_meta`` refuses engines of another TensorRT version / GPU (fake engine.json);
* without TensorRT, building and loading fail with one clear RtsegError (CLI: exit 2).

``@pytest.mark.gpu`` (skipped without CUDA; also skipped without the ``tensorrt`` package): build
fp32/fp16/int8 engines of a small EUNet, compare with ONNX Runtime (max abs diff, Dice), run the
pinned-buffer, torch-tensor and CUDA-graph paths.

Run: ``OMP_NUM_THREADS=1 pytest tests/runtime/test_tensorrt.py``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from rtseg.errors import RtsegError
from rtseg.models import create_model, list_models
from rtseg.runtime.tensorrt.backend import check_engine_meta
from rtseg.runtime.tensorrt.build import TRT_MISSING, TensorRTBuildOptions, build_tensorrt_engine, fp16_onnx
from rtseg.runtime.tensorrt.onnx_check import (
    TRT_SUPPORTED_OPS,
    TRT_UNSUPPORTED_OPS,
    non_batch_dynamic_dims,
    qdq_placement_issues,
    qdq_summary,
    unsupported_ops,
)

from helpers import TINY_WIDTHS

HW = (64, 64)
HAS_TRT = importlib.util.find_spec("tensorrt") is not None

# Reduced sizes that run the full models' code paths (the networks' own tests use the same).
SMALL = {
    "eunet": dict(widths=(8, 16, 32, 64)),
    "eunet-s": dict(widths=(8, 16, 32, 64)),
    "visionfusenet": dict(dim=32, mlp_dim=64, decoder_dim=32, low_dim=16),
    "visionfusenet-effv2b3": dict(dim=32, mlp_dim=64, decoder_dim=32, low_dim=16),
    "visionfusenet-densenet121": dict(dim=32, mlp_dim=64, decoder_dim=32, low_dim=16),
    "contrafusionnet": dict(embed_dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), decoder_dim=32, contrastive=False),
    "gmsrfnet": dict(width=16),
}


def _export(model: torch.nn.Module, path: Path, hw=HW) -> Path:
    """Export with the project's exporter when present (opset 17, batch-only dynamic axes)."""
    try:
        from rtseg.export.onnx import export_onnx
    except ImportError:  # pragma: no cover - before the export module existed
        export_onnx = None
    if export_onnx is not None:
        export_onnx(model, path, hw, check=False)
        return path
    model = model.eval()
    torch.onnx.export(model, torch.zeros(1, 3, *hw), str(path), opset_version=17, dynamo=False,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def _small_model(name: str, num_classes: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=num_classes, **SMALL.get(name, {})).eval()


def _hw_for(model) -> tuple[int, int]:
    m = int(getattr(model, "input_multiple", 8))
    side = max(64, 2 * m)
    side = (side + m - 1) // m * m
    return side, side


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name → (onnx path, input hw), exported once per test module."""
    root = tmp_path_factory.mktemp("onnx")
    cache: dict[str, tuple[Path, tuple[int, int]]] = {}

    def get(name: str):
        if name not in cache:
            model = _small_model(name)
            hw = _hw_for(model)
            cache[name] = (_export(model, root / f"{name}.onnx", hw), hw)
        return cache[name]

    return get


# -- 1. operators and shapes of all registered networks -------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_onnx_uses_only_tensorrt_supported_ops(exported, name):
    path, _ = exported(name)
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert unsupported_ops(model) == [], f"{name} uses ops TensorRT 10 cannot parse"
    assert ops <= TRT_SUPPORTED_OPS
    assert not ops & TRT_UNSUPPORTED_OPS


@pytest.mark.parametrize("name", list_models())
def test_onnx_shapes_static_except_batch(exported, name):
    """The input is [batch, 3, H, W] with only batch dynamic, and the output really is
    [n, C, H, W] for n = 1 and 3 (run with ONNX Runtime: what TensorRT's profile will see)."""
    import onnxruntime as ort

    path, hw = exported(name)
    model = onnx.load(str(path))
    assert [p for p in non_batch_dynamic_dims(model) if p.startswith("input")] == []
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param or dims[0].dim_value == 0, "batch axis must be dynamic"
    assert [d.dim_value for d in dims[1:]] == [3, *hw]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    shapes = [sess.run(None, {sess.get_inputs()[0].name: np.zeros((n, 3, *hw), np.float32)})[0].shape for n in (1, 3)]
    assert shapes[0][1:] == shapes[1][1:] and shapes[0][2:] == hw
    assert (shapes[0][0], shapes[1][0]) == (1, 3)


@pytest.mark.parametrize("name", list_models())
def test_onnx_declared_output_dims_static(exported, name):
    """engine.json and static-shape consumers read the declared output shape (export_onnx stamps
    [batch, C, H, W] from the PyTorch output; ContraFusionNet's Resize would leave them symbolic)."""
    path, _ = exported(name)
    problems = [p for p in non_batch_dynamic_dims(onnx.load(str(path))) if p.startswith("output")]
    assert problems == []


def test_op_table_is_consistent():
    assert not TRT_SUPPORTED_OPS & TRT_UNSUPPORTED_OPS
    for op in ("Conv", "ConvTranspose", "HardSwish", "LayerNormalization", "Resize", "QuantizeLinear",
               "DequantizeLinear", "MatMul", "Softmax", "Erf", "SpaceToDepth"):
        assert op in TRT_SUPPORTED_OPS


def _graph(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def test_unsupported_ops_are_reported():
    x, y = _vi("x", ["N", 3, 8, 8]), _vi("y", None)
    roi = numpy_helper.from_array(np.array([], np.float32), "roi")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [
        helper.make_node("Resize", ["x", "roi", "scales"], ["r"], mode="cubic"),
        helper.make_node("Resize", ["r", "roi", "scales"], ["r2"], mode="linear", antialias=1),
        helper.make_node("Unique", ["r2"], ["u"]),
        helper.make_node("FusedConv", ["u"], ["y"], domain="com.microsoft"),
    ]
    m = _graph(nodes, [x], [y], [roi, scales], opset=18)
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    got = unsupported_ops(m)
    assert "Unique" in got and "com.microsoft::FusedConv" in got
    assert "Resize(mode=cubic)" in got and "Resize(antialias=1)" in got
    assert any(p.startswith("opset 8") for p in unsupported_ops(m, opset=8))


def test_dynamic_height_width_is_reported(tmp_path):
    from rtseg.export.onnx import quiet_export

    model = _small_model("eunet-s")
    path = tmp_path / "dyn.onnx"
    with torch.no_grad(), quiet_export():
        torch.onnx.export(model, torch.zeros(1, 3, *HW), str(path), opset_version=17, dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "b", 2: "h", 3: "w"}, "logits": {0: "b", 2: "h", 3: "w"}})
    problems = non_batch_dynamic_dims(onnx.load(str(path)))
    assert any("input 'input' axis 2" in p for p in problems)
    assert any("input 'input' axis 3" in p for p in problems)


# -- 2. Q/DQ layout ---------------------------------------------------------------------------------
class _Reader:
    def __init__(self, name, hw, n=4):
        self.items = iter([{name: np.random.default_rng(i).standard_normal((1, 3, *hw)).astype(np.float32)} for i in range(n)])

    def get_next(self):
        return next(self.items, None)


def _ort_quantize(src: Path, dst: Path, trt_friendly: bool = True) -> Path:
    """Q/DQ ONNX with ONNX Runtime's quantize_static. ``trt_friendly`` applies the options
    TensorRT needs (see rtseg.runtime.tensorrt.onnx_check): INT8 symmetric activations and weights,
    per-channel weights, float biases, ConvTranspose weights on axis 0, only weighted ops."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(_Reader, CalibrationDataReader):
        pass

    m = onnx.load(str(src))
    kw = {}
    if trt_friendly:
        kw = dict(op_types_to_quantize=["Conv", "ConvTranspose", "Gemm", "MatMul"],
                  extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                                 "QDQDisableWeightAdjustForInt32Bias": True,
                                 "TensorQuantOverrides": {n.input[1]: [{"axis": 0}] for n in m.graph.node
                                                          if n.op_type == "ConvTranspose"}})
    quantize_static(str(src), str(dst), Reader(m.graph.input[0].name, HW), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True, **kw)
    return dst


def make_qdq(src: Path, dst: Path) -> Path:
    """The project's Q/DQ ONNX (``rtseg.calib.calibrate.calibrate_onnx``, the graph every backend
    builds INT8 from), calibrated here on seeded noise; before that module existed the same recipe
    ran through ONNX Runtime directly (:func:`_ort_quantize`)."""
    try:
        from rtseg.calib.calibrate import calibrate_onnx
    except ImportError:  # pragma: no cover
        return _ort_quantize(src, dst)
    data = np.random.default_rng(0).standard_normal((4, 3, *HW)).astype(np.float32)
    calibrate_onnx(src, dst, data)
    return dst


@pytest.fixture(scope="module")
def eunet_onnx(tmp_path_factory):
    root = tmp_path_factory.mktemp("eunet")
    return _export(_small_model("eunet-s"), root / "model.onnx")


def test_qdq_onnx_follows_tensorrt_explicit_quantization(eunet_onnx, tmp_path):
    qdq = make_qdq(eunet_onnx, tmp_path / "model.qdq.onnx")
    assert qdq_placement_issues(qdq) == []
    s = qdq_summary(qdq)
    assert s["weighted_quantized"] > 0 and s["quantize"] > 0
    assert unsupported_ops(qdq) == []


# same graph at test sizes: quantizing it twice adds time, not coverage
QDQ_SAME_AS = {"visionfusenet": "visionfusenet-effv2b3", "eunet-s": "eunet"}
QDQ_SLOW = {"gmsrfnet"}  # ~1 min of ONNX Runtime calibration on 2 shared cores


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in QDQ_SLOW else n
                                  for n in list_models() if n not in QDQ_SAME_AS])
@pytest.mark.slow
def test_qdq_onnx_of_every_network_follows_tensorrt_rules(exported, name, tmp_path):
    path, hw = exported(name)
    from rtseg.calib.calibrate import calibrate_onnx

    calibrate_onnx(path, tmp_path / "model.qdq.onnx", np.random.default_rng(0).standard_normal((1, 3, *hw)).astype(np.float32))
    assert qdq_placement_issues(tmp_path / "model.qdq.onnx") == []
    assert qdq_summary(tmp_path / "model.qdq.onnx")["weighted_quantized"] > 0
    assert unsupported_ops(tmp_path / "model.qdq.onnx") == []


def test_default_ort_quantization_is_refused(eunet_onnx, tmp_path):
    """ORT's defaults (asymmetric, INT32 bias, ConvTranspose axis 1) break TensorRT; the check says so."""
    bad = qdq_placement_issues(_ort_quantize(eunet_onnx, tmp_path / "default.qdq.onnx", trt_friendly=False))
    text = "\n".join(bad)
    assert "zero point is not 0" in text
    assert "INT32" in text
    assert "ConvTranspose" in text and "axis 1" in text


def _conv_qdq_model(*, zp_dtype=TensorProto.INT8, zp=0, act_scales=1, w_axis=0, q_feeds_relu=False, quantize_weight=True):
    x, y = _vi("x", ["N", 4, 8, 8]), _vi("y", None)
    w = np.random.default_rng(0).integers(-5, 5, (8, 4, 3, 3)).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.full(act_scales, 0.1, np.float32) if act_scales > 1 else np.array(0.1, np.float32), "sx"),
        helper.make_tensor("zx", zp_dtype, [act_scales] if act_scales > 1 else [], [zp] * act_scales),
        numpy_helper.from_array(np.full(8 if w_axis == 0 else 4, 0.01, np.float32), "sw"),
        numpy_helper.from_array(np.zeros(8 if w_axis == 0 else 4, np.int8), "zw"),
        numpy_helper.from_array(w, "wq"),
        numpy_helper.from_array(w.astype(np.float32), "wf"),
    ]
    qx_attrs = {"axis": 1} if act_scales > 1 else {}
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"], **qx_attrs)]
    if q_feeds_relu:
        nodes.append(helper.make_node("Relu", ["xq"], ["xr"]))
    nodes.append(helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"], **qx_attrs))
    if quantize_weight:
        nodes.append(helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], axis=w_axis))
        nodes.append(helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv", pads=[1, 1, 1, 1]))
    else:
        nodes.append(helper.make_node("Conv", ["xd", "wf"], ["y"], name="conv", pads=[1, 1, 1, 1]))
    outs = [y] + ([_vi("xr", None, TensorProto.INT8)] if q_feeds_relu else [])
    return _graph(nodes, [x], outs, inits)


def test_handmade_qdq_graphs():
    assert qdq_placement_issues(_conv_qdq_model()) == []
    assert any("UINT8" in p for p in qdq_placement_issues(_conv_qdq_model(zp_dtype=TensorProto.UINT8, zp=128)))
    assert any("not 0" in p for p in qdq_placement_issues(_conv_qdq_model(zp=3)))
    assert any("per-channel" in p for p in qdq_placement_issues(_conv_qdq_model(act_scales=4)))
    assert any("axis 1" in p for p in qdq_placement_issues(_conv_qdq_model(w_axis=1)))
    assert any("not a DequantizeLinear" in p for p in qdq_placement_issues(_conv_qdq_model(q_feeds_relu=True)))
    assert any("both be quantized" in p for p in qdq_placement_issues(_conv_qdq_model(quantize_weight=False)))
    assert qdq_placement_issues(_graph([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [1])], [_vi("y", [1])]))[0] \
        .startswith("no QuantizeLinear")


# -- 3. FP16 ONNX (TensorRT 11 strongly typed) ----------------------------------------------------------
def test_fp16_onnx_keeps_float32_io_and_matches(eunet_onnx, tmp_path):
    import onnxruntime as ort

    out = fp16_onnx(eunet_onnx, tmp_path / "model.fp16.onnx")
    m16 = onnx.load(str(out))
    onnx.checker.check_model(m16)  # also checks topological order
    assert m16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert m16.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert any(i.data_type == TensorProto.FLOAT16 for i in m16.graph.initializer)
    assert unsupported_ops(m16) == []
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    x = np.random.default_rng(1).standard_normal((2, 3, *HW)).astype(np.float32)
    ref = ort.InferenceSession(str(eunet_onnx), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    got = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert got.dtype == np.float32
    assert np.max(np.abs(got - ref)) <= 1e-2 * np.max(np.abs(ref)) + 1e-3


def test_fp16_onnx_refuses_qdq(eunet_onnx, tmp_path):
    qdq = _ort_quantize(eunet_onnx, tmp_path / "q.onnx")
    with pytest.raises(RtsegError, match="Q/DQ"):
        fp16_onnx(qdq, tmp_path / "x.onnx")


# -- 4. engine.json checks ----------------------------------------------------------------------------
META = {
    "format": "rtseg-engine/1", "backend": "tensorrt", "backend_version": "10.3.0", "precision": "fp16",
    "device": {"type": "cuda", "name": "NVIDIA A10", "compute_capability": "8.6"},
    "engine_file": "model.engine", "batch": {"min": 1, "opt": 1, "max": 8},
    "input": {"name": "input", "shape": [-1, 3, *HW], "dtype": "float32", "layout": "NCHW"},
    "output": {"name": "logits", "shape": [-1, 2, *HW], "dtype": "float32"},
    "model": {"model": "eunet-s", "num_classes": 2, "input_size": list(HW)},
    "checkpoint": {"path": "runs/eunet-s", "sha256": "0" * 64},
    "build": {"version_compatible": False, "hardware_compatibility_level": "none"},
}
HERE = dict(trt_version="10.3.0", gpu_name="NVIDIA A10", compute_capability="8.6")


def _meta(**build):
    m = json.loads(json.dumps(META))
    m["build"].update(build)
    return m


def test_check_engine_meta_accepts_same_machine():
    check_engine_meta(_meta(), **HERE)
    check_engine_meta(_meta(), trt_version="10.3.0", gpu_name="NVIDIA A10", compute_capability=(8, 6))


@pytest.mark.parametrize("change, words", [
    (dict(trt_version="10.4.0"), ["TensorRT 10.3.0", "10.4.0"]),
    (dict(trt_version="11.0.0"), ["TensorRT 10.3.0"]),
    (dict(gpu_name="NVIDIA L4", compute_capability="8.9"), ["NVIDIA A10", "NVIDIA L4"]),
    (dict(gpu_name="NVIDIA A10G"), ["NVIDIA A10G"]),
])
def test_check_engine_meta_refuses_other_version_or_gpu(change, words):
    with pytest.raises(RtsegError) as e:
        check_engine_meta(_meta(), **{**HERE, **change})
    msg = str(e.value)
    assert "rtseg build-engine --checkpoint runs/eunet-s --backend tensorrt --precision fp16" in msg
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_check_engine_meta_compatibility_levels():
    vc = _meta(version_compatible=True)
    check_engine_meta(vc, **{**HERE, "trt_version": "10.8.0"})
    check_engine_meta(vc, **{**HERE, "trt_version": "11.1.0"})
    for newer_or_older in ("10.2.0", "12.0.0"):
        with pytest.raises(RtsegError, match="version-compatible"):
            check_engine_meta(vc, **{**HERE, "trt_version": newer_or_older})
    same_cc = _meta(hardware_compatibility_level="same_compute_capability")
    check_engine_meta(same_cc, **{**HERE, "gpu_name": "NVIDIA RTX A6000"})
    with pytest.raises(RtsegError, match="compute capability 8.6"):
        check_engine_meta(same_cc, **{**HERE, "gpu_name": "NVIDIA L4", "compute_capability": "8.9"})
    ampere = _meta(hardware_compatibility_level="ampere_plus")
    check_engine_meta(ampere, **{**HERE, "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"})
    with pytest.raises(RtsegError, match="Ampere"):
        check_engine_meta(ampere, **{**HERE, "gpu_name": "Tesla T4", "compute_capability": "7.5"})
    # same compute capability, other model: refused by default, accepted when not strict
    check_engine_meta(_meta(), **{**HERE, "gpu_name": "NVIDIA A10G"}, strict_device=False)


def test_check_engine_meta_refuses_wrong_or_incomplete_meta():
    with pytest.raises(RtsegError, match="openvino engine"):
        check_engine_meta({**_meta(), "backend": "openvino"}, **HERE)
    incomplete = _meta()
    del incomplete["backend_version"]
    with pytest.raises(RtsegError, match="does not record"):
        check_engine_meta(incomplete, **HERE)


# -- 5. without TensorRT -------------------------------------------------------------------------------
@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_load_engine_without_tensorrt_is_one_clear_error(tmp_path):
    from rtseg.runtime import load_engine

    (tmp_path / "engine.json").write_text(json.dumps(META))
    with pytest.raises(RtsegError) as e:
        load_engine(tmp_path, allow_unsealed=True)  # a hand-written engine.json: no seal (issue 26)
    assert str(e.value) == TRT_MISSING


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_build_without_tensorrt_is_one_clear_error(eunet_onnx, tmp_path):
    with pytest.raises(RtsegError) as e:
        build_tensorrt_engine(eunet_onnx, tmp_path / "e", "fp16", TensorRTBuildOptions(input_hw=HW))
    assert str(e.value) == TRT_MISSING
    assert not (tmp_path / "e").exists()


def test_build_validates_options_before_anything_else(eunet_onnx, tmp_path):
    cases = [dict(precision="int4"), dict(min_batch=4, opt_batch=2), dict(max_batch=0),
             dict(hardware_compatibility_level="turing_plus"), dict(workspace_mb=0), dict(input_hw=None)]
    for case in cases:
        kw = {"precision": "fp16", "input_hw": HW, **case}
        with pytest.raises(RtsegError) as e:
            build_tensorrt_engine(eunet_onnx, tmp_path / "e", kw.pop("precision"), TensorRTBuildOptions(**kw))
        assert "TensorRT is not installed" not in str(e.value)


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_cli_build_engine_tensorrt_exits_2(tmp_path, capsys):
    from rtseg.checkpoint import save_checkpoint
    from rtseg.cli import main
    from rtseg.meta import ModelMeta

    ckpt = save_checkpoint(tmp_path / "ckpt", _small_model("eunet-s", num_classes=1),
                           ModelMeta(model="eunet-s", model_kwargs={"widths": list(TINY_WIDTHS)}, input_size=list(HW)))
    with pytest.raises(SystemExit) as e:
        main(["build-engine", "--checkpoint", str(ckpt), "--backend", "tensorrt", "--precision", "fp16",
              "--out", str(tmp_path / "engines")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2
    errors = [line for line in err if line.startswith("error:")]  # progress lines may come first
    assert errors == [f"error: {TRT_MISSING}"], err


# -- 5b. the builder's TensorRT call sequence, against a strict fake of the documented API ----------
#: enums and call signatures of the real TensorRT bindings (10.0.1 … 11.4.0.106), recorded and kept
#: true by tests/runtime/test_trt_bindings.py: the fake below takes its enums from here, and
#: test_fake_signatures_are_the_real_ones compares its methods with the real signatures
TRT_API = json.loads((Path(__file__).resolve().parents[1] / "assets" / "trt_api.json").read_text())


def _vkey(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split(".")[:3])


def _api_for(version: str) -> dict:
    """The recorded release nearest below ``version`` with the same major (the oldest for others)."""
    same = [v for v in TRT_API if v.split(".")[0] == version.split(".")[0] and _vkey(v) <= _vkey(version)]
    return TRT_API[max(same, key=_vkey) if same else min(TRT_API, key=_vkey)]


class _Member(int):
    """An enum member like pybind11's: an int whose str() is ``Enum.NAME``."""

    def __new__(cls, enum: str, name: str, value: int):
        m = super().__new__(cls, value)
        m.label = f"{enum}.{name}"
        return m

    def __str__(self):
        return self.label

    __repr__ = __str__


def _enum(api: dict, name: str):
    import types

    return types.SimpleNamespace(**{k: _Member(name, k, v) for k, v in api["enums"][name].items()})


def _fake_tensorrt(version: str, *, plan: bytes | None = b"PLAN", parse_ok: bool = True, cache_fits: bool = True):
    """A stand-in for the ``tensorrt`` module of ``version``: its enums are the real bindings' (the
    nearest recorded release, :data:`TRT_API`: TensorRT 11 has no BuilderFlag.FP16/INT8 and
    STRONGLY_TYPED = 0; HardwareCompatibilityLevel has SAME_COMPUTE_CAPABILITY only from 10.9), its
    method parameters the real ones (checked by test_fake_signatures_are_the_real_ones). Records
    every call.

    ``cache_fits=False``: a non-empty timing cache comes from another GPU, so ``set_timing_cache``
    returns False and attaches nothing (``get_timing_cache()`` then returns None), as the real
    bindings do; an empty (fresh) cache always fits."""
    import types

    api = _api_for(version)
    calls: list[tuple] = []
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = calls
    for name in ("BuilderFlag", "NetworkDefinitionCreationFlag", "MemoryPoolType", "HardwareCompatibilityLevel",
                 "DataType", "TensorIOMode"):
        setattr(trt, name, _enum(api, name))

    class Logger:
        WARNING, VERBOSE = 2, 4  # ILogger.Severity


        def __init__(self, min_severity):
            calls.append(("Logger", min_severity))

    class Tensor:
        def __init__(self, name, shape, dtype):
            self.name, self.shape, self.dtype = name, tuple(shape), dtype

    class Network:
        def __init__(self, flags):
            self.flags, self.inputs, self.outputs = flags, [], []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, index):
            return self.inputs[index]

        def get_output(self, index):
            return self.outputs[index]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse_from_file(self, model):
            calls.append(("parse_from_file", model))
            if not parse_ok:
                self.errors.append("In node 3 (importFoo): UNSUPPORTED_NODE: Foo")
                return False
            m = onnx.load(model, load_external_data=False)

            def tensor(vi):
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
                return Tensor(vi.name, dims, trt.DataType.FLOAT)

            self.network.inputs = [tensor(i) for i in m.graph.input]
            self.network.outputs = [tensor(o) for o in m.graph.output]
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, index):
            return self.errors[index]

    class Profile:
        def set_shape(self, input, min, opt, max):  # noqa: A002 - the binding's keyword names
            calls.append(("set_shape", input, tuple(min), tuple(opt), tuple(max)))

    class TimingCache:
        def __init__(self, blob):
            self.blob = blob

        def serialize(self):
            return b"CACHE"

    class Config:
        def __init__(self):
            self.flags, self.hardware_compatibility_level = set(), trt.HardwareCompatibilityLevel.NONE
            self.timing_cache = None

        def set_memory_pool_limit(self, pool, pool_size):
            calls.append(("set_memory_pool_limit", pool, pool_size))

        def set_flag(self, flag):
            self.flags.add(flag)

        def clear_flag(self, flag):
            calls.append(("clear_flag", flag))
            self.flags.discard(flag)

        def add_optimization_profile(self, profile):
            calls.append(("add_optimization_profile",))
            return 0

        def create_timing_cache(self, serialized_timing_cache):
            calls.append(("create_timing_cache", bytes(serialized_timing_cache)))
            return TimingCache(bytes(serialized_timing_cache))

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_timing_cache", ignore_mismatch))
            if not (cache_fits or ignore_mismatch or cache.blob == b""):
                return False  # the cache's CUDA device properties differ from this GPU's
            self.timing_cache = cache
            return True

        def get_timing_cache(self):
            return self.timing_cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            calls.append(("create_network", flags))
            self.network = Network(flags)
            return self.network

        def create_builder_config(self):
            self.config = Config()
            return self.config

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build", sorted(config.flags), config.hardware_compatibility_level))
            return plan

    trt.Logger, trt.OnnxParser, trt.Builder = Logger, OnnxParser, Builder
    trt.fake_classes = {"Builder": Builder, "INetworkDefinition": Network, "OnnxParser": OnnxParser,
                        "IOptimizationProfile": Profile, "ITimingCache": TimingCache, "IBuilderConfig": Config}
    return trt


def _real_params(signature: str, method: str) -> list[str]:
    """Parameter names (without self) of ``method`` in a recorded pybind11 signature (first overload)."""
    import re

    m = re.search(rf"{re.escape(method)}\(self: ([^)]*)\)", signature)
    assert m, f"no signature of {method} in {signature!r}"
    return re.findall(r"(?:^|, )(\w+): ", m.group(1))


@pytest.mark.parametrize("version", sorted(TRT_API, key=_vkey))
def test_fake_signatures_are_the_real_ones(version):
    """Every method of the fake that rtseg calls has the real parameter names and defaults-free arity."""
    import inspect

    trt = _fake_tensorrt(version)
    calls = TRT_API[version]["calls"]
    checked = 0
    for real_cls, fake_cls in trt.fake_classes.items():
        for key, signature in calls.items():
            cls, _, method = key.partition(".")
            if cls != real_cls or not method or method.endswith("=") or not callable(getattr(fake_cls, method, None)):
                continue
            if isinstance(inspect.getattr_static(fake_cls, method), property):
                continue
            fake = [p for p in inspect.signature(getattr(fake_cls, method)).parameters if p != "self"]
            assert fake == _real_params(signature, method), f"{real_cls}.{method} on TensorRT {version}"
            checked += 1
    assert checked >= 12


@pytest.fixture
def fake_trt(monkeypatch):
    import sys

    import rtseg.runtime.tensorrt.build as tb

    def install(version: str, **kw):
        trt = _fake_tensorrt(version, **kw)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(tb, "cuda_device_info", lambda index=None: {
            "type": "cuda", "index": 0, "name": "NVIDIA A10", "compute_capability": "8.6",
            "capabilities": ["sm_86", "fp16", "int8"], "memory_mb": 22000})
        return trt

    return install


def _call(trt, name):
    return [c for c in trt.calls if c[0] == name]


@pytest.mark.parametrize("version", ["10.3.0", "11.1.0"])
def test_builder_call_sequence_fp16(fake_trt, eunet_onnx, tmp_path, version):
    trt = fake_trt(version)
    out = tmp_path / "tensorrt-fp16"
    cache = tmp_path / f"timing.trt{version}.sm86.cache"  # --timing-cache timing.cache on an A10 (sm_86)
    cache.write_bytes(b"OLD")
    res = build_tensorrt_engine(eunet_onnx, out, "fp16", TensorRTBuildOptions(
        input_hw=HW, min_batch=1, opt_batch=2, max_batch=4, workspace_mb=512, timing_cache=tmp_path / "timing.cache"))
    assert (out / "model.engine").read_bytes() == b"PLAN"
    assert cache.read_bytes() == b"CACHE" and not (tmp_path / "timing.cache").exists()
    assert res["build"]["timing_cache"] == str(cache)
    assert _call(trt, "create_timing_cache") == [("create_timing_cache", b"OLD")]
    assert _call(trt, "set_timing_cache") == [("set_timing_cache", False)]
    assert _call(trt, "set_shape") == [("set_shape", "input", (1, 3, *HW), (2, 3, *HW), (4, 3, *HW))]
    assert _call(trt, "set_memory_pool_limit") == [("set_memory_pool_limit", 0, 512 << 20)]
    assert ("clear_flag", trt.BuilderFlag.TF32) in trt.calls
    (build,) = _call(trt, "build")
    if version.startswith("10"):
        assert _call(trt, "create_network") == [("create_network", 0)]  # weakly typed + FP16 flag
        assert build[1] == [trt.BuilderFlag.FP16]
        assert _call(trt, "parse_from_file") == [("parse_from_file", str(eunet_onnx))]
        assert res["build"]["fp16_flag"] and not res["build"]["strongly_typed"]
    else:  # strongly typed from an FP16 ONNX, no precision flags (they do not exist in 11)
        assert _call(trt, "create_network") == [("create_network", 0)]
        assert build[1] == []
        assert _call(trt, "parse_from_file") == [("parse_from_file", str(out / "model.fp16.onnx"))]
        assert (out / "model.fp16.onnx").is_file() and res["build"]["strongly_typed"]
    assert res["backend_version"] == version and res["engine_file"] == "model.engine"
    assert res["device"]["compute_capability"] == "8.6" and res["device"]["name"] == "NVIDIA A10"
    assert res["batch"] == {"min": 1, "opt": 2, "max": 4}
    assert res["input"] == {"name": "input", "shape": [-1, 3, *HW], "dtype": "float32", "layout": "NCHW"}
    assert res["output"]["shape"] == [-1, 2, *HW]


@pytest.mark.parametrize("version", ["10.3.0", "11.1.0"])
def test_builder_call_sequence_int8_and_options(fake_trt, eunet_onnx, tmp_path, version):
    trt = fake_trt(version)
    qdq = _ort_quantize(eunet_onnx, tmp_path / "model.qdq.onnx")
    res = build_tensorrt_engine(qdq, tmp_path / "e", "int8", TensorRTBuildOptions(
        input_hw=HW, version_compatible=True, hardware_compatibility_level="ampere_plus"))
    strongly = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if version.startswith("10") else 0
    assert _call(trt, "create_network") == [("create_network", strongly)]
    (build,) = _call(trt, "build")
    assert build[1] == [trt.BuilderFlag.VERSION_COMPATIBLE]  # no FP16/INT8 flags: explicit quantization
    assert build[2] == trt.HardwareCompatibilityLevel.AMPERE_PLUS
    assert res["build"]["version_compatible"] and res["build"]["hardware_compatibility_level"] == "ampere_plus"
    assert _call(trt, "create_timing_cache") == []  # no cache asked for


def test_builder_refuses_bad_inputs_with_fake_tensorrt(fake_trt, eunet_onnx, tmp_path):
    fake_trt("10.3.0")
    with pytest.raises(RtsegError, match="no Q/DQ nodes"):
        build_tensorrt_engine(eunet_onnx, tmp_path / "a", "int8", TensorRTBuildOptions(input_hw=HW))
    with pytest.raises(RtsegError, match="not .N, 3, 32, 32."):
        build_tensorrt_engine(eunet_onnx, tmp_path / "b", "fp32", TensorRTBuildOptions(input_hw=(32, 32)))
    bad = _ort_quantize(eunet_onnx, tmp_path / "default.qdq.onnx", trt_friendly=False)
    with pytest.raises(RtsegError, match="not quantized the way TensorRT expects"):
        build_tensorrt_engine(bad, tmp_path / "c", "int8", TensorRTBuildOptions(input_hw=HW))
    fake_trt("10.3.0", parse_ok=False)
    with pytest.raises(RtsegError, match="could not parse model.onnx: In node 3"):
        build_tensorrt_engine(eunet_onnx, tmp_path / "d", "fp32", TensorRTBuildOptions(input_hw=HW))
    fake_trt("10.3.0", plan=None)
    with pytest.raises(RtsegError, match="failed to build"):
        build_tensorrt_engine(eunet_onnx, tmp_path / "e", "fp32", TensorRTBuildOptions(input_hw=HW))
    fake_trt("8.6.1")
    with pytest.raises(RtsegError, match="too old"):
        build_tensorrt_engine(eunet_onnx, tmp_path / "f", "fp32", TensorRTBuildOptions(input_hw=HW))



def test_build_without_input_size_is_one_clear_error(eunet_onnx, tmp_path):
    for options in (None, TensorRTBuildOptions()):
        with pytest.raises(RtsegError, match="pass --img-size HxW"):
            build_tensorrt_engine(eunet_onnx, tmp_path / "e", "fp16", options)
    assert not (tmp_path / "e").exists()


def test_timing_cache_from_another_gpu_is_replaced_by_a_fresh_one(fake_trt, eunet_onnx, tmp_path):
    """set_timing_cache returns False for a cache of another device: one warning, a fresh cache, the
    build goes on and the fresh cache replaces the file (no AttributeError on get_timing_cache())."""
    trt = fake_trt("10.3.0", cache_fits=False)
    cache = tmp_path / "timing.trt10.3.0.sm86.cache"  # named for this GPU, but copied from another one
    cache.write_bytes(b"OTHER-GPU")
    out = tmp_path / "e"
    with pytest.warns(RuntimeWarning, match="does not fit this GPU") as record:
        res = build_tensorrt_engine(eunet_onnx, out, "fp32", TensorRTBuildOptions(input_hw=HW, timing_cache=tmp_path / "timing.cache"))
    assert len(record) == 1 and "\n" not in str(record[0].message) and str(cache) in str(record[0].message)
    assert _call(trt, "create_timing_cache") == [("create_timing_cache", b"OTHER-GPU"), ("create_timing_cache", b"")]
    assert _call(trt, "set_timing_cache") == [("set_timing_cache", False), ("set_timing_cache", False)]
    assert (out / "model.engine").read_bytes() == b"PLAN"
    assert cache.read_bytes() == b"CACHE"
    assert res["build"]["timing_cache"] == str(cache)


def test_same_compute_capability_needs_tensorrt_10_9(fake_trt, eunet_onnx, tmp_path):
    fake_trt("10.8.0")
    with pytest.raises(RtsegError, match=r"TensorRT 10\.8\.0 has no hardware compatibility level same_compute_capability "
                                         r"\(it needs TensorRT ≥ 10\.9\)"):
        build_tensorrt_engine(eunet_onnx, tmp_path / "a", "fp32",
                              TensorRTBuildOptions(input_hw=HW, hardware_compatibility_level="same_compute_capability"))
    trt = fake_trt("10.9.0")
    res = build_tensorrt_engine(eunet_onnx, tmp_path / "b", "fp32",
                                TensorRTBuildOptions(input_hw=HW, hardware_compatibility_level="same-compute-capability"))
    (build,) = _call(trt, "build")
    assert build[2] == trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY
    assert res["build"]["hardware_compatibility_level"] == "same_compute_capability"

def test_timing_cache_file_names_carry_version_and_compute_capability(tmp_path):
    from rtseg.runtime.tensorrt.build import timing_cache_file

    assert timing_cache_file(tmp_path / "timing.cache", "10.3.0", "8.6") == tmp_path / "timing.trt10.3.0.sm86.cache"
    assert timing_cache_file(tmp_path, "11.4.0.106", "9.0") == tmp_path / "timing.trt11.4.0.106.sm90.cache"
    assert timing_cache_file(tmp_path / "t", "10.3.0", "8.9") == tmp_path / "t.trt10.3.0.sm89.cache"
    named = tmp_path / "timing.trt10.3.0.sm86.cache"
    assert timing_cache_file(named, "10.3.0", "8.6") == named  # an already named file is used as is


class _FakeEngine:
    """Stands in for TensorRTBackend when the fake TensorRT "built" an engine: runs the engine's
    source ONNX in ONNX Runtime (a correct engine), plus ``error`` × max |logit| (a broken one)."""

    error = 0.0
    opened: list = []

    def __init__(self, folder, meta, **kw):
        self.folder, self.meta = Path(folder), meta
        self.min_batch, self.max_batch = meta["batch"]["min"], meta["batch"]["max"]
        _FakeEngine.opened.append(meta)

    def infer(self, x):
        assert self.min_batch <= len(x) <= self.max_batch
        y = _ort(self.folder / self.meta["build"]["source_onnx"], x)
        return y + self.error * np.abs(y).max()

    def close(self):
        pass


@pytest.mark.parametrize("precision, error, ok", [("fp32", 0.0, True), ("fp32", 0.01, False), ("fp16", 0.01, True),
                                                  ("fp16", 0.1, False)])
def test_fp32_fp16_engines_are_checked_against_the_onnx_at_build(fake_trt, monkeypatch, tmp_path, kvasir,
                                                                  precision, error, ok):
    """build-engine --backend tensorrt runs the new engine on two real images and compares it with its
    ONNX (ONNX Runtime): engine.json verify.onnx records it; an fp32/fp16 engine outside the bounds is
    refused and no folder is published."""
    import rtseg.runtime.tensorrt.backend as tbe
    from rtseg.export.build import BuildOptions, build_engine
    from rtseg.gate.check import GateOptions

    fake_trt("10.3.0")
    monkeypatch.setattr(tbe, "TensorRTBackend", _FakeEngine)
    monkeypatch.setattr(_FakeEngine, "error", error)
    ckpt = Path(__file__).resolve().parents[1] / "assets" / "eunet-tiny-kvasir64"
    out = tmp_path / "tensorrt-fp32"
    opts = BuildOptions(gate=GateOptions(enabled=False), backend_options={"min_batch": 1, "max_batch": 4})
    if not ok:
        with pytest.raises(RtsegError, match=rf"\({precision}\) does not match its ONNX: max abs diff"):
            build_engine(ckpt, "tensorrt", precision, out, opts)
        assert not out.exists()
        return
    meta = json.loads((build_engine(ckpt, "tensorrt", precision, out, opts) / "engine.json").read_text())
    v = meta["verify"]
    assert v["onnx"]["passed"] is True and v["onnx"]["bound"] > 0
    assert v["onnx"]["max_abs_diff"] <= v["onnx"]["bound"] and v["onnx"]["mask_agreement"] >= 0.99
    assert v["max_abs_diff"] < 1e-3 + error * v["logit_scale"] * 1.01 and "images from" in v["input"]  # vs PyTorch
    assert meta["backend"] == "tensorrt" and meta["precision"] == precision
    assert _FakeEngine.opened[-1]["engine_file"] == "model.engine"


def test_int8_engine_parity_is_recorded_not_enforced():
    from rtseg.runtime.tensorrt.build import check_onnx_parity

    ref = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    rec = check_onnx_parity(ref + 0.5, ref, "int8")
    assert rec["passed"] is None and rec["bound"] is None and rec["max_abs_diff"] == pytest.approx(0.5)
    with pytest.raises(RtsegError, match="shape"):
        check_onnx_parity(ref[:1], ref, "fp32")


# -- 6. GPU: build, compare with ONNX Runtime, run every path -------------------------------------------
def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def gpu_engines(tmp_path_factory):
    """fp32/fp16/int8 engine folders of a small 2-class EUNet, plus the ONNX files they came from."""
    pytest.importorskip("tensorrt")
    from rtseg.runtime import seal_engine

    root = tmp_path_factory.mktemp("trt")
    model = _small_model("eunet-s", num_classes=2)
    onnx_path = _export(model, root / "model.onnx")
    qdq_path = make_qdq(onnx_path, root / "model.qdq.onnx")
    model_meta = {"model": "eunet-s", "num_classes": 2, "mean": [0.471, 0.448, 0.408], "std": [0.234, 0.239, 0.242],
                  "input_size": list(HW)}
    cache = root / "timing.cache"
    folders = {}
    for precision, src in (("fp32", onnx_path), ("fp16", onnx_path), ("int8", qdq_path)):
        folder = root / f"tensorrt-{precision}"
        entries = build_tensorrt_engine(src, folder, precision, TensorRTBuildOptions(
            input_hw=HW, min_batch=1, opt_batch=2, max_batch=4, workspace_mb=1024, timing_cache=cache))
        meta = {"format": "rtseg-engine/1", **entries, "onnx_file": src.name, "model": model_meta,
                "checkpoint": {"path": "test", "sha256": None}}
        meta["seal"] = seal_engine(folder, meta)  # as build-engine seals it (issue 26)
        (folder / "engine.json").write_text(json.dumps(meta))
        folders[precision] = folder
    return {"onnx": onnx_path, "qdq": qdq_path, "folders": folders, "cache": cache, "root": root}


def _batch(n=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *HW, 3), dtype=np.uint8)


@pytest.mark.gpu
def test_gpu_engines_match_onnxruntime(gpu_engines):
    from rtseg.runtime import load_engine
    from rtseg.runtime.base import logits_to_mask

    frames = _batch()
    for precision, folder in gpu_engines["folders"].items():
        be = load_engine(folder, backend="tensorrt")
        x = be.normalize(frames)
        ref = _ort(gpu_engines["qdq" if precision == "int8" else "onnx"], x)
        got = be.infer(x)
        scale = float(np.max(np.abs(ref)))
        diff = float(np.max(np.abs(got - ref)))
        dice = _dice(logits_to_mask(got), logits_to_mask(ref))
        bound = {"fp32": 1e-3 * scale + 1e-4, "fp16": 2e-2 * scale + 1e-3, "int8": 0.15 * scale + 1e-3}[precision]
        assert diff <= bound, f"{precision}: max abs diff {diff:.3g} > {bound:.3g}"
        assert dice >= {"fp32": 0.999, "fp16": 0.97, "int8": 0.9}[precision], f"{precision}: Dice {dice:.3f}"
        # GPU preprocessing == NumPy preprocessing; mask only to the host
        np.testing.assert_allclose(be.infer_u8(frames), got, rtol=1e-4, atol=1e-4 * scale)
        np.testing.assert_array_equal(be.predict_u8(frames), logits_to_mask(be.infer_u8(frames)))
        assert be.meta["device"]["compute_capability"]
        be.close()
    assert gpu_engines["cache"].stat().st_size > 0


@pytest.mark.gpu
def test_gpu_torch_paths_and_batches(gpu_engines):
    from rtseg.runtime import load_engine

    be = load_engine(gpu_engines["folders"]["fp16"])
    frames = _batch(3, seed=1)
    ref = be.infer(be.normalize(frames))
    x = torch.from_numpy(be.normalize(frames)).cuda()
    out = be.infer_torch(x)
    assert out.is_cuda and out.shape == (3, 2, *HW)
    np.testing.assert_allclose(out.cpu().numpy(), ref, rtol=1e-5, atol=1e-5)
    mask = be.predict_u8(torch.from_numpy(frames).cuda())
    assert mask.is_cuda and mask.dtype == torch.uint8
    np.testing.assert_array_equal(mask.cpu().numpy(), be.predict_u8(frames))
    for n in (1, 2, 4):  # every batch of the profile, in any order
        assert be.infer(be.normalize(_batch(n))).shape == (n, 2, *HW)
    with pytest.raises(RtsegError, match="batch of 5"):
        be.infer(be.normalize(_batch(5)))
    be.close()


@pytest.mark.gpu
def test_gpu_cuda_graph_matches_plain_execution(gpu_engines):
    from rtseg.runtime import load_engine

    folder = gpu_engines["folders"]["fp32"]
    plain = load_engine(folder)
    graph = load_engine(folder, cuda_graph=True)
    for n in (4, 1, 4):
        frames = _batch(n, seed=n)
        np.testing.assert_allclose(graph.infer_u8(frames), plain.infer_u8(frames), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(graph.predict_u8(frames), plain.predict_u8(frames))
    assert graph.cuda_graph, "CUDA graph capture fell back to plain execution"
    assert set(graph._graphs) == {1, 4}
    x = torch.from_numpy(plain.normalize(_batch(2))).cuda()
    np.testing.assert_allclose(graph.infer_torch(x).cpu().numpy(), plain.infer_torch(x).cpu().numpy(), rtol=1e-5, atol=1e-5)
    graph.close()
    plain.close()


@pytest.mark.gpu
def test_gpu_version_compatible_engine_and_refusal(gpu_engines):
    from rtseg.runtime import load_engine, seal_engine

    folder = gpu_engines["root"] / "tensorrt-fp32-vc"
    entries = build_tensorrt_engine(gpu_engines["onnx"], folder, "fp32", TensorRTBuildOptions(
        input_hw=HW, max_batch=2, version_compatible=True, timing_cache=gpu_engines["cache"]))
    meta = {"format": "rtseg-engine/1", **entries, "model": {"num_classes": 2}, "checkpoint": {"path": "test"}}
    meta["seal"] = seal_engine(folder, meta)
    (folder / "engine.json").write_text(json.dumps(meta))
    be = load_engine(folder)
    assert be.infer(be.normalize(_batch(2))).shape == (2, 2, *HW)
    be.close()
    meta["backend_version"] = "99.0.0"  # built by a newer TensorRT than the one here
    meta["seal"] = seal_engine(folder, meta)  # as that TensorRT would seal it: the version check refuses it
    (folder / "engine.json").write_text(json.dumps(meta))
    with pytest.raises(RtsegError, match="rebuild"):
        load_engine(folder)
