"""ContraFusionNet (docs/networks.md §3): parameter accounting, embeddings, contrastive fusion, deployed graph.

The contract (shapes, input checks, ONNX parity) is tested for every entry in test_model_contract.py."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from rtseg.models import count_parameters, create_model
from rtseg.models.contrafusionnet import ContraFusionNet
from rtseg.training.aux_losses import info_nce

# Reduced sizes for CI (same code path): head width 32, one block per stage, ResNet-10t aux branch.
SMALL = dict(embed_dims=(32, 64, 128, 256), depths=(1, 1, 1, 1), decoder_dim=64,
             aux_backbone="resnet10t", aux_dim=64, proj_dim=32)
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _camvid_batch(shared_data, n=4, size=64) -> torch.Tensor:
    files = sorted((shared_data / "camvid-val" / "images").glob("*.png"))[::20][:n]
    imgs = []
    for f in files:
        img = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        imgs.append((img - MEAN) / STD)
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()


def test_full_size_parameter_counts():
    with torch.device("meta"):  # counting only: no memory, no init
        model = create_model("contrafusionnet", num_classes=20)
        deployed = create_model("contrafusionnet", num_classes=20, contrastive=False)
    assert model.num_deployed_parameters() == 17_787_796
    assert [count_parameters(s) for s in model.encoder] == [916_864, 1_739_776, 5_489_152, 9_127_424]
    assert count_parameters(model.encoder) == 17_273_216
    dec = count_parameters(model.proj) + count_parameters(model.fuse) + count_parameters(model.head)
    assert dec == 514_580
    # the auxiliary branch (ResNet-50 + pyramid pooling + two projection heads) is counted separately
    aux = count_parameters(model.contrast)
    assert count_parameters(model) == 17_787_796 + aux
    assert count_parameters(model.contrast.ppm.bottleneck[0]) == 4096 * 512 * 9
    assert count_parameters(deployed) == 17_787_796
    assert model.input_multiple == 32 and model.output_activation == "softmax"


def test_train_returns_embeddings_eval_returns_logits():
    model = ContraFusionNet(num_classes=12, **SMALL)
    x = torch.randn(2, 3, 64, 64)
    out = model.train()(x)
    assert set(out) == {"logits", "z", "z_aux"}
    assert out["logits"].shape == (2, 12, 64, 64) and out["logits"].dtype == torch.float32
    assert out["z"].shape == out["z_aux"].shape == (2, 32)
    torch.testing.assert_close(out["z"].norm(dim=1), torch.ones(2))
    with torch.no_grad():
        y = model.eval()(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 12, 64, 64)
    # without the branch, train mode also returns the plain logits
    plain = ContraFusionNet(num_classes=12, contrastive=False, **SMALL).train()
    assert isinstance(plain(x), torch.Tensor)


def test_info_nce_trains_aux_branch_on_real_camvid_images(shared_data):
    model = ContraFusionNet(num_classes=12, **SMALL).train()
    x = _camvid_batch(shared_data, n=4, size=64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    aux_before = {n: p.detach().clone() for n, p in model.contrast.named_parameters()}
    losses = []
    for step in range(6):
        out = model(x)
        loss = info_nce(out["z"], out["z_aux"], tau=0.07)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            # the InfoNCE gradient reaches the auxiliary CNN, both projection heads and the encoder
            for name in ("cnn", "ppm", "proj_t", "proj_aux"):
                grads = [p.grad for p in getattr(model.contrast, name).parameters()]
                assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0, name
            assert model.encoder[3].patch_merge[0].weight.grad.abs().sum() > 0
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[0] > 0.1  # non-zero at batch 4 (it is exactly 0 at batch 1)
    assert losses[-1] < 0.5 * losses[0], losses
    changed = [n for n, p in model.contrast.named_parameters() if not torch.equal(p, aux_before[n])]
    assert len(changed) == len(aux_before)
    with torch.no_grad():
        z = model(x[:1])["z"]
    assert float(info_nce(z, z)) == 0.0


def test_aux_branch_not_in_eval_graph(tmp_path):
    import onnx

    from rtseg.export.onnx import export_onnx

    model = ContraFusionNet(num_classes=5, **SMALL).eval()
    called = []
    for name, mod in model.contrast.named_modules():
        mod.register_forward_pre_hook(lambda m, a, name=name: called.append(name))
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    assert called == []

    info = export_onnx(model, tmp_path / "cfn.onnx", input_hw=(64, 64))
    assert info["max_abs_diff"] <= 1e-4  # batch-1 export run at batch 2 on ONNX Runtime
    g = onnx.load(str(tmp_path / "cfn.onnx")).graph
    assert not any("contrast" in t.name for t in g.initializer)
    stored = sum(int(np.prod(t.dims)) for t in g.initializer)
    deployed_tensors = model.num_deployed_parameters() + sum(
        b.numel() for n, b in model.named_buffers() if not n.startswith("contrast."))
    assert stored <= deployed_tensors + 1000  # + small shape constants
    assert count_parameters(model.contrast) > 1000 + (deployed_tensors - stored)


def test_deployed_model_loads_training_checkpoint():
    trained = ContraFusionNet(num_classes=5, **SMALL)
    deployed = ContraFusionNet(num_classes=5, contrastive=False, **SMALL)
    deployed.load_state_dict(trained.state_dict(), strict=True)  # contrast.* skipped, rest strict
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(deployed.eval()(x), trained.eval()(x))
