"""EUNet (docs/networks.md §2): per-module parameter counts, widths, the phase trick.

The contract (shapes, input checks, ONNX, total counts) is tested for every entry in test_model_contract.py."""

import pytest
import torch

from rtseg.models import EUNet, count_parameters, create_model
from rtseg.models.eunet import LKA, dilated_dwconv_by_phases

from helpers import TINY_WIDTHS


def test_eunet_per_module_parameters_match_spec():
    m = create_model("eunet", num_classes=1)  # 4,564,511 in total: tests/models/test_model_contract.py
    # per-module breakdown of §2.2 (C = 1)
    parts = [m.stem, m.down1, m.down2, m.down3, m.up1, m.up2, m.up3, m.head]
    assert [count_parameters(p) for p in parts] == [222, 94_976, 353_792, 1_362_944, 1_363_200, 1_100_928, 288_320, 129]
    assert sum(count_parameters(p) for p in parts) == count_parameters(m)


def test_eunet_widths_and_class_attributes():
    assert create_model("eunet-s").widths == [32, 64, 128, 256]
    tiny = create_model("eunet", widths=list(TINY_WIDTHS), num_classes=3)
    assert tiny.widths == list(TINY_WIDTHS) and tiny.head.out_channels == 3
    with pytest.raises(ValueError, match="four positive ints"):
        EUNet(widths=[8, 16, 32])
    # §2.3: the original training script's normalisation, not ImageNet's
    assert EUNet.input_multiple == 8 and EUNet.output_activation == "sigmoid"
    assert EUNet.default_mean == (0.471, 0.448, 0.408) and EUNet.default_std == (0.234, 0.239, 0.242)


@pytest.mark.parametrize("hw", [(24, 24), (40, 56), (17, 31)])
def test_dilated_conv_phase_trick_is_exact(hw):
    torch.manual_seed(0)
    lka = LKA(6)
    x = torch.randn(2, 6, *hw, requires_grad=True)
    ref = lka.conv_spatial(x)
    got = dilated_dwconv_by_phases(x, lka.conv_spatial)
    assert torch.allclose(ref, got, atol=1e-5)
    g_ref = torch.autograd.grad(ref.square().sum(), lka.conv_spatial.weight)[0]
    g_got = torch.autograd.grad(got.square().sum(), lka.conv_spatial.weight)[0]
    assert torch.allclose(g_ref, g_got, rtol=1e-4, atol=1e-4)


def test_train_and_eval_forward_agree():
    torch.manual_seed(0)
    m = create_model("eunet-s", widths=list(TINY_WIDTHS)).eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        a = m(x)
    b = m(x)  # grad enabled → phase path
    assert torch.allclose(a, b.detach(), atol=1e-5)
