"""Engine folders (issue 2 step 6): OpenVINO fp32/int8 and ONNX Runtime fp32/int8 built from a tiny
checkpoint, loaded through ``rtseg.runtime.load_engine`` and compared with PyTorch on real images;
bad inputs (other backend's folder, other version, wrong architecture, bf16 without support) refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from rtseg.calib.images import preprocess_images, select_images
from rtseg.checkpoint import save_checkpoint
from rtseg.errors import RtsegError
from rtseg.export.build import BuildOptions, build_engine
from rtseg.gate.check import GateOptions
from rtseg.meta import ModelMeta
from rtseg.models import create_model
from rtseg.runtime import load_engine, logits_to_mask, seal_engine

from helpers import TINY_WIDTHS

NO_GATE = GateOptions(enabled=False)

HW = (64, 64)
WIDTHS = list(TINY_WIDTHS)


def _tiny():
    torch.manual_seed(0)
    return create_model("eunet-s", widths=WIDTHS).eval()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def ckpt(work, kvasir):
    meta = ModelMeta(model="eunet-s", model_kwargs={"widths": WIDTHS}, input_size=list(HW), data={"root": str(kvasir)})
    return save_checkpoint(work / "ckpt", _tiny(), meta)


@pytest.fixture(scope="module")
def frames(kvasir):
    """Three real Kvasir images at 64×64, uint8 NHWC RGB, and the matching normalised NCHW batch."""
    from rtseg.data.folder import read_image
    from rtseg.data.transforms import Preprocessor

    files = select_images(sorted((kvasir / "images").glob("*.jpg")), 3, seed=3)
    pre = Preprocessor(HW, "stretch")
    u8 = np.stack([pre(read_image(f))[0] for f in files])
    x = preprocess_images(files, HW, "stretch", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return u8, x


@pytest.fixture(scope="module")
def reference(frames):
    with torch.inference_mode():
        return _tiny()(torch.from_numpy(frames[1])).numpy()


@pytest.fixture(scope="module")
def calib_folder(work, ckpt, kvasir):
    from rtseg.calib.calibrate import CalibOptions, calibrate_checkpoint

    calibrate_checkpoint(ckpt, CalibOptions(calib_data=kvasir / "images", num_images=4, seed=0, out=work / "calib",
                                            verify=False))
    return work / "calib"


@pytest.fixture(scope="module")
def engines(work, ckpt, kvasir, calib_folder):
    """The four CPU engines. The first one goes to the default place under the CWD."""
    import os

    cwd = os.getcwd()
    os.chdir(work)
    try:
        ov32 = build_engine(ckpt, "openvino", "fp32")
    finally:
        os.chdir(cwd)
    return {
        ("openvino", "fp32"): work / ov32,
        # random weights: the accuracy gate is tested on a trained model in test_gate.py
        ("openvino", "int8"): build_engine(ckpt, "openvino", "int8", out=work / "ov-int8",
                                           options=BuildOptions(qdq_from=calib_folder, gate=NO_GATE)),
        ("onnxruntime", "fp32"): build_engine(ckpt, "onnxruntime", "fp32", out=work / "ort-fp32"),
        ("onnxruntime", "int8"): build_engine(ckpt, "onnxruntime", "int8", out=work / "ort-int8",
                                              options=BuildOptions(calib_data=kvasir / "images", num_calib=4,
                                                                   weight_bits=7, gate=NO_GATE)),
    }


def test_default_engine_folder_and_json(engines, ckpt):
    folder = engines[("openvino", "fp32")]
    assert folder.as_posix().endswith("engines/eunet-s/openvino-fp32")
    meta = json.loads((folder / "engine.json").read_text())
    assert meta["format"] == "rtseg-engine/1" and meta["backend"] == "openvino" and meta["precision"] == "fp32"
    assert meta["engine_file"] == "model.xml" and (folder / "model.bin").is_file() and (folder / "model.onnx").is_file()
    assert meta["input"] == {"name": "input", "shape": [-1, 3, 64, 64], "dtype": "float32", "layout": "NCHW"}
    assert meta["output"]["shape"] == [-1, 1, 64, 64]
    assert meta["model"] == json.loads((ckpt / "model.json").read_text())
    assert meta["export"]["max_abs_diff"] <= meta["export"]["tolerance"]
    assert meta["device"]["type"] == "cpu" and meta["device"]["capabilities"]
    assert meta["calibration"] is None and meta["accuracy_gate"] is None
    assert not list(folder.parent.glob(".*tmp*"))  # the temporary build folder is gone


@pytest.mark.parametrize("key", [("openvino", "fp32"), ("onnxruntime", "fp32"), ("openvino", "int8"), ("onnxruntime", "int8")])
def test_engine_matches_pytorch(engines, frames, reference, key):
    backend, precision = key
    eng = load_engine(engines[key], backend=backend, num_threads=1)
    assert eng.name == backend and eng.precision == precision and eng.input_hw == HW and eng.num_classes == 1
    u8, x = frames
    y = eng.infer(x)  # batch 3 through the dynamic batch axis
    assert y.shape == (3, 1, 64, 64) and y.dtype == np.float32
    if precision == "fp32":
        assert np.max(np.abs(y - reference)) < 1e-3 * max(1.0, float(np.abs(reference).max()))
    else:
        assert np.mean(logits_to_mask(y) == logits_to_mask(reference)) > 0.97
        meta = eng.meta["calibration"]
        assert meta["method"] == "entropy" and len(meta["images_sha256"]) == 64 and meta["num_images"] == 4
        assert meta["scheme"]["weight_bits"] == (7 if backend == "onnxruntime" else 8)
    # uint8 NHWC path (OpenVINO: PrePostProcessor in the compiled graph) == normalise + infer
    np.testing.assert_allclose(eng.infer_u8(u8), y, atol=1e-4 if precision == "fp32" else 0.05)
    assert eng.predict_u8(u8).shape == (3, 64, 64)
    with pytest.raises(RtsegError, match="expects input"):
        eng.infer(np.zeros((1, 3, 32, 32), np.float32))


def test_one_qdq_for_every_backend(engines, calib_folder):
    a = (engines[("openvino", "int8")] / "model.qdq.onnx").read_bytes()
    assert a == (calib_folder / "model.qdq.onnx").read_bytes()
    meta = json.loads((engines[("openvino", "int8")] / "engine.json").read_text())
    assert meta["onnx_file"] == "model.qdq.onnx" and meta["calibration"]["from"]
    assert meta["build"]["compiled_in_child"] is True


def test_other_backend_folder_is_refused(engines):
    with pytest.raises(RtsegError, match="is a openvino engine, not onnxruntime"):
        load_engine(engines[("openvino", "fp32")], backend="onnxruntime")
    with pytest.raises(RtsegError, match="not openvino"):
        load_engine(engines[("onnxruntime", "int8")], backend="openvino")


def test_other_backend_version_is_refused(engines, work):
    for key in [("openvino", "fp32"), ("onnxruntime", "fp32")]:
        copy = work / f"old-{key[0]}"
        shutil.copytree(engines[key], copy, dirs_exist_ok=True)
        meta = json.loads((copy / "engine.json").read_text())
        meta["backend_version"] = "1999.0.0"
        meta["seal"] = seal_engine(copy, meta)  # as that version would have built it: the version check, not the seal
        (copy / "engine.json").write_text(json.dumps(meta))
        with pytest.raises(RtsegError, match="1999.0.0.*rebuild it with 'rtseg build-engine"):
            load_engine(copy)


def test_wrong_architecture_checkpoint(work, kvasir):
    meta = ModelMeta(model="eunet-s", model_kwargs={"widths": [16, 32, 64, 128]}, input_size=list(HW),
                     data={"root": str(kvasir)})
    bad = save_checkpoint(work / "bad", _tiny(), meta)  # weights of widths 8..64, model.json says 16..128
    with pytest.raises(RtsegError, match="do not match architecture"):
        build_engine(bad, "onnxruntime", "fp32", out=work / "never")
    assert not (work / "never").exists()


def test_bf16_follows_the_cpu(ckpt, work):
    from rtseg.runtime.openvino_backend import openvino_device_info

    if "BF16" in openvino_device_info()["capabilities"]:
        folder = build_engine(ckpt, "openvino", "bf16", out=work / "ov-bf16")
        assert load_engine(folder).precision == "bf16"
    else:
        with pytest.raises(RtsegError, match="no native bf16"):
            build_engine(ckpt, "openvino", "bf16", out=work / "ov-bf16")
        assert not (work / "ov-bf16").exists()


def test_bad_backend_precision_combinations(ckpt, work):
    with pytest.raises(RtsegError, match="not 'fp16'"):
        build_engine(ckpt, "openvino", "fp16")
    with pytest.raises(RtsegError, match="not 'bf16'"):
        build_engine(ckpt, "onnxruntime", "bf16")
    with pytest.raises(RtsegError, match="int8 only"):
        build_engine(ckpt, "onnxruntime", "fp32", options=BuildOptions(calib_data=work))


def test_tensorrt_dispatch_without_tensorrt(ckpt, work, monkeypatch):
    import rtseg.runtime.tensorrt.build as trt_build

    calls = {}

    def fake_build(onnx_path, out_dir, precision, options):
        calls.update(onnx=onnx_path.name, precision=precision, input_hw=options.input_hw, opt_batch=options.opt_batch,
                     max_batch=options.max_batch, workspace_mb=options.workspace_mb)
        (out_dir / "model.engine").write_bytes(b"plan")
        return {"backend": "tensorrt", "backend_version": "10.0.0", "precision": precision,
                "device": {"type": "cuda", "name": "fake"}, "engine_file": "model.engine",
                "batch": {"min": 1, "opt": 2, "max": 4}, "build": {"strongly_typed": False}}

    import rtseg.runtime.tensorrt.backend as trt_backend

    def fake_run(folder, meta, x):  # the "engine" computes what its ONNX computes (no GPU here)
        return trt_build.onnx_reference(folder / "model.onnx", x)

    monkeypatch.setattr(trt_build, "build_tensorrt_engine", fake_build)
    monkeypatch.setattr(trt_backend, "run_sample", fake_run)
    folder = build_engine(ckpt, "tensorrt", "fp16", out=work / "trt",  # the gate runs the engine: needs a GPU
                          options=BuildOptions(backend_options={"opt_batch": 2, "max_batch": 4, "workspace_mb": None},
                                               gate=NO_GATE))
    assert calls == {"onnx": "model.onnx", "precision": "fp16", "input_hw": (64, 64), "opt_batch": 2, "max_batch": 4,
                     "workspace_mb": 4096}  # None = the builder's default
    meta = json.loads((folder / "engine.json").read_text())
    assert meta["backend"] == "tensorrt" and meta["batch"]["max"] == 4 and meta["build"]["strongly_typed"] is False
    assert meta["verify"]["mask_agreement"] == 1.0  # the build ran the engine and compared it


def test_backends_hold_the_typed_metadata(engines, ckpt):
    """Issue 25 item 3: a loaded backend carries engine.json / model.json as EngineMeta / ModelMeta, and
    the dict that readers use (``model_info``) is the typed one's, not a second parse."""
    from rtseg.meta import EngineMeta
    from rtseg.runtime.torch_backend import TorchBackend

    for key in [("openvino", "fp32"), ("onnxruntime", "int8")]:
        b = load_engine(engines[key])
        assert isinstance(b.engine_meta, EngineMeta) and isinstance(b.model_meta, ModelMeta)
        assert (b.engine_meta.backend, b.engine_meta.precision) == key
        assert b.model_info == json.loads((ckpt / "model.json").read_text()) and b.resize == "stretch"
    ref = TorchBackend.from_checkpoint(ckpt)
    assert ref.engine_meta is None and isinstance(ref.model_meta, ModelMeta) and ref.model_meta.input_hw == HW
