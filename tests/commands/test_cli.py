"""Bad input on the command line: one-line errors and exit code 2, never a traceback."""

import json
import shutil

import pytest

from rtseg.checkpoint import save_checkpoint
from rtseg.meta import ModelMeta
from rtseg.models import create_model

from helpers import TINY_WIDTHS, run_cli


def _one_line_error(err):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), err
    assert "Traceback" not in err
    return lines[-1]


@pytest.fixture()
def tiny_ckpt(tmp_path, kvasir):
    m = create_model("eunet-s", widths=list(TINY_WIDTHS))
    meta = ModelMeta(model="eunet-s", model_kwargs={"widths": list(TINY_WIDTHS)}, input_size=[64, 64],
                     data={"root": str(kvasir), "format": "polyp"})
    return save_checkpoint(tmp_path / "ckpt", m, meta)


def test_missing_checkpoint(capsys, tmp_path):
    code, _, err = run_cli(capsys, "eval", "--checkpoint", str(tmp_path / "nope"))
    assert code == 2 and "does not exist" in _one_line_error(err)


def test_corrupt_checkpoint(capsys, tiny_ckpt):
    (tiny_ckpt / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    code, _, err = run_cli(capsys, "eval", "--checkpoint", str(tiny_ckpt))
    line = _one_line_error(err)
    assert code == 2 and "corrupt" in line and "model.safetensors" in line


def test_checkpoint_of_wrong_architecture(capsys, tiny_ckpt):
    meta = json.loads((tiny_ckpt / "model.json").read_text())
    meta["model_kwargs"] = {}  # says full eunet-s widths, weights are 8/16/32/64
    (tiny_ckpt / "model.json").write_text(json.dumps(meta))
    code, _, err = run_cli(capsys, "eval", "--checkpoint", str(tiny_ckpt))
    line = _one_line_error(err)
    assert code == 2 and "do not match architecture 'eunet-s'" in line


def test_folder_without_masks(capsys, tmp_path, kvasir):
    (tmp_path / "d" / "images").mkdir(parents=True)
    for p in sorted((kvasir / "images").iterdir())[:3]:
        shutil.copy(p, tmp_path / "d" / "images" / p.name)
    code, _, err = run_cli(capsys, "train", "--data", str(tmp_path / "d"), "--epochs", "1", "--out", str(tmp_path / "r"))
    assert code == 2 and "no masks/ folder" in _one_line_error(err)


def test_unknown_model(capsys, tmp_path, kvasir):
    code, _, err = run_cli(capsys, "train", "--model", "resnet9000", "--data", str(kvasir), "--out", str(tmp_path / "r"))
    line = _one_line_error(err)
    assert code == 2 and "unknown model 'resnet9000'" in line and "eunet-s" in line


def test_eval_table_json_and_overlays(capsys, tmp_path, tiny_ckpt, shared_data):
    png = tmp_path / "ov.png"
    code, out, _ = run_cli(capsys, "eval", "--checkpoint", str(tiny_ckpt), "--data", str(shared_data / "polypgen-test"),
                           "--limit", "4", "--save-overlays", "3", "--overlays-path", str(png), "--json")
    assert code == 0
    res = json.loads(out)
    assert res["n_images"] == 4 and set(res["per_image"]) == {"dice", "iou", "accuracy", "recall", "specificity", "precision"}
    import cv2

    grid = cv2.imread(str(png))
    assert grid is not None and grid.shape[0] == 3 * (192 + 4)


@pytest.mark.parametrize("args, words", [
    (["stream", "--source", "x.mp4", "--batch-size", "0"], "'--batch-size': 0 is not in the range"),
    (["eval", "--bogus"], "No such option '--bogus'"),
    (["nosuch"], "No such command 'nosuch'"),
    (["stream", "--output", "o.mp4"], "Missing option '--source'"),
])
def test_usage_errors_are_one_error_line(capsys, args, words):
    """Issue 26: click's usage errors (out-of-range value, unknown option or command, missing option) are
    one ``error: problem; see '... --help'`` line with exit status 2, not click's 4-line usage block."""
    code, _, err = run_cli(capsys, *args)
    line = _one_line_error(err)
    assert code == 2 and words in line and "--help'" in line and "Usage:" not in err


def test_credentials_are_redacted_in_every_line(capsys, tiny_ckpt):
    """Issue 22: an RTSP URL's password never appears in an error line (nor in the stream's names)."""
    from rtseg.errors import RtsegError, redact
    from rtseg.stream.sinks import make_sink

    assert redact("open rtsp://admin:S3cretPass@10.0.0.5:554/cam failed") == "open rtsp://admin:***@10.0.0.5:554/cam failed"
    assert redact("udp://127.0.0.1:5000") == "udp://127.0.0.1:5000"
    assert "S3cret" not in str(RtsegError("cannot open rtsp://admin:S3cret@host/cam; check it"))
    assert make_sink("rtsp://u:S3cret@127.0.0.1:8554/x").name == "rtsp://u:***@127.0.0.1:8554/x"
    code, out, err = run_cli(capsys, "stream", "--engine", str(tiny_ckpt), "--source", "rtsp://admin:S3cretPass@127.0.0.1:1/cam",
                             "--output", "null", "--open-timeout", "1", "--stall-timeout", "1")
    assert code == 2 and "S3cretPass" not in out + err and "admin:***@" in _one_line_error(err), err


# The option object each command builds (rtseg/commands): its fields own the defaults the click options show.
OPTION_OBJECTS = {
    "stream": ["rtseg.stream.pipeline:StreamOptions"],
    "bench": ["rtseg.bench:BenchOptions"],
    "calibrate": ["rtseg.calib.calibrate:CalibOptions"],
    "build-engine": ["rtseg.export.build:BuildOptions", "rtseg.gate.check:GateOptions",
                     "rtseg.runtime.tensorrt.build:TensorRTBuildOptions"],
    "calibrate-decision": ["rtseg.decision_tuning:DecisionCalibOptions"],
    "import-torch": ["rtseg.byom:ImportOptions"],
}


@pytest.mark.parametrize("name", sorted(OPTION_OBJECTS))
def test_click_defaults_are_the_option_objects_defaults(name):
    """A flag left out means the option object's own default (``None`` = not given, resolved by the library)."""
    import dataclasses
    import importlib

    import click

    from rtseg.cli import cli as group

    cmd = group.get_command(None, name)
    ctx = click.Context(cmd)
    fields = {}
    for spec in OPTION_OBJECTS[name]:
        mod, cls = spec.split(":")
        for f in dataclasses.fields(getattr(importlib.import_module(mod), cls)):
            if f.default is not dataclasses.MISSING:
                fields.setdefault(f.name, f.default)
    checked = 0
    for p in cmd.params:
        key = next((k for k in (p.name, p.name.removeprefix("gate_")) if k in fields), None)
        default = p.get_default(ctx)
        if key is None or default is None:
            continue
        want = fields[key]
        got = default if not isinstance(want, tuple) else tuple(int(v) for v in str(default).split(","))
        assert got == want, f"rtseg {name} --{p.name.replace('_', '-')}: click default {default!r}, option object {want!r}"
        checked += 1
    assert checked > 0


def test_build_engine_backend_and_precision_defaults_are_the_librarys():
    """``build-engine`` without ``--backend``/``--precision`` builds what ``build_engine()`` and the API build."""
    import inspect

    import click

    import rtseg.api
    from rtseg.cli import cli as group
    from rtseg.export.build import build_engine

    cmd = group.get_command(None, "build-engine")
    ctx = click.Context(cmd)
    got = {p.name: p.get_default(ctx) for p in cmd.params if p.name in ("backend", "precision")}
    for fn in (build_engine, rtseg.api.build_engine):
        sig = inspect.signature(fn).parameters
        assert got == {"backend": sig["backend"].default, "precision": sig["precision"].default}, fn
