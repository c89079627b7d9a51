"""The stream pipeline: N sources → one batched engine → per-source overlay + sinks.

Threads, joined by bounded queues (docs/architecture.md, "Stream pipeline")::

    source i:  demux + decode → yuv420p → preprocess (RGB, network size)  ─┐   (one thread per source)
                                                                           ├→ in-queues (one per source)
    infer:     round-robin batch across sources (≤ batch_size, ≤ batch_timeout_ms) → predict_u8
                                                                           ├→ out-queue of each source
    sink i:    mask → frame size, overlay (YUV) → encode + mux into every sink of source i (+ audio copy)

* Files (and lavfi graphs, image folders) never drop: a full queue blocks the decoder.
* Live sources (cameras, network) drop the *oldest* queued frame when their queue is full, and
  frames older than ``max_latency_ms`` when they reach the batcher; both are counted as drops.
* A network source that fails or stalls (``stall_timeout`` s without data) is reopened with
  exponential backoff (0.25 s doubling up to 5 s between attempts) when ``reconnect`` is on; its
  output keeps going, with timestamps continuing from where they stopped plus the outage's
  wall-clock length. Without ``reconnect`` the source ends there (the run ends normally).
* Timestamps: every frame keeps its ``pts``/``time_base``; file sources come out with exactly the
  input's timestamps (frame count, rate and VFR timing preserved). Live sources are rebased to
  start at 0.
* Stop (SIGINT/SIGTERM, ``max_frames``, a display's q key): sources stop reading, frames already
  decoded are still segmented and written, encoders are flushed and every container is finalised.
  A second SIGINT/SIGTERM abandons queued frames but still finalises the files.
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
from typing import Sequence

import av
import numpy as np

from ..data.transforms import Geometry, Preprocessor, place
from ..errors import RtsegError
from .metrics import STAGES, Latency, LatencyRecorder, MetricsWriter, SourceReport, StreamReport
from .overlay import Overlay, palette_from_meta
from .sinks import NetworkSink, NullSink, Sink, make_sink
from .sources import Source, open_source

_EOS = object()


@dataclass
class _Frame:
    src: int
    frame: av.VideoFrame  # yuv420p, pts/time_base set
    net: np.ndarray  # uint8[H, W, 3] RGB network input
    geom: Geometry
    t0: float  # perf_counter when it left the decoder
    mask: np.ndarray | None = None


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
        self.drops = [0] * len(caps)
        self.max_depth = [0] * len(caps)
        self.rr = 0  # round-robin start

    def put(self, i: int, item: _Frame, stop: threading.Event, release) -> None:
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
        with self.cond:
            self.closed[i] = True
            self.cond.notify_all()

    def take(self, max_n: int, timeout_s: float, stop: threading.Event, abort: threading.Event,
             max_age_s: float | None, release) -> tuple[list[_Frame], list[int]]:
        """Wait for ≥ 1 frame, then up to ``timeout_s`` for ``max_n``; return (frames, finished sources).

        A source is finished when it is closed (or the stream is stopping) and its queue is empty.
        Returns ``([], [])`` only when every source is finished.
        """
        n_src = len(self.q)
        with self.cond:
            while True:
                if abort.is_set():
                    for i in range(n_src):
                        while self.q[i]:
                            release(self.q[i].popleft())
                finished = [i for i in range(n_src) if not self.q[i] and (self.closed[i] or stop.is_set())]
                if len(finished) == n_src or any(self.q):
                    break
                self.cond.wait(0.05)
            if len(finished) == n_src:
                return [], finished
            deadline = time.perf_counter() + timeout_s
            while sum(map(len, self.q)) < max_n and not stop.is_set():
                if not any(not self.closed[i] and len(self.q[i]) < self.caps[i] for i in range(n_src)):
                    break  # every source is closed or full: no frame can come
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self.cond.wait(left)
            out: list[_Frame] = []
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
                        self.drops[i] += 1
                    if q and len(out) < max_n:
                        out.append(q.popleft())
                        progress = True
            finished = [i for i in range(n_src) if not self.q[i] and (self.closed[i] or stop.is_set())]
            self.cond.notify_all()
            return out, finished


class _SourceState:
    def __init__(self, idx: int, src: Source, sinks: list[Sink], net_shape: tuple[int, int, int]):
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

    def get_buf(self) -> np.ndarray:
        try:
            return self.pool.pop()
        except IndexError:
            return np.empty(self.net_shape, dtype=np.uint8)

    def release(self, item: _Frame) -> None:
        self.pool.append(item.net)


def run_stream(backend, sources: Sequence, outputs: Sequence | None = None, *, batch_size: int = 1,
               batch_timeout_ms: float = 10.0, alpha: float = 0.5, contour: bool = False, codec: str = "libx264",
               preset: str = "ultrafast", crf: int = 23, max_frames: int | None = None,
               max_latency_ms: float | None = None, reconnect: bool = False, fps: float | None = None,
               stall_timeout: float = 5.0, show: bool = False, metrics_jsonl: str | os.PathLike | None = None,
               loop: int = 1,
               overlay: bool = True, stop_event: threading.Event | None = None, handle_signals: bool = True,
               log=None) -> StreamReport:
    """Segment one or more video sources with ``backend`` and write the overlaid video.

    Args:
        backend: an :class:`rtseg.runtime.base.Backend` (``predict_u8(uint8[N, H, W, 3]) → uint8[N, H, W]``).
        sources: ``--source`` strings (file, ``cameraN``, URL, image folder/glob, ``lavfi:GRAPH``)
            or already opened :class:`rtseg.stream.sources.Source` objects.
        outputs: ``--output`` strings or :class:`Sink` objects. ``None``/empty: no output (frames are
            still overlaid unless ``overlay=False``; used by ``rtseg bench``). With one source every
            output gets it; with N sources give N outputs (one each, in order) or outputs holding
            ``{i}`` (source index) or ``{name}`` (source file stem), expanded per source.
        batch_size: frames per inference call, taken round-robin across sources (≥ 1; capped by the
            engine's ``max_batch``).
        batch_timeout_ms: how long the batcher waits to fill a batch once it has one frame (ms).
        alpha: overlay opacity in [0, 1]; contour: also draw region outlines.
        codec, preset, crf: encoder for file/network sinks (see :func:`rtseg.stream.sinks.resolve_codec`).
        max_frames: stop after this many frames *per source*.
        max_latency_ms: live frames that waited longer than this before inference are dropped (ms).
        reconnect: reopen failed/stalled network sources with backoff instead of ending them.
        fps: frame rate of image-folder sources (FPS; default 25) and the rate asked of cameras.
        stall_timeout: a network source silent this long (s) has failed.
        show: also show each source in a window (needs a display).
        metrics_jsonl: write one JSON line of metrics per second to this file.
        loop: passes over each video-file source (1 = once, 0 = until stopped); the timestamps
            continue across passes; audio is not copied when looping. ``RtsegError`` for live or
            network sources.
        overlay: draw the masks (``False``: frames pass through unchanged, for measurements).
        stop_event: set it from another thread to stop the stream gracefully.
        handle_signals: in the main thread, turn SIGINT/SIGTERM into a graceful stop (a second one
            abandons queued frames); the previous handlers are restored afterwards.
        log: ``callable(str)`` for warnings (default: stderr).

    Returns:
        :class:`rtseg.stream.metrics.StreamReport` — frames, seconds, FPS, per-stage latency p50/p99
        (ms), drops, per-source figures.

    Raises:
        RtsegError: a source or output that cannot be opened (missing file, unreadable video,
            missing camera, unknown scheme, output folder not writable), a bad option, or an error
            while streaming (after the outputs were finalised).
    """
    log = log or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    if batch_size < 1:
        raise RtsegError(f"--batch-size must be ≥ 1, got {batch_size}")
    if not sources:
        raise RtsegError("no --source given; pass a video file, cameraN, a URL, an image folder or lavfi:GRAPH")
    if backend.max_batch is not None:
        batch_size = min(batch_size, int(backend.max_batch))
    model_meta = backend.meta.get("model", {}) if isinstance(backend.meta, dict) else {}
    drawer = Overlay(palette_from_meta(model_meta, backend.num_classes), alpha=alpha, contour=contour)
    prep = _Prep(backend.input_hw, model_meta.get("resize", "stretch"))
    H, W = backend.input_hw
    stop = stop_event or threading.Event()
    abort = threading.Event()
    reason = {"why": None}

    opened: list[Source] = []
    all_sinks: list[Sink] = []
    try:
        for s in sources:
            opened.append(s if isinstance(s, Source) else _open(s, fps, stall_timeout, reconnect, stop, log))
            if loop != 1:
                from .sources import AVSource

                src = opened[-1]
                if not isinstance(src, AVSource) or src.live or src.network or src.format is not None:
                    raise RtsegError(f"--loop applies to video files, not {src.name}; drop --loop for live sources")
                src.loop, src.audio = int(loop), None
        per_src_sinks = _map_outputs(outputs, opened, codec=codec, preset=preset, crf=crf)
        if show:
            from .sinks import DisplaySink

            for i, lst in enumerate(per_src_sinks):
                d = DisplaySink(f"rtseg [{i}] {opened[i].name}")
                lst.append(d)
        states = []
        for i, (src, sinks) in enumerate(zip(opened, per_src_sinks)):
            for sk in sinks:
                if isinstance(sk, NetworkSink):
                    sk.pace = not src.live
                if hasattr(sk, "on_quit"):
                    sk.on_quit = lambda: _request_stop(stop, reason, "display closed")
                sk.open(src.info, src.audio, live=src.live)
                all_sinks.append(sk)
                for note in ([sk.audio_note] if getattr(sk, "audio_note", None) else []) + list(getattr(sk, "notes", [])):
                    log(note)
            states.append(_SourceState(i, src, sinks, (H, W, 3)))
    except BaseException:
        _close_all(all_sinks, opened)
        raise

    n = len(states)
    live = [s.src.live for s in states]
    caps = [max(2, batch_size) if lv else max(4, 2 * batch_size) for lv in live]
    inq = _InQueues(caps, live)
    out_cap = max(4, 2 * batch_size)
    errors: list[BaseException] = []
    infer_lat = LatencyRecorder()
    batch_sizes: list[int] = []
    max_age = max_latency_ms / 1000.0 if max_latency_ms else None

    def fail(e: BaseException) -> None:
        errors.append(e)
        stop.set()
        abort.set()

    # -- source threads ------------------------------------------------------------------------------
    def source_loop(st: _SourceState) -> None:
        src = st.src
        tb_out = src.info.time_base
        seg = {"base_pts": None, "tb": None, "offset_s": 0.0, "audio_base": None}
        last_out = {"pts": None, "wall": None}
        perf = time.perf_counter
        try:
            while True:
                ended_ok = False
                try:
                    for item in src.read():
                        if stop.is_set():
                            break
                        if item.kind == "audio":
                            pkt = item.obj
                            if src.live:
                                if seg["base_pts"] is None or pkt.pts is None:
                                    continue
                                t = float(pkt.pts * pkt.time_base) - seg["base_pts"] * float(seg["tb"]) + seg["offset_s"]
                                if t < 0:
                                    continue
                                d = (pkt.dts - pkt.pts) if pkt.dts is not None else 0
                                pkt.pts = round(t / pkt.time_base)
                                pkt.dts = pkt.pts + d
                            st.audio.append(pkt)
                            continue
                        f = item.obj
                        st.lat["decode"].add(item.decode_ms)
                        if src.live:  # rebase to 0 (and across reconnects)
                            if seg["base_pts"] is None:
                                seg["base_pts"], seg["tb"] = f.pts, f.time_base
                            t = float((f.pts - seg["base_pts"]) * seg["tb"]) + seg["offset_s"]
                            pts = round(t / tb_out)
                            if last_out["pts"] is not None and pts <= last_out["pts"]:
                                pts = last_out["pts"] + 1
                            f.pts, f.time_base = pts, tb_out
                        last_out["pts"], last_out["wall"] = f.pts, time.monotonic()
                        t0 = perf()
                        buf = st.get_buf()
                        geom = prep(f, buf)
                        t1 = perf()
                        st.lat["preprocess"].add((t1 - t0) * 1000.0)
                        inq.put(st.idx, _Frame(st.idx, f, buf, geom, t0 - item.decode_ms / 1000.0), stop, st.release)
                        st.read += 1
                        if max_frames is not None and st.read >= max_frames:
                            st.max_frames_hit = True
                            break
                    else:
                        ended_ok = True
                    if not ended_ok or stop.is_set() or not (reconnect and src.network and src.live):
                        return
                    why = "ended"
                except RtsegError:
                    raise
                except Exception as e:  # noqa: BLE001 - network read failures end or reconnect the source
                    if not src.network or stop.is_set():
                        raise
                    why = (f"sent no data for {stall_timeout:g} s" if isinstance(e, av.error.ExitError)
                           else f"failed ({_short(e)})")
                    if not reconnect:
                        st.error = why
                        log(f"source {src.name} {why}; it ends here (pass --reconnect to reopen it)")
                        return
                # reconnect with backoff
                src.close()
                delay = 0.25
                log(f"source {src.name} {why}; reconnecting")
                while not stop.is_set():
                    if stop.wait(delay):
                        return
                    try:
                        src.open()
                    except RtsegError:
                        delay = min(delay * 2, 5.0)
                        continue
                    st.reconnects += 1
                    gap = time.monotonic() - last_out["wall"] if last_out["wall"] else 0.0
                    prev = float(last_out["pts"] * tb_out) if last_out["pts"] is not None else 0.0
                    seg.update(base_pts=None, tb=None, offset_s=prev + gap)
                    log(f"source {src.name} reconnected")
                    break
                if stop.is_set():
                    return
        except BaseException as e:  # noqa: BLE001
            fail(e)
        finally:
            inq.close(st.idx)

    # -- inference thread ----------------------------------------------------------------------------
    def infer_loop() -> None:
        batch = np.empty((batch_size, H, W, 3), dtype=np.uint8)
        done = [False] * n
        timeout = max(0.0, batch_timeout_ms) / 1000.0
        perf = time.perf_counter
        try:
            while True:
                items, finished = inq.take(batch_size, timeout, stop, abort, max_age, lambda it: states[it.src].release(it))
                if items:
                    k = len(items)
                    for j, it in enumerate(items):
                        batch[j] = it.net
                        states[it.src].release(it)
                    t0 = perf()
                    masks = backend.predict_u8(batch[:k])
                    infer_lat.add((perf() - t0) * 1000.0)
                    batch_sizes.append(k)
                    for j, it in enumerate(items):
                        it.mask = masks[j]
                        _out_put(states[it.src], it, out_cap, abort)
                for i in finished:
                    if not done[i]:
                        done[i] = True
                        _out_put(states[i], _EOS, None, abort)
                if all(done):
                    return
        except BaseException as e:  # noqa: BLE001
            fail(e)
            for i in range(n):
                if not done[i]:
                    _out_put(states[i], _EOS, None, abort)

    # -- sink threads --------------------------------------------------------------------------------
    def sink_loop(st: _SourceState) -> None:
        perf = time.perf_counter
        audio_sinks = [s for s in st.sinks if s.accepts_audio and getattr(s, "astream", None) is not None]
        encode = [s for s in st.sinks if type(s) is not NullSink]
        natural_end = True
        try:
            while True:
                it = _pop_out(st)
                if it is _EOS:
                    break
                if abort.is_set():
                    continue
                t0 = perf()
                frame = drawer.apply_yuv420(it.frame, it.mask, it.geom) if overlay else it.frame
                t1 = perf()
                st.last_video_s = float(frame.pts * frame.time_base)
                if audio_sinks:
                    _mux_audio(st, audio_sinks, st.last_video_s)
                for s in encode:
                    s.write(frame)
                t2 = perf()
                st.lat["postprocess"].add((t1 - t0) * 1000.0)
                st.lat["encode"].add((t2 - t1) * 1000.0)
                st.lat["e2e"].add((t2 - it.t0) * 1000.0)
                st.written += 1
        except BaseException as e:  # noqa: BLE001
            natural_end = False
            fail(e)
            _drain_out(st)
        finally:
            try:
                if audio_sinks:
                    ended = natural_end and not stop.is_set() and not st.max_frames_hit
                    _mux_audio(st, audio_sinks, math.inf if ended else st.last_video_s + st.frame_s)
            except BaseException as e:  # noqa: BLE001
                fail(e)
            for s in st.sinks:
                try:
                    s.close()
                except BaseException as e:  # noqa: BLE001
                    fail(RtsegError(f"cannot finalise output {s.name}: {_short(e)}"))

    # -- run -----------------------------------------------------------------------------------------
    def snapshot(marks):
        now = time.perf_counter()
        marks = marks or {"t": t_start, "frames": [0] * n, "lat": {}}
        dt = max(1e-9, now - marks["t"])
        new = {"t": now, "frames": [s.written for s in states], "lat": {}}
        src_lines = []
        for i, s in enumerate(states):
            src_lines.append({"name": s.src.name, "frames": s.written,
                              "fps": (s.written - marks["frames"][i]) / dt,
                              "drops": inq.drops[i], "in_queue": len(inq.q[i]), "out_queue": len(s.out_q),
                              "reconnects": s.reconnects})
        lat = {}
        for stage in STAGES:
            recs = [infer_lat] if stage == "infer" else [s.lat[stage] for s in states]
            samples = []
            for j, r in enumerate(recs):
                key = f"{stage}{j}"
                samples.append(r.samples(marks["lat"].get(key, 0)))
                new["lat"][key] = r.count
            L = Latency.of(samples)
            lat[stage] = {"p50_ms": L.p50_ms, "p99_ms": L.p99_ms}
        total = sum(new["frames"])
        line = {"t": round(now - t_start, 3), "frames": total, "fps": (total - sum(marks["frames"])) / dt,
                "drops": sum(inq.drops), "rss_mb": round(proc.memory_info().rss / 2**20, 1), "sources": src_lines,
                "latency": lat}
        return line, new

    threads = [threading.Thread(target=source_loop, args=(st,), name=f"rtseg-src{st.idx}", daemon=True) for st in states]
    threads.append(threading.Thread(target=infer_loop, name="rtseg-infer", daemon=True))
    sink_threads = [threading.Thread(target=sink_loop, args=(st,), name=f"rtseg-sink{st.idx}", daemon=True)
                    for st in states]
    old_handlers = {}
    signals_seen = {"n": 0}

    def on_signal(signum, _frame):
        signals_seen["n"] += 1
        name = signal.Signals(signum).name
        _request_stop(stop, reason, name)
        if signals_seen["n"] >= 2:
            abort.set()
        for st in states:
            st.src.interrupt()

    if handle_signals and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old_handlers[sig] = signal.signal(sig, on_signal)
    writer = None
    import psutil

    proc, rss = psutil.Process(), []
    t_start = time.perf_counter()
    try:
        if metrics_jsonl:
            try:
                writer = MetricsWriter(metrics_jsonl, snapshot)
            except OSError as e:
                raise RtsegError(f"cannot write --metrics-jsonl {metrics_jsonl} ({e.strerror}); choose a writable path") from None
            writer.start()
        for t in threads + sink_threads:
            t.start()
        next_rss = 0.0
        while any(t.is_alive() for t in sink_threads):
            if time.perf_counter() >= next_rss:  # resident memory once per second (flat = no leak)
                rss.append(proc.memory_info().rss / 2**20)
                next_rss = time.perf_counter() + 1.0
            for t in sink_threads:
                t.join(timeout=0.1)
            if stop.is_set():
                for st in states:
                    st.src.interrupt()
        seconds = time.perf_counter() - t_start
        if reason["why"] is None and stop.is_set() and not errors:
            reason["why"] = "stop requested"
    finally:
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
        stop.set()
        for st in states:
            st.src.interrupt()
        for t in threads:
            t.join(timeout=1.0)
        # a source thread still blocked in a network read keeps its container (closing it under the
        # reader would be a use-after-free); the process exit reclaims it
        busy = {st.idx for st, t in zip(states, threads) if t.is_alive()}
        _close_all(all_sinks, [s for i, s in enumerate(opened) if i not in busy])
        if writer is not None:
            writer.close()
    if errors:
        e = errors[0]
        if isinstance(e, RtsegError):
            raise e
        raise RtsegError(f"stream failed: {type(e).__name__}: {_short(e)}; outputs were finalised up to the failure") from e

    for s in states:
        if not s.src.live and s.read == 0 and s.src.decode_errors and not errors:
            raise RtsegError(f"{s.src.name} is not a readable video (no frame could be decoded, "
                             f"{s.src.decode_errors} bad packets); re-encode it or pass another file")
    if reason["why"] is None:
        reason["why"] = "max frames" if any(s.max_frames_hit for s in states) else "end of input"
    report = StreamReport(backend=backend.describe(), stopped=reason["why"])
    report.seconds = seconds
    report.frames = sum(s.written for s in states)
    report.fps = report.frames / seconds if seconds > 0 else 0.0
    report.drops = sum(inq.drops)
    report.batch_mean = float(np.mean(batch_sizes)) if batch_sizes else 0.0
    report.queue_max = {"in": sum(inq.max_depth), "out": sum(s.out_max for s in states)}
    if rss:
        report.rss_mb = {"first": round(rss[0], 1), "last": round(rss[-1], 1), "max": round(max(rss), 1),
                         "samples": len(rss)}
    for stage in STAGES:
        recs = [infer_lat] if stage == "infer" else [s.lat[stage] for s in states]
        report.latency[stage] = Latency.of([r.samples() for r in recs])
    for i, s in enumerate(states):
        report.sources.append(SourceReport(
            name=s.src.name, outputs=[k.name for k in s.sinks if type(k) is not NullSink],
            width=s.src.info.width, height=s.src.info.height, live=s.src.live, frames=s.written,
            fps=s.written / seconds if seconds > 0 else 0.0, drops=inq.drops[i],
            decode_errors=s.src.decode_errors, reconnects=s.reconnects, e2e=Latency.of(s.lat["e2e"].samples()),
            error=s.error))
    return report


def _open(spec, fps, timeout: float, reconnect: bool, stop: threading.Event, log) -> Source:
    """Open a source; with ``reconnect``, a network source that is not up yet is retried with backoff."""
    from .sources import NETWORK_SCHEMES

    network = "://" in str(spec) and str(spec).split("://")[0].lower() in NETWORK_SCHEMES
    delay = 0.25
    while True:
        try:
            return open_source(spec, fps=fps, timeout=timeout)
        except RtsegError as e:
            if not (reconnect and network) or "unknown source scheme" in str(e):
                raise
            log(f"{e}; retrying in {delay:g} s")
            if stop.wait(delay):
                raise
            delay = min(delay * 2, 5.0)


def _request_stop(stop: threading.Event, reason: dict, why: str) -> None:
    if reason["why"] is None:
        reason["why"] = why
    stop.set()


def _out_put(st: _SourceState, item, cap: int | None, abort: threading.Event) -> None:
    with st.out_cond:
        while cap is not None and len(st.out_q) >= cap and not abort.is_set():
            st.out_cond.wait(0.1)
        st.out_q.append(item)
        st.out_max = max(st.out_max, len(st.out_q))
        st.out_cond.notify_all()


def _pop_out(st: _SourceState):
    """Block until the source's output queue has an item; pop it and wake a waiting producer."""
    with st.out_cond:
        while not st.out_q:
            st.out_cond.wait(0.1)
        it = st.out_q.popleft()
        st.out_cond.notify_all()
    return it


def _drain_out(st: _SourceState) -> None:
    """After a sink failure: keep consuming (so the batcher never blocks) until EOS."""
    while _pop_out(st) is not _EOS:
        pass


def _mux_audio(st: _SourceState, sinks: list, up_to_s: float) -> None:
    """Copy queued audio packets that start at or before ``up_to_s`` (s; ``inf``: all) into the sinks."""
    q = st.audio
    while q:
        pkt = q[0]
        if pkt.pts is not None and float(pkt.pts * pkt.time_base) > up_to_s:
            break
        q.popleft()
        for s in sinks:  # mux() references the packet, so one object serves every sink
            s.write_audio(pkt)


def _map_outputs(outputs, sources: list[Source], **kw) -> list[list[Sink]]:
    """Assign ``--output`` entries to sources (see :func:`run_stream`)."""
    n = len(sources)
    outs = list(outputs or [])
    if not outs:
        return [[NullSink()] for _ in range(n)]

    def build(o, i):
        if isinstance(o, Sink):
            return o
        s = str(o)
        if "{" in s:
            stem = Path(sources[i].name).stem if "://" not in sources[i].name else f"src{i}"
            s = s.replace("{i}", str(i)).replace("{name}", stem)
        return make_sink(s, **kw)

    if n == 1:
        return [[build(o, 0) for o in outs]]
    if all(isinstance(o, (str, os.PathLike)) and ("{i}" in str(o) or "{name}" in str(o)) for o in outs):
        return [[build(o, i) for o in outs] for i in range(n)]
    if len(outs) == n:
        return [[build(o, i)] for i, o in enumerate(outs)]
    raise RtsegError(f"{n} sources but {len(outs)} outputs; give one --output per source (in order), "
                     f"or one output containing {{i}} or {{name}}, e.g. --output 'out_{{i}}.mp4'")


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


__all__ = ["run_stream"]
