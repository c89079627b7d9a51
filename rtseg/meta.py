"""Typed metadata of the two artifacts everything downstream reads (docs/internals.md):

* :class:`ModelMeta` — a checkpoint folder's ``model.json`` (how to rebuild and run the model);
* :class:`EngineMeta` — an engine folder's ``engine.json`` (what was built, for which backend,
  precision, device and input, and the records of export, calibration, accuracy gate and checks).

Both parse a JSON dict into a typed object and check it: a wrong type, a missing key or a value out
of bounds is one :class:`~rtseg.errors.RtsegError` line naming the file, the field and the fix —
never a ``KeyError``/``TypeError`` traceback later. ``to_dict()`` gives back the JSON form.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .errors import RtsegError

#: the ``format`` of ``model.json`` and ``engine.json`` this rtseg writes and reads
CHECKPOINT_FORMAT = "rtseg-checkpoint/1"
ENGINE_FORMAT = "rtseg-engine/1"
#: the ``format`` of a model folder's ``model.json`` (``model.onnx`` imported by :mod:`rtseg.byom`)
IMPORTED_FORMAT = "rtseg-imported/1"
BINARY_PALETTE = [[0, 0, 0], [0, 255, 0]]
#: largest network input side rtseg accepts (pixels); larger is a typo, not a model
MAX_INPUT_SIDE = 8192
PRECISIONS = ("fp32", "bf16", "fp16", "int8")


@dataclass
class ModelMeta:
    """The content of ``model.json`` (see :mod:`rtseg.checkpoint`)."""

    model: str
    num_classes: int = 1
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=lambda: ["background", "foreground"])
    palette: list[list[int]] = field(default_factory=lambda: [list(c) for c in BINARY_PALETTE])
    input_size: list[int] = field(default_factory=lambda: [256, 256])
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    resize: str = "stretch"
    task: str = "binary"
    ignore_index: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    rtseg_version: str = __version__
    format: str = CHECKPOINT_FORMAT
    #: imported model folders (:mod:`rtseg.byom`): where ``model.onnx`` came from and the edits made to it
    source: dict[str, Any] = field(default_factory=dict)
    #: the decision layer (:mod:`rtseg.decision`): ``presence`` ``{"min_peak", "min_area"}`` (binary models),
    #: ``persistence`` ``{"on_frames", "hold_frames"}``, and how they were chosen (``rtseg calibrate-decision``)
    decision: dict[str, Any] = field(default_factory=dict)

    @property
    def imported(self) -> bool:
        """True for a model folder (``model.onnx`` + ``model.json``, format :data:`IMPORTED_FORMAT`)."""
        return self.format == IMPORTED_FORMAT

    @property
    def input_hw(self) -> tuple[int, int]:
        """(H, W) of the network input in pixels."""
        return int(self.input_size[0]), int(self.input_size[1])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, source: str = "model.json") -> "ModelMeta":
        """Parse and check a ``model.json`` dict (unknown keys are ignored).

        Raises:
            RtsegError: not a mapping, no ``model``, or a field of the wrong type or out of bounds.
        """
        if not isinstance(d, dict):
            raise RtsegError(f"{source} must be a JSON object, not {type(d).__name__}; restore the file written by 'rtseg train'")
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "model" not in known:
            raise RtsegError(f"{source} has no 'model' entry; it was not written by rtseg — retrain or re-save the checkpoint")
        _check_model_fields(known, source)
        return cls(**known)


def _bad(source: str, key: str, what: str) -> RtsegError:
    return RtsegError(f"{source}: '{key}' {what}; fix the file or rebuild it with rtseg")


def _check_model_fields(d: dict, source: str) -> None:
    if not isinstance(d["model"], str) or not d["model"]:
        raise _bad(source, "model", "must be a registry name (a non-empty string)")
    n = d.get("num_classes", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 1024:
        raise _bad(source, "num_classes", f"must be an integer in 1..1024, not {n!r}")
    if not isinstance(d.get("model_kwargs", {}), dict):
        raise _bad(source, "model_kwargs", "must be an object of keyword arguments")
    size = d.get("input_size", [256, 256])
    if (not isinstance(size, list) or len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
            or not all(1 <= v <= MAX_INPUT_SIDE for v in size)):
        raise _bad(source, "input_size", f"must be [H, W] with integers in 1..{MAX_INPUT_SIDE}, not {size!r}")
    for key in ("mean", "std"):
        v = d.get(key, [0.5, 0.5, 0.5])
        if not isinstance(v, list) or len(v) != 3 or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                             and math.isfinite(x) for x in v):
            raise _bad(source, key, f"must be three finite numbers (RGB in [0, 1]), not {v!r}")
    if any(not x > 0 for x in d.get("std", [1.0])):
        raise _bad(source, "std", "must be positive (a zero std divides by zero)")
    if d.get("resize", "stretch") not in ("stretch", "letterbox"):
        raise _bad(source, "resize", f"must be 'stretch' or 'letterbox', not {d.get('resize')!r}")
    _check_records(d, source)
    _check_decision(d.get("decision", {}), source)


def _is_int(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_level(v: Any) -> bool:
    """A colour level: a number in 0..255 (NaN and ±Infinity are not)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 255


def _check_records(d: dict, source: str) -> None:
    """The descriptive fields: records are objects, names strings, colours RGB bytes, the task known."""
    for key in ("data", "metrics", "training", "source"):
        if not isinstance(d.get(key, {}), dict):
            raise _bad(source, key, f"must be an object, not {type(d[key]).__name__}")
    names = d.get("class_names", ["background", "foreground"])
    if not isinstance(names, list) or not 1 <= len(names) <= 1025 or not all(isinstance(n, str) for n in names):
        raise _bad(source, "class_names", f"must be a list of 1..1025 class names (strings), not {names!r:.80}")
    pal = d.get("palette", BINARY_PALETTE)
    if not isinstance(pal, list) or not 1 <= len(pal) <= 1025 or not all(
            isinstance(c, list) and len(c) == 3 and all(_is_level(v) for v in c) for c in pal):
        raise _bad(source, "palette", f"must be a list of [R, G, B] colours with levels in 0..255, not {pal!r:.80}")
    if d.get("task", "binary") not in ("binary", "multiclass"):
        raise _bad(source, "task", f"must be 'binary' or 'multiclass', not {d.get('task')!r}")
    ig = d.get("ignore_index")
    if ig is not None and not _is_int(ig, 0, 255):
        raise _bad(source, "ignore_index", f"must be a class index in 0..255 or null, not {ig!r}")


def _check_decision(dec: Any, source: str) -> None:
    """``decision`` must be an object whose ``presence``/``persistence`` parse (:mod:`rtseg.decision`)."""
    from .decision import PresenceRule, check_persistence

    if not isinstance(dec, dict):
        raise _bad(source, "decision", "must be an object (see rtseg calibrate-decision)")
    if dec.get("presence") is not None:
        PresenceRule.from_dict(dec["presence"], source)
    per = dec.get("persistence")
    if per is not None:
        if not isinstance(per, dict) or not {"on_frames", "hold_frames"} <= set(per):
            raise _bad(source, "decision.persistence", "must be an object with on_frames and hold_frames")
        try:
            check_persistence(per["on_frames"], per["hold_frames"])
        except RtsegError as e:
            raise _bad(source, "decision.persistence", str(e)) from None


@dataclass
class EngineMeta:
    """The content of ``engine.json`` (docs/internals.md "Engine folder").

    The fields every backend needs are typed; the records of the build (``export``, ``calibration``,
    ``accuracy_gate``, ``verify``, ``build``, ``selection``, ...) are kept as they are in ``records``
    and written back in place.

    Attributes:
        backend, backend_version, precision: what built it (``precision`` in :data:`PRECISIONS`).
        engine_file: the engine file's name inside the folder (never a path out of it).
        input: ``{"name", "shape": [-1, 3, H, W], "dtype", "layout"}``; output ``{"name", "shape": [-1, C, H, W], ...}``.
        batch: the batch profile ``{"min", "opt", "max"}`` (``max`` ``None`` = unbounded).
        model: the checkpoint's ``model.json`` (as a dict).
    """

    backend: str
    backend_version: str
    precision: str
    engine_file: str
    input: dict[str, Any]
    output: dict[str, Any]
    model: dict[str, Any]
    batch: dict[str, Any] = field(default_factory=lambda: {"min": 1, "opt": 1, "max": None})
    records: dict[str, Any] = field(default_factory=dict)
    format: str = ENGINE_FORMAT

    _CORE = ("format", "backend", "backend_version", "precision", "engine_file", "input", "output", "batch", "model")

    @property
    def input_hw(self) -> tuple[int, int]:
        """(H, W) of the engine input in pixels."""
        return int(self.input["shape"][2]), int(self.input["shape"][3])

    @property
    def num_classes(self) -> int:
        """C, the logit channels."""
        return int(self.output["shape"][1])

    @property
    def max_batch(self) -> int | None:
        """Largest batch the engine accepts (``None`` = unbounded)."""
        return self.batch.get("max")

    @property
    def model_meta(self) -> ModelMeta:
        """The checkpoint's ``model.json`` as a :class:`ModelMeta`."""
        return ModelMeta.from_dict(self.model, "engine.json 'model'")

    def get(self, key: str, default: Any = None) -> Any:
        """A record or core field by its ``engine.json`` key (``accuracy_gate``, ``verify``, ...)."""
        if key in self._CORE:
            return getattr(self, key)
        return self.records.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        """The ``engine.json`` dict (core fields first, then the records in their order)."""
        core = {k: getattr(self, k) for k in self._CORE}
        return {**core, **self.records}

    @classmethod
    def from_dict(cls, d: Any, source: str | Path = "engine.json") -> "EngineMeta":
        """Parse and check an ``engine.json`` dict.

        Raises:
            RtsegError: not a mapping, another format, a missing or ill-typed core field, an input
                that is not ``[N, 3, H, W]``, an output that is not ``[N, C, H, W]``, an engine file
                outside its folder, a batch profile that is not ``1 ≤ min ≤ opt ≤ max`` (each with the fix).
        """
        src = str(source)
        if not isinstance(d, dict):
            raise RtsegError(f"{src} must be a JSON object, not {type(d).__name__}; rebuild the engine with 'rtseg build-engine'")
        if d.get("format") != ENGINE_FORMAT:
            raise _bad(src, "format", f"is {d.get('format')!r}, expected {ENGINE_FORMAT!r} (another tool or rtseg version)")
        for key, typ in (("backend", str), ("backend_version", str), ("precision", str), ("engine_file", str),
                         ("input", dict), ("output", dict), ("model", dict)):
            if not isinstance(d.get(key), typ):
                raise _bad(src, key, f"is missing or not a {typ.__name__}")
        _check_engine_fields(d, src)
        records = {k: v for k, v in d.items() if k not in cls._CORE}
        return cls(backend=d["backend"], backend_version=d["backend_version"], precision=d["precision"],
                   engine_file=d["engine_file"], input=d["input"], output=d["output"], model=d["model"],
                   batch=d.get("batch") or {"min": 1, "opt": 1, "max": None}, records=records)


def _shape4(v: Any) -> bool:
    return (isinstance(v, list) and len(v) == 4
            and all(isinstance(x, int) and not isinstance(x, bool) for x in v) and all(x >= 1 for x in v[1:]))


def _check_engine_fields(d: dict, src: str) -> None:
    if d["precision"] not in PRECISIONS:
        raise _bad(src, "precision", f"is {d['precision']!r}, not one of {', '.join(PRECISIONS)}")
    name = d["engine_file"]
    if not name or Path(name).name != name or name in (".", ".."):
        raise _bad(src, "engine_file", f"is {name!r}: it must be a file name inside the engine folder")
    shape = d["input"].get("shape")
    if not _shape4(shape) or shape[1] != 3 or max(shape[2:]) > MAX_INPUT_SIDE:
        raise _bad(src, "input.shape", f"must be [N, 3, H, W] with H, W in 1..{MAX_INPUT_SIDE}, not {shape!r}")
    out = d["output"].get("shape")
    if not _shape4(out):
        raise _bad(src, "output.shape", f"must be [N, C, H, W], not {out!r}")
    batch = d.get("batch") or {}
    if not isinstance(batch, dict):
        raise _bad(src, "batch", "must be an object {min, opt, max}")
    lo, opt, hi = batch.get("min", 1), batch.get("opt", 1), batch.get("max")
    vals = [v for v in (lo, opt, hi) if v is not None]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in vals) or not 1 <= lo <= opt \
            or (hi is not None and hi < opt):
        raise _bad(src, "batch", f"must satisfy 1 ≤ min ≤ opt ≤ max, not {batch!r}")
    _check_gate_record(d.get("accuracy_gate"), src)
    # the model record is what the backends normalise with (mean/std) and score as: same checks as model.json
    _check_model_fields({"model": "(engine)", **{k: v for k, v in d["model"].items() if k in ModelMeta.__dataclass_fields__}},
                        f"{src} 'model'")
    n = d["model"].get("num_classes")
    if n is not None and n != out[1]:
        raise _bad(src, "output.shape", f"has {out[1]} channels but the model has num_classes {n}")


def _check_gate_record(gate: Any, src: str) -> None:
    """The accuracy-gate record decides whether an engine may be used: an unreadable one must not pass as passed."""
    if gate is None:
        return
    after = gate.get("after") if isinstance(gate, dict) else None
    delta = after.get("delta_pt") if isinstance(after, dict) else None
    if not isinstance(gate, dict) or not isinstance(after, (dict, type(None))) \
            or not (delta is None or (isinstance(delta, (int, float)) and not isinstance(delta, bool))):
        raise _bad(src, "accuracy_gate", "is not the gate record 'rtseg build-engine' writes "
                                         "({status, metric, tolerance_pt, after: {delta_pt}, ...})")


__all__ = ["BINARY_PALETTE", "CHECKPOINT_FORMAT", "ENGINE_FORMAT", "IMPORTED_FORMAT", "EngineMeta", "ModelMeta", "PRECISIONS"]
