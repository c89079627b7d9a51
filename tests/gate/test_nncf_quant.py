"""NNCF post-training quantization of the OpenVINO model (``rtseg.gate.nncf_quant``) on real Kvasir images.

The fast-subset test of the module: ``nncf.quantize`` of a small trained EUNet at 64x64 on 8 images. The
whole ``build-engine --int8-quantizer nncf-ac`` path (accuracy control and the gate) is the slow test in
``test_gate.py``.
"""

from __future__ import annotations

import openvino as ov
import pytest

from rtseg.calib.images import preprocess_images, select_images
from rtseg.checkpoint import load_checkpoint
from rtseg.errors import RtsegError
from rtseg.export.onnx import export_onnx
from rtseg.gate.nncf_quant import NNCFOptions, quantize_nncf

from helpers import REPO

HW = (64, 64)


@pytest.fixture(scope="module")
def fp32_and_images(tmp_path_factory, kvasir):
    model, meta = load_checkpoint(REPO / "tests" / "assets" / "eunet-tiny-kvasir64")
    path = tmp_path_factory.mktemp("nncf") / "model.onnx"
    export_onnx(model, path, HW)
    paths = select_images(sorted((kvasir / "images").glob("*.jpg")), 8, seed=0)
    return path, preprocess_images(paths, HW, "stretch", meta.mean, meta.std)


def test_nncf_quantize_runs_int8_layers_and_keeps_the_masks(tmp_path, fp32_and_images):
    """``nncf.quantize``: the IR is written, OpenVINO runs most compute layers in int8, and its masks agree
    with the FP32 ONNX's on the calibration images."""
    onnx_path, x = fp32_and_images
    rec = quantize_nncf(onnx_path, tmp_path / "model.xml", x, options=NNCFOptions(accuracy_control=False, threads=1))
    assert rec["tool"] == "nncf" and rec["mode"] == "quantize" and rec["calibration_images"] == 8
    assert rec["max_drop_pt"] is None and (tmp_path / "model.bin").is_file()
    layers = rec["layers"]
    assert layers["int8"] > layers["float"] and layers["float"] == len(layers["float_layers"])
    core = ov.Core()
    fp32 = core.compile_model(str(onnx_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    int8 = core.compile_model(str(tmp_path / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    a, b = fp32(x)[0] > 0, int8(x)[0] > 0
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert a.sum() > 0.05 * a.size and dice > 0.9, dice  # polyp pixels predicted, and int8 draws the same ones


def test_accuracy_control_without_gate_images_is_refused(tmp_path, fp32_and_images):
    onnx_path, x = fp32_and_images
    with pytest.raises(RtsegError, match="needs labelled gate images"):
        quantize_nncf(onnx_path, tmp_path / "model.xml", x, options=NNCFOptions(accuracy_control=True))
    assert not (tmp_path / "model.xml").exists()
