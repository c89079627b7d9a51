"""``rtseg stream --save-masks DIR``: the mask shown on every frame, as numbered PNGs (issue 21).

Each written frame of a source gets ``DIR/000000.png``, ``000001.png``, … in output order (one source),
or ``DIR/source<i>/…`` (several sources, ``i`` in ``--source`` order): ``uint8[h, w]`` at the frame's
own size, 0 = background, 255 = foreground (binary models) or the class index (multi-class models).
The shown mask (after the decision layer) is mapped from the network input back onto the frame with
the stream's geometry (letterbox padding cropped, nearest-neighbour resize), as the overlay draws it.
Every file is written through a temporary file in the same folder and renamed into place, so an
interrupted stream leaves only complete PNGs.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import RtsegError
from ..safe_io import atomic_write_bytes, write_error


def mask_at_frame(mask: np.ndarray, geom) -> np.ndarray:
    """Network-size ``uint8[H, W]`` class mask → ``uint8[h, w]`` at the frame's size ``geom.src_hw``
    (content box cropped, nearest neighbour)."""
    y0, y1, x0, x1 = geom.box
    crop = mask[y0:y1, x0:x1]
    h, w = geom.src_hw
    if crop.shape != (h, w):
        crop = cv2.resize(crop, (w, h), interpolation=cv2.INTER_NEAREST)
    return crop


class MaskWriter:
    """Writes the shown masks of every source (module docstring).

    Args:
        folder: ``DIR``; must not exist yet or be empty (it is created).
        n_sources: number of sources (several: one sub-folder each).
        binary: binary model (foreground written as 255).

    A folder inside an input folder is refused by the stream's output-safety rule
    (:func:`rtseg.stream.sinks.refuse_output_collisions`); one that holds an input is not empty.

    Raises:
        RtsegError: ``folder`` is a file, is not empty, or cannot be created.
    """

    def __init__(self, folder: str | Path, n_sources: int, binary: bool):
        self.folder = Path(folder)
        self.binary = binary
        self._check()
        self.dirs = [self.folder] if n_sources == 1 else [self.folder / f"source{i}" for i in range(n_sources)]
        try:
            for d in self.dirs:
                d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(self.folder, e, "--save-masks") from None
        self.counts = [0] * n_sources

    def _check(self) -> None:
        f = self.folder
        if f.exists() and not f.is_dir():
            raise RtsegError(f"--save-masks {f} is a file; pass a new or empty folder")
        if f.is_dir() and any(f.iterdir()):
            raise RtsegError(f"--save-masks {f} is not empty; pass a new or empty folder (masks are never mixed "
                             f"with other files)")

    def write(self, src: int, mask: np.ndarray, geom) -> Path:
        """Write the next mask of source ``src`` (network-size ``uint8[H, W]``); returns its path.

        Raises:
            RtsegError: the file cannot be encoded or written.
        """
        m = mask_at_frame(mask, geom)
        if self.binary:
            m = (m > 0).astype(np.uint8) * 255
        ok, png = cv2.imencode(".png", m, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise RtsegError(f"cannot encode a mask of {m.shape[1]}x{m.shape[0]} as PNG")
        path = self.dirs[src] / f"{self.counts[src]:06d}.png"
        try:
            atomic_write_bytes(path, png.tobytes(), fsync=False)
        except OSError as e:
            raise write_error(path, e, "--save-masks") from None
        self.counts[src] += 1
        return path


__all__ = ["MaskWriter", "mask_at_frame"]
