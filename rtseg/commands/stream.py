"""``rtseg stream``: segment video files, cameras, network streams, image folders or test patterns."""

from __future__ import annotations

import json
import sys
import threading

import click

from ..errors import RtsegError
from ..stream.pipeline import StreamOptions
from .common import FiniteFloatRange, decision_options

_EPILOG = """\b
Sources: FILE (any container FFmpeg reads), cameraN or /dev/videoN, rtsp:// rtp:// udp:// srt://
  tcp:// rtmp:// http(s):// URLs, an image folder or glob (played at --fps), lavfi:GRAPH
  (e.g. lavfi:testsrc2=size=1280x720:rate=30).
Outputs: FILE.mp4|.mkv|.mov|.ts (H.264, audio copied), udp://host:port (MPEG-TS), rtp://host:port
  (MPEG-TS over RTP), rtsp://server/path (publish), FOLDER/ or FOLDER/%06d.jpg (images), null.
  With N sources give N outputs, or one holding {i} or {name}.
Ctrl-C (SIGINT) or SIGTERM stops: queued frames are finished and every output is finalised; a
second Ctrl-C drops the queued frames and exits within 3 s. A network output that stops taking data
never holds the run (tcp:// and rtsp:// writes time out after 5 s).
A live stream joined between keyframes starts at its next keyframe ("waiting for a keyframe").
Files are written under a temporary name and renamed into place when complete: an existing output
file is replaced (a killed run leaves it as it was); an output that is one of the inputs is refused.
A udp:// or rtp:// source waits for its sender (--open-timeout to give up after a while).

\b
Examples:
  rtseg stream --engine engines/eunet/openvino-fp32 --source clip.mp4 --output out.mp4
  rtseg stream --engine ckpt/ --source camera0 --output udp://127.0.0.1:5000 --max-latency-ms 200
  rtseg stream --engine ckpt/ --source a.mp4 --source b.mp4 --output 'seg_{name}.mp4' --batch-size 2
"""


@click.command("stream", epilog=_EPILOG, context_settings={"max_content_width": 100})
@click.option("--engine", "engine", default=None, type=click.Path(),
              help="Engine folder (engine.json), checkpoint or model folder (reference: PyTorch / the imported model.onnx in ONNX Runtime), or a model on a "
                   "Triton/KServe v2 server (kserve://HOST:PORT/MODEL gRPC, http://HOST:PORT/MODEL); default: rtseg's shipped "
                   "polyp model (its OpenVINO engine is built into the cache on first use).")
@click.option("--source", "sources", multiple=True, required=True, help="Input (repeatable): file, cameraN, URL, image folder/glob, lavfi:GRAPH.")
@click.option("--output", "outputs", multiple=True, help="Output (repeatable): file, URL, image folder, null.")
@click.option("--no-output", is_flag=True, help="Write nothing (measure the pipeline).")
@click.option("--batch-size", default=StreamOptions.batch_size, show_default=True, type=click.IntRange(min=1), help="Frames per inference call, batched across sources.")
@click.option("--batch-timeout-ms", default=StreamOptions.batch_timeout_ms, show_default=True, type=FiniteFloatRange(min=0), help="Max wait to fill a batch (ms).")
@click.option("--alpha", default=StreamOptions.alpha, show_default=True, type=FiniteFloatRange(0, 1), help="Overlay opacity of the class colour.")
@click.option("--contour/--no-contour", default=StreamOptions.contour, show_default=True, help="Also outline each class region.")
@click.option("--codec", default=StreamOptions.codec, show_default=True, help="Video encoder: libx264, libx265, h264_nvenc, ... or auto (hardware if present).")
@click.option("--preset", default=StreamOptions.preset, show_default=True,
              help="x264/x265 preset: ultrafast keeps 720p real time on 2 cores; superfast/veryfast give smaller files.")
@click.option("--crf", default=StreamOptions.crf, show_default=True, type=click.IntRange(0, 51), help="x264/x265 constant rate factor (lower = better quality).")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="Inference threads (default: the backend's choice).")
@click.option("--loop", default=StreamOptions.loop, show_default=True, type=click.IntRange(min=0),
              help="Passes over each video-file source (0 = until stopped); timestamps continue, audio is dropped.")
@click.option("--max-frames", default=None, type=click.IntRange(min=1), help="Stop after N frames per source.")
@click.option("--max-latency-ms", default=None, type=FiniteFloatRange(min=1), help="Drop live frames that waited longer than this before inference.")
@click.option("--reconnect/--no-reconnect", default=StreamOptions.reconnect, show_default=True, help="Reopen failed or stalled network sources with backoff.")
@click.option("--stall-timeout", default=StreamOptions.stall_timeout, show_default=True, type=FiniteFloatRange(min=0.1), help="A network source silent this long (s) has failed.")
@click.option("--open-timeout", default=None, type=FiniteFloatRange(min=0.1),
              help="Give up on a network source that does not open within this many seconds (default: udp:// and "
                   "rtp:// wait for their sender, other URLs use --stall-timeout).")
@click.option("--rtsp-transport", default=StreamOptions.rtsp_transport, show_default=True, type=click.Choice(["tcp", "udp"]),
              help="How RTP comes from an rtsp:// source: tcp (in the RTSP connection: no loss, passes firewalls) or "
                   "udp (lower latency on a clean network).")
@click.option("--fps", default=None, type=FiniteFloatRange(min=0.01, min_open=False), help="Frame rate of image-folder sources (default 25) / asked of cameras.")
@click.option("--show", is_flag=True, help="Show the overlaid video in a window (needs a display).")
@click.option("--metrics-jsonl", default=None, type=click.Path(dir_okay=False), help="Write metrics once per second as JSON lines.")
@click.option("--temporal", default=StreamOptions.temporal, show_default=True, type=click.Choice(["off", "ema", "flow"]),
              help="Use the time axis: ema smooths the logits over frames; flow carries the last keyframe's logits "
                   "to the frames in between by optical flow (with --infer-every).")
@click.option("--infer-every", default=StreamOptions.infer_every, show_default=True, type=click.IntRange(min=1),
              help="Run the network on every K-th frame (keyframes); the others get propagated logits.")
@click.option("--ema", "ema", default=StreamOptions.ema, show_default=True, type=FiniteFloatRange(0, 1, max_open=True),
              help="Weight of the previous logits in --temporal ema.")
@decision_options()
@click.option("--save-masks", "save_masks", default=None, type=click.Path(file_okay=False),
              help="Write the mask shown on every frame as DIR/000000.png, ... (frame size, 0/255; several sources: "
                   "DIR/source<i>/); DIR must be new or empty.")
@click.option("--http", "http", default=None, metavar="[HOST:]PORT",
              help="Serve /metrics (Prometheus), /healthz, /readyz and a live view (/) on HOST:PORT "
                   "(PORT alone: 127.0.0.1); nothing listens without it.")
@click.option("--http-token", default=None, envvar="RTSEG_HTTP_TOKEN", show_envvar=True,
              help="Require 'Authorization: Bearer TOKEN' on every --http endpoint (a browser: open /?token=TOKEN once).")
@click.option("--http-preview-fps", default=StreamOptions.http_preview_fps, show_default=True, type=FiniteFloatRange(min=0.1),
              help="Max frames per second of the live view, per viewer.")
@click.option("--allow-failed-gate", is_flag=True, help="Use an engine that failed its accuracy gate (refused otherwise).")
@click.option("--allow-unsealed", is_flag=True, help="Use an engine whose engine.json has no seal (an older rtseg's; refused otherwise).")
@click.option("--json", "as_json", is_flag=True, help="Print the final report as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors (and --json).")
def stream_command(engine, sources, outputs, no_output, batch_size, batch_timeout_ms, alpha, contour, codec, preset, crf,
                   threads, loop, max_frames, max_latency_ms, reconnect, stall_timeout, open_timeout, rtsp_transport, fps, show, metrics_jsonl,
                   temporal, infer_every, ema, raw, presence_threshold, presence_min_area, persist, hold, save_masks,
                   http, http_token, http_preview_fps, allow_failed_gate, allow_unsealed, as_json, quiet):
    """Segment a video/camera/network stream and write the overlaid output.

    Decoding, batched inference and overlay+encoding run in parallel threads; the output keeps the
    input's frame count, frame rate and timestamps. A summary (frames, FPS, per-stage latency
    p50/p99) is printed at the end; file sources show a progress bar (frames, FPS, ETA) on a terminal.

    Binary models show a detection only where the decision layer allows it: the frame's presence
    rule (peak logit and area, calibrated per model) and persistence (--persist/--hold); --raw shows
    the network's own mask.
    """
    from ..runtime import load_engine
    from ..stream.pipeline import StreamOptions, StreamPipeline

    if no_output and outputs:
        raise RtsegError("--no-output and --output exclude each other; drop one of them")
    if not no_output and not outputs and not show:
        raise RtsegError("no --output given; pass --output out.mp4 (or a URL/folder), --show, or --no-output")
    if engine is None:
        from ..defaults import load_default_engine

        backend = load_default_engine(num_threads=threads, log=None if quiet else (lambda m: click.echo(m, err=True)))
        engine = f"default model, {backend.folder}"
    else:
        backend = load_engine(engine, num_threads=threads, allow_failed_gate=allow_failed_gate,
                              allow_unsealed=allow_unsealed)
    if not quiet:
        click.echo(f"engine: {backend.describe()} ({engine})", err=True)
    options = StreamOptions(batch_size=batch_size, batch_timeout_ms=batch_timeout_ms, alpha=alpha, contour=contour,
                            codec=codec, preset=preset, crf=crf, max_frames=max_frames, max_latency_ms=max_latency_ms,
                            reconnect=reconnect, fps=fps, stall_timeout=stall_timeout, show=show,
                            metrics_jsonl=metrics_jsonl, loop=loop, temporal=temporal, infer_every=infer_every, ema=ema,
                            open_timeout=open_timeout, rtsp_transport=rtsp_transport, raw=raw, presence_threshold=presence_threshold,
                            presence_min_area=presence_min_area, persist=persist, hold=hold, save_masks=save_masks,
                            http=http, http_token=http_token, http_preview_fps=http_preview_fps)
    pipe = StreamPipeline(backend, list(sources), [] if no_output else list(outputs), options,
                          log=None if not quiet else (lambda m: None))
    if http is not None and not quiet:
        from ..stream.http import parse_http_address

        host, port = parse_http_address(http)
        click.echo(f"http: serving /, /metrics, /healthz, /readyz on http://{host}:{port}", err=True)
    done = threading.Event()
    if not quiet and sys.stderr.isatty():
        threading.Thread(target=_progress, args=(pipe, done, max_frames, loop), name="rtseg-progress", daemon=True).start()
    try:
        report = pipe.run()
    finally:
        done.set()
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    if not quiet:
        click.echo(report.table(), err=as_json)
    sys.stdout.flush()


def _total_frames(pipe, max_frames: int | None, loop: int) -> int | None:
    """Frames the run will write when every source is a file of known length (else ``None``)."""
    total = 0
    for st in pipe.states:
        n = getattr(getattr(st.src, "vstream", None), "frames", 0) or 0
        if st.src.live or not n or loop != 1:
            return None if max_frames is None else max_frames * len(pipe.states)
        total += min(n, max_frames) if max_frames else n
    return total


def _progress(pipe, done: threading.Event, max_frames: int | None, loop: int) -> None:
    """A tqdm bar (frames done/total, FPS, ETA) polled twice a second: nothing on the per-frame path."""
    from tqdm import tqdm

    while pipe.inq is None:
        if done.wait(0.2):
            return
    bar = tqdm(total=_total_frames(pipe, max_frames, loop), unit="frame", desc="stream", leave=False,
               dynamic_ncols=True, file=sys.stderr)
    last = 0
    while not done.wait(0.5):
        n = sum(st.written for st in pipe.states)
        bar.update(n - last)
        last = n
    bar.close()
