"""Mask overlay: class colour alpha-blended onto the frame where the mask is, optional contour.

The stream keeps frames in the decoder's planar YUV 4:2:0 (``yuv420p``) from decoder to encoder,
so the overlay blends the palette colour, converted to Y'CbCr with the frame's own matrix
(BT.601/BT.709) and range, into the Y plane at full resolution and into the Cb/Cr planes at half
resolution. Alpha blending is affine and so is RGB→Y'CbCr, hence this equals blending in RGB
(up to 4:2:0 chroma subsampling at mask edges) while saving two full-frame colour conversions per
frame. :meth:`Overlay.apply_rgb` is the RGB equivalent (image folders, tests).

Only pixels inside the mask's bounding box are touched; a frame whose mask is empty is passed on
unchanged (no copy). Class 0 (background) is never drawn.
"""

from __future__ import annotations

import math

import av
import cv2
import numpy as np

from ..data.transforms import Geometry, unplace

# AVColorSpace values (libavutil/pixfmt.h) → (Kr, Kb)
_KR_KB = {
    1: (0.2126, 0.0722),  # BT.709
    5: (0.299, 0.114),  # BT.470BG (= BT.601 625)
    6: (0.299, 0.114),  # SMPTE 170M (= BT.601 525)
    7: (0.212, 0.087),  # SMPTE 240M
    9: (0.2627, 0.0593),  # BT.2020 NCL
    10: (0.2627, 0.0593),
}


def default_palette(n: int) -> np.ndarray:
    """``uint8[n, 3]`` RGB: black for class 0, then green, red, blue, ... (deterministic)."""
    base = [(0, 0, 0), (0, 255, 0), (255, 0, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255)]
    out = [base[i] if i < len(base) else ((i * 67) % 256, (i * 131) % 256, (i * 199) % 256) for i in range(n)]
    return np.asarray(out, dtype=np.uint8)


def palette_from_meta(model_meta: dict, num_classes: int) -> np.ndarray:
    """The model's palette as ``uint8[K, 3]`` RGB with ``K = max(2, num_classes)`` (binary models
    have one logit channel but two classes); missing entries are filled from :func:`default_palette`."""
    k = max(2, int(num_classes))
    pal = default_palette(k)
    given = model_meta.get("palette") or []
    for i, c in enumerate(given[:k]):
        pal[i] = np.clip(np.asarray(c, dtype=np.int64)[:3], 0, 255)
    return pal


def rgb_to_ycbcr(rgb: np.ndarray, colorspace: int = 1, full_range: bool = False) -> np.ndarray:
    """``uint8[K, 3]`` RGB → ``uint8[K, 3]`` Y'CbCr with the matrix of AVColorSpace ``colorspace``
    (unknown → BT.709) in limited (16–235/240) or full range."""
    kr, kb = _KR_KB.get(int(colorspace), _KR_KB[1])
    kg = 1.0 - kr - kb
    x = rgb.astype(np.float64) / 255.0
    y = kr * x[:, 0] + kg * x[:, 1] + kb * x[:, 2]
    cb = (x[:, 2] - y) / (2 * (1 - kb))
    cr = (x[:, 0] - y) / (2 * (1 - kr))
    if full_range:
        out = np.stack([y * 255, cb * 255 + 128, cr * 255 + 128], 1)
    else:
        out = np.stack([16 + y * 219, 128 + cb * 224, 128 + cr * 224], 1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def frame_matrix(frame: av.VideoFrame) -> tuple[int, bool]:
    """(AVColorSpace, full_range) of a decoded frame; unspecified → BT.709 for ≥ 720 lines, else BT.601."""
    cs = int(getattr(frame, "colorspace", 2) or 2)
    if cs not in _KR_KB:
        cs = 1 if frame.height >= 720 else 6
    full = int(getattr(frame, "color_range", 0) or 0) == 2 or frame.format.name.startswith("yuvj")
    return cs, full


def plane_view(plane) -> np.ndarray:
    """Writable ``uint8[h, w]`` view of one PyAV video plane (line padding excluded)."""
    a = np.frombuffer(plane, dtype=np.uint8).reshape(plane.height, plane.line_size)
    return a[:, : plane.width]


class Overlay:
    """Draws class masks on frames.

    Args:
        palette: ``uint8[K, 3]`` RGB per class (class 0 = background, not drawn).
        alpha: blend weight of the class colour in [0, 1] (0 = invisible, 1 = opaque).
        contour: also draw the outline of each class region at full opacity.
        contour_px: outline thickness in pixels at 720 lines (scaled with the frame height).
    """

    def __init__(self, palette: np.ndarray, alpha: float = 0.5, contour: bool = False, contour_px: int = 3):
        if not 0.0 <= alpha <= 1.0:
            from ..errors import RtsegError

            raise RtsegError(f"--alpha must be in [0, 1], got {alpha}; e.g. --alpha 0.5")
        self.palette = np.asarray(palette, dtype=np.uint8)
        self.alpha = float(alpha)
        self.contour = bool(contour)
        self.contour_px = int(contour_px)
        self._luts: dict[tuple[int, bool], list[np.ndarray]] = {}
        self._drawn = np.zeros(256, dtype=bool)
        self._drawn[1 : len(self.palette)] = True

    # -- YUV 4:2:0 path (the stream) ---------------------------------------------------------------
    def _yuv_luts(self, cs: int, full: bool) -> list[np.ndarray]:
        key = (cs, full)
        luts = self._luts.get(key)
        if luts is None:
            ycc = rgb_to_ycbcr(self.palette, cs, full)
            luts = []
            for c in range(3):
                lut = np.zeros(256, dtype=np.uint8)
                lut[: len(ycc)] = ycc[:, c]
                luts.append(lut)
            self._luts[key] = luts
        return luts

    def apply_yuv420(self, frame: av.VideoFrame, mask: np.ndarray, geom: Geometry) -> av.VideoFrame:
        """Overlay a network-size class mask on a decoded frame.

        Args:
            frame: ``yuv420p``/``yuvj420p`` frame of ``geom.src_hw`` pixels; never modified (decoder
                frames may be reference pictures).
            mask: ``uint8[H, W]`` class indices at the network input size ``geom.dst_hw``.
            geom: how the frame was placed into the network input.

        Returns:
            ``frame`` itself when nothing is drawn, else a new frame (same format, pts, time_base).
        """
        y0, y1, x0, x1 = geom.box
        crop = mask[y0:y1, x0:x1]
        drawn = self._drawn[crop]
        if self.alpha <= 0.0 and not self.contour or not drawn.any():
            return frame
        out = av.VideoFrame(frame.width, frame.height, frame.format.name)
        out.pts = frame.pts
        out.time_base = frame.time_base
        for attr in ("colorspace", "color_range"):
            try:
                setattr(out, attr, getattr(frame, attr))
            except (AttributeError, TypeError, ValueError):
                pass
        src_planes = [plane_view(p) for p in frame.planes]
        dst_planes = [plane_view(p) for p in out.planes]
        for s, d in zip(src_planes, dst_planes):
            np.copyto(d, s)
        luts = self._yuv_luts(*frame_matrix(frame))
        # bounding box of the drawn classes, in crop (mask) pixels
        bx, by, bw, bh = cv2.boundingRect(drawn.view(np.uint8))
        classes = [k for k in np.flatnonzero(np.bincount(crop.ravel(), minlength=1)) if self._drawn[k]]
        ch, cw = crop.shape
        for d, lut in zip(dst_planes, luts):
            ph, pw = d.shape
            sy, sx = ph / ch, pw / cw
            Y0, Y1 = int(math.floor(by * sy)), min(ph, int(math.ceil((by + bh) * sy)))
            X0, X1 = int(math.floor(bx * sx)), min(pw, int(math.ceil((bx + bw) * sx)))
            if Y1 <= Y0 or X1 <= X0:
                continue
            if self.alpha > 0:
                # nearest-neighbour mask at plane resolution (unplace for luma), used inside the box
                if (Y1 - Y0) * (X1 - X0) < 0.3 * ph * pw:  # small objects: upscale only their box
                    m = _nearest_region(crop, (ph, pw), (Y0, Y1, X0, X1))
                elif (ph, pw) == geom.src_hw:
                    m = unplace(mask, geom)[Y0:Y1, X0:X1]
                else:
                    m = cv2.resize(crop, (pw, ph), interpolation=cv2.INTER_NEAREST)[Y0:Y1, X0:X1]
                self._blend(d[Y0:Y1, X0:X1], m, lut, classes)
            if self.contour:
                self._draw_contours(d, crop, lut, (sy, sx), ph)
        return out

    def _blend(self, roi: np.ndarray, m: np.ndarray, lut: np.ndarray, classes: list[int]) -> None:
        """``roi = (1 − α)·roi + α·colour`` where ``m`` (class indices) is a drawn class; in place.

        OpenCV kernels only (SIMD, GIL released): one scaled copy + one masked copy per class, or
        a colour LUT + weighted sum when more than two classes are present.
        """
        a = self.alpha
        if len(classes) <= 2:
            for k in classes:
                blended = cv2.convertScaleAbs(roi, alpha=1.0 - a, beta=a * float(lut[k]))
                sel = m if len(classes) == 1 else cv2.compare(m, int(k), cv2.CMP_EQ)
                cv2.copyTo(blended, sel, roi)
        else:
            blended = cv2.addWeighted(roi, 1.0 - a, cv2.LUT(m, lut), a, 0.0)
            cv2.copyTo(blended, m, roi)

    def _draw_contours(self, plane: np.ndarray, crop: np.ndarray, lut: np.ndarray, scale, full_h: int) -> None:
        sy, sx = scale
        # thickness relative to the luma height (chroma planes are half height → half thickness)
        t = max(1, round(self.contour_px * full_h / 720))
        for k in np.unique(crop):
            if not self._drawn[k]:
                continue
            cs, _ = cv2.findContours((crop == k).view(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
            pts = [np.rint((c.reshape(-1, 2) + 0.5) * (sx, sy) - 0.5).astype(np.int32) for c in cs]
            if pts:
                _polylines(plane, pts, int(lut[k]), t)

    # -- RGB path ------------------------------------------------------------------------------------
    def apply_rgb(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Overlay in RGB, in place. ``image``: ``uint8[h, w, 3]`` RGB; ``mask``: ``uint8[h, w]``
        class indices at the image size. Returns ``image``."""
        drawn = self._drawn[mask]
        if not drawn.any():
            return image
        if self.alpha > 0:
            colour = self.palette[np.minimum(mask, len(self.palette) - 1)]
            blended = cv2.addWeighted(image, 1.0 - self.alpha, colour, self.alpha, 0.0)
            np.copyto(image, blended, where=drawn[..., None])
        if self.contour:
            t = max(1, round(self.contour_px * image.shape[0] / 720))
            for k in np.unique(mask):
                if self._drawn[k]:
                    cs, _ = cv2.findContours((mask == k).view(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
                    cv2.drawContours(image, cs, -1, tuple(int(v) for v in self.palette[k]), t)
        return image


def _nearest_region(crop: np.ndarray, full_hw: tuple[int, int], region: tuple[int, int, int, int]) -> np.ndarray:
    """Rows ``Y0:Y1`` × columns ``X0:X1`` of ``crop`` upscaled to ``full_hw`` by nearest neighbour
    (source index ``floor(i · src / dst)``, as ``cv2.resize(..., INTER_NEAREST)``), ``uint8``."""
    Y0, Y1, X0, X1 = region
    ph, pw = full_hw
    ch, cw = crop.shape
    ys = np.minimum((np.arange(Y0, Y1) * ch) // ph, ch - 1)
    xs = np.minimum((np.arange(X0, X1) * cw) // pw, cw - 1)
    return np.ascontiguousarray(crop.take(ys, axis=0).take(xs, axis=1))


def _polylines(plane: np.ndarray, pts: list[np.ndarray], value: int, thickness: int) -> None:
    if plane.flags.c_contiguous:
        cv2.polylines(plane, pts, True, value, thickness, lineType=cv2.LINE_8)
    else:  # a padded plane view: draw on a copy and write it back
        tmp = np.ascontiguousarray(plane)
        cv2.polylines(tmp, pts, True, value, thickness, lineType=cv2.LINE_8)
        plane[...] = tmp
