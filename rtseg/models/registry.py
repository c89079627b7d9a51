"""Model registry: named variants of the networks, the way timm does it.

``create_model("eunet-s", num_classes=1)`` builds a network; ``list_models()`` lists the names. Each
network registers its variants in its own module, next to its class, with a small test configuration
(:class:`ModelTestConfig`) from which the contract test (``tests/models/test_model_contract.py``) builds a
tiny copy of every entry. A registered builder is a callable ``(num_classes: int, **kwargs) -> nn.Module``
(normally a :class:`~rtseg.models.base.SegModel` subclass). The created module carries ``rtseg_name``,
``rtseg_kwargs`` and ``rtseg_num_classes`` so that a checkpoint can record exactly how to rebuild it
(``model.json``, see ``rtseg.checkpoint``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch.nn as nn

from ..errors import RtsegError

__all__ = [
    "ModelEntry",
    "ModelTestConfig",
    "count_parameters",
    "create_model",
    "list_models",
    "model_description",
    "model_entry",
    "model_test_config",
    "register_model",
    "unregister_model",
]


@dataclass(frozen=True)
class ModelTestConfig:
    """A tiny configuration of a registered model, for tests (seconds on a CPU, same code path).

    Attributes:
        kwargs: keyword arguments given to :func:`create_model` on top of the entry's defaults (small
            widths, depths, a light backbone).
        input_size: ``(H, W)`` in pixels of the test input; multiples of the network's ``input_multiple``.
    """

    kwargs: Mapping[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int] = (64, 64)

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> "ModelTestConfig":
        """``dict(kwargs..., input_size=64)`` → a config; ``input_size`` is a side or ``(H, W)`` (pixels).

        Raises:
            ValueError: ``input_size`` is missing or not one or two positive ints.
        """
        config = dict(config)
        if "input_size" not in config:
            raise ValueError("test_config needs input_size (pixels), e.g. dict(widths=(8, 16), input_size=64)")
        size = config.pop("input_size")
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if len(hw) != 2 or not all(isinstance(s, int) and s > 0 for s in hw):
            raise ValueError(f"test_config input_size must be a positive int or (H, W); got {size!r}")
        return cls(kwargs=config, input_size=(int(hw[0]), int(hw[1])))


@dataclass(frozen=True)
class ModelEntry:
    """One registry entry: ``builder(num_classes=..., **defaults)`` builds the variant ``name``."""

    name: str
    builder: Callable[..., nn.Module]
    defaults: Mapping[str, Any]
    description: str = ""
    test_config: ModelTestConfig | None = None


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    builder: Callable[..., nn.Module],
    description: str = "",
    test_config: ModelTestConfig | Mapping[str, Any] | None = None,
    **defaults: Any,
) -> None:
    """Register ``builder`` under ``name`` with default keyword arguments ``defaults``.

    Args:
        name: the registry name (e.g. ``"eunet-s"``).
        builder: ``(num_classes: int, **kwargs) -> nn.Module``, normally a ``SegModel`` subclass.
        description: one line for ``rtseg train --help`` and the docs.
        test_config: a tiny configuration for the contract test, as a :class:`ModelTestConfig` or as
            ``dict(kwargs..., input_size=64)``. Every built-in entry has one; without it
            :func:`model_test_config` raises and the contract test fails for the entry.
        **defaults: the variant's keyword arguments (e.g. ``widths=(32, 64, 128, 256)``).

    Raises:
        ValueError: ``name`` is already registered, or ``test_config`` has no valid ``input_size``.
    """
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    if test_config is not None and not isinstance(test_config, ModelTestConfig):
        test_config = ModelTestConfig.from_mapping(test_config)
    _REGISTRY[name] = ModelEntry(name, builder, dict(defaults), description, test_config)


def unregister_model(name: str) -> None:
    """Remove the entry ``name`` (for tests and plugins that register temporary models).

    Raises:
        ValueError: ``name`` is not registered.
    """
    if name not in _REGISTRY:
        raise ValueError(f"model {name!r} is not registered")
    del _REGISTRY[name]


def list_models() -> list[str]:
    """Return the sorted names of all registered models."""
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name`` (builder, defaults, description, test configuration).

    Raises:
        RtsegError: unknown model name (the message lists the known names).
    """
    if name not in _REGISTRY:
        raise RtsegError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _REGISTRY[name]


def model_description(name: str) -> str:
    """Return the one-line description given at registration (empty if none or unknown)."""
    return _REGISTRY[name].description if name in _REGISTRY else ""


def model_test_config(name: str) -> ModelTestConfig:
    """The tiny test configuration registered with ``name``.

    Raises:
        RtsegError: unknown name, or the entry was registered without ``test_config``.
    """
    config = model_entry(name).test_config
    if config is None:
        raise RtsegError(
            f"model {name!r} has no test configuration; register it with "
            "register_model(..., test_config=dict(<small kwargs>, input_size=<pixels>))"
        )
    return config


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
    entry = model_entry(name)
    model = entry.builder(num_classes=num_classes, **{**entry.defaults, **kwargs})
    model.rtseg_name = name
    # a weights *file* is an input of this construction only, not part of the architecture: the
    # checkpoint holds the trained weights, so model.json must not point at a file that may vanish
    model.rtseg_kwargs = {k: v for k, v in kwargs.items() if k != "pretrained_weights"}
    model.rtseg_num_classes = num_classes
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable, unless ``trainable_only=False``) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
