"""GMSRF-Net (docs/networks.md §4): parameter accounting, deep supervision, module shapes.

The contract (shapes, input checks, ONNX parity) is tested for every entry in test_model_contract.py."""

from __future__ import annotations

import pytest
import torch

from rtseg.models import count_parameters, create_model
from rtseg.models.gmsrfnet import GMSRFModule, GMSRFNet
from rtseg.training.aux_losses import deep_supervision_loss

# Reduced size for CI (same code path): ResNet-10t layers instead of Res2Net-50, stream base width 8.
SMALL = dict(backbone="resnet10t", width=8)
SPEC_TOTAL = 47_049_229
# 4 ×4-resampler chains × 2 BN(32) + 2 ×8 chains × 3 BN(32), per fusion layer, 3 layers, 2 modules: the
# authors construct these BatchNorms but never call them (see rtseg.models.gmsrfnet docstring)
AUTHORS_DEAD_BN = 2 * 3 * (4 * 2 * 64 + 2 * 3 * 64)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_full_size_parameter_count():
    with torch.device("meta"):  # counting only
        model = create_model("gmsrfnet", num_classes=1)
    n = count_parameters(model)
    assert AUTHORS_DEAD_BN == 5_376
    assert n == SPEC_TOTAL - AUTHORS_DEAD_BN == 47_043_853
    assert abs(n - SPEC_TOTAL) / SPEC_TOTAL < 0.005  # the spec's ±0.5 %
    assert count_parameters(model.gmsrf[0]) == 5_434_368 - 2_688
    assert len(model.gmsrf) == 2
    assert sum(count_parameters(getattr(model, f"layer{i}")) for i in range(1, 5)) == 23_640_584
    assert count_parameters(model.stem) == 1_856  # Conv 3×3 3→64 + BN replaces the Res2Net stem
    assert [count_parameters(m) for m in (model.reduce2, model.reduce3, model.reduce4)] == [546_688, 2_182_912, 8_723_968]
    # authors' Res2Net-50 v1b shortcut: AvgPool (ceil) → 1×1 conv → BN
    ds = model.layer2[0].downsample
    assert isinstance(ds[0], torch.nn.AvgPool2d) and ds[0].ceil_mode and ds[1].stride == (1, 1)
    assert not hasattr(model, "fc") and not hasattr(model, "conv1")
    assert model.input_multiple == 8 and model.output_activation == "sigmoid"


def test_train_returns_main_and_three_deep_supervision_logits():
    model = GMSRFNet(num_classes=1, **SMALL).train()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert list(out) == ["logits", "ds2", "ds4", "ds8"]
    for v in out.values():
        assert v.shape == (2, 1, 32, 32) and v.dtype == torch.float32
    mask = (torch.rand(2, 1, 32, 32) > 0.5).float()
    loss = deep_supervision_loss(out, mask)
    loss.backward()
    for head in (model.ds2, model.ds4, model.ds8, model.final2):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []  # no constructed-but-unused modules
    with torch.no_grad():
        y = model.eval()(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 1, 32, 32)
    assert float(y.min()) < 0 < float(y.max())  # logits: no ReLU on the output layer


def test_full_size_model_forward_at_small_input():
    model = create_model("gmsrfnet", num_classes=1).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, 16, 16))
    assert y.shape == (1, 1, 16, 16) and y.dtype == torch.float32


def test_gmsrf_module_keeps_stream_shapes():
    m = GMSRFModule(8).eval()
    xs = [torch.randn(1, 8 * 2 ** i, 16 // 2 ** i, 16 // 2 ** i) for i in range(4)]
    with torch.no_grad():
        ys = m(*xs)
    assert [tuple(y.shape) for y in ys] == [tuple(x.shape) for x in xs]


def test_non_resnet_backbone_raises_value_error():
    with pytest.raises(ValueError, match="ResNet-family"):
        GMSRFNet(backbone="tf_efficientnet_lite0")
