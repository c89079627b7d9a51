"""The Python API (rtseg.__all__): load → Segmenter.predict / stream / evaluate on real images and a real
clip, build_engine, train — and that it gives what the CLI gives."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

import rtseg
from rtseg.cli import main
from rtseg.errors import RtsegError

import byom_models as bm
from helpers import TINY_WIDTHS

HW = (96, 96)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.set_num_threads(2)
    module = bm.tiny_unet()
    bm.train_few_steps(module, HW, steps=6)
    return rtseg.export_model(module, bm.meta("api-unet", HW), tmp_path_factory.mktemp("api") / "m")


def _images(kvasir, n=3):
    from rtseg.data.folder import load_split, read_sample

    return [read_sample(s)[0] for s in load_split(kvasir, "test")[:n]]


def test_all_names_resolve():
    for name in rtseg.__all__:
        assert getattr(rtseg, name) is not None
    with pytest.raises(AttributeError):
        rtseg.no_such_thing  # noqa: B018


def test_predict_masks_and_logits_at_the_input_resolution(folder, kvasir):
    seg = rtseg.load(folder, threads=2)
    imgs = _images(kvasir)
    small = cv2.resize(imgs[0], (96, 96), interpolation=cv2.INTER_AREA)
    m = seg.predict(small)
    assert m.shape == (96, 96) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
    assert np.array_equal(m, seg.backend.predict_u8(small[None])[0])  # at the network size: the backend's own mask
    batch = seg.predict(np.stack(imgs))
    assert batch.shape == (3, 256, 256) and batch.dtype == np.uint8
    mixed = seg.predict([imgs[0], imgs[1][:100, :180]], output="logits")
    assert [z.shape for z in mixed] == [(1, 256, 256), (1, 100, 180)] and mixed[0].dtype == np.float32
    assert np.array_equal((mixed[0][0] > 0).astype(np.uint8), batch[0])
    with pytest.raises(RtsegError, match="uint8 RGB"):
        seg.predict(imgs[0].astype(np.float32))
    with pytest.raises(RtsegError, match="'mask' or 'logits'"):
        seg.predict(imgs[0], output="probs")


def test_evaluate_equals_the_cli(folder, kvasir, capsys):
    res = rtseg.load(folder).evaluate(kvasir, split="test", limit=8)
    assert res["n_images"] == 8 and 0.0 <= res["per_image"]["dice"] <= 1.0
    with pytest.raises(SystemExit) as e:
        main(["eval", "--checkpoint", str(folder), "--data", str(kvasir), "--split", "test", "--limit", "8", "--json"])
        raise SystemExit(0)
    assert e.value.code == 0
    cli = json.loads(capsys.readouterr().out)
    assert cli["per_image"]["dice"] == pytest.approx(res["per_image"]["dice"], abs=1e-9)


def test_stream_returns_the_report(folder, clip, tmp_path):
    from rtseg.stream import StreamOptions

    seg = rtseg.load(folder, threads=2)
    rep = seg.stream(str(clip), str(tmp_path / "o.mp4"), max_frames=5, batch_size=2)
    assert rep.frames == 5 and rep.fps > 0 and (tmp_path / "o.mp4").stat().st_size > 0
    rep = seg.stream([clip], None, StreamOptions(max_frames=3, handle_signals=False))
    assert rep.frames == 3
    with pytest.raises(RtsegError, match="not both"):
        seg.stream(str(clip), None, StreamOptions(max_frames=3), batch_size=2)


def test_build_engine_and_load_it(folder, tmp_path, kvasir):
    eng = rtseg.build_engine(folder, "openvino", "fp32", tmp_path / "ov")
    seg_ov, seg_ref = rtseg.load(eng, backend="openvino", threads=2), rtseg.load(folder)
    imgs = np.stack(_images(kvasir))
    assert np.mean(seg_ov.predict(imgs) == seg_ref.predict(imgs)) > 0.99
    with pytest.raises(RtsegError, match="is a openvino engine, not onnxruntime"):
        rtseg.load(eng, backend="onnxruntime")
    with pytest.raises(RtsegError, match="model folder, not a openvino engine"):
        rtseg.load(folder, backend="openvino")


def test_train_then_predict(tmp_path, kvasir):
    summary = rtseg.train({"model": "eunet-s", "data": str(kvasir), "out": str(tmp_path / "run"), "epochs": 1,
                           "img_size": [64, 64], "batch_size": 4, "max_images": 24, "progress": False,
                           "model_kwargs": {"widths": list(TINY_WIDTHS)}})
    assert summary["epochs_run"] == 1 and (tmp_path / "run" / "model.safetensors").is_file()
    seg = rtseg.load(tmp_path / "run")
    assert seg.backend.name == "torch" and seg.predict(_images(kvasir, 1)[0]).shape == (256, 256)
    with pytest.raises(RtsegError, match="unknown training setting"):
        rtseg.train({"modle": "eunet-s"})
