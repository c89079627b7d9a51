"""Timing helpers shared by ``rtseg bench``, the accuracy gate and ``--precision auto``: the machine
description, real frames from a video, and per-call latency of a backend (ms).

Medians, not means: the machines are shared and noisy.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import RtsegError


@dataclass
class BenchRow:
    """One measurement: ``target`` at ``batch``; latencies in ms per call, ``fps`` in frames/s."""

    target: str
    backend: str
    precision: str
    batch: int
    calls: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    fps: float
    kind: str = "infer"  # infer | stream | naive


def machine_info(threads: int | None) -> dict:
    """CPU model, cores, SIMD features, library versions: printed with every benchmark."""
    import onnxruntime
    import openvino
    import torch

    from .limits import cpu_info

    model, flags = cpu_info()
    return {"cpu": model, "cores": os.cpu_count(), "threads": threads,
            "simd": sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "avx_vnni", "fma")),
            "torch": torch.__version__, "openvino": openvino.__version__, "onnxruntime": onnxruntime.__version__}


def load_frames(video: str | Path, n: int) -> list[np.ndarray]:
    """Decode the first ``n`` frames of ``video`` as ``uint8[h, w, 3]`` RGB (PyAV).

    Raises:
        RtsegError: missing or unreadable video.
    """
    import av

    p = Path(video)
    if not p.is_file():
        raise RtsegError(f"video {p} does not exist; pass --video FILE (e.g. ../shared/data/video/endo_laparoscopy.mp4)")
    frames = []
    try:
        with av.open(str(p)) as c:
            for f in c.decode(video=0):
                frames.append(f.to_ndarray(format="rgb24"))
                if len(frames) >= n:
                    break
    except (av.error.FFmpegError, IndexError) as e:
        raise RtsegError(f"cannot decode video {p} ({e}); pass a video file FFmpeg can read") from None
    if not frames:
        raise RtsegError(f"video {p} has no frames; pass another video")
    return frames


def time_backend(backend, frames_net: np.ndarray, batch: int, seconds: float, warmup: int, min_calls: int = 5) -> BenchRow:
    """Time ``backend.infer_u8`` on batches of ``batch`` preprocessed frames (``uint8[N, H, W, 3]``)."""
    n = len(frames_net)
    idx = 0

    def next_batch():
        nonlocal idx
        sel = [(idx + k) % n for k in range(batch)]
        idx = (idx + batch) % n
        return frames_net[sel]

    batches = [next_batch() for _ in range(max(1, min(8, n // batch)))]
    for i in range(warmup):
        backend.infer_u8(batches[i % len(batches)])
    lat = []
    t_end = time.perf_counter() + seconds
    t0 = time.perf_counter()
    while time.perf_counter() < t_end or len(lat) < min_calls:
        b = batches[len(lat) % len(batches)]
        s = time.perf_counter()
        backend.infer_u8(b)
        lat.append((time.perf_counter() - s) * 1000)
    total = time.perf_counter() - t0
    lat_a = np.asarray(lat)
    return BenchRow(target=str(backend.folder or ""), backend=backend.name, precision=backend.precision, batch=batch,
                    calls=len(lat), p50_ms=float(np.median(lat_a)), p99_ms=float(np.percentile(lat_a, 99)),
                    mean_ms=float(lat_a.mean()), fps=batch * len(lat) / total)


def latency_ms(backend, frames: np.ndarray, batch: int = 1, seconds: float = 1.0, rounds: int = 1) -> float:
    """Median latency per call in ms of ``backend.infer_u8`` on ``frames`` (``uint8[N, H, W, 3]``) at
    ``batch``: the median of ``rounds`` medians of ``seconds`` s each (:func:`time_backend`)."""
    meds = [time_backend(backend, frames, batch, seconds=seconds, warmup=2).p50_ms for _ in range(max(1, rounds))]
    return float(np.median(meds))
