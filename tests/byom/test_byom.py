"""Bring your own model (issue 15): third-party PyTorch models and ONNX files → model folder → OpenVINO
and ONNX Runtime engines (fp32, int8 with the accuracy gate on real labelled images) → rtseg stream on
a real clip → rtseg eval on real images; the bad-input errors of import-onnx, each one line and exit 2.

Issue 25 item 3: the metadata file checked by pydantic types (:class:`rtseg.byom.ImportMeta`): the exact error
lines, the strict types, and no pydantic error or other exception escaping ``from_dict``/``load`` whatever value
any key holds."""

from __future__ import annotations

import copy
import dataclasses
import json

import av
import numpy as np
import pydantic
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtseg.byom import ImportMeta, as_import_meta, export_model, import_onnx
from rtseg.cli import main
from rtseg.errors import RtsegError
from rtseg.meta import ModelMeta

import byom_models as bm

HW = (96, 96)
N_FRAMES = 8


def _cli(capsys, args: list[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
        raise SystemExit(0)
    cap = capsys.readouterr()
    return e.value.code, cap.out, cap.err


def _video_info(path) -> tuple[int, int, int, float]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        return n, s.codec_context.width, s.codec_context.height, float(s.average_rate)


@pytest.fixture(scope="module", params=["smp-unet", pytest.param("segformer", marks=pytest.mark.slow)])
def model_folder(request, tmp_path_factory):
    """A model folder from a third-party module trained for a few steps on real Kvasir images."""
    torch.set_num_threads(2)
    name = request.param
    module = bm.tiny_unet() if name == "smp-unet" else bm.tiny_segformer()
    losses = bm.train_few_steps(module, HW)
    assert losses[-1] < losses[0]  # it learned something from the real images
    d = tmp_path_factory.mktemp(name)
    folder = export_model(module, bm.meta(name, HW, stride=1 if name == "smp-unet" else 4), d / "model")
    return folder, module


def test_model_folder_matches_the_module(model_folder):
    folder, module = model_folder
    mj = json.loads((folder / "model.json").read_text())
    assert mj["format"] == "rtseg-imported/1" and mj["source"]["kind"] == "torch" and mj["source"]["batch"] == "dynamic"
    assert mj["input_size"] == list(HW) and mj["num_classes"] == 1
    if mj["model"] == "segformer":  # logits at 1/4 were upsampled in the graph
        assert any("upsampled" in e for e in mj["source"]["edits"])
    from rtseg import load

    seg = load(folder)
    x, _ = bm.kvasir_batch(HW, 3, split="val")
    with torch.inference_mode():
        z = bm.logits_of(module(x))
        z = torch.nn.functional.interpolate(z, size=HW, mode="bilinear", align_corners=False).numpy()
    y = seg.backend.infer(x.numpy())
    assert y.shape == (3, 1, *HW)
    assert np.max(np.abs(y - z)) < 1e-3 * max(1.0, np.abs(z).max())


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_engines_fp32_int8_with_gate_stream_and_eval(model_folder, backend, tmp_path, capsys, clip, kvasir):
    folder, _ = model_folder
    common = ["--checkpoint", str(folder), "--backend", backend, "--threads", "2"]
    code, out, err = _cli(capsys, ["build-engine", *common, "--precision", "fp32", "--out", str(tmp_path / "fp32")])
    assert code == 0, err
    code, out, err = _cli(capsys, ["build-engine", *common, "--precision", "int8", "--num-calib", "8",
                                   "--gate-images", "16", "--gate-max-rounds", "2", "--out", str(tmp_path / "int8")])
    engine = json.loads((tmp_path / "int8" / "engine.json").read_text())
    gate = engine["accuracy_gate"]
    # the gate ran on the real held-out labelled images with the Dice of a model that learned something
    assert gate["status"] in ("passed", "failed") and gate["images"] == 16 and gate["metric"] == "dice"
    assert gate["reference"]["score"] > 5.0
    assert code == (0 if gate["status"] == "passed" else 2), err
    assert engine["checkpoint"]["path"] == str(folder.resolve()) and engine["calibration"]["num_images"] == 8
    # int8 vs the imported fp32 ONNX on 2 real images (recorded; a few-step model has many near-zero logits)
    assert engine["verify"]["reference"].startswith("model.onnx") and engine["verify"]["mask_agreement"] > 0.8
    fp32 = json.loads((tmp_path / "fp32" / "engine.json").read_text())
    assert fp32["verify"]["max_abs_diff"] < 1e-3 * max(1.0, fp32["verify"]["logit_scale"])
    assert fp32["verify"]["mask_agreement"] > 0.99
    out_mp4 = tmp_path / "out.mp4"
    code, _, err = _cli(capsys, ["stream", "--engine", str(tmp_path / "int8"), "--allow-failed-gate", "--source", str(clip),
                                 "--output", str(out_mp4), "--max-frames", str(N_FRAMES), "--batch-size", "4", "--threads", "2", "-q"])
    assert code == 0, err
    assert _video_info(out_mp4) == (N_FRAMES, 1280, 720, 25.0)  # frame count, size and rate of the input
    code, out, err = _cli(capsys, ["eval", "--engine", str(tmp_path / "fp32"), "--data", str(kvasir), "--split", "test",
                                   "--limit", "16", "--json"])
    assert code == 0, err
    res = json.loads(out)
    assert res["n_images"] == 16 and 0.0 < res["per_image"]["dice"] <= 1.0


def test_third_party_export_imports_and_streams(tmp_path, capsys, clip, kvasir):
    """torch.onnx.export called directly on an smp U-Net (not rtseg's export): sigmoid probabilities out,
    batch fixed at 1, another input name — imported (batch made dynamic, probabilities → logits), streamed."""
    torch.set_num_threads(2)
    unet = bm.tiny_unet().eval()
    wrapped = torch.nn.Sequential(unet, torch.nn.Sigmoid()).eval()
    onnx_path = tmp_path / "unet_probs.onnx"
    with torch.no_grad():
        torch.onnx.export(wrapped, (torch.zeros(1, 3, *HW),), str(onnx_path), input_names=["pixels"],
                          output_names=["probs"], opset_version=17, dynamo=False)
    meta_file = tmp_path / "meta.yaml"
    meta_file.write_text(yaml.safe_dump(bm.meta("smp-unet-probs", HW, kind="probabilities")))
    code, out, err = _cli(capsys, ["import-onnx", str(onnx_path), "--meta", str(meta_file), "--out", str(tmp_path / "m")])
    assert code == 0, err
    mj = json.loads((tmp_path / "m" / "model.json").read_text())
    assert mj["source"]["batch"] == "dynamic" and mj["source"]["original_input"]["name"] == "pixels"
    assert any("logit" in e for e in mj["source"]["edits"])
    from rtseg import load

    x, _ = bm.kvasir_batch(HW, 2, split="val")
    with torch.inference_mode():
        z = unet(x).numpy()
    y = load(tmp_path / "m").backend.infer(x.numpy())
    inside = np.abs(z) < 8  # away from the probability clip (1e-6) the logits come back
    assert np.max(np.abs(y - z)[inside]) < 1e-2
    out_mp4 = tmp_path / "o.mp4"
    code, _, err = _cli(capsys, ["stream", "--engine", str(tmp_path / "m"), "--source", str(clip), "--output", str(out_mp4),
                                 "--max-frames", "6", "--batch-size", "2", "--threads", "2", "-q"])
    assert code == 0, err
    assert _video_info(out_mp4) == (6, 1280, 720, 25.0)


def _export(module, path, shape, **kw):
    with torch.no_grad():
        torch.onnx.export(module.eval(), (torch.zeros(*shape),), str(path), opset_version=17, dynamo=False, **kw)
    return path


class _NHWC(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):  # NHWC in, class indices out
        return (self.inner(x.permute(0, 3, 1, 2))[:, 0] > 0).to(torch.int64)


def test_nhwc_input_and_index_output_are_normalised(tmp_path):
    unet = bm.tiny_unet().eval()
    path = _export(_NHWC(unet), tmp_path / "nhwc.onnx", (1, *HW, 3), input_names=["image"], output_names=["mask"],
                   dynamic_axes={"image": {0: "n"}, "mask": {0: "n"}})
    m = bm.meta("nhwc-idx", HW, kind="indices")
    m["input"]["layout"] = "NHWC"
    folder = import_onnx(path, m, tmp_path / "m")
    edits = json.loads((folder / "model.json").read_text())["source"]["edits"]
    assert edits[0].startswith("NHWC input") and any("indices" in e for e in edits)
    from rtseg import load

    x, _ = bm.kvasir_batch(HW, 2, split="val")
    with torch.inference_mode():
        want = (unet(x)[:, 0] > 0).numpy()
    y = load(folder).backend.infer(x.numpy())
    assert y.shape == (2, 1, *HW) and np.array_equal(y[:, 0] > 0, want)


class _Head(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.avg_pool2d(x[:, :1], 4)  # output at 1/4 of the input


class _Vector(torch.nn.Module):
    def forward(self, x):
        return x * 2


def _custom_op_onnx(path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, HW[0], HW[1]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, HW[0], HW[1]])
    node = helper.make_node("FancySeg", ["x"], ["y"], name="fancy_head", domain="com.example")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    path.write_bytes(model.SerializeToString())
    return path


def _bad_inputs(tmp_path):
    """(name, onnx path, metadata dict or text, expected words in the error line)."""
    unet = bm.tiny_unet().eval()
    nchw = _export(unet, tmp_path / "unet.onnx", (1, 3, *HW), input_names=["x"], output_names=["z"])
    nhwc = _export(_NHWC(unet), tmp_path / "nhwc.onnx", (1, *HW, 3), input_names=["image"], output_names=["mask"])
    return [
        ("no image input", _export(_Vector(), tmp_path / "vec.onnx", (1, 10), input_names=["features"]),
         bm.meta("v", HW), ["no image input", "features"]),
        ("undeclared NHWC", nhwc, bm.meta("n", HW, kind="indices"), ["'image'", "NHWC", "layout"]),
        ("output size", _export(_Head(), tmp_path / "head.onnx", (1, 3, *HW), output_names=["low"]),
         bm.meta("h", HW), ["'low'", "24x24", "output.stride: 4"]),
        ("custom operator", _custom_op_onnx(tmp_path / "custom.onnx"), bm.meta("c", HW),
         ["fancy_head", "com.example::FancySeg", "not an ONNX standard operator"]),
        ("missing field", nchw, {k: v for k, v in bm.meta("u", HW).items() if k != "task"}, ["'task'", "missing"]),
        ("wrong field", nchw, {**bm.meta("u", HW), "output": {"kind": "scores"}}, ["'output.kind'", "logits, probabilities, indices"]),
        ("unknown field", nchw, {**bm.meta("u", HW), "clases": ["a", "b"]}, ["'clases'", "not a metadata field"]),
        ("wrong size", nchw, bm.meta("u", (128, 128)), ["'x'", "96x96", "input.size"]),
    ]


def test_bad_inputs_are_one_line_errors_with_exit_2(tmp_path, capsys):
    for name, onnx_path, meta, words in _bad_inputs(tmp_path):
        meta_file = tmp_path / f"{name.replace(' ', '_')}.yaml"
        meta_file.write_text(yaml.safe_dump(meta))
        code, _, err = _cli(capsys, ["import-onnx", str(onnx_path), "--meta", str(meta_file), "--out", str(tmp_path / "out")])
        lines = err.strip().splitlines()
        assert code == 2 and lines[-1].startswith("error: "), (name, err)
        assert "Traceback" not in err and all(w in lines[-1] for w in words), (name, lines[-1])
        assert not (tmp_path / "out").exists()


def test_metadata_file_errors(tmp_path):
    with pytest.raises(RtsegError, match="does not exist"):
        ImportMeta.load(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(RtsegError, match="not valid YAML"):
        ImportMeta.load(tmp_path / "bad.yaml")
    with pytest.raises(RtsegError, match="input.size"):
        ImportMeta.from_dict({**bm.meta("u", HW), "input": {"size": [96]}})
    with pytest.raises(RtsegError, match="output.stride"):
        ImportMeta.from_dict(bm.meta("u", HW, stride=5))
    with pytest.raises(RtsegError, match="classes"):
        ImportMeta.from_dict({**bm.meta("u", HW), "task": "multiclass", "classes": ["only"]})


def test_import_torch_cli_with_weights(tmp_path, capsys):
    from safetensors.torch import save_file

    unet = bm.tiny_unet()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.01)
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(tmp_path / "w.safetensors"))
    (tmp_path / "meta.yaml").write_text(yaml.safe_dump(bm.meta("smp-unet-cli", HW)))
    code, out, err = _cli(capsys, ["import-torch", "byom_models:tiny_unet", "--weights", str(tmp_path / "w.safetensors"),
                                   "--meta", str(tmp_path / "meta.yaml"), "--out", str(tmp_path / "m"), "--no-openvino-check"])
    assert code == 0, err
    assert "smp-unet-cli" in out and "batch dynamic" in out
    from rtseg import load

    x, _ = bm.kvasir_batch(HW, 1, split="val")
    with torch.inference_mode():
        z = unet.eval()(x).numpy()
    assert np.max(np.abs(load(tmp_path / "m").backend.infer(x.numpy()) - z)) < 1e-3 * max(1.0, np.abs(z).max())
    code, _, err = _cli(capsys, ["import-torch", "byom_models:nothing_here", "--meta", str(tmp_path / "meta.yaml"),
                                 "--out", str(tmp_path / "m2")])
    assert code == 2 and "has no 'nothing_here'" in err


class _ThreeClass(torch.nn.Module):
    """A small conv net with 3 classes at 1/2 resolution; ``mode`` picks what the graph outputs."""

    def __init__(self, mode: str):
        super().__init__()
        torch.manual_seed(1)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 3, 1, 1))
        self.mode = mode

    def forward(self, x):
        z = self.net(x)
        if self.mode == "probs-nhwc":
            return torch.softmax(z, 1).permute(0, 2, 3, 1)
        if self.mode == "fixed-batch":  # a Reshape that bakes batch 1 into the graph
            return z.reshape(1, 3, -1).reshape(1, 3, z.shape[2], z.shape[3])
        return z.argmax(1)


def _three_class_meta(name: str, kind: str, layout: str = "NCHW") -> dict:
    return {"name": name, "task": "multiclass", "classes": ["a", "b", "c"], "input": {"size": list(HW)},
            "output": {"kind": kind, "layout": layout, "stride": 2}}


@pytest.mark.parametrize("mode,kind,layout", [("probs-nhwc", "probabilities", "NHWC"), ("indices", "indices", "NCHW"),
                                              ("fixed-batch", "logits", "NCHW")])
def test_multiclass_outputs_and_fixed_batch(tmp_path, kvasir, mode, kind, layout):
    net = _ThreeClass(mode).eval()
    path = _export(net, tmp_path / f"{mode}.onnx", (1, 3, *HW), input_names=["x"], output_names=["y"])
    folder = import_onnx(path, _three_class_meta(mode, kind, layout), tmp_path / "m")
    src = json.loads((folder / "model.json").read_text())["source"]
    assert src["batch"] == ("fixed" if mode == "fixed-batch" else "dynamic")
    from rtseg import load

    seg = load(folder)
    x, _ = bm.kvasir_batch(HW, 2, split="val")
    with torch.inference_mode():
        z = torch.nn.functional.interpolate(net.net(x), scale_factor=2, mode="nearest" if kind == "indices" else "bilinear")
    runs = [x.numpy()[i:i + 1] for i in range(2)] if mode == "fixed-batch" else [x.numpy()]
    y = np.concatenate([seg.backend.infer(b) for b in runs])
    assert y.shape == (2, 3, *HW) and seg.backend.max_batch == (1 if mode == "fixed-batch" else None)
    agree = np.mean(y.argmax(1) == z.numpy().argmax(1))
    assert agree > (0.999 if kind == "indices" else 0.99), agree
    if mode == "fixed-batch":  # engines of a batch-1 graph are built with max batch 1, and the stream batches by 1
        from rtseg.export.build import build_engine

        eng = build_engine(folder, "openvino", "fp32", tmp_path / "ov")
        meta = json.loads((eng / "engine.json").read_text())
        assert meta["batch"]["max"] == 1 and load(eng).backend.max_batch == 1
        with pytest.raises(RtsegError, match="fixed at 96x96"):
            from rtseg.export.build import BuildOptions

            build_engine(folder, "openvino", "fp32", tmp_path / "ov2", BuildOptions(img_size=128))


def test_smp_fpn_exports(tmp_path):
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    fpn = smp.FPN("tu-mobilenetv3_small_100", encoder_weights=None, classes=1, decoder_pyramid_channels=64,
                  decoder_segmentation_channels=32).eval()
    folder = export_model(fpn, bm.meta("smp-fpn", HW), tmp_path / "fpn")
    from rtseg import load

    x, _ = bm.kvasir_batch(HW, 2, split="val")
    with torch.inference_mode():
        z = fpn(x).numpy()
    assert np.max(np.abs(load(folder).backend.infer(x.numpy()) - z)) < 1e-3 * max(1.0, np.abs(z).max())


@pytest.mark.slow
def test_calibrate_a_model_folder_then_build_from_its_qdq(tmp_path, capsys):
    torch.set_num_threads(2)
    folder = export_model(bm.tiny_unet(), bm.meta("calib-unet", HW), tmp_path / "m")
    code, out, err = _cli(capsys, ["calibrate", "--checkpoint", str(folder), "--num-images", "4", "--out", str(tmp_path / "calib")])
    assert code == 0, err
    rec = json.loads((tmp_path / "calib" / "calib.json").read_text())
    assert rec["num_images"] == 4 and rec["checkpoint"]["kind"] == "model folder"
    assert rec["verified"]["openvino"]["compiled"] and rec["source"]["root"].endswith("kvasir-seg-256")
    code, _, err = _cli(capsys, ["build-engine", "--checkpoint", str(folder), "--backend", "onnxruntime", "--precision", "int8",
                                 "--qdq-from", str(tmp_path / "calib"), "--no-gate", "--out", str(tmp_path / "e")])
    assert code == 0, err
    eng = json.loads((tmp_path / "e" / "engine.json").read_text())
    assert eng["calibration"]["from"] == str((tmp_path / "calib").resolve()) and eng["calibration"]["qdq_sha256"] == rec["qdq_sha256"]
    other = export_model(bm.tiny_segformer(), bm.meta("other", HW, stride=4), tmp_path / "other")
    code, _, err = _cli(capsys, ["build-engine", "--checkpoint", str(other), "--backend", "onnxruntime", "--precision", "int8",
                                 "--qdq-from", str(tmp_path / "calib"), "--no-gate", "--out", str(tmp_path / "e2")])
    assert code == 2 and "was calibrated for another model" in err.strip().splitlines()[-1]


def test_import_never_replaces_a_training_run_or_a_folder_with_other_files(tmp_path):
    """Issue 26: an --out that holds a trained checkpoint (or any file but model.onnx/model.json) is refused
    and left as it was; an imported model folder is replaced (at the end, atomically)."""
    unet = bm.tiny_unet().eval()
    path = _export(unet, tmp_path / "u.onnx", (1, 3, *HW), input_names=["x"], output_names=["y"],
                   dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    run = tmp_path / "my-trained-run"
    (run / "last").mkdir(parents=True)
    files = {"model.json": '{"model": "eunet-s", "format": "rtseg-checkpoint/1"}', "model.safetensors": "weights",
             "last/train_state.pt": "state", "notes.txt": "mine"}
    for name, text in files.items():
        (run / name).write_text(text)
    with pytest.raises(RtsegError, match="not replaced: it holds last, model.safetensors, notes.txt"):
        import_onnx(path, bm.meta("u", HW), run)
    assert {n: (run / n).read_text() for n in files} == files
    folder = import_onnx(path, bm.meta("u", HW), tmp_path / "m")
    stamp = (folder / "model.json").stat().st_mtime_ns
    import_onnx(path, bm.meta("u", HW), folder)  # an imported model folder: replaced
    assert (folder / "model.json").stat().st_mtime_ns != stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


# -- issue 25 item 3: the metadata file checked by pydantic types, messages unchanged -------------------------
META = bm.meta("u", HW)
FIX = "; fix the metadata file (see 'rtseg import-onnx --help')"


def _edited(doc: dict, **edits) -> dict:
    """A deep copy of ``doc`` with ``doc[a][b] = value`` for each ``a__b=value`` (``...`` deletes the key)."""
    doc = copy.deepcopy(doc)
    for path, value in edits.items():
        *outer, last = path.split("__")
        inner = doc
        for key in outer:
            inner = inner.setdefault(key, {})
        if value is ...:
            inner.pop(last, None)
        else:
            inner[last] = value
    return doc


META_LINES = [  # (edits, the error line after the source; "new": refused since issue 25 item 3)
    ({"clases": ["a", "b"]}, "'clases' is not a metadata field (fields: classes, data, ignore_index, input, name, output, "
                             "palette, task)"),
    ({"zz": 1, "aa": 2, "task": ...}, "'aa' is not a metadata field (fields: classes, data, ignore_index, input, name, output, "
                                      "palette, task)"),  # unknown keys first, the first by name
    ({"input__sise": [96, 96]}, "'input.sise' is not a metadata field (fields: layout, mean, resize, size, std)"),
    ({"output__strde": 2}, "'output.strde' is not a metadata field (fields: kind, layout, name, stride)"),
    ({"data__fmt": "x"}, "'data.fmt' is not a metadata field (fields: format, root)"),
    ({"task": ..., "input": ...}, "'task' is missing (required)"),
    ({"input": ...}, "'input' is missing (required)"),
    ({"input": [96, 96]}, "'input' must be a mapping"),
    ({"output": None}, "'output' must be a mapping"),
    ({"data": "kvasir"}, "'data' must be a mapping"),
    ({"data": []}, "'data' must be a mapping"),  # new: a falsy non-mapping was taken for "no data"
    ({"name": "my model"}, "'name' must be 1-64 letters, digits, '-', '_' or '.', not 'my model'"),
    ({"name": None}, "'name' must be 1-64 letters, digits, '-', '_' or '.', not None"),
    ({"name": "a" * 65}, f"'name' must be 1-64 letters, digits, '-', '_' or '.', not {'a' * 65!r}"),
    ({"task": "binary-ish"}, "'task' must be 'binary' or 'multiclass', not 'binary-ish'"),
    ({"classes": ["a", ""]}, "'classes' must be a list of class names"),
    ({"classes": "ab"}, "'classes' must be a list of class names"),
    ({"classes": ["a", "b", "c"]}, "'classes' must name 2 classes (background, foreground) for task binary, not 3"),
    ({"task": "multiclass", "classes": ["a"]},
     "'classes' must name 2..256 classes (one per output channel) for task multiclass, not 1"),
    ({"palette": [[0, 0, 0]]}, "'palette' must be 2 RGB triples in 0..255 (one per class)"),
    ({"palette": [[0, 0, 0], [0, 0, 256]]}, "'palette' must be 2 RGB triples in 0..255 (one per class)"),
    ({"palette": "xx"}, "'palette' must be 2 RGB triples in 0..255 (one per class)"),
    ({"ignore_index": 256}, "'ignore_index' must be an integer label in 0..255, not 256"),
    ({"ignore_index": True}, "'ignore_index' must be an integer label in 0..255, not True"),  # new
    ({"data__root": 5}, "'data.root' must be the path of a labelled folder"),
    ({"data__root": ...}, "'data.root' must be the path of a labelled folder"),
    ({"data__root": "a\0b"}, "'data.root' must be the path of a labelled folder"),  # new: a ValueError in load
    ({"input__size": ...}, "'input.size' is missing (required: [H, W] in pixels)"),
    ({"input__size": None}, "'input.size' is missing (required: [H, W] in pixels)"),
    ({"input__size": [96.0, 96]}, "'input.size' must be [H, W] with integers in 1..8192, not [96.0, 96]"),
    ({"input__size": [True, 96]}, "'input.size' must be [H, W] with integers in 1..8192, not [True, 96]"),
    ({"input__size": ["96", 96]}, "'input.size' must be [H, W] with integers in 1..8192, not ['96', 96]"),
    ({"input__size": [8193, 96]}, "'input.size' must be [H, W] with integers in 1..8192, not [8193, 96]"),
    ({"input__layout": "nchw"}, "'input.layout' must be NCHW or NHWC, not 'nchw'"),
    ({"input__mean": [0.5, 0.5]}, "'input.mean' must be three numbers (RGB in [0, 1]), not [0.5, 0.5]"),
    ({"input__mean": [float("nan"), 0.5, 0.5]}, "'input.mean' must be three numbers (RGB in [0, 1]), not [nan, 0.5, 0.5]"),  # new
    ({"input__mean": [10**400, 0, 0]}, f"'input.mean' must be three numbers (RGB in [0, 1]), not {[10**400, 0, 0]!r}"),  # new
    ({"input__std": [float("inf"), 0.2, 0.2]}, "'input.std' must be three numbers (RGB in [0, 1]), not [inf, 0.2, 0.2]"),  # new
    ({"input__std": [0, 0.2, 0.2]}, "'input.std' must be positive"),
    ({"input__resize": "crop"}, "'input.resize' must be 'stretch' or 'letterbox', not 'crop'"),
    ({"output__kind": ...}, "'output.kind' is missing (required: one of logits, probabilities, indices)"),
    ({"output__kind": "scores"}, "'output.kind' must be one of logits, probabilities, indices, not 'scores'"),
    ({"output__layout": "NHCW"}, "'output.layout' must be NCHW or NHWC, not 'NHCW'"),
    ({"output__stride": 5}, "'output.stride' must be an integer in 1..64 dividing input.size [96, 96], not 5"),
    ({"output__stride": 2.0}, "'output.stride' must be an integer in 1..64 dividing input.size [96, 96], not 2.0"),
    ({"output__stride": True}, "'output.stride' must be an integer in 1..64 dividing input.size [96, 96], not True"),
    ({"output__stride": 96}, "'output.stride' must be an integer in 1..64 dividing input.size [96, 96], not 96"),
    ({"output__name": 3}, "'output.name' must be the name of a graph output"),
    ({"data__format": 3}, "'data.format' must be the name of a data format (a string), not 3"),  # new
    ({"data__format": 3, "output__kind": "scores"},  # the new check is reported after every other
     "'output.kind' must be one of logits, probabilities, indices, not 'scores'"),
]


@pytest.mark.parametrize("edits,line", META_LINES, ids=[",".join(f"{k}={v!r:.12}" for k, v in e.items()) for e, _ in META_LINES])
def test_metadata_field_errors_are_these_lines(edits, line):
    with pytest.raises(RtsegError) as e:
        ImportMeta.from_dict(_edited(META, **edits), "m.yaml")
    assert str(e.value) == f"m.yaml: {line}{FIX}"


def test_keys_that_are_not_strings_are_unknown_keys():
    """YAML keys may be numbers: once a TypeError (sorting 1 and 'zz'), now the first unknown key by name."""
    with pytest.raises(RtsegError, match=r"^m.yaml: '1' is not a metadata field \(fields: classes,"):
        ImportMeta.from_dict({**META, 1: "x", "zz": 2}, "m.yaml")
    with pytest.raises(RtsegError, match=r"^m.yaml: 'input.2' is not a metadata field \(fields: layout,"):
        ImportMeta.from_dict(_edited(META, input={"size": [96, 96], 2: 1}), "m.yaml")


@pytest.mark.parametrize("text,words", [
    ("name: u\ncreated: 2024-13-45\n", "month must be in 1..12"),  # a ValueError of YAML's date reader once
    ("[" * 3000 + "]" * 3000, "recursion"),  # a RecursionError once
], ids=["bad date", "deep nesting"])
def test_metadata_files_yaml_cannot_read_are_one_line(tmp_path, text, words):
    (tmp_path / "m.yaml").write_text(text)
    with pytest.raises(RtsegError, match=rf"^{tmp_path / 'm.yaml'} is not valid YAML/JSON \(.*{words}.*\); fix the metadata file$"):
        ImportMeta.load(tmp_path / "m.yaml")


def test_a_nul_in_data_root_is_one_line_from_load(tmp_path):
    """Once ``ValueError: embedded null byte`` from resolving the relative root."""
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(_edited(META, data={"root": "a\0b"})))
    with pytest.raises(RtsegError, match=r"'data.root' must be the path of a labelled folder"):
        ImportMeta.load(tmp_path / "m.yaml")


@pytest.mark.parametrize("edits", [{"ignore_index": True}, {"input__mean": [float("nan"), 0, 0]},
                                   {"input__std": [float("inf"), 1, 1]}, {"input__mean": [10**400, 0, 0]}],
                         ids=["ignore_index true", "mean NaN", "std Infinity", "mean 10**400"])
def test_what_from_dict_accepts_is_a_model_json_rtseg_reads(edits):
    """Once accepted, then a pydantic ValidationError (or an OverflowError) at the end of the import, writing
    model.json (:meth:`ImportMeta.to_model_meta`); now refused by ``from_dict`` with one line."""
    with pytest.raises(RtsegError, match=r"^metadata: '(ignore_index|input.mean|input.std)' must be "):
        ImportMeta.from_dict(_edited(META, **edits)).to_model_meta({})


def test_a_valid_file_reads_as_before_and_check_checks_again(tmp_path):
    meta = ImportMeta.from_dict(META)
    assert meta == ImportMeta(name="u", task="binary", input_size=(96, 96), output_kind="logits",
                              classes=["background", "polyp"], mean=bm.MEAN, std=bm.STD, data=META["data"])
    assert meta.input_size == (96, 96) and meta.num_classes == 1 and meta.data is not META["data"]
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(_edited(META, data={"root": "imgs", "format": "polyp"}, data__format=None)))
    assert ImportMeta.load(tmp_path / "m.yaml").data["root"] == str(tmp_path / "imgs")
    meta.output_stride = True  # attributes may be changed; check() and as_import_meta see it
    with pytest.raises(RtsegError, match=r"^metadata: 'output.stride' must be an integer in 1..64 dividing input.size "
                                         r"\[96, 96\], not True;"):
        as_import_meta(meta)
    meta.output_stride, meta.input_size = 2, [64, 64]
    meta.check()
    assert meta.input_size == (64, 64)
    with pytest.raises(pydantic.ValidationError):  # constructing checks the fields too
        dataclasses.replace(meta, ignore_index=True)


ODD = (st.none() | st.booleans() | st.integers(-3, 300) | st.floats(allow_nan=True, allow_infinity=True)
       | st.sampled_from([10**400, 2**63, 8193, 257, "", "a\0b", "u", "NHWC", "logits", "indices", "multiclass", "letterbox",
                          [96, 96], [0.5, 0.5, 0.5], ["a", "b", "c"], [[0, 0, 0], [0, 255, 0]]])
       | st.text(max_size=4))
ANY_JSON = st.recursive(ODD, lambda c: st.lists(c, max_size=4) | st.dictionaries(
    st.sampled_from(["size", "kind", "stride", "root", "format", "layout", "mean", "std"]) | st.text(max_size=3) | st.integers(0, 2),
    c, max_size=3), max_leaves=6)
META_PATHS = [*META, "classes", "palette", "ignore_index", "zz", *(f"input__{k}" for k in ("size", "layout", "mean", "std", "resize", "x")),
              *(f"output__{k}" for k in ("kind", "layout", "stride", "name")), "data__root", "data__format"]


@given(edits=st.lists(st.tuples(st.sampled_from(META_PATHS), ANY_JSON | st.just(...)), min_size=1, max_size=2))
@settings(max_examples=400, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_value_of_any_metadata_key_is_a_model_json_or_one_line(edits):
    """Whatever values one or two keys hold: one error line, or an ImportMeta whose model.json rtseg reads back."""
    d = META
    for path, value in edits:
        if path.count("__") and not isinstance(d.get(path.split("__")[0]), dict):
            continue  # a key inside a section that is no longer a mapping
        d = _edited(d, **{path: value})
    try:
        meta = ImportMeta.from_dict(d, "m.yaml")
    except RtsegError as e:
        assert str(e).startswith("m.yaml") and "\n" not in str(e)
        return
    ModelMeta.from_dict(meta.to_model_meta({}).to_dict())
    meta.check()
