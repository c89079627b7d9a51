"""The training loop behind ``rtseg train``.

One run folder holds everything (docs/architecture.md "Artifacts"):

```
OUT/model.safetensors, OUT/model.json   best checkpoint so far (by validation Dice / mIoU)
OUT/last/                               last epoch: weights + model.json + train_state.pt (resume)
OUT/split.json                          the deterministic train/val/test split
OUT/metrics.jsonl                       one JSON line per epoch
OUT/curves.png                          loss and validation metric per epoch
OUT/summary.json                        final summary (best epoch, val and test metrics, time)
```

On the CPU the loop uses channels_last and, where the CPU has native bf16 (AVX512-BF16 or AMX),
bf16 autocast (about 2× faster for EUNet on such CPUs); elsewhere fp32.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import ModelMeta, load_checkpoint, save_checkpoint, write_json
from ..data.dataset import SegmentationDataset, default_augmentation
from ..data.folder import fingerprint, load_split, split_samples, find_pairs, write_split
from ..errors import RtsegError
from ..metrics import BinaryMetrics, MulticlassMetrics
from ..models import create_model
from .losses import bce_dice_loss, ce_dice_loss

CAMVID_CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car", "pedestrian", "bicyclist"]
CAMVID_PALETTE = [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
                  [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192]]


@dataclass
class TrainConfig:
    """Settings of one training run (CLI flags of ``rtseg train``)."""

    model: str = "eunet-s"
    data: str = ""
    out: str = "runs/train"
    data_format: str = "polyp"  # polyp (binary images/+masks/) | camvid (class-index PNGs, void=11 → ignore)
    img_size: tuple[int, int] = (256, 256)
    epochs: int = 30
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    resize: str = "stretch"
    augment: bool = True
    amp: str = "auto"  # auto | bf16 | off
    threads: int = 0  # 0 = all cores
    max_images: int = 0  # 0 = all (for quick experiments/tests)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    progress: bool = True


def cpu_has_bf16() -> bool:
    """True if this CPU has native bf16 (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    return False


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _task(cfg: TrainConfig) -> dict:
    if cfg.data_format == "polyp":
        return {"binary": True, "num_classes": 1, "class_names": ["background", "polyp"],
                "palette": [[0, 0, 0], [0, 255, 0]], "ignore_index": None, "label_map": None}
    if cfg.data_format == "camvid":
        lm = np.arange(256, dtype=np.uint8)
        lm[11:] = 255  # 11 = Unlabelled → ignore
        return {"binary": False, "num_classes": 11, "class_names": CAMVID_CLASSES, "palette": CAMVID_PALETTE,
                "ignore_index": 255, "label_map": lm}
    raise RtsegError(f"unknown --data-format {cfg.data_format!r}; use polyp or camvid")


def evaluate_model(model: torch.nn.Module, ds: SegmentationDataset, num_classes: int, batch_size: int = 8,
                   autocast: bool = False, ignore_index: int | None = None) -> tuple[dict, float]:
    """Run ``model`` over ``ds`` (no augmentation) → (metrics dict, mean loss).

    Binary: :class:`rtseg.metrics.BinaryMetrics` (per-image and global); multi-class:
    :class:`rtseg.metrics.MulticlassMetrics`.
    """
    model.eval()
    metrics = BinaryMetrics() if num_classes == 1 else MulticlassMetrics(num_classes, ignore_index)
    losses = []
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
    with torch.inference_mode():
        for x, t, v in loader:
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                y = model(x)
            y = y.float()
            if num_classes == 1:
                losses.append(float(bce_dice_loss(y, t, v)))
                metrics.update((y[:, 0] > 0).numpy(), t[:, 0].numpy() > 0.5, v[:, 0].numpy() > 0.5)
            else:
                losses.append(float(ce_dice_loss(y, t, ignore_index or 255)))
                metrics.update(y.argmax(1).numpy(), t.numpy(), v[:, 0].numpy() > 0.5)
    return metrics.compute(), float(np.mean(losses)) if losses else float("nan")


def headline(metrics: dict) -> float:
    """The model-selection score: per-image mean Dice (binary) or mIoU (multi-class)."""
    return metrics["per_image"]["dice"] if "per_image" in metrics else metrics["miou"]


def _plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot(ep, [h["train_loss"] for h in history], label="train loss")
    ax[0].plot(ep, [h["val_loss"] for h in history], label="val loss")
    ax[0].set_xlabel("epoch"), ax[0].set_ylabel("loss"), ax[0].legend(), ax[0].grid(alpha=0.3)
    key = "val_dice" if "val_dice" in history[0] else "val_miou"
    ax[1].plot(ep, [h[key] for h in history], label=key, color="C2")
    if "val_iou" in history[0]:
        ax[1].plot(ep, [h["val_iou"] for h in history], label="val_iou", color="C3")
    ax[1].set_xlabel("epoch"), ax[1].set_ylim(0, 1), ax[1].legend(), ax[1].grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def train(cfg: TrainConfig, log=print) -> dict:
    """Train ``cfg.model`` on ``cfg.data``; returns the summary dict (also ``OUT/summary.json``).

    Raises:
        RtsegError: bad data folder/format, unknown model, nothing to resume.
    """
    from tqdm import tqdm

    t_start = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _seed_all(cfg.seed)
    out = Path(cfg.out)
    task = _task(cfg)
    model = create_model(cfg.model, num_classes=task["num_classes"], **cfg.model_kwargs)
    H, W = cfg.img_size
    mult = getattr(model, "input_multiple", 1)
    if H % mult or W % mult:
        raise RtsegError(f"--img-size {H}x{W} is not a multiple of {mult}, which {cfg.model} needs; use e.g. {H // mult * mult or mult}")
    mean = list(getattr(model, "default_mean", (0.485, 0.456, 0.406)))
    std = list(getattr(model, "default_std", (0.229, 0.224, 0.225)))

    samples = find_pairs(cfg.data)
    parts = split_samples(samples)
    if cfg.max_images:
        parts = {k: v[: max(2, int(cfg.max_images * f))] for (k, v), f in zip(parts.items(), (0.8, 0.1, 0.1))}
    if len(parts["train"]) < 1 or len(parts["val"]) < 1:
        raise RtsegError(f"{cfg.data} has too few images for a train/val split ({len(samples)}); add more labelled images")
    out.mkdir(parents=True, exist_ok=True)
    write_split(out / "split.json", cfg.data, parts)
    log(f"data: {cfg.data} ({cfg.data_format}) train {len(parts['train'])} / val {len(parts['val'])} / test {len(parts['test'])} images")

    aug = default_augmentation(0 if task["binary"] else 255) if cfg.augment else None
    common = dict(input_hw=(H, W), mean=mean, std=std, resize=cfg.resize, binary=task["binary"], label_map=task["label_map"])
    train_ds = SegmentationDataset(parts["train"], augment=aug, **common)
    val_ds = SegmentationDataset(parts["val"], **common)

    model = model.to(memory_format=torch.channels_last)
    use_bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and cpu_has_bf16())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, drop_last=len(train_ds) > cfg.batch_size, generator=g)
    steps = cfg.epochs * len(loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps, 1), pct_start=0.15)
    meta = ModelMeta(model=cfg.model, num_classes=task["num_classes"], model_kwargs=dict(cfg.model_kwargs),
                     class_names=task["class_names"], palette=task["palette"], input_size=[H, W], mean=mean, std=std,
                     resize=cfg.resize, task="binary" if task["binary"] else "multiclass", ignore_index=task["ignore_index"],
                     data={"root": str(Path(cfg.data).resolve()), "format": cfg.data_format, "fingerprint": fingerprint(samples),
                           "split": "split.json", "n_train": len(parts["train"]), "n_val": len(parts["val"]), "n_test": len(parts["test"])},
                     training={k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()} | {"bf16": use_bf16})

    start_epoch, best, best_epoch, history = 0, -math.inf, -1, []
    state_file = out / "last" / "train_state.pt"
    if cfg.resume:
        if not state_file.exists():
            raise RtsegError(f"--resume: {state_file} not found; start without --resume or point --out at an earlier run")
        m_last, _ = load_checkpoint(out / "last")
        model.load_state_dict(m_last.state_dict())
        st = torch.load(state_file, map_location="cpu", weights_only=True)
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        if sched.total_steps != max(steps, 1):
            log(f"--epochs changed to {cfg.epochs}: the OneCycle schedule is stretched to {steps} steps")
            sched.total_steps = max(steps, 1)
        start_epoch, best, best_epoch = st["epoch"] + 1, st["best"], st["best_epoch"]
        history = json.loads(st["history"])
        torch.set_rng_state(st["rng_torch"])
        g.set_state(st["rng_loader"])
        np.random.set_state(("MT19937", st["rng_numpy_keys"].numpy().astype(np.uint32), *st["rng_numpy_rest"].tolist()[:2],
                             float(st["rng_numpy_rest"][2])))
        log(f"resumed from epoch {start_epoch} (best {best:.4f} at epoch {best_epoch})")

    log(f"model: {cfg.model} {sum(p.numel() for p in model.parameters()):,} params, input {W}x{H}, "
        f"{'bf16 autocast' if use_bf16 else 'fp32'}, channels_last, {torch.get_num_threads()} threads")
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0 = time.time()
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not cfg.progress, dynamic_ncols=True)
        for x, t, v in bar:
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                y = model(x)
            y = y["logits"] if isinstance(y, dict) else (y[0] if isinstance(y, (tuple, list)) else y)
            loss = bce_dice_loss(y.float(), t, v) if task["binary"] else ce_dice_loss(y.float(), t, 255)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        m, val_loss = evaluate_model(model, val_ds, task["num_classes"], cfg.batch_size, use_bf16, task["ignore_index"])
        score = headline(m)
        rec = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_loss": val_loss, "seconds": round(time.time() - t0, 2),
               "lr": sched.get_last_lr()[0]}
        if task["binary"]:
            rec |= {"val_dice": m["per_image"]["dice"], "val_iou": m["per_image"]["iou"]}
        else:
            rec |= {"val_miou": m["miou"], "val_pixel_accuracy": m["pixel_accuracy"]}
        history.append(rec)
        improved = score > best
        if improved:
            best, best_epoch = score, epoch + 1
            meta.metrics = {"val": m, "epoch": epoch + 1}
            save_checkpoint(out, model, meta)
        last_meta = ModelMeta.from_dict(meta.to_dict() | {"metrics": {"val": m, "epoch": epoch + 1}})
        save_checkpoint(out / "last", model, last_meta)
        rng_np = np.random.get_state()
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch, "best": best,
                    "best_epoch": best_epoch, "history": json.dumps(history), "rng_torch": torch.get_rng_state(),
                    "rng_loader": g.get_state(),
                    "rng_numpy_keys": torch.from_numpy(rng_np[1].astype(np.int64)),
                    "rng_numpy_rest": torch.tensor([float(rng_np[2]), float(rng_np[3]), float(rng_np[4])], dtype=torch.float64)},
                   state_file.with_suffix(".tmp"))
        os.replace(state_file.with_suffix(".tmp"), state_file)
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        _plot_curves(history, out / "curves.png")
        key = "val_dice" if task["binary"] else "val_miou"
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {rec['train_loss']:.4f} val_loss {val_loss:.4f} {key} {rec[key]:.4f}"
            f"{' *best*' if improved else ''} ({rec['seconds']:.0f}s)")

    # final: evaluate the best checkpoint on the test split
    best_model, _ = load_checkpoint(out)
    best_model = best_model.to(memory_format=torch.channels_last)
    test_m = None
    if parts["test"]:
        test_ds = SegmentationDataset(parts["test"], **common)
        test_m, _ = evaluate_model(best_model, test_ds, task["num_classes"], cfg.batch_size, use_bf16, task["ignore_index"])
        meta_best = ModelMeta.from_dict(json.loads((out / "model.json").read_text()))
        meta_best.metrics = meta_best.metrics | {"test": test_m}
        write_json(out / "model.json", meta_best.to_dict())
    summary = {"model": cfg.model, "out": str(out), "epochs": cfg.epochs, "best_epoch": best_epoch, "best_val": best,
               "val": json.loads((out / "model.json").read_text())["metrics"].get("val"), "test": test_m,
               "seconds": round(time.time() - t_start, 1), "bf16": use_bf16, "history": history}
    write_json(out / "summary.json", summary)
    return summary
