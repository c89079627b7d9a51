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

Clinical video figures (``clinical``; CADe systems are judged by these, not by per-frame Dice):

* ``dice_truth_frames`` — per-frame Dice over the frames with the class in the truth only;
* ``false_alarms`` — a false-alarm *activation* is a maximal run of consecutive frames without the
  class in the truth on which something is shown; its duration is its frame count × the frame period.
  Reported: all activations, and those lasting ≥ 0.5 / 1 / 2 s, as counts and per minute of
  class-free video (Holzwanger et al. 2021 score CADe false positives at these durations);
* ``detection_delay`` — an *episode* is a run of frames with the class in the truth (runs less than
  :data:`EPISODE_GAP_S` apart are one episode: an object hidden for a few frames is not a new one); its
  delay is the time from its first frame to the first frame whose shown mask overlaps the truth (s).
  Reported: each episode's delay, their mean and maximum, and the episodes never detected (``missed``).

What is scored is what the stream shows: the decision layer (:mod:`rtseg.decision`: the presence
rule and persistence) is applied unless ``raw``. ``masks`` ``None`` (``--masks none``) scores a clip
without the class in any frame (every truth mask empty, at the frame's size).

Outputs: a dict (JSON-serialisable, with the per-frame series), :func:`format_video_table`, and
:func:`plot_video` (PNG: per-frame Dice and flicker over time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data.transforms import logits_to_frame
from .decision import describe_decision
from .errors import RtsegError
from .evaluation import EVAL_BATCH_SIZE
from .metrics import binary_confusion, binary_scores, pair_iou
from .runtime.base import model_info_of
from .stream.pipeline import StreamOptions, StreamPipeline
from .stream.temporal import describe_temporal

MASK_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
#: truth runs closer than this (s) are one episode of :func:`clinical_figures`
EPISODE_GAP_S = 0.5
#: false-alarm activation durations reported (s)
ALARM_DURATIONS_S = (0.5, 1.0, 2.0)


@dataclass
class VideoEvalOptions:
    """Options of :func:`evaluate_video` (the ``rtseg eval --video`` flags).

    Attributes:
        temporal, infer_every, ema: the temporal mode (:mod:`rtseg.stream.temporal`).
        batch_size: frames per engine call (≥ 1).
        max_frames: score only the first N frames (and the first N masks); ``None``: all.
        threshold: gray level above which a binary mask pixel is foreground (JPEG masks: 127).
        raw, presence_threshold, presence_min_area, persist, hold: the decision layer, as in
            :class:`rtseg.stream.pipeline.StreamOptions` (``raw``: score the network's own masks).
    """

    temporal: str = "off"
    infer_every: int = 1
    ema: float = 0.3
    batch_size: int = EVAL_BATCH_SIZE
    max_frames: int | None = None
    threshold: int = 127
    raw: bool = False
    presence_threshold: float | None = None
    presence_min_area: int | None = None
    persist: int | None = None
    hold: int | None = None


def list_masks(folder: str | Path) -> list[Path]:
    """The mask files of ``folder`` in sorted file-name order.

    Raises:
        RtsegError: the folder does not exist or holds no image file, or one of them is not a regular
            file (a FIFO or device would block the reader: :func:`rtseg.safe_io.check_regular`).
    """
    from .safe_io import check_regular

    d = Path(folder)
    if not d.is_dir():
        raise RtsegError(f"--masks {d} is not a folder; pass the folder of per-frame masks (one image per frame)")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in MASK_SUFFIXES)
    if not files:
        raise RtsegError(f"--masks {d} holds no mask image ({', '.join(MASK_SUFFIXES)}); pass the folder of per-frame masks")
    for f in files:
        check_regular(f)
    return files


def read_truth(path: Path, binary: bool, threshold: int = 127) -> np.ndarray:
    """One truth mask, read by the one mask reader :func:`rtseg.data.folder.read_mask`: binary →
    ``uint8[h, w]`` in {0, 1} (0/1 or 0/255 masks, 8 or 16 bit; 8-bit gray > ``threshold``); multi-class →
    ``uint8[h, w]`` class indices as stored (PNG).

    Raises:
        RtsegError: an unreadable file.
    """
    from .data.folder import read_mask

    return read_mask(path, binary, threshold)


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

    def result(self, frame_s: float = 0.04) -> dict:
        """Dice/IoU (per-frame mean and global), false detections, misses, flicker, the clinical figures
        (:func:`clinical_figures`, at the frame period ``frame_s`` in s), per-frame series."""
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
            "clinical": clinical_figures(pred_any, truth_any, c[:, 0] > 0, np.asarray(per["dice"], float), frame_s),
            "per_frame": {"dice": [float(v) for v in per["dice"]], "iou": [float(v) for v in per["iou"]],
                          "flicker_prediction": list(self.flicker_pred), "flicker_truth": list(self.flicker_truth),
                          "prediction_pixels": [int(v) for v in c[:, 0] + c[:, 1]],
                          "truth_pixels": [int(v) for v in c[:, 0] + c[:, 2]]},
        }


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """``[(start, end_exclusive)]`` of the runs of True in ``bool[n]``."""
    d = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def clinical_figures(pred_any: np.ndarray, truth_any: np.ndarray, hit: np.ndarray, dice: np.ndarray,
                     frame_s: float) -> dict:
    """The clinical video figures of the module docstring from per-frame flags.

    Args:
        pred_any: ``bool[n]`` something is shown; truth_any: ``bool[n]`` the class is in the truth;
        hit: ``bool[n]`` the shown mask overlaps the truth; dice: ``float[n]`` per-frame Dice;
        frame_s: the frame period (s).
    """
    empty = ~truth_any
    alarms = [(a, b) for a, b in _runs(pred_any & empty)]
    free_min = float(empty.sum()) * frame_s / 60.0
    counts = {"all": len(alarms), **{f">={d:g}s": sum((b - a) * frame_s >= d - 1e-9 for a, b in alarms)
                                     for d in ALARM_DURATIONS_S}}
    per_min = {k: (v / free_min if free_min > 0 else math.nan) for k, v in counts.items()}
    episodes = _episodes(truth_any, frame_s)
    delays, missed = [], 0
    for a, b in episodes:
        found = np.flatnonzero(hit[a:b])
        if found.size:
            delays.append(float(found[0]) * frame_s)
        else:
            missed += 1
    return {
        "dice_truth_frames": _mean(dice[truth_any]),
        "false_alarms": {"count": counts, "per_minute": per_min, "class_free_minutes": free_min,
                         "durations_s": [(b - a) * frame_s for a, b in alarms]},
        "detection_delay": {"episodes": len(episodes), "missed": missed, "delays_s": delays,
                            "mean_s": float(np.mean(delays)) if delays else math.nan,
                            "max_s": float(np.max(delays)) if delays else math.nan},
        "frame_s": frame_s,
    }


def _episodes(truth_any: np.ndarray, frame_s: float) -> list[tuple[int, int]]:
    """Runs of truth frames, merged across gaps shorter than :data:`EPISODE_GAP_S`."""
    out: list[tuple[int, int]] = []
    for a, b in _runs(truth_any):
        if out and (a - out[-1][1]) * frame_s < EPISODE_GAP_S:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _mean(a: np.ndarray) -> float:
    return float(np.mean(a)) if len(a) else math.nan


def _nanmean(v: list[float]) -> float:
    a = np.asarray(v, dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else math.nan


class VideoScorer:
    """Scores class maps frame by frame against the truth masks of ``mask_files`` (frame k ↔ file k).

    Args:
        mask_files: truth masks in frame order; ``None``: no mask (``--masks none``: the class is in no
            frame; each frame's truth is empty at the frame's size, given to :meth:`truth_hw`).
        num_classes: C of the model (1: binary).
        class_names: names of the classes (binary: [background, foreground]) or ``None``.
        ignore_index: multi-class truth label excluded from scoring (``None``: none).
        threshold: binary masks: gray > threshold is foreground.
    """

    def __init__(self, mask_files: list[Path], num_classes: int, class_names=None, ignore_index: int | None = None,
                 threshold: int = 127):
        self.files = mask_files
        self.no_masks = mask_files is None
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

    def truth_hw(self, k: int, frame_hw: tuple[int, int] | None = None) -> tuple[int, int] | None:
        """(h, w) of mask ``k``, or ``None`` past the last mask (the frame is only counted); without
        masks, ``frame_hw`` (the frame's size)."""
        if self.no_masks:
            self._cached = (k, np.zeros(frame_hw, np.uint8))
            return tuple(frame_hw)
        if k >= len(self.files):
            return None
        return self._truth(k).shape

    def _truth(self, k: int) -> np.ndarray:
        if self.no_masks:
            return self._cached[1]
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

    def frame_s(self) -> float:
        """The frame period (s): median step of the frame times (0.04 s when unknown)."""
        steps = np.diff(np.asarray(self.times, np.float64))
        steps = steps[steps > 0]
        return float(np.median(steps)) if steps.size else 0.04

    def result(self) -> dict:
        """``{"classes": {name: ClassSeries.result()}, "times_s": [...]}``."""
        dt = self.frame_s()
        return {"classes": {n: s.result(dt) for n, s in self.series.items()}, "times_s": list(self.times)}


class VideoEvalPipeline(StreamPipeline):
    """The stream with every frame's temporal logits scored instead of drawn (:meth:`postprocess`)."""

    keep_logits = True

    def __init__(self, backend, clip, options: StreamOptions, scorer: VideoScorer):
        super().__init__(backend, [clip], [], options)
        self.scorer = scorer

    def postprocess(self, item):
        """Map what the stream shows (``item.logits`` where ``item.shown``, else nothing) onto the frame's
        truth mask and score it; the frame passes on unchanged."""
        hw = self.scorer.truth_hw(self.scorer.frames, item.geom.src_hw)
        if hw is None:
            pred = None
        elif item.shown:
            pred = logits_to_frame(item.logits, item.geom.box, hw)
        else:
            pred = np.zeros(hw, np.uint8)
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
        masks: folder of per-frame masks (frame k ↔ k-th file in sorted order; binary: gray > 127), or
            ``None`` / ``"none"``: the class is in no frame of the clip.
        options: :class:`VideoEvalOptions`.

    Returns:
        ``{"clip", "masks", "frames", "temporal", "backend", "fps", "classes": {name: figures},
        "times_s"}`` (figures: see the module docstring; ``fps`` is the pipeline's without encoding).

    Raises:
        RtsegError: a missing or unreadable clip or mask folder, a frame count that differs from the
            mask count, or a bad option.
    """
    o = options or VideoEvalOptions()
    files = _truth_files(clip, masks, o.max_frames)
    mm = model_info_of(backend)
    scorer = VideoScorer(files, backend.num_classes, mm.get("class_names"), mm.get("ignore_index"), o.threshold)
    sopts = StreamOptions(batch_size=o.batch_size, max_frames=o.max_frames, overlay=False, temporal=o.temporal,
                          infer_every=o.infer_every, ema=o.ema, raw=o.raw, presence_threshold=o.presence_threshold,
                          presence_min_area=o.presence_min_area, persist=o.persist, hold=o.hold)
    report = VideoEvalPipeline(backend, str(clip), sopts, scorer).run()
    if files is not None:
        _count_check(clip, scorer.frames, len(files), masks)
    return {"clip": str(clip), "masks": str(masks) if files is not None else None, "frames": scorer.frames,
            "temporal": describe_temporal(o.temporal, o.infer_every, o.ema), "backend": backend.describe(),
            "decision": report.decision, "fps": report.fps, **scorer.result()}


def _truth_files(clip, masks, max_frames: int | None) -> list[Path] | None:
    """The truth mask files of ``evaluate_video`` (``None`` for ``masks`` ``None``/``"none"``).

    Raises:
        RtsegError: a missing clip or mask folder, or a mask count that differs from the frame count.
    """
    files = None if masks is None or str(masks).lower() == "none" else list_masks(masks)
    if files is not None and max_frames is not None:
        if len(files) < max_frames:
            _count_check(clip, max_frames, len(files), masks)
        files = files[:max_frames]
    if not Path(clip).is_file():
        raise RtsegError(f"--video {clip} does not exist; pass a video file")
    declared = _container_frames(clip) if files is not None else 0
    if max_frames is None and declared and declared != len(files):
        _count_check(clip, declared, len(files), masks)
    return files


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
        lines.append(f"  {name:<12}{_f4(r['dice']):>7}{_f4(r['global']['dice']):>8}{_f4(r['iou']):>7}"
                     f"{_f4(r['global']['iou']):>8}{fd:>14}{ms:>14}{_f4(f['prediction']):>14}{_f4(f['truth']):>8}"
                     f"{_f4(f['ratio'], 2):>7}")
    for name, r in result["classes"].items():
        lines.append(f"  {name}: {_clinical_line(r['clinical'])}")
    lines.append("  scored as shown: " + describe_decision(result.get("decision")))
    return "\n".join(lines)


def _f4(x, digits: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _clinical_line(c: dict) -> str:
    """One line of clinical figures: Dice on truth frames, false alarms per minute, detection delay."""
    fa, dd = c["false_alarms"], c["detection_delay"]
    pm = fa["per_minute"]
    alarms = ", ".join(f"{k} {fa['count'][k]} ({_f4(pm[k], 2)}/min)" for k in fa["count"])
    return (f"Dice on truth frames {_f4(c['dice_truth_frames'])}; false-alarm activations over "
            f"{fa['class_free_minutes'] * 60:.1f} s class-free: {alarms}; detection delay over {dd['episodes']} "
            f"episode(s): mean {_f4(dd['mean_s'], 2)} s, max {_f4(dd['max_s'], 2)} s, missed {dd['missed']}")


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
    fig, (a1, a2, a3) = plt.subplots(3, 1, figsize=(10, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2, 1.2]})
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
    a2.legend(loc="upper left", fontsize=8)
    _plot_presence(a3, t, result)
    a3.set_xlabel("time (s)")
    fig.tight_layout()
    from .safe_io import save_figure

    return save_figure(fig, path, "--plot")


def _plot_presence(ax, t: np.ndarray, result: dict) -> None:
    """Bottom strip: truth present vs shown, per class (false alarms in red)."""
    for row, (name, r) in enumerate(result["classes"].items()):
        pf = r["per_frame"]
        truth = np.asarray(pf["truth_pixels"]) > 0
        shown = np.asarray(pf["prediction_pixels"]) > 0
        y = 2 * row
        ax.fill_between(t, y + 1.05, y + 1.85, where=truth, color="0.55", step="mid", label="truth" if not row else None)
        ax.fill_between(t, y + 0.1, y + 0.9, where=shown & truth, color="tab:green", step="mid",
                        label="shown on truth" if not row else None)
        ax.fill_between(t, y + 0.1, y + 0.9, where=shown & ~truth, color="tab:red", step="mid",
                        label="false alarm" if not row else None)
    ax.set_yticks([])
    ax.set_ylabel("presence")
    ax.legend(loc="upper right", fontsize=7, ncol=3)


__all__ = ["ClassSeries", "clinical_figures", "VideoEvalOptions", "VideoEvalPipeline", "VideoScorer", "evaluate_video",
           "format_video_table", "list_masks", "logits_to_frame", "plot_video", "read_truth"]
