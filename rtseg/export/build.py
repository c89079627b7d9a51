"""Checkpoint → engine folder ``engines/<model>/<backend>-<precision>/`` (issue 2 step 6, issue 5).

docs/internals.md "Engine folder" fixes the layout and ``engine.json``. What each backend gets:

==========  =========  ===========================================================================
backend     precision  engine file
==========  =========  ===========================================================================
openvino    fp32       ``model.xml/.bin``: ``ov.convert_model(model.onnx)``, saved FP32
                       (``compress_to_fp16=False``); compiled with ``INFERENCE_PRECISION_HINT=f32``
openvino    bf16       the same FP32 IR, compiled with hint ``bf16``. Refused on a CPU without
                       native bf16 (OPTIMIZATION_CAPABILITIES lacks ``BF16``): OpenVINO would run
                       f32 silently and the folder would lie about its precision
openvino    int8       IR of ``model.qdq.onnx`` (calibrated here, or ``qdq_from`` a calibration
                       folder)
onnxruntime fp32/int8  ``model.ort.onnx``: ``model.onnx`` / ``model.qdq.onnx`` after ONNX Runtime's
                       *extended* graph optimisations (portable: no hardware-specific layouts)
tensorrt    fp32/fp16/ ``model.engine`` by :func:`rtseg.export.tensorrt_build.build_tensorrt_engine`
            int8
==========  =========  ===========================================================================

Every OpenVINO engine is compiled once in a child process before the folder is published
(:func:`rtseg.runtime.openvino_backend.verify_openvino`): a native crash of the compiler becomes an
:class:`~rtseg.errors.RtsegError`. Every engine is run on two real images (or seeded noise when no
images are at hand) and compared with PyTorch; the result is ``engine.json`` ``verify``. Reduced
precisions then pass the accuracy gate (:mod:`rtseg.export.gate`): task metric against FP32 on
held-out labelled images, with per-layer repair for int8; its record is ``engine.json``
``accuracy_gate``.

The folder is built in a temporary sibling and renamed into place, so a failed build never leaves
a half-written engine behind (an existing engine is replaced only by a complete one).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import RtsegError

ENGINE_FORMAT = "rtseg-engine/1"
PRECISIONS = {"openvino": ("fp32", "bf16", "int8"), "onnxruntime": ("fp32", "int8"),
              "tensorrt": ("fp32", "fp16", "int8")}
ENGINE_FILES = {"openvino": "model.xml", "onnxruntime": "model.ort.onnx", "tensorrt": "model.engine"}


def default_engine_dir(model: str, backend: str, precision: str) -> Path:
    """``engines/<model>/<backend>-<precision>`` relative to the current directory."""
    return Path("engines") / model / f"{backend}-{precision}"


def check_backend_precision(backend: str, precision: str) -> None:
    """Raise :class:`RtsegError` for an unknown backend or a precision it does not build."""
    if backend not in PRECISIONS:
        raise RtsegError(f"unknown backend {backend!r}; use one of {', '.join(PRECISIONS)}")
    if precision not in PRECISIONS[backend]:
        raise RtsegError(f"the {backend} backend builds {', '.join(PRECISIONS[backend])} engines, not {precision!r}; "
                         f"pick one of those with --precision")


def parse_img_size(img_size) -> tuple[int, int] | None:
    """``None``, ``N``, ``(H, W)`` or ``"HxW"`` → ``(H, W)`` in pixels (or ``None``).

    Raises:
        RtsegError: not positive integers.
    """
    if img_size is None:
        return None
    if isinstance(img_size, str):
        parts = img_size.lower().replace("x", " ").replace(",", " ").split()
    elif isinstance(img_size, (int, np.integer)):
        parts = [img_size]
    else:
        parts = list(img_size)
    try:
        vals = [int(v) for v in parts]
    except (TypeError, ValueError):
        raise RtsegError(f"--img-size {img_size!r} is not one or two integers; pass e.g. --img-size 256 or --img-size 256 320") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) < 1:
        raise RtsegError(f"--img-size {img_size!r} must be N or H W with positive integers; e.g. --img-size 256")
    return vals[0], vals[1]


def _parity_sample(calib_data, meta, hw: tuple[int, int]) -> tuple[np.ndarray, str]:
    """Two real images preprocessed like the runtime, or seeded noise if none are reachable."""
    from .calibrate import calib_source, preprocess_images, select_images

    try:
        files, root, _ = calib_source(calib_data, meta)
        chosen = select_images(files, 2, seed=12345, root=root)
        return preprocess_images(chosen, hw, meta.resize, meta.mean, meta.std), f"{len(chosen)} images from {root}"
    except RtsegError:
        return np.random.default_rng(0).standard_normal((2, 3, *hw)).astype(np.float32), "seeded Gaussian noise"


def _compare(y: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    from ..runtime.base import logits_to_mask

    return {"max_abs_diff": float(np.max(np.abs(y.astype(np.float64) - ref))),
            "logit_scale": float(np.max(np.abs(ref))),
            "mask_agreement": float(np.mean(logits_to_mask(y) == logits_to_mask(ref)))}


def build_engine(checkpoint: str | Path, backend: str = "openvino", precision: str = "fp32",
                 out: str | Path | None = None, calib_data: str | Path | None = None, calib_method: str = "entropy",
                 num_calib: int | None = None, seed: int = 0, img_size=None, opset: int = 17,
                 qdq_from: str | Path | None = None, weight_bits: int | None = None,
                 gate: bool = True, gate_data: str | Path | None = None, gate_split: str | None = None,
                 gate_images: int | None = None, gate_tolerance: float | None = None,
                 gate_max_rounds: int | None = None, threads: int | None = None,
                 log: Callable[[str], None] | None = None, **backend_opts: Any) -> Path:
    """Build an engine folder from a checkpoint (docs/internals.md "Engine folder").

    Args:
        checkpoint: checkpoint folder (``model.safetensors`` + ``model.json``).
        backend: ``"openvino"`` (default on CPU), ``"onnxruntime"`` or ``"tensorrt"``.
        precision: see the module table (``fp32`` | ``bf16`` | ``fp16`` | ``int8``).
        out: engine folder; default ``engines/<model>/<backend>-<precision>`` under the CWD.
        calib_data: int8 only: folder of representative images; default the checkpoint's training
            split (``model.json`` ``data.root``); no data → :class:`RtsegError`, never random scales.
        calib_method, num_calib, seed, weight_bits: calibration settings
            (:func:`rtseg.export.calibrate.calibrate_checkpoint`).
        img_size: engine input (H, W) (or N); default ``model.json`` ``input_size``.
        opset: ONNX opset of the export.
        qdq_from: int8 only: reuse the Q/DQ ONNX of a ``rtseg calibrate`` folder (same checkpoint)
            instead of calibrating again — one Q/DQ ONNX for every backend.
        gate: run the accuracy gate on a reduced-precision engine (int8/bf16/fp16; see
            :mod:`rtseg.export.gate`): evaluate it against FP32 on held-out labelled images and, for
            int8, keep the most sensitive layers in float until it passes. The result is
            ``engine.json`` ``accuracy_gate``; a failed engine is still written (for inspection) but
            marked ``"failed"`` and refused by :func:`rtseg.runtime.load_engine`.
        gate_data, gate_split, gate_images: the gate's labelled images (default the checkpoint's
            ``val`` split, at most 200 images); with no labelled data reachable the gate is recorded
            as ``"skipped"`` unless ``gate_data`` was given (then :class:`RtsegError`).
        gate_tolerance: allowed drop in points (default 0.5 Dice / 1.0 mIoU).
        gate_max_rounds: repair rounds (default 5).
        threads: inference threads for the gate's evaluations and latency measurements.
        log: progress callback (one line per step).
        **backend_opts: TensorRT options passed through (``min_batch``, ``opt_batch``, ``max_batch``,
            ``workspace_mb``, ``timing_cache``, ``version_compatible``, ``hardware_compatibility_level``).

    Returns:
        the engine folder.

    Raises:
        RtsegError: bad checkpoint (missing, corrupt, wrong architecture), unknown backend or
            precision, a precision this device cannot run (bf16 without native support), no
            calibration data, an export/quantization failure, or a backend that crashes or fails
            on the graph (each one line with the fix).
    """
    from ..checkpoint import file_sha256, load_checkpoint, resolve_checkpoint, write_json
    from . import calibrate as cal
    from .onnx import export_onnx

    log = log or (lambda msg: None)
    t_start = time.perf_counter()
    check_backend_precision(backend, precision)
    if backend == "openvino":
        from ..runtime.openvino_backend import check_precision_supported, openvino_device_info

        check_precision_supported(precision, openvino_device_info()["capabilities"])
    if precision != "int8" and (qdq_from is not None or calib_data is not None):
        raise RtsegError(f"--calib-data/--qdq-from apply to --precision int8 only, not {precision}; drop them or pass --precision int8")
    ckpt = resolve_checkpoint(checkpoint)
    model, meta = load_checkpoint(ckpt)
    hw = parse_img_size(img_size) or meta.input_hw
    out = Path(out) if out is not None else default_engine_dir(meta.model, backend, precision)
    if out.exists() and not (out / "engine.json").is_file() and any(out.iterdir()):
        raise RtsegError(f"{out} exists and is not an engine folder; pass another --out or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        sample, sample_desc = _parity_sample(calib_data, meta, hw)
        import torch

        with torch.inference_mode():
            reference = model(torch.from_numpy(sample)).float().numpy()

        log(f"exporting {meta.model} to ONNX at {hw[1]}x{hw[0]} (opset {opset})")
        export = export_onnx(model, tmp / cal.FP32_ONNX, hw, opset=opset, sample=sample)
        export["path"] = cal.FP32_ONNX
        source_onnx = tmp / cal.FP32_ONNX
        calibration = None
        if precision == "int8":
            calibration = _int8_qdq(ckpt, tmp, hw, calib_data, calib_method, num_calib, seed, qdq_from, opset,
                                    weight_bits, export, log)
            source_onnx = tmp / cal.QDQ_ONNX

        log(f"building the {backend} {precision} engine")
        info = _build_backend(backend, source_onnx, tmp, precision, hw, sample, backend_opts)
        output = info.pop("output_sample", None)
        verify = {"input": sample_desc, "reference": "pytorch fp32"}
        if output is not None:
            verify.update(_compare(output, reference))

        from .. import __version__
        from .onnx import onnx_io

        io_in, io_out = onnx_io(source_onnx)
        engine = {
            "format": ENGINE_FORMAT,
            "backend": backend,
            "backend_version": info.pop("backend_version"),
            "precision": precision,
            "device": info.pop("device"),
            "engine_file": info.pop("engine_file", ENGINE_FILES[backend]),
            "onnx_file": source_onnx.name,
            "input": info.pop("input", {"name": io_in["name"], "shape": [-1, 3, hw[0], hw[1]], "dtype": "float32", "layout": "NCHW"}),
            "output": info.pop("output", {"name": io_out["name"], "shape": [-1, *export["output"]["shape"][1:]], "dtype": "float32"}),
            "batch": info.pop("batch", {"min": 1, "opt": 1, "max": None}),
            "checkpoint": {"path": str(ckpt.resolve()), "sha256": file_sha256(ckpt / "model.safetensors")},
            "model": meta.to_dict(),
            "export": {k: export.get(k) for k in ("opset", "max_abs_diff", "tolerance", "torch_version", "onnx_version")},
            "calibration": calibration,
            "accuracy_gate": None,
            "verify": verify,
            "build": {**info, "seconds": round(time.perf_counter() - t_start, 2)},
            "rtseg_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        if precision != "fp32" and gate:
            engine["accuracy_gate"] = _gate(tmp, engine, meta, backend, precision, hw, sample, reference, backend_opts,
                                            gate_data, gate_split, gate_images, gate_tolerance, gate_max_rounds, threads,
                                            log)
        write_json(tmp / "engine.json", engine)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"engine written to {out}")
    return out


def _gate(folder: Path, engine: dict, meta, backend: str, precision: str, hw, sample, reference, backend_opts,
          gate_data, gate_split, gate_images, gate_tolerance, gate_max_rounds, threads, log) -> dict[str, Any]:
    """Run the accuracy gate on the engine in ``folder`` (see :func:`build_engine`)."""
    from . import calibrate as cal
    from . import gate as g

    try:
        gs = g.gate_set(meta.to_dict(), gate_data, gate_split,
                        g.DEFAULT_GATE_IMAGES if gate_images is None else gate_images)
    except RtsegError as e:
        if gate_data is not None:
            raise
        log(f"warning: accuracy gate skipped: {e}")
        return {"format": g.GATE_FORMAT, "status": "skipped", "reason": str(e)}

    def rebuild(qdq_path: Path) -> dict[str, Any]:
        y = _build_backend(backend, qdq_path, folder, precision, hw, sample, backend_opts).get("output_sample")
        return {"verify": _compare(y, reference) if y is not None else {}}

    kw = {} if gate_max_rounds is None else {"max_rounds": gate_max_rounds}
    record = g.run_gate(folder, engine, gs, tolerance_pt=gate_tolerance,
                        rebuild=rebuild if precision == "int8" else None, threads=threads, log=log, **kw)
    if record["excluded_layers"] and engine.get("calibration"):
        from ..checkpoint import file_sha256

        engine["calibration"]["repaired_qdq_sha256"] = file_sha256(folder / cal.QDQ_ONNX)
        engine["calibration"]["calibrated_qdq_file"] = "model.qdq.calibrated.onnx"
    return record


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder to ``out``, replacing an older engine only at the end."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _int8_qdq(ckpt: Path, folder: Path, hw, calib_data, method, num_calib, seed, qdq_from, opset, weight_bits,
              export: dict, log) -> dict[str, Any]:
    """Put ``model.qdq.onnx`` and ``calib.json`` into ``folder``; return the engine.json entry."""
    from ..checkpoint import file_sha256
    from . import calibrate as cal

    if qdq_from is not None:
        rec = cal.read_calib_record(qdq_from)
        sha = file_sha256(ckpt / "model.safetensors")
        if rec.get("checkpoint", {}).get("sha256") != sha:
            raise RtsegError(f"{qdq_from} was calibrated for another checkpoint ({rec.get('checkpoint', {}).get('path')}); "
                             f"re-run 'rtseg calibrate --checkpoint {ckpt}' or drop --qdq-from")
        if list(rec.get("preprocessing", {}).get("input_hw", [])) != list(hw):
            raise RtsegError(f"{qdq_from} was calibrated at {rec['preprocessing']['input_hw']}, not {list(hw)}; "
                             f"pass the same --img-size or re-run 'rtseg calibrate'")
        shutil.copyfile(Path(qdq_from) / cal.QDQ_ONNX, folder / cal.QDQ_ONNX)
        shutil.copyfile(Path(qdq_from) / cal.CALIB_JSON, folder / cal.CALIB_JSON)
        log(f"using the Q/DQ ONNX of {qdq_from}")
    else:
        kw = {}
        if weight_bits is not None:
            kw["weight_bits"] = weight_bits
        rec = cal.calibrate_checkpoint(ckpt, calib_data=calib_data, method=method,
                                       num_images=num_calib or cal.DEFAULT_NUM_IMAGES, seed=seed, out=folder,
                                       img_size=hw, opset=opset, verify=False, onnx_path=folder / cal.FP32_ONNX,
                                       export_info=export, log=log, **kw)
    return {"file": cal.CALIB_JSON, "qdq_sha256": rec.get("qdq_sha256"), "method": rec.get("method"),
            "seed": rec.get("seed"), "num_images": rec.get("num_images"), "images_sha256": rec.get("images_sha256"),
            "source": rec.get("source"), "scheme": {k: rec.get("quantization", {}).get(k) for k in
                                                     ("activations", "weights", "op_types", "weight_bits", "excluded_nodes")},
            "from": str(Path(qdq_from).resolve()) if qdq_from is not None else None}


def _build_backend(backend: str, source_onnx: Path, folder: Path, precision: str, hw, sample: np.ndarray,
                   backend_opts: dict[str, Any]) -> dict[str, Any]:
    """Build ``backend``'s engine file in ``folder`` from ``source_onnx``; the builder's info dict."""
    if backend == "openvino":
        return _build_openvino(source_onnx, folder, precision, sample)
    if backend == "onnxruntime":
        return _build_onnxruntime(source_onnx, folder, sample)
    return _build_tensorrt(source_onnx, folder, precision, hw, backend_opts)


def _build_openvino(source_onnx: Path, folder: Path, precision: str, sample: np.ndarray) -> dict[str, Any]:
    import openvino as ov

    from ..runtime.openvino_backend import PRECISION_HINTS, openvino_device_info, openvino_version, verify_openvino

    try:
        ov_model = ov.convert_model(str(source_onnx))
    except Exception as e:  # OpenVINO's frontend raises its own types
        raise RtsegError(f"OpenVINO cannot convert {source_onnx.name} ({str(e).strip().splitlines()[0]}); "
                         f"use --backend onnxruntime or report the model") from None
    xml = folder / "model.xml"
    ov.save_model(ov_model, str(xml), compress_to_fp16=False)
    del ov_model
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision]}
    fix = ("use --backend onnxruntime for this model, or another --precision"
           if precision != "int8" else
           "rtseg's Q/DQ scheme should avoid this — use --backend onnxruntime --precision int8 and report the model")
    y = verify_openvino(xml, sample, config, fix=fix)
    return {"backend_version": openvino_version(), "device": openvino_device_info(), "engine_file": xml.name,
            "compile_config": config, "compiled_in_child": True, "output_sample": y}


def _build_onnxruntime(source_onnx: Path, folder: Path, sample: np.ndarray) -> dict[str, Any]:
    from ..runtime.onnxruntime_backend import cpu_device_info, make_session, onnxruntime_version

    target = folder / "model.ort.onnx"
    try:
        make_session(source_onnx, num_threads=1, level="extended", optimized_model_filepath=target)
        sess = make_session(target, level="all")
        y = sess.run(None, {sess.get_inputs()[0].name: sample})[0]
    except Exception as e:  # onnxruntime raises its own types
        raise RtsegError(f"ONNX Runtime cannot run {source_onnx.name} ({str(e).strip().splitlines()[0]}); report the model") from None
    return {"backend_version": onnxruntime_version(), "device": cpu_device_info(), "engine_file": target.name,
            "graph_optimization": "extended (saved), all (at load)", "output_sample": y}


TENSORRT_OPTIONS = ("min_batch", "opt_batch", "max_batch", "workspace_mb", "timing_cache", "version_compatible",
                    "hardware_compatibility_level")


def _build_tensorrt(source_onnx: Path, folder: Path, precision: str, hw, opts: dict[str, Any]) -> dict[str, Any]:
    try:
        from .tensorrt_build import build_tensorrt_engine
    except ImportError as e:
        raise RtsegError(f"the TensorRT builder is unavailable ({e}); install 'rtseg[tensorrt]' on a machine with an "
                         f"NVIDIA GPU, or use --backend openvino") from None
    kwargs = {k: v for k, v in opts.items() if v is not None}
    info = dict(build_tensorrt_engine(source_onnx, folder, precision, input_hw=tuple(hw), **kwargs))
    info.pop("backend", None)
    info.pop("precision", None)
    build = info.pop("build", {}) or {}
    return {**info, **build}


def build_auto(checkpoint: str | Path, backend: str = "openvino", out: str | Path | None = None,
               bench_batch: int = 1, bench_seconds: float = 3.0, threads: int | None = None,
               log: Callable[[str], None] | None = None, **build_kw: Any) -> Path:
    """``build-engine --precision auto``: build every precision ``backend`` can run here, measure
    each on real frames, keep the fastest that passes the accuracy gate (issue 5).

    Candidates are built into ``engines/<model>/<backend>-<precision>`` next to ``out`` (each with
    its own gate). Latency is measured round-robin (3 rounds of ``bench_seconds / 3`` per
    candidate, median of the per-round medians, batch ``bench_batch``, ``threads`` threads) on the
    gate's real images preprocessed to the engine size, so background load hits every candidate
    alike. The winner is the lowest-latency candidate whose gate passed (fp32 is the reference and
    always passes); it is copied to ``out`` (default ``engines/<model>/<backend>-auto``) and
    ``engine.json`` ``selection`` records the table and the reason.

    Returns:
        the ``out`` folder.

    Raises:
        RtsegError: as :func:`build_engine`; no labelled images to measure on (pass ``gate_data``).
    """
    from ..checkpoint import load_checkpoint, resolve_checkpoint, write_json
    from ..runtime import load_engine
    from . import gate as g

    log = log or (lambda m: None)
    check_backend_precision(backend, "fp32")
    _, meta = load_checkpoint(resolve_checkpoint(checkpoint))
    out = Path(out) if out is not None else default_engine_dir(meta.model, backend, "auto")
    gs = g.gate_set(meta.to_dict(), build_kw.get("gate_data"), build_kw.get("gate_split"),
                    build_kw.get("gate_images") or g.DEFAULT_GATE_IMAGES)
    rows: list[dict[str, Any]] = []
    for p in PRECISIONS[backend]:
        if backend == "openvino" and p == "bf16":
            from ..runtime.openvino_backend import openvino_device_info

            if "BF16" not in openvino_device_info()["capabilities"]:
                rows.append({"precision": p, "status": "skipped", "why": "this CPU has no native bf16 (OpenVINO would run f32)"})
                continue
        log(f"--- candidate {backend} {p}")
        kw = dict(build_kw)
        if p != "int8":  # calibration options are int8-only
            kw.update(calib_data=None, qdq_from=None)
        folder = build_engine(checkpoint, backend=backend, precision=p, out=out.parent / f"{backend}-{p}",
                              threads=threads, log=log, **kw)
        rows.append({"precision": p, "folder": str(folder)})
    built = [r for r in rows if "folder" in r]
    backends = {r["precision"]: load_engine(r["folder"], num_threads=threads, allow_failed_gate=True) for r in built}
    frames = g.gate_frames(next(iter(backends.values())), gs, 16)
    lat: dict[str, list[float]] = {p: [] for p in backends}
    log(f"measuring latency on {len(frames)} real frames, batch {bench_batch}, {threads or 'default'} threads")
    for _ in range(3):
        for p, b in backends.items():
            lat[p].append(g.latency_ms(b, frames, bench_batch, seconds=bench_seconds / 3))
    for r in built:
        p = r["precision"]
        b = backends[p]
        gate = b.meta.get("accuracy_gate")
        if p == "fp32":
            score = g.task_score(b, gs)
            r.update(status="passed", score=round(score, 4), delta_pt=0.0, excluded_layers=0,
                     why="fp32 reference")
        elif gate and gate.get("status") in ("passed", "failed"):
            r.update(status=gate["status"], score=gate["after"]["score"], delta_pt=gate["after"]["delta_pt"],
                     excluded_layers=len(gate["excluded_layers"]),
                     why=(f"gate {gate['status']} ({-gate['after']['delta_pt']:+.2f} pt, tolerance {gate['tolerance_pt']} pt"
                          + (f", {len(gate['excluded_layers'])} layer(s) kept float)" if gate["excluded_layers"] else ")")))
        else:
            r.update(status="unverified", why="accuracy gate not run (no labelled data)")
        r["latency_ms"] = round(float(np.median(lat[p])), 3)
        r["fps"] = round(1000.0 * bench_batch / r["latency_ms"], 2)
        b.close()
    ok = [r for r in built if r["status"] == "passed"]
    winner = min(ok, key=lambda r: r["latency_ms"])
    fp32 = next(r for r in built if r["precision"] == "fp32")
    reasons = []
    for r in built:
        if r is winner:
            continue
        if r["status"] != "passed":
            reasons.append(f"{r['precision']} {r['why']}")
        else:
            reasons.append(f"{r['precision']} is slower ({r['latency_ms']:.2f} ms)")
    reason = (f"{winner['precision']} is the fastest engine that passes the accuracy gate: {winner['latency_ms']:.2f} ms "
              f"per batch of {bench_batch}" + (f" ({fp32['latency_ms'] / winner['latency_ms']:.2f}x fp32)" if winner is not fp32 else "")
              + ("; " + "; ".join(reasons) if reasons else ""))
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(winner["folder"], tmp)
    engine = json.loads((tmp / "engine.json").read_text())
    engine["selection"] = {"rule": "fastest candidate whose accuracy gate passed", "winner": winner["precision"],
                           "reason": reason, "batch": bench_batch, "threads": threads,
                           "frames": f"{len(frames)} images of {gs.description}", "candidates": rows}
    write_json(tmp / "engine.json", engine)
    _publish(tmp, out)
    log(f"engine written to {out}")
    return out


def format_selection(selection: dict) -> str:
    """The ``--precision auto`` table (engine.json ``selection``) as text."""
    head = f"{'precision':9s} {'gate':10s} {'metric':>8s} {'Δ pt':>7s} {'float layers':>12s} {'ms/batch':>9s} {'FPS':>7s}"
    lines = [head, "-" * len(head)]
    for r in selection["candidates"]:
        if "latency_ms" not in r:
            lines.append(f"{r['precision']:9s} {r['status']:10s} {'':>8s} {'':>7s} {'':>12s} {'':>9s} {'':>7s}  {r['why']}")
            continue
        mark = "  <- chosen" if r["precision"] == selection["winner"] else ""
        lines.append(f"{r['precision']:9s} {r['status']:10s} {r.get('score', float('nan')):8.2f} {0.0 - r.get('delta_pt', 0.0):+7.2f} "
                     f"{r.get('excluded_layers', 0):12d} {r['latency_ms']:9.2f} {r['fps']:7.1f}{mark}")
    lines.append(selection["reason"])
    return "\n".join(lines)
