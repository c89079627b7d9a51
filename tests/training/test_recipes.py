"""Issue 4: recipes, losses, schedules, early stopping, exact resume, DDP with gloo."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rtseg.checkpoint import load_checkpoint
from rtseg.models import list_models
from rtseg.training.loop import TrainConfig, evaluate_model, load_recipe, train
from rtseg.training.objectives import make_loss, make_optimizer, make_scheduler

from helpers import TINY_WIDTHS

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["eunet", "visionfusenet", "contrafusionnet", "gmsrfnet"])
def test_recipes_load_and_name_real_models(name):
    d = load_recipe(name)
    cfg = TrainConfig.from_dict(d)
    assert cfg.model in list_models()
    assert make_loss(cfg.loss, binary=cfg.data_format != "cityscapes")


def test_eunet_recipe_is_the_papers():
    cfg = TrainConfig.from_dict(load_recipe("eunet"))
    assert (cfg.loss, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.betas) == ("bce", "lion", 1e-4, 1e-2, (0.9, 0.99))
    assert (cfg.scheduler, cfg.early_stop_patience, cfg.early_stop_metric, cfg.batch_size) == ("onecycle", 20, "iou", 64)
    opt = make_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(2))], cfg.lr, cfg.weight_decay, cfg.betas)
    assert type(opt).__module__.startswith("lion_pytorch")
    g = TrainConfig.from_dict(load_recipe("gmsrfnet"))
    assert (g.loss, g.optimizer, g.scheduler, g.plateau_patience, g.grad_clip_value, g.augment) == ("structure", "adam", "plateau", 5, 0.5, False)


def test_unknown_recipe_key_is_an_error():
    from rtseg.errors import RtsegError

    with pytest.raises(RtsegError, match="unknown training setting"):
        TrainConfig.from_dict({"modle": "eunet"})


def test_bce_and_dice_losses_hand_computed():
    z = torch.tensor([0.0, 2.0, -1.0, 3.0]).view(1, 1, 2, 2)
    t = torch.tensor([0.0, 1.0, 0.0, 0.0]).view(1, 1, 2, 2)
    v = torch.ones_like(t)
    p = torch.sigmoid(z)
    bce = -(t * p.log() + (1 - t) * (1 - p).log()).mean()
    assert make_loss("bce", True)(z, t, v) == pytest.approx(float(bce), rel=1e-6)
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    assert make_loss("dice", True)(z, t, v) == pytest.approx(float(dice), rel=1e-6)
    # the valid mask removes pixels from BCE
    v2 = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 2, 2)
    bce2 = -(t * p.log() + (1 - t) * (1 - p).log()).view(-1)[:2].mean()
    assert make_loss("bce", True)(z, t, v2) == pytest.approx(float(bce2), rel=1e-6)


def test_onecycle_steps_per_batch_and_plateau_reduces():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    s, per = make_scheduler("onecycle", opt, 0.1, total_steps=100, epochs=10)
    assert per == "batch"
    lrs = []
    for _ in range(100):
        opt.step()
        s.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert max(lrs) == pytest.approx(0.1, rel=1e-3) and lrs.index(max(lrs)) in (13, 14) and lrs[-1] < 1e-4
    opt = torch.optim.SGD([p], lr=0.1)
    s, per = make_scheduler("plateau", opt, 0.1, 0, 10, plateau_patience=2)
    assert per == "metric"
    for score in (0.5, 0.5, 0.5, 0.5):
        s.step(score)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)


def _cfg(kvasir, out, **kw):
    base = dict(model="eunet-s", model_kwargs={"widths": list(TINY_WIDTHS)}, data=str(kvasir), out=str(out),
                img_size=(32, 32), epochs=4, batch_size=8, lr=5e-3, max_images=40, augment=True, threads=1, progress=False)
    return TrainConfig(**(base | kw))


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(tmp_path, kvasir):
    full = train(_cfg(kvasir, tmp_path / "a"), log=lambda *a: None)
    train(_cfg(kvasir, tmp_path / "b", stop_after_epochs=2), log=lambda *a: None)  # "killed" after epoch 2
    resumed = train(_cfg(kvasir, tmp_path / "b", resume=True), log=lambda *a: None)
    wa, _ = load_checkpoint(tmp_path / "a" / "last")
    wb, _ = load_checkpoint(tmp_path / "b" / "last")
    for (k, a), (_, b) in zip(wa.state_dict().items(), wb.state_dict().items()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k
    assert [h["train_loss"] for h in full["history"]] == pytest.approx([h["train_loss"] for h in resumed["history"]], rel=1e-5)


def test_early_stopping_stops(tmp_path, kvasir):
    s = train(_cfg(kvasir, tmp_path / "r", epochs=12, lr=1e-9, scheduler="none", early_stop_patience=2,
                   early_stop_metric="iou"), log=lambda *a: None)
    assert s["stopped"].startswith("early stopping") and s["epochs_run"] < 12


def test_grad_clip_value_is_applied(tmp_path, kvasir, monkeypatch):
    seen = []
    orig = torch.nn.utils.clip_grad_value_

    def spy(params, clip_value, **kw):
        seen.append(clip_value)
        return orig(params, clip_value, **kw)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_value_", spy)
    train(_cfg(kvasir, tmp_path / "c", epochs=1, grad_clip_value=0.5, optimizer="adam", loss="structure"), log=lambda *a: None)
    assert seen and set(seen) == {0.5}


@pytest.mark.slow
def test_ddp_two_processes_metrics_equal_single_process(tmp_path, kvasir):
    out = tmp_path / "ddp"
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "rtseg", "train", "--data", str(kvasir), "--widths", "8,16,32,64", "--img-size", "32", "--epochs", "1",
           "--max-images", "50", "--batch-size", "4", "--threads", "1", "--out", str(out), "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2 processes (DDP)" in r.stdout
    model, meta = load_checkpoint(out)
    assert meta.training["world_size"] == 2
    from rtseg.data.dataset import SegmentationDataset
    from rtseg.data.formats import get_format

    fmt = get_format("polyp")
    parts = fmt.splits(kvasir)
    val = parts["val"][: max(2, int(50 * 0.1))]
    ds = SegmentationDataset(val, (32, 32), meta.mean, meta.std, reader=fmt.read)
    # the same autocast as the run's validation (bf16 where the CPU has it): only the sharding differs
    single, _ = evaluate_model(model.to(memory_format=torch.channels_last), ds, 1, batch_size=4,
                               autocast=meta.training["bf16"])
    dist_m = meta.metrics["val"]
    assert single["n_images"] == dist_m["n_images"] == len(val)
    for k in ("dice", "iou", "precision", "recall"):
        assert single["per_image"][k] == pytest.approx(dist_m["per_image"][k], abs=1e-6)
        assert single["global"][k] == pytest.approx(dist_m["global"][k], abs=1e-6)
