"""The stream pipeline: N sources → one batched engine → per-source overlay + sinks.

Threads, joined by bounded queues (docs/architecture.md, "Stream pipeline")::

    source i:  demux + decode → yuv420p → preprocess (RGB, network size)  ─┐   (one thread per source)
                                                                           ├→ in-queues (one per source)
    infer:     round-robin batch across sources (≤ batch_size, ≤ batch_timeout_ms) → predict_u8
               (temporal modes: only keyframes, → infer_u8 logits)
                                                                           ├→ out-queue of each source
    sink i:    [temporal step: logits of the frame → mask] → flicker → mask → frame size, overlay (YUV)
               → encode + mux into every sink of source i (+ audio copy)

* Files (and lavfi graphs, image folders) never drop: a full queue blocks the decoder.
* Live sources (cameras, network) drop the *oldest* queued frame when their queue
  (:data:`LIVE_QUEUE_FRAMES`) is full, and frames older than ``max_latency_ms`` when they reach the
  batcher; both are counted as drops, by cause (:data:`DROP_CAUSES`, with a network output's own).
* A network source that fails or stalls (``stall_timeout`` s without data) is reopened with
  exponential backoff (0.25 s doubling up to 5 s between attempts) when ``reconnect`` is on; its
  output keeps going, with timestamps continuing from where they stopped plus the outage's
  wall-clock length. Without ``reconnect`` the source ends there (the run ends normally).
* Timestamps: every frame keeps its ``pts``/``time_base``; file sources come out with exactly the
  input's timestamps (frame count, rate and VFR timing preserved). Live sources are rebased to
  start at 0 and kept strictly increasing across jumps, wrap-around and reconnects (:class:`_LiveClock`).
* Stop (SIGINT/SIGTERM, ``max_frames``, a display's q key): sources stop reading, frames already
  decoded are still segmented and written, encoders are flushed and every container is finalised.
  A second SIGINT/SIGTERM abandons queued frames but still finalises the files; an output that
  blocks cannot hold the process (a network output is abandoned after a few seconds, and the
  process exits at the latest 3 s after a second signal, 15 s after a SIGTERM).

:class:`StreamPipeline` runs it; :func:`run_stream` is the one-call entry point. The per-frame
steps are methods a subclass can override one at a time (like a predictor's hooks):
:meth:`StreamPipeline.preprocess` (frame → network input), :meth:`StreamPipeline.infer`
(batch → class-index masks; :meth:`StreamPipeline.infer_logits` in the temporal modes of
:mod:`rtseg.stream.temporal`), :meth:`StreamPipeline.postprocess` (mask → overlaid frame) and
:meth:`StreamPipeline.write` (frame → sinks). Sources and sinks declare what they can do
(:class:`rtseg.stream.sources.Source`, :class:`rtseg.stream.sinks.Sink`); the pipeline reads
those declarations and nothing else of them.
"""

from __future__ import annotations

import collections
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import av
import numpy as np

from ..data.transforms import Geometry, Preprocessor, place
from ..errors import BackendUnavailable, RtsegError, redact
from ..limits import check_field_types
from ..metrics import FlickerMeter
from ..runtime.base import model_info_of, resize_of
from ..safe_io import write_error
from .decide import StreamDecision
from .mask_writer import MaskWriter
from .metrics import DROP_CAUSES, STAGES, Latency, LatencyRecorder, MetricsWriter, SourceReport, StreamReport
from .overlay import Overlay, palette_from_meta
from .sinks import (
    X264_PRESETS,
    DisplaySink,
    NetworkSink,
    NullSink,
    Sink,
    make_sink,
    refuse_output_collisions,
    refuse_overwriting_inputs,
)
from .sources import NETWORK_SCHEMES, RTSP_TRANSPORTS, Item, Source, SourceSpecError, open_source
from .temporal import check_temporal, describe_temporal, make_temporal

_EOS = object()
#: reconnect backoff: first wait, doubling up to the last (s)
BACKOFF_FIRST_S = 0.25
BACKOFF_MAX_S = 5.0
#: the largest batch size warmed before the first frame (:meth:`StreamPipeline._warm_up`)
WARMUP_MAX_BATCH = 64
#: frames a live source's input queue holds before its oldest is dropped (backpressure): enough to
#: ride out a hiccup of the inference thread (~0.3 s at 25 FPS) without a drop; a pipeline that is
#: keeping up never fills it, so it adds no latency (``--max-latency-ms`` bounds the wait instead)
LIVE_QUEUE_FRAMES = 8
#: a live source's timestamps that step back or jump ahead by more than this (s) are a discontinuity
#: (:class:`_LiveClock`)
PTS_JUMP_S = 10.0
#: the highest ``--fps`` (image folders, cameras) a video container can carry
MAX_FPS = 1000
#: after a second SIGINT/SIGTERM, seconds the run gets to finalise its files before the process exits
HARD_EXIT_S = 3.0
#: after a first SIGTERM, seconds the graceful stop gets before the process exits
TERM_EXIT_S = 15.0


@dataclass
class StreamOptions:
    """Options of one stream run (the ``rtseg stream`` flags); checked on creation.

    Attributes:
        batch_size: frames per inference call, taken round-robin across sources (≥ 1; capped by the
            engine's ``max_batch``).
        batch_timeout_ms: how long the batcher waits to fill a batch once it has one frame (ms).
        alpha: overlay opacity in [0, 1]; contour: also draw region outlines.
        codec, preset, crf: encoder for file/network sinks (see :func:`rtseg.stream.sinks.resolve_codec`).
        max_frames: stop after this many frames *per source* (``None``: until the input ends).
        max_latency_ms: live frames that waited longer than this before inference are dropped (ms).
        reconnect: reopen failed/stalled network sources with backoff instead of ending them.
        fps: frame rate of image-folder sources (FPS; default 25) and the rate asked of cameras.
        stall_timeout: a network source silent this long (s) has failed.
        show: also show each source in a window (needs a display).
        metrics_jsonl: write one JSON line of metrics per second to this file.
        loop: passes over each video-file source (1 = once, 0 = until stopped); the timestamps
            continue across passes; audio is not copied when looping. ``RtsegError`` for sources
            whose ``can_loop`` is false (cameras, network, lavfi graphs, image folders).
        overlay: draw the masks (``False``: frames pass through unchanged, for measurements).
        handle_signals: in the main thread, turn SIGINT/SIGTERM into a graceful stop (a second one
            abandons queued frames); the previous handlers are restored afterwards.
        open_timeout: how long a network source may take to open (s); ``None``: a ``udp://``/``rtp://``
            listener waits for its sender until stopped (saying so after a second), other network
            sources use ``stall_timeout``.
        rtsp_transport: ``"tcp"`` (default: RTP interleaved in the RTSP connection, no loss, passes
            NAT/firewalls) or ``"udp"`` (RTP over UDP: lower latency on a clean LAN) for ``rtsp://`` sources.
        temporal: ``"off"``, ``"ema"`` or ``"flow"`` (:mod:`rtseg.stream.temporal`): smooth the logits
            across frames of a source (``ema``) or carry the last keyframe's logits to the frames in
            between by optical flow (``flow``).
        infer_every: K ≥ 1: run the network on every K-th frame of a source (keyframes); the frames in
            between keep their place, count and timestamps and get propagated logits.
        ema: ``a`` in [0, 1) of ``ema``: ``z_t = a·z_{t−1} + (1 − a)·logits_t``.
        raw: show the network's own mask (``logit > 0``) on every frame: no presence decision, no
            persistence (:mod:`rtseg.decision`; binary models only, multi-class models always show it).
        presence_threshold, presence_min_area: override the model's presence rule (peak logit, pixels at
            network size); ``None``: the model's ``decision.presence`` (none recorded: 0 and 1).
        persist, hold: a detection is shown from its ``persist``-th consecutive frame and held ``hold``
            frames after it ends (frames of the source's timeline); ``None``: the model's
            ``decision.persistence``, else :data:`rtseg.decision.DEFAULT_ON_FRAMES` / ``DEFAULT_HOLD_FRAMES``.
        save_masks: folder for the shown mask of every frame as PNG (:mod:`rtseg.stream.mask_writer`).
        http: ``"HOST:PORT"`` or a port (loopback) to serve ``/metrics``, ``/healthz``, ``/readyz`` and a live
            MJPEG preview on (:mod:`rtseg.stream.http`); ``None``: nothing listens.
        http_token: bearer token every ``http`` endpoint requires (``None``: ``$RTSEG_HTTP_TOKEN``, else none).
        http_preview_fps: at most this many preview frames a second per viewer (FPS, > 0).

    Raises:
        RtsegError: a value out of range (one line naming the option and the fix).
    """

    batch_size: int = 1
    batch_timeout_ms: float = 10.0
    alpha: float = 0.5
    contour: bool = False
    codec: str = "libx264"
    preset: str = "ultrafast"
    crf: int = 23
    max_frames: int | None = None
    max_latency_ms: float | None = None
    reconnect: bool = False
    fps: float | None = None
    stall_timeout: float = 5.0
    show: bool = False
    metrics_jsonl: str | os.PathLike | None = None
    loop: int = 1
    overlay: bool = True
    handle_signals: bool = True
    open_timeout: float | None = None
    rtsp_transport: str = "tcp"
    temporal: str = "off"
    infer_every: int = 1
    ema: float = 0.3
    raw: bool = False
    presence_threshold: float | None = None
    presence_min_area: int | None = None
    persist: int | None = None
    hold: int | None = None
    save_masks: str | os.PathLike | None = None
    http: str | int | None = None
    http_token: str | None = None
    http_preview_fps: float = 10.0

    def __post_init__(self) -> None:
        check_field_types(self)
        self.validate()

    def validate(self) -> None:
        """Check the values (called on creation and again when a pipeline starts).

        Raises:
            RtsegError: ``batch_size`` < 1, ``loop`` < 0, ``alpha`` outside [0, 1], ``max_frames`` < 1,
                ``stall_timeout`` ≤ 0.
        """
        if self.batch_size < 1:
            raise RtsegError(f"--batch-size must be ≥ 1, got {self.batch_size}")
        if self.loop < 0:
            raise RtsegError(f"--loop must be ≥ 0 (0 = until stopped), got {self.loop}")
        if not 0.0 <= self.alpha <= 1.0:
            raise RtsegError(f"--alpha must be in [0, 1], got {self.alpha}")
        if self.max_frames is not None and self.max_frames < 1:
            raise RtsegError(f"--max-frames must be ≥ 1, got {self.max_frames}; omit it to read the whole input")
        if self.stall_timeout <= 0:
            raise RtsegError(f"--stall-timeout must be > 0 s, got {self.stall_timeout}")
        for name, v in (("--fps", self.fps), ("--open-timeout", self.open_timeout)):
            if v is not None and not (0 < v < math.inf):
                raise RtsegError(f"{name} must be a positive number, got {v}; omit it for the default")
        if self.fps is not None and self.fps > MAX_FPS:
            raise RtsegError(f"--fps {self.fps:g} is more than {MAX_FPS} frames per second; pass a real frame rate (e.g. 25)")
        if self.preset not in X264_PRESETS:
            raise RtsegError(f"--preset {self.preset!r} is not an x264/x265 preset; pass one of {', '.join(X264_PRESETS)}")
        if self.rtsp_transport not in RTSP_TRANSPORTS:
            raise RtsegError(f"--rtsp-transport must be one of {', '.join(RTSP_TRANSPORTS)}, got {self.rtsp_transport!r}")
        check_temporal(self.temporal, self.infer_every, self.ema)
        if self.http is not None:
            from .http import parse_http_address

            parse_http_address(self.http)
        if not (0 < self.http_preview_fps < math.inf):
            raise RtsegError(f"--http-preview-fps must be a positive number, got {self.http_preview_fps}")
        from ..decision import PresenceRule, check_persistence

        check_persistence(1 if self.persist is None else self.persist, 0 if self.hold is None else self.hold)
        PresenceRule(0.0 if self.presence_threshold is None else self.presence_threshold,
                     1 if self.presence_min_area is None else self.presence_min_area)


@dataclass
class StreamFrame:
    """One video frame on its way through the pipeline.

    Attributes:
        src: index of its source (``--source`` order).
        frame: ``av.VideoFrame`` ``yuv420p`` with ``pts``/``time_base`` set (rebased for live sources).
        net: ``uint8[H, W, 3]`` RGB network input (a pooled buffer, reused once it was batched).
        geom: where the network input sits in the frame (stretch or letterbox geometry).
        t0: ``time.perf_counter()`` (s) when the decode that produced it started (e2e latency).
        mask: ``uint8[H, W]`` class indices at network size, set after inference.
        seq: frame number in its source (0-based, counts every frame read); fresh: first frame of a
            (re)connection. logits: ``float32[C, H, W]`` at network size in the temporal modes
            (keyframes: set by the batcher; the others: by :class:`rtseg.stream.temporal.Temporal`).
        gray: ``uint8[H, W]`` gray network input (``flow`` with K > 1 only).
        present: the presence decision of the frame (``None`` until decided); raw_any: the network's own
            mask had a pixel; shown: a detection is shown on this frame (after persistence).
    """

    src: int
    frame: av.VideoFrame
    net: np.ndarray
    geom: Geometry
    t0: float
    mask: np.ndarray | None = None
    seq: int = 0
    fresh: bool = False
    logits: np.ndarray | None = None
    gray: np.ndarray | None = None
    present: bool | None = None
    raw_any: bool = False
    shown: bool = True


class _Prep:
    """``yuv420p`` frame → network input ``uint8[H, W, 3]`` RGB via ``Preprocessor`` geometry.

    The frame is first converted to RGB *and* shrunk by swscale (area filter) to at most 2× the
    network size, then :func:`rtseg.data.transforms.place` finishes with OpenCV's area resize (or
    bilinear upscaling) and the letterbox padding — within ~1 grey level of converting the full
    frame to RGB and calling ``Preprocessor`` on it, at a fraction of the cost.
    """

    def __init__(self, input_hw: tuple[int, int], mode: str):
        self.pre = Preprocessor(input_hw, mode=mode)

    def __call__(self, frame: av.VideoFrame, out: np.ndarray) -> Geometry:
        g = self.pre.geometry((frame.height, frame.width))
        y0, y1, x0, x1 = g.box
        iw, ih = min(frame.width, 2 * (x1 - x0)), min(frame.height, 2 * (y1 - y0))
        rgb = frame.reformat(width=iw, height=ih, format="rgb24", interpolation="AREA").to_ndarray()
        place(rgb, g, out=out)
        return g


class _InQueues:
    """One bounded FIFO per source, sharing one condition variable so the batcher can wait on all."""

    def __init__(self, caps: list[int], live: list[bool]):
        self.cond = threading.Condition()
        self.q = [collections.deque() for _ in caps]
        self.caps = caps
        self.live = live
        self.closed = [False] * len(caps)
        self.drops = [0] * len(caps)  # backpressure: the oldest frame dropped for a new one
        self.late = [0] * len(caps)  # waited longer than max_latency_ms
        self.max_depth = [0] * len(caps)
        self.rr = 0  # round-robin start

    def put(self, i: int, item: StreamFrame, stop: threading.Event, release) -> None:
        """Queue a frame of source ``i``: a live source drops its oldest frame when full (counted),
        any other blocks until there is room (or the stream stops)."""
        with self.cond:
            q = self.q[i]
            if self.live[i]:
                while len(q) >= self.caps[i]:
                    release(q.popleft())
                    self.drops[i] += 1
            else:
                while len(q) >= self.caps[i] and not stop.is_set():
                    self.cond.wait(0.1)
            q.append(item)
            self.max_depth[i] = max(self.max_depth[i], len(q))
            self.cond.notify_all()

    def close(self, i: int) -> None:
        """Source ``i`` will put nothing more."""
        with self.cond:
            self.closed[i] = True
            self.cond.notify_all()

    def take(self, max_n: int, timeout_s: float, stop: threading.Event, abort: threading.Event,
             max_age_s: float | None, release) -> tuple[list[StreamFrame], list[int]]:
        """Wait for ≥ 1 frame, then up to ``timeout_s`` for ``max_n``; return (frames, finished sources).

        A source is finished when it is closed (or the stream is stopping) and its queue is empty.
        Returns no frame only when every source is finished (``finished`` then lists them all).
        """
        with self.cond:
            if not self._wait_any(stop, abort, release):
                return [], list(range(len(self.q)))
            self._wait_fill(max_n, timeout_s, stop)
            out = self._pick(max_n, max_age_s, release)
            finished = self._finished(stop)
            self.cond.notify_all()
            return out, finished

    def _finished(self, stop: threading.Event) -> list[int]:
        return [i for i in range(len(self.q)) if not self.q[i] and (self.closed[i] or stop.is_set())]

    def _wait_any(self, stop: threading.Event, abort: threading.Event, release) -> bool:
        """Block until a queue holds a frame (True) or every source is finished (False)."""
        while True:
            if abort.is_set():
                for q in self.q:
                    while q:
                        release(q.popleft())
            if len(self._finished(stop)) == len(self.q):
                return False
            if any(self.q):
                return True
            self.cond.wait(0.05)

    def _wait_fill(self, max_n: int, timeout_s: float, stop: threading.Event) -> None:
        deadline = time.perf_counter() + timeout_s
        n_src = len(self.q)
        while sum(map(len, self.q)) < max_n and not stop.is_set():
            if not any(not self.closed[i] and len(self.q[i]) < self.caps[i] for i in range(n_src)):
                return  # every source is closed or full: no frame can come
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self.cond.wait(left)

    def _pick(self, max_n: int, max_age_s: float | None, release) -> list[StreamFrame]:
        """Up to ``max_n`` frames round-robin across sources, dropping live frames older than ``max_age_s``."""
        n_src = len(self.q)
        out: list[StreamFrame] = []
        now = time.perf_counter()
        start = self.rr
        self.rr = (self.rr + 1) % n_src
        progress = True
        while len(out) < max_n and progress:
            progress = False
            for k in range(n_src):
                i = (start + k) % n_src
                q = self.q[i]
                while q and max_age_s is not None and self.live[i] and now - q[0].t0 > max_age_s:
                    release(q.popleft())
                    self.late[i] += 1
                if q and len(out) < max_n:
                    out.append(q.popleft())
                    progress = True
        return out


class _SourceState:
    """Everything the three threads of one source share: counters, latencies, queues, buffer pool."""

    def __init__(self, idx: int, src: Source, sinks: list[Sink], net_shape: tuple[int, int, int],
                 num_classes: int = 1):
        self.idx = idx
        self.src = src
        self.sinks = sinks
        self.lat = {s: LatencyRecorder() for s in ("decode", "preprocess", "postprocess", "encode", "e2e")}
        self.read = 0
        self.written = 0
        self.reconnects = 0
        self.error: str | None = None
        self.max_frames_hit = False
        self.audio: collections.deque = collections.deque()
        self.out_q: collections.deque = collections.deque()
        self.out_cond = threading.Condition()
        self.out_max = 0
        self.pool: collections.deque = collections.deque()
        self.net_shape = net_shape
        self.last_video_s = 0.0
        self.frame_s = float(1 / src.info.rate) if src.info.rate else 0.04
        self.flicker = FlickerMeter(num_classes)

    def get_buf(self) -> np.ndarray:
        """A ``uint8[H, W, 3]`` network-input buffer from the pool (or a new one)."""
        try:
            return self.pool.pop()
        except IndexError:
            return np.empty(self.net_shape, dtype=np.uint8)

    def release(self, item: StreamFrame) -> None:
        """Give the item's network-input buffer back to the pool."""
        self.pool.append(item.net)

    def put_out(self, item, cap: int | None, abort: threading.Event) -> None:
        """Queue a segmented frame (or EOS) for the sink thread; blocks while ``cap`` items wait."""
        with self.out_cond:
            while cap is not None and len(self.out_q) >= cap and not abort.is_set():
                self.out_cond.wait(0.1)
            self.out_q.append(item)
            self.out_max = max(self.out_max, len(self.out_q))
            self.out_cond.notify_all()

    def pop_out(self):
        """Block until the output queue has an item; pop it and wake a waiting producer."""
        with self.out_cond:
            while not self.out_q:
                self.out_cond.wait(0.1)
            it = self.out_q.popleft()
            self.out_cond.notify_all()
        return it

    def drain_out(self) -> None:
        """After a sink failure: keep consuming (so the batcher never blocks) until EOS."""
        while self.pop_out() is not _EOS:
            pass

    def mux_audio(self, sinks: list[Sink], up_to_s: float) -> None:
        """Copy queued audio packets that start at or before ``up_to_s`` (s; ``inf``: all) into the sinks."""
        q = self.audio
        while q:
            pkt = q[0]
            if pkt.pts is not None and float(pkt.pts * pkt.time_base) > up_to_s:
                break
            q.popleft()
            for s in sinks:  # mux() references the packet, so one object serves every sink
                s.write_audio(pkt)


class _LiveClock:
    """Rebases a live source's timestamps to start at 0 s and to stay monotonic for every sink.

    Video: output time = source time + ``shift_s``, in the source's first ``info.time_base``,
    strictly increasing. ``shift_s`` is set by the first frame of each connection (so a reconnect
    continues the timeline, :meth:`resume`) and re-set at a discontinuity — a step back or a jump
    ahead of more than :data:`PTS_JUMP_S` (MPEG-TS 33-bit wrap-around every 26.5 h, a sender that
    restarted its clock): the output then advances by the wall-clock time since the last frame.
    Audio packets move by the same ``shift_s``; those before the connection's first video frame, or
    not after the last audio packet given out, are dropped (a muxer refuses them).
    """

    def __init__(self, time_base):
        self.tb_out = time_base
        self.shift_s: float | None = None  # output time − source time (s); None: new connection
        self.offset_s = 0.0  # where the next connection starts on the output timeline (s)
        self.last_src: float | None = None  # source time of the last video frame (s)
        self.last_pts: int | None = None  # last video pts given out (tb_out ticks)
        self.last_wall: float | None = None  # time.monotonic() (s) when it was given out
        self.last_audio: float | None = None  # output time of the last audio packet (s)
        self.discontinuities = 0

    def video(self, f: av.VideoFrame) -> None:
        """Rewrite ``f.pts``/``f.time_base`` in place."""
        t_src = float(f.pts * f.time_base)
        if self.shift_s is None:
            self.shift_s = self.offset_s - t_src
        elif not 0 < t_src - self.last_src <= PTS_JUMP_S:
            self.discontinuities += 1
            step = max(time.monotonic() - self.last_wall, float(self.tb_out))
            self.shift_s = float(self.last_pts * self.tb_out) + step - t_src
        pts = round((t_src + self.shift_s) / self.tb_out)
        if self.last_pts is not None and pts <= self.last_pts:
            pts = self.last_pts + 1
        f.pts, f.time_base = pts, self.tb_out
        self.last_src, self.last_pts, self.last_wall = t_src, pts, time.monotonic()

    def audio(self, pkt: av.Packet) -> bool:
        """Rewrite ``pkt.pts``/``pkt.dts`` in place; False when the packet is to be dropped."""
        if self.shift_s is None or pkt.pts is None:
            return False
        t = float(pkt.pts * pkt.time_base) + self.shift_s
        if t < 0 or (self.last_audio is not None and t <= self.last_audio):
            return False
        d = (pkt.dts - pkt.pts) if pkt.dts is not None else 0
        pkt.pts = round(t / pkt.time_base)
        pkt.dts = pkt.pts + d
        self.last_audio = t
        return True

    def resume(self, silent_since: float | None = None) -> None:
        """After a reconnect: continue from the last frame plus the outage's wall-clock length.

        ``silent_since`` (``time.monotonic()`` s): when the input went silent, if known (a stall is
        noticed ``stall_timeout`` s after the last packet; frames the demuxer still held are given out
        only then, so their hand-out time would hide that part of the outage).
        """
        start = self.last_wall
        if start is not None and silent_since is not None:
            start = min(start, silent_since)
        gap = time.monotonic() - start if start is not None else 0.0
        prev = float(self.last_pts * self.tb_out) if self.last_pts is not None else 0.0
        self.shift_s, self.offset_s = None, prev + gap


class _SourceWorker:
    """The reader thread of one source: demux + decode → (live: rebase PTS) → preprocess → in-queue,
    reconnecting a failed network source with backoff when ``reconnect`` is on."""

    def __init__(self, pipe: "StreamPipeline", st: _SourceState):
        self.pipe = pipe
        self.st = st
        self.src = st.src
        self.live = st.src.live
        self.clock = _LiveClock(st.src.info.time_base)
        self.max_frames = pipe.options.max_frames
        self.fresh = True  # the next frame is the first of a (re)connection
        self.silent_since: float | None = None  # monotonic time the input went silent (a stall)

    def run(self) -> None:
        try:
            while True:
                why = self._read_until_end()
                if why is None or not self._reconnect(why):
                    return
        except BaseException as e:  # noqa: BLE001 - reported by the pipeline
            self.pipe.fail(e)
        finally:
            self.pipe.inq.close(self.st.idx)

    def _read_until_end(self) -> str | None:
        """Read the source; return why it ended when it is to be reconnected, else ``None``."""
        src, stop, opts = self.src, self.pipe.stop, self.pipe.options
        try:
            ended = self._pump()
        except RtsegError:
            raise
        except Exception as e:  # noqa: BLE001 - network read failures end or reconnect the source
            if not src.network or stop.is_set():
                raise
            stalled = isinstance(e, av.error.ExitError)
            why = f"sent no data for {opts.stall_timeout:g} s" if stalled else f"failed ({_short(e)})"
            self.silent_since = time.monotonic() - opts.stall_timeout if stalled else None
            if not opts.reconnect:
                self.st.error = why
                self.pipe.log(f"source {src.name} {why}; it ends here (pass --reconnect to reopen it)")
                return None
            return why
        if not ended or stop.is_set() or not (opts.reconnect and src.network and src.live):
            return None
        return "ended"

    def _pump(self) -> bool:
        """Feed the source's items into the pipeline; True when the input ended by itself."""
        stop = self.pipe.stop
        for item in self.src.read():
            if stop.is_set():
                return False
            if item.kind == "audio":
                if not self.live or self.clock.audio(item.obj):
                    self.st.audio.append(item.obj)
            elif self._video(item):
                return False
        return True

    def _video(self, item: Item) -> bool:
        """Preprocess and queue one decoded frame; True when ``max_frames`` is reached."""
        st, f, pipe = self.st, item.obj, self.pipe
        st.lat["decode"].add(item.decode_ms)
        if self.live:
            self.clock.video(f)
        t0 = time.perf_counter()
        buf = st.get_buf()
        geom = pipe.preprocess(f, buf)
        st.lat["preprocess"].add((time.perf_counter() - t0) * 1000.0)
        sf = StreamFrame(st.idx, f, buf, geom, t0 - item.decode_ms / 1000.0, seq=st.read, fresh=self.fresh)
        self.fresh = False
        pipe.inq.put(st.idx, sf, pipe.stop, st.release)
        st.read += 1
        if self.max_frames is not None and st.read >= self.max_frames:
            st.max_frames_hit = True
            return True
        return False

    def _reconnect(self, why: str) -> bool:
        """Reopen the source with backoff (0.25 s doubling to 5 s); False when the stream stopped first."""
        src, stop = self.src, self.pipe.stop
        src.close()
        delay = BACKOFF_FIRST_S
        self.pipe.log(f"source {src.name} {why}; reconnecting")
        while not stop.wait(delay):
            try:
                src.open()
            except RtsegError:
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            self.st.reconnects += 1
            self.clock.resume(self.silent_since)
            self.fresh = True
            self.pipe.log(f"source {src.name} reconnected")
            return not stop.is_set()
        return False


class _SignalGuard:
    """SIGINT/SIGTERM → graceful stop of a pipeline; a second signal abandons the queued frames.

    Neither may hang the process on an output that stopped answering: after a second signal the run
    has :data:`HARD_EXIT_S` s to finalise the files, after a first SIGTERM :data:`TERM_EXIT_S` s (a
    network output is abandoned after ``NET_CLOSE_S``); past that the process exits at once
    (status 128 + signal number), saying so on stderr.
    """

    def __init__(self, pipe: "StreamPipeline"):
        self.pipe = pipe
        self.count = 0
        self._old: dict = {}
        self._done = threading.Event()

    def install(self) -> None:
        """Install the handlers (main thread only; elsewhere Python cannot)."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self)

    def restore(self) -> None:
        self._done.set()
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}

    def __call__(self, signum, _frame) -> None:
        self.count += 1
        self.pipe.request_stop(signal.Signals(signum).name, abandon_queued=self.count >= 2)
        self.pipe._interrupt_sources()
        if self.count >= 2 or signum == signal.SIGTERM:
            grace = HARD_EXIT_S if self.count >= 2 else TERM_EXIT_S
            threading.Thread(target=self._exit_after, args=(grace, signum), daemon=True).start()

    def _exit_after(self, grace_s: float, signum: int) -> None:
        if self._done.wait(grace_s):
            return
        sys.stderr.write(f"error: stopped by {signal.Signals(signum).name}; an output did not finish within "
                         f"{grace_s:g} s and was left unfinalised\n")
        sys.stderr.flush()
        os._exit(128 + signum)


class _MetricsSnapshot:
    """The once-per-second metrics line of :class:`MetricsWriter` (``snapshot(marks) → (line, marks)``)."""

    def __init__(self, pipe: "StreamPipeline"):
        self.pipe = pipe

    def __call__(self, marks: dict | None) -> tuple[dict, dict]:
        p = self.pipe
        now = time.perf_counter()
        marks = marks or {"t": p._t_start, "frames": [0] * len(p.states), "lat": {}}
        dt = max(1e-9, now - marks["t"])
        new = {"t": now, "frames": [s.written for s in p.states], "lat": {}}
        total = sum(new["frames"])
        causes = p.drop_causes()
        line = {"t": round(now - p._t_start, 3), "frames": total, "fps": (total - sum(marks["frames"])) / dt,
                "drops": sum(map(sum, causes)), "rss_mb": round(p._proc.memory_info().rss / 2**20, 1),
                "sources": self._sources(marks, dt, causes), "latency": self._latency(marks, new)}
        return line, new

    def _sources(self, marks: dict, dt: float, causes: list[tuple[int, int, int]]) -> list[dict]:
        p = self.pipe
        return [{"name": s.src.name, "frames": s.written, "fps": (s.written - marks["frames"][i]) / dt,
                 "drops": sum(causes[i]), "in_queue": len(p.inq.q[i]), "out_queue": len(s.out_q),
                 "reconnects": s.reconnects} for i, s in enumerate(p.states)]

    def _latency(self, marks: dict, new: dict) -> dict:
        lat = {}
        for stage in STAGES:
            samples = []
            for j, r in enumerate(self.pipe._recorders(stage)):
                key = f"{stage}{j}"
                samples.append(r.samples(marks["lat"].get(key, 0)))
                new["lat"][key] = r.count
            L = Latency.of(samples)
            lat[stage] = {"p50_ms": L.p50_ms, "p99_ms": L.p99_ms}
        return lat


class StreamPipeline:
    """N sources → one batched engine → per-source overlay + sinks, in threads joined by bounded queues.

    Args:
        backend: an :class:`rtseg.runtime.base.Backend` (``predict_u8(uint8[N, H, W, 3]) → uint8[N, H, W]``
            class indices, NHWC RGB in, at the network size ``backend.input_hw``).
        sources: ``--source`` strings (file, ``cameraN``, URL, image folder/glob, ``lavfi:GRAPH``)
            or :class:`rtseg.stream.sources.Source` objects (opened here when their ``info`` is ``None``).
        outputs: ``--output`` strings or :class:`rtseg.stream.sinks.Sink` objects. ``None``/empty: no
            output (frames are still overlaid unless ``options.overlay`` is false; ``rtseg bench``
            measures this). With one source every output gets it; with N sources give N outputs (one
            each, in order) or outputs holding ``{i}`` (source index) or ``{name}`` (source file stem).
        options: :class:`StreamOptions` (default: all defaults).
        stop_event: set it from another thread to stop the stream gracefully.
        log: ``callable(str)`` for warnings and hints (default: stderr).

    Override one step in a subclass to change it: :meth:`preprocess`, :meth:`infer`,
    :meth:`postprocess`, :meth:`write`. :meth:`run` runs the stream once.

    Raises:
        RtsegError: a bad option, or no source.
    """

    #: a subclass that needs every frame's logits (``item.logits``, ``float32[C, H, W]``, e.g. video
    #: evaluation) sets this: the temporal path then runs even with ``off`` and K = 1
    keep_logits: bool = False

    def __init__(self, backend, sources: Sequence, outputs: Sequence | None = None,
                 options: StreamOptions | None = None, *, stop_event: threading.Event | None = None,
                 log: Callable[[str], None] | None = None):
        self.options = options if options is not None else StreamOptions()
        self.options.validate()
        if not sources:
            raise RtsegError("no --source given; pass a video file, cameraN, a URL, an image folder or lavfi:GRAPH")
        self.backend = backend
        self.sources = list(sources)
        self.outputs = list(outputs or [])
        base_log = log or _warn
        self.log = lambda msg: base_log(redact(msg))  # a camera URL's password never reaches a log line
        self.stop = stop_event or threading.Event()
        self.abort = threading.Event()  # set: queued frames are abandoned (second signal, failure)
        self.stop_reason: str | None = None
        self.errors: list[BaseException] = []
        bs = self.options.batch_size
        from ..limits import check_batch

        check_batch(bs, backend.input_hw)
        self.batch_size = max(1, min(bs, int(backend.max_batch))) if backend.max_batch is not None else bs
        opts = self.options
        #: per-source temporal state (``None``: the default path, one predict_u8 per frame)
        self.temporal = make_temporal(opts.temporal, opts.infer_every, opts.ema, backend.input_hw,
                                      force=self.keep_logits)
        #: frames per batcher round: with K > 1 about ``batch_size`` of them are keyframes
        self._take_n = self.batch_size * (opts.infer_every if self.temporal is not None else 1)
        self.drawer = Overlay(palette_from_meta(model_info_of(backend), backend.num_classes), alpha=self.options.alpha,
                              contour=self.options.contour)
        self._prep = _Prep(backend.input_hw, resize_of(backend))
        #: the decision layer (``None``: the network's own mask: ``--raw`` or a multi-class model)
        self.decision = StreamDecision.for_run(
            model_info_of(backend), backend.num_classes, raw=opts.raw, min_peak=opts.presence_threshold,
            min_area=opts.presence_min_area, persist=opts.persist, hold=opts.hold)
        self.mask_writer: MaskWriter | None = None
        self.warmup_ms = 0.0
        self.states: list[_SourceState] = []
        self.inq: _InQueues | None = None
        #: per source, live frames dropped while the inference server did not answer; since when (monotonic s)
        self.unserved: list[int] = []
        self._server_down_since: float | None = None
        self.infer_lat = LatencyRecorder()
        self.batch_sizes: list[int] = []
        self._opened: list[Source] = []
        self._all_sinks: list[Sink] = []
        self._out_cap = max(4, 2 * self.batch_size)
        self._rss: list[float] = []
        self._proc = None
        self._t_start = 0.0
        #: the ``--http`` server (:class:`rtseg.stream.http.HttpServer`) while the run serves, else ``None``
        self.http = None

    # -- the overridable per-frame steps -----------------------------------------------------------------
    def preprocess(self, frame: av.VideoFrame, buf: np.ndarray) -> Geometry:
        """Fill ``buf`` (``uint8[H, W, 3]`` RGB, network size) from ``frame`` (``yuv420p``); return the
        geometry (stretch/letterbox box) that maps the network input back onto the frame."""
        return self._prep(frame, buf)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """``uint8[N, H, W, 3]`` RGB batch → ``uint8[N, H, W]`` class indices (one engine call)."""
        return self.backend.predict_u8(batch)

    def infer_logits(self, batch: np.ndarray) -> np.ndarray:
        """Temporal modes (``temporal`` not ``off`` or ``infer_every`` > 1): ``uint8[N, H, W, 3]`` RGB batch
        of keyframes → logits ``float32[N, C, H, W]`` (one engine call)."""
        return self.backend.infer_u8(batch)

    def postprocess(self, item: StreamFrame) -> av.VideoFrame:
        """The frame to write: ``item.frame`` with ``item.mask`` overlaid (``yuv420p``, same size and
        timestamps), or unchanged when ``options.overlay`` is false."""
        if not self.options.overlay:
            return item.frame
        return self.drawer.apply_yuv420(item.frame, item.mask, item.geom)

    def write(self, sinks: list[Sink], frame: av.VideoFrame) -> None:
        """Hand one frame to every frame-writing sink of its source (encode + mux, store, show)."""
        for s in sinks:
            s.write(frame)

    # -- control -----------------------------------------------------------------------------------------
    def request_stop(self, why: str = "stop requested", *, abandon_queued: bool = False) -> None:
        """Stop gracefully (the first reason given is reported); ``abandon_queued``: drop queued frames."""
        if self.stop_reason is None:
            self.stop_reason = why
        self.stop.set()
        if abandon_queued:
            self.abort.set()

    def fail(self, e: BaseException) -> None:
        """Record a worker's error and stop at once (queued frames abandoned, outputs finalised)."""
        self.errors.append(e)
        self.stop.set()
        self.abort.set()

    def _on_display_quit(self) -> None:
        self.request_stop("display closed")

    def _interrupt_sources(self) -> None:
        for st in self.states:
            st.src.interrupt()

    # -- run ---------------------------------------------------------------------------------------------
    def run(self) -> StreamReport:
        """Open everything, stream until the inputs end or a stop, finalise every output.

        Returns:
            :class:`rtseg.stream.metrics.StreamReport` — frames, seconds, FPS, per-stage latency
            p50/p99 (ms), drops, per-source figures, RSS (MiB).

        Raises:
            RtsegError: a source or output that cannot be opened (missing file, unreadable video,
                missing camera, unknown scheme, output folder not writable), ``--loop`` on a source
                that cannot loop, an error while streaming (after the outputs were finalised), a
                second call (a pipeline runs once), or an ``http`` address that cannot be bound.
        """
        if self._opened:
            raise RtsegError("this StreamPipeline has already run; create a new one for another run")
        self._start_http()
        try:
            return self._run()
        finally:
            if self.http is not None:
                self.http.close()

    def _run(self) -> StreamReport:
        """:meth:`run` after the ``--http`` server started (it is closed by :meth:`run`)."""
        import psutil

        self._warm_up()
        self._open_all()
        self._make_queues()
        readers, infer, writers = self._make_threads()
        guard = _SignalGuard(self)
        if self.options.handle_signals:
            guard.install()
        metrics = None
        self._proc = psutil.Process()
        self._t_start = time.perf_counter()
        try:
            metrics = self._start_metrics()
            for t in readers + [infer] + writers:
                t.start()
            self._wait(writers, infer)
            seconds = time.perf_counter() - self._t_start
            if self.stop_reason is None and self.stop.is_set() and not self.errors:
                self.stop_reason = "stop requested"
        finally:
            guard.restore()
            self._shut_down(readers, infer)
            if metrics is not None:
                try:
                    metrics.close()
                except OSError as e:
                    self.errors.append(write_error(self.options.metrics_jsonl, e, "--metrics-jsonl"))
        self._raise_errors()
        return self._report(seconds)

    def _warm_up(self) -> None:
        """Run the engine once at every batch size the stream can use (1 … ``batch_size``, at most
        :data:`WARMUP_MAX_BATCH`), on the path it will use (masks or logits), before any source is read:
        lazy compilation (OpenVINO's uint8 pre-processing graph, a new batch shape) then costs no live
        frame. Calls the backend itself, not the overridable steps. Recorded as ``warmup_ms``."""
        t0 = time.perf_counter()
        h, w = self.backend.input_hw
        logits = self.temporal is not None or (self.decision is not None and self.decision.needs_logits)
        run = self.backend.infer_u8 if logits else self.backend.predict_u8
        for n in range(1, min(self.batch_size, WARMUP_MAX_BATCH) + 1):
            run(np.zeros((n, h, w, 3), np.uint8))
        self.warmup_ms = (time.perf_counter() - t0) * 1000.0

    def _open_all(self) -> None:
        opts = self.options
        try:
            for spec in self.sources:
                src = self._open_source(spec)
                self._opened.append(src)
                if opts.loop != 1:
                    src.set_loop(opts.loop)
            per_src_sinks = _map_outputs(self.outputs, self._opened, opts)
            refuse_overwriting_inputs(per_src_sinks, self._opened)
            refuse_output_collisions(per_src_sinks, self._opened,
                                     [(k, v) for k, v in (("--metrics-jsonl", opts.metrics_jsonl),
                                                          ("--save-masks", opts.save_masks)) if v is not None])
            if opts.show:
                for i, sinks in enumerate(per_src_sinks):
                    sinks.append(DisplaySink(f"rtseg [{i}] {self._opened[i].name}"))
            if self.http is not None:
                for sinks in per_src_sinks:
                    sinks.append(self.http.preview_sink())
            if opts.save_masks is not None:
                self.mask_writer = MaskWriter(opts.save_masks, len(self._opened), self.backend.num_classes == 1)
            shape = (*self.backend.input_hw, 3)
            for i, (src, sinks) in enumerate(zip(self._opened, per_src_sinks)):
                self._open_sinks(src, sinks)
                self.states.append(_SourceState(i, src, sinks, shape, self.backend.num_classes))
        except BaseException:
            _close_all(self._all_sinks, self._opened)
            raise

    def _open_source(self, spec) -> Source:
        if isinstance(spec, Source):
            if spec.info is None:
                spec.open()
            return spec
        return _open_with_retry(spec, self.options, self.stop, self.log)

    def _open_sinks(self, src: Source, sinks: list[Sink]) -> None:
        for sk in sinks:
            sk.set_pacing(not src.live)
            sk.stop_event = self.abort
            sk.on_quit = self._on_display_quit
            sk.open(src.info, src.audio, live=src.live)
            self._all_sinks.append(sk)
            for note in sk.notes:
                self.log(note)

    def _make_queues(self) -> None:
        bs = self._take_n
        live = [st.src.live for st in self.states]
        self.unserved = [0] * len(self.states)
        self.inq = _InQueues([max(LIVE_QUEUE_FRAMES, 2 * bs) if lv else max(4, 2 * bs) for lv in live], live)

    def _make_threads(self) -> tuple[list[threading.Thread], threading.Thread, list[threading.Thread]]:
        readers = [threading.Thread(target=_SourceWorker(self, st).run, name=f"rtseg-src{st.idx}", daemon=True)
                   for st in self.states]
        infer = threading.Thread(target=self._infer_worker, name="rtseg-infer", daemon=True)
        writers = [threading.Thread(target=self._sink_worker, args=(st,), name=f"rtseg-sink{st.idx}", daemon=True)
                   for st in self.states]
        return readers, infer, writers

    def _start_http(self) -> None:
        """Serve ``options.http`` (before the warm-up, so ``/healthz`` answers while sources open)."""
        opts = self.options
        if opts.http is None:
            return
        from .http import HttpServer

        self.http = HttpServer(self, opts.http, token=opts.http_token, preview_fps=opts.http_preview_fps,
                               log=self.log).start()

    def _start_metrics(self) -> MetricsWriter | None:
        path = self.options.metrics_jsonl
        if not path:
            return None
        try:
            writer = MetricsWriter(path, _MetricsSnapshot(self))
        except OSError as e:
            raise RtsegError(f"cannot write --metrics-jsonl {path} ({e.strerror}); choose a writable path") from None
        writer.start()
        return writer

    def _wait(self, writers: list[threading.Thread], infer: threading.Thread | None = None) -> None:
        """Until every sink thread ended: sample RSS once per second (flat = no leak), pass stops on;
        once the inference thread has ended (by itself or by an error), no frame can come, so every
        sink thread is told end-of-stream (it never waits forever)."""
        next_rss = 0.0
        eos_sent = False
        while any(t.is_alive() for t in writers):
            if infer is not None and not eos_sent and not infer.is_alive():
                eos_sent = True
                for st in self.states:
                    st.put_out(_EOS, None, self.abort)
            if time.perf_counter() >= next_rss:
                self._rss.append(self._proc.memory_info().rss / 2**20)
                next_rss = time.perf_counter() + 1.0
            for t in writers:
                t.join(timeout=0.1)
            if self.stop.is_set():
                self._interrupt_sources()

    def _shut_down(self, readers: list[threading.Thread], infer: threading.Thread) -> None:
        self.stop.set()
        self._interrupt_sources()
        for t in readers + [infer]:
            if t.ident is not None:  # started (an error before the start, e.g. --metrics-jsonl, must not hide)
                t.join(timeout=1.0)
        # a source thread still blocked in a network read keeps its container (closing it under the
        # reader would be a use-after-free); the process exit reclaims it
        busy = {st.idx for st, t in zip(self.states, readers) if t.is_alive()}
        _close_all(self._all_sinks, [s for i, s in enumerate(self._opened) if i not in busy])

    # -- the inference and sink threads ------------------------------------------------------------------
    def _release(self, item: StreamFrame) -> None:
        self.states[item.src].release(item)

    def _infer_worker(self) -> None:
        """Round-robin batches across sources → :meth:`infer` → each source's out-queue (EOS at the end).
        Up to ``backend.in_flight`` batches are on their way at once (an inference server); they are
        delivered in the order they were taken, and all of them before a source's EOS."""
        done = [False] * len(self.states)
        pending: collections.deque = collections.deque()
        depth = max(1, int(getattr(self.backend, "in_flight", 1))) if self.temporal is None else 1
        try:
            h, w = self.backend.input_hw
            batch = np.empty((self.batch_size, h, w, 3), dtype=np.uint8)
            timeout = max(0.0, self.options.batch_timeout_ms) / 1000.0
            max_age = self.options.max_latency_ms / 1000.0 if self.options.max_latency_ms else None
            while not all(done):
                items, finished = self.inq.take(self._take_n, timeout, self.stop, self.abort, max_age,
                                                self._release)
                if items:
                    pending.append(self._start_batch(batch, items, depth))
                while pending and (len(pending) >= depth or not items or finished):
                    self._finish_batch(pending.popleft())
                for i in finished:
                    if not done[i]:
                        done[i] = True
                        self.states[i].put_out(_EOS, None, self.abort)
        except BaseException as e:  # noqa: BLE001 - reported by run()
            self.fail(e)
            for i, d in enumerate(done):
                if not d:
                    self.states[i].put_out(_EOS, None, self.abort)

    def _start_batch(self, batch: np.ndarray, items: list[StreamFrame], depth: int):
        """Start one batch: ``(wait, items, t0, logit_path)`` for :meth:`_finish_batch` (``wait`` ``None``:
        the temporal path already delivered it, or the inference server was unavailable)."""
        t0 = time.perf_counter()
        if self.temporal is not None:
            self._infer_keyframes(batch, items)
            return None, [], t0, False
        k = len(items)
        for j, it in enumerate(items):
            batch[j] = it.net
            self.states[it.src].release(it)
        logit_path = self.decision is not None and self.decision.needs_logits
        try:
            if depth > 1:
                return self.backend.submit_u8(batch[:k], logits=logit_path), items, t0, logit_path
            out = self.infer_logits(batch[:k]) if logit_path else self.infer(batch[:k])
        except BackendUnavailable as e:
            return self._unserved(items, e)
        return (lambda: out), items, t0, logit_path

    def _finish_batch(self, started) -> None:
        wait, items, t0, logit_path = started
        if wait is None:
            return
        try:
            out = wait()
        except BackendUnavailable as e:
            self._unserved(items, e)
            return
        if self._server_down_since is not None:
            self.log(f"the inference server answers again after {time.monotonic() - self._server_down_since:.1f} s")
            self._server_down_since = None
        if logit_path:
            masks, present, raw_any = self.decision.batch(out)
        else:
            masks = out
        self.infer_lat.add((time.perf_counter() - t0) * 1000.0)
        self.batch_sizes.append(len(items))
        for j, it in enumerate(items):
            it.mask = masks[j]
            if logit_path:
                it.present, it.raw_any = bool(present[j]), bool(raw_any[j])
            self.states[it.src].put_out(it, self._out_cap, self.abort)

    def _unserved(self, items: list[StreamFrame], e: BackendUnavailable):
        """The inference server did not answer: a run of live sources only drops these frames (counted,
        ``server_unavailable``) and goes on — the backend retries with backoff on the next batch; any
        file source makes it the run's error (one line; the sinks finish, the files stay playable)."""
        if not all(st.src.live for st in self.states):
            raise e
        if self._server_down_since is None:
            self._server_down_since = time.monotonic()
            self.log(f"{e}; dropping live frames until it answers")
        for it in items:
            self.unserved[it.src] += 1
        return None, [], 0.0, False

    def _infer_keyframes(self, batch: np.ndarray, items: list[StreamFrame]) -> None:
        """Temporal modes: only the keyframes go to the engine (:meth:`infer_logits`, ≤ ``batch_size`` a
        call); every frame then goes on in order, the others get their logits in the sink thread."""
        keys = [it for it in items if self.temporal.plan(it)]
        for j0 in range(0, len(keys), self.batch_size):
            chunk = keys[j0:j0 + self.batch_size]
            for j, it in enumerate(chunk):
                batch[j] = it.net
            t0 = time.perf_counter()
            logits = self.infer_logits(batch[:len(chunk)])
            self.infer_lat.add((time.perf_counter() - t0) * 1000.0)
            self.batch_sizes.append(len(chunk))
            for j, it in enumerate(chunk):
                it.logits = logits[j]
        for it in items:
            self.states[it.src].release(it)
            self.states[it.src].put_out(it, self._out_cap, self.abort)

    def _sink_worker(self, st: _SourceState) -> None:
        """Out-queue of one source → :meth:`postprocess` → :meth:`write` (+ audio copy); finalise at the end."""
        audio_sinks = [s for s in st.sinks if s.accepts_audio and s.has_audio]
        frame_sinks = [s for s in st.sinks if s.writes_frames]
        natural_end = True
        try:
            self._sink_frames(st, frame_sinks, audio_sinks)
        except BaseException as e:  # noqa: BLE001 - reported by run()
            natural_end = False
            self.fail(e)
            st.drain_out()
        finally:
            self._finish_sinks(st, audio_sinks, natural_end)

    def _sink_frames(self, st: _SourceState, frame_sinks: list[Sink], audio_sinks: list[Sink]) -> None:
        perf = time.perf_counter
        lat_post, lat_enc, lat_e2e = st.lat["postprocess"], st.lat["encode"], st.lat["e2e"]
        abort = self.abort
        while True:
            it = st.pop_out()
            if it is _EOS:
                return
            if abort.is_set():
                continue
            t0 = perf()
            if it.mask is None:
                it.mask = self.temporal.resolve(it)
            if self.decision is not None:
                self.decision.frame(it)
            st.flicker.update(it.mask)
            if self.mask_writer is not None:
                self.mask_writer.write(st.idx, it.mask, it.geom)
            frame = self.postprocess(it)
            t1 = perf()
            st.last_video_s = float(frame.pts * frame.time_base)
            if audio_sinks:
                st.mux_audio(audio_sinks, st.last_video_s)
            self.write(frame_sinks, frame)
            t2 = perf()
            lat_post.add((t1 - t0) * 1000.0)
            lat_enc.add((t2 - t1) * 1000.0)
            lat_e2e.add((t2 - it.t0) * 1000.0)
            st.written += 1

    def _finish_sinks(self, st: _SourceState, audio_sinks: list[Sink], natural_end: bool) -> None:
        """Copy the remaining audio (all of it when the input ended by itself), then close every sink."""
        try:
            if audio_sinks:
                ended = natural_end and not self.stop.is_set() and not st.max_frames_hit
                st.mux_audio(audio_sinks, math.inf if ended else st.last_video_s + st.frame_s)
        except BaseException as e:  # noqa: BLE001
            self.fail(e)
        for s in sorted(st.sinks, key=lambda k: isinstance(k, NetworkSink)):  # files first: a receiver may block
            try:
                s.close()
            except BaseException as e:  # noqa: BLE001
                self.fail(RtsegError(f"cannot finalise output {s.name}: {_short(e)}"))

    # -- the report --------------------------------------------------------------------------------------
    def _raise_errors(self) -> None:
        if self.errors:
            e = self.errors[0]
            if isinstance(e, RtsegError):
                raise e
            raise RtsegError(f"stream failed: {type(e).__name__}: {_short(e)}; outputs were finalised up to the "
                             f"failure") from e
        for s in self.states:
            if not s.src.live and s.read == 0 and s.src.decode_errors:
                raise RtsegError(f"{s.src.name} is not a readable video (no frame could be decoded, "
                                 f"{s.src.decode_errors} bad packets); re-encode it or pass another file")

    def _recorders(self, stage: str) -> list[LatencyRecorder]:
        return [self.infer_lat] if stage == "infer" else [s.lat[stage] for s in self.states]

    def _report(self, seconds: float) -> StreamReport:
        if self.stop_reason is None:
            self.stop_reason = "max frames" if any(s.max_frames_hit for s in self.states) else "end of input"
        report = StreamReport(backend=self.backend.describe(), stopped=self.stop_reason)
        report.seconds = seconds
        report.frames = sum(s.written for s in self.states)
        report.fps = report.frames / seconds if seconds > 0 else 0.0
        pairs = sum(s.flicker.pairs for s in self.states)
        report.flicker = sum(s.flicker.total for s in self.states) / pairs if pairs else math.nan
        o = self.options
        report.temporal = describe_temporal(o.temporal, o.infer_every, o.ema)
        report.decision = self.decision.summary() if self.decision is not None else None
        report.warmup_ms = round(self.warmup_ms, 1)
        report.masks_saved = sum(self.mask_writer.counts) if self.mask_writer is not None else 0
        report.batch_mean = float(np.mean(self.batch_sizes)) if self.batch_sizes else 0.0
        report.queue_max = {"in": sum(self.inq.max_depth), "out": sum(s.out_max for s in self.states)}
        rss = self._rss
        if rss:
            report.rss_mb = {"first": round(rss[0], 1), "last": round(rss[-1], 1), "max": round(max(rss), 1),
                             "samples": len(rss)}
        for stage in STAGES:
            report.latency[stage] = Latency.of([r.samples() for r in self._recorders(stage)])
        causes = self.drop_causes()
        report.sources = [self._source_report(s, seconds, causes[i]) for i, s in enumerate(self.states)]
        report.drops = sum(s.drops for s in report.sources)
        return report

    def drop_causes(self) -> list[tuple[int, int, int, int]]:
        """Per source, frames dropped by cause (:data:`DROP_CAUSES`): backpressure (the pipeline is
        slower than the live source), ``max_latency_ms`` exceeded, a network output's receiver too slow, the
        inference server not answering."""
        return [(self.inq.drops[i], self.inq.late[i], sum(getattr(k, "dropped", 0) for k in st.sinks), self.unserved[i])
                for i, st in enumerate(self.states)]

    def _source_report(self, s: _SourceState, seconds: float, causes: tuple[int, ...]) -> SourceReport:
        return SourceReport(
            name=s.src.name, outputs=[k.name for k in s.sinks if k.writes_frames and k.reported],
            width=s.src.info.width, height=s.src.info.height, live=s.src.live, frames=s.written,
            fps=s.written / seconds if seconds > 0 else 0.0, drops=sum(causes),
            drop_causes={k: n for k, n in zip(DROP_CAUSES, causes) if n},
            decode_errors=s.src.decode_errors, skipped_before_keyframe=getattr(s.src, "skipped_before_keyframe", 0),
            reconnects=s.reconnects, e2e=Latency.of(s.lat["e2e"].samples()),
            error=s.error, flicker=s.flicker.value)


def run_stream(backend, sources: Sequence, outputs: Sequence | None = None, options: StreamOptions | None = None,
               *, stop_event: threading.Event | None = None, log: Callable[[str], None] | None = None) -> StreamReport:
    """Segment one or more video sources with ``backend`` and write the overlaid video (one call).

    ``StreamPipeline(backend, sources, outputs, options, stop_event=..., log=...).run()``; see
    :class:`StreamPipeline` for the arguments and :class:`StreamOptions` for the options.

    Returns:
        :class:`rtseg.stream.metrics.StreamReport` — frames, seconds, FPS, per-stage latency p50/p99
        (ms), drops, per-source figures.

    Raises:
        RtsegError: a source or output that cannot be opened (missing file, unreadable video,
            missing camera, unknown scheme, output folder not writable), a bad option, ``--loop``
            on a source that cannot loop, or an error while streaming (after the outputs were
            finalised).
    """
    return StreamPipeline(backend, sources, outputs, options, stop_event=stop_event, log=log).run()


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def _open_with_retry(spec, opts: StreamOptions, stop: threading.Event, log) -> Source:
    """Open a source; with ``reconnect``, a network source that is not up yet is retried with backoff
    (never a :class:`SourceSpecError`: an unknown scheme or a missing file will not come up)."""
    network = "://" in str(spec) and str(spec).split("://")[0].lower() in NETWORK_SCHEMES
    delay = BACKOFF_FIRST_S
    while True:
        try:
            return open_source(spec, fps=opts.fps, timeout=opts.stall_timeout, open_timeout=opts.open_timeout,
                               stop_event=stop, log=log, rtsp_transport=opts.rtsp_transport)
        except SourceSpecError:
            raise
        except RtsegError as e:
            if not (opts.reconnect and network):
                raise
            log(f"{e}; retrying in {delay:g} s")
            if stop.wait(delay):
                raise
            delay = min(delay * 2, BACKOFF_MAX_S)


def _map_outputs(outputs: list, sources: list[Source], opts: StreamOptions) -> list[list[Sink]]:
    """Assign ``--output`` entries to sources (see :class:`StreamPipeline`)."""
    n = len(sources)
    outs = list(outputs or [])
    if not outs:
        return [[NullSink()] for _ in range(n)]
    if n == 1:
        return [[_build_sink(o, sources[0], 0, opts) for o in outs]]
    if all(isinstance(o, (str, os.PathLike)) and ("{i}" in str(o) or "{name}" in str(o)) for o in outs):
        return [[_build_sink(o, sources[i], i, opts) for o in outs] for i in range(n)]
    if len(outs) == n:
        return [[_build_sink(o, sources[i], i, opts)] for i, o in enumerate(outs)]
    raise RtsegError(f"{n} sources but {len(outs)} outputs; give one --output per source (in order), "
                     f"or one output containing {{i}} or {{name}}, e.g. --output 'out_{{i}}.mp4'")


def _build_sink(o, src: Source, i: int, opts: StreamOptions) -> Sink:
    """An output entry of source ``i``: a ``Sink`` object as is, a string through :func:`make_sink`."""
    if isinstance(o, Sink):
        return o
    s = str(o)
    if "{" in s:
        stem = Path(src.name).stem if "://" not in src.name else f"src{i}"
        s = s.replace("{i}", str(i)).replace("{name}", stem)
    return make_sink(s, codec=opts.codec, preset=opts.preset, crf=opts.crf)


def _close_all(sinks: list[Sink], sources: list[Source]) -> None:
    for s in sinks:
        try:
            s.close()
        except Exception:  # noqa: BLE001 - best effort on the error path
            pass
    for s in sources:
        try:
            s.close()
        except Exception:  # noqa: BLE001
            pass


def _short(e: BaseException) -> str:
    s = " ".join(str(e).split())
    return s[:200] if s else type(e).__name__


__all__ = ["StreamFrame", "StreamOptions", "StreamPipeline", "run_stream"]
