"""``rtseg eval``: Dice, IoU, ... (docs/networks.md §5) of a checkpoint or an engine (click command over
:mod:`rtseg.evaluation`)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import cv2

from ..errors import RtsegError
from ..evaluation import evaluate_backend, format_table, overlay_grid, resolve_samples
from ..safe_io import atomic_write_bytes, check_outputs, nan_to_none, write_error, write_json
from ..video_eval import VideoEvalOptions
from .common import FiniteFloatRange, decision_options


@click.command("eval")
@click.argument("target", required=False, type=click.Path())
@click.option("--checkpoint", "checkpoint", type=click.Path(), help="Checkpoint or model folder (PyTorch reference; a model folder runs its model.onnx in ONNX Runtime).")
@click.option("--engine", "engine", type=click.Path(), help="Engine folder (engine.json), or a model on a Triton/KServe v2 server (kserve://HOST:PORT/MODEL, http://…).")
@click.option("--data", type=click.Path(), help="Labelled folder (images/ + masks/); default: the model's training data.")
@click.option("--data-format", default=None, help="Dataset layout (polyp, camvid, cityscapes, coco, fsoco); default: detected.")
@click.option("--split", default=None, help="train/val/test/all; default: test if --data is the training data, else all.")
@click.option("--batch-size", default=VideoEvalOptions.batch_size, show_default=True, type=click.IntRange(min=1))
@click.option("--threads", default=None, type=int, help="Inference threads.")
@click.option("--limit", default=0, type=click.IntRange(min=0), help="Evaluate at most N images (0 = all).")
@click.option("--save-overlays", default=0, type=click.IntRange(min=0), help="Write a grid PNG of image / ground truth / prediction for the first N images.")
@click.option("--overlays-path", default="eval_overlays.png", show_default=True, type=click.Path(), help="Where --save-overlays writes.")
@click.option("--allow-failed-gate", is_flag=True, help="Use an engine that failed its accuracy gate (refused otherwise).")
@click.option("--allow-unsealed", is_flag=True, help="Use an engine whose engine.json has no seal (an older rtseg's; refused otherwise).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
@click.option("--out", "out_json", type=click.Path(dir_okay=False),
              help="Also write the JSON result to this file (replaced if it exists; written atomically).")
@click.option("--video", type=click.Path(), help="Evaluate on a video clip (decoded as the stream does) against --masks.")
@click.option("--masks", type=click.Path(), help="With --video: folder of per-frame masks (frame k ↔ k-th file in sorted order), "
                                                 "or 'none' for a clip without the class in any frame.")
@click.option("--temporal", default=VideoEvalOptions.temporal, show_default=True, type=click.Choice(["off", "ema", "flow"]),
              help="With --video: the stream's temporal mode (see rtseg stream --help).")
@click.option("--infer-every", default=VideoEvalOptions.infer_every, show_default=True, type=click.IntRange(min=1),
              help="With --video: run the network on every K-th frame, propagate to the others.")
@click.option("--ema", "ema", default=VideoEvalOptions.ema, show_default=True, type=FiniteFloatRange(0, 1, max_open=True),
              help="With --video: weight of the previous logits in --temporal ema.")
@click.option("--max-frames", default=None, type=click.IntRange(min=1), help="With --video: score the first N frames.")
@click.option("--plot", "plot_path", default=None, type=click.Path(),
              help="With --video: PNG of per-frame Dice and flicker (default: --out with .png, else video_eval.png); "
                   "'none': no plot.")
@decision_options()
def eval_command(target, checkpoint, engine, data, data_format, split, batch_size, threads, limit, save_overlays,
                 overlays_path, allow_failed_gate, allow_unsealed, as_json, out_json, video, masks, temporal, infer_every, ema,
                 max_frames, plot_path, raw, presence_threshold, presence_min_area, persist, hold):
    """Dice, IoU, accuracy, recall, specificity, precision (per-image mean and dataset-global) of a
    checkpoint or an engine (default: rtseg's shipped polyp model), on a split or a folder.

    Binary models are scored as the stream shows them: the model's presence decision is applied
    (images and video) and, on video, persistence too; --raw scores the network's own mask.

    Example: rtseg eval --engine engines/eunet-s/openvino-fp32 --data ../shared/data/cvc-clinicdb-256
    """
    path = engine or checkpoint or target
    if save_overlays and Path(overlays_path).suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise RtsegError(f"--overlays-path {overlays_path} is not an image name; give it a .png or .jpg name")
    if plot_path is not None and plot_path.lower() == "none":
        plot_path = False  # no plot (JSON "plot": null)
    elif video or masks:
        plot_path = plot_path or (str(Path(out_json).with_suffix(".png")) if out_json else "video_eval.png")
    check_outputs([("--out", out_json), ("--plot", plot_path if (video or masks) and plot_path else None),
                   ("--overlays-path", overlays_path if save_overlays else None)],
                  [path, data, video, masks if str(masks).lower() != "none" else None])
    backend, path = _backend(path, threads, allow_failed_gate, allow_unsealed, as_json)
    if backend.max_batch:
        batch_size = min(batch_size, backend.max_batch)
    if video or masks:
        from ..video_eval import VideoEvalOptions

        if not (video and masks):
            raise RtsegError("--video and --masks go together; pass the clip and the folder of its per-frame masks")
        opts = VideoEvalOptions(temporal=temporal, infer_every=infer_every, ema=ema, batch_size=batch_size,
                                max_frames=max_frames, raw=raw, presence_threshold=presence_threshold,
                                presence_min_area=presence_min_area, persist=persist, hold=hold)
        _eval_video(backend, video, masks, opts, as_json, out_json, plot_path)
        return
    from ..decision import resolve_presence

    if persist is not None or hold is not None:
        raise RtsegError("--persist/--hold apply to video (--video); drop them for images")
    rule = resolve_presence(backend.model_info, backend.num_classes, raw=raw, min_peak=presence_threshold,
                            min_area=presence_min_area)
    samples, reader, where = resolve_samples(data, split, backend.model_info, data_format)
    check_outputs([("--out", out_json), ("--overlays-path", overlays_path if save_overlays else None)],
                  sorted({s.image.parent for s in samples} | {s.mask.parent for s in samples if s.mask is not None}))
    if limit and limit < len(samples):
        where = f"{where}, first {limit} evaluated (--limit)"
    res = evaluate_backend(backend, samples, batch_size=batch_size, limit=limit, progress=not as_json, reader=reader,
                           keep=save_overlays, presence=rule)
    kept = res.pop("_kept", None)
    if kept:
        res["overlays"] = _write_overlays(backend, kept, overlays_path)
    res["class_names"] = backend.model_info.get("class_names")
    res |= {"target": str(path), "backend": backend.name, "precision": backend.precision, "data": where}
    _report(res, backend, where, batch_size, as_json, out_json)


def _backend(path, threads, allow_failed_gate: bool, allow_unsealed: bool, as_json: bool):
    """``(backend, description)``: the engine/checkpoint at ``path``, or the shipped default model."""
    from ..runtime import load_engine

    if path:
        return load_engine(path, num_threads=threads, allow_failed_gate=allow_failed_gate,
                           allow_unsealed=allow_unsealed), path
    from ..defaults import load_default_engine  # its engine is built into the cache on first use

    backend = load_default_engine(num_threads=threads, log=None if as_json else (lambda m: click.echo(m, err=True)))
    return backend, f"default model ({backend.folder})"


def _write_overlays(backend, kept, overlays_path) -> str:
    """The image | truth | prediction grid PNG/JPEG of ``--save-overlays``; returns its path."""
    mm = backend.model_info
    grid = overlay_grid(kept, mm.get("palette", [[0, 0, 0], [0, 255, 0]]), mm.get("ignore_index"))
    ok, png = cv2.imencode(Path(overlays_path).suffix or ".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RtsegError(f"cannot encode {overlays_path}; give --overlays-path a .png or .jpg name")
    try:
        Path(overlays_path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(Path(overlays_path), png)
    except OSError as e:
        raise write_error(overlays_path, e, "--overlays-path") from None
    return str(overlays_path)


def _report(res: dict, backend, where: str, batch_size: int, as_json: bool, out_json) -> None:
    """Write ``--out`` and print the table (or the JSON)."""
    if out_json:
        try:
            write_json(out_json, res)
        except OSError as e:
            raise write_error(out_json, e, "--out") from None
    if as_json:
        click.echo(json.dumps(res, indent=2))
    else:
        click.echo(f"{backend.describe()} on {where}")
        click.echo(format_table(res))
        click.echo(f"inference {res['ms_per_image']:.1f} ms/image (batch {batch_size})")
        if res.get("overlays"):
            click.echo(f"overlays: {res['overlays']}")


def _eval_video(backend, video, masks, opts, as_json: bool, out_json, plot_path) -> None:
    """``rtseg eval --video``: run :func:`rtseg.video_eval.evaluate_video`, print, write JSON and the plot."""
    from ..video_eval import evaluate_video, format_video_table, plot_video

    res = evaluate_video(backend, video, masks, opts)
    res["plot"] = str(plot_video(res, plot_path)) if plot_path else None
    if out_json:
        try:
            write_json(out_json, nan_to_none(res))
        except OSError as e:
            raise write_error(out_json, e, "--out") from None
    if as_json:
        click.echo(json.dumps(nan_to_none(res)))
    else:
        click.echo(format_video_table(res))
        wrote = [f"plot: {res['plot']}"] if res["plot"] else []
        wrote += [f"JSON: {out_json}"] if out_json else []
        if wrote:
            click.echo("; ".join(wrote))

