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
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import RtsegError
from ..meta import BINARY_PALETTE, IMPORTED_FORMAT, MAX_INPUT_SIDE, ModelMeta

Log = Callable[[str], None]
KINDS = ("logits", "probabilities", "indices")
LAYOUTS = ("NCHW", "NHWC")
_TOP_KEYS = {"name", "task", "classes", "palette", "ignore_index", "input", "output", "data"}
_INPUT_KEYS = {"size", "layout", "mean", "std", "resize"}
_OUTPUT_KEYS = {"kind", "layout", "stride", "name"}
_DATA_KEYS = {"root", "format"}


def _bad(source: str, key: str, what: str) -> RtsegError:
    return RtsegError(f"{source}: '{key}' {what}; fix the metadata file (see 'rtseg import-onnx --help')")


def _num_list(v: Any, n: int) -> bool:
    return isinstance(v, list) and len(v) == n and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)


@dataclass
class ImportMeta:
    """The metadata of an imported model (module docstring: the file's fields).

    Attributes:
        name: model name; task: ``binary`` | ``multiclass``; classes: class names; palette: RGB per class.
        input_size: (H, W) pixels; input_layout: ``NCHW`` | ``NHWC``; mean, std: RGB in [0, 1]; resize:
            ``stretch`` | ``letterbox``.
        output_kind: ``logits`` | ``probabilities`` | ``indices``; output_layout; output_stride (≥ 1);
            output_name (``None``: the only output).
        ignore_index: label ignored by eval; data: ``{"root", "format"}`` of labelled data or ``{}``.
    """

    name: str
    task: str
    input_size: tuple[int, int]
    output_kind: str
    classes: list[str] = field(default_factory=lambda: ["background", "foreground"])
    palette: list[list[int]] | None = None
    input_layout: str = "NCHW"
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    resize: str = "stretch"
    output_layout: str = "NCHW"
    output_stride: int = 1
    output_name: str | None = None
    ignore_index: int | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Output channels: 1 for ``binary``, ``len(classes)`` for ``multiclass``."""
        return 1 if self.task == "binary" else len(self.classes)

    @classmethod
    def load(cls, path: str | Path) -> "ImportMeta":
        """Read a YAML or JSON metadata file.

        Raises:
            RtsegError: missing or unparsable file, or a missing/wrong field (one line naming it).
        """
        import yaml

        p = Path(path)
        try:
            d = yaml.safe_load(p.read_text())
        except FileNotFoundError:
            raise RtsegError(f"metadata file {p} does not exist; pass --meta META.yaml (fields: 'rtseg import-onnx --help')") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise RtsegError(f"{p} is not valid YAML/JSON ({str(e).splitlines()[0]}); fix the metadata file") from None
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
        _no_unknown(d, _TOP_KEYS, "", source)
        for key in ("name", "task", "input", "output"):
            if key not in d:
                raise _bad(source, key, "is missing (required)")
        inp, out, data = d["input"], d["output"], d.get("data") or {}
        for key, sub, keys in (("input", inp, _INPUT_KEYS), ("output", out, _OUTPUT_KEYS), ("data", data, _DATA_KEYS)):
            if not isinstance(sub, dict):
                raise _bad(source, key, "must be a mapping")
            _no_unknown(sub, keys, f"{key}.", source)
        meta = cls(name=d["name"], task=d["task"], input_size=inp.get("size"), output_kind=out.get("kind"),
                   classes=d.get("classes", ["background", "foreground"]), palette=d.get("palette"),
                   input_layout=inp.get("layout", "NCHW"), mean=inp.get("mean", [0.485, 0.456, 0.406]),
                   std=inp.get("std", [0.229, 0.224, 0.225]), resize=inp.get("resize", "stretch"),
                   output_layout=out.get("layout", "NCHW"), output_stride=out.get("stride", 1),
                   output_name=out.get("name"), ignore_index=d.get("ignore_index"), data=dict(data))
        meta.check(source)
        return meta

    def check(self, source: str = "metadata") -> None:
        """Check every field (see :meth:`from_dict`)."""
        _check_head(self, source)
        _check_input(self, source)
        _check_output(self, source)

    def to_model_meta(self, source_record: dict[str, Any]) -> ModelMeta:
        """The model folder's ``model.json`` (:class:`ModelMeta`, format :data:`IMPORTED_FORMAT`)."""
        return ModelMeta(model=self.name, num_classes=self.num_classes, class_names=list(self.classes),
                         palette=[list(c) for c in (self.palette or default_palette(len(self.classes)))],
                         input_size=[int(v) for v in self.input_size], mean=[float(v) for v in self.mean],
                         std=[float(v) for v in self.std], resize=self.resize, task=self.task, ignore_index=self.ignore_index,
                         data=dict(self.data), format=IMPORTED_FORMAT, source=source_record)


def _no_unknown(d: dict, allowed: set, prefix: str, source: str) -> None:
    extra = sorted(set(d) - allowed)
    if extra:
        raise _bad(source, prefix + str(extra[0]), f"is not a metadata field (fields: {', '.join(sorted(allowed))})")


def _check_head(m: ImportMeta, source: str) -> None:
    import re

    if not isinstance(m.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}", m.name):
        raise _bad(source, "name", f"must be 1-64 letters, digits, '-', '_' or '.', not {m.name!r}")
    if m.task not in ("binary", "multiclass"):
        raise _bad(source, "task", f"must be 'binary' or 'multiclass', not {m.task!r}")
    if not isinstance(m.classes, list) or not all(isinstance(c, str) and c for c in m.classes):
        raise _bad(source, "classes", "must be a list of class names")
    if m.task == "binary" and len(m.classes) != 2:
        raise _bad(source, "classes", f"must name 2 classes (background, foreground) for task binary, not {len(m.classes)}")
    if m.task == "multiclass" and not 2 <= len(m.classes) <= 256:
        raise _bad(source, "classes", f"must name 2..256 classes (one per output channel) for task multiclass, not {len(m.classes)}")
    if m.palette is not None and (not isinstance(m.palette, list) or len(m.palette) != len(m.classes)
                                  or not all(_num_list(c, 3) and all(0 <= v <= 255 for v in c) for c in m.palette)):
        raise _bad(source, "palette", f"must be {len(m.classes)} RGB triples in 0..255 (one per class)")
    if m.ignore_index is not None and (not isinstance(m.ignore_index, int) or not 0 <= m.ignore_index <= 255):
        raise _bad(source, "ignore_index", f"must be an integer label in 0..255, not {m.ignore_index!r}")
    if m.data and not isinstance(m.data.get("root"), str):
        raise _bad(source, "data.root", "must be the path of a labelled folder")


def _check_input(m: ImportMeta, source: str) -> None:
    size = m.input_size
    if size is None:
        raise _bad(source, "input.size", "is missing (required: [H, W] in pixels)")
    if (not isinstance(size, (list, tuple)) or len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
            or not all(1 <= v <= MAX_INPUT_SIDE for v in size)):
        raise _bad(source, "input.size", f"must be [H, W] with integers in 1..{MAX_INPUT_SIDE}, not {size!r}")
    m.input_size = (int(size[0]), int(size[1]))
    if m.input_layout not in LAYOUTS:
        raise _bad(source, "input.layout", f"must be NCHW or NHWC, not {m.input_layout!r}")
    for key in ("mean", "std"):
        if not _num_list(getattr(m, key), 3):
            raise _bad(source, f"input.{key}", f"must be three numbers (RGB in [0, 1]), not {getattr(m, key)!r}")
    if any(not v > 0 for v in m.std):
        raise _bad(source, "input.std", "must be positive")
    if m.resize not in ("stretch", "letterbox"):
        raise _bad(source, "input.resize", f"must be 'stretch' or 'letterbox', not {m.resize!r}")


def _check_output(m: ImportMeta, source: str) -> None:
    if m.output_kind is None:
        raise _bad(source, "output.kind", f"is missing (required: one of {', '.join(KINDS)})")
    if m.output_kind not in KINDS:
        raise _bad(source, "output.kind", f"must be one of {', '.join(KINDS)}, not {m.output_kind!r}")
    if m.output_layout not in LAYOUTS:
        raise _bad(source, "output.layout", f"must be NCHW or NHWC, not {m.output_layout!r}")
    s = m.output_stride
    if not isinstance(s, int) or isinstance(s, bool) or not 1 <= s <= 64 or m.input_size[0] % s or m.input_size[1] % s:
        raise _bad(source, "output.stride", f"must be an integer in 1..64 dividing input.size {list(m.input_size)}, not {s!r}")
    if m.output_name is not None and not isinstance(m.output_name, str):
        raise _bad(source, "output.name", "must be the name of a graph output")


def default_palette(n: int) -> list[list[int]]:
    """RGB per class: rtseg's binary palette for 2 classes, else matplotlib's ``tab20`` (black first)."""
    if n == 2:
        return [list(c) for c in BINARY_PALETTE]
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [[0, 0, 0]] + [[int(255 * v) for v in cmap(i % 20)[:3]] for i in range(n - 1)]


def as_import_meta(meta: "ImportMeta | dict | str | Path") -> ImportMeta:
    """An :class:`ImportMeta` from itself, a dict, or a YAML/JSON file path.

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
