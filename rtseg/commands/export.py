"""``rtseg export``, ``rtseg calibrate``, ``rtseg build-engine`` and ``rtseg export-triton`` (click commands).

User errors are :class:`~rtseg.errors.RtsegError` (one line; ``rtseg.cli.main`` prints
``error: ...`` and exits 2). Progress goes to stderr, results (paths, numbers) to stdout.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..calib.calibrate import CalibOptions
from ..errors import RtsegError
from ..export.build import BuildOptions
from ..export.triton import TritonExportOptions
from ..runtime.registry import DEFAULT_BACKEND, DEFAULT_PRECISION
from ..safe_io import check_writable
from .common import FINITE_FLOAT, backend_choice, precision_choice


def _log(msg: str) -> None:
    click.echo(msg, err=True)


def _img_size_option(f):
    return click.option("--img-size", "img_size", default=None, metavar="N | H W",
                        help="Network input: N (square) or H W in pixels; default model.json input_size.")(f)


class _Command(click.Command):
    """A click command whose ``--img-size`` takes one or two integers (``--img-size 256`` or
    ``--img-size 256 320``): two integer tokens are joined into one value before parsing."""

    def parse_args(self, ctx, args):
        args = list(args)
        out, i = [], 0
        while i < len(args):
            a = args[i]
            if a == "--img-size" and i + 1 < len(args):
                vals = [args[i + 1]]
                if i + 2 < len(args) and args[i + 2].isdigit() and args[i + 1].isdigit():
                    vals.append(args[i + 2])
                out += [a, " ".join(vals)]
                i += 1 + len(vals)
                continue
            out.append(a)
            i += 1
        return super().parse_args(ctx, out)


def _ckpt_option(f):
    return click.option("--checkpoint", "checkpoint", required=True, type=click.Path(path_type=Path),
                        help="Checkpoint or model folder (model.safetensors or model.onnx, + model.json; 'rtseg import-onnx' makes model folders).")(f)


@click.command("export", cls=_Command)
@_ckpt_option
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Output .onnx file (default: <checkpoint>/model.onnx).")
@_img_size_option
@click.option("--opset", type=int, default=BuildOptions.opset, show_default=True, help="ONNX opset (≥ 17).")
def export_command(checkpoint: Path, out: Path | None, img_size, opset: int) -> None:
    """Export a checkpoint to ONNX (dynamic batch, fixed H×W), checked against PyTorch with ONNX Runtime."""
    from ..checkpoint import load_checkpoint
    from ..export.build import parse_img_size
    from ..export.onnx import export_onnx

    model, meta = load_checkpoint(checkpoint)
    hw = parse_img_size(img_size) or meta.input_hw
    out = out or Path(checkpoint) / "model.onnx"
    if out.suffix.lower() != ".onnx":
        raise RtsegError(f"--out {out} must be an .onnx file path; e.g. --out model.onnx")
    check_writable(out, "--out")
    _log(f"exporting {meta.model} at {hw[1]}x{hw[0]}, opset {opset}")
    info = export_onnx(model, out, hw, opset=opset)
    click.echo(f"{out}  opset {info['opset']}  max|onnx-torch| = {info['max_abs_diff']:.3g} (bound {info['tolerance']:.3g})")


@click.command("calibrate", cls=_Command)
@_ckpt_option
@click.option("--calib-data", "calib_data", type=click.Path(path_type=Path), default=None,
              help="Folder of representative images (or with images/); default: the checkpoint's training split.")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default=CalibOptions.method, show_default=True,
              help="Range estimator for the activations.")
@click.option("--num-images", type=int, default=None, help="Images to use (default 100; all when fewer).")
@click.option("--seed", type=int, default=CalibOptions.seed, show_default=True, help="Image-selection seed.")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Calibration folder (default calib/<model>-<method>-n<N>-s<seed>).")
@_img_size_option
@click.option("--opset", type=int, default=CalibOptions.opset, show_default=True)
@click.option("--weight-bits", type=click.Choice(["7", "8"]), default=None,
              help="Weight range: 8 (default) or 7 (avoids int16 saturation on AVX2-only CPUs).")
@click.option("--percentile", type=FINITE_FLOAT, default=CalibOptions.percentile, show_default=True, help="For --method percentile.")
@click.option("--trt-cache", is_flag=True, help="Also write calib.cache (TensorRT ≤ 10 calibration cache).")
@click.option("--no-verify", is_flag=True, help="Skip the OpenVINO compile check (child process).")
def calibrate_command(checkpoint, calib_data, method, num_images, seed, out, img_size, opset, weight_bits, percentile,
                      trt_cache, no_verify) -> None:
    """Calibrate INT8: write one Q/DQ ONNX for every backend and its calibration record."""
    from ..calib.calibrate import CalibOptions, calibrate_checkpoint
    from ..calib.images import DEFAULT_NUM_IMAGES
    from ..calib.record import CALIB_JSON
    from ..export.build import parse_img_size

    if out is not None and out.is_dir() and not (out / CALIB_JSON).is_file() and any(out.iterdir()):
        raise RtsegError(f"--out {out} exists and is not a calibration folder (no {CALIB_JSON}); its files are left as "
                         f"they are — pass a new folder or an earlier calibration folder to replace")
    kw = {"weight_bits": int(weight_bits)} if weight_bits else {}
    options = CalibOptions(calib_data=calib_data, method=method, num_images=num_images or DEFAULT_NUM_IMAGES, seed=seed,
                           out=out, img_size=parse_img_size(img_size), opset=opset, verify=not no_verify,
                           trt_cache=trt_cache, percentile=percentile, **kw)
    rec = calibrate_checkpoint(checkpoint, options, log=_log)
    click.echo(f"{rec['folder']}  {rec['num_images']} images  {method}  seed {seed}  qdq sha256 {rec['qdq_sha256'][:16]}")


@click.command("build-engine", cls=_Command)
@_ckpt_option
@click.option("--backend", type=backend_choice(), default=DEFAULT_BACKEND, show_default=True)
@click.option("--precision", type=precision_choice(), default=DEFAULT_PRECISION, show_default=True,
              help="auto: build every precision the backend runs here, keep the fastest that passes the accuracy gate.")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Engine folder (default engines/<model>/<backend>-<precision>).")
@_img_size_option
@click.option("--opset", type=int, default=BuildOptions.opset, show_default=True)
@click.option("--calib-data", "calib_data", type=click.Path(path_type=Path), default=None,
              help="int8: folder of representative images; default the checkpoint's training split.")
@click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile"]), default=BuildOptions.calib_method, show_default=True)
@click.option("--num-calib", type=int, default=None, help="int8: calibration images (default 100).")
@click.option("--seed", type=int, default=BuildOptions.seed, show_default=True, help="int8: image-selection seed.")
@click.option("--weight-bits", type=click.Choice(["7", "8"]), default=None, help="int8: weight range (default 8).")
@click.option("--qdq-from", type=click.Path(path_type=Path), default=None,
              help="int8: reuse the Q/DQ ONNX of a 'rtseg calibrate' folder instead of calibrating again.")
@click.option("--no-gate", is_flag=True, help="Skip the accuracy gate of int8/bf16/fp16 engines (recorded as not run).")
@click.option("--gate-data", type=click.Path(path_type=Path), default=None,
              help="Labelled folder for the accuracy gate (default: the checkpoint's val split).")
@click.option("--gate-split", default=None, help="Split of --gate-data (train/val/test/all; default val of the training data, else all).")
@click.option("--gate-images", type=int, default=None, help="Gate on at most N images (default 200).")
@click.option("--gate-tolerance", type=FINITE_FLOAT, default=None,
              help="Allowed drop vs fp32 in points (default 0.5 Dice for binary, 1.0 mIoU for multi-class).")
@click.option("--gate-max-rounds", type=int, default=None, help="int8 repair rounds (each keeps 2x more layers in float; default 5).")
@click.option("--threads", type=int, default=None, help="Inference threads for the gate and the auto-precision timing.")
@click.option("--bench-batch", type=int, default=BuildOptions.bench_batch, show_default=True, help="auto: batch size of the latency measurement.")
@click.option("--bench-seconds", type=FINITE_FLOAT, default=BuildOptions.bench_seconds, show_default=True, help="auto: timed seconds per candidate.")
@click.option("--min-batch", type=int, default=None, help="TensorRT profile: smallest batch.")
@click.option("--opt-batch", type=int, default=None, help="TensorRT profile: batch to optimise for.")
@click.option("--max-batch", type=int, default=None, help="TensorRT profile: largest batch.")
@click.option("--workspace-mb", type=int, default=None, help="TensorRT builder workspace (MiB).")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help="TensorRT timing cache (read/written); its name gets the TensorRT version and compute capability "
                   "(timing.cache -> timing.trt10.3.0.sm86.cache).")
@click.option("--version-compatible", is_flag=True, default=None, help="TensorRT: version-compatible engine.")
@click.option("--hardware-compatibility-level", type=click.Choice(["none", "ampere_plus", "same_compute_capability"]),
              default=None, help="TensorRT hardware compatibility (same_compute_capability needs TensorRT >= 10.9).")
@click.option("--int8-quantizer", type=click.Choice(["rtseg", "nncf", "nncf-ac"]), default=BuildOptions.int8_quantizer, show_default=True,
              help="OpenVINO int8: rtseg's Q/DQ ONNX + gate repair, NNCF post-training quantization, or NNCF with "
                   "accuracy control against the gate metric (same calibration images; engine.json build.quantizer).")
def build_engine_command(checkpoint, backend, precision, out, img_size, opset, calib_data, calib_method, num_calib, seed,
                         weight_bits, qdq_from, no_gate, gate_data, gate_split, gate_images, gate_tolerance, gate_max_rounds,
                         threads, bench_batch, bench_seconds, min_batch, opt_batch, max_batch, workspace_mb, timing_cache,
                         version_compatible, hardware_compatibility_level, int8_quantizer) -> None:
    """Build an inference engine folder from a checkpoint.

    int8/bf16/fp16 engines pass an accuracy gate against fp32 on held-out labelled images (int8 ones
    are repaired by keeping their most sensitive layers in float); an engine that still fails is
    written, marked failed in engine.json, refused by stream/eval/bench without --allow-failed-gate,
    and this command exits with status 2.

    Example: rtseg build-engine --checkpoint runs/eunet-s --backend openvino --precision auto --threads 2
    """
    from ..export.build import BuildOptions, build_engine
    from ..gate.check import DEFAULT_MAX_ROUNDS, GateOptions

    backend_options = {"min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch,
                       "workspace_mb": workspace_mb, "timing_cache": timing_cache,
                       "version_compatible": version_compatible,
                       "hardware_compatibility_level": hardware_compatibility_level}
    gate = GateOptions(enabled=not no_gate, data=gate_data, split=gate_split, images=gate_images,
                       tolerance_pt=gate_tolerance, max_rounds=gate_max_rounds or DEFAULT_MAX_ROUNDS, threads=threads)
    options = BuildOptions(img_size=img_size, opset=opset, calib_data=calib_data, calib_method=calib_method,
                           num_calib=num_calib, seed=seed, weight_bits=int(weight_bits) if weight_bits else None,
                           qdq_from=qdq_from, gate=gate, threads=threads, backend_options=backend_options,
                           bench_batch=bench_batch, bench_seconds=bench_seconds, int8_quantizer=int8_quantizer)
    if out is not None:
        check_writable(out, "--out")
    folder = build_engine(checkpoint, backend, precision, out, options, log=_log)
    _report(folder)


def _report(folder: Path) -> None:
    """Print the built engine's summary (auto table, parity with PyTorch, gate) and fail on a failed gate."""
    from ..export.build import format_selection
    from ..gate.check import describe_gate

    meta = json.loads((folder / "engine.json").read_text())
    if meta.get("selection"):
        click.echo(format_selection(meta["selection"]))
    v = meta.get("verify") or {}
    extra = ""
    if "mask_agreement" in v:
        ref = "PyTorch" if str(v.get("reference", "pytorch")).startswith("pytorch") else "the imported ONNX (ORT)"
        extra = f"  vs {ref}: max|Δlogit| {v['max_abs_diff']:.3g}, mask agreement {100 * v['mask_agreement']:.2f} %"
    click.echo(f"{folder}  {meta['backend']} {meta.get('precision')}{extra}")
    if meta.get("precision") != "fp32":
        click.echo(describe_gate(meta.get("accuracy_gate")))
    if (meta.get("accuracy_gate") or {}).get("status") == "failed":
        raise RtsegError(f"{folder} failed the accuracy gate; it is marked failed in engine.json and refused without "
                         f"--allow-failed-gate — try more --num-calib, --calib-method entropy, more --gate-max-rounds, "
                         f"or --precision fp32")


@click.command("export-triton")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--repo", type=click.Path(path_type=Path), required=True,
              help="Triton model repository folder (created if missing); each model goes to REPO/<name>/.")
@click.option("--name", "names", multiple=True,
              help="Model name in the repository, one per model (default: <model>-<backend>-<precision>).")
@click.option("--max-batch-size", type=click.IntRange(1, 1024), default=TritonExportOptions.max_batch_size,
              show_default=True, help="max_batch_size for engines without a batch profile (OpenVINO, ONNX Runtime).")
@click.option("--max-queue-delay-us", type=click.IntRange(0, 10_000_000), default=TritonExportOptions.max_queue_delay_us,
              show_default=True, help="Dynamic batcher: how long Triton waits to fill a batch (µs).")
@click.option("--instances", type=click.IntRange(1, 64), default=TritonExportOptions.instances, show_default=True,
              help="Model instances (instance_group count; KIND_GPU for TensorRT, KIND_CPU otherwise).")
def export_triton_command(models, repo: Path, names, max_batch_size: int, max_queue_delay_us: int, instances: int) -> None:
    """Write a Triton Inference Server model repository from engine, checkpoint or model folders.

    Example: rtseg export-triton engines/eunet-s/openvino-fp32 --repo triton-models
    """
    from ..export.triton import export_triton

    options = TritonExportOptions(max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us, instances=instances)
    for folder in export_triton(list(models), repo, list(names) or None, options, log=_log):
        click.echo(folder)
