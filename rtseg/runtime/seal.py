"""The seal of an engine folder: what ``build-engine`` built, fixed at the end of the build (issue 26).

``engine.json`` ``seal`` is::

    {"format": "rtseg-seal/2",
     "files": {"model.onnx": "<sha256>", "model.xml": "<sha256>", "model.bin": "<sha256>", ...},
     "sha256": "<sha256 of engine.json without 'seal' and of 'files', canonical JSON>"}

``files`` holds the SHA-256 of every file of the folder (``engine.json`` excepted): the engine file
(OpenVINO IR, ORT-optimised ONNX, TensorRT plan), the ONNX it was built from and the calibration
files. ``sha256`` covers every other key of ``engine.json``: the build fields (backend, version,
precision, device, shapes, batch profile, checkpoint hash), the model record (mean/std, classes,
input size, decision) and the records (accuracy gate, calibration, verify, selection).

:func:`rtseg.runtime.load_engine` checks the seal before the backend reads a byte of the engine
(each file hashed once, tens of MB at most): an edited file or record is one line naming it and the
rebuild command. An ``engine.json`` without a seal of this format (an older rtseg, or a removed seal)
is refused unless the caller opts in (``allow_unsealed``, ``--allow-unsealed``). The seal detects
edits and corruption; it is not a signature (anyone who can write the folder can rebuild it).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from ..errors import RtsegError

SEAL_FORMAT = "rtseg-seal/2"
ENGINE_JSON = "engine.json"


def _canonical(obj: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, no spaces) of ``obj`` as it reads back from JSON (tuples → lists)."""
    return json.dumps(json.loads(json.dumps(obj)), sort_keys=True, separators=(",", ":")).encode()


def seal_digest(engine: dict, files: dict[str, str]) -> str:
    """SHA-256 (hex) of ``engine`` (an ``engine.json`` dict; its ``seal`` left out) and ``files``."""
    import hashlib

    body = {k: v for k, v in engine.items() if k != "seal"}
    return hashlib.sha256(_canonical({"engine": body, "files": files})).hexdigest()


def folder_files(folder: str | Path) -> dict[str, str]:
    """``{relative posix path: SHA-256}`` of every regular file under ``folder`` except ``engine.json``.

    Raises:
        OSError: a file cannot be read.
    """
    from ..safe_io import file_sha256

    root, out = Path(folder), {}
    for base, _, names in os.walk(root):  # symlinked folders are not followed
        for n in names:
            p = Path(base) / n
            rel = p.relative_to(root).as_posix()
            if rel != ENGINE_JSON and stat.S_ISREG(os.lstat(p).st_mode):
                out[rel] = file_sha256(p)
    return dict(sorted(out.items()))


def seal_engine(folder: str | Path, engine: dict) -> dict:
    """The ``seal`` record of the finished engine ``folder`` whose ``engine.json`` will be ``engine``."""
    files = folder_files(folder)
    return {"format": SEAL_FORMAT, "files": files, "sha256": seal_digest(engine, files)}


def _rebuild(folder: Path, meta: dict) -> str:
    ckpt = (meta.get("checkpoint") or {}).get("path") if isinstance(meta.get("checkpoint"), dict) else None
    return (f"rebuild it with 'rtseg build-engine --checkpoint {ckpt or 'CKPT'} --backend {meta.get('backend')} "
            f"--precision {meta.get('precision')} --out {folder}'")


def _unsealed(folder: Path, meta: dict, why: str) -> RtsegError:
    return RtsegError(f"{folder / ENGINE_JSON} {why}, so its files and records cannot be checked; {_rebuild(folder, meta)} "
                      f"(or pass --allow-unsealed / allow_unsealed=True to use it unchecked)")


def _sealed_file(folder: Path, name: Any, meta: dict) -> Path:
    """``folder/name`` for a name the seal lists: a relative path inside the folder, a regular file."""
    p = folder / str(name)
    if (not isinstance(name, str) or not name or os.path.isabs(name) or ".." in Path(name).parts
            or name == ENGINE_JSON):
        raise RtsegError(f"{folder / ENGINE_JSON}: the seal lists {name!r}, not a file of the engine folder; "
                         f"{_rebuild(folder, meta)}")
    try:
        st = os.lstat(p)
    except OSError:
        raise RtsegError(f"{p} is missing: the engine folder was changed after the build; {_rebuild(folder, meta)}") from None
    inside = Path(os.path.realpath(p)).is_relative_to(os.path.realpath(folder))
    if not stat.S_ISREG(st.st_mode) or not inside:
        raise RtsegError(f"{p} is not a regular file (a link, folder or device): the engine folder was changed after "
                         f"the build; {_rebuild(folder, meta)}")
    return p


def check_seal(folder: str | Path, meta: dict, allow_unsealed: bool = False) -> None:
    """Refuse an engine folder whose files or ``engine.json`` changed after the build (module docstring).

    Args:
        folder: the engine folder; meta: its ``engine.json`` dict.
        allow_unsealed: accept an ``engine.json`` without a seal of :data:`SEAL_FORMAT` (unchecked).
            A seal that is there but does not match is refused regardless.

    Raises:
        RtsegError: no seal (unless ``allow_unsealed``), a malformed seal, an edited ``engine.json``,
            or a missing, replaced or edited engine file (one line naming it and the rebuild command).
    """
    from ..safe_io import file_sha256

    folder, seal = Path(folder), meta.get("seal")
    if not (isinstance(seal, dict) and seal.get("format") == SEAL_FORMAT):
        if allow_unsealed:
            return
        raise _unsealed(folder, meta, "has no seal" if seal is None else "has a seal of an older rtseg")
    files = seal.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()) \
            or not isinstance(seal.get("sha256"), str):
        raise RtsegError(f"{folder / ENGINE_JSON}: 'seal' is not the record 'rtseg build-engine' writes; {_rebuild(folder, meta)}")
    if seal["sha256"] != seal_digest(meta, files):
        raise RtsegError(f"{folder / ENGINE_JSON} was edited after the build (its fields or records — model, "
                         f"accuracy_gate, ... — no longer match its seal); {_rebuild(folder, meta)} instead of editing it")
    if meta.get("engine_file") not in files:
        raise RtsegError(f"{folder / ENGINE_JSON}: the seal does not cover the engine file {meta.get('engine_file')}; "
                         f"{_rebuild(folder, meta)}")
    for name, sha in files.items():
        p = _sealed_file(folder, name, meta)
        if file_sha256(p) != sha:
            raise RtsegError(f"{p} was changed after the build (its SHA-256 is not the one sealed in engine.json); "
                             f"{_rebuild(folder, meta)}")


__all__ = ["SEAL_FORMAT", "check_seal", "folder_files", "seal_digest", "seal_engine"]
