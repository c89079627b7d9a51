"""The model contract every rtseg network follows (docs/networks.md, "Model contract").

A network subclasses :class:`SegModel`, declares its class attributes, calls :meth:`SegModel.check_input`
first thing in ``forward`` and registers itself next to its class with
:func:`rtseg.models.registry.register_model` (a small test configuration included), so the contract test
covers it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SegModel", "check_input_shape"]

#: ImageNet normalisation, RGB in [0, 1]: ``x_norm = (x - mean) / std``.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_input_shape(x: torch.Tensor, multiple: int, name: str) -> None:
    """Raise ``ValueError`` unless ``x`` is ``[N, 3, H, W]`` with H and W (pixels) multiples of ``multiple``.

    Only static Python ints are compared, so the check adds no op to an exported graph. The message
    names the network (``name``), the shape it got and a size that would work (resize or letterbox).
    """
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} expects a float tensor [N, 3, H, W]; got shape {tuple(x.shape)}")
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h % multiple or w % multiple:
        ok_h, ok_w = max(multiple, h // multiple * multiple), max(multiple, w // multiple * multiple)
        raise ValueError(
            f"{name} needs H and W to be multiples of {multiple}; got {h}x{w} "
            f"(resize or letterbox to e.g. {ok_h}x{ok_w})"
        )


class SegModel(nn.Module):
    """Base class of the segmentation networks: the contract the rest of rtseg relies on.

    ``forward(x: float32[N, 3, H, W])`` takes normalised RGB (NCHW; ``(x - default_mean) / default_std``
    on RGB in [0, 1]) with H and W multiples of :attr:`input_multiple` pixels, and returns:

    - in ``eval()`` mode: the logits ``float32[N, C, H, W]`` at the input resolution, one tensor (no
      sigmoid/softmax inside the graph), so an exported graph has exactly one output;
    - in ``train()`` mode: the same logits tensor, or, for networks with auxiliary outputs (deep
      supervision, contrastive embeddings), a dict whose first entry ``"logits"`` is those main logits
      and whose other entries are documented by the network.

    Class attributes (a subclass overrides those that differ; an instance may override them in
    ``__init__`` when they depend on a constructor argument, e.g. a backbone's own normalisation):

    - ``input_multiple`` (int): H and W must be multiples of it (pixels).
    - ``output_activation`` (str): the activation the original network ended with, applied by
      post-processing: ``"sigmoid"`` (binary, C = 1) or ``"softmax"`` (multi-class).
    - ``default_mean`` / ``default_std`` (3 floats each, RGB in [0, 1]): the input normalisation the
      network's weights expect; ImageNet's by default.
    - ``display_name`` (str): the network's name in error messages (the class name when empty).

    The base class holds no parameters or buffers, so subclassing it changes no ``state_dict`` key.
    """

    input_multiple: int = 1
    output_activation: str = "sigmoid"
    default_mean: tuple[float, float, float] = IMAGENET_MEAN
    default_std: tuple[float, float, float] = IMAGENET_STD
    display_name: str = ""

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``[N, 3, H, W]`` with H, W multiples of ``input_multiple``.

        The message names the network, the shape received and a size that works, e.g.
        ``"EUNet needs H and W to be multiples of 8; got 60x64 (resize or letterbox to e.g. 56x64)"``.
        """
        check_input_shape(x, self.input_multiple, self.display_name or type(self).__name__)
