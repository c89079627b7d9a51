"""A Triton Inference Server model repository from rtseg engines (``rtseg export-triton``, docs/triton.md).

Triton (and every server that speaks the KServe v2 / Open Inference Protocol) loads models from a
repository folder::

    REPO/<name>/config.pbtxt        # platform/backend, max_batch_size, inputs, outputs, dynamic_batching,
                                    # instance_group, parameters (rtseg's metadata)
    REPO/<name>/1/<model file>      # version 1: model.xml + model.bin | model.onnx | model.plan

One engine folder maps to one model: an OpenVINO engine to Triton's ``openvino`` backend, an ONNX
Runtime engine (or an imported model folder's ``model.onnx``) to ``onnxruntime_onnx``, a TensorRT
engine to ``tensorrt_plan`` (on a GPU instance group). A checkpoint is first built into an ONNX
Runtime fp32 engine. The model's input is the engine's: ``FP32 [-1, 3, H, W]`` normalised RGB (NCHW),
its output the logits ``FP32 [-1, C, H, W]``. rtseg's metadata travels as model ``parameters``
(string values): ``rtseg_model`` (the ``model.json`` record: classes, palette, mean/std, resize mode,
decision layer) and ``rtseg_engine`` (backend, precision, versions, batch profile, accuracy gate status
and the engine folder's seal). :class:`rtseg.runtime.kserve.KServeBackend` reads them back from the
server, so a stream through Triton preprocesses and decides exactly as with the local engine.

The config is built as a dict (:func:`model_config`) and written as protobuf text with Triton's own
schema (``tritonclient``'s ``model_config_pb2``, the ``[triton]`` extra): a field Triton does not know
is an error here, not at server start.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RtsegError, require

#: ``engine.json`` ``backend`` → (Triton ``platform``/``backend`` field, its value, the file(s) in ``1/``)
PLATFORMS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "openvino": ("backend", "openvino", ("model.xml", "model.bin")),
    "onnxruntime": ("platform", "onnxruntime_onnx", ("model.onnx",)),
    "tensorrt": ("platform", "tensorrt_plan", ("model.plan",)),
}
#: Triton model names: what its repository accepts as a folder name and a URL path segment
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_BATCH_LIMIT = 1024


@dataclass(frozen=True)
class TritonExportOptions:
    """How ``rtseg export-triton`` writes a model.

    Attributes:
        max_batch_size: Triton ``max_batch_size`` for an engine without a batch limit (OpenVINO and ONNX
            Runtime engines take any batch); an engine with a batch profile (TensorRT) uses its own max.
        max_queue_delay_us: how long Triton's dynamic batcher waits to fill a batch (µs).
        instances: model instances in the instance group (KIND_GPU for TensorRT, KIND_CPU otherwise).
    """

    max_batch_size: int = 8
    max_queue_delay_us: int = 2000
    instances: int = 1


def preferred_sizes(max_batch: int, opt: int | None = None) -> list[int]:
    """Dynamic-batcher ``preferred_batch_size``: the profile's opt size and the powers of two up to ``max_batch``."""
    sizes = {1 << k for k in range(max_batch.bit_length()) if 1 << k <= max_batch and 1 << k > 1} | {max_batch}
    if opt and 1 < opt <= max_batch:
        sizes.add(int(opt))
    return sorted(sizes)


def model_config(name: str, engine: dict[str, Any], options: TritonExportOptions = TritonExportOptions()) -> dict[str, Any]:
    """The Triton ``ModelConfig`` (as a dict, protobuf JSON names) of one engine folder's ``engine.json``.

    Raises:
        RtsegError: a backend Triton has no platform for, or an input/output that is not FP32 NCHW.
    """
    backend = engine.get("backend")
    if backend not in PLATFORMS:
        raise RtsegError(f"Triton has no platform for {backend!r} engines; export an OpenVINO, ONNX Runtime or TensorRT "
                         f"engine ('rtseg build-engine --backend openvino')")
    field, value, _ = PLATFORMS[backend]
    inp, out = engine["input"], engine["output"]
    if inp.get("dtype", "float32") != "float32" or len(inp["shape"]) != 4 or inp["shape"][1] != 3:
        raise RtsegError(f"the engine's input is {inp.get('dtype')} {inp['shape']}, not float32 [N, 3, H, W]; Triton export "
                         f"needs an rtseg engine built by 'rtseg build-engine'")
    batch = engine.get("batch") or {}
    max_batch = int(batch.get("max") or options.max_batch_size)
    fixed = inp["shape"][0] not in (-1, None) and not isinstance(inp["shape"][0], str)
    return {
        "name": name, field: value,
        "max_batch_size": 0 if fixed else max_batch,
        "input": [{"name": inp["name"], "data_type": "TYPE_FP32", "format": "FORMAT_NCHW",
                   "dims": [int(d) for d in (inp["shape"] if fixed else inp["shape"][1:])]}],
        "output": [{"name": out["name"], "data_type": "TYPE_FP32",
                    "dims": [int(d) for d in (out["shape"] if fixed else out["shape"][1:])]}],
        **({} if fixed else {"dynamic_batching": {"preferred_batch_size": preferred_sizes(max_batch, batch.get("opt")),
                                                  "max_queue_delay_microseconds": int(options.max_queue_delay_us)}}),
        "instance_group": [{"count": int(options.instances), "kind": "KIND_GPU" if backend == "tensorrt" else "KIND_CPU"}],
        "parameters": rtseg_parameters(engine),
    }


def rtseg_parameters(engine: dict[str, Any]) -> dict[str, dict[str, str]]:
    """rtseg's metadata as Triton model ``parameters`` (``{key: {"string_value": JSON}}``): ``rtseg_model``
    (the ``model.json`` record) and ``rtseg_engine`` (build facts and the seal of the engine folder)."""
    keep = ("format", "backend", "backend_version", "precision", "input", "output", "batch", "rtseg_version", "created")
    record = {k: engine.get(k) for k in keep}
    record["accuracy_gate"] = (engine.get("accuracy_gate") or {}).get("status")
    record["seal_sha256"] = (engine.get("seal") or {}).get("sha256")
    return {"rtseg_model": {"string_value": json.dumps(engine["model"], sort_keys=True)},
            "rtseg_engine": {"string_value": json.dumps(record, sort_keys=True)}}


def to_pbtxt(config: dict[str, Any]) -> str:
    """``config.pbtxt`` text of a :func:`model_config` dict, checked against Triton's ``ModelConfig`` schema.

    Raises:
        RtsegError: ``tritonclient`` is missing (the ``[triton]`` extra).
    """
    require("tritonclient", "triton", "writing a Triton model repository")
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    msg = json_format.ParseDict(config, model_config_pb2.ModelConfig(), ignore_unknown_fields=False)
    return text_format.MessageToString(msg)


def _engine_folder(path: Path, work: Path) -> tuple[Path, dict[str, Any]]:
    """The engine folder to export and its checked ``engine.json``: an engine folder as is (seal and
    accuracy gate checked), a checkpoint or model folder built into an ONNX Runtime fp32 engine first."""
    from ..runtime import ENGINE_JSON, check_accuracy_gate, check_seal, read_engine_json

    if (path / ENGINE_JSON).is_file():
        meta = read_engine_json(path)
        check_seal(path, meta, False)
        check_accuracy_gate(path, meta, False)
        return path, meta
    if not (path / "model.json").is_file():
        raise RtsegError(f"{path} is neither an engine folder (engine.json) nor a checkpoint or model folder (model.json); "
                         f"pass one built by 'rtseg build-engine' or 'rtseg train'")
    from .build import build_engine

    built = build_engine(path, "onnxruntime", "fp32", out=work / "onnxruntime-fp32")
    return Path(built), read_engine_json(built)


def export_triton(paths: list[str | Path], repo: str | Path, names: list[str] | None = None,
                  options: TritonExportOptions = TritonExportOptions(), log=print) -> list[Path]:
    """Write one Triton model per engine/checkpoint folder into the model repository ``repo``.

    Args:
        paths: engine folders (``engine.json``), checkpoint folders or imported model folders.
        repo: the repository folder (created if missing); each model goes to ``repo/<name>/``.
        names: model names (default: the model's registry name, then ``-<backend>-<precision>``).

    Returns:
        the model folders written.

    Raises:
        RtsegError: a folder Triton cannot serve (unknown backend, failed accuracy gate, edited or unsealed
            engine), an invalid or duplicate name, or a model folder that already exists in ``repo``.
    """
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise RtsegError(f"--repo {repo} is a file; pass a folder for the model repository")
    if names and len(names) != len(paths):
        raise RtsegError(f"{len(names)} --name for {len(paths)} models; give one --name per model or none")
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="rtseg-triton-") as tmp:
        plans = [_plan(Path(p), Path(tmp) / str(i), names[i] if names else None, options, repo)
                 for i, p in enumerate(paths)]
        seen = [n for n, *_ in plans]
        if len(set(seen)) != len(seen):
            raise RtsegError(f"two models would be named {sorted(n for n in seen if seen.count(n) > 1)[0]!r}; pass --name for each")
        for name, folder, engine, config, pbtxt in plans:
            written.append(_write_model(repo, name, folder, engine, pbtxt))
            log(f"{repo / name}: {config.get('backend') or config.get('platform')}, max_batch_size "
                f"{config['max_batch_size']}, input {config['input'][0]['dims']}")
    return written


def _plan(path: Path, work: Path, name: str | None, options: TritonExportOptions, repo: Path):
    if not path.exists():
        raise RtsegError(f"{path} does not exist; pass an engine folder from 'rtseg build-engine' or a checkpoint")
    folder, engine = _engine_folder(path, work)
    name = name or f"{engine['model']['model']}-{engine['backend']}-{engine['precision']}"
    if not NAME_RE.match(name):
        raise RtsegError(f"model name {name!r} is not a Triton model name (letters, digits, '_', '.', '-'); pass --name")
    if (repo / name).exists():
        raise RtsegError(f"{repo / name} already exists; remove it or pass another --name (an existing model is never replaced)")
    config = model_config(name, engine, options)
    return name, folder, engine, config, to_pbtxt(config)  # rendered and schema-checked once, before any write


def _write_model(repo: Path, name: str, folder: Path, engine: dict[str, Any], pbtxt: str) -> Path:
    """Write ``repo/name`` through a temporary sibling folder renamed into place (never half a model)."""
    repo.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo))
    try:
        (tmp / "1").mkdir()
        files = PLATFORMS[engine["backend"]][2]
        src = [engine["engine_file"]] + ([Path(engine["engine_file"]).with_suffix(".bin").name]
                                        if engine["backend"] == "openvino" else [])
        for s, d in zip(src, files):
            shutil.copyfile(folder / s, tmp / "1" / d)
        (tmp / "config.pbtxt").write_text(pbtxt)
        tmp.chmod(0o755)
        tmp.rename(repo / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return repo / name


__all__ = ["PLATFORMS", "TritonExportOptions", "export_triton", "model_config", "preferred_sizes", "rtseg_parameters",
           "to_pbtxt"]
