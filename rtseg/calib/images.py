"""Calibration images: where they come from, which ones are used, how they are preprocessed.

* Source (:func:`calib_source`): ``--calib-data`` (a folder, its ``images/`` sub-folder or one file)
  or, by default, the checkpoint's training split (``model.json`` → ``data.root``, split ``train``).
  rtseg never calibrates on random data: no images is an :class:`~rtseg.errors.RtsegError`.
* Selection (:func:`select_images`), deterministic: the candidates are sorted by
  ``sha256(f"{seed}:{relative path}")`` and the first N are taken (independent of file-system order
  and Python version).
* Preprocessing (:func:`preprocess_images`) is the runtime's own (``Preprocessor`` + ``normalize``):
  ``float32[N, 3, H, W]`` normalised RGB, NCHW.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import RtsegError

DEFAULT_NUM_IMAGES = 100  # calibration images chosen by default


def _selection_key(seed: int, name: str) -> str:
    return hashlib.sha256(f"{int(seed)}:{name}".encode("utf-8")).hexdigest()


def relative_name(p: Path, root: Path | None) -> str:
    """``p`` relative to ``root`` as a POSIX path; the file name when ``root`` is ``None`` or not
    above ``p``."""
    if root is not None:
        try:
            return Path(p).resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return Path(p).name


def select_images(candidates: Sequence[Path], num_images: int, seed: int = 0, root: Path | None = None) -> list[Path]:
    """Choose ``num_images`` of ``candidates`` reproducibly (all of them when there are fewer).

    Order: by ``sha256(f"{seed}:{name}")`` where ``name`` is the path relative to ``root`` (or the
    file name); the result is returned sorted by name.

    Raises:
        RtsegError: no candidates, or ``num_images < 1``.
    """
    if num_images < 1:
        raise RtsegError(f"--num-images must be ≥ 1, got {num_images}; calibration needs real images")
    if not candidates:
        raise RtsegError("no calibration images; pass --calib-data DIR with representative images (never random data)")
    names = {p: relative_name(p, root) for p in candidates}
    chosen = sorted(candidates, key=lambda p: _selection_key(seed, names[p]))[:num_images]
    return sorted(chosen, key=names.__getitem__)


def sha256_file(path: str | Path) -> str:
    """SHA-256 hex digest of a file."""
    from ..safe_io import file_sha256

    return file_sha256(path)


def preprocess_images(paths: Iterable[Path], input_hw: tuple[int, int], resize: str,
                      mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Read images exactly as the runtime does → ``float32[N, 3, H, W]`` normalised RGB.

    ``read_image`` (OpenCV, → RGB) → ``Preprocessor(input_hw, resize)`` (stretch or letterbox;
    area interpolation down, bilinear up) → ``(x/255 − mean)/std`` → NCHW. ``input_hw`` is
    ``(H, W)`` in pixels.

    Raises:
        RtsegError: an unreadable image.
    """
    from ..data.folder import read_image
    from ..data.transforms import Preprocessor, normalize

    pre = Preprocessor(tuple(input_hw), resize)
    out = [normalize(pre(read_image(p))[0], mean, std) for p in paths]
    return np.stack(out).astype(np.float32, copy=False)


def default_calib_source(meta) -> tuple[list[Path], Path, dict[str, Any]]:
    """Images of the checkpoint's training split (``model.json`` → ``data.root``, split ``train``).

    Returns ``(image paths, root, source record)``.

    Raises:
        RtsegError: the checkpoint names no data root, or it is missing — pass ``--calib-data``.
    """
    from ..data.folder import load_split

    data = getattr(meta, "data", None) or {}
    root = data.get("root")
    if not root:
        raise RtsegError("no calibration data: the checkpoint's model.json names no training data root; "
                         "pass --calib-data DIR with representative images (rtseg never calibrates on random data)")
    root = Path(root)
    if not root.is_dir():
        raise RtsegError(f"no calibration data: the checkpoint's training data {root} is not on this machine; "
                         f"pass --calib-data DIR with representative images")
    samples = load_split(root, "train")
    return [s.image for s in samples], root, {"root": str(root.resolve()), "split": "train",
                                             "fingerprint": data.get("fingerprint")}


def calib_source(calib_data: str | Path | None, meta) -> tuple[list[Path], Path, dict[str, Any]]:
    """Candidate images: ``calib_data`` (a folder, its ``images/`` sub-folder, or one file) or the
    default (:func:`default_calib_source`). Returns ``(paths, root, source record)``.

    Raises:
        RtsegError: missing folder or no images in it.
    """
    if calib_data is None:
        return default_calib_source(meta)
    from ..data.folder import list_images

    p = Path(calib_data)
    if not p.exists():
        raise RtsegError(f"calibration data {p} does not exist; pass --calib-data DIR with representative images")
    files = list_images(p)
    root = p if p.is_dir() else p.parent
    return files, root, {"root": str(root.resolve()), "split": None, "fingerprint": None}
