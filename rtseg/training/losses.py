"""Losses for binary and multi-class segmentation.

All take logits (never probabilities): binary ``float32[N, 1, H, W]`` with targets
``float32[N, 1, H, W]`` in {0, 1}; multi-class ``float32[N, C, H, W]`` with targets
``int64[N, H, W]`` (``ignore_index`` pixels excluded). An optional ``valid`` mask
``float32[N, 1, H, W]`` (0 on letterbox padding) excludes pixels from binary losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
                   smooth: float = 1.0, per_image: bool = True) -> torch.Tensor:
    """``1 − soft Dice`` of ``sigmoid(logits)`` vs ``target`` (binary).

    ``per_image=True`` averages per-image Dice (our metric's convention); ``False`` computes one
    batch-global Dice (VisionFuseNet's original, docs/networks.md §1.4). ``smooth`` is added to
    numerator and denominator. Returns a scalar.
    """
    p = torch.sigmoid(logits.float())
    t = target.float()
    if valid is not None:
        p = p * valid
        t = t * valid
    dims = (1, 2, 3) if per_image else (0, 1, 2, 3)
    inter = (p * t).sum(dims)
    den = p.sum(dims) + t.sum(dims)
    return (1 - (2 * inter + smooth) / (den + smooth)).mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
                  bce_weight: float = 1.0, dice_weight: float = 1.0) -> torch.Tensor:
    """``bce_weight·BCE-with-logits + dice_weight·(1 − soft Dice)`` (binary default loss). Scalar."""
    logits = logits.float()
    if valid is None:
        bce = F.binary_cross_entropy_with_logits(logits, target.float())
    else:
        raw = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none")
        bce = (raw * valid).sum() / valid.sum().clamp_min(1)
    return bce_weight * bce + dice_weight * soft_dice_loss(logits, target, valid)


def multiclass_dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255,
                         smooth: float = 1.0) -> torch.Tensor:
    """``1 − mean soft Dice`` over classes of ``softmax(logits)`` vs one-hot ``target`` (ignore excluded)."""
    c = logits.shape[1]
    p = torch.softmax(logits.float(), dim=1)
    keep = (target != ignore_index)
    t = torch.where(keep, target, torch.zeros_like(target))
    onehot = F.one_hot(t, c).permute(0, 3, 1, 2).float() * keep[:, None]
    p = p * keep[:, None]
    inter = (p * onehot).sum((0, 2, 3))
    den = p.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return (1 - (2 * inter + smooth) / (den + smooth)).mean()


def ce_dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255,
                 dice_weight: float = 0.5) -> torch.Tensor:
    """Cross-entropy (``ignore_index``) + ``dice_weight``·multi-class Dice loss. Scalar."""
    ce = F.cross_entropy(logits.float(), target, ignore_index=ignore_index)
    return ce + dice_weight * multiclass_dice_loss(logits, target, ignore_index)
