"""``rtseg bench``: latency and throughput of engines on real frames, and the stream's end-to-end FPS.

For every target (engine folders, plus the PyTorch eager reference of the same checkpoint) and every
batch size, frames decoded from a real video are preprocessed once to the engine's input size; then
``backend.infer_u8`` is timed call by call for ``--seconds`` after ``--warmup`` calls. Reported per
row: latency p50/p99 per call (ms) and throughput (frames per second = frames / wall time). With
``--stream``, the whole pipeline (decode → preprocess → infer → overlay → H.264 encode) runs over the
video and its end-to-end FPS is reported. Medians, not means: the machines are shared and noisy.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
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


@dataclass
class BenchReport:
    """All rows of one ``rtseg bench`` run plus the machine it ran on."""

    rows: list[BenchRow] = field(default_factory=list)
    machine: dict = field(default_factory=dict)
    video: str = ""
    input_hw: tuple[int, int] = (0, 0)

    def to_dict(self) -> dict:
        return {"machine": self.machine, "video": self.video, "input_hw": list(self.input_hw),
                "rows": [asdict(r) for r in self.rows]}

    def table(self) -> str:
        """Text table; with several targets, adds the speed-up of each over the slowest batch-1 row."""
        head = f"{'target':38s} {'kind':6s} {'batch':>5s} {'p50 ms':>8s} {'p99 ms':>8s} {'FPS':>8s}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            name = f"{r.backend}-{r.precision}" if r.kind != "naive" else "naive loop (cv2+torch)"
            lines.append(f"{name[:38]:38s} {r.kind:6s} {r.batch:5d} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.fps:8.1f}")
        ref = [r for r in self.rows if r.backend == "torch" and r.kind == "infer" and r.batch == 1]
        if ref and any(r.backend != "torch" for r in self.rows):
            lines.append("")
            lines.append(f"speed-up over torch eager ({ref[0].precision}, batch 1, {ref[0].fps:.1f} FPS):")
            for r in self.rows:
                if r.kind in ("infer", "stream") and r.backend != "torch":
                    lines.append(f"  {r.backend}-{r.precision} {r.kind} batch {r.batch}: {r.fps / ref[0].fps:.2f}x")
        return "\n".join(lines)


def machine_info(threads: int | None) -> dict:
    """CPU model, cores, SIMD features, library versions: printed with every benchmark."""
    flags: set[str] = set()
    model = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    import onnxruntime
    import openvino
    import torch

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


def stream_row(backend, video: str, batch: int, output: str | None, max_frames: int | None = None) -> BenchRow:
    """End-to-end FPS of ``rtseg stream`` over ``video`` (decode → infer → overlay → encode to ``output``)."""
    from .stream import run_stream

    with tempfile.TemporaryDirectory() as td:
        outs = [] if output == "none" else [output or str(Path(td) / "bench.mp4")]
        rep = run_stream(backend, [video], outs, batch_size=batch, handle_signals=False, max_frames=max_frames)
    lat = rep.latency.get("e2e")  # end-to-end latency per frame (decode start → encoded), ms
    p50 = lat.p50_ms if lat else float("nan")
    p99 = lat.p99_ms if lat else float("nan")
    return BenchRow(target=str(backend.folder or ""), backend=backend.name, precision=backend.precision, batch=batch,
                    calls=rep.frames, p50_ms=p50, p99_ms=p99, mean_ms=float("nan"), fps=rep.fps, kind="stream")


def run_bench(targets: list[str], video: str, batch_sizes: list[int], seconds: float = 3.0, warmup: int = 3,
              threads: int | None = None, torch_ref: bool = True, stream: bool = True, stream_batch: int | None = None,
              stream_output: str | None = None, n_frames: int = 32, backend: str | None = None,
              stream_frames: int | None = None, allow_failed_gate: bool = False, log=print) -> BenchReport:
    """Benchmark each target (engine or checkpoint folder). See module docstring.

    Raises:
        RtsegError: unreadable targets or video.
    """
    from .data.transforms import Preprocessor
    from .runtime import load_engine

    if not targets:
        raise RtsegError("nothing to benchmark; pass --engine DIR (repeatable) or --checkpoint DIR")
    backends = [load_engine(t, backend=backend if backend and (Path(t) / "engine.json").exists() else None,
                            num_threads=threads, allow_failed_gate=allow_failed_gate) for t in targets]
    if torch_ref:
        seen = {str(Path(t).resolve()) for t in targets}
        for b in list(backends):
            ck = (b.meta.get("checkpoint") or {}).get("path")
            if b.name != "torch" and ck and Path(ck).is_dir() and str(Path(ck).resolve()) not in seen:
                seen.add(str(Path(ck).resolve()))
                backends.insert(0, load_engine(ck, num_threads=threads))
    if threads:
        import torch

        torch.set_num_threads(threads)
    frames = load_frames(video, n_frames)
    report = BenchReport(machine=machine_info(threads), video=str(video), input_hw=backends[0].input_hw)
    for b in backends:
        pre = Preprocessor(b.input_hw, b.meta.get("model", {}).get("resize", "stretch"))
        net = np.stack([pre(f)[0] for f in frames])
        for bs in batch_sizes:
            if b.max_batch and bs > b.max_batch:
                continue
            row = time_backend(b, net, bs, seconds=seconds, warmup=warmup)
            log(f"  {b.describe()} batch {bs}: p50 {row.p50_ms:.2f} ms, {row.fps:.1f} FPS")
            report.rows.append(row)
    if stream:
        for b in backends:
            if b.name == "torch":
                continue
            bs = stream_batch or 1
            row = stream_row(b, video, bs, stream_output, stream_frames)
            log(f"  stream {b.describe()} batch {bs}: {row.fps:.1f} FPS end to end")
            report.rows.append(row)
    return report


def _ints(s: str) -> list[int]:
    try:
        return [int(v) for v in str(s).replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"{s!r} is not a comma-separated list of integers") from None


@click.command("bench")
@click.option("--engine", "engines", multiple=True, type=click.Path(), help="Engine or checkpoint folder (repeatable).")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(), help="Checkpoint folder (PyTorch eager).")
@click.option("--video", required=True, type=click.Path(), help="Real video whose frames are used (and streamed).")
@click.option("--batch-sizes", default="1,2,4,8", show_default=True, help="Comma-separated batch sizes.")
@click.option("--seconds", default=3.0, show_default=True, type=float, help="Timed seconds per row.")
@click.option("--warmup", default=3, show_default=True, type=int, help="Untimed calls before each row.")
@click.option("--threads", default=None, type=int, help="Inference threads (default: backend's choice).")
@click.option("--backend", default=None, type=click.Choice(["openvino", "onnxruntime", "tensorrt"]),
              help="Expect engines of this backend (a folder of another backend is refused).")
@click.option("--no-torch", is_flag=True, help="Skip the PyTorch eager reference.")
@click.option("--stream/--no-stream", default=True, show_default=True, help="Also measure end-to-end stream FPS.")
@click.option("--stream-batch", default=1, show_default=True, type=int)
@click.option("--stream-frames", default=None, type=int, help="Stream at most N frames (default: the whole video).")
@click.option("--stream-output", default=None, help="Where the stream writes (default: a temporary .mp4; 'none' = no encode).")
@click.option("--allow-failed-gate", is_flag=True, help="Use an engine that failed its accuracy gate (refused otherwise).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
@click.option("--out", "out_json", type=click.Path(), help="Also write the JSON report to this file.")
def bench_command(engines, checkpoints, video, batch_sizes, seconds, warmup, threads, backend, no_torch, stream,
                  stream_batch, stream_frames, stream_output, allow_failed_gate, as_json, out_json):
    """Latency p50/p99 and throughput at each batch size on real frames, for engines and the PyTorch
    reference, plus the stream's end-to-end FPS on --video.

    Example: rtseg bench --engine engines/eunet-s/openvino-fp32 --video ../shared/data/video/endo_laparoscopy.mp4 --threads 2
    """
    log = (lambda *a: None) if as_json else (lambda m: click.echo(m, err=True))
    rep = run_bench(list(engines) + list(checkpoints), video, _ints(batch_sizes), seconds=seconds, warmup=warmup,
                    threads=threads, torch_ref=not no_torch, stream=stream, stream_batch=stream_batch,
                    stream_output=stream_output, backend=backend, stream_frames=stream_frames,
                    allow_failed_gate=allow_failed_gate, log=log)
    if out_json:
        Path(out_json).write_text(json.dumps(rep.to_dict(), indent=2))
    if as_json:
        click.echo(json.dumps(rep.to_dict(), indent=2))
    else:
        m = rep.machine
        click.echo(f"machine: {m['cpu']} ({m['cores']} cores; {' '.join(m['simd'])}); threads {m['threads'] or 'default'}; "
                   f"input {rep.input_hw[1]}x{rep.input_hw[0]}; frames from {Path(video).name}")
        click.echo(rep.table())
