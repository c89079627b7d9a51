"""The networks of docs/networks.md and their registry (``create_model``, ``list_models``)."""

from __future__ import annotations

from .eunet import EUNet
from .registry import count_parameters, create_model, list_models, model_description, register_model

register_model("eunet", EUNet, "EUNet as published (§2): widths 64/128/256/512, 4.56M params", widths=(64, 128, 256, 512))
register_model("eunet-s", EUNet, "EUNet real-time variant: widths 32/64/128/256", widths=(32, 64, 128, 256))

# The other networks register themselves in their own modules (imported below when present).
from . import _others  # noqa: E402,F401

__all__ = ["EUNet", "count_parameters", "create_model", "list_models", "model_description", "register_model"]
