"""The "add a network" recipe (docs/networks.md, "Model contract"), followed by a network defined here.

A toy encoder-decoder subclasses ``SegModel``, is registered through the public ``register_model`` with a
test configuration, passes the same contract checks as the built-in networks (the ``check_*`` functions
of test_model_contract.py), is usable through ``create_model``, and is unregistered afterwards.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from rtseg.errors import RtsegError
from rtseg.models import (
    SegModel,
    count_parameters,
    create_model,
    list_models,
    model_description,
    model_entry,
    model_test_config,
    register_model,
    unregister_model,
)

from test_model_contract import (
    build_tiny,
    check_attributes,
    check_bad_input,
    check_eval_logits,
    check_onnx_parity,
    check_train_outputs,
)

NAME = "toynet-test"


class ToyNet(SegModel):
    """Two stride-2 convs, two ConvT 2×2 up; deep supervision from the 1/2 level in train mode.

    ``forward(x: float32[N, 3, H, W])``, H and W multiples of 4: ``eval()`` → logits
    ``float32[N, C, H, W]``; ``train()`` → ``{"logits": ..., "ds2": ...}``, both ``float32[N, C, H, W]``.
    """

    input_multiple = 4
    output_activation = "sigmoid"
    display_name = "ToyNet"

    def __init__(self, num_classes: int = 1, width: int = 16):
        super().__init__()
        self.down1 = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.down2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.up2 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.head = nn.Conv2d(width, num_classes, 1)
        self.ds2 = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        self.check_input(x)
        d1 = self.down1(x)
        u2 = self.up2(self.down2(d1))
        logits = self.head(self.up1(torch.cat([u2, d1], dim=1)))
        if not self.training:
            return logits
        ds2 = F.interpolate(self.ds2(u2), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"logits": logits, "ds2": ds2}


@pytest.fixture()
def toynet():
    """Register ToyNet (full width 64, test width 8 at 32²) for one test; always unregister it."""
    register_model(NAME, ToyNet, "ToyNet: the recipe's example", test_config=dict(width=8, input_size=32), width=64)
    try:
        yield NAME
    finally:
        unregister_model(NAME)
    assert NAME not in list_models()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_registered_network_passes_the_contract(toynet, tmp_path):
    size = model_test_config(toynet).input_size
    assert size == (32, 32) and model_test_config(toynet).kwargs == {"width": 8}
    check_attributes(build_tiny(toynet), size)
    for c in (1, 3):
        check_eval_logits(build_tiny(toynet, c), size, c)
    check_bad_input(build_tiny(toynet), size)
    check_train_outputs(build_tiny(toynet, 2), size, 2)
    check_onnx_parity(build_tiny(toynet), size, tmp_path)


def test_registered_network_is_usable_through_create_model(toynet):
    assert toynet in list_models() and model_description(toynet) == "ToyNet: the recipe's example"
    assert model_entry(toynet).defaults == {"width": 64}
    model = create_model(toynet, num_classes=2)
    assert isinstance(model, ToyNet) and model.head.out_channels == 2 and model.head.in_channels == 64
    assert (model.rtseg_name, model.rtseg_kwargs, model.rtseg_num_classes) == (toynet, {}, 2)
    # 3·64·9 + 2·64 (conv + BN) | 64·128·9 + 128 | 2 · (128·64·4 + 64) | 64·2 + 2 | 64·2 + 2
    assert count_parameters(model) == 1_856 + 73_856 + 2 * 32_832 + 130 + 130
    small = create_model(toynet, width=4)
    assert small.rtseg_kwargs == {"width": 4} and small.head.in_channels == 4
    with pytest.raises(ValueError, match="ToyNet needs H and W to be multiples of 4; got 30x32"):
        small.eval()(torch.randn(1, 3, 30, 32))


def test_registration_errors(toynet):
    with pytest.raises(ValueError, match="already registered"):
        register_model(toynet, ToyNet)
    with pytest.raises(ValueError, match="input_size"):
        register_model("toynet-no-size", ToyNet, test_config=dict(width=8))
    assert "toynet-no-size" not in list_models()
    with pytest.raises(ValueError, match="not registered"):
        unregister_model("toynet-never-registered")
    register_model("toynet-untested", ToyNet)
    try:
        with pytest.raises(RtsegError, match="no test configuration"):
            model_test_config("toynet-untested")
    finally:
        unregister_model("toynet-untested")
    with pytest.raises(RtsegError, match="unknown model 'toynet-untested'"):
        create_model("toynet-untested")
