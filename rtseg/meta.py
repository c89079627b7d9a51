"""Typed metadata of the two artifacts everything downstream reads (docs/internals.md):

* :class:`ModelMeta` — a checkpoint folder's ``model.json`` (how to rebuild and run the model);
* :class:`EngineMeta` — an engine folder's ``engine.json`` (what was built, for which backend,
  precision, device and input, and the records of export, calibration, accuracy gate and checks).

Both parse a JSON dict into a typed object and check it: a wrong type, a missing key or a value out
of bounds is one :class:`~rtseg.errors.RtsegError` line naming the file, the field and the fix —
never a ``KeyError``/``TypeError`` traceback later. ``to_dict()`` gives back the JSON form.

How the checks are written: both classes are pydantic dataclasses. Each field's type says what it
accepts (strict: an integer field refuses ``true``, ``"3"`` and ``3.0``); the few rules that relate
values (``std > 0``, ``1 ≤ min ≤ opt ≤ max``, output channels = ``num_classes``, ...) are small
validators that name their rule. :data:`_WHAT` holds every error message, by field or rule, and
:func:`_refusal` turns pydantic's error into that one line. The import metadata
(:class:`rtseg.byom.ImportMeta`) and the presence rule (:class:`rtseg.decision.PresenceRule`) use the same
field types and helpers.
"""

from __future__ import annotations

from dataclasses import asdict, field
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import Field, StrictFloat, StrictInt, StrictStr, ValidationInfo, model_validator
from pydantic.dataclasses import dataclass

from . import __version__
from .errors import RtsegError
from .fields import Finite, Level, adapter, broken, first_violation, must, rule_values, value_at
from .fields import Record as _Record

#: the ``format`` of ``model.json`` and ``engine.json`` this rtseg writes and reads
CHECKPOINT_FORMAT = "rtseg-checkpoint/1"
ENGINE_FORMAT = "rtseg-engine/1"
#: the ``format`` of a model folder's ``model.json`` (``model.onnx`` imported by :mod:`rtseg.byom`)
IMPORTED_FORMAT = "rtseg-imported/1"
BINARY_PALETTE = [[0, 0, 0], [0, 255, 0]]
#: largest network input side rtseg accepts (pixels); larger is a typo, not a model
MAX_INPUT_SIDE = 8192
PRECISIONS = ("fp32", "bf16", "fp16", "int8")

#: What each field must be, per file: the ``what`` of the error line
#: ``"{source}: '{field}' {what}; fix the file or rebuild it with rtseg"``, a format string of the
#: field's ``value`` in the file. A key is a field (``"input.shape"``: ``shape`` inside ``input``), or
#: ``"field: rule"`` for a rule a validator checks (its values are format arguments too). When several
#: fields are wrong, the first one in this order is reported. (Literal braces are doubled: ``{{``.)
_WHAT: dict[str, dict[str, str]] = {
    "model.json": {
        "model": "must be a registry name (a non-empty string)",
        "num_classes": "must be an integer in 1..1024, not {value!r}",
        "model_kwargs": "must be an object of keyword arguments",
        "input_size": f"must be [H, W] with integers in 1..{MAX_INPUT_SIDE}, not {{value!r}}",
        "mean": "must be three finite numbers (RGB in [0, 1]), not {value!r}",
        "std": "must be three finite numbers (RGB in [0, 1]), not {value!r}",
        "std: positive": "must be positive (a zero std divides by zero)",
        "resize": "must be 'stretch' or 'letterbox', not {value!r}",
        "data": "must be an object, not {value.__class__.__name__}",
        "metrics": "must be an object, not {value.__class__.__name__}",
        "training": "must be an object, not {value.__class__.__name__}",
        "source": "must be an object, not {value.__class__.__name__}",
        "class_names": "must be a list of 1..1025 class names (strings), not {value!r:.80}",
        "palette": "must be a list of [R, G, B] colours with levels in 0..255, not {value!r:.80}",
        "task": "must be 'binary' or 'multiclass', not {value!r}",
        "ignore_index": "must be a class index in 0..255 or null, not {value!r}",
        "decision": "must be an object (see rtseg calibrate-decision)",
        "rtseg_version": "must be a string (the rtseg version that wrote the file), not {value!r}",
        "format": f"must be a string ({CHECKPOINT_FORMAT!r} or {IMPORTED_FORMAT!r}), not {{value!r}}",
        "decision.persistence": "must be an object with on_frames and hold_frames",
        "decision.persistence: counts": "{reason}",
    },
    "engine.json": {
        "format": f"is {{value!r}}, expected {ENGINE_FORMAT!r} (another tool or rtseg version)",
        "backend": "is missing or not a str",
        "backend_version": "is missing or not a str",
        "precision": "is missing or not a str",
        "engine_file": "is missing or not a str",
        "input": "is missing or not a dict",
        "output": "is missing or not a dict",
        "model": "is missing or not a dict",
        "precision: one of PRECISIONS": f"is {{value!r}}, not one of {', '.join(PRECISIONS)}",
        "engine_file: a name in the folder": "is {value!r}: it must be a file name inside the engine folder",
        "input.shape": f"must be [N, 3, H, W] with H, W in 1..{MAX_INPUT_SIDE}, not {{value!r}}",
        "output.shape": "must be [N, C, H, W], not {value!r}",
        "batch": "must be an object {{min, opt, max}}",
        "batch: 1 ≤ min ≤ opt ≤ max": "must satisfy 1 ≤ min ≤ opt ≤ max, not {value!r}",
        "accuracy_gate": "is not the gate record 'rtseg build-engine' writes "
                         "({{status, metric, tolerance_pt, after: {{delta_pt}}, ...}})",
        "output.shape: num_classes": "has {channels} channels but the model has num_classes {num_classes}",
    },
}


def _source(info: ValidationInfo, default: str) -> str:
    """The file name the caller of ``from_dict`` gave (validation context), for errors of other modules."""
    return (info.context or {}).get("source", default)


# -- field types (strict: an int is never True, "3" or 3.0; an int given for a float stays an int) --
#: a network input side (pixels)
Side = Annotated[StrictInt, Field(ge=1, le=MAX_INPUT_SIDE)]
#: a dimension of a tensor shape other than the batch (≥ 1)
Dim = Annotated[StrictInt, Field(ge=1)]
#: mean or std of the RGB input normalisation
RGBNumbers = Annotated[list[Finite], Field(min_length=3, max_length=3)]
#: one class's [R, G, B] colour
RGBColour = Annotated[list[Level], Field(min_length=3, max_length=3)]


class _Tensor(_Record):
    """``engine.json`` ``output``: ``{"name", "shape": [N, C, H, W], ...}`` (N may be -1: dynamic)."""

    shape: tuple[StrictInt, Dim, Dim, Dim]


class _InputTensor(_Tensor):
    """``engine.json`` ``input``: ``{"name", "shape": [N, 3, H, W], "dtype", "layout"}``."""

    shape: tuple[StrictInt, Annotated[StrictInt, Field(ge=3, le=3)], Side, Side]


class _BatchProfile(_Record):
    """``engine.json`` ``batch``: ``{"min", "opt", "max"}`` (``max`` ``None`` = unbounded)."""

    min: StrictInt = 1
    opt: StrictInt = 1
    max: StrictInt | None = None

    @model_validator(mode="after")
    def _ordered(self) -> "_BatchProfile":
        if not 1 <= self.min <= self.opt or (self.max is not None and self.max < self.opt):
            raise ValueError("not 1 ≤ min ≤ opt ≤ max")
        return self


class _GateAfter(_Record):
    delta_pt: StrictInt | StrictFloat | None = None  # any number (NaN too) or null


class _GateRecord(_Record):
    """``accuracy_gate``: ``{status, metric, tolerance_pt, after: {delta_pt}, ...}`` (decides whether an
    engine may be used: an unreadable one must not pass as passed)."""

    after: _GateAfter | None = None


class _EngineRecords(_Record):
    """The records of ``engine.json`` besides its core fields; only the accuracy gate is read as typed."""

    accuracy_gate: _GateRecord | None = None


class _Persistence(_Record):
    """``decision.persistence``; the counts are checked by :func:`rtseg.decision.check_persistence`."""

    on_frames: Any
    hold_frames: Any


def _no_batch_profile() -> dict[str, Any]:
    return {"min": 1, "opt": 1, "max": None}


def _is_file_name(name: str) -> bool:
    return bool(name) and Path(name).name == name and name not in (".", "..")


@dataclass
class ModelMeta:
    """The content of ``model.json`` (see :mod:`rtseg.checkpoint`).

    ``input_size`` is ``[H, W]`` in pixels (1..:data:`MAX_INPUT_SIDE`); ``mean``/``std`` are RGB in
    [0, 1]; ``palette`` one ``[R, G, B]`` (levels 0..255) per class. Constructing one checks the
    fields (``pydantic.ValidationError``); :meth:`from_dict` turns every problem into an ``RtsegError``.
    """

    model: Annotated[StrictStr, Field(min_length=1)]
    num_classes: Annotated[StrictInt, Field(ge=1, le=1024)] = 1
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    class_names: Annotated[list[StrictStr], Field(min_length=1, max_length=1025)] = field(
        default_factory=lambda: ["background", "foreground"])
    palette: Annotated[list[RGBColour], Field(min_length=1, max_length=1025)] = field(
        default_factory=lambda: [list(c) for c in BINARY_PALETTE])
    input_size: Annotated[list[Side], Field(min_length=2, max_length=2)] = field(default_factory=lambda: [256, 256])
    mean: RGBNumbers = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: Annotated[RGBNumbers, must(lambda v: all(x > 0 for x in v), "std: positive")] = field(
        default_factory=lambda: [0.229, 0.224, 0.225])
    resize: Literal["stretch", "letterbox"] = "stretch"
    task: Literal["binary", "multiclass"] = "binary"
    ignore_index: Annotated[StrictInt, Field(ge=0, le=255)] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    rtseg_version: StrictStr = __version__
    format: StrictStr = CHECKPOINT_FORMAT
    #: imported model folders (:mod:`rtseg.byom`): where ``model.onnx`` came from and the edits made to it
    source: dict[str, Any] = field(default_factory=dict)
    #: the decision layer (:mod:`rtseg.decision`): ``presence`` ``{"min_peak", "min_area"}`` (binary models),
    #: ``persistence`` ``{"on_frames", "hold_frames"}``, and how they were chosen (``rtseg calibrate-decision``)
    decision: dict[str, Any] = field(default_factory=dict)

    @model_validator(mode="after")
    def _decision_parses(self, info: ValidationInfo) -> "ModelMeta":
        """``decision.presence`` and ``decision.persistence`` must be what :mod:`rtseg.decision` reads."""
        from .decision import PresenceRule, check_persistence

        presence, persistence = self.decision.get("presence"), self.decision.get("persistence")
        if presence is not None:
            PresenceRule.from_dict(presence, _source(info, "model.json"))  # raises its own one-line RtsegError
        if persistence is not None:
            if not _Persistence.accepts(persistence):
                raise broken("decision.persistence")
            try:
                check_persistence(persistence["on_frames"], persistence["hold_frames"])
            except RtsegError as e:
                raise broken("decision.persistence: counts", reason=str(e)) from None
        return self

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
        if "model" not in d:
            raise RtsegError(f"{source} has no 'model' entry; it was not written by rtseg — retrain or re-save the checkpoint")
        return _parse(cls, d, source, "model.json")


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

    Constructing one checks the fields (``pydantic.ValidationError``; the model record: ``RtsegError``);
    :meth:`from_dict` turns every problem into an ``RtsegError``.
    """

    backend: StrictStr
    backend_version: StrictStr
    precision: Annotated[StrictStr, must(lambda p: p in PRECISIONS, "precision: one of PRECISIONS")]
    engine_file: Annotated[StrictStr, must(_is_file_name, "engine_file: a name in the folder")]
    input: Annotated[dict[str, Any], must(_InputTensor.accepts, "input.shape")]
    output: Annotated[dict[str, Any], must(_Tensor.accepts, "output.shape")]
    model: dict[str, Any]
    batch: Annotated[dict[str, Any], must(_BatchProfile.accepts, "batch: 1 ≤ min ≤ opt ≤ max")] = field(
        default_factory=_no_batch_profile)
    records: Annotated[dict[str, Any], must(_EngineRecords.accepts, "accuracy_gate")] = field(default_factory=dict)
    format: Literal["rtseg-engine/1"] = ENGINE_FORMAT

    _CORE = ("format", "backend", "backend_version", "precision", "engine_file", "input", "output", "batch", "model")

    @model_validator(mode="after")
    def _model_record_fits(self, info: ValidationInfo) -> "EngineMeta":
        """The model record is what the backends normalise with (mean/std) and score as: the same checks as
        ``model.json``, and its ``num_classes`` (if given) is the output's channel count."""
        ModelMeta.from_dict({"model": "(engine)", **self.model}, f"{_source(info, 'engine.json')} 'model'")
        n, channels = self.model.get("num_classes"), self.output["shape"][1]
        if n is not None and n != channels:
            raise broken("output.shape: num_classes", channels=channels, num_classes=n)
        return self

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
        fields = {k: d.get(k) for k in cls._CORE} | {"batch": d.get("batch") or _no_batch_profile(),
                                                     "records": {k: v for k, v in d.items() if k not in cls._CORE}}
        return _parse(cls, fields, src, "engine.json", file_dict=d)


# -- from a pydantic error to the one error line ---------------------------------------------------------
def _parse(cls: type, fields: dict, source: str, kind: str, file_dict: dict | None = None) -> Any:
    """``cls`` validated from ``fields``; a violation is the one error line of :func:`_refusal`."""
    try:
        return adapter(cls).validate_python(fields, context={"source": source})
    except pydantic.ValidationError as e:
        raise _refusal(e, source, kind, fields if file_dict is None else file_dict) from None


def _refusal(e: pydantic.ValidationError, source: str, kind: str, file_dict: dict) -> RtsegError:
    """The error line of ``e``'s first violation (in the order of ``_WHAT[kind]``), naming its field and value."""
    what = _WHAT[kind]
    key, err = first_violation(e.errors(), what, lambda err: _key(err, what))
    name = key.split(":")[0]
    return _bad(source, name, what[key].format(value=value_at(file_dict, name), **rule_values(err)))


def _key(err: dict, what: dict[str, str]) -> str:
    """The ``_WHAT`` key of one pydantic error: its rule, or the innermost field of its location in ``what``."""
    if err["type"] == "rtseg_rule":
        return err["ctx"]["rule"]
    loc = [str(p) for p in err["loc"]]
    return next(k for k in (".".join(loc[:n]) for n in range(len(loc), 0, -1)) if k in what)


def _bad(source: str, key: str, what: str) -> RtsegError:
    return RtsegError(f"{source}: '{key}' {what}; fix the file or rebuild it with rtseg")


__all__ = ["BINARY_PALETTE", "CHECKPOINT_FORMAT", "ENGINE_FORMAT", "IMPORTED_FORMAT", "EngineMeta", "ModelMeta", "PRECISIONS"]
