"""ContraFusionNet, docs/networks.md §3.

A SegFormer-style transformer encoder (widths 64/128/256/512, depths 3/4/6/3, heads 1/2/4/8, reduction
ratios 8/4/2/1) with an all-MLP decoder; during training an auxiliary CNN encoder (timm ``resnet50`` →
pyramid pooling → 512 ch at 1/32) is tied to encoder stage 4 by a symmetric InfoNCE loss (decision 2).

Only the transformer path is deployed: 17,787,796 trainable parameters at C = 20 (encoder 17,273,216,
decoder + head 514,580). The auxiliary branch and both projection heads live under ``model.contrast``;
they are trained, never run in ``eval()`` mode and never exported. ``contrastive=False`` builds the
deployed part only (it still loads a training checkpoint: the ``contrast.*`` tensors are skipped).

Input ``float32[N, 3, H, W]`` (ImageNet-normalised RGB), H and W multiples of 32.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import SegModel
from .registry import register_model

__all__ = ["ContraFusionNet", "EfficientMHA", "LayerNorm2d", "MixMLP", "PyramidPooling"]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (ε 1e-5). ``float32[N, C, H, W] -> same``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class OverlapPatchMerging(nn.Sequential):
    """Conv (k = patch, stride, pad = patch // 2, no bias) → LayerNorm2d (§3.1)."""

    def __init__(self, c_in: int, c_out: int, patch: int, stride: int):
        super().__init__(nn.Conv2d(c_in, c_out, patch, stride=stride, padding=patch // 2, bias=False), LayerNorm2d(c_out))


class EfficientMHA(nn.Module):
    """Efficient multi-head attention (§3.1): queries are all ``h·w`` tokens; keys = values are the tokens
    of a reducer Conv (k = r, stride r, bias) → LayerNorm2d (present also for r = 1). Standard multi-head
    attention with biases (Q, K, V, output projections ``c→c``), head width ``c / heads``.

    ``forward(x: float32[N, c, h, w]) -> float32[N, c, h, w]``; h, w multiples of r.
    """

    def __init__(self, c: int, heads: int, r: int):
        super().__init__()
        self.heads = heads
        self.reducer = nn.Sequential(nn.Conv2d(c, c, r, stride=r, bias=True), LayerNorm2d(c))
        self.q = nn.Linear(c, c)
        self.k = nn.Linear(c, c)
        self.v = nn.Linear(c, c)
        self.proj = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        tokens = x.flatten(2).transpose(1, 2)  # [N, h*w, c]
        reduced = self.reducer(x).flatten(2).transpose(1, 2)  # [N, h*w/r², c]
        hd = tokens.shape[-1] // self.heads
        q = self.q(tokens).unflatten(-1, (self.heads, hd)).transpose(1, 2)
        k = self.k(reduced).unflatten(-1, (self.heads, hd)).transpose(1, 2)
        v = self.v(reduced).unflatten(-1, (self.heads, hd)).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return self.proj(o).transpose(1, 2).unflatten(2, (h, w))


class MixMLP(nn.Sequential):
    """Conv 1×1 c→c (bias) → depthwise 3×3 c→4c (groups c, bias) → GELU → Conv 1×1 4c→c (bias) (§3.1)."""

    def __init__(self, c: int, expansion: int = 4):
        super().__init__(
            nn.Conv2d(c, c, 1),
            nn.Conv2d(c, c * expansion, 3, padding=1, groups=c),
            nn.GELU(),
            nn.Conv2d(c * expansion, c, 1),
        )


class SegFormerBlock(nn.Module):
    """``x = x + EMHA(LN(x))``; ``x = x + DropPath(MixMLP(LN(x)))`` on NCHW maps (§3.1)."""

    def __init__(self, c: int, heads: int, r: int, drop_path: float):
        super().__init__()
        from timm.layers import DropPath

        self.norm1 = LayerNorm2d(c)
        self.attn = EfficientMHA(c, heads, r)
        self.norm2 = LayerNorm2d(c)
        self.mlp = MixMLP(c)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class EncoderStage(nn.Module):
    """Patch merging → blocks → LayerNorm2d (§3.1)."""

    def __init__(self, c_in: int, c: int, patch: int, stride: int, depth: int, heads: int, r: int,
                 drop_paths: Sequence[float]):
        super().__init__()
        self.patch_merge = OverlapPatchMerging(c_in, c, patch, stride)
        self.blocks = nn.Sequential(*[SegFormerBlock(c, heads, r, dp) for dp in drop_paths[:depth]])
        self.norm = LayerNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(self.patch_merge(x)))


class PyramidPooling(nn.Module):
    """PSPNet pyramid pooling on the auxiliary CNN's 1/32 map (§3.3): for each bin b in (2, 3, 4, 6):
    AdaptiveAvgPool(b) → Conv 1×1 ``c_in → c_in/4`` (no bias) → BN → ReLU → bilinear back; concat with the
    input (``2·c_in``) → Conv 3×3 → ``c_out`` (no bias) → BN → ReLU. ResNet-50: 2048 + 4·512 = 4096 → 512.

    ``forward(x: float32[N, c_in, h, w]) -> float32[N, c_out, h, w]``.
    """

    def __init__(self, c_in: int, c_out: int = 512, bins: Sequence[int] = (2, 3, 4, 6)):
        super().__init__()
        c_b = c_in // 4
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(c_in, c_b, 1, bias=False), nn.BatchNorm2d(c_b), nn.ReLU())
            for b in bins
        )
        self.bottleneck = nn.Sequential(
            nn.Conv2d(c_in + len(bins) * c_b, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        outs = [x] + [F.interpolate(s(x), size=size, mode="bilinear", align_corners=False) for s in self.stages]
        return self.bottleneck(torch.cat(outs, dim=1))


def _projection_head(c_in: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(c_in, hidden), nn.ReLU(), nn.Linear(hidden, out))


class ContrastiveBranch(nn.Module):
    """The training-only auxiliary branch (§3 decision 2): timm CNN (``features_only``, its stride-32 map)
    → :class:`PyramidPooling` → ``aux_dim`` ch; GAP → 2-layer projection head → ``proj_dim``; plus the
    projection head for the transformer's stage-4 map. Both embeddings are L2-normalised.

    ``forward(x: float32[N, 3, H, W], s4: float32[N, c4, H/32, W/32]) -> (z: float32[N, proj_dim],
    z_aux: float32[N, proj_dim])``.
    """

    def __init__(self, c4: int, backbone: str = "resnet50", aux_dim: int = 512, proj_dim: int = 128,
                 proj_hidden: int | None = None):
        super().__init__()
        import timm

        self.cnn = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=(-1,))
        info = self.cnn.feature_info
        if info.reduction()[-1] != 32:
            raise ValueError(f"ContraFusionNet aux_backbone {backbone!r} must end at stride 32; got {info.reduction()[-1]}")
        self.ppm = PyramidPooling(info.channels()[-1], aux_dim)
        self.proj_t = _projection_head(c4, proj_hidden or c4, proj_dim)
        self.proj_aux = _projection_head(aux_dim, proj_hidden or aux_dim, proj_dim)

    def forward(self, x: torch.Tensor, s4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.ppm(self.cnn(x)[-1])
        z = F.normalize(self.proj_t(s4.mean(dim=(2, 3))), dim=1)
        z_aux = F.normalize(self.proj_aux(a.mean(dim=(2, 3))), dim=1)
        return z, z_aux


class ContraFusionNet(SegModel):
    """ContraFusionNet, docs/networks.md §3.

    Args:
        num_classes: C (20 in the paper's Cityscapes setup with void as a class; rtseg trains 19 with
            void → 255).
        embed_dims, depths, heads, reductions: encoder configuration (§3.1); defaults 64/128/256/512,
            3/4/6/3, 1/2/4/8, 8/4/2/1. Patch sizes 7/3/3/3, strides 4/2/2/2.
        decoder_dim: width of the all-MLP decoder (256).
        drop_path: final drop-path rate, linear from 0 over all blocks (0.2).
        contrastive: build the auxiliary contrastive branch (default True, decision 2).
        aux_backbone: timm CNN of the auxiliary branch (``"resnet50"``; a lighter one such as
            ``"resnet18"`` for tests); aux_dim: its pyramid-pooling width (512); proj_dim: embedding
            size (128).

    ``forward(x: float32[N, 3, H, W])``; H, W multiples of 32 (``ValueError`` otherwise):

    - ``eval()``: logits ``float32[N, C, H, W]`` (the original ends in a softmax; decision 1).
    - ``train()`` with the contrastive branch: ``{"logits": logits float32[N, C, H, W],
      "z": float32[N, 128], "z_aux": float32[N, 128]}`` — L2-normalised embeddings of encoder stage 4
      and of the auxiliary CNN for :func:`rtseg.training.aux_losses.info_nce` (positives on the
      diagonal). Loss = CE(ignore 255) + 0.5·Dice + 0.1·InfoNCE(z, z_aux). Without the branch, train mode
      returns the logits tensor.

    Use :meth:`deployed_parameters` / :meth:`num_deployed_parameters` for the deployed count
    (17,787,796 at C = 20); ``rtseg.models.count_parameters(model)`` also counts ``model.contrast``.
    """

    input_multiple = 32
    output_activation = "softmax"
    display_name = "ContraFusionNet"

    def __init__(
        self,
        num_classes: int = 19,
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (3, 4, 6, 3),
        heads: Sequence[int] = (1, 2, 4, 8),
        reductions: Sequence[int] = (8, 4, 2, 1),
        decoder_dim: int = 256,
        drop_path: float = 0.2,
        contrastive: bool = True,
        aux_backbone: str = "resnet50",
        aux_dim: int = 512,
        proj_dim: int = 128,
    ):
        super().__init__()
        if not (len(embed_dims) == len(depths) == len(heads) == len(reductions) == 4):
            raise ValueError("ContraFusionNet embed_dims, depths, heads and reductions need 4 entries each")
        self.num_classes = num_classes
        patches, strides = (7, 3, 3, 3), (4, 2, 2, 2)
        n_blocks = sum(depths)
        dpr = [drop_path * i / max(n_blocks - 1, 1) for i in range(n_blocks)]  # linear 0 → drop_path
        stages, c_prev, start = [], 3, 0
        for c, d, h, r, p, s in zip(embed_dims, depths, heads, reductions, patches, strides):
            stages.append(EncoderStage(c_prev, c, p, s, d, h, r, dpr[start:start + d]))
            c_prev, start = c, start + d
        self.encoder = nn.ModuleList(stages)
        self.scales = (1, 2, 4, 8)  # stage i is at 1/4 · 1/scale
        self.proj = nn.ModuleList(nn.Conv2d(c, decoder_dim, 1) for c in embed_dims)
        self.fuse = nn.Sequential(
            nn.Conv2d(4 * decoder_dim, decoder_dim, 1, bias=False), nn.ReLU(), nn.BatchNorm2d(decoder_dim)
        )
        self.head = nn.Conv2d(decoder_dim, num_classes, 1)
        self.contrast = (
            ContrastiveBranch(embed_dims[-1], aux_backbone, aux_dim, proj_dim) if contrastive else None
        )
        self._register_load_state_dict_pre_hook(self._skip_contrast_keys)

    def _skip_contrast_keys(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        if self.contrast is None:
            for k in [k for k in state_dict if k.startswith(prefix + "contrast.")]:
                del state_dict[k]

    def deployed_parameters(self):
        """The parameters of the deployed (transformer) path: everything except ``self.contrast``."""
        return (p for n, p in self.named_parameters() if not n.startswith("contrast."))

    def num_deployed_parameters(self) -> int:
        """Trainable parameters of the deployed path (17,787,796 at C = 20 with the default sizes)."""
        return sum(p.numel() for p in self.deployed_parameters() if p.requires_grad)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stage outputs ``[N, c_i, H/4/2^i, W/4/2^i]`` (c = 64, 128, 256, 512)."""
        feats = []
        for stage in self.encoder:
            x = stage(x)
            feats.append(x)
        return feats

    def decode(self, feats: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """All-MLP decoder (§3.2): upsample to 1/4 (align_corners=True) → Conv 1×1 → concat s4, s3, s2, s1
        → Conv 1×1 (no bias) → ReLU → BN → Conv 1×1 → C → bilinear to ``size`` (align_corners=False)."""
        q = (int(feats[0].shape[-2]), int(feats[0].shape[-1]))
        maps = []
        for f, proj, s in zip(feats, self.proj, self.scales):
            if s != 1:
                f = F.interpolate(f, size=q, mode="bilinear", align_corners=True)
            maps.append(proj(f))
        y = self.head(self.fuse(torch.cat(maps[::-1], dim=1)))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        self.check_input(x)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        feats = self.forward_features(x)
        logits = self.decode(feats, size)
        if not self.training or self.contrast is None:
            return logits
        z, z_aux = self.contrast(x, feats[-1])
        return {"logits": logits, "z": z, "z_aux": z_aux}


register_model(
    "contrafusionnet", ContraFusionNet,
    "ContraFusionNet (§3): SegFormer-style encoder + MLP decoder, 17.8M deployed params; "
    "ResNet-50 contrastive branch at training time only",
    # one block per stage, head width 16, ResNet-10t contrastive branch: the same code path, tiny
    test_config=dict(embed_dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), decoder_dim=32,
                     aux_backbone="resnet10t", aux_dim=32, proj_dim=16, input_size=64),
)
