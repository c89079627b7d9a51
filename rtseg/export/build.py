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
tensorrt    fp32/fp16/ ``model.engine`` by :func:`rtseg.runtime.tensorrt.build.build_tensorrt_engine`
            int8
==========  =========  ===========================================================================

Every OpenVINO engine is compiled once in a child process before the folder is published
(:func:`rtseg.runtime.openvino_backend.verify_openvino`): a native crash of the compiler becomes an
:class:`~rtseg.errors.RtsegError`. Every engine is run on two real images (or seeded noise when no
images are at hand) and compared with PyTorch; the result is ``engine.json`` ``verify``. Reduced
precisions then pass the accuracy gate (:mod:`rtseg.gate.check`): task metric against FP32 on
held-out labelled images, with per-layer repair for int8; its record is ``engine.json``
``accuracy_gate``.

The folder is built in a temporary sibling and renamed into place, so a failed build never leaves
a half-written engine behind (an existing engine is replaced only by a complete one).
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..calib.images import DEFAULT_NUM_IMAGES
from ..calib.record import CALIB_JSON, FP32_ONNX, QDQ_ONNX
from ..errors import RtsegError
from ..gate.check import GateOptions
from ..limits import check_image_size, check_threads
from ..meta import ENGINE_FORMAT
from ..runtime.registry import DEFAULT_BACKEND, DEFAULT_PRECISION, BuildRequest, get_backend

Log = Callable[[str], None]


@dataclass
class BuildOptions:
    """Settings of :func:`build_engine` / :func:`build_auto` besides backend, precision and folder.

    Attributes:
        img_size: engine input (H, W) (or N, or ``"HxW"``); default ``model.json`` ``input_size``.
        opset: ONNX opset of the export.
        calib_data: int8: folder of representative images; default the checkpoint's training split
            (``model.json`` ``data.root``); no data → :class:`RtsegError`, never random scales.
        calib_method, num_calib, seed, weight_bits: int8 calibration settings
            (:class:`rtseg.calib.calibrate.CalibOptions`; ``None`` = its default).
        qdq_from: int8: reuse the Q/DQ ONNX of a ``rtseg calibrate`` folder (same checkpoint) instead
            of calibrating again — one Q/DQ ONNX for every backend.
        gate: the accuracy gate of reduced precisions (:class:`rtseg.gate.check.GateOptions`).
        threads: inference threads for the gate's evaluations and the latency measurements.
        backend_options: backend-specific build options (TensorRT: ``min_batch``, ``opt_batch``,
            ``max_batch``, ``workspace_mb``, ``timing_cache``, ``version_compatible``,
            ``hardware_compatibility_level``); refused by backends that take none.
        bench_batch, bench_seconds: ``--precision auto``: batch and timed seconds per candidate.
        int8_quantizer: which path builds an OpenVINO int8 engine (:data:`INT8_QUANTIZERS`):
            ``"rtseg"`` (the Q/DQ ONNX + gate repair ranked in OpenVINO), ``"nncf"`` (``nncf.quantize``
            of the OpenVINO model) or ``"nncf-ac"`` (``nncf.quantize_with_accuracy_control`` against
            the gate metric); all use the same calibration images. ``engine.json`` ``build.quantizer``
            records the path (:mod:`rtseg.gate.nncf_quant`).
    """

    img_size: Any = None
    opset: int = 17
    calib_data: str | Path | None = None
    calib_method: str = "entropy"
    num_calib: int | None = None
    seed: int = 0
    weight_bits: int | None = None
    qdq_from: str | Path | None = None
    gate: GateOptions = field(default_factory=GateOptions)
    threads: int | None = None
    backend_options: dict[str, Any] = field(default_factory=dict)
    bench_batch: int = 1
    bench_seconds: float = 3.0
    int8_quantizer: str = "rtseg"


#: int8 paths of ``BuildOptions.int8_quantizer`` (NNCF ones: OpenVINO only)
INT8_QUANTIZERS = ("rtseg", "nncf", "nncf-ac")


def default_engine_dir(model: str, backend: str, precision: str) -> Path:
    """``engines/<model>/<backend>-<precision>`` relative to the current directory."""
    return Path("engines") / model / f"{backend}-{precision}"


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
    from ..calib.images import calib_source, preprocess_images, select_images

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


@dataclass
class _Build:
    """State of one engine build, passed between the steps of :func:`build_engine`."""

    ckpt: Path
    model: Any
    meta: Any  # ModelMeta
    backend: str
    precision: str
    hw: tuple[int, int]
    folder: Path  # the unpublished temporary folder
    options: BuildOptions
    log: Log
    t_start: float = field(default_factory=time.perf_counter)
    sample: np.ndarray | None = None
    sample_desc: str = ""
    reference: np.ndarray | None = None
    export: dict[str, Any] = field(default_factory=dict)


def build_engine(checkpoint: str | Path, backend: str = DEFAULT_BACKEND, precision: str = DEFAULT_PRECISION,
                 out: str | Path | None = None, options: BuildOptions | None = None, log: Log | None = None) -> Path:
    """Build an engine folder from a checkpoint (docs/internals.md "Engine folder").

    Args:
        checkpoint: checkpoint folder (``model.safetensors`` + ``model.json``) or an imported model
            folder (``model.onnx`` + ``model.json``, :mod:`rtseg.byom`): its ONNX is used as is (no
            export) and, run by ONNX Runtime, is the parity reference (:mod:`rtseg.byom.imported`).
        backend: a registered backend (:func:`rtseg.runtime.backend_names`: ``"openvino"`` (default on
            CPU), ``"onnxruntime"``, ``"tensorrt"``).
        precision: see the module table (``fp32`` | ``bf16`` | ``fp16`` | ``int8``), or ``"auto"``: every
            precision the backend runs here, the fastest that passes the accuracy gate kept (:func:`build_auto`).
        out: engine folder; default ``engines/<model>/<backend>-<precision>`` under the CWD.
        options: everything else (:class:`BuildOptions`: input size, calibration, accuracy gate, threads,
            backend options).
        log: progress callback (one line per step).

    Returns:
        the engine folder. It is built in a temporary sibling and renamed into place, so a failed
        build never leaves a half-written engine (an existing engine is replaced only by a complete one).

    Raises:
        RtsegError: bad checkpoint (missing, corrupt, wrong architecture), unknown backend or
            precision, a precision this device cannot run (bf16 without native support), no
            calibration data, an export/quantization failure, or a backend that crashes or fails
            on the graph (each one line with the fix).
    """
    from ..checkpoint import is_model_folder, load_checkpoint, load_meta, resolve_checkpoint

    options = options or BuildOptions()
    check_threads(options.threads)
    if precision == "auto":
        return build_auto(checkpoint, backend, out, options, log)
    spec = get_backend(backend)
    spec.check_precision(precision)
    _check_options(spec, precision, options)
    ckpt = resolve_checkpoint(checkpoint)
    # an imported model folder (rtseg.byom) has no PyTorch model: its model.onnx is the FP32 graph (model None)
    model, meta = (None, load_meta(ckpt)) if is_model_folder(ckpt) else load_checkpoint(ckpt)
    hw = parse_img_size(options.img_size) or meta.input_hw
    check_image_size(hw, frames=2)  # the export's parity batch, before the PyTorch reference runs
    out = Path(out) if out is not None else default_engine_dir(meta.model, backend, precision)
    tmp = _temporary_folder(out)
    b = _Build(ckpt, model, meta, backend, precision, hw, tmp, options, log or (lambda msg: None))
    try:
        engine = _build_in(b)
        _write_sealed(tmp, engine)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    b.log(f"engine written to {out}")
    return out


def _write_sealed(folder: Path, engine: dict[str, Any]) -> None:
    """Seal the finished ``folder`` (:mod:`rtseg.runtime.seal`: its files and ``engine``) and write ``engine.json``."""
    from ..runtime.seal import seal_engine
    from ..safe_io import write_json

    engine.pop("seal", None)
    engine["seal"] = seal_engine(folder, engine)
    write_json(folder / "engine.json", engine)


def _check_options(spec, precision: str, o: BuildOptions) -> None:
    if o.int8_quantizer not in INT8_QUANTIZERS:
        raise RtsegError(f"--int8-quantizer {o.int8_quantizer!r} is not one of {', '.join(INT8_QUANTIZERS)}; pick one")
    if o.int8_quantizer != "rtseg" and (precision != "int8" or spec.name != "openvino"):
        raise RtsegError(f"--int8-quantizer {o.int8_quantizer} builds OpenVINO int8 engines only, not {spec.name} "
                         f"{precision}; drop it or pass --backend openvino --precision int8")
    if precision != "int8" and (o.qdq_from is not None or o.calib_data is not None):
        raise RtsegError(f"--calib-data/--qdq-from apply to --precision int8 only, not {precision}; drop them or pass --precision int8")
    extra = [k for k, v in o.backend_options.items() if v not in (None, False) and k not in spec.build_options]
    if extra:
        raise RtsegError(f"--{extra[0].replace('_', '-')} is not an option of the {spec.name} backend; "
                         f"drop it (or pass the backend it belongs to with --backend)")


def _temporary_folder(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise RtsegError(f"--out {out} is a file; an engine is a folder — pass a new or engine folder name")
    if out.exists() and not (out / "engine.json").is_file() and any(out.iterdir()):
        raise RtsegError(f"{out} exists and is not an engine folder; pass another --out or remove it")
    from ..safe_io import new_temp_dir

    out.parent.mkdir(parents=True, exist_ok=True)
    return new_temp_dir(out)


def _build_in(b: _Build) -> dict[str, Any]:
    """Export, (calibrate), compile and check the engine in ``b.folder``; return its ``engine.json``."""
    import torch

    from .onnx import export_onnx

    b.sample, b.sample_desc = _parity_sample(b.options.calib_data, b.meta, b.hw)
    if b.model is None:  # imported model folder: its model.onnx in ONNX Runtime is the reference (rtseg.byom.imported)
        from ..byom.imported import imported_fp32

        b.log(f"using {b.ckpt / 'model.onnx'} (imported) as the FP32 graph")
        b.export, b.reference, b.sample = imported_fp32(b.ckpt, b.meta, b.folder / FP32_ONNX, b.hw, b.sample)
    else:
        with torch.inference_mode():
            b.reference = b.model(torch.from_numpy(b.sample)).float().numpy()
        b.log(f"exporting {b.meta.model} to ONNX at {b.hw[1]}x{b.hw[0]} (opset {b.options.opset})")
        b.export = export_onnx(b.model, b.folder / FP32_ONNX, b.hw, opset=b.options.opset, sample=b.sample)
    b.export["path"] = FP32_ONNX
    source_onnx, calibration = b.folder / FP32_ONNX, None
    if b.precision == "int8":
        calibration = _int8_qdq(b)
        source_onnx = b.folder / QDQ_ONNX
    b.log(f"building the {b.backend} {b.precision} engine")
    info = _compile(b, source_onnx)
    engine = _engine_record(b, source_onnx, info, calibration)
    if b.precision != "fp32" and b.options.gate.enabled:
        engine["accuracy_gate"] = _gate(b, engine)
    return engine


def _compile(b: _Build, source_onnx: Path) -> dict[str, Any]:
    """Run the backend's builder on ``source_onnx``; the info dict with ``verify`` (vs PyTorch) added."""
    req = BuildRequest(source_onnx, b.folder, b.precision, b.hw, b.sample, dict(b.options.backend_options))
    if b.precision == "int8" and b.options.int8_quantizer != "rtseg":
        from ..gate.nncf_quant import build_openvino_nncf

        info = build_openvino_nncf(b.folder, b.meta, b.sample, b.options.int8_quantizer, b.options.gate,
                                   b.options.threads, b.log)
    else:
        info = dict(get_backend(b.backend).build(req))
        if b.precision == "int8":
            info["quantizer"] = {"tool": "rtseg", "mode": "qdq", "source": source_onnx.name}
    output = info.pop("output_sample", None)
    onnx_parity = info.pop("verify_onnx", None)  # TensorRT: the engine against its source ONNX (fp32/fp16 checked)
    info["verify"] = {"input": b.sample_desc, "reference": "pytorch fp32" if b.model is not None else "model.onnx (fp32, imported) in ONNX Runtime",
                      **(_compare(output, b.reference) if output is not None else {}),
                      **({"onnx": onnx_parity} if onnx_parity is not None else {})}
    return info


def _engine_record(b: _Build, source_onnx: Path, info: dict[str, Any], calibration) -> dict[str, Any]:
    """The ``engine.json`` dict (docs/internals.md) of the engine just compiled."""
    from .. import __version__
    from ..checkpoint import weights_file
    from ..safe_io import file_sha256
    from .onnx import onnx_io

    io_in, io_out = onnx_io(source_onnx)
    verify = info.pop("verify")
    fixed_batch = b.model is None and (b.meta.source or {}).get("batch") == "fixed"
    return {
        "format": ENGINE_FORMAT,
        "backend": b.backend,
        "backend_version": info.pop("backend_version"),
        "precision": b.precision,
        "device": info.pop("device"),
        "engine_file": info.pop("engine_file", get_backend(b.backend).engine_file),
        "onnx_file": source_onnx.name,
        "input": info.pop("input", {"name": io_in["name"], "shape": [-1, 3, b.hw[0], b.hw[1]], "dtype": "float32", "layout": "NCHW"}),
        "output": info.pop("output", {"name": io_out["name"], "shape": [-1, *b.export["output"]["shape"][1:]], "dtype": "float32"}),
        "batch": info.pop("batch", {"min": 1, "opt": 1, "max": 1 if fixed_batch else None}),
        "checkpoint": {"path": str(b.ckpt.resolve()), "sha256": file_sha256(weights_file(b.ckpt))},
        "model": b.meta.to_dict(),
        "export": {k: b.export.get(k) for k in ("opset", "max_abs_diff", "tolerance", "torch_version", "onnx_version")},
        "calibration": calibration,
        "accuracy_gate": None,
        "verify": verify,
        "build": {**info, "seconds": round(time.perf_counter() - b.t_start, 2)},
        "rtseg_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _gate(b: _Build, engine: dict) -> dict[str, Any]:
    """Run the accuracy gate on the engine in ``b.folder`` (int8: with repair by rebuilding)."""
    from ..gate import check as g
    from ..safe_io import file_sha256

    go = b.options.gate
    try:
        gs = g.gate_set(b.meta.to_dict(), go.data, go.split, g.DEFAULT_GATE_IMAGES if go.images is None else go.images)
    except RtsegError as e:
        if go.data is not None:
            raise
        b.log(f"warning: accuracy gate skipped: {e}")
        return {"format": g.GATE_FORMAT, "status": "skipped", "reason": str(e)}

    def rebuild(qdq_path: Path) -> dict[str, Any]:
        return {"verify": _compile(b, qdq_path)["verify"]}

    threads = go.threads if go.threads is not None else b.options.threads
    record = g.run_gate(b.folder, engine, gs, g.GateOptions(**{**go.__dict__, "threads": threads}),
                        rebuild=rebuild if b.precision == "int8" and b.options.int8_quantizer == "rtseg" else None,
                        log=b.log)
    if record["excluded_layers"] and engine.get("calibration"):
        engine["calibration"]["repaired_qdq_sha256"] = file_sha256(b.folder / QDQ_ONNX)
        engine["calibration"]["calibrated_qdq_file"] = "model.qdq.calibrated.onnx"
    return record


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder to ``out``, replacing an older engine only at the end.

    Two processes that build the same folder at once (two streams starting on a fresh cache) both
    succeed, the later one's engine staying: a folder that appears or vanishes between the steps
    is moved aside again (a few tries) instead of ending in a ``FileNotFoundError`` or
    ``Directory not empty`` traceback."""
    from ..safe_io import finish_mode

    finish_mode(tmp, out, folder=True)
    for attempt in range(8):
        old = _move_aside(out)
        try:
            os.replace(tmp, out)
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or attempt == 7:
                raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)


def _move_aside(out: Path) -> Path | None:
    """Rename an existing ``out`` to a fresh hidden sibling (returned, to be removed); None when there is none."""
    import tempfile

    if not out.exists():
        return None
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    try:
        os.replace(out, old)  # an empty folder is replaced atomically
    except FileNotFoundError:  # another process moved it first
        old.rmdir()
        return None
    return old


def _int8_qdq(b: _Build) -> dict[str, Any]:
    """Put ``model.qdq.onnx`` and ``calib.json`` into ``b.folder``; return the engine.json entry."""
    from ..calib import calibrate as cal

    o = b.options
    rec = _copy_qdq(b) if o.qdq_from is not None else cal.calibrate_checkpoint(b.ckpt, _calib_options(b), log=b.log)
    return {"file": CALIB_JSON, "qdq_sha256": rec.get("qdq_sha256"), "method": rec.get("method"),
            "seed": rec.get("seed"), "num_images": rec.get("num_images"), "images_sha256": rec.get("images_sha256"),
            "source": rec.get("source"), "scheme": {k: rec.get("quantization", {}).get(k) for k in
                                                     ("activations", "weights", "op_types", "weight_bits", "excluded_nodes")},
            "from": str(Path(o.qdq_from).resolve()) if o.qdq_from is not None else None}


def _calib_options(b: _Build):
    from ..calib import calibrate as cal

    o = b.options
    kw = {"weight_bits": o.weight_bits} if o.weight_bits is not None else {}
    return cal.CalibOptions(calib_data=o.calib_data, method=o.calib_method, num_images=o.num_calib or DEFAULT_NUM_IMAGES,
                            seed=o.seed, out=b.folder, img_size=b.hw, opset=o.opset, verify=False,
                            onnx_path=b.folder / FP32_ONNX, export_info=b.export, **kw)


def _copy_qdq(b: _Build) -> dict[str, Any]:
    """``--qdq-from``: reuse a calibration folder of the same checkpoint (or model folder) and input size."""
    from ..calib import calibrate as cal
    from ..checkpoint import weights_file
    from ..safe_io import file_sha256

    src = Path(b.options.qdq_from)
    rec = cal.read_calib_record(src)
    if rec.get("checkpoint", {}).get("sha256") != file_sha256(weights_file(b.ckpt)):
        raise RtsegError(f"{src} was calibrated for another model ({rec.get('checkpoint', {}).get('path')}); "
                         f"re-run 'rtseg calibrate --checkpoint {b.ckpt}' or drop --qdq-from")
    if list(rec.get("preprocessing", {}).get("input_hw", [])) != list(b.hw):
        raise RtsegError(f"{src} was calibrated at {rec['preprocessing']['input_hw']}, not {list(b.hw)}; "
                         f"pass the same --img-size or re-run 'rtseg calibrate'")
    shutil.copyfile(src / QDQ_ONNX, b.folder / QDQ_ONNX)
    shutil.copyfile(src / CALIB_JSON, b.folder / CALIB_JSON)
    b.log(f"using the Q/DQ ONNX of {src}")
    return rec


def build_auto(checkpoint: str | Path, backend: str = DEFAULT_BACKEND, out: str | Path | None = None,
               options: BuildOptions | None = None, log: Log | None = None) -> Path:
    """``build-engine --precision auto``: build every precision ``backend`` can run here, measure
    each on real frames, keep the fastest that passes the accuracy gate (issue 5).

    Candidates are built into ``<out>.candidates/<backend>-<precision>`` (each with its own gate; that
    folder is this command's and is replaced by the next run with the same ``out``; engines already
    beside ``out`` are never touched); precisions this machine cannot run (the backend spec's ``unavailable``) are listed
    as skipped. Latency is measured round-robin (3 rounds of ``bench_seconds / 3`` per candidate,
    median of the per-round medians, batch ``options.bench_batch``, ``options.threads`` threads) on the
    gate's real images preprocessed to the engine size, so background load hits every candidate
    alike. The winner is the lowest-latency candidate whose gate passed (fp32 is the reference and
    always passes); it is copied to ``out`` (default ``engines/<model>/<backend>-auto``) and
    ``engine.json`` ``selection`` records the table and the reason.

    Returns:
        the ``out`` folder.

    Raises:
        RtsegError: as :func:`build_engine`; no labelled images to measure on (pass ``gate.data``).
    """
    from ..checkpoint import load_meta
    from ..gate import check as g

    options, log = options or BuildOptions(), log or (lambda m: None)
    if not options.gate.enabled:
        raise RtsegError("--precision auto needs the accuracy gate; drop --no-gate (GateOptions.enabled)")
    spec = get_backend(backend)
    meta = load_meta(checkpoint)
    out = Path(out) if out is not None else default_engine_dir(meta.model, backend, "auto")
    go = options.gate
    gs = g.gate_set(meta.to_dict(), go.data, go.split, go.images or g.DEFAULT_GATE_IMAGES)
    rows: list[dict[str, Any]] = []
    cand = out.parent / f"{out.name}.candidates"
    _refuse_foreign(cand)
    for p in spec.precisions:
        why = spec.unavailable(p)
        if why:
            rows.append({"precision": p, "status": "skipped", "why": why})
            continue
        log(f"--- candidate {backend} {p}")
        o = options if p == "int8" else BuildOptions(**{**options.__dict__, "calib_data": None, "qdq_from": None,
                                                        "int8_quantizer": "rtseg"})
        rows.append({"precision": p, "folder": str(build_engine(checkpoint, backend, p, cand / f"{backend}-{p}", o, log))})
    selection = _select(rows, gs, options, log)
    _publish_selection(out, selection)
    log(f"engine written to {out}")
    return out


def _refuse_foreign(cand: Path) -> None:
    """The candidates folder of ``--precision auto`` holds only engine folders of an earlier run; refuse anything else."""
    if not cand.exists():
        return
    foreign = [f.name for f in cand.iterdir() if not (f / "engine.json").is_file()] if cand.is_dir() else [cand.name]
    if foreign:
        raise RtsegError(f"{cand} holds {foreign[0]}, which is not an engine of an earlier --precision auto run; "
                         f"--precision auto builds its candidates there — move it away or pass another --out")


def _select(rows: list[dict[str, Any]], gs, options: BuildOptions, log: Log) -> dict[str, Any]:
    """Measure the built candidates round-robin and pick the winner; the ``selection`` record."""
    from ..gate import check as g
    from ..runtime import load_engine
    from ..timing import latency_ms

    built = [r for r in rows if "folder" in r]
    backends = {r["precision"]: load_engine(r["folder"], num_threads=options.threads, allow_failed_gate=True) for r in built}
    frames = g.gate_frames(next(iter(backends.values())), gs, 16)
    lat: dict[str, list[float]] = {p: [] for p in backends}
    log(f"measuring latency on {len(frames)} real frames, batch {options.bench_batch}, {options.threads or 'default'} threads")
    for _ in range(3):
        for p, b in backends.items():
            lat[p].append(latency_ms(b, frames, options.bench_batch, seconds=options.bench_seconds / 3))
    for r in built:
        b = backends[r["precision"]]
        r.update(_candidate_status(r["precision"], b, gs))
        r["latency_ms"] = round(float(np.median(lat[r["precision"]])), 3)
        r["fps"] = round(1000.0 * options.bench_batch / r["latency_ms"], 2)
        b.close()
    winner = min((r for r in built if r["status"] == "passed"), key=lambda r: r["latency_ms"])
    return {"rule": "fastest candidate whose accuracy gate passed", "winner": winner["precision"],
            "winner_folder": winner["folder"], "reason": _reason(built, winner, options.bench_batch),
            "batch": options.bench_batch, "threads": options.threads,
            "frames": f"{len(frames)} images of {gs.description}", "candidates": rows}


def _candidate_status(precision: str, backend, gs) -> dict[str, Any]:
    from ..gate import check as g

    gate = backend.meta.get("accuracy_gate")
    if precision == "fp32":
        return {"status": "passed", "score": round(g.task_score(backend, gs), 4), "delta_pt": 0.0,
                "excluded_layers": 0, "why": "fp32 reference"}
    if gate and gate.get("status") in ("passed", "failed"):
        n = len(gate["excluded_layers"])
        return {"status": gate["status"], "score": gate["after"]["score"], "delta_pt": gate["after"]["delta_pt"],
                "excluded_layers": n,
                "why": (f"gate {gate['status']} ({-gate['after']['delta_pt']:+.2f} pt, tolerance {gate['tolerance_pt']} pt"
                        + (f", {n} layer(s) kept float)" if n else ")"))}
    return {"status": "unverified", "why": "accuracy gate not run (no labelled data)"}


def _reason(built: list[dict[str, Any]], winner: dict[str, Any], batch: int) -> str:
    fp32 = next(r for r in built if r["precision"] == "fp32")
    reasons = [f"{r['precision']} {r['why']}" if r["status"] != "passed" else f"{r['precision']} is slower ({r['latency_ms']:.2f} ms)"
               for r in built if r is not winner]
    return (f"{winner['precision']} is the fastest engine that passes the accuracy gate: {winner['latency_ms']:.2f} ms "
            f"per batch of {batch}" + (f" ({fp32['latency_ms'] / winner['latency_ms']:.2f}x fp32)" if winner is not fp32 else "")
            + ("; " + "; ".join(reasons) if reasons else ""))


def _publish_selection(out: Path, selection: dict[str, Any]) -> None:
    """Copy the winner's folder to ``out`` with ``engine.json`` ``selection`` added (and sealed again)."""
    from ..runtime import check_seal
    from ..safe_io import new_temp_dir

    tmp = new_temp_dir(out)
    shutil.copytree(selection.pop("winner_folder"), tmp, dirs_exist_ok=True)
    engine = json.loads((tmp / "engine.json").read_text())
    check_seal(tmp, engine)  # the copy is the winner as built, before its seal is renewed
    engine["selection"] = selection
    _write_sealed(tmp, engine)
    _publish(tmp, out)


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
