"""Temporal modes of the stream: keyframes, logit smoothing and optical-flow propagation.

``rtseg stream`` / ``rtseg eval --video`` ``--temporal off|ema|flow`` and ``--infer-every K``:

* **keyframes** — the network runs on frame ``i`` of a source when ``i`` is a multiple of K
  counted from the last keyframe, and always on the first frame of a source, the first frame after
  a reconnect, and the first frame after a gap (live frames dropped under backpressure). Every
  other frame still passes through the queues in order (frame count, order and timestamps are
  unchanged); it gets its logits from the per-source state below.
* ``off`` — a non-keyframe holds the last keyframe's logits.
* ``ema`` — exponential moving average of the logits per source on keyframes,
  ``z_t = a·z_{t−1} + (1 − a)·logits_t``; a non-keyframe holds ``z``; a reconnect restarts it.
  Default ``a = 0.3``: on the colonoscopy clip it was the smallest of 0.3/0.5/0.7/0.8 that brought the
  flicker under 1.5× the truth's (1.18×), and it lost the least global Dice and missed the fewest
  polyp frames of them.
* ``flow`` — a non-keyframe gets the last keyframe's logits warped to it by dense optical flow
  (OpenCV DIS, :data:`DIS_PRESET`) computed at the network resolution between the keyframe's
  network input and this frame's (both as gray ``uint8[H, W]``), bilinear, border replicated.
  With K = 1 every frame is a keyframe, so ``flow`` equals ``off``.

The masks follow from the temporal logits as everywhere (binary: ``logit > 0``; multi-class:
argmax). :class:`Temporal` splits the work between the stream's two threads: :meth:`Temporal.plan`
(batcher thread, in each source's frame order) decides the keyframes and keeps what ``flow`` needs
of the network input before its buffer is reused; :meth:`Temporal.resolve` (the source's sink
thread, in frame order) turns keyframe logits / held state into the frame's logits and mask.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import RtsegError
from ..runtime.base import logits_to_mask

TEMPORAL_MODES = ("off", "ema", "flow")
#: OpenCV DIS preset of ``flow``: ULTRAFAST costs 0.24 ms a 192² pair on one core (FAST 0.5 ms,
#: MEDIUM 6.6 ms); on the colonoscopy clip FAST and MEDIUM moved the per-frame Dice of ``flow`` with
#: K = 2 / 3 by +0.4 / 0.0 pt, within the clip's noise (docs/benchmarks.md, "temporal modes on the colonoscopy clip").
DIS_PRESET = cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST


def check_temporal(mode: str, infer_every: int, ema: float) -> None:
    """Check the temporal options.

    Raises:
        RtsegError: unknown ``mode``, ``infer_every`` < 1, or ``ema`` outside [0, 1).
    """
    if mode not in TEMPORAL_MODES:
        raise RtsegError(f"unknown --temporal {mode!r}; use one of {', '.join(TEMPORAL_MODES)}")
    if int(infer_every) != infer_every or infer_every < 1:
        raise RtsegError(f"--infer-every must be an integer ≥ 1 (1 = every frame), got {infer_every}")
    if not 0.0 <= ema < 1.0:
        raise RtsegError(f"--ema must be in [0, 1) (the weight of the previous logits), got {ema}")


def describe_temporal(mode: str, infer_every: int, ema: float) -> str:
    """One line for reports, e.g. ``"flow, K=2"`` or ``"ema a=0.3, K=1"``."""
    return f"{mode}{f' a={ema:g}' if mode == 'ema' else ''}, K={infer_every}"


class _Plan:
    """Batcher-side state of one source: where the last keyframe was."""

    __slots__ = ("last_seq", "since_key")

    def __init__(self):
        self.last_seq: int | None = None
        self.since_key = 0


class _Track:
    """Sink-side state of one source: the logits to carry and the keyframe's gray network input."""

    def __init__(self, hw: tuple[int, int]):
        self.z: np.ndarray | None = None  # float32[C, H, W]
        self.key_gray: np.ndarray | None = None  # uint8[H, W]
        self.dis = None
        self.hw = hw
        self._grid: np.ndarray | None = None

    def warp(self, gray: np.ndarray) -> np.ndarray:
        """The keyframe's logits warped onto the frame whose network input is ``gray`` (uint8[H, W])."""
        if self.dis is None:
            self.dis = cv2.DISOpticalFlow_create(DIS_PRESET)
            h, w = self.hw
            gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
            self._grid = np.dstack([gx, gy])
        # backward flow: gray(p) ≈ key_gray(p + flow(p)), so z_t(p) = z_key(p + flow(p))
        flow = self.dis.calc(gray, self.key_gray, None)
        flow += self._grid
        return np.stack([cv2.remap(zc, flow, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                         for zc in self.z])


class Temporal:
    """Per-source temporal state of one stream run (see the module docstring).

    Args:
        mode: ``"off"``, ``"ema"`` or ``"flow"``.
        infer_every: K ≥ 1, the keyframe interval in frames.
        ema: ``a`` in [0, 1), the weight of the previous logits in ``ema``.
        input_hw: (H, W) of the network input in pixels.

    Items are the stream's frames (``rtseg.stream.pipeline.StreamFrame``): they carry ``src``
    (source index), ``seq`` (frame number in the source), ``fresh`` (first frame of a
    (re)connection), ``net`` (``uint8[H, W, 3]`` network input, valid in :meth:`plan` only),
    ``logits`` (``float32[C, H, W]`` for keyframes, set by the batcher) and ``gray``.

    Raises:
        RtsegError: a bad option (:func:`check_temporal`).
    """

    def __init__(self, mode: str, infer_every: int, ema: float, input_hw: tuple[int, int]):
        check_temporal(mode, infer_every, ema)
        self.mode = mode
        self.every = int(infer_every)
        self.a = float(ema)
        self.hw = (int(input_hw[0]), int(input_hw[1]))
        self._plans: dict[int, _Plan] = {}
        self._tracks: dict[int, _Track] = {}

    def describe(self) -> str:
        """``"flow, K=2"`` etc."""
        return describe_temporal(self.mode, self.every, self.a)

    def plan(self, item) -> bool:
        """Batcher thread: is ``item`` a keyframe? Sets ``item.gray`` (``flow`` with K > 1) while
        ``item.net`` is still valid. Call once per frame, in each source's frame order."""
        p = self._plans.get(item.src)
        if p is None:
            p = self._plans[item.src] = _Plan()
        gap = p.last_seq is None or item.seq != p.last_seq + 1
        key = item.fresh or gap or p.since_key + 1 >= self.every
        p.last_seq = item.seq
        p.since_key = 0 if key else p.since_key + 1
        if self.mode == "flow" and self.every > 1:
            item.gray = cv2.cvtColor(item.net, cv2.COLOR_RGB2GRAY)
        return key

    def resolve(self, item) -> np.ndarray:
        """Sink thread: the frame's temporal logits (stored back in ``item.logits``, ``float32[C, H, W]``)
        and its mask ``uint8[H, W]`` (class indices). Call once per frame, in the source's frame order."""
        t = self._tracks.get(item.src)
        if t is None:
            t = self._tracks[item.src] = _Track(self.hw)
        z = item.logits
        if z is not None:  # keyframe
            if self.mode == "ema" and t.z is not None and not item.fresh:  # a reconnect restarts the average
                z = self.a * t.z + (1.0 - self.a) * z
            t.z = z
            t.key_gray = item.gray
        elif self.mode == "flow" and t.key_gray is not None and item.gray is not None:
            z = t.warp(item.gray)
        else:
            z = t.z
        item.logits = z
        return logits_to_mask(z[None])[0]


def make_temporal(mode: str, infer_every: int, ema: float, input_hw: tuple[int, int],
                  force: bool = False) -> Temporal | None:
    """The :class:`Temporal` of a stream run, or ``None`` for the default path (``off``/``flow`` with
    K = 1 and not ``force``: one ``predict_u8`` per frame, masks only, nothing added per frame).

    Raises:
        RtsegError: a bad option (:func:`check_temporal`).
    """
    check_temporal(mode, infer_every, ema)
    if not force and mode in ("off", "flow") and infer_every == 1:
        return None
    return Temporal(mode, infer_every, ema, input_hw)


__all__ = ["DIS_PRESET", "TEMPORAL_MODES", "Temporal", "check_temporal", "describe_temporal", "make_temporal"]
