"""Reading ONNX files safely: the one reader (:func:`load_onnx`) and the external-data rule (issue 26).

An ONNX file may keep tensors outside itself ("external data": ``TensorProto.data_location ==
EXTERNAL``, its ``location`` a path relative to the model's folder). rtseg reads such data only from
a regular file inside the model's own folder: an absolute ``location``, one with ``..`` that leaves
the folder, a symlink that points out of it, or a FIFO/device is refused with one line naming the
tensor, before ONNX, ONNX Runtime, OpenVINO or TensorRT opens anything. Every ONNX file rtseg reads
from disk goes through :func:`check_external_data` (:func:`load_onnx`, ONNX Runtime sessions, the
OpenVINO and TensorRT builders).
"""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path
from typing import Any, Iterator

from .errors import RtsegError

#: largest ONNX file rtseg parses (bytes): protobuf's own limit; larger weights belong in external data
MAX_ONNX_BYTES = 2 ** 31


def _tensors(graph) -> Iterator[Any]:
    """Every ``TensorProto`` of ``graph`` and its subgraphs: initializers, sparse initializers, node attributes."""
    yield from graph.initializer
    for sp in graph.sparse_initializer:
        yield sp.values
        yield sp.indices
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("g"):
                yield from _tensors(a.g)
            for g in a.graphs:
                yield from _tensors(g)


def external_locations(model) -> list[tuple[str, str]]:
    """``[(tensor name, location)]`` of the tensors of ``model`` (an ``onnx.ModelProto``) kept in external files."""
    from onnx import TensorProto

    out = []
    for t in _tensors(model.graph):
        if t.data_location == TensorProto.EXTERNAL:
            out.append((t.name, next((e.value for e in t.external_data if e.key == "location"), "")))
    return out


def _escape(base: Path, loc: str) -> str | None:
    """Why ``loc`` (an external-data location) is refused for a model in ``base``; ``None`` if it is fine."""
    if not loc:
        return "names no file"
    if os.path.isabs(loc) or Path(loc).drive:
        return "is an absolute path"
    target = Path(os.path.realpath(base / loc))
    if not target.is_relative_to(os.path.realpath(base)):
        return "is outside the model's folder" + (" (through a link)" if ".." not in Path(loc).parts else "")
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return "does not exist"
    return None if stat.S_ISREG(mode) else "is not a regular file (a FIFO, device or folder)"


def check_external_data(path: str | Path, model=None) -> None:
    """Refuse an ONNX file whose external data is not a regular file inside its own folder.

    Args:
        path: the ``.onnx`` file; model: its ``onnx.ModelProto`` if already parsed (without external data).

    Raises:
        RtsegError: one line naming the tensor, its location, why it is refused and the fix (an
            unparsable file is left to the reader that follows).
    """
    import onnx

    path = Path(path)
    if model is None:
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception:  # not ONNX: the reader that follows says so in its own words
            return
    base = path.parent
    for name, loc in external_locations(model):
        why = _escape(base, loc)
        if why:
            raise RtsegError(f"{path}: tensor {name!r} keeps its data in {loc!r}, which {why}; rtseg reads external "
                             f"data only from a regular file in the model's folder ({base}) — move the file there, or "
                             f"save the model with its weights inside (onnx.save(model, path))")


def load_onnx(path: str | Path, load_external_data: bool = True) -> Any:
    """``onnx.ModelProto`` of ``path``, its external data (checked by :func:`check_external_data`) loaded.

    Raises:
        RtsegError: missing, non-regular (FIFO, ``/dev/zero``), over :data:`MAX_ONNX_BYTES` or unparsable
            file, or external data outside the model's folder.
    """
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    from .safe_io import check_regular

    path = Path(path)
    check_regular(path)
    if path.is_file() and path.stat().st_size > MAX_ONNX_BYTES:
        raise RtsegError(f"{path} is {path.stat().st_size / 2**30:.1f} GiB, over the 2 GiB an ONNX file can hold; "
                         f"pass the model's .onnx (large weights go in external data files next to it)")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise RtsegError(f"{path} does not exist; pass the .onnx file of the model") from None
    except Exception as e:  # protobuf decode errors have many types
        raise RtsegError(f"{path} is not an ONNX model ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}); "
                         f"pass a file written by torch.onnx.export or another ONNX exporter") from None
    check_external_data(path, model)
    if load_external_data and external_locations(model):
        load_external_data_for_model(model, str(path.parent))
    return model


def input_hw(path: str | Path) -> tuple[int | None, int | None] | None:
    """``(H, W)`` of the image input ``[N, 3, H, W]`` of an ONNX file (``None`` for a dynamic side), read
    from its graph only (external data untouched); ``None`` when it has no 4-D input or is unreadable.
    Parsed once per file version (path, size, mtime, inode): ``load_meta`` asks on every call."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return _input_hw(str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=32)
def _input_hw(path: str, size: int, mtime_ns: int, ino: int) -> tuple[int | None, int | None] | None:
    import onnx

    try:
        g = onnx.load(path, load_external_data=False).graph
    except Exception:  # unreadable: the session or reader that follows names it
        return None
    inits = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim] if inputs else []
    return (dims[2], dims[3]) if len(dims) == 4 else None


def check_input_size(path: str | Path, hw: tuple[int, int], source: str) -> None:
    """Refuse a model folder whose ``model.json`` ``input_size`` (``hw``) is not its ONNX's fixed input size.

    Raises:
        RtsegError: one line naming both sizes and the fix.
    """
    real = input_hw(path)
    if real is not None and any(r is not None and r != w for r, w in zip(real, hw)):
        h, w = (r if r is not None else v for r, v in zip(real, hw))
        raise RtsegError(f"{source}: 'input_size' is {list(hw)} but {Path(path).name} takes {w}x{h} images; set "
                         f"input_size to [{h}, {w}] or re-import the model with 'rtseg import-onnx'")


__all__ = ["MAX_ONNX_BYTES", "check_input_size", "input_hw", "check_external_data", "external_locations", "load_onnx"]
