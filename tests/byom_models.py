"""Third-party segmentation models for the bring-your-own-model tests, built offline (no pretrained
weights) and trained for a few steps on real Kvasir-SEG images so that they segment something.

* :func:`tiny_unet` — segmentation_models_pytorch ``Unet`` on a timm MobileNetV3-Small encoder
  (``encoder_weights=None``), one logit channel at full resolution;
* :func:`tiny_segformer` — transformers ``SegformerForSemanticSegmentation`` from a small config
  (``num_labels=1``), logits at 1/4 of the input (``.logits`` of its output).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DATA = Path(os.environ.get("RTSEG_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
KVASIR = DATA / "kvasir-seg-256"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def tiny_unet() -> torch.nn.Module:
    """smp ``Unet`` (MobileNetV3-Small-100 encoder from timm, random init), 1 class."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    return smp.Unet("tu-mobilenetv3_small_100", encoder_weights=None, classes=1, decoder_channels=(64, 32, 16, 16, 8))


def tiny_segformer() -> torch.nn.Module:
    """transformers SegFormer from a small config (4 stages of 1 block, widths 16..128), 1 label."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    cfg = SegformerConfig(num_channels=3, num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1],
                          hidden_sizes=[16, 32, 64, 128], num_attention_heads=[1, 1, 2, 4], mlp_ratios=[2, 2, 2, 2],
                          decoder_hidden_size=64, num_labels=1)
    return SegformerForSemanticSegmentation(cfg)


def kvasir_batch(hw: tuple[int, int], n: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` Kvasir-SEG images of ``split`` (rtseg's split), preprocessed like the runtime: normalised
    ``float32[n, 3, H, W]`` and masks ``float32[n, 1, H, W]`` in {0, 1}."""
    import cv2

    from rtseg.data.folder import load_split, read_sample

    xs, ys = [], []
    for s in load_split(KVASIR, split)[:n]:
        img, mask = read_sample(s)
        img = cv2.resize(img, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)
        xs.append(((img.astype(np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1))
        ys.append((mask > 0).astype(np.float32)[None])
    return torch.from_numpy(np.stack(xs).astype(np.float32)), torch.from_numpy(np.stack(ys))


def logits_of(y) -> torch.Tensor:
    return y.logits if hasattr(y, "logits") else y


def train_few_steps(model: torch.nn.Module, hw: tuple[int, int], steps: int = 12, images: int = 48,
                    batch: int = 4, lr: float = 3e-3) -> list[float]:
    """Adam + BCE-with-logits (positives weighted 4×) for ``steps`` steps on real Kvasir train images (logits upsampled to the
    mask when the model predicts at a stride). Returns the losses; leaves the model in eval mode."""
    torch.manual_seed(0)
    x, y = kvasir_batch(hw, images)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        i = (step * batch) % images
        z = logits_of(model(x[i:i + batch]))
        if z.shape[-2:] != hw:
            z = F.interpolate(z, size=hw, mode="bilinear", align_corners=False)
        # polyps cover ~15 % of the pixels: weight them so a few steps do not settle on "all background"
        loss = F.binary_cross_entropy_with_logits(z, y[i:i + batch], pos_weight=torch.tensor(4.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    _recalibrate_batchnorm(model, x, batch)
    model.eval()
    return losses


@torch.no_grad()
def _recalibrate_batchnorm(model: torch.nn.Module, x: torch.Tensor, batch: int) -> None:
    """Re-estimate BatchNorm running statistics as the plain average over ``x`` (a few training steps at
    momentum 0.1 leave them far from the data: eval-mode outputs would not be the trained ones)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for i in range(0, len(x), batch):
        model(x[i:i + batch])


def meta(name: str, hw: tuple[int, int], stride: int = 1, **output) -> dict:
    """Metadata dict of a binary polyp model on Kvasir (labelled data for calibration and the gate)."""
    return {"name": name, "task": "binary", "classes": ["background", "polyp"],
            "input": {"size": list(hw), "mean": MEAN, "std": STD},
            "output": {"kind": "logits", "stride": stride, **output},
            "data": {"root": str(KVASIR), "format": "polyp"}}
