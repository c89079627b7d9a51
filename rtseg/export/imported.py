"""Engines from an imported model folder (``model.onnx`` + ``model.json``, :mod:`rtseg.byom`).

:func:`rtseg.export.build.build_engine` calls these in place of the PyTorch export when it is given a
model folder instead of a checkpoint:

* :func:`imported_fp32` — the folder's ``model.onnx`` *is* the FP32 graph: it is copied into the
  engine folder (no export) and run by ONNX Runtime (fp32, no graph optimisation) on the parity
  images; those logits are the reference every engine is compared with (``engine.json`` ``verify``),
  as the accuracy gate already uses the engine folder's ``model.onnx`` in ONNX Runtime.
* :func:`calibrate_imported` — INT8 calibration of that ONNX on real images (the same scheme, image
  selection and preprocessing as :func:`rtseg.export.calibrate.calibrate_checkpoint`): writes
  ``model.qdq.onnx`` + ``calib.json`` whose ``checkpoint.sha256`` is the SHA-256 of ``model.onnx``.
  ``rtseg calibrate --checkpoint MODEL_FOLDER`` runs it too.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RtsegError


def imported_fp32(folder: Path, meta, dst: Path, hw: tuple[int, int], sample: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray]:
    """Copy ``folder/model.onnx`` to ``dst`` and run it on ``sample`` (``float32[n, 3, H, W]``).

    Returns:
        ``(export info, reference logits float32[n, C, H, W], the sample used)`` — a graph fixed at
        batch 1 gets the first image only.

    Raises:
        RtsegError: ``hw`` other than the folder's input size (its graph is fixed at it).
    """
    from ..checkpoint import MODEL_ONNX
    from .onnx_adapt import ort_run

    if tuple(hw) != tuple(meta.input_hw):
        raise RtsegError(f"model folder {folder} is fixed at {meta.input_hw[1]}x{meta.input_hw[0]}; drop --img-size "
                         f"or re-import the model with another input.size")
    src = meta.source or {}
    if src.get("batch") == "fixed":
        sample = sample[:1]
    shutil.copyfile(folder / MODEL_ONNX, dst)
    reference = ort_run(dst.read_bytes(), np.ascontiguousarray(sample, dtype=np.float32))
    exp = src.get("export") or {}
    import onnx

    info = {"path": dst.name, "opset": src.get("opset"), "max_abs_diff": exp.get("max_abs_diff"),
            "tolerance": exp.get("tolerance"), "torch_version": exp.get("torch_version"), "onnx_version": onnx.__version__,
            "imported": {"kind": src.get("kind"), "edits": src.get("edits", []), "batch": src.get("batch")},
            "input": {"name": None, "shape": [-1, 3, hw[0], hw[1]]},
            "output": {"name": "logits", "shape": [-1, int(meta.num_classes), hw[0], hw[1]]}}
    return info, reference, sample


def _qdq_from(folder: Path, qdq_from: Path, engine_dir: Path, hw: tuple[int, int], log) -> dict[str, Any]:
    """``--qdq-from`` for a model folder: reuse a calibration folder of the same ``model.onnx``."""
    from ..checkpoint import MODEL_ONNX, file_sha256
    from . import calibrate as cal

    rec = cal.read_calib_record(qdq_from)
    if rec.get("checkpoint", {}).get("sha256") != file_sha256(folder / MODEL_ONNX):
        raise RtsegError(f"{qdq_from} was calibrated for another model ({rec.get('checkpoint', {}).get('path')}); "
                         f"re-run 'rtseg calibrate --checkpoint {folder}' or drop --qdq-from")
    if list(rec.get("preprocessing", {}).get("input_hw", [])) != list(hw):
        raise RtsegError(f"{qdq_from} was calibrated at {rec.get('preprocessing', {}).get('input_hw')}, not {list(hw)}; "
                         f"re-run 'rtseg calibrate --checkpoint {folder}'")
    shutil.copyfile(qdq_from / cal.QDQ_ONNX, engine_dir / cal.QDQ_ONNX)
    shutil.copyfile(qdq_from / cal.CALIB_JSON, engine_dir / cal.CALIB_JSON)
    log(f"using the Q/DQ ONNX of {qdq_from}")
    return rec


def _record(folder: Path, meta, opts, chosen: list[Path], n_candidates: int, root: Path, source: dict,
            settings: dict) -> dict[str, Any]:
    """The ``calib.json`` record of a model folder's calibration (same keys as a checkpoint's)."""
    from ..checkpoint import MODEL_ONNX
    from . import calibrate as cal

    out = Path(opts.out)
    entries = [{"file": cal.relative_name(p, root), "sha256": cal.sha256_file(p)} for p in chosen]
    listing = "".join(f"{e['file']}\t{e['sha256']}\n" for e in entries)
    hw = tuple(opts.img_size or meta.input_hw)
    return {
        "format": cal.CALIB_FORMAT,
        "checkpoint": {"path": str(folder.resolve()), "sha256": cal.sha256_file(folder / MODEL_ONNX), "kind": "model folder"},
        "model": meta.model, "source": source,
        "selection": f"first {opts.num_images} of {n_candidates} candidates sorted by sha256('<seed>:<relative path>')",
        "seed": int(opts.seed), "method": opts.method, "num_images": len(entries),
        "images_sha256": hashlib.sha256(listing.encode()).hexdigest(), "images": entries,
        "preprocessing": {"input_hw": list(hw), "resize": meta.resize, "mean": list(meta.mean), "std": list(meta.std),
                          "read": "cv2.imread → RGB", "normalize": "(x/255 - mean)/std", "layout": "NCHW", "dtype": "float32"},
        "quantization": {**cal.QDQ_SCHEME, **settings},
        "onnx_file": cal.FP32_ONNX, "onnx_sha256": cal.sha256_file(out / cal.FP32_ONNX),
        "qdq_file": cal.QDQ_ONNX, "qdq_sha256": cal.sha256_file(out / cal.QDQ_ONNX),
        "qdq_summary": cal.qdq_summary(out / cal.QDQ_ONNX),
        "export": {"opset": (meta.source or {}).get("opset"), "imported": True},
        "tools": cal.tool_versions(), "verified": {}, "tensorrt_cache": None,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def calibrate_imported(folder: str | Path, options=None, log=None) -> dict[str, Any]:
    """Model folder → ``model.onnx`` (copied) → ``model.qdq.onnx`` + ``calib.json`` in ``options.out``.

    Args:
        folder: the model folder.
        options: :class:`rtseg.export.calibrate.CalibOptions` (``calib_data`` default: the metadata's
            ``data.root`` train split; ``onnx_path``: an FP32 copy already in place).
        log: progress callback.

    Returns:
        the calibration record (also ``out/calib.json``) with ``"folder"``.

    Raises:
        RtsegError: not a model folder, no calibration data, another ``img_size`` than the folder's, or
            a Q/DQ graph OpenVINO cannot compile (``options.verify``).
    """
    from ..checkpoint import MODEL_ONNX, load_meta, write_json
    from . import calibrate as cal

    folder, opts, log = Path(folder), options or cal.CalibOptions(), log or (lambda m: None)
    meta = load_meta(folder)
    cal.check_method(opts.method)
    hw = tuple(int(v) for v in (opts.img_size or meta.input_hw))
    if hw != tuple(meta.input_hw):
        raise RtsegError(f"model folder {folder} is fixed at {meta.input_hw[1]}x{meta.input_hw[0]}; drop --img-size")
    out = Path(opts.out) if opts.out is not None else cal.default_calib_dir(meta.model, opts.method, opts.num_images, opts.seed)
    out.mkdir(parents=True, exist_ok=True)
    opts.out = out
    files, root, source = cal.calib_source(opts.calib_data, meta)
    chosen = cal.select_images(files, opts.num_images, opts.seed, root)
    log(f"calibration: {len(chosen)} of {len(files)} images from {root} (seed {opts.seed}, {opts.method})")
    data = cal.preprocess_images(chosen, hw, meta.resize, meta.mean, meta.std)
    if opts.onnx_path is None or Path(opts.onnx_path).resolve() != (out / cal.FP32_ONNX).resolve():
        shutil.copyfile(folder / MODEL_ONNX, out / cal.FP32_ONNX)
    settings = cal.calibrate_onnx(out / cal.FP32_ONNX, out / cal.QDQ_ONNX, data, method=opts.method,
                                  percentile=opts.percentile, weight_bits=opts.weight_bits)
    record = _record(folder, meta, opts, chosen, len(files), root, source, settings)
    if opts.verify:
        from ..runtime.openvino_backend import verify_openvino

        log("checking the Q/DQ ONNX with OpenVINO in a child process")
        y = verify_openvino(out / cal.QDQ_ONNX, data[:1], {"INFERENCE_PRECISION_HINT": "f32"})
        record["verified"]["openvino"] = {"compiled": True, "output_finite": bool(np.isfinite(y).all())}
    if opts.trt_cache:
        cal.write_tensorrt_cache(out / cal.QDQ_ONNX, out / cal.TRT_CACHE)
        record["tensorrt_cache"] = {"file": cal.TRT_CACHE, "format": "TRT-8601-EntropyCalibration2 text (TensorRT <= 10)"}
    write_json(out / cal.CALIB_JSON, record)
    record["folder"] = str(out)
    return record


def imported_int8(folder: Path, meta, calib_options, qdq_from, log) -> dict[str, Any]:
    """``build-engine --precision int8`` on a model folder: the ``engine.json`` ``calibration`` entry
    (same keys as for a checkpoint), ``model.qdq.onnx`` + ``calib.json`` put into ``calib_options.out``."""
    from . import calibrate as cal

    engine_dir = Path(calib_options.out)
    if qdq_from is not None:
        rec = _qdq_from(folder, Path(qdq_from), engine_dir, tuple(calib_options.img_size or meta.input_hw), log)
    else:
        rec = calibrate_imported(folder, calib_options, log)
    return {"file": cal.CALIB_JSON, "qdq_sha256": rec.get("qdq_sha256"), "method": rec.get("method"),
            "seed": rec.get("seed"), "num_images": rec.get("num_images"), "images_sha256": rec.get("images_sha256"),
            "source": rec.get("source"), "scheme": {k: rec.get("quantization", {}).get(k) for k in
                                                     ("activations", "weights", "op_types", "weight_bits", "excluded_nodes")},
            "from": str(Path(qdq_from).resolve()) if qdq_from is not None else None}


__all__ = ["calibrate_imported", "imported_fp32", "imported_int8"]
