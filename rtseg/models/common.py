"""Helpers shared by the networks: input-shape checks and class-level conventions.

Conventions (docs/networks.md, "Conventions that hold for all four"): ``forward(x)`` takes
``float32[N, 3, H, W]`` normalised RGB and returns logits ``float32[N, C, H, W]`` at the input
resolution; each model declares ``input_multiple`` and ``output_activation`` as class attributes.
"""

from __future__ import annotations

import torch


def check_input(x: torch.Tensor, multiple: int, name: str) -> None:
    """Raise ``ValueError`` unless ``x`` is ``[N, 3, H, W]`` with H and W multiples of ``multiple``.

    Only static Python ints are compared, so the check costs nothing in an exported graph.
    """
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} expects a float tensor [N, 3, H, W]; got shape {tuple(x.shape)}")
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h % multiple or w % multiple:
        raise ValueError(
            f"{name} needs H and W to be multiples of {multiple}; got {h}x{w} "
            f"(resize or letterbox to e.g. {max(multiple, h // multiple * multiple)}x{max(multiple, w // multiple * multiple)})"
        )
