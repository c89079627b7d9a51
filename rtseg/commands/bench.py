"""``rtseg bench``: latency and throughput of engines on real frames, and the stream's end-to-end FPS
(click command over :mod:`rtseg.bench`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..bench import BenchOptions, run_bench
from ..safe_io import write_json
from .common import FINITE_FLOAT, backend_choice


def _ints(s: str) -> list[int]:
    try:
        return [int(v) for v in str(s).replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"{s!r} is not a comma-separated list of integers") from None


@click.command("bench")
@click.option("--engine", "engines", multiple=True, type=click.Path(), help="Engine, checkpoint or model folder, or kserve://HOST:PORT/MODEL (repeatable).")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(),
              help="Checkpoint (PyTorch eager) or model folder (its model.onnx in ONNX Runtime fp32).")
@click.option("--video", required=True, type=click.Path(), help="Real video whose frames are used (and streamed).")
@click.option("--batch-sizes", default=",".join(map(str, BenchOptions.batch_sizes)), show_default=True, help="Comma-separated batch sizes.")
@click.option("--seconds", default=BenchOptions.seconds, show_default=True, type=FINITE_FLOAT, help="Timed seconds per row.")
@click.option("--warmup", default=BenchOptions.warmup, show_default=True, type=int, help="Untimed calls before each row.")
@click.option("--threads", default=None, type=int, help="Inference threads (default: backend's choice).")
@click.option("--backend", default=None, type=backend_choice(),
              help="Expect engines of this backend (a folder of another backend is refused).")
@click.option("--no-torch", is_flag=True, help="Skip the PyTorch eager reference.")
@click.option("--stream/--no-stream", default=BenchOptions.stream, show_default=True, help="Also measure end-to-end stream FPS.")
@click.option("--stream-batch", default=BenchOptions.stream_batch, show_default=True, type=int)
@click.option("--stream-frames", default=None, type=int, help="Stream at most N frames (default: the whole video).")
@click.option("--stream-output", default=None, help="Where the stream writes (default: a temporary .mp4; 'none' = no encode).")
@click.option("--allow-failed-gate", is_flag=True, help="Use an engine that failed its accuracy gate (refused otherwise).")
@click.option("--allow-unsealed", is_flag=True, help="Use an engine whose engine.json has no seal (an older rtseg's; refused otherwise).")
@click.option("--compare", is_flag=True,
              help="Also run the naive loop (cv2 read → torch eager → cv2 overlay → cv2 write) and print the ratios: "
                   "engine vs torch eager, stream vs naive loop, stream vs inference-only FPS.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
@click.option("--out", "out_json", type=click.Path(), help="Also write the JSON report to this file (and the PNG chart next to it).")
@click.option("--chart", "chart", type=click.Path(), default=None,
              help="PNG chart: latency per batch size per engine, end-to-end FPS per path (default: --out with .png).")
def bench_command(engines, checkpoints, video, batch_sizes, seconds, warmup, threads, backend, no_torch, stream,
                  stream_batch, stream_frames, stream_output, allow_failed_gate, allow_unsealed, compare, as_json, out_json,
                  chart):
    """Latency p50/p99 and throughput at each batch size on real frames, for engines and the PyTorch
    reference, plus the stream's end-to-end FPS on --video.

    Example: rtseg bench --engine engines/eunet-s/openvino-fp32 --video ../shared/data/video/endo_laparoscopy.mp4 --threads 2
    """
    from ..safe_io import check_outputs, check_writable

    log = (lambda *a: None) if as_json else (lambda m: click.echo(m, err=True))
    chart = chart or (str(Path(out_json).with_suffix(".png")) if out_json else None)
    check_outputs([("--out", out_json), ("--chart", chart), ("--stream-output", stream_output)],
                  [video, *engines, *checkpoints])
    for opt, p in (("--out", out_json), ("--chart", chart)):
        if p:  # before the whole benchmark, not after it
            check_writable(p, opt)
    options = BenchOptions(batch_sizes=tuple(_ints(batch_sizes)), seconds=seconds, warmup=warmup, threads=threads,
                           torch_ref=not no_torch, stream=stream, stream_batch=stream_batch, stream_frames=stream_frames,
                           stream_output=stream_output, backend=backend, allow_failed_gate=allow_failed_gate,
                           allow_unsealed=allow_unsealed, compare=compare)
    rep = run_bench(list(engines) + list(checkpoints), video, options, log=log)
    if out_json:
        write_json(out_json, rep.to_dict())
    if chart:
        rep.save_chart(chart)
        log(f"chart: {chart}")
    if as_json:
        click.echo(json.dumps(rep.to_dict(), indent=2))
    else:
        m = rep.machine
        click.echo(f"machine: {m['cpu']} ({m['cores']} cores; {' '.join(m['simd'])}); threads {m['threads'] or 'default'}; "
                   f"input {rep.input_hw[1]}x{rep.input_hw[0]}; frames from {Path(video).name}")
        click.echo(rep.table())
