"""The installed wheel works outside the checkout (issue 25): recipes and the default model are package data.

Builds the wheel of this checkout, installs it (with its core dependencies only, no extras) in a fresh
virtual environment in a temporary folder, and runs it from there: ``rtseg train --config NAME`` finds the
shipped recipes, a command that needs an extra says which one, and ``rtseg stream`` runs the default model
on the real clip.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

pytestmark = pytest.mark.slow


def _run(cmd, cwd, timeout=900):
    r = subprocess.run([str(c) for c in cmd], cwd=str(cwd), capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    code, out = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                      root / "dist", REPO], root)
    assert code == 0, out
    wheel = next((root / "dist").glob("rtseg-*.whl"))
    code, out = _run([sys.executable, "-m", "venv", root / "venv"], root)
    assert code == 0, out
    py = root / "venv" / "bin" / "python"
    code, out = _run([py, "-m", "pip", "install", "-q", "torch==2.14.1", "torchvision==0.29.1"], root)
    assert code == 0, out
    code, out = _run([py, "-m", "pip", "install", "-q", wheel], root)
    assert code == 0, out
    return root / "venv"


def test_the_wheel_is_imported_from_the_venv_not_the_checkout(venv):
    code, out = _run([venv / "bin" / "python", "-c", "import rtseg; print(rtseg.__file__)"], venv.parent)
    assert code == 0, out
    assert out.strip().startswith(str(venv)), out


def test_recipes_ship_with_the_wheel(venv):
    rtseg = venv / "bin" / "rtseg"
    code, out = _run([rtseg, "train", "--config", "eunet", "--help"], venv.parent)
    assert code == 0 and "Usage: rtseg train" in out, out
    code, out = _run([rtseg, "train", "--config", "no-such-recipe"], venv.parent)
    assert code == 2 and "default-rt-neg-ft, eunet, gmsrfnet, visionfusenet" in out, out


def test_a_missing_extra_is_one_line_naming_it(venv, kvasir, tmp_path):
    code, out = _run([venv / "bin" / "rtseg", "train", "--config", "eunet", "--model", "eunet-s", "--data-format",
                      "kvasir", "--data", kvasir, "--out", tmp_path / "run", "--epochs", "1", "--max-images", "8",
                      "--img-size", "32"], venv.parent)
    assert code == 2, out
    assert out.strip().splitlines()[-1] == ("error: training augmentation needs albumentations, which is not "
                                            "installed: pip install 'rtseg[train]'")


def test_stream_runs_the_default_model(venv, clip, tmp_path):
    out_mp4 = tmp_path / "out.mp4"
    code, out = _run([venv / "bin" / "rtseg", "stream", "--source", clip, "--max-frames", "10", "--output", out_mp4],
                     venv.parent)
    assert code == 0, out
    assert "10 frames" in out and out_mp4.stat().st_size > 0
