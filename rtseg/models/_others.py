"""Registers VisionFuseNet, ContraFusionNet and GMSRF-Net (docs/networks.md §1, §3, §4)."""

from __future__ import annotations

from .contrafusionnet import ContraFusionNet
from .gmsrfnet import GMSRFNet
from .registry import register_model
from .visionfusenet import VisionFuseNet

register_model(
    "visionfusenet-effv2b3", VisionFuseNet,
    "VisionFuseNet (§1), EfficientNetV2-B3 backbone: 17.0M params, 8.4 GMAC @256²",
    backbone="tf_efficientnetv2_b3",
)
register_model(
    "visionfusenet", VisionFuseNet,
    "VisionFuseNet (§1), alias of visionfusenet-effv2b3; backbone= accepts e.g. tf_efficientnet_lite0",
    backbone="tf_efficientnetv2_b3",
)
register_model(
    "visionfusenet-densenet121", VisionFuseNet,
    "VisionFuseNet (§1), DenseNet121 backbone: 18.5M params",
    backbone="densenet121",
)
register_model(
    "visionfusenet-lite0-rt", VisionFuseNet,
    "VisionFuseNet (§1) real-time variant for CPUs: EfficientNet-Lite0 backbone, MHSAR width 64 (1 head), "
    "decoder 32, low 16; 1.36M params; the default model (README model card)",
    backbone="tf_efficientnet_lite0", dim=64, heads=1, mlp_dim=128, decoder_dim=32, low_dim=16,
)
register_model(
    "contrafusionnet", ContraFusionNet,
    "ContraFusionNet (§3): SegFormer-style encoder + MLP decoder, 17.8M deployed params; "
    "ResNet-50 contrastive branch at training time only",
)
register_model(
    "gmsrfnet", GMSRFNet,
    "GMSRF-Net (§4): Res2Net-50 + two GMSRF modules, 47.0M params, ~190 GMAC @256² (accuracy reference)",
)

__all__ = ["ContraFusionNet", "GMSRFNet", "VisionFuseNet"]
