"""Bring your own model: any segmentation ONNX or PyTorch module → a **model folder** every command accepts.

Model folder (``rtseg import-onnx``, ``rtseg import-torch``, :func:`import_onnx`, :func:`export_model`)
----------------------------------------------------------------------------------------------------
``model.onnx`` + ``model.json``, accepted wherever a checkpoint folder is (``build-engine``, ``calibrate``,
``eval``, ``stream``, ``bench``; :func:`rtseg.runtime.load_engine` opens it with ONNX Runtime fp32,
:class:`rtseg.runtime.onnx_model.OnnxModelBackend`).

* ``model.onnx`` follows rtseg's contract (docs/internals.md "Backend"): one input
  ``float32[batch, 3, H, W]`` (normalised RGB, NCHW) and one output ``logits: float32[batch, C, H, W]``
  (C = 1: sigmoid logit; C > 1: argmax). A graph that differs in a declared way (NHWC input or
  output, probabilities, class indices, output at a stride) is edited into the contract with
  standard ONNX nodes at import (:mod:`rtseg.byom.adapt`); the batch axis is made dynamic when
  the graph allows it (checked: a batch of 2 gives the per-image results), else kept fixed at 1
  (``source.batch`` = ``"fixed"``: engines are built with max batch 1, the stream batches by 1).
* ``model.json`` is a :class:`rtseg.meta.ModelMeta` with ``format`` = ``rtseg-imported/1``
  (:data:`rtseg.meta.IMPORTED_FORMAT`): ``model`` (the name; engines go to
  ``engines/<name>/<backend>-<precision>``), ``num_classes``, ``class_names``, ``palette``,
  ``input_size`` [H, W], ``mean``/``std`` (RGB in [0, 1]), ``resize``, ``task``, ``ignore_index``,
  ``data`` (``root``/``format`` of labelled data: the default calibration and accuracy-gate data) and
  ``source``: ``kind`` (``onnx`` | ``torch``), ``file``/``sha256`` of the original, ``opset``,
  ``original_input``/``original_output`` (name and shape), ``edits`` (the list of graph edits),
  ``batch`` (``dynamic`` | ``fixed``), ``params``, ``checked_backends``, ``export`` (torch: parity).

Metadata file (``--meta META.yaml``, YAML or JSON; :class:`ImportMeta`)::

    name: smp-unet                  # required: model name (letters, digits, - _ .)
    task: binary                    # required: binary (one sigmoid logit) | multiclass
    classes: [background, polyp]    # class names (binary: 2 names; multiclass: one per output channel)
    palette: [[0, 0, 0], [0, 255, 0]]   # optional RGB per class
    ignore_index: 255               # optional: label value ignored by eval (multiclass)
    input:
      size: [256, 256]              # required [H, W] in pixels
      layout: NCHW                  # NCHW | NHWC (NHWC gets a Transpose)
      mean: [0.485, 0.456, 0.406]   # RGB in [0, 1] (input in [0, 255]: mean 0, std 0.00392157)
      std: [0.229, 0.224, 0.225]
      resize: stretch               # stretch | letterbox
    output:
      kind: logits                  # required: logits | probabilities | indices
      layout: NCHW                  # NCHW | NHWC
      stride: 1                     # the output is input.size / stride (upsampled at import)
      name: null                    # which graph output, when there are several
    data:                           # optional labelled data (calibration and gate defaults)
      root: ../shared/data/kvasir-seg-256
      format: polyp

Every problem is one :class:`~rtseg.errors.RtsegError` line naming the field, tensor or node and the fix.

How the metadata file is checked (the style of :mod:`rtseg.meta`): :class:`_FileKeys` says which keys the
file and its ``input``/``output``/``data`` mappings may hold (any other is refused), then
:class:`ImportMeta`, a pydantic dataclass, types each field strictly (an integer refuses ``true``, ``"3"``
and ``3.0``; numbers are finite) and checks the rules that relate fields (classes per task, a palette
colour per class, a stride dividing the input size) in small validators that name their rule.
:data:`_WHAT` holds every error message, by file key or rule, and :func:`_refusal` turns pydantic's
error into that one line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, get_args

import numpy as np
import pydantic
import pydantic.dataclasses
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationInfo

from ..errors import RtsegError
from ..fields import adapter, broken, first_violation, must, rule_values, value_at
from ..meta import (
    BINARY_PALETTE,
    IMPORTED_FORMAT,
    MAX_INPUT_SIDE,
    ModelMeta,
    RGBColour,
    RGBNumbers,
    Side,
)

Log = Callable[[str], None]
Kind = Literal["logits", "probabilities", "indices"]
TensorLayout = Literal["NCHW", "NHWC"]
KINDS: tuple[str, ...] = get_args(Kind)
LAYOUTS: tuple[str, ...] = get_args(TensorLayout)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


def _bad(source: str, key: str, what: str) -> RtsegError:
    return RtsegError(f"{source}: '{key}' {what}; fix the metadata file (see 'rtseg import-onnx --help')")


# -- the layout of the file: which keys each mapping may hold (the values are ImportMeta's to check) ----------
class _Keys(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _InputKeys(_Keys):
    size: Any = None
    layout: Any = None
    mean: Any = None
    std: Any = None
    resize: Any = None


class _OutputKeys(_Keys):
    kind: Any = None
    layout: Any = None
    stride: Any = None
    name: Any = None


class _DataKeys(_Keys):
    root: Any = None
    format: Any = None


class _FileKeys(_Keys):
    """The metadata file: ``name``, ``task``, ``input`` and ``output`` are required; ``data`` may be null."""

    name: Any
    task: Any
    classes: Any = None
    palette: Any = None
    ignore_index: Any = None
    input: _InputKeys
    output: _OutputKeys
    data: _DataKeys | None = None


#: where each :class:`ImportMeta` field is in the metadata file (the others are top-level keys of their name)
_IN_FILE = {"input_size": "input.size", "input_layout": "input.layout", "mean": "input.mean", "std": "input.std",
            "resize": "input.resize", "output_kind": "output.kind", "output_layout": "output.layout",
            "output_stride": "output.stride", "output_name": "output.name"}


def _not_a_field(keys: type[_Keys]) -> str:
    return f"is not a metadata field (fields: {', '.join(sorted(keys.model_fields))})"


#: What each key of the metadata file must be: the ``what`` of the error line
#: ``"{source}: '{key}' {what}; fix the metadata file ..."``, a format string of the key's ``value`` in the
#: file. A key is a file key (``"input.size"``), or ``"key: rule"`` for a rule a validator checks (its
#: values are format arguments too; ``"unknown"``: a key the mapping may not hold). When several keys are
#: wrong, the first one in this order is reported (``data.format``, checked since issue 25, last).
#: (Literal braces are doubled: ``{{``.)
_WHAT: dict[str, str] = {
    "unknown": _not_a_field(_FileKeys),
    "name: missing": "is missing (required)",
    "task: missing": "is missing (required)",
    "input: missing": "is missing (required)",
    "output: missing": "is missing (required)",
    "input": "must be a mapping",
    "input: unknown": _not_a_field(_InputKeys),
    "output": "must be a mapping",
    "output: unknown": _not_a_field(_OutputKeys),
    "data": "must be a mapping",
    "data: unknown": _not_a_field(_DataKeys),
    "name": "must be 1-64 letters, digits, '-', '_' or '.', not {value!r}",
    "task": "must be 'binary' or 'multiclass', not {value!r}",
    "classes": "must be a list of class names",
    "classes: binary": "must name 2 classes (background, foreground) for task binary, not {n}",
    "classes: multiclass": "must name 2..256 classes (one per output channel) for task multiclass, not {n}",
    "palette": "must be {n} RGB triples in 0..255 (one per class)",
    "ignore_index": "must be an integer label in 0..255, not {value!r}",
    "data.root": "must be the path of a labelled folder",
    "input.size: missing": "is missing (required: [H, W] in pixels)",
    "input.size": f"must be [H, W] with integers in 1..{MAX_INPUT_SIDE}, not {{value!r}}",
    "input.layout": "must be NCHW or NHWC, not {value!r}",
    "input.mean": "must be three numbers (RGB in [0, 1]), not {value!r}",
    "input.std": "must be three numbers (RGB in [0, 1]), not {value!r}",
    "input.std: positive": "must be positive",
    "input.resize": "must be 'stretch' or 'letterbox', not {value!r}",
    "output.kind: missing": f"is missing (required: one of {', '.join(KINDS)})",
    "output.kind": f"must be one of {', '.join(KINDS)}, not {{value!r}}",
    "output.layout": "must be NCHW or NHWC, not {value!r}",
    "output.stride": "must be an integer in 1..64 dividing input.size {size}, not {value!r}",
    "output.name": "must be the name of a graph output",
    "data.format": "must be the name of a data format (a string), not {value!r}",
}


# -- rules relating fields (each validator names its rule in _WHAT) ------------------------------------------
def _required(rule: str) -> pydantic.BeforeValidator:
    """A required field that is null (or missing from its mapping in the file) breaks ``rule``."""

    def given(value: Any) -> Any:
        if value is None:
            raise broken(rule)
        return value

    return pydantic.BeforeValidator(given)


def _count_per_task(classes: list[str], info: ValidationInfo) -> list[str]:
    """``classes``: 2 names for task binary, 2..256 (one per output channel) for multiclass."""
    task, n = info.data.get("task"), len(classes)
    if (task == "binary" and n != 2) or (task == "multiclass" and not 2 <= n <= 256):
        raise broken(f"classes: {task}", n=n)
    return classes


def _one_per_class(value: Any, handler: Callable[[Any], Any], info: ValidationInfo) -> Any:
    """``palette``: null, or one [R, G, B] (levels 0..255) per class."""
    n = len(info.data.get("classes", ()))  # wrong classes are reported before the palette
    try:
        palette = handler(value)
    except pydantic.ValidationError:
        raise broken("palette", n=n) from None
    if palette is not None and len(palette) != n:
        raise broken("palette", n=n)
    return palette


def _divides_input(value: Any, handler: Callable[[Any], Any], info: ValidationInfo) -> int:
    """``output.stride``: an integer in 1..64 that divides both sides of ``input.size``."""
    size = info.data.get("input_size", (1, 1))  # a wrong input.size is reported before the stride
    try:
        stride = handler(value)
    except pydantic.ValidationError:
        stride = 0
    if not stride or size[0] % stride or size[1] % stride:
        raise broken("output.stride", size=list(size))
    return stride


def _names_a_folder(data: dict[str, Any]) -> bool:
    """``data``: ``{}``, or has a ``root`` path (a string without NUL: no path has one)."""
    return not data or (isinstance(data.get("root"), str) and "\0" not in data["root"])


@pydantic.dataclasses.dataclass
class ImportMeta:
    """The metadata of an imported model (module docstring: the file's fields).

    Attributes:
        name: model name; task: ``binary`` | ``multiclass``; classes: class names; palette: RGB per class.
        input_size: (H, W) pixels; input_layout: ``NCHW`` | ``NHWC``; mean, std: RGB in [0, 1]; resize:
            ``stretch`` | ``letterbox``.
        output_kind: ``logits`` | ``probabilities`` | ``indices``; output_layout; output_stride (≥ 1);
            output_name (``None``: the only output).
        ignore_index: label ignored by eval; data: ``{"root", "format"}`` of labelled data or ``{}``.

    Constructing one checks the fields (``pydantic.ValidationError``); :meth:`from_dict`, :meth:`load`
    and :meth:`check` turn every problem into an ``RtsegError``.
    """

    name: Annotated[StrictStr, must(_NAME.fullmatch, "name")]
    task: Literal["binary", "multiclass"]
    input_size: Annotated[tuple[Side, Side], _required("input.size: missing")]
    output_kind: Annotated[Kind, _required("output.kind: missing")]
    classes: Annotated[list[Annotated[StrictStr, Field(min_length=1)]], pydantic.AfterValidator(_count_per_task)] = field(
        default_factory=lambda: ["background", "foreground"])
    palette: Annotated[list[RGBColour] | None, pydantic.WrapValidator(_one_per_class)] = None
    input_layout: TensorLayout = "NCHW"
    mean: RGBNumbers = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: Annotated[RGBNumbers, must(lambda v: all(x > 0 for x in v), "input.std: positive")] = field(
        default_factory=lambda: [0.229, 0.224, 0.225])
    resize: Literal["stretch", "letterbox"] = "stretch"
    output_layout: TensorLayout = "NCHW"
    output_stride: Annotated[StrictInt, Field(ge=1, le=64), pydantic.WrapValidator(_divides_input)] = 1
    output_name: StrictStr | None = None
    ignore_index: Annotated[StrictInt, Field(ge=0, le=255)] | None = None
    data: Annotated[dict[str, Any], must(_names_a_folder, "data.root"),
                    must(lambda d: isinstance(d.get("format"), str | None), "data.format")] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Output channels: 1 for ``binary``, ``len(classes)`` for ``multiclass``."""
        return 1 if self.task == "binary" else len(self.classes)

    @classmethod
    def load(cls, path: str | Path) -> "ImportMeta":
        """Read a YAML or JSON metadata file (a relative ``data.root`` is relative to the file's folder).

        Raises:
            RtsegError: missing or unparsable file, or a missing/wrong field (one line naming it).
        """
        import yaml

        p = Path(path)
        try:
            d = yaml.safe_load(p.read_text())
        except FileNotFoundError:
            raise RtsegError(f"metadata file {p} does not exist; pass --meta META.yaml (fields: 'rtseg import-onnx --help')") from None
        except (OSError, ValueError, RecursionError, yaml.YAMLError) as e:  # ValueError: a date like 2024-13-45
            raise RtsegError(f"{p} is not valid YAML/JSON ({(str(e).splitlines() or [type(e).__name__])[0]}); "
                             f"fix the metadata file") from None
        meta = cls.from_dict(d, str(p))
        if meta.data.get("root") and not Path(meta.data["root"]).is_absolute():
            meta.data["root"] = str((p.parent / meta.data["root"]).resolve())
        return meta

    @classmethod
    def from_dict(cls, d: Any, source: str = "metadata") -> "ImportMeta":
        """Parse and check a metadata dict (module docstring).

        Raises:
            RtsegError: not a mapping, an unknown key, a missing required field (``name``, ``task``,
                ``input.size``, ``output.kind``) or a field of the wrong type or value.
        """
        if not isinstance(d, dict):
            raise RtsegError(f"{source} must be a mapping of fields (name, task, input, output, ...), not {type(d).__name__}; "
                             f"fix the metadata file")
        _validated(_FileKeys, d, source, d)
        return _validated(cls, _fields_of(d), source, d)

    def check(self, source: str = "metadata") -> None:
        """Check every field again (after they were changed; see :meth:`from_dict`).

        Raises:
            RtsegError: a field of the wrong type or value (one line naming its key in the file).
        """
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        self.input_size = _validated(ImportMeta, fields, source, _as_file(fields)).input_size  # (H, W) as a tuple

    def to_model_meta(self, source_record: dict[str, Any]) -> ModelMeta:
        """The model folder's ``model.json`` (:class:`ModelMeta`, format :data:`IMPORTED_FORMAT`)."""
        return ModelMeta(model=self.name, num_classes=self.num_classes, class_names=list(self.classes),
                         palette=[list(c) for c in (self.palette or default_palette(len(self.classes)))],
                         input_size=[int(v) for v in self.input_size], mean=[float(v) for v in self.mean],
                         std=[float(v) for v in self.std], resize=self.resize, task=self.task, ignore_index=self.ignore_index,
                         data=dict(self.data), format=IMPORTED_FORMAT, source=source_record)


def _fields_of(d: dict) -> dict[str, Any]:
    """:class:`ImportMeta`'s fields from a metadata dict of the right layout: the keys it holds, and always
    ``input.size`` and ``output.kind`` (``None`` when missing) and ``data`` (``{}`` when null)."""
    fields = {}
    for name in ImportMeta.__dataclass_fields__:
        section, _, key = _IN_FILE.get(name, name).rpartition(".")
        inner = d[section] if section else d
        if key in inner:
            fields[name] = inner[key]
    return fields | {"input_size": d["input"].get("size"), "output_kind": d["output"].get("kind"), "data": d.get("data") or {}}


def _as_file(fields: dict[str, Any]) -> dict[str, Any]:
    """:class:`ImportMeta`'s fields in the layout of the metadata file (to name a value in an error line)."""
    d: dict[str, Any] = {}
    for name, value in fields.items():
        section, _, key = _IN_FILE.get(name, name).rpartition(".")
        (d.setdefault(section, {}) if section else d)[key] = value
    return d


# -- from a pydantic error to the one error line ---------------------------------------------------------
def _validated(schema: type, fields: dict, source: str, file_dict: dict) -> Any:
    """``schema`` validated from ``fields``; a violation is the one error line of :func:`_refusal`."""
    try:
        return adapter(schema).validate_python(fields)
    except pydantic.ValidationError as e:
        raise _refusal(e, source, file_dict) from None


def _refusal(e: pydantic.ValidationError, source: str, file_dict: dict) -> RtsegError:
    """The error line of ``e``'s first violation (in the order of :data:`_WHAT`; of several unknown keys, the
    first by name), naming its key in the file and its value there."""
    errors = sorted(e.errors(), key=lambda err: [str(p) for p in err["loc"]])
    key, err = first_violation(errors, _WHAT, _key)
    name = ".".join(str(p) for p in err["loc"]) if key.endswith("unknown") else key.split(":")[0]
    return _bad(source, name, _WHAT[key].format(value=value_at(file_dict, name), **rule_values(err)))


def _key(err: dict) -> str:
    """The :data:`_WHAT` key of one pydantic error, of :class:`_FileKeys` or of :class:`ImportMeta`."""
    if err["type"] == "rtseg_rule":
        return err["ctx"]["rule"]
    loc = [str(p) for p in err["loc"]]
    if err["type"] in ("extra_forbidden", "invalid_key"):  # invalid_key: a key that is not a string
        return ": ".join([*loc[:-1], "unknown"])
    in_file = _IN_FILE.get(loc[0], loc[0])
    return f"{in_file}: missing" if err["type"] == "missing" and len(loc) == 1 else in_file


def default_palette(n: int) -> list[list[int]]:
    """RGB per class: rtseg's binary palette for 2 classes, else matplotlib's ``tab20`` (black first)."""
    if n == 2:
        return [list(c) for c in BINARY_PALETTE]
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [[0, 0, 0]] + [[int(255 * v) for v in cmap(i % 20)[:3]] for i in range(n - 1)]


def as_import_meta(meta: "ImportMeta | dict | str | Path") -> ImportMeta:
    """An :class:`ImportMeta` from itself (checked again), a dict, or a YAML/JSON file path.

    Raises:
        RtsegError: as :meth:`ImportMeta.from_dict` / :meth:`ImportMeta.load`.
    """
    if isinstance(meta, ImportMeta):
        meta.check()
        return meta
    if isinstance(meta, dict):
        return ImportMeta.from_dict(meta)
    return ImportMeta.load(meta)


# ------------------------------------------------------------------------------------------------
# ONNX → model folder
# ------------------------------------------------------------------------------------------------
@dataclass
class ImportOptions:
    """Options of :func:`import_onnx` / :func:`export_model`.

    Attributes:
        backends: backends the graph is checked with at import (``onnxruntime`` always; ``openvino``
            reads the graph with OpenVINO's ONNX frontend).
        opset: ONNX opset of :func:`export_model`'s export.
        overwrite: replace an existing model folder at ``out``.
    """

    backends: tuple[str, ...] = ("onnxruntime", "openvino")
    opset: int = 17
    overwrite: bool = True


def probe_images(meta: ImportMeta, n: int = 2) -> tuple[np.ndarray, str]:
    """``float32[n, 3, H, W]``: ``n`` real images of ``meta.data`` preprocessed like the runtime, or
    seeded Gaussian noise when the metadata names no data. Returns (batch, description)."""
    from ..calib.images import calib_source, preprocess_images, select_images

    hw = tuple(meta.input_size)
    if meta.data.get("root"):
        try:
            files, root, _ = calib_source(meta.data["root"], meta)
            chosen = select_images(files, n, seed=12345, root=root)
            return preprocess_images(chosen, hw, meta.resize, meta.mean, meta.std), f"{len(chosen)} images from {root}"
        except RtsegError:
            pass
    return np.random.default_rng(0).standard_normal((n, 3, *hw)).astype(np.float32), "seeded Gaussian noise"


def _make_batch_dynamic(model, in_name: str, x: np.ndarray) -> bool:
    """Try the graph at batch 2 against two batch-1 runs; True when the batch axis can be dynamic."""
    from ..export.onnx import parity_bound
    from .adapt import ort_run

    data = model.SerializeToString()
    try:
        both = ort_run(data, x[:2])
        one = np.concatenate([ort_run(data, x[i:i + 1]) for i in range(2)])
    except RtsegError:
        return False
    return both.shape == one.shape and float(np.max(np.abs(both.astype(np.float64) - one))) <= parity_bound(one)


def _adapt(model, meta: ImportMeta, name: str, x: np.ndarray, log: Log) -> dict[str, Any]:
    """Edit ``model`` in place into rtseg's contract; returns the ``source`` record entries."""
    import copy

    from . import adapt as oa

    opset = oa.check_opset_and_operators(model, name)
    info = oa.image_input(model, name, meta.input_layout, meta.input_size)
    out_name = oa.select_output(model, meta.output_name, name)
    orig_out = [o for o in model.graph.output][0]
    record = {"opset": opset, "original_input": {"name": info.name, "shape": info.dims, "layout": info.layout},
              "original_output": {"name": out_name, "shape": oa.dims_of(orig_out)}}
    if isinstance(info.dims[0], int) and info.dims[0] > 1:
        raise RtsegError(f"input '{info.name}' of {name} has a fixed batch of {info.dims[0]}; re-export it with batch 1 "
                         f"or a dynamic batch axis")
    trial = copy.deepcopy(model)
    oa.set_input(trial, info, meta.input_size, None)
    dynamic = _make_batch_dynamic(trial, info.name, x)
    if dynamic:
        model.CopyFrom(trial)
    else:
        oa.set_input(model, info, meta.input_size, 1)
        log("the batch axis cannot be made dynamic (the graph fixes it); the model runs at batch 1")
    y = oa.ort_run(model, x[:1])
    spec = oa.OutputSpec(meta.output_kind, meta.output_layout, meta.output_stride, meta.num_classes)
    edits = (["NHWC input → NCHW (Transpose)"] if info.layout == "NHWC" else [])
    edits += oa.adapt_output(model, out_name, y, spec, meta.input_size, None if dynamic else 1)
    record.update(edits=edits, batch="dynamic" if dynamic else "fixed", params=oa.float_params(model))
    return record


def _check_backends(path: Path, x: np.ndarray, backends: tuple[str, ...], meta: ImportMeta) -> list[str]:
    """Check the final graph: ``onnx.checker``, ONNX Runtime output ``float32[n, C, H, W]`` and finite,
    OpenVINO's frontend reads it. Returns the backends checked."""
    import onnx

    from .adapt import ort_run

    try:
        onnx.checker.check_model(str(path))
    except Exception as e:  # onnx.checker raises ValidationError and friends
        raise RtsegError(f"the imported graph is invalid ({str(e).strip().splitlines()[0]}); re-export the model") from None
    y = ort_run(path.read_bytes(), x)
    want = (x.shape[0], meta.num_classes, *meta.input_size)
    if y.shape != want or y.dtype != np.float32 or not np.isfinite(y).all():
        raise RtsegError(f"the imported graph gives {y.dtype} {list(y.shape)} (finite: {bool(np.isfinite(y).all())}), "
                         f"expected finite float32 {list(want)}; check output.kind/stride in the metadata")
    checked = ["onnxruntime"]
    if "openvino" in backends:
        import openvino as ov

        try:
            ov.Core().read_model(str(path))
        except Exception as e:  # OpenVINO's frontend raises its own types
            raise RtsegError(f"OpenVINO cannot read the model ({str(e).strip().splitlines()[0][:300]}); build it with "
                             f"--backend onnxruntime, or re-export it with operators OpenVINO supports") from None
        checked.append("openvino")
    return checked


#: the only entries of a model folder that ``--overwrite`` may replace (anything else is the user's)
MODEL_FOLDER_FILES = {"model.onnx", "model.json"}


def _replaceable(out: Path) -> str | None:
    """Why ``out`` must not be replaced by a model folder (``None``: it is an imported model folder
    holding nothing else: ``model.onnx`` + ``model.json`` of format ``rtseg-imported/1``)."""
    from ..meta import IMPORTED_FORMAT

    if not out.is_dir():
        return "it is not a folder"
    names = {p.name for p in out.iterdir()}
    other = sorted(names - MODEL_FOLDER_FILES)
    if other:
        return f"it holds {', '.join(other[:4])}{' ...' if len(other) > 4 else ''} (not only a model folder)"
    try:
        fmt = json.loads((out / "model.json").read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        fmt = None
    if fmt != IMPORTED_FORMAT:
        return f"its model.json is not an imported model's (format {fmt!r})"
    return None


def _publish_folder(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished ``tmp`` folder to ``out``; an existing ``out`` is replaced only with
    ``overwrite`` and only when it is an imported model folder holding nothing else, at the very end.

    Raises:
        RtsegError: ``out`` exists and may not be replaced (one line saying why).
    """
    old = None
    if out.exists():
        why = _replaceable(out) if overwrite else "--overwrite was not given"
        if why is not None:
            raise RtsegError(f"{out} exists and is not replaced: {why}; pass another --out (nothing was changed)")
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def import_onnx(onnx_path: str | Path, meta: "ImportMeta | dict | str | Path", out: str | Path,
                options: ImportOptions | None = None, log: Log | None = None) -> Path:
    """Check a segmentation ONNX against its metadata, edit it into rtseg's contract and write a model folder.

    Args:
        onnx_path: the ``.onnx`` file (any exporter; opset ≥ 11).
        meta: :class:`ImportMeta`, its dict, or a YAML/JSON metadata file (module docstring).
        out: the model folder to write (``model.onnx`` + ``model.json``), replaced atomically.
        options: :class:`ImportOptions`; log: progress callback.

    Returns:
        the model folder (``Path``).

    Raises:
        RtsegError: bad metadata; an ONNX that is unreadable, has no image input or several, an
            undeclared NHWC input, an input/output size, dtype or channel count other than the
            metadata's, an opset below 11, a non-standard operator, or a backend that cannot run it.
    """
    import onnx

    from ..safe_io import file_sha256, write_json

    m, o, log = as_import_meta(meta), options or ImportOptions(), log or (lambda msg: None)
    src, out = Path(onnx_path), Path(out)
    from ..onnx_files import load_onnx

    model = load_onnx(src)
    x, x_desc = probe_images(m)
    record = {"kind": "onnx", "file": str(src.resolve()), "sha256": file_sha256(src),
              **_adapt(model, m, src.name, x, log), "probe": x_desc}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp", dir=out.parent))
    try:
        onnx.save(model, str(tmp / "model.onnx"))
        record["checked_backends"] = _check_backends(tmp / "model.onnx", x if record["batch"] == "dynamic" else x[:1], o.backends, m)
        write_json(tmp / "model.json", m.to_model_meta(record).to_dict())
        _publish_folder(tmp, out, o.overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"model folder written to {out} ({record['params']:,} parameters; edits: {', '.join(record['edits']) or 'none'})")
    return out


# ------------------------------------------------------------------------------------------------
# PyTorch module → model folder
# ------------------------------------------------------------------------------------------------
def _logits_module(module):
    """``module`` wrapped so that it returns one tensor: ``.logits`` (transformers), ``["out"]``
    (torchvision) or the first element of a tuple/list."""
    import torch

    class _Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            y = self.inner(x)
            if hasattr(y, "logits"):
                return y.logits
            if isinstance(y, dict):
                return y["out"] if "out" in y else next(iter(y.values()))
            if isinstance(y, (tuple, list)):
                return y[0]
            return y

    return _Logits(module)


def export_model(module, meta: "ImportMeta | dict | str | Path", out: str | Path, options: ImportOptions | None = None,
                 log: Log | None = None) -> Path:
    """Export any ``torch.nn.Module`` through rtseg's checked ONNX export and write a model folder.

    The module takes ``float32[N, 3, H, W]`` normalised RGB (NCHW) and returns logits, probabilities
    (``[N, C, h, w]``, ``h = H / output.stride``), a ``transformers`` output with ``.logits``, a dict
    with ``"out"`` or a tuple (first element). It is exported by :func:`rtseg.export.onnx.export_onnx`
    (opset ``options.opset``, dynamic batch, ``onnx.checker`` and ONNX Runtime-vs-PyTorch parity on
    real images of ``meta.data`` when given), then imported by :func:`import_onnx`.

    Returns:
        the model folder.

    Raises:
        RtsegError: bad metadata, an NHWC ``input.layout`` (PyTorch modules take NCHW), ``indices``
            outputs (export logits instead), an export or parity failure, or :func:`import_onnx`'s checks.
    """
    from ..export.onnx import export_onnx

    m, o = as_import_meta(meta), options or ImportOptions()
    if m.input_layout != "NCHW":
        raise RtsegError("export_model takes NCHW modules (float32[N, 3, H, W]); drop input.layout NHWC from the metadata")
    if m.output_kind == "indices":
        raise RtsegError("export_model needs a module that returns logits or probabilities [N, C, h, w]; "
                         "return the logits (before argmax) and set output.kind: logits")
    wrapped = _logits_module(module).to("cpu").eval()
    x, _ = probe_images(m)
    n_params = int(sum(p.numel() for p in module.parameters()))
    with tempfile.TemporaryDirectory() as td:
        raw = Path(td) / f"{m.name}.onnx"
        info = export_onnx(wrapped, raw, m.input_size, opset=o.opset, sample=x)
        folder = import_onnx(raw, m, out, o, log)
    from ..safe_io import write_json

    mj = json.loads((folder / "model.json").read_text())
    mj["source"].update(kind="torch", file=None, sha256=None, module=f"{type(module).__module__}.{type(module).__qualname__}",
                        torch_params=n_params, export={k: info.get(k) for k in ("opset", "max_abs_diff", "tolerance",
                                                                               "parity_input", "torch_version")})
    write_json(folder / "model.json", mj)
    return folder


def load_factory(spec: str):
    """``"module.path:factory"`` → the ``nn.Module`` the factory returns (``rtseg import-torch``).

    Raises:
        RtsegError: not ``module:attr``, the module cannot be imported (missing, a syntax error, an
            exception at import), the attribute is missing, the factory raises, or it does not give
            a ``torch.nn.Module``.
    """
    import importlib

    import torch

    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise RtsegError(f"{spec!r} is not 'module:factory'; pass e.g. mypkg.models:build_unet")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise RtsegError(f"cannot import {mod_name} ({e}); put it on PYTHONPATH or install its package") from None
    except Exception as e:  # noqa: BLE001 - the user's module: a syntax error, or code that fails at import
        raise RtsegError(f"importing {mod_name} failed ({type(e).__name__}: {_first_line(e)}); fix the module") from None
    obj = getattr(mod, attr, None)
    if obj is None:
        raise RtsegError(f"{mod_name} has no {attr!r}; pass an existing factory function or module attribute")
    try:
        model = obj() if callable(obj) and not isinstance(obj, torch.nn.Module) else obj
    except Exception as e:  # noqa: BLE001 - the user's factory
        raise RtsegError(f"{spec}() failed ({type(e).__name__}: {_first_line(e)}); fix the factory "
                         f"(it is called without arguments)") from None
    if not isinstance(model, torch.nn.Module):
        raise RtsegError(f"{spec} gave a {type(model).__name__}, not a torch.nn.Module; the factory must return the model")
    return model


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def load_state(module, path: str | Path) -> None:
    """Load a state_dict into ``module`` strictly: ``.safetensors``, or ``.pt``/``.pth`` (``weights_only``).

    Raises:
        RtsegError: missing or unreadable file, or keys/shapes that do not match the module.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise RtsegError(f"weights file {p} does not exist; pass the state_dict saved for this module")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
        module.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state, strict=True)
    except Exception as e:  # safetensors/torch/pickle raise many types
        raise RtsegError(f"cannot load {p} into {type(module).__name__} ({str(e).strip().splitlines()[0][:200]}); "
                         f"pass the state_dict saved for this exact module") from None


__all__ = ["ImportMeta", "ImportOptions", "KINDS", "LAYOUTS", "as_import_meta", "default_palette", "export_model",
           "import_onnx", "load_factory", "load_state", "probe_images"]
