"""rtseg's shipped default model and the cache of its engines (docs/model-card.md).

The default model is a checkpoint folder inside the package (``rtseg/weights/default``:
``model.safetensors`` + ``model.json``), trained by ``rtseg train --config default-rt`` (see the
model card, docs/model-card.md). ``rtseg stream`` without ``--engine`` runs it: its engine is built on
first use into the cache folder and reused afterwards (rebuilt when the weights or the backend
version change).

Cache folder: ``$RTSEG_CACHE``, else ``$XDG_CACHE_HOME/rtseg``, else ``~/.cache/rtseg``; engines live
in ``<cache>/engines/default-<first 12 hex of the weights' SHA-256>/<backend>-<precision>``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .errors import RtsegError
from .runtime.registry import DEFAULT_BACKEND, DEFAULT_PRECISION

DEFAULT_MODEL_DIR = Path(__file__).parent / "weights" / "default"


def default_model_dir() -> Path:
    """The shipped default checkpoint folder.

    Raises:
        RtsegError: the weights are missing from this installation.
    """
    d = DEFAULT_MODEL_DIR
    if not (d / "model.safetensors").is_file() or not (d / "model.json").is_file():
        raise RtsegError(f"the default model is missing from this installation ({d}); reinstall rtseg "
                         f"(pip install --force-reinstall rtseg) or pass --engine DIR")
    return d


def cache_dir() -> Path:
    """``$RTSEG_CACHE`` or ``$XDG_CACHE_HOME/rtseg`` or ``~/.cache/rtseg``."""
    if os.environ.get("RTSEG_CACHE"):
        return Path(os.environ["RTSEG_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rtseg"


def default_model_engine_dir(backend: str = DEFAULT_BACKEND, precision: str = DEFAULT_PRECISION) -> Path:
    """Where the default model's ``backend``/``precision`` engine is cached (keyed by the weights and
    ``model.json``, so a recalibrated decision record gets an engine that carries it)."""
    import hashlib

    from .safe_io import file_sha256

    folder = default_model_dir()
    sha = hashlib.sha256(f"{file_sha256(folder / 'model.safetensors')}:{file_sha256(folder / 'model.json')}".encode()).hexdigest()
    return cache_dir() / "engines" / f"default-{sha[:12]}" / f"{backend}-{precision}"


def load_default_engine(backend: str = DEFAULT_BACKEND, precision: str = DEFAULT_PRECISION,
                        num_threads: int | None = None, log: Callable[[str], None] | None = None):
    """Open the default model's engine, building it into the cache on first use.

    Returns:
        a :class:`rtseg.runtime.base.Backend`.

    Raises:
        RtsegError: missing weights, an unwritable cache folder, or a failed build.
    """
    from .export.build import build_engine
    from .runtime import load_engine

    log = log or (lambda m: None)
    folder = default_model_engine_dir(backend, precision)
    if (folder / "engine.json").is_file():
        try:
            return load_engine(folder, num_threads=num_threads)
        except RtsegError as e:  # another backend version: rebuild below
            log(f"rebuilding the cached default engine ({e})")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RtsegError(f"cannot create the engine cache {folder.parent} ({e.strerror}); set RTSEG_CACHE to a writable folder") from None
    log(f"building the default model's {backend} {precision} engine (first use) into {folder}")
    build_engine(default_model_dir(), backend, precision, folder, log=log)
    return load_engine(folder, num_threads=num_threads)
