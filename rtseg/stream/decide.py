"""The decision layer in the stream (:mod:`rtseg.decision`): presence per frame, persistence per source.

:class:`StreamDecision` splits the work between the stream's threads like the temporal modes do:

* batcher thread, default path (every frame inferred, no temporal mode): :meth:`StreamDecision.batch`
  turns a batch of logits ``float32[N, 1, H, W]`` into masks and each frame's presence;
* sink thread, in each source's frame order: :meth:`StreamDecision.frame` decides presence where the
  batcher did not (temporal modes: on the frame's temporal logits), then applies persistence, and
  leaves what is shown in ``item.mask`` (``uint8[H, W]``, network size; all zero when nothing is
  shown), ``item.logits`` (the held logits during a hold) and ``item.shown``.

Counts per run (:meth:`StreamDecision.summary`): frames shown with a detection, frames whose
detection the presence rule withheld, frames withheld by persistence (not yet ``on_frames`` long)
and frames held after a detection ended.
"""

from __future__ import annotations

import numpy as np

from ..decision import (
    DEFAULT_HOLD_FRAMES,
    DEFAULT_ON_FRAMES,
    Persistence,
    PresenceRule,
    apply_presence,
    resolve_presence,
)


def persistence_counts(model_meta: dict | None, persist: int | None, hold: int | None) -> tuple[int, int]:
    """``(on_frames, hold_frames)`` of a run: the flags, else the model's ``decision.persistence``,
    else :data:`rtseg.decision.DEFAULT_ON_FRAMES` / :data:`~rtseg.decision.DEFAULT_HOLD_FRAMES`."""
    rec = ((model_meta or {}).get("decision") or {}).get("persistence") or {}
    on = persist if persist is not None else int(rec.get("on_frames", DEFAULT_ON_FRAMES))
    off = hold if hold is not None else int(rec.get("hold_frames", DEFAULT_HOLD_FRAMES))
    return on, off


class StreamDecision:
    """Presence rule + per-source persistence of one stream run (module docstring).

    Args:
        rule: the presence rule (``None``: "any pixel with logit > 0": the batcher needs no logits).
        persistence: :class:`rtseg.decision.Persistence` (``None`` or inactive: every frame shows its own mask).
    """

    def __init__(self, rule: PresenceRule | None, persistence: Persistence | None):
        self.rule = rule
        self.persistence = persistence if persistence is not None and persistence.active else None
        self.counts = {"shown": 0, "withheld_presence": 0, "withheld_persistence": 0, "held": 0}

    @classmethod
    def for_run(cls, model_meta: dict | None, num_classes: int, *, raw: bool, min_peak: float | None,
                min_area: int | None, persist: int | None, hold: int | None) -> "StreamDecision | None":
        """The decision of a run, or ``None`` when it would show the network's own mask anyway
        (multi-class model, ``raw``, or the plain rule without persistence: the stream's default path).

        Raises:
            RtsegError: a malformed ``decision`` record or a bad override.
        """
        rule = resolve_presence(model_meta, num_classes, raw=raw, min_peak=min_peak, min_area=min_area)
        if rule is None:
            return None
        per = Persistence(*persistence_counts(model_meta, persist, hold))
        plain = rule == PresenceRule()  # logit > 0 and one pixel: the network's own mask
        if plain and not per.active:
            return None
        return cls(None if plain else rule, per)

    @property
    def needs_logits(self) -> bool:
        """True when presence is decided on logits (a rule other than "any pixel")."""
        return self.rule is not None

    def batch(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Batcher thread: ``float32[N, 1, H, W]`` logits → (``uint8[N, H, W]`` masks, absent frames
        zeroed; ``bool[N]`` presence; ``bool[N]`` raw mask not empty)."""
        return apply_presence(self.rule, logits)

    def frame(self, item) -> None:
        """Sink thread, once per frame in the source's order: decide and apply (module docstring).

        ``item`` is a :class:`rtseg.stream.pipeline.StreamFrame` with ``mask`` set and ``present``
        set by :meth:`batch` or ``None`` (then decided here from ``item.logits``)."""
        if item.present is None:
            item.raw_any = bool(item.mask.any())
            item.present = (self.rule.present_one(item.logits) if self.rule is not None and item.logits is not None
                            else bool(item.mask.any()))
            if not item.present and item.mask.any():
                item.mask = np.zeros_like(item.mask)
        had = bool(item.present)
        if self.persistence is None:
            item.shown = had
        else:
            item.shown, mask, logits = self.persistence.step(item.src, item.seq, item.fresh, had, item.mask,
                                                             item.logits)
            if item.shown:
                item.mask, item.logits = mask, logits
            elif had:
                item.mask = np.zeros_like(item.mask)
        self._count(had, item)

    def _count(self, had: bool, item) -> None:
        c = self.counts
        if item.shown:
            c["shown" if had else "held"] += 1
        elif had:
            c["withheld_persistence"] += 1
        elif item.raw_any:
            c["withheld_presence"] += 1

    def summary(self) -> dict:
        """``{"presence": rule or None, "on_frames", "hold_frames", counts...}`` (JSON-ready)."""
        p = self.persistence
        return {"presence": self.rule.to_dict() if self.rule is not None else None,
                "on_frames": p.on if p is not None else 1, "hold_frames": p.hold if p is not None else 0,
                **self.counts}


__all__ = ["StreamDecision", "persistence_counts"]
