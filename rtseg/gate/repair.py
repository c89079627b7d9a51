"""Q/DQ graph surgery and per-layer sensitivity: the repair half of the accuracy gate (issue 5).

* :func:`quantized_nodes` — the compute nodes of a Q/DQ ONNX that take a DequantizeLinear input;
* :func:`keep_float` — a Q/DQ ONNX with the named nodes put back in float (their Q/DQ inputs
  replaced by the FP32 tensors; every other node keeps its calibrated scales);
* :func:`layer_sensitivity` — each quantized node ranked by how much keeping it alone in float
  lowers the output error against FP32 (:func:`output_error`: mean squared difference of the
  sigmoid/softmax probabilities), measured in the engine's own backend (:data:`RANK_BACKENDS`).

:mod:`rtseg.gate.check` runs the rounds; this module only edits and measures graphs.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import RtsegError


def quantized_nodes(model) -> list[str]:
    """Names of the compute nodes of a Q/DQ ONNX ``ModelProto`` that take a DequantizeLinear input,
    in graph order."""
    from ..calib.qdq import QUANT_OP_TYPES

    producer = {o: n for n in model.graph.node for o in n.output}
    out = []
    for n in model.graph.node:
        if n.op_type in QUANT_OP_TYPES and any(
                (src := producer.get(i)) is not None and src.op_type == "DequantizeLinear" for i in n.input):
            out.append(n.name)
    return out


def keep_float(qdq_model, fp32_model, names: Sequence[str]):
    """A copy of ``qdq_model`` in which the nodes ``names`` compute in float.

    Each named node gets the inputs of the same-named node of ``fp32_model`` (the float activation
    tensor, which the Q/DQ graph still contains as the QuantizeLinear input, and the float weight
    initializer, copied over); the Q/DQ nodes and int8 initializers nothing reads any more are
    removed. The scales of all other nodes are untouched, so the result is deterministic.

    Raises:
        RtsegError: a name that is not a node of both graphs.
    """
    q = copy.deepcopy(qdq_model)
    fnodes = {n.name: n for n in fp32_model.graph.node}
    finits = {t.name: t for t in fp32_model.graph.initializer}
    have = {t.name for t in q.graph.initializer}
    known = have | {i.name for i in q.graph.input} | {o for n in q.graph.node for o in n.output}
    wanted = set(names)
    read_before: dict[str, set[str]] = {}
    for n in q.graph.node:
        for i in n.input:
            read_before.setdefault(i, set()).add(n.name)
    for n in q.graph.node:
        if n.name not in wanted:
            continue
        f = fnodes.get(n.name)
        if f is None or f.op_type != n.op_type:
            raise RtsegError(f"node {n.name!r} of the Q/DQ ONNX has no {n.op_type} twin in the FP32 ONNX; re-run the calibration")
        for i in f.input:
            if i in finits and i not in have:
                q.graph.initializer.append(finits[i])
                have.add(i)
            elif i and i not in known and i not in finits:
                raise RtsegError(f"the float input {i!r} of node {n.name!r} is missing from the Q/DQ ONNX; re-run the calibration")
        del n.input[:]
        n.input.extend(f.input)
        wanted.discard(n.name)
    if wanted:
        raise RtsegError(f"no node named {sorted(wanted)[0]!r} in the Q/DQ ONNX; pass names from engine.json accuracy_gate")
    # ONNX Runtime puts an activation Q→DQ pair on the inputs *and* outputs of each quantized compute
    # node; other readers of the tensor (HardSwish, Add, Concat, ...) share the pair. A pair that no
    # still-quantized compute node reads or produces any more is removed and its readers get the
    # float tensor back, so a node kept in float has float inputs and a float output.
    from ..calib.qdq import QUANT_OP_TYPES

    float_set = set(names)
    still_quantized = set(quantized_nodes(q))  # after the rewiring above
    producer = {o: n for n in q.graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in q.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    for dq in [n for n in q.graph.node if n.op_type == "DequantizeLinear"]:
        qn = producer.get(dq.input[0])
        if qn is None or qn.op_type != "QuantizeLinear":
            continue
        users = readers.get(dq.output[0], [])
        made_by = producer.get(qn.input[0])
        owners = [u for u in users if u.name in still_quantized]
        if made_by is not None and made_by.op_type in QUANT_OP_TYPES and made_by.name in still_quantized:
            owners.append(made_by)
        freed = bool(read_before.get(dq.output[0], set()) & float_set) or (made_by is not None and made_by.name in float_set)
        if owners or not freed:
            continue
        for u in users:
            for j, i in enumerate(u.input):
                if i == dq.output[0]:
                    u.input[j] = qn.input[0]
    _prune(q)
    return q


def _prune(model) -> None:
    """Remove nodes whose outputs nothing reads (Q/DQ orphans) and initializers nothing reads."""
    g = model.graph
    outputs = {o.name for o in g.output}
    while True:
        read = {i for n in g.node for i in n.input} | outputs
        dead = [n for n in g.node if not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    read = {i for n in g.node for i in n.input} | outputs
    for t in [t for t in g.initializer if t.name not in read]:
        g.initializer.remove(t)


def _probs(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    if z.shape[1] == 1:
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def output_error(z: np.ndarray, ref: np.ndarray) -> float:
    """Mean squared difference of the probabilities (sigmoid for C = 1, softmax over C otherwise)
    of logits ``z`` and ``ref`` (``float32[N, C, H, W]``)."""
    return float(np.mean((_probs(z) - _probs(ref)) ** 2))


#: backends the per-layer sensitivity can rank in (both run a Q/DQ ONNX on this CPU)
RANK_BACKENDS = ("onnxruntime", "openvino")


def _run_onnx(model_or_path, x: np.ndarray, folder: Path, threads: int | None, backend: str = "onnxruntime") -> np.ndarray:
    """Logits ``float32[N, C, H, W]`` of an ONNX (path or ``ModelProto``) on ``x`` ``float32[N, 3, H, W]``,
    run by ``backend``: ONNX Runtime (all graph optimisations) or OpenVINO (compiled on the CPU with
    ``INFERENCE_PRECISION_HINT=f32``, as rtseg's int8 engines are: Q/DQ → OpenVINO's int8 kernels)."""
    if isinstance(model_or_path, (str, Path)):
        path = Path(model_or_path)
    else:
        path = folder / "candidate.onnx"
        path.write_bytes(model_or_path.SerializeToString())
    if backend == "openvino":
        import openvino as ov

        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(int(threads))
        request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()
        return np.concatenate([np.array(request.infer({0: np.ascontiguousarray(x[i:i + 4])})[0], dtype=np.float32)
                               for i in range(0, len(x), 4)])
    from ..runtime.onnxruntime_backend import make_session

    sess = make_session(path, num_threads=threads, level="all")
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 4]})[0] for i in range(0, len(x), 4)])


def layer_sensitivity(fp32_onnx: str | Path, qdq_onnx: str | Path, x: np.ndarray, threads: int | None = None,
                      already_float: Sequence[str] = (), log: Callable[[str], None] | None = None,
                      backend: str = "onnxruntime") -> list[dict[str, Any]]:
    """Rank the quantized nodes of ``qdq_onnx`` by how much of its error against ``fp32_onnx`` each
    one causes, measured in ``backend`` on the CPU.

    Args:
        fp32_onnx, qdq_onnx: the FP32 ONNX and its Q/DQ ONNX (same node names).
        x: ``float32[N, 3, H, W]`` preprocessed real images (a few suffice).
        already_float: nodes already kept in float (a repair in progress): the ranking is of the
            remaining quantized nodes, measured on that partly repaired graph.
        backend: ``"onnxruntime"`` or ``"openvino"`` (:data:`RANK_BACKENDS`): where the error is
            measured. Rank in the backend the engine is for: the error of an int8 graph is the
            backend's own (the same Q/DQ graph can be accurate in one and not in the other). The FP32
            reference runs in the same backend. OpenVINO compiles each candidate in about a second.

    Returns:
        ``[{"node", "op_type", "score", "error_if_float"}]`` sorted by ``score`` descending (ties by
        name): ``score = error(current graph) − error(current graph with this node float)``, errors
        from :func:`output_error` ×1e4.

    Raises:
        RtsegError: ``backend`` is not one of :data:`RANK_BACKENDS`.
    """
    if backend not in RANK_BACKENDS:
        raise RtsegError(f"the layer ranking runs in {' or '.join(RANK_BACKENDS)}, not {backend!r}; pass one of those")
    from ..onnx_files import load_onnx

    log = log or (lambda m: None)
    fm, qm = load_onnx(fp32_onnx), load_onnx(qdq_onnx)
    ops = {n.name: n.op_type for n in qm.graph.node}
    done = list(already_float)
    names = [n for n in quantized_nodes(qm) if n not in set(done)]
    with tempfile.TemporaryDirectory(prefix="rtseg-sens-") as td:
        ref = _run_onnx(fp32_onnx, x, Path(td), threads, backend)
        base = output_error(_run_onnx(keep_float(qm, fm, done), x, Path(td), threads, backend), ref)
        log(f"sensitivity of {len(names)} quantized layers on {len(x)} images in {backend} (output error {1e4 * base:.3f}e-4)")
        rows = []
        for name in names:
            err = output_error(_run_onnx(keep_float(qm, fm, done + [name]), x, Path(td), threads, backend), ref)
            rows.append({"node": name, "op_type": ops[name], "score": round(1e4 * (base - err), 6),
                         "error_if_float": round(1e4 * err, 6)})
    rows.sort(key=lambda r: (-r["score"], r["node"]))
    return rows
