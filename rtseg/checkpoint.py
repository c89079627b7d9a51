"""Checkpoints: ``model.safetensors`` (weights, loaded without pickle) + ``model.json`` (everything
downstream needs to rebuild and run the model), docs/architecture.md "Artifacts".

``model.json`` keys: ``format``, ``model`` (registry name), ``model_kwargs``, ``num_classes``,
``class_names``, ``palette`` (RGB per class), ``input_size`` ([H, W] pixels), ``mean``/``std``
(RGB in [0, 1]), ``resize`` (``"stretch"`` or ``"letterbox"``), ``task`` (``"binary"`` or
``"multiclass"``), ``ignore_index``, ``data`` (training-data fingerprint), ``metrics`` (at save
time), ``training`` (recipe), ``rtseg_version``.

Writes are atomic (temporary file + ``os.replace``), so a killed run never leaves a corrupt file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import RtsegError
from .meta import CHECKPOINT_FORMAT as FORMAT
from .meta import ModelMeta
from .safe_io import atomic_write_bytes, write_json

WEIGHTS = "model.safetensors"
META = "model.json"
#: the graph of an imported model folder (``model.onnx`` + ``model.json``, :mod:`rtseg.byom`)
MODEL_ONNX = "model.onnx"



def save_checkpoint(folder: str | Path, model: torch.nn.Module, meta: ModelMeta) -> Path:
    """Write ``model.safetensors`` + ``model.json`` into ``folder`` (created), atomically.

    Returns the folder path.
    """
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # safetensors refuses shared storage; state_dict tensors of our models are distinct
    atomic_write_bytes(folder / WEIGHTS, save(state, metadata={"format": FORMAT, "model": meta.model}))
    write_json(folder / META, meta.to_dict())
    return folder


def resolve_checkpoint(path: str | Path) -> Path:
    """Return the checkpoint folder for ``path`` (a folder, or its ``model.safetensors``/``model.json``).

    Raises:
        RtsegError: the folder or one of its two files is missing.
    """
    p = Path(path)
    if p.is_file() and p.name in (WEIGHTS, META):
        p = p.parent
    if not p.exists():
        raise RtsegError(f"checkpoint {p} does not exist; pass the folder written by 'rtseg train' (it holds {WEIGHTS} and {META})")
    if not p.is_dir():
        raise RtsegError(f"{p} is not a checkpoint folder; pass the folder written by 'rtseg train' (it holds {WEIGHTS} and {META})")
    if is_model_folder(p):
        return p
    for name in (META, WEIGHTS):
        if not (p / name).is_file():
            raise RtsegError(f"checkpoint folder {p} has no {name}; pass the folder written by 'rtseg train'")
    return p


def is_model_folder(path: str | Path) -> bool:
    """True for an imported model folder: ``model.json`` + ``model.onnx`` and no ``model.safetensors``
    (written by :func:`rtseg.byom.import_onnx` / :func:`rtseg.byom.export_model`)."""
    p = Path(path)
    return p.is_dir() and (p / META).is_file() and (p / MODEL_ONNX).is_file() and not (p / WEIGHTS).exists()


def weights_file(folder: str | Path) -> Path:
    """The file that identifies a checkpoint's weights: ``model.safetensors``, or ``model.onnx`` of a model folder."""
    return Path(folder) / (MODEL_ONNX if is_model_folder(folder) else WEIGHTS)


def load_meta(path: str | Path) -> ModelMeta:
    """Read ``model.json`` of a checkpoint folder (or of a model folder, whose ``input_size`` must be
    its ``model.onnx``'s).

    Raises:
        RtsegError: missing or unreadable ``model.json``, a field that does not check, or a model
            folder's ``input_size`` other than its ONNX's.
    """
    folder = resolve_checkpoint(path)
    try:
        d = json.loads((folder / META).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RtsegError(f"{folder / META} is not valid JSON ({e}); the checkpoint is corrupt — retrain or restore it") from None
    meta = ModelMeta.from_dict(d, str(folder / META))
    if is_model_folder(folder):
        from .onnx_files import check_input_size

        check_input_size(folder / MODEL_ONNX, meta.input_hw, str(folder / META))
    return meta


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> tuple[torch.nn.Module, ModelMeta]:
    """Rebuild the model named in ``model.json`` and load ``model.safetensors`` strictly.

    The architecture is first built on PyTorch's ``meta`` device (no memory) and its tensor names and
    shapes compared with the weight file's header, so a ``model_kwargs`` that does not fit the
    weights (or asks for a huge network) is refused before anything is allocated.

    Returns ``(model in eval mode, meta)``.

    Raises:
        RtsegError: missing files, corrupt weights, or weights that do not match the architecture
            named in ``model.json`` (missing/unexpected tensors or shape mismatch).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .models import create_model

    folder = resolve_checkpoint(path)
    meta = load_meta(folder)
    if is_model_folder(folder):
        raise RtsegError(f"{folder} is an imported model folder ({MODEL_ONNX}, no PyTorch weights); it runs through its ONNX — "
                         f"use it with build-engine, eval, stream or bench, not where PyTorch weights are needed")
    with torch.device("meta"):
        skeleton = create_model(meta.model, num_classes=meta.num_classes, **meta.model_kwargs)
    _check_weight_shapes(folder, meta, _shapes(skeleton.state_dict()), _file_shapes(folder / WEIGHTS))
    del skeleton
    try:
        state = load_file(str(folder / WEIGHTS), device=map_location)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise RtsegError(f"{folder / WEIGHTS} is corrupt or not a safetensors file ({str(e).splitlines()[0]}); retrain or restore the checkpoint") from None
    model = create_model(meta.model, num_classes=meta.num_classes, **meta.model_kwargs)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, meta


def _shapes(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape from a safetensors file's header (no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise RtsegError(f"{path} is corrupt or not a safetensors file ({str(e).splitlines()[0]}); retrain or restore the checkpoint") from None


def _check_weight_shapes(folder: Path, meta: ModelMeta, expected: dict, got: dict) -> None:
    """Refuse weights whose tensor names or shapes are not the architecture's (one line with examples)."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shape = [k for k in expected if k in got and got[k] != expected[k]]
    if not (missing or unexpected or shape):
        return
    what = []
    if missing:
        what.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        what.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if shape:
        k = shape[0]
        what.append(f"{len(shape)} of another shape (e.g. {k}: {got[k]} vs {expected[k]})")
    raise RtsegError(
        f"weights in {folder} do not match architecture {meta.model!r} with {meta.model_kwargs or 'default'} settings "
        f"({'; '.join(what)}); the checkpoint was trained for another model — fix 'model'/'model_kwargs' in model.json or use the right checkpoint")
