"""EUNet (docs/networks.md §2): exact parameter counts, shapes, input checks, the phase trick."""

import pytest
import torch

from rtseg.models import EUNet, count_parameters, create_model, list_models
from rtseg.models.eunet import LKA, dilated_dwconv_by_phases


def test_eunet_parameter_count_matches_spec():
    m = create_model("eunet", num_classes=1)
    assert count_parameters(m) == 4_564_511
    # per-module breakdown of §2.2 (C = 1)
    parts = [m.stem, m.down1, m.down2, m.down3, m.up1, m.up2, m.up3, m.head]
    assert [count_parameters(p) for p in parts] == [222, 94_976, 353_792, 1_362_944, 1_363_200, 1_100_928, 288_320, 129]


def test_eunet_s_and_widths():
    s = create_model("eunet-s")
    assert s.widths == [32, 64, 128, 256]
    assert count_parameters(s) == 1_196_831
    tiny = create_model("eunet", widths=[8, 16, 32, 64], num_classes=3)
    assert tiny.widths == [8, 16, 32, 64]
    assert "eunet" in list_models() and "eunet-s" in list_models()


def test_eunet_output_shape_and_logits():
    m = create_model("eunet-s", widths=[8, 16, 32, 64], num_classes=2).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        y = m(x)
    assert y.shape == (2, 2, 64, 96) and y.dtype == torch.float32
    assert (y < 0).any() and (y > 0).any()  # logits, not probabilities
    assert EUNet.input_multiple == 8 and EUNet.output_activation == "sigmoid"


@pytest.mark.parametrize("shape", [(1, 3, 60, 64), (1, 3, 64, 66), (1, 1, 64, 64)])
def test_eunet_rejects_bad_input(shape):
    m = create_model("eunet-s", widths=[8, 16, 32, 64]).eval()
    with pytest.raises(ValueError, match="EUNet"):
        m(torch.randn(*shape))


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
    m = create_model("eunet-s", widths=[8, 16, 32, 64]).eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        a = m(x)
    b = m(x)  # grad enabled → phase path
    assert torch.allclose(a, b.detach(), atol=1e-5)
