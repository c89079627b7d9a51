"""ONNX export: dynamic batch, parity with PyTorch, determinism, checks, CLI (issue 2 step 6)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from rtseg.calib.images import preprocess_images, select_images
from rtseg.errors import RtsegError
from rtseg.export.onnx import export_onnx, parity_bound
from rtseg.models import create_model

from helpers import TINY_WIDTHS

HW = (64, 64)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def real_batch(kvasir):
    files = sorted((kvasir / "images").glob("*.jpg"))
    return preprocess_images(select_images(files, 3, seed=1), HW, "stretch", MEAN, STD)


def _tiny():
    torch.manual_seed(0)
    return create_model("eunet-s", widths=list(TINY_WIDTHS)).eval()


@pytest.fixture
def tiny_ckpt(tmp_path, kvasir):
    from rtseg.checkpoint import save_checkpoint
    from rtseg.meta import ModelMeta

    meta = ModelMeta(model="eunet-s", model_kwargs={"widths": list(TINY_WIDTHS)}, input_size=list(HW),
                     data={"root": str(kvasir)})
    return save_checkpoint(tmp_path / "ckpt", _tiny(), meta)


def test_export_dynamic_batch_parity(tmp_path, real_batch):
    model = _tiny()
    info = export_onnx(model, tmp_path / "m.onnx", HW, sample=real_batch[:1])  # traced at batch 1
    assert info["opset"] == 17 and info["torch_version"] == torch.__version__
    assert info["input"] == {"name": "input", "shape": [-1, 3, 64, 64]}
    assert info["output"]["shape"] == [-1, 1, 64, 64]
    assert info["max_abs_diff"] <= info["tolerance"]
    m = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(m, full_check=True)
    assert not [n for n in m.graph.node if n.op_type == "Identity"]  # inlined initializers
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": real_batch})[0]  # batch 3
    with torch.inference_mode():
        ref = model(torch.from_numpy(real_batch)).numpy()
    assert got.shape == (3, 1, 64, 64)
    assert np.max(np.abs(got - ref)) <= parity_bound(ref)


def test_export_is_deterministic_and_quiet(tmp_path, recwarn):
    model = _tiny()
    export_onnx(model, tmp_path / "a.onnx", HW)
    export_onnx(model, tmp_path / "b.onnx", HW)
    digest = [hashlib.sha256((tmp_path / f).read_bytes()).hexdigest() for f in ("a.onnx", "b.onnx")]
    assert digest[0] == digest[1]
    noisy = [w for w in recwarn if issubclass(w.category, (DeprecationWarning, torch.jit.TracerWarning))]
    assert not noisy, [str(w.message)[:80] for w in noisy]


def test_export_refuses_bad_size_and_opset(tmp_path):
    with pytest.raises(RtsegError, match="multiples of 8"):
        export_onnx(_tiny(), tmp_path / "m.onnx", (60, 60))
    with pytest.raises(RtsegError, match="opset"):
        export_onnx(_tiny(), tmp_path / "m.onnx", HW, opset=11)
    assert not (tmp_path / "m.onnx").exists()


def test_export_parity_failure_is_an_error(tmp_path, monkeypatch):
    import rtseg.export.onnx as mod

    monkeypatch.setattr(mod, "PARITY_ATOL", -1.0)  # any difference, even 0, is now too large
    with pytest.raises(RtsegError, match="differs from PyTorch"):
        export_onnx(_tiny(), tmp_path / "m.onnx", HW)
    assert not (tmp_path / "m.onnx").exists()


def test_export_cli_img_size_two_ints(tmp_path, tiny_ckpt):
    from click.testing import CliRunner

    from rtseg.commands.export import export_command

    r = CliRunner().invoke(export_command, ["--checkpoint", str(tiny_ckpt), "--out", str(tmp_path / "x.onnx"),
                                            "--img-size", "64", "96"])
    assert r.exit_code == 0, r.output
    m = onnx.load(str(tmp_path / "x.onnx"))
    dims = [d.dim_value or d.dim_param for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, 64, 96] and isinstance(dims[0], str)


def test_cli_bad_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    from rtseg.cli import main

    for cmd in (["export"], ["calibrate"]):  # in-process through the real entry point
        with pytest.raises(SystemExit) as e:
            main([*cmd, "--checkpoint", str(tmp_path / "nope")])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and "does not exist" in err[0], err
    # and once as a real process
    p = subprocess.run([sys.executable, "-m", "rtseg", "build-engine", "--checkpoint", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "does not exist" in lines[0], p.stderr


def test_concurrent_publishes_of_one_engine_folder_all_succeed(tmp_path):
    """Two builds of the same engine folder finishing at once (two streams on a fresh cache): every
    publish succeeds and leaves one complete folder (before: FileNotFoundError or 'Directory not empty')."""
    import threading

    from rtseg.export.build import _publish

    out = tmp_path / "openvino-fp32"
    errors = []

    def worker(k: int) -> None:
        for j in range(30):
            tmp = tmp_path / f".tmp{k}-{j}"
            tmp.mkdir()
            (tmp / "engine.json").write_text(f"{k}-{j}")
            try:
                _publish(tmp, out)
            except Exception as e:  # noqa: BLE001 - collected for the assertion
                errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert (out / "engine.json").read_text().count("-") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["openvino-fp32"]  # no temporary or .old folder left
