"""``rtseg train``: train a network from a recipe (``rtseg/configs/*.yaml``) and/or flags (see :mod:`rtseg.training.loop`).

Flags override the recipe; the recipe overrides the defaults of :class:`rtseg.training.loop.TrainConfig`.
Under ``torchrun --nproc_per_node N -m rtseg train ...`` the same command trains with DDP.
"""

from __future__ import annotations

import click

from ..models import list_models
from .common import FINITE_FLOAT


def parse_size(value) -> tuple[int, int]:
    """``"256"`` → (256, 256); ``"256x320"`` / ``"256,320"`` → (H=256, W=320)."""
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[-1])
    s = str(value).lower().replace(",", "x")
    parts = [p for p in s.split("x") if p]
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a size; use N or HxW, e.g. 256 or 256x320") from None
    if len(nums) == 1:
        return nums[0], nums[0]
    if len(nums) == 2:
        return nums[0], nums[1]
    raise click.BadParameter(f"{value!r} is not a size; use N or HxW")


def parse_weights(value: str) -> list[float]:
    """``"1,1,2"`` → [1.0, 1.0, 2.0].

    Raises:
        click.BadParameter: not a comma-separated list of numbers.
    """
    try:
        return [float(w) for w in str(value).split(",") if w.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a list of numbers; use one weight per --data, e.g. 1,1,2") from None


FORMAT_NAMES = ["polyp", "kvasir", "kvasir-instrument", "cvc", "polypgen", "cityscapes", "coco", "fsoco", "camvid", "auto"]


@click.command("train")
@click.option("--config", "config", default=None, help="Recipe: a YAML file or a shipped recipe name (eunet, visionfusenet, contrafusionnet, gmsrfnet, ...).")
@click.option("--model", default=None, help=f"Registry name ({', '.join(list_models())}). [default: eunet-s]")
@click.option("--data", default=None, multiple=True, type=click.Path(),
              help="Dataset root; repeat it to train on several folders (each split by its own rule, train parts concatenated).")
@click.option("--data-weights", default=None,
              help="Per-folder sampling weights, one per --data, e.g. 1,1,2 (default: plain shuffling).")
@click.option("--data-format", default=None, type=click.Choice(FORMAT_NAMES),
              help="Dataset layout of every folder (auto: detected per folder). [default: polyp]")
@click.option("--img-size", default=None, help="Network input, N or HxW pixels. [default: 256]")
@click.option("--epochs", default=None, type=int)
@click.option("--batch-size", default=None, type=int)
@click.option("--lr", default=None, type=FINITE_FLOAT, help="(Peak) learning rate.")
@click.option("--weight-decay", default=None, type=FINITE_FLOAT)
@click.option("--optimizer", default=None, type=click.Choice(["adamw", "adam", "lion", "sgd"]))
@click.option("--scheduler", default=None, type=click.Choice(["onecycle", "plateau", "cosine", "none"]))
@click.option("--loss", default=None, type=click.Choice(["auto", "bce_dice", "bce", "dice", "structure", "ce_dice", "ce_dice_infonce"]))
@click.option("--early-stop-patience", default=None, type=int, help="Stop after N epochs without improvement (0 = off).")
@click.option("--grad-clip-value", default=None, type=FINITE_FLOAT, help="Clamp gradients to ±value (0 = off).")
@click.option("--out", default=None, type=click.Path(),
              help="Run folder (also the checkpoint folder); a folder that already holds a run is refused unless "
                   "--resume or --overwrite. [default: runs/train]")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last epoch.")
@click.option("--overwrite", is_flag=True,
              help="Replace the run already in --out (its files stay until the new run writes its own).")
@click.option("--resize", default=None, type=click.Choice(["stretch", "letterbox"]))
@click.option("--widths", default=None, help="EUNet stage widths, e.g. 16,32,64,128.")
@click.option("--no-augment", is_flag=True, default=None, help="Disable augmentation.")
@click.option("--augment", "augment", default=None, type=click.Choice(["default", "robust"]),
              help="Augmentation preset: default, or robust (cross-centre colour/blur/JPEG/scale/specular shifts).")
@click.option("--amp", default=None, type=click.Choice(["auto", "bf16", "off"]), help="bf16 autocast: auto = only where the CPU has native bf16.")
@click.option("--threads", default=None, type=int, help="CPU threads (0 = torch default).")
@click.option("--seed", default=None, type=int)
@click.option("--max-images", default=None, type=int, help="Use at most N images (quick runs).")
@click.option("--negative-weight", default=None, type=FINITE_FLOAT,
              help="Draw training images with an empty mask (polyp-free frames) this many times as often (1 = off).")
@click.option("--init-weights", default=None, type=click.Path(),
              help="Fine-tune: start from this checkpoint's weights (same network), e.g. rtseg/weights/default.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(config, model, data, data_weights, data_format, img_size, epochs, batch_size, lr, weight_decay, optimizer, scheduler, loss,
          early_stop_patience, grad_clip_value, out, resume, overwrite, resize, widths, no_augment, augment, amp, threads, seed, max_images, negative_weight, init_weights, quiet):
    """Train a network; keeps the best checkpoint by validation Dice (binary) / mIoU (multi-class)
    and reports test metrics at the end.

    Example: rtseg train --config eunet --model eunet-s --data-format polyp --data ../shared/data/kvasir-seg-256 --out runs/eunet-s
    """
    from ..errors import RtsegError
    from ..training.loop import TrainConfig, load_recipe
    from ..training.loop import train as run

    d = load_recipe(config) if config else {}
    flags = dict(model=model, data=(data[0] if len(data) == 1 else list(data)) if data else None, data_format=data_format, epochs=epochs, batch_size=batch_size, lr=lr,
                 weight_decay=weight_decay, optimizer=optimizer, scheduler=scheduler, loss=loss,
                 early_stop_patience=early_stop_patience, grad_clip_value=grad_clip_value, out=out, resize=resize,
                 amp=amp, threads=threads, seed=seed, max_images=max_images, init_weights=init_weights,
                 negative_weight=negative_weight)
    d.update({k: v for k, v in flags.items() if v is not None})
    if img_size is not None:
        d["img_size"] = parse_size(img_size)
    if widths:
        d["model_kwargs"] = {**d.get("model_kwargs", {}), "widths": [int(w) for w in widths.replace("x", ",").split(",")]}
    if augment:
        d["augment"] = True if augment == "default" else augment
    if no_augment:
        d["augment"] = False
    if data_weights:
        d["data_weights"] = parse_weights(data_weights)
    d["resume"], d["progress"] = resume, not quiet
    if overwrite:
        d["overwrite"] = True
    if not d.get("data"):
        raise RtsegError("no training data; pass --data DIR (e.g. ../shared/data/kvasir-seg-256)")
    if d.get("data_format") == "auto" and isinstance(d["data"], str):  # several folders: detected per folder
        from ..data.formats import detect_format

        d["data_format"] = detect_format(d["data"])
    cfg = TrainConfig.from_dict(d, f"recipe {config} (with the flags)" if config else "training flags")
    s = run(cfg, log=click.echo)
    if not s:
        return  # non-zero rank of a distributed run
    click.echo("")
    click.echo(f"done in {s['seconds'] / 60:.1f} min ({s['epochs_run']} epochs, {s['stopped']}); best epoch {s['best_epoch']}; checkpoint: {s['out']}")
    for name in ("val", "test"):
        _echo_metrics(name, s.get(name))
        for folder, m in (s.get(f"{name}_per_dataset") or {}).items():
            _echo_metrics(f"{name} {folder}", m)


def _echo_metrics(name: str, m: dict | None) -> None:
    """One line of headline metrics (binary: per-image Dice/IoU/precision/recall; multi-class: mIoU)."""
    if m and "per_image" in m:
        p = m["per_image"]
        click.echo(f"  {name:4s} Dice {p['dice']:.4f}  IoU {p['iou']:.4f}  precision {p['precision']:.4f}  recall {p['recall']:.4f}  (per-image mean, {m['n_images']} images)")
    elif m:
        click.echo(f"  {name:4s} mIoU {m['miou']:.4f}  mean Dice {m['mean_dice']:.4f}  pixel acc {m['pixel_accuracy']:.4f}")
