"""A short real training run on Kvasir images: loss goes down, checkpoint + curves + split are written,
the checkpoint reloads, --resume continues."""

import json

from rtseg.checkpoint import load_checkpoint
from rtseg.training.loop import TrainConfig, train

from helpers import TINY_WIDTHS


def _cfg(kvasir, out, epochs):
    return TrainConfig(model="eunet-s", model_kwargs={"widths": list(TINY_WIDTHS)}, data=str(kvasir), out=str(out),
                       img_size=(64, 64), epochs=epochs, batch_size=8, lr=1e-2, max_images=60, augment=False,
                       threads=1, progress=False)


def test_short_training_lowers_loss_and_writes_run(tmp_path, kvasir):
    out = tmp_path / "run"
    s = train(_cfg(kvasir, out, epochs=6), log=lambda *a: None)
    losses = [h["train_loss"] for h in s["history"]]
    assert losses[-1] < 0.8 * losses[0], losses
    for f in ("model.safetensors", "model.json", "split.json", "curves.png", "metrics.jsonl", "summary.json", "last/train_state.pt"):
        assert (out / f).exists(), f
    model, meta = load_checkpoint(out)
    assert meta.model == "eunet-s" and meta.input_hw == (64, 64) and meta.data["fingerprint"]
    assert meta.metrics["val"]["per_image"]["dice"] == s["best_val"]
    split = json.loads((out / "split.json").read_text())
    assert len(split["train"]) == 48 and not set(split["train"]) & set(split["test"])
    assert s["test"]["n_images"] >= 2


def test_resume_continues_from_last_epoch(tmp_path, kvasir):
    out = tmp_path / "run"
    train(_cfg(kvasir, out, epochs=2), log=lambda *a: None)
    logs = []
    s = train(TrainConfig(**{**_cfg(kvasir, out, epochs=3).__dict__, "resume": True}), log=logs.append)
    assert any("resumed from epoch 2" in line for line in logs)
    assert [h["epoch"] for h in s["history"]] == [1, 2, 3]


def test_multiclass_non_square_training_on_camvid(tmp_path, shared_data):
    """CamVid class-index masks, void ignored, H != W with augmentation (no 90° rotations)."""
    s = train(TrainConfig(model="eunet-s", model_kwargs={"widths": list(TINY_WIDTHS)}, data=str(shared_data / "camvid-val"),
                          data_format="camvid", out=str(tmp_path / "cv"), img_size=(32, 48), epochs=1, batch_size=8,
                          max_images=24, threads=1, progress=False), log=lambda *a: None)
    assert 0 <= s["val"]["miou"] <= 1 and len(s["val"]["per_class_iou"]) == 11
    _, meta = load_checkpoint(tmp_path / "cv")
    assert meta.task == "multiclass" and meta.ignore_index == 255 and meta.num_classes == 11
