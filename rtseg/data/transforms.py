"""Geometry and normalisation shared by training, evaluation and the stream.

Two resize policies map an image of any size to the network input H×W:

* ``"stretch"`` — resize to H×W ignoring the aspect ratio. The Kvasir-SEG/CVC 256² copies in
  ``../shared/data`` were themselves made this way, so models trained on them expect it.
* ``"letterbox"`` — scale the longest side to fit, keep the aspect ratio, pad with 0 (EUNet's
  original preprocessing, docs/networks.md §2.3 and decision 4). Padding is excluded from metrics.

:class:`Geometry` records the mapping so a predicted mask goes back to the source frame exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import RtsegError

RESIZE_MODES = ("stretch", "letterbox")


@dataclass(frozen=True)
class Geometry:
    """How a source image of ``src_hw`` was placed into the network input of ``dst_hw``.

    ``box = (y0, y1, x0, x1)`` is the content region inside the network input (pixels); outside it
    is letterbox padding. For ``stretch`` the box is the whole input.
    """

    src_hw: tuple[int, int]
    dst_hw: tuple[int, int]
    box: tuple[int, int, int, int]

    def content_mask(self) -> np.ndarray:
        """``bool[H, W]`` at the network size, True inside the content box (metrics use it)."""
        m = np.zeros(self.dst_hw, dtype=bool)
        y0, y1, x0, x1 = self.box
        m[y0:y1, x0:x1] = True
        return m


def compute_geometry(src_hw: tuple[int, int], dst_hw: tuple[int, int], mode: str) -> Geometry:
    """Placement of a ``src_hw`` image into ``dst_hw`` under ``mode`` (``stretch``/``letterbox``).

    Raises:
        RtsegError: unknown mode.
    """
    H, W = dst_hw
    if mode == "stretch":
        return Geometry(tuple(src_hw), (H, W), (0, H, 0, W))
    if mode == "letterbox":
        h, w = src_hw
        s = min(H / h, W / w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        y0, x0 = (H - nh) // 2, (W - nw) // 2
        return Geometry(tuple(src_hw), (H, W), (y0, y0 + nh, x0, x0 + nw))
    raise RtsegError(f"unknown resize mode {mode!r}; use one of {', '.join(RESIZE_MODES)}")


def _interp(src: int, dst: int) -> int:
    return cv2.INTER_AREA if dst < src else cv2.INTER_LINEAR


def place(image: np.ndarray, geom: Geometry, out: np.ndarray | None = None,
          interpolation: int | None = None, pad_value: int = 0) -> np.ndarray:
    """Resize ``image`` (``uint8[h, w, 3]`` or ``[h, w]``) into the network input per ``geom``.

    ``out`` (``uint8[H, W, ...]``) is written in place when given (no allocation on the per-frame
    path). Downscaling uses area interpolation, upscaling bilinear, unless ``interpolation`` is set
    (use ``cv2.INTER_NEAREST`` for label masks).
    """
    H, W = geom.dst_hw
    y0, y1, x0, x1 = geom.box
    shape = (H, W) + image.shape[2:]
    if out is None:
        out = np.empty(shape, dtype=image.dtype)
    interp = interpolation if interpolation is not None else _interp(image.shape[1], x1 - x0)
    if (y0, y1, x0, x1) == (0, H, 0, W):
        if image.shape[:2] == (H, W):
            out[...] = image
        else:
            cv2.resize(image, (W, H), dst=out, interpolation=interp)
        return out
    out[:y0] = pad_value
    out[y1:] = pad_value
    out[y0:y1, :x0] = pad_value
    out[y0:y1, x1:] = pad_value
    out[y0:y1, x0:x1] = cv2.resize(image, (x1 - x0, y1 - y0), interpolation=interp)
    return out


def unplace(mask: np.ndarray, geom: Geometry, interpolation: int = cv2.INTER_NEAREST) -> np.ndarray:
    """Map a network-size ``mask[H, W]`` back to the source size ``uint8[h, w]`` (crop padding, resize)."""
    y0, y1, x0, x1 = geom.box
    crop = mask[y0:y1, x0:x1]
    h, w = geom.src_hw
    if crop.shape[:2] == (h, w):
        return crop
    return cv2.resize(crop, (w, h), interpolation=interpolation)


def logits_to_frame(z: np.ndarray, box: tuple[int, int, int, int], hw: tuple[int, int]) -> np.ndarray:
    """Network-size logits ``float32[C, H, W]`` → class map ``uint8[h, w]`` at ``hw`` (pixels):
    the content ``box`` (y0, y1, x0, x1) is cropped; binary: bilinear logits then ``> 0``;
    multi-class: argmax then nearest (how ``rtseg eval`` scores an image at its own resolution)."""
    y0, y1, x0, x1 = box
    h, w = hw
    if z.shape[0] == 1:
        zz = z[0, y0:y1, x0:x1]
        if zz.shape != (h, w):
            zz = cv2.resize(zz, (w, h), interpolation=cv2.INTER_LINEAR)
        return (zz > 0).astype(np.uint8)
    pred = z[:, y0:y1, x0:x1].argmax(0).astype(np.uint8)
    if pred.shape != (h, w):
        pred = cv2.resize(pred, (w, h), interpolation=cv2.INTER_NEAREST)
    return pred


class Preprocessor:
    """Frame → network input, with a reusable output buffer.

    Args:
        input_hw: (H, W) of the network input in pixels.
        mode: ``"stretch"`` or ``"letterbox"``.

    ``__call__(frame: uint8[h, w, 3] RGB, out=None) -> (uint8[H, W, 3], Geometry)``.
    """

    def __init__(self, input_hw: tuple[int, int], mode: str = "stretch"):
        if mode not in RESIZE_MODES:
            raise RtsegError(f"unknown resize mode {mode!r}; use one of {', '.join(RESIZE_MODES)}")
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.mode = mode
        self._geom_cache: dict[tuple[int, int], Geometry] = {}

    def geometry(self, src_hw: tuple[int, int]) -> Geometry:
        g = self._geom_cache.get(src_hw)
        if g is None:
            g = self._geom_cache[src_hw] = compute_geometry(src_hw, self.input_hw, self.mode)
        return g

    def __call__(self, frame: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, Geometry]:
        g = self.geometry(frame.shape[:2])
        return place(frame, g, out=out), g


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
    """``uint8[N, H, W, 3]`` (or ``[H, W, 3]``) RGB → ``float32[N, 3, H, W]`` (or ``[3, H, W]``),
    ``(x / 255 − mean) / std``."""
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    x = images.astype(np.float32) * (1.0 / 255.0)
    x -= mean
    x /= std
    if x.ndim == 3:
        return np.ascontiguousarray(x.transpose(2, 0, 1))
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
