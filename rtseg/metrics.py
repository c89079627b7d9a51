"""Segmentation metrics — the one definition for the whole project (docs/networks.md §5).

Binary (``C = 1``): the prediction is ``sigmoid(logits) > 0.5`` (⇔ ``logits > 0``). Dice, IoU,
accuracy, recall (sensitivity), specificity and precision are reported two ways:

* ``per_image`` — the mean over images of each image's score (the polyp literature's convention);
* ``global`` — micro-averaged from the confusion counts summed over the data set.

Empty cases (a ratio whose denominator is 0) score 1 when there was nothing to get wrong and 0
otherwise: Dice/IoU of an image whose ground truth and prediction are both empty is 1; recall with an
empty ground truth is 1 if the prediction is empty too, else 0; precision with an empty prediction
is 1 if the ground truth is empty too, else 0; specificity with no negative pixel is 1.

Multi-class: confusion-matrix IoU per class (classes absent from both prediction and ground truth
are excluded from the mean), mIoU, mean Dice and pixel accuracy, with ``ignore_index`` pixels
excluded. Pixels outside ``valid`` (letterbox padding) are excluded everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BINARY_KEYS = ("dice", "iou", "accuracy", "recall", "specificity", "precision")


def _ratio(num: np.ndarray, den: np.ndarray, empty_ok: np.ndarray) -> np.ndarray:
    """``num/den``; where ``den == 0`` → 1 if ``empty_ok`` else 0."""
    num = num.astype(np.float64)
    den = den.astype(np.float64)
    out = np.where(den > 0, num / np.maximum(den, 1), np.where(empty_ok, 1.0, 0.0))
    return out


def binary_scores(tp, fp, fn, tn) -> dict[str, np.ndarray]:
    """Scores from confusion counts (scalars or arrays of per-image counts), §5 conventions."""
    tp, fp, fn, tn = (np.asarray(v, dtype=np.int64) for v in (tp, fp, fn, tn))
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, (fp + fn) == 0),
        "iou": _ratio(tp, tp + fp + fn, (fp + fn) == 0),
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn, np.ones_like(tp, dtype=bool)),
        "recall": _ratio(tp, tp + fn, fp == 0),
        "specificity": _ratio(tn, tn + fp, np.ones_like(tp, dtype=bool)),
        "precision": _ratio(tp, tp + fp, fn == 0),
    }


def binary_confusion(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Per-image confusion counts ``int64[N, 4]`` = (tp, fp, fn, tn).

    Args:
        pred, target: ``[N, H, W]`` (or ``[H, W]``) of bool/0-1 ints.
        valid: optional ``bool`` of the same shape; False pixels are ignored.
    """
    p = np.asarray(pred).astype(bool)
    t = np.asarray(target).astype(bool)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and target {t.shape} differ in shape")
    if p.ndim == 2:
        p, t = p[None], t[None]
        valid = None if valid is None else np.asarray(valid)[None]
    n = p.shape[0]
    p = p.reshape(n, -1)
    t = t.reshape(n, -1)
    if valid is None:
        v = np.ones_like(p)
    else:
        v = np.broadcast_to(np.asarray(valid, dtype=bool), (n,) + tuple(np.asarray(pred).shape[-2:])).reshape(n, -1)
    tp = (p & t & v).sum(1)
    fp = (p & ~t & v).sum(1)
    fn = (~p & t & v).sum(1)
    tn = (~p & ~t & v).sum(1)
    return np.stack([tp, fp, fn, tn], axis=1).astype(np.int64)


@dataclass
class BinaryMetrics:
    """Accumulates binary confusion counts image by image; :meth:`compute` gives §5's table."""

    counts: list = field(default_factory=list)

    def update(self, pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add a batch: ``pred``/``target`` ``[N, H, W]`` bool or {0,1}; ``valid`` optional bool mask."""
        self.counts.append(binary_confusion(pred, target, valid))

    def update_counts(self, counts: np.ndarray) -> None:
        """Add precomputed ``int64[N, 4]`` (tp, fp, fn, tn) rows (used by distributed reduction)."""
        self.counts.append(np.asarray(counts, dtype=np.int64).reshape(-1, 4))

    def all_counts(self) -> np.ndarray:
        return np.concatenate(self.counts) if self.counts else np.zeros((0, 4), np.int64)

    def compute(self) -> dict:
        """``{"n_images", "per_image": {key: mean}, "global": {key: value}}`` for :data:`BINARY_KEYS`."""
        c = self.all_counts()
        if len(c) == 0:
            return {"n_images": 0, "per_image": {k: float("nan") for k in BINARY_KEYS},
                    "global": {k: float("nan") for k in BINARY_KEYS}}
        per = binary_scores(c[:, 0], c[:, 1], c[:, 2], c[:, 3])
        tot = c.sum(0)
        glob = binary_scores(*tot)
        return {"n_images": int(len(c)),
                "per_image": {k: float(per[k].mean()) for k in BINARY_KEYS},
                "global": {k: float(glob[k]) for k in BINARY_KEYS}}


@dataclass
class MulticlassMetrics:
    """Confusion-matrix metrics for C classes with an ``ignore_index`` (§5, multi-class)."""

    num_classes: int
    ignore_index: int | None = 255
    matrix: np.ndarray | None = None

    def __post_init__(self):
        if self.matrix is None:
            self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add a batch of class-index maps ``[N, H, W]`` (rows of the matrix = target, cols = pred)."""
        p = np.asarray(pred).reshape(-1).astype(np.int64)
        t = np.asarray(target).reshape(-1).astype(np.int64)
        keep = (t >= 0) & (t < self.num_classes)
        if self.ignore_index is not None:
            keep &= t != self.ignore_index
        if valid is not None:
            keep &= np.broadcast_to(np.asarray(valid, bool), np.asarray(target).shape).reshape(-1)
        idx = t[keep] * self.num_classes + np.clip(p[keep], 0, self.num_classes - 1)
        self.matrix += np.bincount(idx, minlength=self.num_classes ** 2).reshape(self.num_classes, self.num_classes)

    def compute(self) -> dict:
        """``{"miou", "per_class_iou" (list, NaN where absent), "mean_dice", "pixel_accuracy"}``."""
        m = self.matrix.astype(np.float64)
        tp = np.diag(m)
        fp = m.sum(0) - tp
        fn = m.sum(1) - tp
        union = tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            dice = np.where(union > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        total = m.sum()
        return {
            "miou": float(np.nanmean(iou)) if np.any(union > 0) else float("nan"),
            "per_class_iou": [None if np.isnan(v) else float(v) for v in iou],
            "mean_dice": float(np.nanmean(dice)) if np.any(union > 0) else float("nan"),
            "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
        }


def pair_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two binary masks (``[H, W]`` bool or {0, 1}); two empty masks score 1 (§5's convention)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def class_pair_iou(a: np.ndarray, b: np.ndarray, num_classes: int) -> float:
    """Agreement of two class-index maps ``uint8[H, W]``: binary models (``num_classes`` 1 or 2, maps of
    0/1) → IoU of the foreground (two empty maps: 1); multi-class → mean IoU over the classes present
    in either map."""
    if num_classes <= 2:  # 0/1 maps: bitwise on the uint8 maps, no temporary bool arrays (~20 µs at 192²)
        union = np.count_nonzero(a | b)
        return 1.0 if union == 0 else np.count_nonzero(a & b) / union
    n = max(int(num_classes), int(a.max(initial=0)) + 1, int(b.max(initial=0)) + 1)
    m = np.bincount(a.reshape(-1).astype(np.int64) * n + b.reshape(-1), minlength=n * n).reshape(n, n)
    tp = np.diag(m)
    union = m.sum(0) + m.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if present.any() else 1.0


class FlickerMeter:
    """Temporal flicker of a mask sequence: mean over consecutive frames of 1 − IoU(mask_t, mask_t+1).

    Feed masks in frame order with :meth:`update` (class-index maps ``uint8[H, W]``; the IoU is
    :func:`class_pair_iou`). ``value`` is NaN before the second mask; 0 = perfectly stable, 1 = no
    overlap between any two consecutive masks.
    """

    def __init__(self, num_classes: int = 1):
        self.num_classes = int(num_classes)
        self.prev: np.ndarray | None = None
        self.total = 0.0
        self.pairs = 0

    def update(self, mask: np.ndarray) -> float:
        """Add the next mask; returns this pair's 1 − IoU (NaN for the first mask)."""
        prev, self.prev = self.prev, mask
        if prev is None:
            return float("nan")
        d = 1.0 - class_pair_iou(prev, mask, self.num_classes)
        self.total += d
        self.pairs += 1
        return d

    @property
    def value(self) -> float:
        """Mean 1 − IoU over the consecutive pairs seen so far (NaN with fewer than two masks)."""
        return self.total / self.pairs if self.pairs else float("nan")
