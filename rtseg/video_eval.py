"""Video evaluation (``rtseg eval --video CLIP --masks DIR``): per-frame accuracy and temporal stability.

The clip is decoded through the stream's own source path (:class:`rtseg.stream.StreamPipeline`:
PyAV decode → ``yuv420p`` → preprocess → batched engine → temporal step), so the decoded video
frames are scored, not the images the video was made from. Frame ``k`` (0-based, decode order) is
scored against the ``k``-th mask file of ``--masks`` in sorted order. Each frame's logits are mapped
back onto the mask's resolution as ``rtseg eval`` does for images (binary: bilinear logits, then
``logit > 0``; multi-class: argmax, then nearest).

Per class (binary models: the foreground class; multi-class: every class, ``ignore_index`` pixels
excluded), with the conventions of :mod:`rtseg.metrics` (empty truth and empty prediction score 1):

* ``dice``, ``iou`` — per-frame mean, and ``global`` (from the confusion counts summed over frames);
* ``false_detections`` — share of the frames without the class in the truth that have any predicted
  pixel of it; ``misses`` — share of the frames with the class in the truth that have none predicted;
* ``flicker`` — mean over consecutive frames of 1 − IoU(mask_t, mask_t+1) (two empty masks: IoU 1),
  of the prediction and of the truth, at the masks' resolution, and their ratio.

Outputs: a dict (JSON-serialisable, with the per-frame series), :func:`format_video_table`, and
:func:`plot_video` (PNG: per-frame Dice and flicker over time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import RtsegError
from .metrics import binary_confusion, binary_scores, pair_iou
from .stream.pipeline import StreamOptions, StreamPipeline
from .stream.temporal import describe_temporal

MASK_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass
class VideoEvalOptions:
    """Options of :func:`evaluate_video` (the ``rtseg eval --video`` flags).

    Attributes:
        temporal, infer_every, ema: the temporal mode (:mod:`rtseg.stream.temporal`).
        batch_size: frames per engine call (≥ 1).
        max_frames: score only the first N frames (and the first N masks); ``None``: all.
        threshold: gray level above which a binary mask pixel is foreground (JPEG masks: 127).
    """

    temporal: str = "off"
    infer_every: int = 1
    ema: float = 0.3
    batch_size: int = 4
    max_frames: int | None = None
    threshold: int = 127


def list_masks(folder: str | Path) -> list[Path]:
    """The mask files of ``folder`` in sorted file-name order.

    Raises:
        RtsegError: the folder does not exist or holds no image file.
    """
    d = Path(folder)
    if not d.is_dir():
        raise RtsegError(f"--masks {d} is not a folder; pass the folder of per-frame masks (one image per frame)")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in MASK_SUFFIXES)
    if not files:
        raise RtsegError(f"--masks {d} holds no mask image ({', '.join(MASK_SUFFIXES)}); pass the folder of per-frame masks")
    return files


def read_truth(path: Path, binary: bool, threshold: int = 127) -> np.ndarray:
    """One truth mask: binary → ``uint8[h, w]`` in {0, 1} (gray > ``threshold``); multi-class →
    ``uint8[h, w]`` class indices as stored (PNG).

    Raises:
        RtsegError: an unreadable file.
    """
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if binary else cv2.IMREAD_UNCHANGED)
    if m is None:
        raise RtsegError(f"cannot read mask {path}; check that it is an image file")
    if m.ndim == 3:
        m = m[..., 0]
    return (m > threshold).astype(np.uint8) if binary else m.astype(np.uint8)


def logits_to_frame(z: np.ndarray, box: tuple[int, int, int, int], hw: tuple[int, int]) -> np.ndarray:
    """Network-size logits ``float32[C, H, W]`` → class map ``uint8[h, w]`` at ``hw`` (pixels):
    the content ``box`` (y0, y1, x0, x1) is cropped; binary: bilinear logits then ``> 0``;
    multi-class: argmax then nearest."""
    y0, y1, x0, x1 = box
    h, w = hw
    if z.shape[0] == 1:
        zz = z[0, y0:y1, x0:x1]
        if zz.shape != (h, w):
            zz = cv2.resize(zz, (w, h), interpolation=cv2.INTER_LINEAR)
        return (zz > 0).astype(np.uint8)
    pred = z[:, y0:y1, x0:x1].argmax(0).astype(np.uint8)
    if pred.shape != (h, w):
        pred = cv2.resize(pred, (w, h), interpolation=cv2.INTER_NEAREST)
    return pred


class ClassSeries:
    """Per-frame record of one class: confusion counts, presence and flicker of prediction and truth.

    :meth:`update` takes ``bool[h, w]`` prediction and truth of the class (and an optional ``valid``
    mask) frame by frame, in order; :meth:`result` gives the figures of the module docstring.
    """

    def __init__(self):
        self.counts: list[np.ndarray] = []  # int64[4] (tp, fp, fn, tn) per frame
        self.pred_any: list[bool] = []
        self.truth_any: list[bool] = []
        self.flicker_pred: list[float] = []  # 1 − IoU with the previous frame (NaN for frame 0)
        self.flicker_truth: list[float] = []
        self._prev: tuple[np.ndarray, np.ndarray] | None = None

    def update(self, pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add the next frame (``bool[h, w]`` each; ``valid`` False pixels are ignored)."""
        if valid is not None:
            pred, truth = pred & valid, truth & valid
        self.counts.append(binary_confusion(pred, truth)[0])
        self.pred_any.append(bool(pred.any()))
        self.truth_any.append(bool(truth.any()))
        if self._prev is None:
            self.flicker_pred.append(math.nan)
            self.flicker_truth.append(math.nan)
        else:
            self.flicker_pred.append(1.0 - pair_iou(self._prev[0], pred))
            self.flicker_truth.append(1.0 - pair_iou(self._prev[1], truth))
        self._prev = (pred, truth)

    def result(self) -> dict:
        """Dice/IoU (per-frame mean and global), false detections, misses, flicker, per-frame series."""
        c = np.asarray(self.counts, dtype=np.int64).reshape(-1, 4)
        per = binary_scores(c[:, 0], c[:, 1], c[:, 2], c[:, 3])
        glob = binary_scores(*c.sum(0))
        pred_any, truth_any = np.asarray(self.pred_any, bool), np.asarray(self.truth_any, bool)
        empty, present = ~truth_any, truth_any
        fp_frames, missed = int((pred_any & empty).sum()), int((~pred_any & present).sum())
        fl_p, fl_t = _nanmean(self.flicker_pred), _nanmean(self.flicker_truth)
        return {
            "frames": int(len(c)), "dice": _mean(per["dice"]), "iou": _mean(per["iou"]),
            "global": {"dice": float(glob["dice"]), "iou": float(glob["iou"])},
            "false_detections": fp_frames / int(empty.sum()) if empty.any() else math.nan,
            "false_detection_frames": fp_frames, "empty_truth_frames": int(empty.sum()),
            "misses": missed / int(present.sum()) if present.any() else math.nan,
            "missed_frames": missed, "truth_frames": int(present.sum()),
            "flicker": {"prediction": fl_p, "truth": fl_t,
                        "ratio": fl_p / fl_t if fl_t and not math.isnan(fl_t) else math.nan},
            "per_frame": {"dice": [float(v) for v in per["dice"]], "iou": [float(v) for v in per["iou"]],
                          "flicker_prediction": list(self.flicker_pred), "flicker_truth": list(self.flicker_truth),
                          "prediction_pixels": [int(v) for v in c[:, 0] + c[:, 1]],
                          "truth_pixels": [int(v) for v in c[:, 0] + c[:, 2]]},
        }


def _mean(a: np.ndarray) -> float:
    return float(np.mean(a)) if len(a) else math.nan


def _nanmean(v: list[float]) -> float:
    a = np.asarray(v, dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else math.nan


class VideoScorer:
    """Scores class maps frame by frame against the truth masks of ``mask_files`` (frame k ↔ file k).

    Args:
        mask_files: truth masks in frame order.
        num_classes: C of the model (1: binary).
        class_names: names of the classes (binary: [background, foreground]) or ``None``.
        ignore_index: multi-class truth label excluded from scoring (``None``: none).
        threshold: binary masks: gray > threshold is foreground.
    """

    def __init__(self, mask_files: list[Path], num_classes: int, class_names=None, ignore_index: int | None = None,
                 threshold: int = 127):
        self.files = mask_files
        self.binary = num_classes == 1
        self.threshold = threshold
        self.ignore = ignore_index
        ids = [1] if self.binary else list(range(num_classes))
        names = list(class_names or [])
        self.classes = {(names[i] if i < len(names) else f"class {i}"): i for i in ids}
        self.series = {name: ClassSeries() for name in self.classes}
        self.times: list[float] = []
        self.frames = 0
        self._cached: tuple[int, np.ndarray] | None = None  # (k, truth mask k)

    def truth_hw(self, k: int) -> tuple[int, int] | None:
        """(h, w) of mask ``k``, or ``None`` past the last mask (the frame is only counted)."""
        if k >= len(self.files):
            return None
        return self._truth(k).shape

    def _truth(self, k: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != k:
            self._cached = (k, read_truth(self.files[k], self.binary, self.threshold))
        return self._cached[1]

    def update(self, pred: np.ndarray | None, t_s: float) -> None:
        """Score the next frame's class map ``uint8[h, w]`` (``None`` past the last mask) at time ``t_s`` (s)."""
        k = self.frames
        self.frames += 1
        if pred is None:
            return
        truth = self._truth(k)
        valid = None if self.binary or self.ignore is None else truth != self.ignore
        for name, c in self.classes.items():
            self.series[name].update(pred == c, truth == c, valid)
        self.times.append(float(t_s))

    def result(self) -> dict:
        """``{"classes": {name: ClassSeries.result()}, "times_s": [...]}``."""
        return {"classes": {n: s.result() for n, s in self.series.items()}, "times_s": list(self.times)}


class VideoEvalPipeline(StreamPipeline):
    """The stream with every frame's temporal logits scored instead of drawn (:meth:`postprocess`)."""

    keep_logits = True

    def __init__(self, backend, clip, options: StreamOptions, scorer: VideoScorer):
        super().__init__(backend, [clip], [], options)
        self.scorer = scorer

    def postprocess(self, item):
        """Map ``item.logits`` onto the frame's truth mask and score it; the frame passes on unchanged."""
        hw = self.scorer.truth_hw(self.scorer.frames)
        pred = None if hw is None else logits_to_frame(item.logits, item.geom.box, hw)
        self.scorer.update(pred, float(item.frame.pts * item.frame.time_base) if item.frame.pts is not None else 0.0)
        return item.frame


def _count_check(clip, n_frames: int, n_masks: int, masks) -> None:
    if n_frames != n_masks:
        raise RtsegError(f"{clip} has {n_frames} frames but {masks} has {n_masks} masks; frame k is scored against "
                         f"the k-th mask in sorted order, so pass one mask per frame (or --max-frames N for the first N)")


def _container_frames(clip) -> int:
    """Frame count the container declares (0 when unknown)."""
    import av

    try:
        with av.open(str(clip)) as c:
            return int(c.streams.video[0].frames or 0) if c.streams.video else 0
    except (av.error.FFmpegError, OSError):
        return 0  # the stream's source reports an unreadable clip with its own one-line error


def evaluate_video(backend, clip: str | Path, masks: str | Path, options: VideoEvalOptions | None = None) -> dict:
    """Run the stream over ``clip`` with ``backend`` and score every frame against ``masks``.

    Args:
        backend: an :class:`rtseg.runtime.base.Backend` (logits ``float32[N, C, H, W]``).
        clip: a video file (any container FFmpeg reads).
        masks: folder of per-frame masks (frame k ↔ k-th file in sorted order; binary: gray > 127).
        options: :class:`VideoEvalOptions`.

    Returns:
        ``{"clip", "masks", "frames", "temporal", "backend", "fps", "classes": {name: figures},
        "times_s"}`` (figures: see the module docstring; ``fps`` is the pipeline's without encoding).

    Raises:
        RtsegError: a missing or unreadable clip or mask folder, a frame count that differs from the
            mask count, or a bad option.
    """
    o = options or VideoEvalOptions()
    files = list_masks(masks)
    if o.max_frames is not None:
        if len(files) < o.max_frames:
            _count_check(clip, o.max_frames, len(files), masks)
        files = files[:o.max_frames]
    if not Path(clip).is_file():
        raise RtsegError(f"--video {clip} does not exist; pass a video file")
    declared = _container_frames(clip)
    if o.max_frames is None and declared and declared != len(files):
        _count_check(clip, declared, len(files), masks)
    mm = backend.meta.get("model", {}) if isinstance(backend.meta, dict) else {}
    scorer = VideoScorer(files, backend.num_classes, mm.get("class_names"), mm.get("ignore_index"), o.threshold)
    sopts = StreamOptions(batch_size=o.batch_size, max_frames=o.max_frames, overlay=False, temporal=o.temporal,
                          infer_every=o.infer_every, ema=o.ema)
    report = VideoEvalPipeline(backend, str(clip), sopts, scorer).run()
    _count_check(clip, scorer.frames, len(files), masks)
    return {"clip": str(clip), "masks": str(masks), "frames": scorer.frames,
            "temporal": describe_temporal(o.temporal, o.infer_every, o.ema), "backend": backend.describe(),
            "fps": report.fps, **scorer.result()}


def format_video_table(result: dict) -> str:
    """The result as a text table: one row per class (Dice/IoU per-frame mean and global, false
    detections, misses, flicker of prediction and truth and their ratio)."""
    lines = [f"video {result['clip']}: {result['frames']} frames, temporal {result['temporal']}, "
             f"{result['backend']} ({result['fps']:.1f} FPS without encoding)",
             f"  {'class':<12}{'Dice':>7}{'(glob)':>8}{'IoU':>7}{'(glob)':>8}{'false det.':>14}{'misses':>14}"
             f"{'flicker pred':>14}{'truth':>8}{'ratio':>7}"]
    for name, r in result["classes"].items():
        fd = f"{r['false_detection_frames']}/{r['empty_truth_frames']}"
        ms = f"{r['missed_frames']}/{r['truth_frames']}"
        f = r["flicker"]
        lines.append(f"  {name:<12}{r['dice']:>7.4f}{r['global']['dice']:>8.4f}{r['iou']:>7.4f}{r['global']['iou']:>8.4f}"
                     f"{fd:>14}{ms:>14}{f['prediction']:>14.4f}{f['truth']:>8.4f}{f['ratio']:>7.2f}")
    return "\n".join(lines)


def plot_video(result: dict, path: str | Path) -> Path:
    """PNG of per-frame Dice (top; frames with the class in the truth shaded) and per-frame flicker
    1 − IoU(mask_t, mask_t+1) of prediction and truth (bottom) over time (s), one colour per class.

    Raises:
        RtsegError: the file cannot be written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.asarray(result["times_s"], dtype=np.float64)
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True)
    for name, r in result["classes"].items():
        pf = r["per_frame"]
        line, = a1.plot(t, pf["dice"], lw=1, label=f"{name}: Dice (mean {r['dice']:.3f})")
        if len(result["classes"]) == 1:
            a1.fill_between(t, 0, 1, where=np.asarray(pf["truth_pixels"]) > 0, color="0.9", step="mid",
                            label="truth has the class")
        a2.plot(t, pf["flicker_prediction"], lw=1, color=line.get_color(),
                label=f"{name}: prediction ({r['flicker']['prediction']:.3f})")
        a2.plot(t, pf["flicker_truth"], lw=1, ls="--", color=line.get_color(),
                label=f"{name}: truth ({r['flicker']['truth']:.3f})")
    a1.set_ylabel("Dice per frame")
    a1.set_ylim(-0.02, 1.02)
    a1.legend(loc="lower left", fontsize=8)
    a1.set_title(f"{Path(result['clip']).name} — temporal {result['temporal']}", fontsize=10)
    a2.set_ylabel("1 − IoU(t−1, t)")
    a2.set_xlabel("time (s)")
    a2.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    from .safe_io import save_figure

    return save_figure(fig, path, "--plot")


__all__ = ["ClassSeries", "VideoEvalOptions", "VideoEvalPipeline", "VideoScorer", "evaluate_video",
           "format_video_table", "list_masks", "logits_to_frame", "plot_video", "read_truth"]
