"""The networks of docs/networks.md and their registry (``create_model``, ``list_models``).

Every network subclasses :class:`SegModel` (the model contract) and registers its variants in its own
module, next to its class; importing the modules below runs those registrations.
"""

from __future__ import annotations

from . import contrafusionnet, eunet, gmsrfnet, visionfusenet  # noqa: F401  (their registrations run here)
from .base import IMAGENET_MEAN, IMAGENET_STD, SegModel
from .contrafusionnet import ContraFusionNet
from .eunet import EUNet
from .gmsrfnet import GMSRFNet
from .registry import (
    ModelEntry,
    ModelTestConfig,
    count_parameters,
    create_model,
    list_models,
    model_description,
    model_entry,
    model_test_config,
    register_model,
    unregister_model,
)
from .visionfusenet import VisionFuseNet

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ContraFusionNet",
    "EUNet",
    "GMSRFNet",
    "ModelEntry",
    "ModelTestConfig",
    "SegModel",
    "VisionFuseNet",
    "count_parameters",
    "create_model",
    "list_models",
    "model_description",
    "model_entry",
    "model_test_config",
    "register_model",
    "unregister_model",
]
