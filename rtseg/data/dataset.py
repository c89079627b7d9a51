"""PyTorch dataset over labelled samples, cached at the network input size, with augmentation.

Images are decoded once, placed into the network input (``stretch`` or ``letterbox``, see
:mod:`rtseg.data.transforms`) and kept in RAM as ``uint8``; each ``__getitem__`` applies the
(albumentations) augmentation and normalises.

Items: ``(image float32[3, H, W], target, valid float32[1, H, W])`` where ``target`` is
``float32[1, H, W]`` in {0, 1} for binary tasks or ``int64[H, W]`` class indices (``ignore_index``
for void) for multi-class, and ``valid`` is 0 on letterbox padding.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
import torch

from .folder import Sample, read_image, read_mask
from .transforms import compute_geometry, normalize, place


def default_augmentation(ignore_value: int = 0, square: bool = True):
    """Flips, 90° rotations (square inputs only: they would swap H and W), a mild affine and
    colour jitter (albumentations)."""
    from ..errors import require

    A = require("albumentations", "train", "training augmentation")

    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        *([A.RandomRotate90(p=0.5)] if square else []),
        A.Affine(scale=(0.85, 1.15), translate_percent=(-0.06, 0.06), rotate=(-20, 20), p=0.5,
                 border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_value),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5),
    ], seed=None)


class SegmentationDataset(torch.utils.data.Dataset):
    """Labelled images at the network input size.

    Args:
        samples: image/mask pairs (:func:`rtseg.data.folder.find_pairs`).
        input_hw: (H, W) network input in pixels.
        mean, std: RGB normalisation ([0, 1] scale).
        resize: ``"stretch"`` or ``"letterbox"``.
        binary: True → masks thresholded ``> 127``; False → class indices as stored.
        label_map: optional ``uint8[256]`` lookup applied to class-index masks (e.g. void → 255).
        ignore_index: class value excluded from multi-class losses/metrics.
        augment: an albumentations transform (called as ``augment(image=, masks=[mask, valid])``).
        reader: ``reader(sample) -> (uint8[h, w, 3] RGB, uint8[h, w] mask)`` for formats whose
            labels are not plain mask files (see :mod:`rtseg.data.formats`); default reads
            ``sample.image``/``sample.mask`` (binary: ``> 127``).
    """

    def __init__(self, samples: list[Sample], input_hw: tuple[int, int], mean, std, resize: str = "stretch",
                 binary: bool = True, label_map: np.ndarray | None = None, ignore_index: int = 255,
                 augment: Callable | None = None, reader: Callable | None = None):
        self.samples = list(samples)
        self.input_hw = tuple(input_hw)
        self.mean, self.std = mean, std
        self.binary = binary
        self.ignore_index = ignore_index
        self.augment = augment
        n = len(self.samples)
        H, W = self.input_hw
        self.images = np.empty((n, H, W, 3), np.uint8)
        self.masks = np.empty((n, H, W), np.uint8)
        self.valid = np.empty((n, H, W), np.uint8)
        for i, s in enumerate(self.samples):
            if reader is not None:
                img, m = reader(s)
            else:
                img, m = read_image(s.image), read_mask(s.mask, binary=binary)
            if label_map is not None:
                m = label_map[m]
            g = compute_geometry(img.shape[:2], self.input_hw, resize)
            place(img, g, out=self.images[i])
            pad = 0 if binary else ignore_index
            place(m, g, out=self.masks[i], interpolation=cv2.INTER_NEAREST, pad_value=pad)
            self.valid[i] = g.content_mask()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        img, mask, valid = self.images[i], self.masks[i], self.valid[i]
        if self.augment is not None:
            out = self.augment(image=img, masks=[mask, valid])
            img, (mask, valid) = out["image"], out["masks"]
        x = torch.from_numpy(normalize(np.ascontiguousarray(img), self.mean, self.std))
        v = torch.from_numpy(np.ascontiguousarray(valid, dtype=np.float32))[None]
        if self.binary:
            t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
        else:
            t = torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64))
        return x, t, v
