"""Issue 3: every network (reduced width, real weights layout) goes through `rtseg build-engine`
(OpenVINO) and `rtseg stream` on a real clip; outputs decode with the right frame count."""

import av
import pytest

from rtseg.checkpoint import ModelMeta, save_checkpoint
from rtseg.cli import main
from rtseg.models import create_model

SMALL = {
    "eunet": dict(widths=[8, 16, 32, 64]),
    "visionfusenet-effv2b3": dict(dim=32, mlp_dim=64, decoder_dim=32, low_dim=16),
    "visionfusenet-densenet121": dict(dim=32, mlp_dim=64, decoder_dim=32, low_dim=16),
    "contrafusionnet": dict(embed_dims=[16, 32, 64, 128], depths=[1, 1, 1, 1], decoder_dim=32),
    "gmsrfnet": dict(width=16),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_build_engine_and_stream(name, tmp_path, capsys, clip):
    nc = 11 if name == "contrafusionnet" else 1
    model = create_model(name, num_classes=nc, **SMALL[name])
    side = 64
    meta = ModelMeta(model=name, num_classes=nc, model_kwargs=SMALL[name], input_size=[side, side],
                     mean=list(model.default_mean), std=list(model.default_std),
                     task="multiclass" if nc > 1 else "binary",
                     palette=[[i * 20, 255 - i * 20, 128] for i in range(max(nc, 2))],
                     class_names=[f"c{i}" for i in range(max(nc, 2))])
    ck = save_checkpoint(tmp_path / "ckpt", model, meta)
    eng = tmp_path / "eng"
    for argv in (["build-engine", "--checkpoint", str(ck), "--backend", "openvino", "--precision", "fp32", "--out", str(eng)],
                 ["stream", "--engine", str(eng), "--source", str(clip), "--output", str(tmp_path / "o.mp4"),
                  "--max-frames", "12", "--threads", "1", "--quiet"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
            raise SystemExit(0)
        assert e.value.code == 0, capsys.readouterr().err
    with av.open(str(tmp_path / "o.mp4")) as c:
        frames = [f for f in c.decode(video=0)]
    assert len(frames) == 12 and (frames[0].width, frames[0].height) == (1280, 720)
