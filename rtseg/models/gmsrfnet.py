"""GMSRF-Net, docs/networks.md §4.

Global multi-scale residual fusion for polyp segmentation: a Res2Net-50 (stem replaced) feeds four
streams (32 ch @1/1, 64 @1/2, 128 @1/4, 256 @1/8) that two GMSRF modules fuse densely, each fusion gated
by cross multi-scale attention (CMSA) and followed by squeeze-excitation + 3×3 conv (MSFS); a U-Net-like
decoder with three deep-supervision heads. Heavy (≈190 GMAC at 256²): rtseg's accuracy reference.

Parameters (C = 1): 47,043,853 trainable. The spec's 47,049,229 (and its 5,434,368 per GMSRF module)
also counts 5,376 parameters the authors construct but never use: BatchNorms (``bn1``/``bn2``/``bn3``)
inside their ×4 and ×8 resamplers (``upsample_4x``, ``downsample_8x``, ...) whose ``forward`` is
Conv → ReLU only (2,688 per module: per fusion layer 4 ×4-chains × 2 BN(32) + 2 ×8-chains × 3 BN(32)).
rtseg drops them like the other unused modules (decision 1); the difference is 0.011 %. The authors'
printed count, 54,972,021, includes a third (unused) GMSRF module, an unused encoder, the Res2Net stem
and its classifier.

Input ``float32[N, 3, H, W]`` (ImageNet-normalised RGB), H and W multiples of 8.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import SegModel
from .registry import register_model

__all__ = ["BasicConv2d", "CMSA", "GMSRFModule", "GMSRFNet", "RFB"]


class BasicConv2d(nn.Sequential):
    """Conv (no bias) → BN → ReLU (§4.1). The authors build the ReLU and never call it; rtseg applies it
    (decision 2; no parameter change). ``relu=False`` gives Conv → BN (used only for the logits layer)."""

    def __init__(self, c_in: int, c_out: int, kernel_size, padding=0, dilation: int = 1, relu: bool = True):
        layers = [nn.Conv2d(c_in, c_out, kernel_size, padding=padding, dilation=dilation, bias=False),
                  nn.BatchNorm2d(c_out)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def _rfb_branch(c_in: int, c_out: int, k: int, d: int) -> nn.Sequential:
    """One RFB branch: 1×1 → 1×k → k×1 → 3×3 dilation d, all BasicConv2d of width ``c_out``, "same" padding."""
    return nn.Sequential(
        BasicConv2d(c_in, c_out, 1),
        BasicConv2d(c_out, c_out, (1, k), padding=(0, k // 2)),
        BasicConv2d(c_out, c_out, (k, 1), padding=(k // 2, 0)),
        BasicConv2d(c_out, c_out, 3, padding=d, dilation=d),
    )


class RFB(nn.Module):
    """Receptive-field block ``RFB(c_in, c_out)`` (§4.1): four branches (1×1; 1×1 → 1×k → k×1 → 3×3 dil d
    for (k, d) = (3, 3), (5, 5), (7, 7)), ``ReLU(conv_cat_3×3(concat) + conv_res_1×1(x))``.

    ``forward(x: float32[N, c_in, h, w]) -> float32[N, c_out, h, w]``.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.branch0 = BasicConv2d(c_in, c_out, 1)
        self.branch1 = _rfb_branch(c_in, c_out, 3, 3)
        self.branch2 = _rfb_branch(c_in, c_out, 5, 5)
        self.branch3 = _rfb_branch(c_in, c_out, 7, 7)
        self.conv_cat = BasicConv2d(4 * c_out, c_out, 3, padding=1)
        self.conv_res = BasicConv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cat = torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], dim=1)
        return F.relu(self.conv_cat(cat) + self.conv_res(x))


def _resampler(c_in: int, c_out: int, steps: int) -> nn.Sequential:
    """Resample by 2^|steps|: ``steps > 0`` = that many [Conv 4×4 s2 p1 (no bias) → ReLU] (down),
    ``steps < 0`` = [ConvT 4×4 s2 p1 (no bias) → ReLU] (up); the first maps ``c_in → c_out``."""
    layers: list[nn.Module] = []
    conv = nn.Conv2d if steps > 0 else nn.ConvTranspose2d
    for i in range(abs(steps)):
        layers += [conv(c_in if i == 0 else c_out, c_out, 4, stride=2, padding=1, bias=False), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class CMSA(nn.Module):
    """Cross multi-scale attention (§4.2): concat of the three other streams resampled to the target
    (3·k ch) → Conv 3×3 → k (no bias) → Conv 1×1 → 1 (no bias) → sigmoid → + 1: a gain map in [1, 2].

    ``forward(a, b, c: float32[N, k, h, w]) -> float32[N, 1, h, w]``.
    """

    def __init__(self, k: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(3 * k, k, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(k, 1, 1, bias=False)

    def forward(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv2(self.conv1(torch.cat([a, b, c], dim=1)))) + 1


class SELayer(nn.Module):
    """Squeeze-excitation: GAP → Linear c→c/8 (no bias) → ReLU → Linear (no bias) → sigmoid → scale."""

    def __init__(self, c: int, reduction: int = 8):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(c, c // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(c // reduction, c, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.sigmoid(self.fc(x.mean(dim=(2, 3))))
        return x * y[:, :, None, None]


class _FusionLayer(nn.Module):
    """One dense fusion layer of a GMSRF module (layers 2, 3 and 4 of §4.2) for all four streams.

    For stream s: resample the other three previous-layer outputs to s (k ch each); concat
    ``[inputs of s..., the three resampled]`` → BasicConv2d 1×1 → ``mid[s]`` → × CMSA_s(resampled) →
    SE(mid[s]) → BasicConv2d 3×3 → ``out[s]``.
    """

    def __init__(self, in_widths: Sequence[int], prev_widths: Sequence[int], mid: Sequence[int],
                 out: Sequence[int], k: int):
        super().__init__()
        self.resample = nn.ModuleList()
        for s in range(4):
            self.resample.append(nn.ModuleList(_resampler(prev_widths[o], k, s - o) for o in range(4) if o != s))
        self.fuse = nn.ModuleList(BasicConv2d(in_widths[s] + 3 * k, mid[s], 1) for s in range(4))
        self.cmsa = nn.ModuleList(CMSA(k) for _ in range(4))
        self.se = nn.ModuleList(SELayer(mid[s]) for s in range(4))
        self.conv = nn.ModuleList(BasicConv2d(mid[s], out[s], 3, padding=1) for s in range(4))

    def forward(self, inputs: Sequence[Sequence[torch.Tensor]], prev: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        outs = []
        for s in range(4):
            others = [o for o in range(4) if o != s]
            rs = [r(prev[o]) for r, o in zip(self.resample[s], others)]
            y = self.fuse[s](torch.cat([*inputs[s], *rs], dim=1)) * self.cmsa[s](*rs)
            outs.append(self.conv[s](self.se[s](y)))
        return outs


class GMSRFModule(nn.Module):
    """Global multi-scale residual fusion module (§4.2) on streams (x @1/1, y @1/2, v @1/4, w @1/8) of
    widths ``w = (c, 2c, 4c, 8c)`` (c = 32).

    Layer 1: BasicConv2d 3×3 per stream → ``(k, k, 2k, 2k)`` with k = c. Layers 2 and 3: dense fusion to
    the stream width, × CMSA, SE, 3×3 → ``(k, k, 2k, 2k)``. Layer 4: the 1×1 keeps the concat width, SE on
    it, 3×3 back to the stream width. Output: local residual ``(x + x4, y + y4, v + v4, w + w4)``.
    5,431,680 params at c = 32 (the spec's 5,434,368 includes 2,688 never-used BN params; module docstring).

    ``forward(x, y, v, w) -> (x', y', v', w')`` with unchanged shapes.
    """

    def __init__(self, c: int = 32):
        super().__init__()
        widths = (c, 2 * c, 4 * c, 8 * c)
        k1, k2 = c, 2 * c
        l1 = (k1, k1, k2, k2)
        self.layer1 = nn.ModuleList(BasicConv2d(widths[s], l1[s], 3, padding=1) for s in range(4))
        in2 = [widths[s] + l1[s] for s in range(4)]
        in3 = [in2[s] + l1[s] for s in range(4)]
        in4 = [in3[s] + l1[s] for s in range(4)]
        self.layer2 = _FusionLayer(in2, l1, widths, l1, k1)
        self.layer3 = _FusionLayer(in3, l1, widths, l1, k1)
        self.layer4 = _FusionLayer(in4, l1, [w + 3 * k1 for w in in4], widths, k1)

    def forward(self, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, w: torch.Tensor):
        s0 = [x, y, v, w]
        s1 = [m(t) for m, t in zip(self.layer1, s0)]
        s2 = self.layer2([[s0[i], s1[i]] for i in range(4)], s1)
        s3 = self.layer3([[s0[i], s1[i], s2[i]] for i in range(4)], s2)
        s4 = self.layer4([[s0[i], s1[i], s2[i], s3[i]] for i in range(4)], s3)
        return tuple(a + b for a, b in zip(s0, s4))


class GMSRFNet(SegModel):
    """GMSRF-Net, docs/networks.md §4.3.

    Args:
        num_classes: C (1 for binary polyp masks; the deep-supervision heads also output C channels).
        backbone: timm ResNet-family model (``"res2net50_26w_4s"``); only ``layer1..layer4`` are kept.
            Built with ``avg_down=True`` so its downsampling shortcuts are AvgPool(ceil) → Conv 1×1 → BN,
            as in the authors' Res2Net-50 v1b (timm's default is a strided 1×1 conv; same parameters).
            The stem (deep stem, max-pool) is not used: a BasicConv2d 3×3 3→64 at full resolution feeds
            ``layer1``, so layers 1..4 run at 1/1, 1/2, 1/4, 1/8. A smaller ResNet (``"resnet18"``) runs
            the same code for tests.
        width: stream base width c (32): streams c/2c/4c/8c, RFB/1×1 reductions to them, resamplers
            and CMSA at c.
        num_modules: GMSRF modules in sequence (2).

    ``forward(x: float32[N, 3, H, W])``; H, W multiples of 8 (``ValueError`` otherwise):

    - ``eval()``: main logits ``float32[N, C, H, W]`` (the original ends in a sigmoid; decision 3).
    - ``train()``: ``{"logits": main, "ds2": …, "ds4": …, "ds8": …}``, all logits ``float32[N, C, H, W]``;
      the deep-supervision maps (from the 1/2, 1/4, 1/8 decoder levels) are upsampled bilinearly
      (decision 4). Train with :func:`rtseg.training.aux_losses.deep_supervision_loss`.

    The last layer is Conv 3×3 32→C → BN without ReLU (a ReLU on logits would make every pixel
    foreground; the authors' BasicConv2d never applied it either).
    """

    input_multiple = 8
    output_activation = "sigmoid"
    display_name = "GMSRF-Net"

    def __init__(self, num_classes: int = 1, backbone: str = "res2net50_26w_4s", width: int = 32,
                 num_modules: int = 2):
        super().__init__()
        import timm

        self.num_classes = num_classes
        msg = f"GMSRF-Net backbone {backbone!r} must be a timm ResNet-family model with layer1..layer4 (e.g. res2net50_26w_4s)"
        try:
            net = timm.create_model(backbone, pretrained=False, avg_down=True)
        except TypeError:  # not a timm ResNet: it does not take avg_down
            raise ValueError(msg) from None
        if not all(hasattr(net, f"layer{i}") for i in range(1, 5)):
            raise ValueError(msg)
        chans = [net.feature_info[i]["num_chs"] for i in range(1, 5)]
        stem_out = net.bn1.num_features
        self.stem = BasicConv2d(3, stem_out, 3, padding=1)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        del net
        c = width
        self.reduce1 = BasicConv2d(chans[0], c, 1)
        self.reduce2 = RFB(chans[1], 2 * c)
        self.reduce3 = RFB(chans[2], 4 * c)
        self.reduce4 = RFB(chans[3], 8 * c)
        self.gmsrf = nn.ModuleList(GMSRFModule(c) for _ in range(num_modules))
        self.ds8 = nn.Conv2d(8 * c, num_classes, 1)
        self.up4 = nn.ConvTranspose2d(8 * c, 4 * c, 4, stride=2, padding=1)
        self.sel3 = nn.Conv2d(8 * c, 4 * c, 3, padding=1, bias=False)
        self.ds4 = nn.Conv2d(4 * c, num_classes, 1)
        self.up3 = nn.ConvTranspose2d(4 * c, 2 * c, 4, stride=2, padding=1)
        self.sel2 = nn.Conv2d(4 * c, 2 * c, 3, padding=1, bias=False)
        self.ds2 = nn.Conv2d(2 * c, num_classes, 1)
        self.up1 = nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1)
        self.final1 = BasicConv2d(2 * c, c, 3, padding=1)
        self.final2 = BasicConv2d(c, num_classes, 3, padding=1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        self.check_input(x)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        f1 = self.layer1(self.stem(x))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        r = (self.reduce1(f1), self.reduce2(f2), self.reduce3(f3), self.reduce4(f4))
        n = r
        for m in self.gmsrf:
            n = m(*n)
        n1, n2, n3, n4 = (a + b for a, b in zip(n, r))  # global residual
        level3 = self.sel3(torch.cat([n3, self.up4(n4)], dim=1))
        level2 = self.sel2(torch.cat([n2, self.up3(level3)], dim=1))
        out = self.final2(self.final1(torch.cat([n1, self.up1(level2)], dim=1)))
        if not self.training:
            return out
        return {"logits": out, "ds2": _upsample(self.ds2(level2), size), "ds4": _upsample(self.ds4(level3), size),
                "ds8": _upsample(self.ds8(n4), size)}


def _upsample(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of deep-supervision logits to the input size (decision 4)."""
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)


register_model(
    "gmsrfnet", GMSRFNet,
    "GMSRF-Net (§4): Res2Net-50 + two GMSRF modules, 47.0M params, ~190 GMAC @256² (accuracy reference)",
    # ResNet-10t layers instead of Res2Net-50 and stream width 8: the same code path, tiny
    test_config=dict(backbone="resnet10t", width=8, input_size=32),
)
