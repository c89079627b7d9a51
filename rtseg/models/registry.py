"""Model registry: named variants of the four networks, the way timm does it.

``create_model("eunet-s", num_classes=1)`` builds a network; ``list_models()`` lists the names.
Each registered builder is a callable ``(num_classes: int, **kwargs) -> nn.Module``. The created
module carries ``rtseg_name`` and ``rtseg_kwargs`` so that a checkpoint can record exactly how to
rebuild it (``model.json``, see ``rtseg.checkpoint``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

from ..errors import RtsegError

_REGISTRY: dict[str, tuple[Callable[..., nn.Module], dict[str, Any], str]] = {}


def register_model(name: str, builder: Callable[..., nn.Module], description: str = "", **defaults: Any) -> None:
    """Register ``builder`` under ``name`` with default keyword arguments ``defaults``.

    Raises:
        ValueError: if ``name`` is already registered.
    """
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = (builder, dict(defaults), description)


def list_models() -> list[str]:
    """Return the sorted names of all registered models."""
    return sorted(_REGISTRY)


def model_description(name: str) -> str:
    """Return the one-line description given at registration (empty if none)."""
    return _REGISTRY[name][2] if name in _REGISTRY else ""


def create_model(name: str, num_classes: int = 1, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        name: a name from :func:`list_models` (e.g. ``"eunet"``, ``"eunet-s"``).
        num_classes: number of output channels C of the logits ``float32[N, C, H, W]``
            (1 for binary segmentation).
        **kwargs: override the variant's defaults (e.g. ``widths=[16, 32, 64, 128]``).

    Raises:
        RtsegError: unknown model name (the message lists the known names).
    """
    if name not in _REGISTRY:
        raise RtsegError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    builder, defaults, _ = _REGISTRY[name]
    merged = {**defaults, **kwargs}
    model = builder(num_classes=num_classes, **merged)
    model.rtseg_name = name
    # a weights *file* is an input of this construction only, not part of the architecture: the
    # checkpoint holds the trained weights, so model.json must not point at a file that may vanish
    model.rtseg_kwargs = {k: v for k, v in kwargs.items() if k != "pretrained_weights"}
    model.rtseg_num_classes = num_classes
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
