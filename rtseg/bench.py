"""``rtseg bench``: latency and throughput of engines on real frames, and the stream's end-to-end FPS.

For every target (engine folders, plus the reference of the same checkpoint: PyTorch eager, or the
``model.onnx`` of an imported model folder in ONNX Runtime fp32; model folders themselves) and every
batch size, frames decoded from a real video are preprocessed once to the engine's input size; then
``backend.infer_u8`` is timed call by call for ``--seconds`` after ``--warmup`` calls. Reported per
row: latency p50/p99 per call (ms) and throughput (frames per second = frames / wall time). With
``--stream``, the whole pipeline (decode → preprocess → infer → overlay → H.264 encode) runs over the
video and its end-to-end FPS is reported. Medians, not means: the machines are shared and noisy.
:meth:`BenchReport.save_chart` draws the PNG (latency per batch size per engine; end-to-end FPS per path)
that ``rtseg bench`` writes next to its JSON.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import RtsegError
from .timing import BenchRow, load_frames, machine_info, time_backend


@dataclass
class BenchReport:
    """All rows of one ``rtseg bench`` run plus the machine it ran on."""

    rows: list[BenchRow] = field(default_factory=list)
    machine: dict = field(default_factory=dict)
    video: str = ""
    input_hw: tuple[int, int] = (0, 0)

    def to_dict(self) -> dict:
        return {"machine": self.machine, "video": self.video, "input_hw": list(self.input_hw),
                "rows": [asdict(r) for r in self.rows], "comparison": self.comparison()}

    def comparison(self) -> list[dict]:
        """``--compare`` ratios: per engine, inference FPS at the stream batch / torch eager at the same
        batch (batch 1 if torch was not run at it),
        end-to-end stream FPS / naive loop, and pipeline efficiency = stream FPS / inference FPS at the
        same batch. Only rows present in the report are used."""
        naive = next((r for r in self.rows if r.kind == "naive"), None)
        torch1 = next((r for r in self.rows if r.kind == "infer" and r.backend == "torch" and r.batch == 1), None)
        out = []
        for st in (r for r in self.rows if r.kind == "stream"):
            inf = next((r for r in self.rows if r.kind == "infer" and r.target == st.target and r.batch == st.batch), None)
            tref = next((r for r in self.rows if r.kind == "infer" and r.backend == "torch" and r.batch == st.batch), torch1)
            out.append({"engine": f"{st.backend}-{st.precision}", "batch": st.batch, "stream_fps": st.fps,
                        "infer_fps": inf.fps if inf else None,
                        "infer_vs_torch": inf.fps / tref.fps if inf and tref else None,
                        "stream_vs_naive": st.fps / naive.fps if naive else None,
                        "pipeline_efficiency": st.fps / inf.fps if inf else None})
        return out

    def save_chart(self, path: str | Path) -> Path:
        """Write a PNG (matplotlib, Agg): left, inference latency p50 (ms) per batch size per engine;
        right, end-to-end FPS per path (stream rows and the naive loop). Returns the path.

        Raises:
            RtsegError: the file cannot be written.
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
        for key in dict.fromkeys((r.target, r.backend, r.precision) for r in self.rows if r.kind == "infer"):
            pts = sorted((r.batch, r.p50_ms) for r in self.rows if r.kind == "infer" and (r.target, r.backend, r.precision) == key)
            ax1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=_label(*key))
        ax1.set(xlabel="batch size", ylabel="latency p50 per call (ms)", title="inference latency")
        ax1.set_xticks(sorted({r.batch for r in self.rows if r.kind == "infer"}) or [1])
        ax1.grid(alpha=0.3)
        if ax1.lines:
            ax1.legend(fontsize=7)
        e2e = [r for r in self.rows if r.kind in ("stream", "naive")]
        names = [("naive loop" if r.kind == "naive" else f"{_label(r.target, r.backend, r.precision)} b{r.batch}") for r in e2e]
        ax2.barh(range(len(e2e)), [r.fps for r in e2e], color=["#999999" if r.kind == "naive" else "#2a7ab9" for r in e2e])
        ax2.set_yticks(range(len(e2e)), names, fontsize=7)
        ax2.set(xlabel="frames per second, end to end", title="stream FPS per path")
        ax2.grid(alpha=0.3, axis="x")
        fig.suptitle(f"rtseg bench — {Path(self.video).name}, {self.machine.get('cpu', '')}", fontsize=9)
        fig.tight_layout()
        from .safe_io import save_figure

        return save_figure(fig, path, "--chart", dpi=110)

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
        comp = self.comparison()
        if comp and any(c["stream_vs_naive"] for c in comp):
            lines.append("")
            lines.append("comparison (end to end = decode → infer → overlay → H.264 encode):")
            for c in comp:
                f = lambda v, fmt: "n/a" if v is None else format(v, fmt)  # noqa: E731
                lines.append(f"  {c['engine']} batch {c['batch']}: stream {c['stream_fps']:.1f} FPS = "
                             f"{f(c['stream_vs_naive'], '.2f')}x naive loop; inference {f(c['infer_fps'], '.1f')} FPS = "
                             f"{f(c['infer_vs_torch'], '.2f')}x torch eager; pipeline efficiency "
                             f"{f(c['pipeline_efficiency'], '.2f')} (stream / inference FPS)")
        return "\n".join(lines)


def _label(target: str, backend: str, precision: str) -> str:
    """Chart label: the model name (``model.json`` ``model`` of the engine or folder) + backend-precision."""
    import json

    name = ""
    for f in ("engine.json", "model.json"):
        try:
            d = json.loads((Path(target) / f).read_text()) if target else {}
        except (OSError, ValueError):
            continue
        name = (d.get("model") or {}).get("model", "") if f == "engine.json" else d.get("model", "")
        break
    return f"{name} {backend}-{precision}".strip()


def stream_row(backend, video: str, batch: int, output: str | None, max_frames: int | None = None) -> BenchRow:
    """End-to-end FPS of ``rtseg stream`` over ``video`` (decode → infer → overlay → encode to ``output``)."""
    from .stream import StreamOptions, run_stream

    with tempfile.TemporaryDirectory() as td:
        outs = [] if output == "none" else [output or str(Path(td) / "bench.mp4")]
        rep = run_stream(backend, [video], outs, StreamOptions(batch_size=batch, handle_signals=False, max_frames=max_frames))
    lat = rep.latency.get("e2e")  # end-to-end latency per frame (decode start → encoded), ms
    p50 = lat.p50_ms if lat else float("nan")
    p99 = lat.p99_ms if lat else float("nan")
    return BenchRow(target=str(backend.folder or ""), backend=backend.name, precision=backend.precision, batch=batch,
                    calls=rep.frames, p50_ms=p50, p99_ms=p99, mean_ms=float("nan"), fps=rep.fps, kind="stream")


def naive_row(torch_backend, video: str, max_frames: int | None = None, alpha: float = 0.5) -> BenchRow:
    """End-to-end FPS of the naive loop a user would write first, as the baseline of ``--compare``:
    ``cv2.VideoCapture`` read → resize + normalise → PyTorch eager (batch 1) → threshold/argmax →
    mask resized to the frame → ``cv2.addWeighted`` over the whole frame → ``cv2.VideoWriter``
    (MPEG-4 'mp4v') write — one frame at a time in one thread.

    Args:
        torch_backend: a :class:`rtseg.runtime.torch_backend.TorchBackend` (the checkpoint).
        video: real video file; max_frames: stop after N frames (default: the whole video).

    Raises:
        RtsegError: unreadable video.
    """
    import cv2
    import torch

    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise RtsegError(f"OpenCV cannot open {video}; pass a video file FFmpeg can read")
    fps_in = cap.get(cv2.CAP_PROP_FPS) or 25.0
    h_net, w_net = torch_backend.input_hw
    mean = torch.tensor(torch_backend.mean).view(1, 3, 1, 1)
    std = torch.tensor(torch_backend.std).view(1, 3, 1, 1)
    color = np.array([0, 255, 0], np.uint8)
    lat = []
    with tempfile.TemporaryDirectory() as td:
        writer = None
        t0 = time.perf_counter()
        n = 0
        while max_frames is None or n < max_frames:
            s = time.perf_counter()
            ok, frame = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            x = torch.from_numpy(cv2.resize(rgb, (w_net, h_net))).permute(2, 0, 1)[None].float() / 255.0
            with torch.inference_mode():
                z = torch_backend.model((x - mean) / std)
            m = (z[0, 0] > 0) if z.shape[1] == 1 else (z[0].argmax(0) > 0)
            mask = cv2.resize(m.numpy().astype(np.uint8), (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST)
            tint = np.where(mask[..., None] > 0, color, frame)
            out = cv2.addWeighted(frame, 1 - alpha, tint, alpha, 0)
            if writer is None:
                writer = cv2.VideoWriter(str(Path(td) / "naive.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps_in,
                                         (frame.shape[1], frame.shape[0]))
            writer.write(out)
            lat.append((time.perf_counter() - s) * 1000)
            n += 1
        total = time.perf_counter() - t0
        if writer is not None:
            writer.release()
    cap.release()
    if not lat:
        raise RtsegError(f"OpenCV decoded no frames from {video}; pass another video")
    a = np.asarray(lat)
    return BenchRow(target=str(torch_backend.folder or ""), backend="torch", precision=torch_backend.precision, batch=1,
                    calls=len(lat), p50_ms=float(np.median(a)), p99_ms=float(np.percentile(a, 99)), mean_ms=float(a.mean()),
                    fps=len(lat) / total, kind="naive")


@dataclass
class BenchOptions:
    """Settings of :func:`run_bench` (``rtseg bench`` flags).

    Attributes:
        batch_sizes: inference batch sizes to time (rows above an engine's ``max_batch`` are skipped).
        seconds: timed seconds per row; warmup: untimed calls before each row.
        threads: inference threads (``None`` = each backend's default).
        torch_ref: also time the PyTorch eager reference of each engine's checkpoint.
        stream: also measure the end-to-end stream FPS over the video (``stream_batch``, at most
            ``stream_frames`` frames, written to ``stream_output``: ``None`` = a temporary .mp4,
            ``"none"`` = no encode).
        n_frames: real frames decoded for the inference rows.
        backend: expect engines of this backend (a folder of another backend is refused).
        allow_failed_gate: benchmark engines that failed their accuracy gate.
        allow_unsealed: benchmark engines whose ``engine.json`` has no seal (:mod:`rtseg.runtime.seal`).
        compare: add the naive loop and the ratios (:meth:`BenchReport.comparison`).
    """

    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    seconds: float = 3.0
    warmup: int = 3
    threads: int | None = None
    torch_ref: bool = True
    stream: bool = True
    stream_batch: int = 1
    stream_frames: int | None = None
    stream_output: str | None = None
    n_frames: int = 32
    backend: str | None = None
    allow_failed_gate: bool = False
    allow_unsealed: bool = False
    compare: bool = False


def run_bench(targets: list[str], video: str, options: BenchOptions | None = None, log=print) -> BenchReport:
    """Benchmark each target (engine or checkpoint folder) on real frames of ``video``; see the module docstring.

    ``options.compare`` (``--compare``) also runs the naive loop (:func:`naive_row`) on the PyTorch
    reference and forces the torch row and the stream rows, so one report holds naive loop, torch
    eager, every engine (inference-only and end to end) and their ratios (:meth:`BenchReport.comparison`).

    Raises:
        RtsegError: unreadable targets or video, ``--compare`` without a PyTorch reference.
    """
    o = options or BenchOptions()
    if not targets:
        raise RtsegError("nothing to benchmark; pass --engine DIR (repeatable) or --checkpoint DIR")
    if o.compare and not o.torch_ref:
        raise RtsegError("--compare needs the PyTorch reference; drop --no-torch")
    backends, refs = _open_targets(targets, o)
    if o.threads:
        import torch

        torch.set_num_threads(o.threads)
    frames = load_frames(video, o.n_frames)
    report = BenchReport(machine=machine_info(o.threads), video=str(video), input_hw=backends[0].input_hw)
    for b in backends:
        report.rows += _infer_rows(b, frames, o, log)
    if o.compare:
        ref = next((b for b in backends if b.name == "torch"), None)
        if ref is None:
            raise RtsegError("--compare needs the PyTorch reference: pass engines built by 'rtseg build-engine' from a checkpoint "
                             "(their engine.json names it) or add --checkpoint DIR; an imported model folder has no PyTorch "
                             "module — drop --compare for it")
        row = naive_row(ref, video, o.stream_frames)
        log(f"  naive loop (cv2 read → torch eager → cv2 overlay → cv2 write): {row.fps:.1f} FPS end to end")
        report.rows.append(row)
    if o.stream or o.compare:
        for b in (b for b in backends if b.name != "torch" and id(b) not in refs):
            row = stream_row(b, video, o.stream_batch or 1, o.stream_output, o.stream_frames)
            log(f"  stream {b.describe()} batch {row.batch}: {row.fps:.1f} FPS end to end")
            report.rows.append(row)
    return report


def _open_targets(targets: list[str], o: BenchOptions) -> tuple[list, set]:
    """Load every target, plus (``torch_ref``) the reference of each engine's checkpoint, first: PyTorch
    eager for a checkpoint, ``model.onnx`` in ONNX Runtime fp32 for an imported model folder.
    Returns (backends, ids of the references added, which get no stream row)."""
    from .runtime import load_engine

    backends = [load_engine(t, backend=o.backend if o.backend and (Path(t) / "engine.json").exists() else None,
                            num_threads=o.threads, allow_failed_gate=o.allow_failed_gate,
                            allow_unsealed=o.allow_unsealed) for t in targets]
    refs: set = set()
    if o.torch_ref:
        seen = {str(Path(t).resolve()) for t in targets}
        for b in list(backends):
            ck = (b.meta.get("checkpoint") or {}).get("path")
            if b.name != "torch" and ck and Path(ck).is_dir() and str(Path(ck).resolve()) not in seen:
                seen.add(str(Path(ck).resolve()))
                backends.insert(0, load_engine(ck, num_threads=o.threads))
                refs.add(id(backends[0]))
    return backends, refs


def _infer_rows(b, frames: list[np.ndarray], o: BenchOptions, log) -> list[BenchRow]:
    """Inference-only rows of one backend: its frames preprocessed once, then each batch size timed."""
    from .data.transforms import Preprocessor
    from .limits import check_batch

    for bs in o.batch_sizes:
        check_batch(bs, b.input_hw, "--batch-sizes")
    if o.stream or o.compare:
        check_batch(o.stream_batch or 1, b.input_hw, "--stream-batch")  # before any timing, named as the user typed it
    pre = Preprocessor(b.input_hw, b.resize)
    net = np.stack([pre(f)[0] for f in frames])
    rows = []
    for bs in o.batch_sizes:
        if b.max_batch and bs > b.max_batch:
            continue
        row = time_backend(b, net, bs, seconds=o.seconds, warmup=o.warmup)
        log(f"  {b.describe()} batch {bs}: p50 {row.p50_ms:.2f} ms, {row.fps:.1f} FPS")
        rows.append(row)
    return rows


__all__ = ["BenchOptions", "BenchReport", "BenchRow", "naive_row", "run_bench", "stream_row", "load_frames", "machine_info", "time_backend"]
