"""Issue 26, tracebacks round 3: bad values that used to end in a Python traceback are one
``error:`` line (exit 2) naming the problem and the fix — out-of-range frame rates, a codec the
container cannot hold, an ``--out`` that is a file where a folder is written, an overlay grid name
without an image extension, an ``import-torch`` factory that raises or a module with a syntax error.
"""

from __future__ import annotations

import sys

import pytest

from helpers import cli, one_error_line


def test_a_frame_rate_no_container_can_carry(tiny_engine, kvasir, tmp_path):  # noqa: F811
    code, err = cli("stream", "--engine", tiny_engine, "--source", kvasir / "images", "--fps", "1e18",
                    "--output", tmp_path / "o.mp4", "--max-frames", "2", "-q")
    assert code == 2 and "--fps" in one_error_line(err)


def test_a_codec_the_container_cannot_hold(tiny_engine, small_clip, tmp_path):  # noqa: F811
    code, err = cli("stream", "--engine", tiny_engine, "--source", small_clip, "--output", tmp_path / "o.mkv",
                    "--codec", "gif", "-q")
    line = one_error_line(err)
    assert code == 2 and "gif" in line and "--codec" in line
    assert not list(tmp_path.iterdir())  # no temporary file left behind


def test_a_bad_preset_is_named_not_blamed_on_the_output(tiny_engine, small_clip, tmp_path):  # noqa: F811
    """Before: ``cannot write o.mp4: Invalid argument; check the path`` (the encoder refused the preset)."""
    code, err = cli("stream", "--engine", tiny_engine, "--source", small_clip, "--output", tmp_path / "o.mp4",
                    "--preset", "bogus", "-q")
    line = one_error_line(err)
    assert code == 2 and "--preset 'bogus'" in line and "ultrafast" in line and "o.mp4" not in line
    assert not list(tmp_path.iterdir())


def test_build_engine_threads_out_of_range(tiny_engine, tmp_path):  # noqa: F811
    """Before: ``build-engine --threads -1`` was accepted (and passed to the gate's backends)."""
    code, err = cli("build-engine", "--checkpoint", tiny_engine, "--backend", "onnxruntime", "--threads", "-1",
                    "--out", tmp_path / "e")
    assert code == 2 and "--threads -1 is outside" in one_error_line(err) and not (tmp_path / "e").exists()


@pytest.mark.parametrize("command", ["build-engine", "calibrate"])
def test_an_out_that_is_a_file_where_a_folder_is_written(tiny_engine, kvasir, tmp_path, command):  # noqa: F811
    f = tmp_path / "exist.txt"
    f.write_text("mine")
    extra = ["--backend", "openvino", "--precision", "fp32"] if command == "build-engine" else \
        ["--calib-data", kvasir / "images", "--num-images", "2"]
    code, err = cli(command, "--checkpoint", tiny_engine, *extra, "--out", f)
    assert code == 2 and "is a file" in one_error_line(err)
    assert f.read_text() == "mine"


def test_an_overlay_grid_name_that_is_no_image(tiny_engine, kvasir, tmp_path):  # noqa: F811
    code, err = cli("eval", "--engine", tiny_engine, "--data", kvasir, "--split", "test", "--limit", "2",
                    "--save-overlays", "2", "--overlays-path", tmp_path / "grid.txt")
    assert code == 2 and ".png" in one_error_line(err)


@pytest.mark.parametrize("body, what", [("def build():\n    raise RuntimeError('boom')\n", "boom"),
                                        ("def (\n", "SyntaxError")])
def test_an_import_torch_factory_that_fails(tmp_path, monkeypatch, body, what):
    mod = f"userfactory_{abs(hash(body)) % 10**6}"
    (tmp_path / f"{mod}.py").write_text(body)
    (tmp_path / "m.yaml").write_text("name: x\ntask: binary\nclasses: [bg, polyp]\ninput: {size: [64, 64]}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        code, err = cli("import-torch", f"{mod}:build", "--meta", tmp_path / "m.yaml", "--out", tmp_path / "out")
    finally:
        sys.modules.pop(mod, None)
    assert code == 2 and what in one_error_line(err)


@pytest.mark.parametrize("how", ["closed", "full"])
def test_results_that_cannot_reach_stdout_are_an_error(tiny_engine, kvasir, how):  # noqa: F811
    """``eval --json >&-`` exited 0 and printed nothing (the report lost); ``> /dev/full`` ended in a
    traceback. Now: one error line, exit 2."""
    import os
    import subprocess

    from helpers import REPO

    cmd = [sys.executable, "-m", "rtseg", "eval", "--engine", str(tiny_engine), "--data", str(kvasir), "--split", "test",
           "--limit", "2", "--json"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if how == "closed":
        p = subprocess.run(cmd, stdout=None, stderr=subprocess.PIPE, text=True, env=env, cwd=str(REPO), timeout=120,
                           preexec_fn=lambda: os.close(1))
    else:
        with open("/dev/full", "w") as full:
            p = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, text=True, env=env, cwd=str(REPO), timeout=120)
    assert p.returncode == 2 and "stdout" in one_error_line(p.stderr), p.stderr


def test_calibrate_never_writes_into_a_folder_it_did_not_create(tiny_engine, kvasir, tmp_path):  # noqa: F811
    """Before: ``calibrate --out <another model folder>`` replaced that folder's ``model.onnx``."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.onnx").write_bytes(b"someone else's model")
    (other / "model.json").write_text("{}")
    code, err = cli("calibrate", "--checkpoint", tiny_engine, "--calib-data", kvasir / "images", "--num-images", "2",
                    "--no-verify", "--out", other)
    assert code == 2 and "is not a calibration folder" in one_error_line(err)
    assert (other / "model.onnx").read_bytes() == b"someone else's model" and sorted(p.name for p in other.iterdir()) == [
        "model.json", "model.onnx"]


def test_out_of_memory_is_one_line(monkeypatch):
    """A MemoryError anywhere in a command (numpy's ``_ArrayMemoryError`` under ``ulimit -v``) is one line, exit 2."""

    import rtseg.cli

    def boom(*a, **k):
        raise MemoryError("Unable to allocate 32 GiB")

    monkeypatch.setattr(rtseg.cli.cli, "main", boom)
    code, err = cli("eval")
    assert code == 2 and one_error_line(err) == ("error: out of memory; pass a smaller --batch-size, --img-size or "
                                                 "input, or free memory")
