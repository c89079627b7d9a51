"""Losses, optimisers and schedules selectable by name from a recipe (``rtseg/configs/*.yaml``).

Losses take the model's train-mode output — a logits tensor ``float32[N, C, H, W]``, or a dict with
``"logits"`` plus auxiliary entries (GMSRF-Net: ``ds2/ds4/ds8`` deep-supervision logits;
ContraFusionNet: ``z``/``z_aux`` embeddings ``float32[N, 128]``) — and targets ``float32[N, 1, H, W]``
(binary) or ``int64[N, H, W]`` (multi-class, ``ignore_index`` = 255).

| name | definition | recipe |
|---|---|---|
| ``bce_dice`` | BCE-with-logits + (1 − per-image soft Dice) | rtseg default (binary) |
| ``bce`` | BCE-with-logits | EUNet (docs/networks.md §2.3) |
| ``dice`` | 1 − batch-global soft Dice, smooth 1 | VisionFuseNet (§1.4) |
| ``structure`` | structure loss on main + 3 deep-supervision maps | GMSRF-Net (§4.4) |
| ``ce_dice`` | CE(ignore) + λ_dice·multi-class Dice | multi-class default |
| ``ce_dice_infonce`` | CE(ignore) + λ_dice·Dice + λ_con·InfoNCE(z, z_aux) | ContraFusionNet (§3, decision 2) |
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import RtsegError
from .losses import bce_dice_loss, ce_dice_loss, soft_dice_loss

LOSSES = ("bce_dice", "bce", "dice", "structure", "ce_dice", "ce_dice_infonce")
OPTIMIZERS = ("adamw", "adam", "lion", "sgd")
SCHEDULERS = ("onecycle", "plateau", "cosine", "none")


def main_logits(out) -> torch.Tensor:
    """The main logits of a train- or eval-mode output."""
    if isinstance(out, dict):
        return out["logits"]
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def make_loss(name: str, binary: bool, lambda_dice: float = 0.5, lambda_con: float = 0.1,
              ignore_index: int = 255) -> Callable:
    """Loss function ``f(outputs, target, valid) -> scalar`` for the recipe's ``loss`` name.

    Raises:
        RtsegError: unknown name, or a binary loss for a multi-class task (and vice versa).
    """
    if name not in LOSSES:
        raise RtsegError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    if binary and name.startswith("ce"):
        raise RtsegError(f"loss {name!r} is for multi-class data; use bce_dice, bce, dice or structure for binary data")
    if not binary and not name.startswith("ce"):
        raise RtsegError(f"loss {name!r} is for binary data; use ce_dice or ce_dice_infonce for multi-class data")

    if name == "bce_dice":
        return lambda out, t, v: bce_dice_loss(main_logits(out).float(), t, v)
    if name == "bce":
        def bce(out, t, v):
            raw = F.binary_cross_entropy_with_logits(main_logits(out).float(), t, reduction="none")
            return (raw * v).sum() / v.sum().clamp_min(1)
        return bce
    if name == "dice":
        return lambda out, t, v: soft_dice_loss(main_logits(out).float(), t, v, smooth=1.0, per_image=False)
    if name == "structure":
        from .aux_losses import deep_supervision_loss

        def structure(out, t, v):
            if isinstance(out, dict):
                out = {k: x.float() for k, x in out.items()}
            return deep_supervision_loss(out, t)
        return structure
    if name == "ce_dice":
        return lambda out, t, v: ce_dice_loss(main_logits(out).float(), t, ignore_index, lambda_dice)

    from .aux_losses import info_nce

    def ce_dice_infonce(out, t, v):
        loss = ce_dice_loss(main_logits(out).float(), t, ignore_index, lambda_dice)
        if isinstance(out, dict) and "z" in out and out["z"].shape[0] >= 2:
            loss = loss + lambda_con * info_nce(out["z"].float(), out["z_aux"].float())
        return loss
    return ce_dice_infonce


def make_optimizer(name: str, params, lr: float, weight_decay: float, betas=(0.9, 0.999)) -> torch.optim.Optimizer:
    """``adamw`` | ``adam`` | ``lion`` (lion-pytorch, the maintained implementation) | ``sgd`` (momentum 0.9)."""
    betas = tuple(float(b) for b in betas)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, betas=betas)
    if name == "lion":
        from ..errors import require

        Lion = require("lion_pytorch", "train", "the lion optimizer").Lion
        return Lion(params, lr=lr, weight_decay=weight_decay, betas=betas)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise RtsegError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def make_scheduler(name: str, opt, lr: float, total_steps: int, epochs: int, plateau_patience: int = 5):
    """Returns ``(scheduler | None, step_per)`` with ``step_per`` in {"batch", "epoch", "metric", None}.

    ``onecycle`` steps per batch (max lr = ``lr``); ``cosine`` per batch; ``plateau`` is
    ReduceLROnPlateau (mode max on the validation score, factor 0.1) stepped per epoch.
    """
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total_steps, 1), pct_start=0.15), "batch"
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1)), "batch"
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.1, patience=plateau_patience), "metric"
    if name == "none":
        return None, None
    raise RtsegError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
