"""structure_loss / deep_supervision_loss (GMSRF-Net, §4.4) and info_nce (ContraFusionNet, §3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rtseg.training.aux_losses import boundary_weight, deep_supervision_loss, info_nce, structure_loss


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _hand_case():
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, :2, :2] = 1
    logits = torch.zeros(1, 1, 4, 4)
    logits[0, 0, :2, :2] = 2.0
    logits[0, 0, 1, 1] = -1.0
    logits[0, 0, 3, 3] = 3.0
    return logits, mask


def test_structure_loss_hand_computed():
    logits, mask = _hand_case()
    # 31×31 window, zero padding counted: every window holds all 16 pixels → avg = 4 / 961 everywhere
    wf = 1 + 5 * (1 - 4 / 961)  # foreground weight
    wb = 1 + 5 * (4 / 961)  # background weight
    # BCE-with-logits = softplus(x) − m·x
    bce_fg = 3 * (_softplus(2.0) - 2.0) + (_softplus(-1.0) + 1.0)
    bce_bg = 11 * _softplus(0.0) + _softplus(3.0)
    wbce = (wf * bce_fg + wb * bce_bg) / (4 * wf + 12 * wb)
    p_fg = 3 * _sigmoid(2.0) + _sigmoid(-1.0)
    p_bg = 11 * 0.5 + _sigmoid(3.0)
    inter = wf * p_fg
    union = wf * (p_fg + 4) + wb * p_bg
    wiou = 1 - (inter + 1) / (union - inter + 1)
    expected = wbce + wiou
    got = structure_loss(logits, mask)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert float(got) == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(boundary_weight(mask)[0, 0, 0, 0], torch.tensor(wf))
    torch.testing.assert_close(boundary_weight(mask)[0, 0, 3, 3], torch.tensor(wb))
    # the per-pixel weighting matters: the original's `reduce='none'` bug (an unweighted mean BCE) differs
    unweighted = (bce_fg + bce_bg) / 16 + wiou
    assert abs(expected - unweighted) > 0.05
    # [N, H, W] masks are accepted
    assert float(structure_loss(logits, mask[:, 0])) == pytest.approx(expected, rel=1e-6)


def _numpy_structure_loss(logits: np.ndarray, mask: np.ndarray) -> float:
    """Independent float64 reference: box sums from an integral image, per image then mean."""
    n, c, h, w = logits.shape
    losses = []
    for i in range(n):
        for j in range(c):
            x, m = logits[i, j].astype(np.float64), mask[i, j].astype(np.float64)
            padded = np.pad(m, 15)
            ii = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
            box = ii[31:31 + h, 31:31 + w] - ii[:h, 31:31 + w] - ii[31:31 + h, :w] + ii[:h, :w]
            wt = 1 + 5 * np.abs(box / 961 - m)
            bce = np.logaddexp(0, x) - m * x
            wbce = (wt * bce).sum() / wt.sum()
            p = 1 / (1 + np.exp(-x))
            inter = (wt * p * m).sum()
            union = (wt * (p + m)).sum()
            losses.append(wbce + 1 - (inter + 1) / (union - inter + 1))
    return float(np.mean(losses))


def test_structure_loss_matches_independent_reference():
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(2, 1, 48, 40)
    mask[0, :, 10:30, 5:25] = 1
    mask[1, :, 30:, 20:] = 1  # touches the border
    logits = torch.randn(2, 1, 48, 40, generator=g) * 3
    ref = _numpy_structure_loss(logits.numpy(), mask.numpy())
    assert float(structure_loss(logits, mask)) == pytest.approx(ref, rel=1e-5)


def test_structure_loss_gradient_and_errors():
    logits, mask = _hand_case()
    logits.requires_grad_(True)
    structure_loss(logits, mask).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="same shape"):
        structure_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 8, 8))


def test_deep_supervision_loss_sums_all_four_outputs():
    g = torch.Generator().manual_seed(1)
    mask = (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float()
    outs = {k: torch.randn(2, 1, 16, 16, generator=g) for k in ("logits", "ds2", "ds4", "ds8")}
    expected = sum(float(structure_loss(v, mask)) for v in outs.values())
    assert float(deep_supervision_loss(outs, mask)) == pytest.approx(expected, rel=1e-6)
    assert float(deep_supervision_loss(list(outs.values()), mask)) == pytest.approx(expected, rel=1e-6)
    assert float(deep_supervision_loss(outs["logits"], mask)) == pytest.approx(float(structure_loss(outs["logits"], mask)))
    with pytest.raises(ValueError, match="missing"):
        deep_supervision_loss({"logits": outs["logits"]}, mask)


def test_info_nce_hand_computed_and_properties():
    za = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    zb = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    # s = za·zbᵀ/τ = [[.6, .8], [.8, .6]]/τ: each row/column CE = log(1 + e^{0.2/τ})
    assert float(info_nce(za, zb, tau=0.07)) == pytest.approx(math.log1p(math.exp(0.2 / 0.07)), rel=1e-5)
    # inputs are L2-normalised
    assert float(info_nce(3 * za, 5 * zb)) == pytest.approx(float(info_nce(za, zb)), rel=1e-6)
    # batch 1: exactly zero (one positive, no negatives)
    assert float(info_nce(torch.randn(1, 8), torch.randn(1, 8))) == 0.0
    # non-symmetric case against an explicit two-direction cross-entropy
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 16, generator=g), torch.randn(5, 16, generator=g)
    s = F.normalize(a, dim=1) @ F.normalize(b, dim=1).t() / 0.1
    t = torch.arange(5)
    ref = 0.5 * (F.cross_entropy(s, t) + F.cross_entropy(s.t(), t))
    torch.testing.assert_close(info_nce(a, b, tau=0.1), ref)
    # aligned pairs give a small loss, shuffled pairs a large one
    assert float(info_nce(a, a + 0.01 * b)) < 0.01 < float(info_nce(a, a.roll(1, 0)))
    with pytest.raises(ValueError, match="same shape"):
        info_nce(torch.randn(4, 8), torch.randn(3, 8))
