"""The training loop behind ``rtseg train`` (single process, or DDP under ``torchrun``).

One run folder holds everything (docs/architecture.md "Artifacts"):

```
OUT/model.safetensors, OUT/model.json   best checkpoint so far (by validation Dice / mIoU)
OUT/last/                               last epoch: weights + model.json + train_state.pt (resume)
OUT/split.json                          the train/val/test split used (several folders: one per folder)
OUT/metrics.jsonl                       one JSON line per epoch (loss, val metrics, lr, seconds)
OUT/curves.png                          loss and validation metrics per epoch
OUT/summary.json                        final summary (best epoch, val and test metrics, time)
```

Every file is written atomically (``metrics.jsonl`` included), so a killed run never leaves a
corrupt checkpoint. An ``OUT`` that already holds a run is refused unless ``resume`` (continue it)
or ``overwrite`` (replace it; the earlier files stay until the new run writes its own), and
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
from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.distributed as dist

from ..checkpoint import load_checkpoint, save_checkpoint
from ..data.dataset import SegmentationDataset
from ..data.folder import fingerprint, split_record, write_split
from ..errors import RtsegError
from ..meta import MAX_INPUT_SIDE, ModelMeta
from ..metrics import BinaryMetrics, MulticlassMetrics
from ..models import create_model
from ..safe_io import atomic_write_bytes, save_figure, write_error, write_json
from .objectives import main_logits, make_loss, make_optimizer, make_scheduler


@dataclass
class TrainConfig:
    """Settings of one training run: a recipe (``rtseg/configs/*.yaml``) overridden by CLI flags."""

    model: str = "eunet-s"
    data: str | list[str] = ""  # one dataset root, or several (trained on the concatenation of their train parts)
    data_weights: list[float] = field(default_factory=list)  # per-folder sampling weights; [] = plain shuffling
    negative_weight: float = 1.0  # sampling weight × this for training images with an empty mask (binary); 1 = off
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
    augment: bool | Literal["robust"] = True  # True = default preset, "robust" = cross-centre preset, False = none
    amp: str = "auto"  # auto | bf16 | off
    threads: int = 0  # 0 = torch's default
    max_images: int = 0  # 0 = all (quick experiments/tests)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    init_weights: str = ""  # fine-tune: start from this checkpoint's weights (same model and classes); "" = fresh
    resume: bool = False
    overwrite: bool = False  # replace the run already in ``out`` (refused otherwise, unless ``resume``)
    progress: bool = True
    stop_after_epochs: int = 0  # stop (as if killed) after this many epochs of this invocation; tests

    @classmethod
    def from_dict(cls, d: dict, source: str = "training settings") -> "TrainConfig":
        """Build from a recipe dict; unknown keys are an error (typos must not pass silently).

        Types are checked by pydantic (``epochs: "many"`` is refused, ``"30"`` is 30), then bounds
        (``epochs``/``batch_size`` ≥ 1, ``lr`` > 0, ``img_size`` sides in 1..8192, counts ≥ 0).

        Raises:
            RtsegError: one line naming ``source``, the setting and the fix.
        """
        import pydantic

        if not isinstance(d, dict):
            raise RtsegError(f"{source} must be a mapping of settings, not {type(d).__name__}; fix the recipe")
        names = {f.name for f in fields(cls)}
        bad = sorted(set(d) - names, key=str)
        if bad:
            raise RtsegError(f"unknown training setting(s) {', '.join(map(str, bad))}; valid keys: {', '.join(sorted(names))}")
        d = dict(d)
        if "img_size" in d and isinstance(d["img_size"], (int, str)) and not isinstance(d["img_size"], bool):
            d["img_size"] = (d["img_size"], d["img_size"])
        try:
            cfg = pydantic.TypeAdapter(cls).validate_python(d)
        except pydantic.ValidationError as e:
            err = e.errors()[0]
            key = ".".join(str(x) for x in err["loc"]) or "(settings)"
            if err["loc"] and err["loc"][0] == "augment":
                raise RtsegError(f"{source}: 'augment' must be true, false or robust (got {err.get('input')!r:.60}); "
                                 f"fix the recipe or the flag") from None
            raise RtsegError(f"{source}: '{key}' {err['msg'].lower()} (got {err.get('input')!r:.60}); "
                             f"fix the recipe or the flag") from None
        cfg._check_bounds(source)
        return cfg

    def _check_bounds(self, source: str) -> None:
        def bad(key: str, what: str) -> RtsegError:
            return RtsegError(f"{source}: '{key}' {what}, not {getattr(self, key)!r}; fix the recipe or the flag")

        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise bad(key, "must be ≥ 1")
        for key in ("max_images", "threads", "early_stop_patience", "plateau_patience", "stop_after_epochs"):
            if getattr(self, key) < 0:
                raise bad(key, "must be ≥ 0")
        if not (0 < self.lr < math.inf):
            raise bad("lr", "must be a positive number")
        if not (0 < self.negative_weight < math.inf):
            raise bad("negative_weight", "must be a positive number (1 = no reweighting)")
        if not all(1 <= v <= MAX_INPUT_SIDE for v in self.img_size):
            raise bad("img_size", f"must be [H, W] with sides in 1..{MAX_INPUT_SIDE}")
        for key in ("weight_decay", "grad_clip_value", "lambda_dice", "lambda_con"):
            if not (0 <= getattr(self, key) < math.inf):
                raise bad(key, "must be a number ≥ 0")
        roots = data_roots(self)
        if len({str(Path(r).resolve()) for r in roots}) < len(roots):
            raise bad("data", "names a folder twice; pass each folder once")
        w = self.data_weights
        if w and (len(w) != len(roots) or not all(0 <= x < math.inf for x in w) or not sum(w) > 0):
            raise bad("data_weights", f"must be {len(roots)} number(s) ≥ 0 (one per data folder, not all 0)")


def data_roots(cfg: TrainConfig) -> list[str]:
    """The data folders of ``cfg`` as a list (``data`` may be one path or a list of paths)."""
    return [cfg.data] if isinstance(cfg.data, str) else list(cfg.data)


def load_recipe(name_or_path: str) -> dict:
    """Read a recipe YAML: a path, or a name of a shipped recipe (``eunet`` → ``rtseg/configs/eunet.yaml``,
    package data, so it works from an installed wheel).

    Raises:
        RtsegError: not found or not a mapping.
    """
    import yaml

    p = Path(name_or_path)
    if not p.is_file():
        cand = Path(__file__).resolve().parents[1] / "configs" / f"{name_or_path}.yaml"  # package data
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
    from ..limits import cpu_info

    return bool({"avx512_bf16", "amx_bf16"} & cpu_info()[1])


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
    tot = np.array([sum(v * n for v, n in losses), sum(n for _, n in losses)], dtype=np.float64)
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
    save_figure(fig, path, "--out")


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


def _no_log(*args, **kwargs) -> None:
    """The ``log`` of ranks other than 0 (only rank 0 logs)."""


@dataclass
class _Progress:
    """Epoch bookkeeping saved in ``last/train_state.pt`` and restored by ``--resume``."""

    start_epoch: int = 0
    best: float = -math.inf  # best selection score (headline metric) so far
    best_epoch: int = -1  # 1-based epoch of ``best``; -1 before the first epoch
    history: list[dict] = field(default_factory=list)  # one metrics.jsonl record per epoch (without "val")
    since_best: int = 0  # epochs without improvement of the early-stopping metric
    best_es: float = -math.inf  # best early-stopping score so far
    stop_reason: str = "epochs"


@dataclass
class _Run:
    """Everything one training run needs, built once by :func:`_setup` (the model in NCHW channels_last)."""

    cfg: TrainConfig
    log: Callable[..., None]
    rank: int
    world: int
    out: Path
    fmt: Any  # rtseg.data.formats.DataFormat
    model: torch.nn.Module
    ddp_model: torch.nn.Module  # ``model`` itself, or its DistributedDataParallel wrapper
    loss_name: str
    loss_fn: Callable
    eval_loss: Callable
    folders: list[_Folder]  # the data folders, each with its own train / val / test samples
    common: dict[str, Any]  # SegmentationDataset keyword arguments shared by every split
    aug: Any  # the augmentation pipeline, or None
    val_sets: list[SegmentationDataset]  # one per folder; the overall validation set is their concatenation
    use_bf16: bool
    opt: torch.optim.Optimizer
    g: torch.Generator  # the loader's shuffling RNG
    sampler: Any  # DistributedSampler under DDP, else None
    loader: torch.utils.data.DataLoader
    steps: int  # scheduler steps of the whole run (epochs × batches per epoch)
    sched: Any
    step_per: str  # "batch" | "metric" | other (see make_scheduler)
    meta: ModelMeta
    progress: _Progress = field(default_factory=_Progress)
    metrics_lines: list[str] = field(default_factory=list)  # metrics.jsonl, rewritten atomically each epoch
    val_per_dataset: dict[str, dict] = field(default_factory=dict)  # last validation, per folder (several folders only)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def binary(self) -> bool:
        return self.fmt.labels.binary

    @property
    def state_file(self) -> Path:
        return self.out / "last" / "train_state.pt"


def _create_model(cfg: TrainConfig, labels) -> tuple[torch.nn.Module, list[float], list[float]]:
    """The network and its input normalisation (mean, std); checks ``cfg.img_size`` against ``input_multiple``."""
    model = create_model(cfg.model, num_classes=labels.num_classes, **cfg.model_kwargs)
    H, W = cfg.img_size
    mult = getattr(model, "input_multiple", 1)
    if H % mult or W % mult:
        raise RtsegError(f"--img-size {H}x{W} is not a multiple of {mult}, which {cfg.model} needs; use e.g. {max(mult, H // mult * mult)}")
    mean = list(getattr(model, "default_mean", (0.485, 0.456, 0.406)))
    std = list(getattr(model, "default_std", (0.229, 0.224, 0.225)))
    return model, mean, std


def _init_from(model: torch.nn.Module, cfg: TrainConfig, num_classes: int, log) -> None:
    """Load the weights of the checkpoint ``cfg.init_weights`` into ``model`` (fine-tuning start).

    Raises:
        RtsegError: the checkpoint is missing/corrupt, or holds another network or class count.
    """
    src, meta = load_checkpoint(cfg.init_weights)
    if meta.model != cfg.model or meta.num_classes != num_classes:
        raise RtsegError(f"--init-weights {cfg.init_weights} holds {meta.model} with {meta.num_classes} class(es), "
                         f"not {cfg.model}; pass a checkpoint of the same network, or drop --init-weights")
    try:
        model.load_state_dict(src.state_dict())
    except RuntimeError as e:
        raise RtsegError(f"--init-weights {cfg.init_weights}: its tensors do not fit this {cfg.model} "
                         f"({str(e).splitlines()[0][:120]}); use the same model settings as that checkpoint") from None
    log(f"initialised from {cfg.init_weights} ({meta.model})")


def _losses(cfg: TrainConfig, labels) -> tuple[str, Callable, Callable]:
    """(loss name, training loss, validation loss: bce_dice / ce_dice whatever the training loss)."""
    binary = labels.binary
    loss_name = cfg.loss if cfg.loss != "auto" else ("bce_dice" if binary else "ce_dice")
    loss_fn = make_loss(loss_name, binary, cfg.lambda_dice, cfg.lambda_con, labels.ignore_index or 255)
    eval_loss = make_loss("bce_dice" if binary else "ce_dice", binary, cfg.lambda_dice, cfg.lambda_con, labels.ignore_index or 255)
    return loss_name, loss_fn, eval_loss


@dataclass
class _Folder:
    """One data folder of the run: its layout, its own deterministic split and the datasets built on it."""

    root: str
    name: str  # the folder's base name (made unique with "#2", "#3", ...): key of the per-dataset metrics
    fmt: Any  # rtseg.data.formats.DataFormat
    parts: dict[str, list]  # train / val / test samples (after ``max_images``)
    all_samples: list  # every sample before ``max_images`` (the fingerprint)


def _folder_split(cfg: TrainConfig, root: str, name: str) -> _Folder:
    """Split one folder by its format's own ``splits()``; ``auto`` detects the layout per folder.

    Raises:
        RtsegError: missing folder, bad layout, or too few images for train and val.
    """
    from ..data.formats import detect_format, get_format

    if not Path(root).exists():
        raise RtsegError(f"data folder {root} does not exist; check the --data path")
    fmt = get_format(detect_format(root) if cfg.data_format == "auto" else cfg.data_format)
    parts = fmt.splits(root)
    all_samples = [s for v in parts.values() for s in v]
    if cfg.max_images:
        parts = {k: v[: max(2, int(cfg.max_images * f))] for (k, v), f in zip(parts.items(), (0.8, 0.1, 0.1))}
    if len(parts["train"]) < 1 or len(parts["val"]) < 1:
        raise RtsegError(f"{root} has too few images for a train/val split; add more labelled images")
    return _Folder(root=root, name=name, fmt=fmt, parts=parts, all_samples=all_samples)


def _split_data(cfg: TrainConfig, out: Path, is_main: bool, log) -> list[_Folder]:
    """Every data folder split by its own rule; rank 0 writes ``OUT/split.json`` (one folder: as
    :func:`write_split`; several: ``{"datasets": [that record per folder]}``).

    Raises:
        RtsegError: see :func:`_folder_split`; folders whose labels differ (binary vs classes).
    """
    names: list[str] = []
    for r in data_roots(cfg):
        n = Path(r).resolve().name or str(r)
        names.append(n if n not in names else f"{n}#{len(names) + 1}")
    folders = [_folder_split(cfg, r, n) for r, n in zip(data_roots(cfg), names)]
    lab0 = folders[0].fmt.labels
    for f in folders[1:]:
        if (f.fmt.labels.num_classes, f.fmt.labels.binary) != (lab0.num_classes, lab0.binary):
            raise RtsegError(f"{f.root} ({f.fmt.name}) has other labels than {folders[0].root} ({folders[0].fmt.name}); "
                             f"train only on folders of the same task")
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        if len(folders) == 1:
            write_split(out / "split.json", folders[0].root, folders[0].parts, folders[0].fmt.split_rule)
        else:
            recs = [{"name": f.name, "format": f.fmt.name} | split_record(f.root, f.parts, f.fmt.split_rule)
                    for f in folders]
            write_json(out / "split.json", {"datasets": recs})
    for f in folders:
        log(f"data: {f.root} ({f.fmt.name}) train {len(f.parts['train'])} / val {len(f.parts['val'])} / "
            f"test {len(f.parts['test'])} images")
    return folders


def _concat(datasets: list) -> Any:
    """One dataset, or their ``ConcatDataset`` (indices in folder order)."""
    return datasets[0] if len(datasets) == 1 else torch.utils.data.ConcatDataset(datasets)


def _part_sets(folders: list[_Folder], part: str, common: dict, aug=None) -> list[SegmentationDataset]:
    """One :class:`SegmentationDataset` per folder for ``part`` (``train``/``val``/``test``), empty parts kept."""
    return [SegmentationDataset(f.parts[part], augment=aug, reader=f.fmt.read, **common) for f in folders]


def _datasets(cfg: TrainConfig, folders: list[_Folder], mean: list[float], std: list[float]):
    """(augmentation or None, shared dataset kwargs, train dataset, per-folder validation datasets)."""
    from ..data.augment import make_augmentation  # albumentations is imported only when training

    labels = folders[0].fmt.labels
    H, W = cfg.img_size
    ignore = labels.ignore_index if labels.ignore_index is not None else 255
    aug = make_augmentation(cfg.augment, 0 if labels.binary else ignore, square=H == W)
    common = dict(input_hw=(H, W), mean=mean, std=std, resize=cfg.resize, binary=labels.binary, ignore_index=ignore)
    train_ds = _concat(_part_sets(folders, "train", common, aug))
    return aug, common, train_ds, _part_sets(folders, "val", common)


class _CountingSampler(torch.utils.data.Sampler):
    """Wraps a sampler and counts, per data folder, the indices it yields (``counts``, reset per epoch)."""

    def __init__(self, inner, sizes: list[int]):
        self.inner, self.ends = inner, np.cumsum(sizes)
        self.counts = np.zeros(len(sizes), np.int64)

    def __iter__(self):
        self.counts[:] = 0
        for i in self.inner:
            self.counts[int(np.searchsorted(self.ends, i, side="right"))] += 1
            yield i

    def __len__(self) -> int:
        return len(self.inner)


def _weighted(cfg: TrainConfig) -> bool:
    return bool(cfg.data_weights) or cfg.negative_weight != 1.0


def _check_weights_world(cfg: TrainConfig, world: int) -> None:
    """Raises RtsegError: ``data_weights``/``negative_weight`` under DDP (a weighted draw per rank would overlap the shards)."""
    if _weighted(cfg) and world > 1:
        raise RtsegError("--data-weights/--negative-weight are not supported with DDP (torchrun); drop them or train in one process")


def _sample_weights(cfg: TrainConfig, parts: list, sizes: list[int]) -> torch.Tensor:
    """Per-image draw weights: ``data_weights[folder] / images[folder]`` (1 each without them), × ``negative_weight``
    for an image whose (network-size) mask has no foreground pixel."""
    fw = cfg.data_weights or sizes
    w = torch.cat([torch.full((n,), fw[k] / n, dtype=torch.float64) for k, n in enumerate(sizes)])
    if cfg.negative_weight != 1.0:
        empty = np.concatenate([~p.masks.reshape(len(p), -1).any(1) for p in parts])
        w[torch.from_numpy(empty)] *= cfg.negative_weight
    return w


def _loader(cfg: TrainConfig, train_ds, g: torch.Generator, rank: int, world: int):
    """(DistributedSampler or None, the training DataLoader over a :class:`_CountingSampler`).

    Without ``data_weights``/``negative_weight``: a shuffling ``RandomSampler`` on ``g`` (DDP:
    ``DistributedSampler``); with them: a ``WeightedRandomSampler`` on ``g`` drawing ``len(train_ds)``
    samples with replacement, weighted by :func:`_sample_weights`.

    Raises:
        RtsegError: ``data_weights``/``negative_weight`` under DDP (not supported: the shards would overlap).
    """
    data = torch.utils.data
    parts = list(train_ds.datasets) if isinstance(train_ds, data.ConcatDataset) else [train_ds]
    sizes = [len(d) for d in parts]
    _check_weights_world(cfg, world)
    sampler = data.distributed.DistributedSampler(train_ds, world, rank, shuffle=True, seed=cfg.seed) if world > 1 else None
    if _weighted(cfg):
        inner = data.WeightedRandomSampler(_sample_weights(cfg, parts, sizes), len(train_ds), replacement=True, generator=g)
    else:
        inner = sampler if sampler is not None else data.RandomSampler(train_ds, generator=g)
    loader = data.DataLoader(train_ds, batch_size=cfg.batch_size, sampler=_CountingSampler(inner, sizes),
                             drop_last=len(train_ds) // world > cfg.batch_size, generator=g)
    return sampler, loader


def _folder_record(f: _Folder) -> dict[str, Any]:
    return {"root": str(Path(f.root).resolve()), "format": f.fmt.name, "fingerprint": fingerprint(f.all_samples),
            "n_train": len(f.parts["train"]), "n_val": len(f.parts["val"]), "n_test": len(f.parts["test"])}


def _model_meta(cfg: TrainConfig, folders: list[_Folder], mean: list[float], std: list[float],
                run_info: dict[str, Any]) -> ModelMeta:
    """``model.json`` of the run (metrics are added per epoch); ``run_info``: bf16, loss, world_size.

    ``data``: the first folder's record (``root``, ``format``, ``fingerprint``, ``split``, ``n_*``;
    what ``rtseg eval`` without ``--data`` and int8 calibration use) and, with several folders,
    ``datasets`` (every folder's record and ``name``) and ``weights``.
    """
    labels = folders[0].fmt.labels
    H, W = cfg.img_size
    # the architecture only: an ImageNet weights file is an input of this training, not of the model
    # (rebuilding it from model.json must not need that file or package)
    arch_kwargs = {k: v for k, v in cfg.model_kwargs.items() if k != "pretrained_weights"}
    data = _folder_record(folders[0]) | {"split": "split.json"}
    if len(folders) > 1:
        data |= {"datasets": [{"name": f.name} | _folder_record(f) for f in folders], "weights": list(cfg.data_weights)}
    training = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()} | run_info
    return ModelMeta(model=cfg.model, num_classes=labels.num_classes, model_kwargs=arch_kwargs,
                     class_names=list(labels.class_names), palette=[list(c) for c in labels.palette], input_size=[H, W],
                     mean=mean, std=std, resize=cfg.resize, task="binary" if labels.binary else "multiclass",
                     ignore_index=labels.ignore_index, data=data, training=training)


def _setup(cfg: TrainConfig, log) -> _Run:
    """Process group, seeds, model, data, optimiser, scheduler and metadata, in this order (it fixes the RNG draws)."""
    rank, world = _dist_setup()
    _check_weights_world(cfg, world)
    log = log if rank == 0 else _no_log
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _seed_all(cfg.seed)
    out = Path(cfg.out)
    folders = _split_data(cfg, out, rank == 0, log)
    fmt = folders[0].fmt
    model, mean, std = _create_model(cfg, fmt.labels)
    if cfg.init_weights and not cfg.resume:
        _init_from(model, cfg, fmt.labels.num_classes, log)
    loss_name, loss_fn, eval_loss = _losses(cfg, fmt.labels)
    aug, common, train_ds, val_sets = _datasets(cfg, folders, mean, std)
    model = model.to(memory_format=torch.channels_last)
    ddp_model = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    use_bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and cpu_has_bf16())
    opt = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.weight_decay, cfg.betas)
    g = torch.Generator().manual_seed(cfg.seed)
    sampler, loader = _loader(cfg, train_ds, g, rank, world)
    steps = cfg.epochs * len(loader)
    sched, step_per = make_scheduler(cfg.scheduler, opt, cfg.lr, steps, cfg.epochs, cfg.plateau_patience)
    meta = _model_meta(cfg, folders, mean, std, {"bf16": use_bf16, "loss": loss_name, "world_size": world})
    return _Run(cfg=cfg, log=log, rank=rank, world=world, out=out, fmt=fmt, model=model, ddp_model=ddp_model,
                loss_name=loss_name, loss_fn=loss_fn, eval_loss=eval_loss, folders=folders, common=common, aug=aug,
                val_sets=val_sets, use_bf16=use_bf16, opt=opt, g=g, sampler=sampler, loader=loader, steps=steps,
                sched=sched, step_per=step_per, meta=meta)


def _resume(run: _Run) -> None:
    """Restore weights, optimiser, scheduler, epoch, early-stopping state and RNGs from ``OUT/last``.

    Raises:
        RtsegError: ``OUT/last/train_state.pt`` does not exist.
    """
    cfg, state_file = run.cfg, run.state_file
    if not state_file.exists():
        raise RtsegError(f"--resume: {state_file} not found; start without --resume or point --out at an earlier run")
    m_last, _ = load_checkpoint(run.out / "last")
    run.model.load_state_dict(m_last.state_dict())
    try:
        st = torch.load(state_file, map_location="cpu", weights_only=True)
        run.opt.load_state_dict(st["optimizer"])
    except Exception as e:  # noqa: BLE001 - weights_only refuses pickled code; a truncated file fails to unpickle
        raise RtsegError(f"--resume: {state_file} cannot be loaded safely ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:120]}); it is corrupt or not written by rtseg — restore it, "
                         f"or start again with --overwrite") from None
    if run.sched is not None:
        run.sched.load_state_dict(st["scheduler"])
        if hasattr(run.sched, "total_steps") and run.sched.total_steps != max(run.steps, 1):
            run.log(f"--epochs changed to {cfg.epochs}: the {cfg.scheduler} schedule is stretched to {run.steps} steps")
            run.sched.total_steps = max(run.steps, 1)
    p = run.progress
    p.start_epoch, p.best, p.best_epoch, p.since_best = st["epoch"] + 1, st["best"], st["best_epoch"], st["since_best"]
    p.history = json.loads(st["history"])
    _set_rng_state(st, run.g)
    p.best_es = st["best_es"]
    metrics = run.out / "metrics.jsonl"
    if metrics.is_file():  # the lines of the epochs being continued (not those of a later, lost epoch)
        run.metrics_lines = [ln for ln in metrics.read_text().splitlines()
                             if ln.strip() and _line_epoch(ln) <= p.start_epoch]
    run.log(f"resumed from epoch {p.start_epoch} (best {p.best:.4f} at epoch {p.best_epoch})")


def _log_model(run: _Run) -> None:
    cfg = run.cfg
    H, W = cfg.img_size
    run.log(f"model: {cfg.model} {sum(p.numel() for p in run.model.parameters()):,} params, input {W}x{H} (WxH), "
            f"loss {run.loss_name}, {cfg.optimizer} lr {cfg.lr:g} + {cfg.scheduler}, "
            f"{'bf16 autocast' if run.use_bf16 else 'fp32'}, channels_last, "
            f"{torch.get_num_threads()} threads{f', {run.world} processes (DDP)' if run.world > 1 else ''}")


def _train_step(run: _Run, x: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> float:
    """One optimiser step on a batch (x float32 NCHW, targets t, valid mask v) → the batch loss."""
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=run.use_bf16):
        y = run.ddp_model(x)
    loss = run.loss_fn(y, t, v)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    if run.cfg.grad_clip_value:
        torch.nn.utils.clip_grad_value_(run.model.parameters(), run.cfg.grad_clip_value)
    run.opt.step()
    if run.step_per == "batch":
        run.sched.step()
    return float(loss.detach())


def _train_epoch(run: _Run, epoch: int) -> float:
    """Train one epoch (0-based ``epoch``) → mean training loss over the batches (averaged over ranks)."""
    from tqdm import tqdm

    cfg = run.cfg
    if run.sampler is not None:
        run.sampler.set_epoch(epoch)
    if run.aug is not None:  # re-seeded per epoch and rank: a resumed run draws the same augmentations
        run.aug.set_random_seed(cfg.seed * 100_003 + epoch * 101 + run.rank)
    run.ddp_model.train()
    losses = []
    bar = tqdm(run.loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
               disable=not (cfg.progress and run.is_main) or None, dynamic_ncols=True)
    for x, t, v in bar:
        losses.append(_train_step(run, x, t, v))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{run.opt.param_groups[0]['lr']:.2e}")
    train_loss = float(np.mean(losses)) if losses else float("nan")
    if run.world > 1:
        tl = torch.tensor([train_loss])
        dist.all_reduce(tl)
        train_loss = float(tl) / run.world
    return train_loss


def _drawn_per_dataset(run: _Run) -> dict[str, int]:
    """Training images drawn in the last epoch per folder name (summed over ranks)."""
    c = torch.from_numpy(run.loader.sampler.counts.copy())
    if run.world > 1:
        dist.all_reduce(c)
    return {f.name: int(n) for f, n in zip(run.folders, c)}


def _short(m: dict, binary: bool) -> dict[str, float]:
    """The headline validation numbers of a metrics dict, as metrics.jsonl keys."""
    if binary:
        return {"val_dice": m["per_image"]["dice"], "val_iou": m["per_image"]["iou"]}
    return {"val_miou": m["miou"], "val_mean_dice": m["mean_dice"], "val_pixel_accuracy": m["pixel_accuracy"]}


def _eval_sets(run: _Run, model, sets: list, loss_fn=None, sharded: bool = True) -> tuple[dict, float, dict[str, dict]]:
    """(overall metrics over the concatenated ``sets``, its mean loss, metrics per folder name — several
    folders only). ``sharded``: every rank evaluates its share (all ranks must call); else this process alone."""
    cfg, labels = run.cfg, run.fmt.labels
    args = (labels.num_classes, cfg.batch_size, run.use_bf16, labels.ignore_index)
    rank, world = (run.rank, run.world) if sharded else (0, 1)
    m, loss = evaluate_model(model, _concat(sets), *args, loss_fn, rank, world)
    per = {}
    if len(sets) > 1:
        per = {f.name: evaluate_model(model, d, *args, None, rank, world)[0]
               for f, d in zip(run.folders, sets) if len(d)}
    return m, loss, per


def _validate(run: _Run, epoch: int, train_loss: float, t0: float) -> tuple[dict, dict, bool]:
    """Evaluate on the validation split, step a metric scheduler, update the best/early-stopping state.

    Returns:
        (the epoch's metrics.jsonl record without "val", the validation metrics, improved on the best).
    """
    cfg, p = run.cfg, run.progress
    m, val_loss, run.val_per_dataset = _eval_sets(run, run.model, run.val_sets, run.eval_loss)
    score = headline(m)
    es_score = headline(m, cfg.early_stop_metric)
    if run.step_per == "metric":
        run.sched.step(score)
    rec = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "seconds": round(time.time() - t0, 2),
           "lr": run.opt.param_groups[0]["lr"]}
    rec |= _short(m, run.binary)
    if len(run.folders) > 1:
        rec["datasets"] = {k: _short(v, run.binary) for k, v in run.val_per_dataset.items()}
        rec["train_images"] = _drawn_per_dataset(run)
    p.history.append(rec)
    improved = score > p.best
    if improved:
        p.best, p.best_epoch = score, epoch + 1
    if es_score > p.best_es:
        p.best_es, p.since_best = es_score, 0
    else:
        p.since_best += 1
    return rec, m, improved


def _save_epoch(run: _Run, epoch: int, rec: dict, m: dict, improved: bool) -> None:
    """Rank 0: best checkpoint (if improved), ``last/`` + train_state.pt, a metrics.jsonl line, curves.png."""
    p, out = run.progress, run.out
    val = {"val": m} | ({"val_per_dataset": run.val_per_dataset} if run.val_per_dataset else {})
    if improved:
        run.meta.metrics = val | {"epoch": epoch + 1}
        save_checkpoint(out, run.model, run.meta)
    save_checkpoint(out / "last", run.model, ModelMeta.from_dict(run.meta.to_dict() | {"metrics": val | {"epoch": epoch + 1}}))
    st = {"optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict() if run.sched is not None else {},
          "epoch": epoch, "best": p.best, "best_epoch": p.best_epoch, "since_best": p.since_best,
          "best_es": p.best_es, "history": json.dumps(p.history)} | _rng_state(run.g)
    torch.save(st, run.state_file.with_suffix(".tmp"))
    os.replace(run.state_file.with_suffix(".tmp"), run.state_file)
    run.metrics_lines.append(json.dumps(rec | val))
    atomic_write_bytes(out / "metrics.jsonl", ("\n".join(run.metrics_lines) + "\n").encode())
    _plot_curves(p.history, out / "curves.png")


def _line_epoch(line: str) -> int:
    try:
        return int(json.loads(line).get("epoch", 0))
    except (ValueError, TypeError, AttributeError):
        return 0


#: the files that make a folder a training run (``--out`` of an earlier run)
RUN_FILES = ("model.safetensors", "model.json", "metrics.jsonl", "last", "summary.json")


def check_out(cfg: TrainConfig) -> None:
    """Refuse an ``--out`` that would lose an earlier run or cannot be written.

    Raises:
        RtsegError: ``out`` holds a run (see :data:`RUN_FILES`) and neither ``resume`` nor
            ``overwrite`` is set; ``out`` is a file; or its folder cannot be created or written.
    """
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise RtsegError(f"--out {out} is a file; pass a folder for the run")
    found = [n for n in RUN_FILES if (out / n).exists()]
    if found and not (cfg.resume or cfg.overwrite):
        raise RtsegError(f"--out {out} already holds a training run ({', '.join(found)}); pass --resume to continue it, "
                         f"--overwrite to replace it, or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(out, e, "--out") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise RtsegError(f"cannot write {out}: permission denied or read-only; choose another --out")


def _log_epoch(run: _Run, rec: dict, improved: bool) -> None:
    key = "val_dice" if run.binary else "val_miou"
    run.log(f"epoch {rec['epoch']}/{run.cfg.epochs}: loss {rec['train_loss']:.4f} val_loss {rec['val_loss']:.4f} "
            f"{key} {rec[key]:.4f}{' *best*' if improved else ''} ({rec['seconds']:.0f}s)")


def _finish(run: _Run, t_start: float) -> dict[str, Any]:
    """Rank 0: test metrics of the best checkpoint into model.json, ``OUT/summary.json`` → the summary ({} elsewhere)."""
    cfg, out, p = run.cfg, run.out, run.progress
    summary: dict[str, Any] = {}
    if run.is_main:
        best_model, _ = load_checkpoint(out)
        best_model = best_model.to(memory_format=torch.channels_last)
        test_m, test_per = None, {}
        test_sets = _part_sets(run.folders, "test", run.common)
        if any(len(d) for d in test_sets):
            test_m, _, test_per = _eval_sets(run, best_model, test_sets, sharded=False)  # rank 0 alone
            meta_best = ModelMeta.from_dict(json.loads((out / "model.json").read_text()))
            meta_best.metrics = meta_best.metrics | {"test": test_m} | ({"test_per_dataset": test_per} if test_per else {})
            write_json(out / "model.json", meta_best.to_dict())
        best_metrics = json.loads((out / "model.json").read_text())["metrics"]
        summary = {"model": cfg.model, "out": str(out), "epochs": cfg.epochs, "epochs_run": len(p.history),
                   "stopped": p.stop_reason, "best_epoch": p.best_epoch, "best_val": p.best,
                   "val": best_metrics.get("val"), "test": test_m,
                   "seconds": round(time.time() - t_start, 1), "bf16": run.use_bf16, "world_size": run.world,
                   "history": p.history}
        if len(run.folders) > 1:
            summary |= {"val_per_dataset": best_metrics.get("val_per_dataset"), "test_per_dataset": test_per}
        write_json(out / "summary.json", summary)
    if run.world > 1:
        dist.barrier()
    return summary


def train(cfg: TrainConfig, log=print) -> dict:
    """Train ``cfg.model`` on ``cfg.data``; returns the summary dict (also ``OUT/summary.json``).

    The summary holds ``model, out, epochs, epochs_run, stopped, best_epoch, best_val`` (the selection
    score: per-image Dice or mIoU), ``val`` and ``test`` metrics of the best checkpoint, ``seconds``
    (wall time in s), ``bf16``, ``world_size`` and ``history`` (the metrics.jsonl records); with several
    data folders also ``val_per_dataset`` and ``test_per_dataset`` (metrics per folder name; ``val``/``test``
    are over the concatenated parts, and the overall ``val`` selects the best epoch). Ranks other
    than 0 return ``{}``; with ``cfg.stop_after_epochs`` the run stops early (as if killed) and returns
    ``{"stopped": "stop_after_epochs", "epoch": n}``.

    Raises:
        RtsegError: bad data folder/format, unknown model/loss/optimizer, nothing to resume.
    """
    t_start = time.time()
    check_out(cfg)
    run = _setup(cfg, log)
    if cfg.resume:
        _resume(run)
    _log_model(run)
    ran = 0
    for epoch in range(run.progress.start_epoch, cfg.epochs):
        t0 = time.time()
        train_loss = _train_epoch(run, epoch)
        rec, m, improved = _validate(run, epoch, train_loss, t0)
        if run.is_main:
            try:
                _save_epoch(run, epoch, rec, m, improved)
            except OSError as e:
                raise write_error(run.out, e, "--out") from None
        _log_epoch(run, rec, improved)
        if run.world > 1:
            dist.barrier()
        ran += 1
        if cfg.early_stop_patience and run.progress.since_best >= cfg.early_stop_patience:
            run.progress.stop_reason = f"early stopping: no improvement for {run.progress.since_best} epochs"
            run.log(run.progress.stop_reason)
            break
        if cfg.stop_after_epochs and ran >= cfg.stop_after_epochs:
            return {"stopped": "stop_after_epochs", "epoch": epoch + 1}
    return _finish(run, t_start)
