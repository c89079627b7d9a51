"""The training loop behind ``rtseg train`` (single process, or DDP under ``torchrun``).

One run folder holds everything (docs/architecture.md "Artifacts"):

```
OUT/model.safetensors, OUT/model.json   best checkpoint so far (by validation Dice / mIoU)
OUT/last/                               last epoch: weights + model.json + train_state.pt (resume)
OUT/split.json                          the train/val/test split used
OUT/metrics.jsonl                       one JSON line per epoch (loss, val metrics, lr, seconds)
OUT/curves.png                          loss and validation metrics per epoch
OUT/summary.json                        final summary (best epoch, val and test metrics, time)
```

Every file is written atomically, so a killed run never leaves a corrupt checkpoint, and
``--resume`` continues weights, optimiser, scheduler, epoch, early-stopping state and the RNGs
exactly (an interrupted-and-resumed run equals an uninterrupted one to float tolerance).

On the CPU the loop uses channels_last and, where the CPU has native bf16 (AVX512-BF16 or AMX),
bf16 autocast; elsewhere fp32.

Distributed: under ``torchrun --nproc_per_node N -m rtseg train ...`` each process trains on its
shard (``DistributedSampler``) of a ``DistributedDataParallel`` model (gloo on CPU, nccl on GPU);
validation is sharded too and the confusion counts are gathered, so the metrics equal a
single-process evaluation; only rank 0 logs and writes files.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..checkpoint import ModelMeta, load_checkpoint, save_checkpoint, write_json
from ..data.dataset import SegmentationDataset, default_augmentation
from ..data.folder import fingerprint, write_split
from ..errors import RtsegError
from ..metrics import BinaryMetrics, MulticlassMetrics
from ..models import create_model
from .objectives import main_logits, make_loss, make_optimizer, make_scheduler


@dataclass
class TrainConfig:
    """Settings of one training run: a recipe (``configs/*.yaml``) overridden by CLI flags."""

    model: str = "eunet-s"
    data: str = ""
    out: str = "runs/train"
    data_format: str = "polyp"
    img_size: tuple[int, int] = (256, 256)
    resize: str = "stretch"
    epochs: int = 30
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    optimizer: str = "adamw"
    scheduler: str = "onecycle"
    plateau_patience: int = 5
    loss: str = "auto"  # auto = bce_dice (binary) / ce_dice (multi-class)
    lambda_dice: float = 0.5
    lambda_con: float = 0.1
    early_stop_patience: int = 0  # epochs without improvement of early_stop_metric; 0 = off
    early_stop_metric: str = "auto"  # dice | iou | miou | auto (= the selection metric)
    grad_clip_value: float = 0.0  # clamp each gradient to ±value; 0 = off
    seed: int = 0
    augment: bool = True
    amp: str = "auto"  # auto | bf16 | off
    threads: int = 0  # 0 = torch's default
    max_images: int = 0  # 0 = all (quick experiments/tests)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    progress: bool = True
    stop_after_epochs: int = 0  # stop (as if killed) after this many epochs of this invocation; tests

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Build from a recipe dict; unknown keys are an error (typos must not pass silently)."""
        names = {f.name for f in fields(cls)}
        bad = sorted(set(d) - names)
        if bad:
            raise RtsegError(f"unknown training setting(s) {', '.join(bad)}; valid keys: {', '.join(sorted(names))}")
        d = dict(d)
        if "img_size" in d and not isinstance(d["img_size"], (list, tuple)):
            d["img_size"] = (int(d["img_size"]), int(d["img_size"]))
        for k in ("img_size", "betas"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


def load_recipe(name_or_path: str) -> dict:
    """Read a recipe YAML: a path, or a name in the repository's ``configs/`` (``eunet`` → configs/eunet.yaml).

    Raises:
        RtsegError: not found or not a mapping.
    """
    import yaml

    p = Path(name_or_path)
    if not p.is_file():
        cand = Path(__file__).resolve().parents[2] / "configs" / f"{name_or_path}.yaml"
        if not cand.is_file():
            known = sorted(q.stem for q in cand.parent.glob("*.yaml")) if cand.parent.is_dir() else []
            raise RtsegError(f"recipe {name_or_path!r} not found; pass a YAML file or one of: {', '.join(known) or '(none)'}")
        p = cand
    try:
        d = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise RtsegError(f"recipe {p} is not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
    if not isinstance(d, dict):
        raise RtsegError(f"recipe {p} must be a mapping of settings; fix the file")
    d.pop("description", None)
    return d


def cpu_has_bf16() -> bool:
    """True if this CPU has native bf16 (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return bool({"avx512_bf16", "amx_bf16"} & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return False


# --- distributed helpers -------------------------------------------------------------------------
def _dist_setup() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_metrics(metrics, world: int):
    if world == 1:
        return metrics
    if isinstance(metrics, BinaryMetrics):
        parts: list = [None] * world
        dist.all_gather_object(parts, metrics.all_counts())
        out = BinaryMetrics()
        for c in parts:
            out.update_counts(c)
        return out
    t = torch.from_numpy(metrics.matrix)
    dist.all_reduce(t)
    metrics.matrix = t.numpy()
    return metrics


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def evaluate_model(model: torch.nn.Module, ds: SegmentationDataset, num_classes: int, batch_size: int = 8,
                   autocast: bool = False, ignore_index: int | None = None, loss_fn=None,
                   rank: int = 0, world: int = 1) -> tuple[dict, float]:
    """Run ``model`` over ``ds`` (no augmentation) → (metrics dict, mean loss).

    Binary: :class:`rtseg.metrics.BinaryMetrics` (per-image and global); multi-class:
    :class:`rtseg.metrics.MulticlassMetrics`. With ``world > 1`` each rank evaluates images
    ``rank::world`` and the counts are gathered (exactly the single-process result).
    """
    model.eval()
    metrics = BinaryMetrics() if num_classes == 1 else MulticlassMetrics(num_classes, ignore_index)
    losses = []
    idx = list(range(rank, len(ds), world))
    with torch.inference_mode():
        for i in range(0, len(idx), batch_size):
            items = [ds[j] for j in idx[i:i + batch_size]]
            x = torch.stack([a[0] for a in items]).contiguous(memory_format=torch.channels_last)
            t = torch.stack([a[1] for a in items])
            v = torch.stack([a[2] for a in items])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                y = main_logits(model(x))
            y = y.float()
            if loss_fn is not None:
                losses.append((float(loss_fn(y, t, v)), len(items)))
            if num_classes == 1:
                metrics.update((y[:, 0] > 0).numpy(), t[:, 0].numpy() > 0.5, v[:, 0].numpy() > 0.5)
            else:
                metrics.update(y.argmax(1).numpy(), t.numpy(), v[:, 0].numpy() > 0.5)
    metrics = _gather_metrics(metrics, world)
    tot = np.array([sum(l * n for l, n in losses), sum(n for _, n in losses)], dtype=np.float64)
    if world > 1:
        tt = torch.from_numpy(tot)
        dist.all_reduce(tt)
        tot = tt.numpy()
    return metrics.compute(), float(tot[0] / tot[1]) if tot[1] else float("nan")


def headline(metrics: dict, which: str = "auto") -> float:
    """Selection score: per-image mean Dice (binary) or mIoU (multi-class); or ``dice``/``iou``/``miou``."""
    if "per_image" in metrics:
        return metrics["per_image"]["iou" if which == "iou" else "dice"]
    return metrics["mean_dice"] if which == "dice" else metrics["miou"]


def _plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot(ep, [h["train_loss"] for h in history], "o-", label="train loss")
    ax[0].plot(ep, [h["val_loss"] for h in history], "o-", label="val loss")
    losses = [v for h in history for v in (h["train_loss"], h["val_loss"]) if np.isfinite(v) and v > 0]
    if losses and max(losses) / min(losses) > 100:  # an early eval-mode spike would flatten the curve
        ax[0].set_yscale("log")
    ax[0].set_xlabel("epoch"), ax[0].set_ylabel("loss"), ax[0].legend(), ax[0].grid(alpha=0.3)
    for k, c in (("val_dice", "C2"), ("val_iou", "C3"), ("val_miou", "C2"), ("val_pixel_accuracy", "C4")):
        if k in history[0]:
            ax[1].plot(ep, [h[k] for h in history], "o-", label=k, color=c)
    ax[1].set_xlabel("epoch"), ax[1].set_ylim(0, 1), ax[1].legend(), ax[1].grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def _rng_state(g: torch.Generator) -> dict:
    np_state = np.random.get_state()
    return {"rng_torch": torch.get_rng_state(), "rng_loader": g.get_state(),
            "rng_numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "rng_numpy_pos": torch.tensor([int(np_state[2]), int(np_state[3])], dtype=torch.int64),
            "rng_numpy_gauss": torch.tensor([float(np_state[4])], dtype=torch.float64),
            "rng_python": json.dumps(random.getstate())}


def _set_rng_state(st: dict, g: torch.Generator) -> None:
    torch.set_rng_state(st["rng_torch"])
    g.set_state(st["rng_loader"])
    np.random.set_state(("MT19937", st["rng_numpy_keys"].numpy().astype(np.uint32), int(st["rng_numpy_pos"][0]),
                         int(st["rng_numpy_pos"][1]), float(st["rng_numpy_gauss"][0])))
    py = json.loads(st["rng_python"])
    random.setstate((py[0], tuple(py[1]), py[2]))


def train(cfg: TrainConfig, log=print) -> dict:
    """Train ``cfg.model`` on ``cfg.data``; returns the summary dict (also ``OUT/summary.json``).

    Raises:
        RtsegError: bad data folder/format, unknown model/loss/optimizer, nothing to resume.
    """
    from tqdm import tqdm

    from ..data.formats import get_format

    t_start = time.time()
    rank, world = _dist_setup()
    is_main = rank == 0
    log = log if is_main else (lambda *a, **k: None)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _seed_all(cfg.seed)
    out = Path(cfg.out)
    fmt = get_format(cfg.data_format)
    labels = fmt.labels
    binary = labels.binary
    model = create_model(cfg.model, num_classes=labels.num_classes, **cfg.model_kwargs)
    H, W = cfg.img_size
    mult = getattr(model, "input_multiple", 1)
    if H % mult or W % mult:
        raise RtsegError(f"--img-size {H}x{W} is not a multiple of {mult}, which {cfg.model} needs; use e.g. {max(mult, H // mult * mult)}")
    mean = list(getattr(model, "default_mean", (0.485, 0.456, 0.406)))
    std = list(getattr(model, "default_std", (0.229, 0.224, 0.225)))
    loss_name = cfg.loss if cfg.loss != "auto" else ("bce_dice" if binary else "ce_dice")
    loss_fn = make_loss(loss_name, binary, cfg.lambda_dice, cfg.lambda_con, labels.ignore_index or 255)
    eval_loss = make_loss("bce_dice" if binary else "ce_dice", binary, cfg.lambda_dice, cfg.lambda_con, labels.ignore_index or 255)

    parts = fmt.splits(cfg.data)
    all_samples = [s for v in parts.values() for s in v]
    if cfg.max_images:
        parts = {k: v[: max(2, int(cfg.max_images * f))] for (k, v), f in zip(parts.items(), (0.8, 0.1, 0.1))}
    if len(parts["train"]) < 1 or len(parts["val"]) < 1:
        raise RtsegError(f"{cfg.data} has too few images for a train/val split; add more labelled images")
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_split(out / "split.json", cfg.data, parts, fmt.split_rule)
    log(f"data: {cfg.data} ({fmt.name}) train {len(parts['train'])} / val {len(parts['val'])} / test {len(parts['test'])} images")

    ignore = labels.ignore_index if labels.ignore_index is not None else 255
    aug = default_augmentation(0 if binary else ignore, square=H == W) if cfg.augment else None
    common = dict(input_hw=(H, W), mean=mean, std=std, resize=cfg.resize, binary=binary, reader=fmt.read,
                  ignore_index=ignore)
    train_ds = SegmentationDataset(parts["train"], augment=aug, **common)
    val_ds = SegmentationDataset(parts["val"], **common)

    model = model.to(memory_format=torch.channels_last)
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model)
    use_bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and cpu_has_bf16())
    opt = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.weight_decay, cfg.betas)
    g = torch.Generator().manual_seed(cfg.seed)
    sampler = torch.utils.data.distributed.DistributedSampler(train_ds, world, rank, shuffle=True, seed=cfg.seed) if world > 1 else None
    loader = torch.utils.data.DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                                         drop_last=len(train_ds) // world > cfg.batch_size, generator=g)
    steps = cfg.epochs * len(loader)
    sched, step_per = make_scheduler(cfg.scheduler, opt, cfg.lr, steps, cfg.epochs, cfg.plateau_patience)
    # the architecture only: an ImageNet weights file is an input of this training, not of the model
    # (rebuilding it from model.json must not need that file or package)
    arch_kwargs = {k: v for k, v in cfg.model_kwargs.items() if k != "pretrained_weights"}
    meta = ModelMeta(model=cfg.model, num_classes=labels.num_classes, model_kwargs=arch_kwargs,
                     class_names=list(labels.class_names), palette=[list(c) for c in labels.palette], input_size=[H, W],
                     mean=mean, std=std, resize=cfg.resize, task="binary" if binary else "multiclass",
                     ignore_index=labels.ignore_index,
                     data={"root": str(Path(cfg.data).resolve()), "format": fmt.name, "fingerprint": fingerprint(all_samples),
                           "split": "split.json", "n_train": len(parts["train"]), "n_val": len(parts["val"]), "n_test": len(parts["test"])},
                     training={k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()} | {"bf16": use_bf16, "loss": loss_name, "world_size": world})

    start_epoch, best, best_epoch, history, since_best, best_es = 0, -math.inf, -1, [], 0, -math.inf
    state_file = out / "last" / "train_state.pt"
    if cfg.resume:
        if not state_file.exists():
            raise RtsegError(f"--resume: {state_file} not found; start without --resume or point --out at an earlier run")
        m_last, _ = load_checkpoint(out / "last")
        model.load_state_dict(m_last.state_dict())
        st = torch.load(state_file, map_location="cpu", weights_only=True)
        opt.load_state_dict(st["optimizer"])
        if sched is not None:
            sched.load_state_dict(st["scheduler"])
            if hasattr(sched, "total_steps") and sched.total_steps != max(steps, 1):
                log(f"--epochs changed to {cfg.epochs}: the {cfg.scheduler} schedule is stretched to {steps} steps")
                sched.total_steps = max(steps, 1)
        start_epoch, best, best_epoch, since_best = st["epoch"] + 1, st["best"], st["best_epoch"], st["since_best"]
        history = json.loads(st["history"])
        _set_rng_state(st, g)
        best_es = st["best_es"]
        log(f"resumed from epoch {start_epoch} (best {best:.4f} at epoch {best_epoch})")

    log(f"model: {cfg.model} {sum(p.numel() for p in model.parameters()):,} params, input {W}x{H} (WxH), loss {loss_name}, "
        f"{cfg.optimizer} lr {cfg.lr:g} + {cfg.scheduler}, {'bf16 autocast' if use_bf16 else 'fp32'}, channels_last, "
        f"{torch.get_num_threads()} threads{f', {world} processes (DDP)' if world > 1 else ''}")
    stop_reason = "epochs"
    ran = 0
    for epoch in range(start_epoch, cfg.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        if aug is not None:  # re-seeded per epoch and rank: a resumed run draws the same augmentations
            aug.set_random_seed(cfg.seed * 100_003 + epoch * 101 + rank)
        ddp_model.train()
        t0 = time.time()
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not (cfg.progress and is_main) or None,
                   dynamic_ncols=True)
        for x, t, v in bar:
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                y = ddp_model(x)
            loss = loss_fn(y, t, v)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip_value:
                torch.nn.utils.clip_grad_value_(model.parameters(), cfg.grad_clip_value)
            opt.step()
            if step_per == "batch":
                sched.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{opt.param_groups[0]['lr']:.2e}")
        train_loss = float(np.mean(losses)) if losses else float("nan")
        if world > 1:
            tl = torch.tensor([train_loss])
            dist.all_reduce(tl)
            train_loss = float(tl) / world
        m, val_loss = evaluate_model(model, val_ds, labels.num_classes, cfg.batch_size, use_bf16, labels.ignore_index,
                                     eval_loss, rank, world)
        score = headline(m)
        es_score = headline(m, cfg.early_stop_metric)
        if step_per == "metric":
            sched.step(score)
        rec = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "seconds": round(time.time() - t0, 2),
               "lr": opt.param_groups[0]["lr"]}
        rec |= ({"val_dice": m["per_image"]["dice"], "val_iou": m["per_image"]["iou"]} if binary
                else {"val_miou": m["miou"], "val_mean_dice": m["mean_dice"], "val_pixel_accuracy": m["pixel_accuracy"]})
        history.append(rec)
        improved = score > best
        if improved:
            best, best_epoch = score, epoch + 1
        if es_score > best_es:
            best_es, since_best = es_score, 0
        else:
            since_best += 1
        if is_main:
            if improved:
                meta.metrics = {"val": m, "epoch": epoch + 1}
                save_checkpoint(out, model, meta)
            save_checkpoint(out / "last", model, ModelMeta.from_dict(meta.to_dict() | {"metrics": {"val": m, "epoch": epoch + 1}}))
            st = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched is not None else {},
                  "epoch": epoch, "best": best, "best_epoch": best_epoch, "since_best": since_best,
                  "best_es": best_es, "history": json.dumps(history)} | _rng_state(g)
            torch.save(st, state_file.with_suffix(".tmp"))
            os.replace(state_file.with_suffix(".tmp"), state_file)
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec | {"val": m}) + "\n")
            _plot_curves(history, out / "curves.png")
        key = "val_dice" if binary else "val_miou"
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {train_loss:.4f} val_loss {val_loss:.4f} {key} {rec[key]:.4f}"
            f"{' *best*' if improved else ''} ({rec['seconds']:.0f}s)")
        if world > 1:
            dist.barrier()
        ran += 1
        if cfg.early_stop_patience and since_best >= cfg.early_stop_patience:
            stop_reason = f"early stopping: no improvement for {since_best} epochs"
            log(stop_reason)
            break
        if cfg.stop_after_epochs and ran >= cfg.stop_after_epochs:
            return {"stopped": "stop_after_epochs", "epoch": epoch + 1}

    summary: dict[str, Any] = {}
    if is_main:
        best_model, _ = load_checkpoint(out)
        best_model = best_model.to(memory_format=torch.channels_last)
        test_m = None
        if parts["test"]:
            test_ds = SegmentationDataset(parts["test"], **common)
            test_m, _ = evaluate_model(best_model, test_ds, labels.num_classes, cfg.batch_size, use_bf16, labels.ignore_index)
            meta_best = ModelMeta.from_dict(json.loads((out / "model.json").read_text()))
            meta_best.metrics = meta_best.metrics | {"test": test_m}
            write_json(out / "model.json", meta_best.to_dict())
        summary = {"model": cfg.model, "out": str(out), "epochs": cfg.epochs, "epochs_run": len(history),
                   "stopped": stop_reason, "best_epoch": best_epoch, "best_val": best,
                   "val": json.loads((out / "model.json").read_text())["metrics"].get("val"), "test": test_m,
                   "seconds": round(time.time() - t_start, 1), "bf16": use_bf16, "world_size": world, "history": history}
        write_json(out / "summary.json", summary)
    if world > 1:
        dist.barrier()
    return summary

