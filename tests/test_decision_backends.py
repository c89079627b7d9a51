"""Issue 21: the shipped model's presence decision is the same through every CPU backend and precision.

The decision is a rule on the logits (rtseg.decision), so each backend applies it to its own logits:
ONNX Runtime and OpenVINO, fp32 and int8 (one Q/DQ ONNX calibrated on real polyp and polyp-free frames),
against the PyTorch reference, on real frames — Kvasir-SEG test images, polyp-free PolypGen frames of the
held-out sequences and PolypGen test frames. A frame whose reference peak logit lies within the backend's
numeric error of the threshold may go either way; every other frame must be decided the same, and the
peak logit itself must stay within that error.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from rtseg.decision import model_presence
from rtseg.defaults import default_model_dir
from rtseg.export.build import BuildOptions, build_engine
from rtseg.gate.check import GateOptions
from rtseg.runtime import load_engine

NO_GATE = GateOptions(enabled=False)
#: logits within this of the threshold may be decided either way (fp32: rounding; int8: quantization error,
#: measured up to 1.9 logits on a peak with 32 calibration images and no gate repair)
MARGIN = {"fp32": 0.05, "int8": 2.5}


@pytest.fixture(scope="module")
def frames(shared_data):
    """48 real frames at the network size: 16 Kvasir test, 16 held-out polyp-free, 16 PolypGen test."""
    from rtseg.data.formats import get_format
    from rtseg.data.transforms import Preprocessor

    fmt = get_format("polyp")
    picks = (fmt.splits(shared_data / "kvasir-seg-256")["test"][:16]
             + (fmt.splits(shared_data / "polypgen-negatives")["val"][::4]
                + fmt.splits(shared_data / "polypgen-negatives")["test"][::4])[:16]
             + fmt.all_samples(shared_data / "polypgen-test")[::9][:16])
    meta = json.loads((default_model_dir() / "model.json").read_text())
    pre = Preprocessor(tuple(meta["input_size"]), meta.get("resize", "stretch"))
    return np.stack([pre(fmt.read(s)[0])[0] for s in picks])


@pytest.fixture(scope="module")
def calib_folder(tmp_path_factory, shared_data):
    """Calibration images: 16 Kvasir-SEG and 16 polyp-free training frames (symlinks)."""
    from rtseg.data.formats import get_format

    fmt = get_format("polyp")
    d = tmp_path_factory.mktemp("calib-images") / "images"
    d.mkdir()
    for root in ("kvasir-seg-256", "polypgen-negatives"):
        for s in fmt.splits(shared_data / root)["train"][::25][:16]:
            (d / s.image.name).symlink_to(s.image)
    return d


@pytest.fixture(scope="module")
def engines(tmp_path_factory, calib_folder):
    from rtseg.calib.calibrate import CalibOptions, calibrate_checkpoint

    work = tmp_path_factory.mktemp("presence-engines")
    ckpt = default_model_dir()
    calibrate_checkpoint(ckpt, CalibOptions(calib_data=calib_folder, num_images=32, out=work / "calib", verify=False))
    int8 = BuildOptions(qdq_from=work / "calib", gate=NO_GATE)
    return {(b, p): build_engine(ckpt, b, p, out=work / f"{b}-{p}", options=int8 if p == "int8" else None)
            for b in ("onnxruntime", "openvino") for p in ("fp32", "int8")}


@pytest.mark.parametrize("key", [("onnxruntime", "fp32"), ("openvino", "fp32"), ("onnxruntime", "int8"),
                                 ("openvino", "int8")])
@pytest.mark.slow
def test_presence_equals_pytorch(engines, frames, key):
    meta = json.loads((default_model_dir() / "model.json").read_text())
    rule = model_presence(meta, 1)
    assert rule is not None  # the shipped model carries a calibrated rule
    ref = load_engine(default_model_dir(), num_threads=2).infer_u8(frames)
    backend = load_engine(engines[key], num_threads=2)
    assert backend.meta["model"]["decision"]["presence"] == rule.to_dict()  # the rule travels into engine.json
    got = backend.infer_u8(frames)
    peak_ref, peak = ref.reshape(len(ref), -1).max(1), got.reshape(len(got), -1).max(1)
    assert np.abs(peak - peak_ref).max() <= MARGIN[key[1]], np.abs(peak - peak_ref).max()
    sure = np.abs(peak_ref - rule.min_peak) > MARGIN[key[1]]
    assert sure.sum() >= len(frames) // 3, (peak_ref, rule)
    want, have = rule.present(ref), rule.present(got)
    assert (want[sure] == have[sure]).all(), {"frames": np.flatnonzero(sure & (want != have)).tolist(),
                                              "peaks_ref": peak_ref.tolist()}
    assert want[sure].any() and not want[sure].all()  # both decisions occur on these frames
