"""Evaluation of any backend on labelled images: the metric table of docs/networks.md §5 (library part of ``rtseg eval``).

Every image is preprocessed exactly as the stream does it (``Preprocessor`` with the model's resize
policy), run through the backend, and the prediction is mapped back to the image's own resolution
(logits resized bilinearly, then thresholded / arg-maxed) before it is compared with the original
mask, so metrics on full-resolution sets (PolypGen) are at full resolution.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from .data.folder import read_sample
from .data.transforms import Preprocessor, logits_to_frame
from .errors import RtsegError
from .metrics import BINARY_KEYS, BinaryMetrics, MulticlassMetrics

#: images (or video frames) per engine call in ``rtseg eval`` (image and video evaluation alike)
EVAL_BATCH_SIZE = 8


def resolve_samples(data: str | None, split: str | None, model_meta: dict, data_format: str | None = None):
    """(samples, reader, description) to evaluate: ``reader(sample) -> (uint8[h, w, 3] RGB, uint8[h, w] labels)``.

    Without ``--data`` the model's training data is used; with the training data the default split
    is ``test``, with any other folder it is ``all``. The layout is ``--data-format``, else the
    format the model was trained on (for its own data), else detected.
    """
    from .data.formats import detect_format, get_format

    mdata = model_meta.get("data") or {}
    train_root = mdata.get("root")
    root = Path(data) if data else (Path(train_root) if train_root else None)
    if root is None:
        raise RtsegError("no --data given and the model records no training data; pass --data DIR (images/ + masks/)")
    if not root.exists():
        raise RtsegError(f"data folder {root} does not exist; pass --data DIR with images/ and masks/")
    same = train_root is not None and Path(train_root).resolve() == root.resolve()
    name = data_format or (mdata.get("format") if same and mdata.get("format") else None) or detect_format(root)
    fmt = get_format(name)
    if same and not data and mdata.get("fingerprint"):
        _check_fingerprint(fmt, root, mdata["fingerprint"])
    if split is None:
        split = "test" if same else "all"
    if split == "all":
        samples = fmt.all_samples(root)
        return samples, fmt.read, f"{root} (all {len(samples)}, {fmt.name})"
    if split not in ("train", "val", "test"):
        raise RtsegError(f"unknown --split {split!r}; use train, val, test or all")
    parts = fmt.splits(root)
    n = sum(len(v) for v in parts.values())
    return parts[split], fmt.read, f"{root} ({split} split, {len(parts[split])} of {n}, {fmt.name})"


def _check_fingerprint(fmt, root: Path, recorded: str) -> None:
    """The model's own training folder (``rtseg eval`` without ``--data``; its path is relative to where
    the command runs) must be the data the model was trained on: same stems and file sizes.

    Raises:
        RtsegError: another folder of that name (one line naming both fingerprints and the fix).
    """
    from .data.folder import fingerprint

    here = fingerprint(fmt.all_samples(root))
    if here != recorded:
        raise RtsegError(f"{root} is not the data this model was trained on (fingerprint {here[:12]} ≠ recorded "
                         f"{recorded[:12]}; its path is relative to the current folder); run from the folder the model "
                         f"names, or pass --data DIR and --split explicitly")


def colorize(labels: np.ndarray, palette, ignore_index: int | None = None) -> np.ndarray:
    """Class map ``uint8[h, w]`` → ``uint8[h, w, 3]`` RGB with the model's palette (ignore → white)."""
    lut = np.zeros((256, 3), np.uint8)
    pal = np.asarray(palette, np.uint8).reshape(-1, 3)
    lut[: len(pal)] = pal
    if ignore_index is not None:
        lut[ignore_index] = 255
    return lut[labels]


def overlay_grid(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], palette, ignore_index=None,
                 height: int = 192, alpha: float = 0.5) -> np.ndarray:
    """Grid ``uint8[H, W, 3]``: one row per sample, columns image | ground truth | prediction
    (labels blended over the image, both at ``height`` pixels)."""
    out = []
    for img, gt, pred in rows:
        h, w = img.shape[:2]
        nw = max(1, round(w * height / h))
        im = cv2.resize(img, (nw, height), interpolation=cv2.INTER_AREA)
        cols = [im]
        for lab in (gt, pred):
            lab_r = cv2.resize(lab, (nw, height), interpolation=cv2.INTER_NEAREST)
            col = colorize(lab_r, palette, ignore_index)
            fg = (lab_r > 0)[..., None] if len(np.asarray(palette)) <= 2 else np.ones_like(lab_r, bool)[..., None]
            cols.append(np.where(fg, (im * (1 - alpha) + col * alpha).astype(np.uint8), im))
        out.append(np.concatenate([np.pad(c, ((2, 2), (2, 2), (0, 0))) for c in cols], axis=1))
    width = max(r.shape[1] for r in out)
    out = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in out]
    return np.concatenate(out, axis=0)


def evaluate_backend(backend, samples, batch_size: int = EVAL_BATCH_SIZE, limit: int = 0, progress: bool = False, reader=None,
                     keep: int = 0, presence="model") -> dict:
    """Evaluate ``backend`` (any :class:`rtseg.runtime.base.Backend`) on labelled ``samples``.

    Returns §5's metrics (binary: ``per_image``/``global`` dicts; multi-class: mIoU etc.) plus
    ``n_images``, ``ms_per_image`` (inference only, mean) and, for binary models, ``presence`` (the
    rule applied, or ``None``) and ``false_detections`` / ``misses`` (images without / with the
    object in the truth that show something / nothing). ``reader(sample) -> (image, labels)``
    is the data format's reader (labels: {0,1} binary or train ids with 255 = ignore); default reads
    binary mask files. ``presence``: ``"model"`` (default) applies the model's presence decision
    (:func:`rtseg.decision.model_presence`; what the stream shows), a
    :class:`rtseg.decision.PresenceRule` applies that one, ``None`` scores the raw network output.
    """
    from tqdm import tqdm

    from .decision import model_presence
    from .limits import check_batch

    check_batch(batch_size, backend.input_hw)
    mm = backend.model_info
    binary = backend.num_classes == 1
    rule = model_presence(mm, backend.num_classes) if presence == "model" else (presence if binary else None)
    shown = _Shown()
    ignore = mm.get("ignore_index")
    reader = reader or (lambda s: read_sample(s, binary=binary))
    metrics = BinaryMetrics() if binary else MulticlassMetrics(backend.num_classes, ignore)
    kept: list = []
    pre = Preprocessor(backend.input_hw, mm.get("resize", "stretch"))
    if limit:
        samples = samples[:limit]
    H, W = backend.input_hw
    infer_s = 0.0
    for i in tqdm(range(0, len(samples), batch_size), disable=None if progress else True, leave=False, desc="eval"):
        chunk = samples[i:i + batch_size]
        pairs = [reader(s) for s in chunk]
        batch = np.empty((len(chunk), H, W, 3), np.uint8)
        geoms = [pre(img, out=batch[j])[1] for j, (img, _) in enumerate(pairs)]
        t0 = time.perf_counter()
        logits = backend.infer_u8(batch)
        infer_s += time.perf_counter() - t0
        present = rule.present(logits) if rule is not None else np.ones(len(chunk), bool)
        for (img, mask), g, z, ok in zip(pairs, geoms, logits, present):
            pred = logits_to_frame(z, g.box, g.src_hw) if ok else np.zeros(g.src_hw, np.uint8)
            if binary:
                truth = (mask > 0).astype(np.uint8)
                metrics.update(pred[None] > 0, truth[None] > 0)
                shown.update(bool(pred.any()), bool(truth.any()))
                if len(kept) < keep:
                    kept.append((img, truth, pred))
            else:
                metrics.update(pred[None], mask[None])
                if len(kept) < keep:
                    kept.append((img, mask, pred))
    out = metrics.compute()
    if binary:
        out |= {"presence": rule.to_dict() if rule is not None else None, **shown.result()}
    out["n_images"] = len(samples)
    out["ms_per_image"] = 1000.0 * infer_s / max(1, len(samples))
    if keep:
        out["_kept"] = kept
    return out


class _Shown:
    """Image-level counts of a binary evaluation: false detections and misses."""

    def __init__(self):
        self.fp = self.empty = self.miss = self.full = 0

    def update(self, pred_any: bool, truth_any: bool) -> None:
        if truth_any:
            self.full += 1
            self.miss += not pred_any
        else:
            self.empty += 1
            self.fp += pred_any

    def result(self) -> dict:
        return {"false_detections": {"images": self.fp, "of": self.empty},
                "misses": {"images": self.miss, "of": self.full}}


def format_table(result: dict) -> str:
    """§5 table as text: rows = metrics, columns = per-image mean and dataset-global."""
    if "per_image" in result:
        lines = [f"{'metric':12s} {'per-image':>10s} {'global':>10s}"]
        for k in BINARY_KEYS:
            lines.append(f"{k:12s} {result['per_image'][k]:10.4f} {result['global'][k]:10.4f}")
        if "false_detections" in result:
            fd, ms = result["false_detections"], result["misses"]
            rule = result.get("presence")
            lines.append(f"false detections {fd['images']}/{fd['of']} images with empty truth, misses {ms['images']}/{ms['of']}; "
                         + (f"presence: peak logit ≥ {rule['min_peak']:g}, ≥ {rule['min_area']} px" if rule
                            else "raw network output (logit > 0)"))
    else:
        lines = [f"mIoU {result['miou']:.4f}   mean Dice {result['mean_dice']:.4f}   pixel accuracy {result['pixel_accuracy']:.4f}"]
        names = result.get("class_names") or [str(i) for i in range(len(result["per_class_iou"]))]
        for n, v in zip(names, result["per_class_iou"]):
            lines.append(f"  {n:14s} IoU {'   n/a' if v is None else f'{v:.4f}'}")
    return "\n".join(lines)
