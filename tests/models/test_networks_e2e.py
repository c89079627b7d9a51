"""Issue 3: every network, built tiny from its registry test configuration (same code path, real
weights layout), goes through `rtseg build-engine` (OpenVINO) and `rtseg stream` on a real clip; the
output decodes with the right frame count and size.

One run per distinct tiny network: entries whose test build is identical (an alias, or ``eunet`` and
``eunet-s``, whose test widths are the same) are run once.
"""

import av
import pytest

from rtseg.checkpoint import save_checkpoint
from rtseg.cli import main
from rtseg.meta import ModelMeta
from rtseg.models import create_model, list_models, model_entry, model_test_config


def _distinct_tiny_networks() -> list[str]:
    """The first registry name of each distinct (builder, merged kwargs, input size) test build."""
    seen, names = set(), []
    for name in list_models():
        entry, cfg = model_entry(name), model_test_config(name)
        key = (entry.builder, repr(sorted({**entry.defaults, **cfg.kwargs}.items())), cfg.input_size)
        if key not in seen:
            seen.add(key)
            names.append(name)
    return names


def _tiny_checkpoint(name: str, folder):
    """Save the tiny test build of ``name`` as a checkpoint; multi-class (C = 11) for softmax networks."""
    cfg = model_test_config(name)
    nc = 11 if model_entry(name).builder.output_activation == "softmax" else 1
    model = create_model(name, num_classes=nc, **cfg.kwargs)
    meta = ModelMeta(model=name, num_classes=nc, model_kwargs=dict(cfg.kwargs), input_size=list(cfg.input_size),
                     mean=list(model.default_mean), std=list(model.default_std),
                     task="multiclass" if nc > 1 else "binary",
                     palette=[[i * 20, 255 - i * 20, 128] for i in range(max(nc, 2))],
                     class_names=[f"c{i}" for i in range(max(nc, 2))])
    return save_checkpoint(folder, model, meta)


def test_distinct_networks_cover_every_builder():
    builders = {model_entry(n).builder for n in _distinct_tiny_networks()}
    assert builders == {model_entry(n).builder for n in list_models()}
    assert len(_distinct_tiny_networks()) < len(list_models())  # aliases are not run twice


@pytest.mark.slow
@pytest.mark.parametrize("name", _distinct_tiny_networks())
def test_build_engine_and_stream(name, tmp_path, capsys, clip):
    ck = _tiny_checkpoint(name, tmp_path / "ckpt")
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
