"""The accuracy gate of reduced-precision engines, with per-layer repair (issue 5).

After ``build-engine`` has built an int8 (or bf16/fp16) engine, the gate evaluates it against the
FP32 model on a **held-out labelled split** with the task metric — per-image mean Dice (×100, in
points) for binary models, mIoU (×100) for multi-class — exactly as ``rtseg eval`` does (same
preprocessing, predictions mapped back to each image's resolution). The FP32 reference is the
engine folder's own ``model.onnx`` run by ONNX Runtime (parity with PyTorch ≤ 1e-4, checked at
export), so the difference is the quantization alone.

The gate passes when ``fp32 − engine ≤ tolerance`` (default 0.5 pt Dice, 1.0 pt mIoU). If an int8
engine fails, the gate **repairs** it:

1. *Per-layer sensitivity* (:func:`rtseg.gate.repair.layer_sensitivity`): for every quantized compute node of the
   Q/DQ ONNX, the node alone is put back in float (its Q/DQ inputs replaced by the FP32 tensors) and
   the whole network is run on a few gate images **in the engine's own backend** (OpenVINO for
   OpenVINO engines, ONNX Runtime for ONNX Runtime and TensorRT engines; ``GateOptions.rank_backend``);
   the node's score is how much the output error against FP32 (same backend) falls (mean squared
   difference of the sigmoid/softmax probabilities). The error of an int8 graph is the backend's
   own: the default model's Q/DQ graph is accurate in ONNX Runtime and not in OpenVINO, so a
   ranking measured in ONNX Runtime repaired the wrong layers of an OpenVINO engine.
2. The highest-scoring nodes are kept in float by rewriting the Q/DQ ONNX (:func:`rtseg.gate.repair.keep_float`; the
   other nodes keep their calibrated scales, so nothing is re-calibrated), the backend engine is
   rebuilt from it and the gate is evaluated again. Each round doubles the float set (1, 2, 4, 8 …)
   and re-ranks the remaining layers on the partly repaired graph (greedy: errors compound, so a
   one-shot ranking is worse — on EUNet-S with outlier-calibrated minmax, 16 layers chosen greedily
   left 75e-4 output error against 117e-4 for a one-shot ranking), until the gate passes or
   ``max_rounds`` / ``max_excluded_fraction`` is reached.

The result — metric before and after, excluded layers with their scores, latency before and after
(the speed cost) and each round — is ``engine.json`` ``accuracy_gate``. An engine whose gate failed
is published with ``status: "failed"`` and :func:`rtseg.runtime.load_engine` refuses it unless the
caller passes ``allow_failed_gate`` (``--allow-failed-gate``): it is never used silently.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..calib.record import FP32_ONNX, QDQ_ONNX
from ..errors import RtsegError
from ..timing import latency_ms
from .repair import RANK_BACKENDS, keep_float, layer_sensitivity, quantized_nodes

GATE_FORMAT = "rtseg-gate/1"
#: default tolerance in points (metric × 100): Dice for binary models, mIoU for multi-class ones
DEFAULT_TOLERANCE = {"dice": 0.5, "miou": 1.0}
DEFAULT_MAX_ROUNDS = 5
DEFAULT_MAX_EXCLUDED_FRACTION = 0.5
DEFAULT_SENSITIVITY_IMAGES = 8
DEFAULT_GATE_IMAGES = 200


@dataclass
class GateSet:
    """The labelled images a gate evaluates on.

    Attributes:
        samples: data-format samples (``rtseg.data``), read by ``reader(sample) -> (uint8[h, w, 3] RGB,
            labels uint8[h, w])``.
        description: where they come from (folder, split, count), for ``engine.json``.
        metric: ``"dice"`` (binary: per-image mean Dice) or ``"miou"`` (multi-class).
    """

    samples: list
    reader: Callable
    description: str
    metric: str


def gate_set(model_meta: dict, data: str | Path | None = None, split: str | None = None, limit: int = DEFAULT_GATE_IMAGES,
             data_format: str | None = None) -> GateSet:
    """The held-out labelled split a gate uses.

    Args:
        model_meta: ``model.json`` as a dict (``ModelMeta.to_dict()``).
        data: a labelled folder; default the model's training data (``model.json`` ``data.root``).
        split: ``train``/``val``/``test``/``all``; default ``val`` of the training data (held out from
            training and from calibration, which uses ``train``), ``all`` of another folder.
        limit: use at most this many images (0 = all).

    Raises:
        RtsegError: no labelled data reachable (no ``data`` and no recorded training data, or a
            missing folder), or an empty split.
    """
    from ..evaluation import resolve_samples

    if split is None and data is None:
        split = "val"
    samples, reader, desc = resolve_samples(str(data) if data is not None else None, split, model_meta, data_format)
    if not samples:
        raise RtsegError(f"the accuracy gate has no labelled images in {desc}; pass --gate-data DIR with images and masks")
    if limit and len(samples) > limit:
        samples = samples[:limit]
        desc += f", first {limit}"
    metric = "dice" if int(model_meta.get("num_classes", 1)) == 1 else "miou"
    return GateSet(list(samples), reader, desc, metric)


def task_score(backend, gs: GateSet, batch_size: int = 8) -> float:
    """The gate metric of ``backend`` on ``gs`` in points (per-image mean Dice × 100 or mIoU × 100)."""
    from ..evaluation import evaluate_backend

    bs = min(batch_size, backend.max_batch) if backend.max_batch else batch_size
    res = evaluate_backend(backend, gs.samples, batch_size=bs, reader=gs.reader)
    value = res["per_image"]["dice"] if gs.metric == "dice" else res["miou"]
    return 100.0 * float(value)


def gate_frames(backend, gs: GateSet, n: int = 16) -> np.ndarray:
    """``uint8[n, H, W, 3]``: the first ``n`` gate images preprocessed for ``backend`` (real frames
    for the latency measurements)."""
    from ..data.transforms import Preprocessor

    pre = Preprocessor(backend.input_hw, backend.resize)
    return np.stack([pre(gs.reader(s)[0])[0] for s in gs.samples[:n]])



# ------------------------------------------------------------------------------------------------
# the gate
# ------------------------------------------------------------------------------------------------
@dataclass
class GateOptions:
    """Settings of the accuracy gate (``build-engine --gate-*``).

    Attributes:
        enabled: run the gate on reduced-precision engines (``--no-gate`` = False).
        data, split, images: the labelled images (:func:`gate_set`; default the checkpoint's ``val``
            split, at most :data:`DEFAULT_GATE_IMAGES`); with no labelled data reachable the gate is
            recorded as ``"skipped"`` unless ``data`` was given (then :class:`RtsegError`).
        tolerance_pt: allowed drop in points; default :data:`DEFAULT_TOLERANCE` for the metric.
        max_rounds: repair rounds (each keeps 2× more layers in float than the last).
        max_excluded_fraction: never keep more than this fraction of the quantized layers in float.
        sensitivity_images: gate images used for the per-layer sensitivity.
        threads: inference threads for the evaluations and latencies (``None`` = the backend's default).
        latency_seconds: timed seconds per latency measurement (batch 1, real gate images).
        rank_backend: where the repair ranks layers (:func:`rtseg.gate.repair.layer_sensitivity`): ``None`` = the
            engine's own backend when it is one of :data:`RANK_BACKENDS` (OpenVINO engines rank in
            OpenVINO), else ONNX Runtime (TensorRT: no GPU needed for the ranking).
    """

    enabled: bool = True
    data: str | Path | None = None
    split: str | None = None
    images: int | None = None
    tolerance_pt: float | None = None
    max_rounds: int = DEFAULT_MAX_ROUNDS
    max_excluded_fraction: float = DEFAULT_MAX_EXCLUDED_FRACTION
    sensitivity_images: int = DEFAULT_SENSITIVITY_IMAGES
    threads: int | None = None
    latency_seconds: float = 1.0
    rank_backend: str | None = None

    def ranking_backend(self, engine_backend: str) -> str:
        """The backend :func:`layer_sensitivity` runs in for an engine of ``engine_backend``."""
        if self.rank_backend is not None:
            return self.rank_backend
        return engine_backend if engine_backend in RANK_BACKENDS else "onnxruntime"


@dataclass
class _GateRun:
    """State of one gate run: the engine folder, its engine.json dict, the images and the FP32 score."""

    folder: Path
    engine: dict
    gs: GateSet
    options: GateOptions
    tol: float
    ref_score: float
    frames: np.ndarray  # uint8[n, H, W, 3], real gate images at the engine size
    x_sens: np.ndarray  # float32[k, 3, H, W], the sensitivity inputs
    log: Callable[[str], None]

    def measure(self, label: str) -> dict[str, Any]:
        """Score and time the engine as it is now in ``folder``; one round's row."""
        from ..runtime import backend_from_meta

        b = backend_from_meta(self.folder, {**self.engine, "accuracy_gate": None}, num_threads=self.options.threads)
        try:
            score = task_score(b, self.gs)
            lat = latency_ms(b, self.frames, 1, seconds=self.options.latency_seconds)
        finally:
            b.close()
        delta = self.ref_score - score
        row = {"score": round(score, 4), "delta_pt": round(delta, 4), "passed": bool(delta <= self.tol),
               "latency_ms": round(lat, 3)}
        self.log(f"  {label}: {self.engine['precision']} {self.gs.metric} {score:.2f} ({-delta:+.2f} pt), "
                 f"{'pass' if row['passed'] else 'FAIL'}, {lat:.2f} ms/frame")
        return row


def run_gate(folder: Path, engine: dict, gs: GateSet, options: GateOptions | None = None,
             rebuild: Callable[[Path], dict] | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Evaluate (and for int8, repair) the engine being built in ``folder``.

    Args:
        folder: the (unpublished) engine folder: ``model.onnx`` (FP32), the engine file and, for
            int8, ``model.qdq.onnx``.
        engine: its ``engine.json`` dict so far (the backend is opened from it); updated in place
            when a repair rebuilds the engine (``verify``).
        gs: the labelled held-out images (:func:`gate_set`).
        options: :class:`GateOptions` (tolerance, rounds, threads, ...).
        rebuild: int8 repair hook: ``rebuild(qdq_path) -> info`` rebuilds the engine file in
            ``folder`` from the rewritten Q/DQ ONNX (``None``: no repair).

    Returns:
        the ``accuracy_gate`` record (see module docstring); ``status`` is ``"passed"`` or
        ``"failed"``.
    """

    t0 = time.perf_counter()
    run = _start_gate(folder, engine, gs, options or GateOptions(), log or (lambda m: None))
    before = run.measure("as calibrated")
    rounds, ranking, after = [{"excluded": [], **before}], [], before
    if not before["passed"] and rebuild is not None and (folder / QDQ_ONNX).is_file():
        after, ranking, repaired = _repair(run, rebuild, before)
        rounds += repaired
    return _gate_record(run, before, after, ranking, rounds, time.perf_counter() - t0)


def _start_gate(folder: Path, engine: dict, gs: GateSet, o: GateOptions, log) -> _GateRun:
    """Score the FP32 reference (``model.onnx`` in ONNX Runtime) and read the real frames once."""
    from ..runtime import backend_from_meta
    from ..runtime.onnxruntime_backend import onnxruntime_version

    tol = float(DEFAULT_TOLERANCE[gs.metric] if o.tolerance_pt is None else o.tolerance_pt)
    ref_meta = {**engine, "backend": "onnxruntime", "backend_version": onnxruntime_version(), "precision": "fp32",
                "engine_file": FP32_ONNX, "accuracy_gate": None}
    ref_backend = backend_from_meta(folder, ref_meta, num_threads=o.threads)
    ref_score = task_score(ref_backend, gs)
    # real frames at the engine size, read once: latencies every round, sensitivity on the first ones
    frames = gate_frames(ref_backend, gs, max(16, o.sensitivity_images))
    x_sens = ref_backend.normalize(frames[:o.sensitivity_images])
    ref_backend.close()
    log(f"accuracy gate on {gs.description}: fp32 {gs.metric} {ref_score:.2f}")
    return _GateRun(folder, engine, gs, o, tol, ref_score, frames, x_sens, log)


def _repair(run: _GateRun, rebuild: Callable[[Path], dict], before: dict) -> tuple[dict, list[dict], list[dict]]:
    """Greedy repair rounds (module docstring): returns (last row, ranking of the float layers, rounds)."""
    from ..onnx_files import load_onnx

    qdq_path = run.folder / QDQ_ONNX
    qm, fm = load_onnx(qdq_path), load_onnx(run.folder / FP32_ONNX)
    original = qdq_path.with_name("model.qdq.calibrated.onnx")
    original.write_bytes(qdq_path.read_bytes())
    limit = max(1, int(run.options.max_excluded_fraction * len(quantized_nodes(qm))))
    ranking: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []
    k, after = 1, before
    for _ in range(run.options.max_rounds):
        k = min(k, limit)
        excluded = [r["node"] for r in ranking]
        ranked = layer_sensitivity(run.folder / FP32_ONNX, original, run.x_sens, threads=run.options.threads,
                                   already_float=excluded, log=run.log,
                                   backend=run.options.ranking_backend(run.engine["backend"]))
        ranking += ranked[: k - len(excluded)]
        excluded = [r["node"] for r in ranking]
        tmp = qdq_path.with_name(f".{qdq_path.name}.tmp")
        tmp.write_bytes(keep_float(qm, fm, excluded).SerializeToString())
        tmp.replace(qdq_path)
        info = rebuild(qdq_path)
        run.engine["verify"] = {**run.engine.get("verify", {}), **info.get("verify", {})}
        after = run.measure(f"{k} layer(s) in float")
        rounds.append({"excluded": list(excluded), **after})
        if after["passed"] or k >= limit:
            break
        k *= 2
    return after, ranking, rounds


def _gate_record(run: _GateRun, before: dict, after: dict, ranking: list[dict], rounds: list[dict],
                 seconds: float) -> dict[str, Any]:
    """The ``engine.json`` ``accuracy_gate`` record (docs/internals.md)."""
    excluded = [{"node": r["node"], "op_type": r["op_type"], "score": r["score"]} for r in ranking]
    return {
        "format": GATE_FORMAT,
        "status": "passed" if after["passed"] else "failed",
        "metric": run.gs.metric,
        "tolerance_pt": run.tol,
        "data": run.gs.description,
        "images": len(run.gs.samples),
        "reference": {"what": "model.onnx (FP32) in ONNX Runtime", "score": round(run.ref_score, 4)},
        "before": before,
        "after": after,
        "excluded_layers": excluded,
        "speed_cost_pct": round(100.0 * (after["latency_ms"] / before["latency_ms"] - 1.0), 2) if excluded else 0.0,
        "rounds": rounds,
        "sensitivity": {"images": run.options.sensitivity_images,
                        "backend": run.options.ranking_backend(run.engine["backend"]),
                        "measure": "greedy leave-one-out per round: error(current graph) - error(this layer also float), "
                                   "mean squared sigmoid/softmax difference vs fp32 (same backend) x 1e4"} if ranking else None,
        "threads": run.options.threads,
        "seconds": round(seconds, 2),
    }


def describe_gate(record: dict | None) -> str:
    """One line summarising an ``accuracy_gate`` record (for the CLI)."""
    if not record:
        return "accuracy gate: not run"
    if record.get("status") == "skipped":
        return f"accuracy gate: skipped ({record.get('reason')})"
    b, a = record["before"], record["after"]
    s = (f"accuracy gate {record['status'].upper()}: {record['metric']} {a['score']:.2f} vs fp32 "
         f"{record['reference']['score']:.2f} ({-a['delta_pt']:+.2f} pt, tolerance {record['tolerance_pt']} pt)")
    if record["excluded_layers"]:
        s += (f"; repaired from {-b['delta_pt']:+.2f} pt by keeping {len(record['excluded_layers'])} layer(s) in float "
              f"({', '.join(e['node'] for e in record['excluded_layers'][:4])}{' …' if len(record['excluded_layers']) > 4 else ''}), "
              f"latency {b['latency_ms']:.2f} → {a['latency_ms']:.2f} ms ({record['speed_cost_pct']:+.1f} %)")
    return s
