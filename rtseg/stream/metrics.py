"""Stream metrics: per-stage latency recorders and the end-of-run :class:`StreamReport`.

Stages (all latencies in milliseconds, wall clock, ``time.perf_counter``):

* ``decode`` — one ``decode()`` call of the demuxed packet that produced a frame (waiting for the
  packet to arrive, e.g. from a camera or the network, is *not* counted);
* ``preprocess`` — pixel-format conversion + resize/letterbox of one frame to the network input;
* ``infer`` — one ``backend.predict_u8`` call on a batch (every frame of the batch sees it); in the
  temporal modes one ``backend.infer_u8`` call on a batch of keyframes;
* ``postprocess`` includes the temporal step of the frames in between (optical flow, EMA);
* ``postprocess`` — mask → frame size + overlay of one frame;
* ``encode`` — encode + mux of one frame into all of its source's sinks;
* ``e2e`` — end to end, from the start of the decode call that produced a frame to its sinks having
  taken it (queueing included; encoder look-ahead buffering and network pacing of files included
  only as far as they block the sink).
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..safe_io import nan_to_none

STAGES = ("decode", "preprocess", "infer", "postprocess", "encode", "e2e")
#: why a live frame was not written (keys of ``SourceReport.drop_causes``)
DROP_CAUSES = ("backpressure", "max_latency", "slow_receiver", "server_unavailable")


class LatencyRecorder:
    """A ring buffer of latency samples (ms) written by one thread, read by any.

    Keeps the last ``capacity`` samples for percentiles; ``count`` counts every sample ever added.
    """

    def __init__(self, capacity: int = 1 << 16):
        self._buf = np.zeros(capacity, dtype=np.float64)
        self._cap = capacity
        self.count = 0

    def add(self, ms: float) -> None:
        """Record one sample in milliseconds."""
        self._buf[self.count % self._cap] = ms
        self.count += 1

    def samples(self, since: int = 0) -> np.ndarray:
        """Samples added after the first ``since`` ones (at most ``capacity``), as ``float64[n]`` ms."""
        n = self.count
        since = max(since, n - self._cap, 0)
        if n <= since:
            return np.zeros(0)
        idx = np.arange(since, n) % self._cap
        return self._buf[idx]


@dataclass
class Latency:
    """Percentiles of one stage in milliseconds over ``count`` samples (NaN when no sample)."""

    p50_ms: float = math.nan
    p99_ms: float = math.nan
    mean_ms: float = math.nan
    count: int = 0

    @property
    def p50(self) -> float:
        """Alias of ``p50_ms`` (ms)."""
        return self.p50_ms

    @property
    def p99(self) -> float:
        """Alias of ``p99_ms`` (ms)."""
        return self.p99_ms

    @classmethod
    def of(cls, samples: np.ndarray | list[np.ndarray]) -> "Latency":
        """Summarise one array of ms samples, or several (concatenated)."""
        if isinstance(samples, list):
            samples = np.concatenate(samples) if samples else np.zeros(0)
        if samples.size == 0:
            return cls()
        p50, p99 = np.percentile(samples, [50, 99])
        return cls(float(p50), float(p99), float(samples.mean()), int(samples.size))


@dataclass
class SourceReport:
    """What happened to one source.

    ``frames``: frames written to its sinks; ``fps``: frames / seconds of the run;
    ``drops``: live frames not written, ``drop_causes`` by cause (``backpressure``: the pipeline was
    slower than the source; ``max_latency``: waited longer than ``max_latency_ms``; ``slow_receiver``:
    a network output's receiver did not take them — counted once per frame and output;
    ``server_unavailable``: the inference server did not answer, :class:`~rtseg.errors.BackendUnavailable`);
    ``decode_errors``: packets the decoder rejected (skipped); ``skipped_before_keyframe``: video
    packets of a live stream joined between keyframes, before its first decodable one (every
    connection); ``reconnects``: successful reopens;
    ``flicker``: mean over consecutive frames of 1 − IoU of the predicted masks at network size
    (:class:`rtseg.metrics.FlickerMeter`; NaN with fewer than two frames).
    """

    name: str
    outputs: list[str]
    width: int = 0
    height: int = 0
    live: bool = False
    frames: int = 0
    fps: float = 0.0
    drops: int = 0
    drop_causes: dict[str, int] = field(default_factory=dict)
    decode_errors: int = 0
    skipped_before_keyframe: int = 0
    reconnects: int = 0
    e2e: Latency = field(default_factory=Latency)
    error: str | None = None
    flicker: float = math.nan


@dataclass
class StreamReport:
    """Summary of a :func:`rtseg.stream.run_stream` run.

    Attributes:
        frames: frames written (all sources).
        seconds: wall-clock duration of the run, from the first source starting to the last sink
            closing (s).
        fps: ``frames / seconds`` — aggregate end-to-end throughput (frames per second).
        latency: per-stage :class:`Latency` in ms, keys from ``STAGES``.
        drops: dropped live frames (all sources).
        batch_mean: mean inference batch size.
        queue_max: largest depth seen per queue (``"in"``: decoded frames waiting for inference,
            ``"out"``: segmented frames waiting for the sinks), summed over sources.
        sources: one :class:`SourceReport` per source, in ``--source`` order.
        stopped: why the run ended (``"end of input"``, ``"max frames"``, ``"SIGINT"``, ...).
        backend: the backend's one-line description.
        rss_mb: resident memory of the process in MiB, sampled once per second: ``first``, ``last``,
            ``max``, ``samples``.
        flicker: the predicted masks' temporal flicker, mean over consecutive frames of each source of
            1 − IoU(mask_t, mask_t+1) at network size (0 = stable; NaN with fewer than two frames).
        temporal: the temporal mode, e.g. ``"off, K=1"`` or ``"flow, K=2"`` (:mod:`rtseg.stream.temporal`).
        decision: the decision layer (:mod:`rtseg.stream.decide`): the presence rule, ``on_frames``,
            ``hold_frames`` and the frame counts (shown, withheld by presence / persistence, held);
            ``None`` when the network's own mask was shown (``--raw``, multi-class models).
        masks_saved: masks written by ``--save-masks`` (all sources).
        warmup_ms: time spent running the engine once at every batch size before the first frame (ms).
    """

    frames: int = 0
    seconds: float = 0.0
    fps: float = 0.0
    latency: dict[str, Latency] = field(default_factory=dict)
    drops: int = 0
    batch_mean: float = 0.0
    queue_max: dict[str, int] = field(default_factory=dict)
    sources: list[SourceReport] = field(default_factory=list)
    stopped: str = "end of input"
    backend: str = ""
    rss_mb: dict[str, float] = field(default_factory=dict)
    flicker: float = math.nan
    temporal: str = "off, K=1"
    decision: dict | None = None
    masks_saved: int = 0
    warmup_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (NaN → ``None``)."""
        return nan_to_none(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def table(self) -> str:
        """Human-readable multi-line summary: totals, per-stage p50/p99 ms, per-source FPS."""
        lines = [f"stream: {self.frames} frames in {self.seconds:.2f} s = {self.fps:.1f} FPS "
                 f"({self.backend}; batch mean {self.batch_mean:.2f}; drops {self.drops}; stopped: {self.stopped})",
                 f"  temporal: {self.temporal}; flicker (mean 1 - IoU of consecutive masks): {_fmt(self.flicker, 4)}",
                 f"  decision: {_decision_line(self.decision)}"
                 + (f"; {self.masks_saved} masks saved" if self.masks_saved else "")]
        lines.append(f"  {'stage':<12}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'count':>8}")
        for name in STAGES:
            lat = self.latency.get(name, Latency())
            lines.append(f"  {name:<12}{_fmt(lat.p50_ms):>9}{_fmt(lat.p99_ms):>9}{_fmt(lat.mean_ms):>9}{lat.count:>8}")
        if self.queue_max:
            lines.append("  queue max depth: " + ", ".join(f"{k} {v}" for k, v in self.queue_max.items()))
        if self.rss_mb:
            r = self.rss_mb
            lines.append(f"  RSS MiB: first {r['first']:.1f}, last {r['last']:.1f}, max {r['max']:.1f} ({r['samples']} samples)")
        for i, s in enumerate(self.sources):
            extra = []
            if s.drops:
                extra.append(f"drops {s.drops} (" + ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in s.drop_causes.items()) + ")")
            if s.decode_errors:
                extra.append(f"decode errors {s.decode_errors}")
            if s.skipped_before_keyframe:
                extra.append(f"{s.skipped_before_keyframe} packets before the first keyframe skipped")
            if s.reconnects:
                extra.append(f"reconnects {s.reconnects}")
            if s.error:
                extra.append(f"error: {s.error}")
            lines.append(f"  [{i}] {s.name} {s.width}x{s.height}: {s.frames} frames, {s.fps:.1f} FPS, "
                         f"e2e p50 {_fmt(s.e2e.p50_ms)} / p99 {_fmt(s.e2e.p99_ms)} ms"
                         + (f"; {'; '.join(extra)}" if extra else "")
                         + (f" -> {', '.join(s.outputs)}" if s.outputs else " -> (no output)"))
        return "\n".join(lines)


def _decision_line(d: dict | None) -> str:
    """:func:`rtseg.decision.describe_decision` plus the frame counts of the run."""
    from ..decision import describe_decision

    if d is None:
        return describe_decision(None)
    return (f"{describe_decision(d)}: frames with a detection shown {d['shown']}, held {d['held']}, withheld by "
            f"presence {d['withheld_presence']}, by persistence {d['withheld_persistence']}")


def _fmt(x: float, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"



class MetricsWriter(threading.Thread):
    """Writes one JSON line per ``interval`` seconds to ``path`` while the stream runs.

    Each line: ``{"t": s since start, "frames": total, "fps": over the last interval,
    "sources": [{"name", "frames", "fps", "drops", "in_queue", "out_queue"}],
    "latency": {stage: {"p50_ms", "p99_ms"} over the last interval}}``.
    """

    def __init__(self, path, snapshot, interval: float = 1.0):
        super().__init__(name="rtseg-metrics", daemon=True)
        self.path = path
        self.snapshot = snapshot  # callable(since: dict|None) -> (line dict, marks)
        self.interval = interval
        self._stop_evt = threading.Event()
        self._fh = open(path, "w", buffering=1)
        self.error: OSError | None = None  # a failed write (full disk): the thread stops writing

    def run(self) -> None:
        marks = None
        while not self._stop_evt.wait(self.interval):
            line, marks = self.snapshot(marks)
            try:
                self._fh.write(json.dumps(nan_to_none(line)) + "\n")
            except OSError as e:
                self.error = e
                return

    def close(self) -> None:
        """Write a last line, stop the thread and close the file.

        Raises:
            OSError: a write failed, now or while the stream ran (the caller reports it in one line).
        """
        self._stop_evt.set()
        if self.is_alive():
            self.join(timeout=2)
        try:
            if self.error is None:
                line, _ = self.snapshot(None)
                line["final"] = True
                self._fh.write(json.dumps(nan_to_none(line)) + "\n")
        finally:
            self._fh.close()
        if self.error is not None:
            raise self.error
