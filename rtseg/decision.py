"""The decision layer: what a binary model's logits are allowed to *show* (issue 21).

A segmentation network trained mostly on frames that hold a polyp marks some pixels of nearly every
frame; a user watching video judges it by the frames where it draws something on normal mucosa.
Two steps stand between the logits and the mask that is shown, in this order:

1. **Presence** (:class:`PresenceRule`, per frame): the frame holds the object only if its peak logit
   reaches ``min_peak`` *and* at least ``min_area`` pixels (at the network's input size) have
   ``logit > 0``; otherwise the whole mask is withheld. The rule is calibrated per model on
   validation data (:mod:`rtseg.decision_tuning`, ``rtseg calibrate-decision``) and recorded in
   ``model.json`` ``decision.presence``; flags override it. The rule needs nothing from the graph,
   so it is the same for every backend and precision (OpenVINO, ONNX Runtime, TensorRT, PyTorch,
   int8 or not) and for imported models (which have none until calibrated).
2. **Persistence** (:class:`Persistence`, per source, in the stream and ``eval --video``): a detection
   is shown once it has been present ``on_frames`` consecutive frames of the source's timeline, and
   held (the last shown mask) ``hold_frames`` frames after it ends. Frames missing from the timeline
   (dropped under backpressure) count as frames without a detection; a reconnect starts afresh.
   Clinical CADe systems suppress short activations the same way (Holzwanger et al. 2021; withholding
   detections shorter than 6 frames removed 88 % of false positives).

Multi-class models get neither step (there is no single "object present" question).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import pydantic
from pydantic import Field, StrictInt

from .errors import RtsegError
from .fields import Finite
from .fields import Record as _Record

#: persistence of a model whose ``model.json`` records none (``--persist N --hold M`` override it): off.
#: Calibrated models (the shipped default model) carry the counts chosen on their validation sequences
#: in ``decision.persistence`` (:mod:`rtseg.decision_tuning`).
DEFAULT_ON_FRAMES = 1
DEFAULT_HOLD_FRAMES = 0
#: bounds of the persistence counts (frames)
MAX_PERSIST_FRAMES = 10_000


#: the error of each field of a presence rule (the flags set them too): a format string of its ``value``
_WHAT = {
    "min_peak": "presence threshold must be a finite logit, got {value!r}; pass e.g. --presence-threshold 2.5",
    "min_area": "presence min-area must be a whole number of pixels ≥ 0, got {value!r}; pass e.g. --presence-min-area 32",
}


@dataclass(frozen=True)
class PresenceRule:
    """Frame-level presence decision on binary logits.

    Attributes:
        min_peak: the frame holds the object only if ``max(logits) ≥ min_peak`` (logit units; 0 is
            the plain ``sigmoid > 0.5`` rule).
        min_area: … and at least this many pixels at the network's input size have ``logit > 0``.

    The fields' types are pydantic's (strict: ``True`` and ``"3"`` are not numbers; ``min_peak`` is
    finite), checked when one is made — with an ``RtsegError`` line (:data:`_WHAT`), not pydantic's error:
    ``--presence-threshold``/``--presence-min-area`` make one too.

    Raises:
        RtsegError: a non-finite ``min_peak`` or a negative ``min_area`` (or one of another type).
    """

    min_peak: Finite = 0.0
    min_area: Annotated[StrictInt, Field(ge=0)] = 1

    def __post_init__(self) -> None:
        for name, field_type in _field_types(PresenceRule).items():
            value = getattr(self, name)
            try:
                field_type.validate_python(value)
            except pydantic.ValidationError:
                raise RtsegError(_WHAT[name].format(value=value)) from None

    def present(self, logits: np.ndarray) -> np.ndarray:
        """``bool[N]``: which frames of ``float32[N, 1, H, W]`` logits hold the object."""
        z = logits.reshape(logits.shape[0], -1)
        ok = z.max(axis=1) >= self.min_peak
        if self.min_area > 0:
            ok &= np.count_nonzero(z > 0, axis=1) >= self.min_area
        return ok

    def present_one(self, logits: np.ndarray) -> bool:
        """One frame: ``float32[1, H, W]`` (or ``[H, W]``) logits → does it hold the object?"""
        return bool(self.present(logits.reshape(1, 1, *logits.shape[-2:]))[0])

    def to_dict(self) -> dict:
        return {"min_peak": float(self.min_peak), "min_area": int(self.min_area)}

    def holds(self, peak: float, area: int) -> bool:
        """The rule on one frame's peak logit and area (pixels with logit > 0), as :meth:`present` decides it."""
        return peak >= self.min_peak and (self.min_area <= 0 or area >= self.min_area)

    def describe(self) -> str:
        """``"peak logit ≥ 2.5, ≥ 32 px"``."""
        return f"peak logit ≥ {self.min_peak:g}, ≥ {self.min_area} px"

    @classmethod
    def from_dict(cls, d, source: str = "model.json") -> "PresenceRule":
        """Parse ``decision.presence`` (``{"min_peak": float, "min_area": int}``).

        Raises:
            RtsegError: not an object, or a field of the wrong type (one line naming the file).
        """
        if not _PresenceRecord.accepts(d):
            raise RtsegError(f"{source}: 'decision.presence' must be an object with min_peak and min_area; "
                             f"recalibrate it with 'rtseg calibrate-decision'")
        try:
            return cls(min_peak=d["min_peak"], min_area=d["min_area"])
        except RtsegError as e:
            raise RtsegError(f"{source}: 'decision.presence': {e}") from None


class _PresenceRecord(_Record):
    """``decision.presence``: an object with both fields (their values are :class:`PresenceRule`'s to check)."""

    min_peak: Any
    min_area: Any


@functools.cache
def _field_types(cls: type) -> dict[str, pydantic.TypeAdapter]:
    """A validator of each field of the dataclass ``cls``, from its type."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: pydantic.TypeAdapter(hints[f.name]) for f in dataclasses.fields(cls)}


def model_presence(model_meta: dict | None, num_classes: int) -> PresenceRule | None:
    """The presence rule a model's metadata records (``decision.presence``), or ``None`` (multi-class
    models, models without a calibrated rule).

    Raises:
        RtsegError: a malformed ``decision`` record.
    """
    if num_classes != 1 or not isinstance(model_meta, dict):
        return None
    dec = model_meta.get("decision")
    if dec is None:
        return None
    if not isinstance(dec, dict):
        raise RtsegError("model.json: 'decision' must be an object; recalibrate it with 'rtseg calibrate-decision'")
    return PresenceRule.from_dict(dec["presence"]) if dec.get("presence") is not None else None


def resolve_presence(model_meta: dict | None, num_classes: int, *, raw: bool = False,
                     min_peak: float | None = None, min_area: int | None = None) -> PresenceRule | None:
    """The presence rule of a run: ``None`` with ``raw`` (the network's own ``logit > 0``) or for
    multi-class models; else the model's rule with the given fields overridden; a model without one
    gets the plain rule (``min_peak`` 0, ``min_area`` 1) with the overrides.

    Raises:
        RtsegError: a malformed record or override; an override on a multi-class model.
    """
    if num_classes != 1:
        if min_peak is not None or min_area is not None:
            raise RtsegError("--presence-threshold/--presence-min-area apply to binary models only; drop them")
        return None
    if raw:
        return None
    rule = model_presence(model_meta, num_classes) or PresenceRule()
    if min_peak is not None or min_area is not None:
        rule = PresenceRule(min_peak=rule.min_peak if min_peak is None else float(min_peak),
                            min_area=rule.min_area if min_area is None else int(min_area))
    return rule


def check_persistence(on_frames: int, hold_frames: int) -> None:
    """Raises :class:`RtsegError` unless ``1 ≤ on_frames`` and ``0 ≤ hold_frames`` (whole frames, bounded)."""
    for name, v, lo in (("--persist", on_frames, 1), ("--hold", hold_frames, 0)):
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= MAX_PERSIST_FRAMES:
            raise RtsegError(f"{name} must be a whole number of frames in {lo}..{MAX_PERSIST_FRAMES}, got {v!r}; "
                             f"{'1 shows a detection at once' if lo else '0 holds nothing'}")


class _Track:
    __slots__ = ("last_seq", "run", "since", "shown", "held_mask", "held_logits")

    def __init__(self):
        self.last_seq: int | None = None
        self.run = 0  # consecutive frames with the object present
        self.since = 0  # consecutive frames without it, while shown
        self.shown = False
        self.held_mask: np.ndarray | None = None
        self.held_logits: np.ndarray | None = None


class Persistence:
    """Per-source persistence of detections (module docstring, step 2).

    Args:
        on_frames: N ≥ 1: a detection is shown from its N-th consecutive present frame on (1: at once).
        hold_frames: M ≥ 0: after it ends, the last shown mask stays M more frames (0: none).

    :meth:`step` is called once per frame of each source, in the source's frame order.

    Raises:
        RtsegError: counts out of range (:func:`check_persistence`).
    """

    def __init__(self, on_frames: int = DEFAULT_ON_FRAMES, hold_frames: int = DEFAULT_HOLD_FRAMES):
        check_persistence(on_frames, hold_frames)
        self.on = int(on_frames)
        self.hold = int(hold_frames)
        self._tracks: dict[int, _Track] = {}

    @property
    def active(self) -> bool:
        """False for ``on_frames`` 1 and ``hold_frames`` 0 (every frame shows what it holds)."""
        return self.on > 1 or self.hold > 0

    def step(self, src: int, seq: int, fresh: bool, present: bool, mask: np.ndarray,
             logits: np.ndarray | None = None) -> tuple[bool, np.ndarray, np.ndarray | None]:
        """One frame of source ``src`` (frame number ``seq``; ``fresh``: first after a (re)connection):
        ``present`` is the presence decision, ``mask`` its ``uint8[H, W]`` mask (``logits``
        ``float32[1, H, W]`` optional). Returns ``(shown, mask, logits)``: what to show — the frame's
        own mask, the held one, or (``shown`` False) nothing (the caller draws no mask)."""
        t = self._tracks.get(src)
        if t is None or fresh:
            t = self._tracks[src] = _Track()
        missing = 0 if t.last_seq is None else max(0, seq - t.last_seq - 1)
        t.last_seq = seq
        if missing:
            self._absent(t, missing)
        if present:
            t.run += 1
            if t.shown or t.run >= self.on:
                t.shown, t.since = True, 0
                t.held_mask, t.held_logits = mask, logits
                return True, mask, logits
            return False, mask, logits
        self._absent(t, 1)
        if t.shown:
            return True, t.held_mask, t.held_logits
        return False, mask, logits

    def _absent(self, t: _Track, n: int) -> None:
        """``n`` frames without the object: the run ends; a shown detection is held ``hold`` frames."""
        t.run = 0
        if t.shown:
            t.since += n
            if t.since > self.hold:
                t.shown, t.held_mask, t.held_logits = False, None, None


def describe_decision(summary: dict | None) -> str:
    """One line for a run's decision summary (:meth:`rtseg.stream.decide.StreamDecision.summary`):
    ``"presence peak logit ≥ 2.5, ≥ 32 px, shown after 3 frame(s), held 2"``; ``None``: the raw output."""
    if summary is None:
        return "the network's own masks (--raw, or a model without a decision record)"
    p = summary.get("presence")
    rule = PresenceRule.from_dict(p).describe() if p else "any pixel with logit > 0"
    return f"presence {rule}, shown after {summary['on_frames']} frame(s), held {summary['hold_frames']}"


def apply_presence(rule: PresenceRule | None, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks and presence of a batch: ``float32[N, 1, H, W]`` logits → (``uint8[N, H, W]`` masks with
    absent frames zeroed, ``bool[N]`` presence, ``bool[N]`` "the raw mask had a pixel"). ``rule``
    ``None``: ``logit > 0`` and "any pixel"."""
    masks = (logits[:, 0] > 0).astype(np.uint8)
    raw_any = masks.reshape(len(masks), -1).any(axis=1)
    present = rule.present(logits) if rule is not None else raw_any.copy()
    masks[~present] = 0
    return masks, present, raw_any


__all__ = ["DEFAULT_HOLD_FRAMES", "DEFAULT_ON_FRAMES", "Persistence", "PresenceRule", "apply_presence",
           "check_persistence", "describe_decision", "model_presence", "resolve_presence"]
