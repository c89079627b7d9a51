"""Augmentation presets (albumentations) selected by ``TrainConfig.augment``.

* ``True`` — :func:`rtseg.data.dataset.default_augmentation` (flips, 90° rotations, mild affine, colour jitter).
* ``"robust"`` — :func:`robust_augmentation`: the default geometry plus the appearance shifts seen
  between endoscopy centres (colour/hue, gamma, brightness/contrast, blur and defocus, JPEG quality,
  anisotropic scale) and specular highlights (:class:`SpecularHighlights`).
* ``False`` — none.

Every preset is an ``A.Compose`` whose randomness comes only from ``set_random_seed`` (the training
loop re-seeds it per epoch and rank), so a fixed seed draws the same augmentations and ``--resume``
repeats them.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import RtsegError

AUGMENT_PRESETS = ("true (default)", "robust", "false (none)")


def _albumentations():
    from ..errors import require

    return require("albumentations", "train", "training augmentation")


class SpecularHighlights(_albumentations().ImageOnlyTransform):
    """Small saturated bright ellipses (light reflections on wet mucosa), image only.

    Args:
        count: (min, max) number of highlights per image.
        radius: (min, max) semi-axis length as a fraction of the shorter image side.
        p: probability of applying.

    ``apply`` takes ``uint8[H, W, 3]`` and returns a new ``uint8[H, W, 3]``: each ellipse is blended
    towards white (255) with a soft edge; the mask is never touched.
    """

    def __init__(self, count: tuple[int, int] = (1, 4), radius: tuple[float, float] = (0.01, 0.05), p: float = 0.5):
        super().__init__(p=p)
        if not (1 <= count[0] <= count[1]) or not (0 < radius[0] <= radius[1] <= 0.5):
            raise RtsegError(f"SpecularHighlights: count {count} / radius {radius} out of range; use 1 ≤ min ≤ max and 0 < radius ≤ 0.5")
        self.count, self.radius = tuple(count), tuple(radius)

    def get_params_dependent_on_data(self, params, data) -> dict:
        h, w = params["shape"][:2]
        s = min(h, w)
        rnd = self.py_random
        spots = []
        for _ in range(rnd.randint(*self.count)):
            ax = max(1, round(rnd.uniform(*self.radius) * s))
            ay = max(1, round(ax * rnd.uniform(0.4, 1.0)))
            spots.append((rnd.randrange(w), rnd.randrange(h), ax, ay, rnd.uniform(0, 180)))
        return {"spots": spots}

    def apply(self, img: np.ndarray, spots=(), **params) -> np.ndarray:
        alpha = np.zeros(img.shape[:2], np.float32)
        for cx, cy, ax, ay, angle in spots:
            cv2.ellipse(alpha, (cx, cy), (ax, ay), angle, 0, 360, 1.0, -1, cv2.LINE_AA)
        if not spots:
            return img
        alpha = cv2.GaussianBlur(alpha, (0, 0), 1.0)[..., None]
        return (img.astype(np.float32) * (1 - alpha) + 255.0 * alpha).clip(0, 255).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("count", "radius")


def robust_augmentation(ignore_value: int = 0, square: bool = True):
    """Cross-centre robustness preset: flips/rot90 (square inputs only), affine with independent x/y
    scale (aspect change), hue/saturation, gamma, brightness/contrast, blur or defocus, JPEG quality
    and specular highlights. Geometric transforms move image and masks together (masks filled with
    ``ignore_value`` outside the image); appearance transforms touch the image only."""
    A = _albumentations()
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        *([A.RandomRotate90(p=0.5)] if square else []),
        A.Affine(scale={"x": (0.8, 1.2), "y": (0.8, 1.2)}, translate_percent=(-0.06, 0.06), rotate=(-20, 20), p=0.6,
                 border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_value),
        A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=25, val_shift_limit=15, p=0.5),
        A.RandomGamma(gamma_limit=(70, 140), p=0.4),
        A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.5),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.Defocus(radius=(1, 3)), A.MotionBlur(blur_limit=(3, 5))], p=0.3),
        A.ImageCompression(quality_range=(40, 95), p=0.3),
        SpecularHighlights(p=0.4),
    ], seed=None)


def make_augmentation(preset, ignore_value: int = 0, square: bool = True):
    """The albumentations pipeline for ``preset`` (``True``/``"default"``, ``"robust"``, ``False``) or None.

    Raises:
        RtsegError: unknown preset.
    """
    from .dataset import default_augmentation

    if preset is False or preset == "none":
        return None
    if preset is True or preset == "default":
        return default_augmentation(ignore_value, square)
    if preset == "robust":
        return robust_augmentation(ignore_value, square)
    raise RtsegError(f"unknown augmentation {preset!r}; use one of {', '.join(AUGMENT_PRESETS)}")
