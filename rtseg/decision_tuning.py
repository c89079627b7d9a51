"""Calibrating the decision layer on validation data (``rtseg calibrate-decision``, issue 21).

The presence rule and the persistence counts of :mod:`rtseg.decision` are chosen per model by
measurement on the *validation* parts of its training folders (never on test data or the demo
clip), and recorded in its ``model.json`` ``decision``:

1. **Presence** — every validation image is run once; per image the peak logit and the area with
   ``logit > 0`` (network size) and the raw mask's Dice at the image's resolution are kept. Every
   rule of the grid (:attr:`DecisionCalibOptions.peaks` × :attr:`~DecisionCalibOptions.areas`) is then
   scored without another inference: a withheld image scores Dice 1 if its truth is empty, else 0.
   Chosen: among the rules whose false-detection rate on the polyp-free validation images is at most
   ``max_false_rate``, the one with the highest mean Dice on the validation images that hold the object
   (ties: the lower threshold); if no rule gets there, the one with the fewest false detections.
2. **Persistence** — the validation images that are consecutive frames of one sequence (same group,
   consecutive trailing frame numbers, ≥ :attr:`~DecisionCalibOptions.min_sequence` frames; e.g. the
   polyp-free PolypGen sequences and CVC-ClinicDB's videos) are replayed at ``fps`` through
   :class:`rtseg.decision.Persistence` for every ``(on_frames, hold_frames)`` of the grid. Chosen: the
   fewest frame errors (shown on a polyp-free frame + nothing shown on a polyp frame) among the
   counts whose worst detection delay is at most ``max_delay_s`` (ties: fewer false-alarm activations,
   then smaller counts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .decision import Persistence, PresenceRule
from .errors import RtsegError
from .metrics import binary_scores


@dataclass
class DecisionCalibOptions:
    """Settings of :func:`calibrate_decision`.

    Attributes:
        max_false_rate: largest share of polyp-free validation images a rule may show something on.
        peaks: candidate ``min_peak`` values (logits); areas: candidate ``min_area`` values (pixels at network size).
        on_frames, hold_frames: candidate persistence counts (frames).
        fps: frame rate the validation sequences are replayed at (FPS).
        max_delay_s: largest detection delay a persistence choice may cause on a validation episode (s).
        min_sequence: shortest run of consecutive frames used as a validation sequence.
        batch_size: images per inference call.
    """

    max_false_rate: float = 0.05
    peaks: tuple[float, ...] = tuple(float(v) for v in np.arange(0.0, 12.01, 0.25))
    areas: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 512, 1024)
    on_frames: tuple[int, ...] = tuple(range(1, 9))
    hold_frames: tuple[int, ...] = tuple(range(0, 7))
    fps: float = 25.0
    max_delay_s: float = 0.5
    min_sequence: int = 8
    batch_size: int = 8

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_false_rate <= 1.0:
            raise RtsegError(f"--max-false-rate must be in [0, 1], got {self.max_false_rate}")
        if not self.fps > 0 or not self.max_delay_s >= 0:
            raise RtsegError("--fps must be > 0 and --max-delay-s ≥ 0")


@dataclass
class ImageRecord:
    """What a rule needs of one validation image (no second inference)."""

    folder: str
    stem: str
    peak: float  # max logit at network size
    area: int  # pixels with logit > 0 at network size
    dice: float  # raw mask (logit > 0) vs truth at the image's resolution
    truth: bool  # the truth holds the object
    hit: bool  # the raw mask overlaps the truth
    extra: dict = field(default_factory=dict)


def collect_records(backend, folders: list[tuple[str, list, object]], batch_size: int = 8) -> list[ImageRecord]:
    """Run ``backend`` once over every image of ``folders`` (``[(name, samples, reader)]``)."""
    from .data.transforms import Preprocessor

    pre = Preprocessor(backend.input_hw, backend.resize)
    H, W = backend.input_hw
    out: list[ImageRecord] = []
    for name, samples, reader in folders:
        for i in range(0, len(samples), batch_size):
            chunk = samples[i:i + batch_size]
            pairs = [reader(s) for s in chunk]
            batch = np.empty((len(chunk), H, W, 3), np.uint8)
            geoms = [pre(img, out=batch[j])[1] for j, (img, _) in enumerate(pairs)]
            logits = backend.infer_u8(batch)
            for s, (_, mask), g, z in zip(chunk, pairs, geoms, logits):
                out.append(_record(name, s.stem, z, mask, g))
    return out


def _record(folder: str, stem: str, z: np.ndarray, mask: np.ndarray, g) -> ImageRecord:
    from .data.transforms import logits_to_frame

    pred, truth = logits_to_frame(z, g.box, g.src_hw) > 0, mask > 0
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
    dice = float(binary_scores(np.array([tp]), np.array([fp]), np.array([fn]), np.array([0]))["dice"][0])
    return ImageRecord(folder, stem, float(z.max()), int((z > 0).sum()), dice, bool(truth.any()), tp > 0)


def score_rule(records: list[ImageRecord], rule: PresenceRule) -> dict:
    """Scores of ``rule`` on ``records``: mean Dice (all / object images), false detections, misses."""
    shown = np.array([rule.holds(r.peak, r.area) and r.area > 0 for r in records], bool)  # something drawn
    truth = np.array([r.truth for r in records], bool)
    raw = np.array([r.dice for r in records], float)
    dice = np.where(shown, raw, np.where(truth, 0.0, 1.0))
    n_free, n_obj = int((~truth).sum()), int(truth.sum())
    fp = int((shown & ~truth).sum())
    return {"min_peak": rule.min_peak, "min_area": rule.min_area,
            "dice": float(dice.mean()) if len(dice) else float("nan"),
            "dice_object": float(dice[truth].mean()) if n_obj else float("nan"),
            "false_detections": fp, "object_free": n_free,
            "false_rate": fp / n_free if n_free else 0.0,
            "misses": int((~shown & truth).sum()), "object_images": n_obj}


def choose_presence(records: list[ImageRecord], opts: DecisionCalibOptions) -> tuple[PresenceRule, list[dict]]:
    """The presence rule of the module docstring (step 1) and every rule's scores (grid order)."""
    table = [score_rule(records, PresenceRule(p, a)) for p in opts.peaks for a in opts.areas]
    ok = [t for t in table if t["false_rate"] <= opts.max_false_rate]
    if ok:
        best = max(ok, key=lambda t: (t["dice_object"], -t["min_peak"], -t["min_area"]))
    else:
        best = min(table, key=lambda t: (t["false_detections"], -t["dice_object"], t["min_peak"]))
    return PresenceRule(best["min_peak"], best["min_area"]), table


_TRAILING = re.compile(r"^(.*?)(\d+)$")


def sequences(records: list[ImageRecord], groups: dict[str, dict[str, str]], min_len: int) -> list[list[ImageRecord]]:
    """Runs of consecutive frames (same folder and group, trailing frame numbers step 1), ≥ ``min_len`` long.

    ``groups``: ``folder -> {stem -> group}``.
    """
    by_group: dict[tuple[str, str], list[tuple[int, ImageRecord]]] = {}
    for r in records:
        m = _TRAILING.match(r.stem)
        if m is None:
            continue
        g = groups.get(r.folder, {}).get(r.stem, r.stem)
        if g == r.stem:
            continue  # a single frame, not a sequence
        by_group.setdefault((r.folder, g), []).append((int(m.group(2)), r))
    out = []
    for key in sorted(by_group):
        frames = sorted(by_group[key], key=lambda t: t[0])
        run = [frames[0]]
        for f in frames[1:]:
            if f[0] == run[-1][0] + 1:
                run.append(f)
            else:
                out.append(run)
                run = [f]
        out.append(run)
    return [[r for _, r in run] for run in out if len(run) >= min_len]


def replay(seqs: list[list[ImageRecord]], rule: PresenceRule, on: int, hold: int, fps: float) -> dict:
    """Frame errors, false-alarm activations and detection delays of ``(on, hold)`` over ``seqs``."""
    p = Persistence(on, hold)
    fp = miss = alarms = frames = free = obj = 0
    delays: list[float] = []
    undetected = 0
    dummy = np.zeros((1, 1), np.uint8)
    for k, seq in enumerate(seqs):
        prev_alarm, first_truth, detected = False, None, False
        for i, r in enumerate(seq):
            present = rule.holds(r.peak, r.area) and r.area > 0
            shown, _, _ = p.step(k, i, i == 0, present, dummy)
            frames += 1
            if r.truth:
                obj += 1
                first_truth = i if first_truth is None else first_truth
                miss += not shown
                if shown and present and r.hit and not detected:
                    detected = True
                    delays.append((i - first_truth) / fps)
            else:
                free += 1
                fp += shown
                alarms += shown and not prev_alarm
            prev_alarm = shown and not r.truth
        undetected += first_truth is not None and not detected
    return {"on_frames": on, "hold_frames": hold, "errors": fp + miss, "false_frames": fp, "object_free_frames": free,
            "missed_frames": miss, "object_frames": obj, "false_alarm_activations": alarms,
            "max_delay_s": max(delays) if delays else 0.0, "undetected_sequences": undetected, "frames": frames}


def choose_persistence(seqs: list[list[ImageRecord]], rule: PresenceRule,
                       opts: DecisionCalibOptions) -> tuple[tuple[int, int], list[dict]]:
    """The persistence counts of the module docstring (step 2) and every pair's figures."""
    table = [replay(seqs, rule, on, hold, opts.fps) for on in opts.on_frames for hold in opts.hold_frames]
    ok = [t for t in table if t["max_delay_s"] <= opts.max_delay_s + 1e-9] or table
    best = min(ok, key=lambda t: (t["errors"], t["false_alarm_activations"], t["on_frames"], t["hold_frames"]))
    return (best["on_frames"], best["hold_frames"]), table


def validation_folders(model_meta: dict, data: list[str] | None = None) -> list[tuple[str, list, object, dict]]:
    """``[(name, val samples, reader, stem -> group)]`` of ``data`` (default: the model's training folders).

    Raises:
        RtsegError: no folder given and none recorded, or a missing folder.
    """
    from .data.folder import sample_groups
    from .data.formats import detect_format, get_format

    mdata = model_meta.get("data") or {}
    roots = list(data or [d.get("root") for d in mdata.get("datasets", [])] or ([mdata["root"]] if mdata.get("root") else []))
    if not roots:
        raise RtsegError("the model records no training data; pass --data DIR (repeatable) with its validation images")
    out = []
    for root in roots:
        if not Path(root).is_dir():
            raise RtsegError(f"data folder {root} does not exist; pass --data with the model's training folders")
        fmt = get_format(detect_format(root))
        val = fmt.splits(root)["val"]
        out.append((Path(root).name, val, fmt.read, sample_groups(val, root)))
    return out


def calibrate_decision(backend, model_meta: dict, data: list[str] | None = None,
                       options: DecisionCalibOptions | None = None) -> dict:
    """Choose the presence rule and persistence counts of a binary model on validation data.

    Args:
        backend: any :class:`rtseg.runtime.base.Backend` of the model (logits ``float32[N, 1, H, W]``).
        model_meta: its ``model.json`` as a dict.
        data: validation folders (default: the model's training folders; their ``val`` parts are used).
        options: :class:`DecisionCalibOptions`.

    Returns:
        The ``decision`` record for ``model.json``: ``presence``, ``persistence`` and ``calibration``
        (data, criteria, the chosen rows and the raw rule's row).

    Raises:
        RtsegError: a multi-class model, no validation data, or no polyp-free validation image.
    """
    o = options or DecisionCalibOptions()
    if backend.num_classes != 1:
        raise RtsegError("the decision layer is for binary models; this one has "
                         f"{backend.num_classes} classes")
    folders = validation_folders(model_meta, data)
    records = collect_records(backend, [(n, s, r) for n, s, r, _ in folders], o.batch_size)
    if not any(not r.truth for r in records):
        raise RtsegError("the validation images hold no polyp-free image; add a folder of negatives (--data) "
                         "so that false detections can be measured")
    rule, table = choose_presence(records, o)
    seqs = sequences(records, {n: g for n, _, _, g in folders}, o.min_sequence)
    (on, hold), ptable = choose_persistence(seqs, rule, o) if seqs else ((1, 0), [])
    chosen = score_rule(records, rule)
    raw = score_rule(records, PresenceRule(0.0, 1))
    per = next((t for t in ptable if (t["on_frames"], t["hold_frames"]) == (on, hold)), None)
    return {
        "presence": rule.to_dict(),
        "persistence": {"on_frames": on, "hold_frames": hold},
        "calibration": {
            "data": [f"{n} (val, {len(s)} images)" for n, s, _, _ in folders],
            "criteria": {"presence": f"max Dice on object images with false-detection rate ≤ {o.max_false_rate:g} "
                                     f"on object-free images", "persistence": f"fewest frame errors with detection "
                                     f"delay ≤ {o.max_delay_s:g} s at {o.fps:g} FPS"},
            "presence_chosen": chosen, "presence_raw": raw,
            "sequences": {"count": len(seqs), "frames": sum(len(s) for s in seqs)},
            "persistence_chosen": per,
            "persistence_off": next((t for t in ptable if (t["on_frames"], t["hold_frames"]) == (1, 0)), None),
        },
        "_tables": {"presence": table, "persistence": ptable},
    }


__all__ = ["DecisionCalibOptions", "ImageRecord", "calibrate_decision", "choose_persistence", "choose_presence",
           "collect_records", "replay", "score_rule", "sequences", "validation_folders"]
