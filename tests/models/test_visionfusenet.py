"""VisionFuseNet (docs/networks.md §1): parameter accounting, Keras-semantics MHA, taps, positional embeddings.

The contract (shapes, input checks, train/eval outputs, ONNX) is tested for every entry in test_model_contract.py."""

from __future__ import annotations

import math

import pytest
import torch

from rtseg.models import count_parameters, create_model
from rtseg.models.visionfusenet import MHSAR, KerasMHA, TappedBackbone, VisionFuseNet

# Reduced widths for fast CI runs; the code path is the full model's.
SMALL = dict(dim=32, mlp_dim=64, decoder_dim=32, low_dim=16)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_full_size_parameter_counts_match_spec():
    with torch.device("meta"):  # counting only: no memory, no init
        eff = create_model("visionfusenet-effv2b3", num_classes=1)
        dense = create_model("visionfusenet-densenet121", num_classes=1)
        # spec counts + 233,472 learnable positional-embedding parameters (decision 1)
    assert count_parameters(eff) == 16_793_823 + 233_472 == 17_027_295
    assert count_parameters(dense) == 18_250_305 + 233_472 == 18_483_777
    pos = sum(m.pos_emb.numel() for m in eff.modules() if isinstance(m, MHSAR))
    assert pos == 233_472 == 912 * 256
    # §1.3 breakdown (EffNetV2-B3)
    assert count_parameters(eff.backbone) == 3_105_822
    assert count_parameters(dense.backbone) == 4_793_728
    tu = eff.trans_unet
    no_pos = lambda m: count_parameters(m) - m.pos_emb.numel()  # noqa: E731
    assert no_pos(tu.e1) == 1_472_256
    assert no_pos(tu.e2) == no_pos(tu.e3) == 1_185_536
    assert no_pos(tu.c1) == no_pos(tu.c2) == no_pos(eff.fuse) == 1_316_608
    assert count_parameters(tu.up1) == count_parameters(tu.up2) == 262_400
    assert count_parameters(eff.image_pool) == 209_408
    assert count_parameters(eff.up_a) == 65_600
    assert count_parameters(eff.low_proj) == 14_464
    assert [count_parameters(m) for m in eff.decoder] == [295_424, 590_336]
    assert count_parameters(eff.up_out) == 4_194_560
    assert count_parameters(eff.head) == 257
    # feature points: 224 ch @1/8 and 816 ch @1/16 (EffNetV2-B3), 256 / 512 (DenseNet121)
    assert (eff.backbone.low_channels, eff.backbone.high_channels) == (224, 816)
    assert (dense.backbone.low_channels, dense.backbone.high_channels) == (256, 512)
    assert eff.input_multiple == 32 and eff.output_activation == "sigmoid"


def test_backbone_keeps_only_used_modules():
    bb = TappedBackbone("tf_efficientnetv2_b3")
    names = [n for n, _ in bb.named_parameters()]
    assert not any(n.startswith(("conv_head", "bn2", "classifier", "blocks.5.1")) for n in names)
    assert not any(n.startswith("blocks.5.0.") and ".conv_pw." not in n and ".bn1." not in n for n in names)
    assert len(bb.blocks) == 6 and len(bb.blocks[5]) == 1
    dn = TappedBackbone("densenet121")
    names = [n for n, _ in dn.named_parameters()]
    assert not any(n.startswith(("features.denseblock4", "features.norm5", "classifier")) for n in names)


def test_mha_is_keras_semantics_and_matches_einsum():
    mha = KerasMHA(256, 3)
    assert count_parameters(mha) == 788_992
    assert 512 * 816 + 1_054_464 == count_parameters(MHSAR(816, (16, 16))) - 256 * 256
    for p in mha.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 10, 256)
    # Direct Keras computation: kernels [dim, heads, key_dim], output kernel [heads, key_dim, dim].
    wq = mha.q.weight.t().reshape(256, 3, 256)
    wk = mha.k.weight.t().reshape(256, 3, 256)
    wv = mha.v.weight.t().reshape(256, 3, 256)
    wo = mha.out.weight.t().reshape(3, 256, 256)
    q = torch.einsum("nld,dhk->nlhk", x, wq) + mha.q.bias.reshape(3, 256)
    k = torch.einsum("nld,dhk->nlhk", x, wk) + mha.k.bias.reshape(3, 256)
    v = torch.einsum("nld,dhk->nlhk", x, wv) + mha.v.bias.reshape(3, 256)
    scores = torch.einsum("nqhk,nshk->nhqs", q / math.sqrt(256), k).softmax(-1)
    ctx = torch.einsum("nhqs,nshk->nqhk", scores, v)
    ref = torch.einsum("nqhk,hkd->nqd", ctx, wo) + mha.out.bias
    torch.testing.assert_close(mha(x), ref, atol=1e-5, rtol=1e-4)
    # and it is not torch's MultiheadAttention (which splits 256 across heads)
    assert count_parameters(torch.nn.MultiheadAttention(256, 4)) != 788_992


def test_positional_embedding_resizes_for_320_and_288():
    model = create_model("visionfusenet", num_classes=1, **SMALL).eval()
    e1 = model.trans_unet.e1
    assert e1.grid == (16, 16)
    assert e1.position_embedding(16, 16) is e1.pos_emb  # native 256² input: the parameter itself
    pe = e1.position_embedding(20, 20)
    assert pe.shape == (1, 400, 32)
    # bilinear resize of the 16×16 grid: the mean is preserved closely, and it is differentiable
    assert abs(float(pe.mean().detach() - e1.pos_emb.mean().detach())) < 5e-3
    with torch.no_grad():
        assert model(torch.randn(1, 3, 320, 320)).shape == (1, 1, 320, 320)
        # a multiple of 32 that is not a multiple of 64 (F = 9×9 → ceil-mode pooling, cropped ConvT)
        assert model(torch.randn(1, 3, 288, 224)).shape == (1, 1, 288, 224)


def test_unsupported_backbone_raises_value_error():
    with pytest.raises(ValueError, match="supported are timm EfficientNet"):
        VisionFuseNet(1, backbone="resnet18")
    with pytest.raises(ValueError, match="multiple of 32"):
        VisionFuseNet(1, backbone="tf_efficientnet_lite0", img_size=100, **SMALL)


@pytest.mark.parametrize("name,tap_names", [
    ("tf_efficientnetv2_b3", ("blocks.3.0.bn1", "blocks.5.0.bn1")),
    ("densenet121", ("features.transition2.conv", "features.transition3.conv")),
])
def test_taps_equal_full_timm_model_activations(name, tap_names):
    """The truncated backbone returns exactly the full timm model's activations at the two taps."""
    import timm

    full = timm.create_model(name, pretrained=False).eval()
    bb = TappedBackbone(name).eval()
    bb.load_state_dict({k: v for k, v in full.state_dict().items() if k in bb.state_dict()}, strict=True)
    grabbed = {}
    mods = dict(full.named_modules())
    hooks = [mods[t].register_forward_hook(lambda m, i, o, t=t: grabbed.__setitem__(t, o)) for t in tap_names]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        full(x)
        low, high = bb(x)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(low, grabbed[tap_names[0]], atol=0, rtol=0)
    torch.testing.assert_close(high, grabbed[tap_names[1]], atol=0, rtol=0)
    assert low.shape[-1] == 32 // 8 and high.shape[-1] == 32 // 16
