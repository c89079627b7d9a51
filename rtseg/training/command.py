"""``rtseg train``: train a network on a labelled image folder (see :mod:`rtseg.training.loop`)."""

from __future__ import annotations

import json

import click

from ..models import list_models


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


@click.command("train")
@click.option("--model", "model", default="eunet-s", show_default=True, help=f"Registry name ({', '.join(list_models())}).")
@click.option("--data", required=True, type=click.Path(), help="Dataset folder (images/ + masks/, or CamVid layout).")
@click.option("--data-format", type=click.Choice(["polyp", "camvid"]), default="polyp", show_default=True,
              help="polyp: binary masks (>127); camvid: class-index PNGs, 11 = void (ignored).")
@click.option("--img-size", default="256", show_default=True, help="Network input, N or HxW pixels.")
@click.option("--epochs", default=30, show_default=True, type=int)
@click.option("--batch-size", default=8, show_default=True, type=int)
@click.option("--lr", default=2e-3, show_default=True, type=float, help="Peak learning rate (OneCycle, AdamW).")
@click.option("--weight-decay", default=1e-4, show_default=True, type=float)
@click.option("--out", default="runs/train", show_default=True, type=click.Path(), help="Run folder (also the checkpoint folder).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last epoch.")
@click.option("--resize", type=click.Choice(["stretch", "letterbox"]), default="stretch", show_default=True)
@click.option("--widths", default=None, help="EUNet stage widths, e.g. 16,32,64,128.")
@click.option("--no-augment", is_flag=True, help="Disable augmentation.")
@click.option("--amp", type=click.Choice(["auto", "bf16", "off"]), default="auto", show_default=True,
              help="bf16 autocast: auto = only where the CPU has native bf16.")
@click.option("--threads", default=0, type=int, help="CPU threads (0 = all cores).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--max-images", default=0, type=int, help="Use at most N images (quick runs).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(model, data, data_format, img_size, epochs, batch_size, lr, weight_decay, out, resume, resize, widths,
          no_augment, amp, threads, seed, max_images, quiet):
    """Train a network: BCE+Dice (binary) or CE+Dice (multi-class), AdamW + OneCycle, best
    checkpoint by validation Dice/mIoU, test metrics at the end.

    Example: rtseg train --model eunet-s --data ../shared/data/kvasir-seg-256 --epochs 30 --out runs/eunet-s
    """
    from .loop import TrainConfig, train as run

    kw = {}
    if widths:
        kw["widths"] = [int(w) for w in widths.replace("x", ",").split(",")]
    cfg = TrainConfig(model=model, data=data, data_format=data_format, img_size=parse_size(img_size), epochs=epochs,
                      batch_size=batch_size, lr=lr, weight_decay=weight_decay, out=out, resume=resume, resize=resize,
                      model_kwargs=kw, augment=not no_augment, amp=amp, threads=threads, seed=seed,
                      max_images=max_images, progress=not quiet)
    s = run(cfg, log=click.echo)
    click.echo("")
    click.echo(f"done in {s['seconds'] / 60:.1f} min; best epoch {s['best_epoch']} of {s['epochs']}; checkpoint: {s['out']}")
    for name in ("val", "test"):
        m = s.get(name)
        if m and "per_image" in m:
            p = m["per_image"]
            click.echo(f"  {name:4s} Dice {p['dice']:.4f}  IoU {p['iou']:.4f}  precision {p['precision']:.4f}  recall {p['recall']:.4f}  (per-image mean, {m['n_images']} images)")
        elif m:
            click.echo(f"  {name:4s} mIoU {m['miou']:.4f}  mean Dice {m['mean_dice']:.4f}  pixel acc {m['pixel_accuracy']:.4f}")
