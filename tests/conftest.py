"""Shared fixtures: the real data in ../shared/data, the tiny checkpoint and its engines, short clips, the
real-time sender; the `gpu` and `slow` markers. Helper functions live in tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import SENDER, cli, cut_clip, make_tiny_engine

REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    env = os.environ.get("RTSEG_SHARED_DATA")
    p = Path(env) if env else REPO.parent / "shared" / "data"
    if not p.is_dir():
        raise RuntimeError(f"real test data not found at {p}; check out the repo beside shared/ or set RTSEG_SHARED_DATA")
    return p


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$RTSEG_SHARED_DATA``): the real data sets and clips."""
    return _shared_data()


@pytest.fixture(scope="session")
def kvasir(shared_data) -> Path:
    return shared_data / "kvasir-seg-256"


@pytest.fixture(scope="session")
def clip(shared_data) -> Path:
    """The real 1280×720 25 fps laparoscopy clip (250 frames)."""
    return shared_data / "video" / "endo_laparoscopy.mp4"


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory, clip) -> Path:
    return make_tiny_engine(tmp_path_factory.mktemp("stream") / "tiny-ckpt", clip)


@pytest.fixture(scope="session")
def backend(tiny_engine):
    from rtseg.runtime import load_engine

    return load_engine(tiny_engine, num_threads=1)


@pytest.fixture(scope="session")
def small_clip(tmp_path_factory, clip) -> Path:
    """2 s (50 frames, 25 FPS) of the real laparoscopy clip at 320×180."""
    return cut_clip(clip, tmp_path_factory.mktemp("clips") / "endo_2s_320.mp4", 2.0, (320, 180))


@pytest.fixture(scope="session")
def small_bikes(tmp_path_factory, shared_data) -> Path:
    """2 s (50 frames, 25 FPS) of the real street clip at 320×136."""
    return cut_clip(shared_data / "video" / "bikes_street.mp4", tmp_path_factory.mktemp("clips") / "bikes_2s.mp4", 2.0,
                    (320, 136))


@pytest.fixture(scope="session")
def ort_engine(tmp_path_factory, tiny_engine):
    """An ONNX Runtime fp32 engine folder of the tiny checkpoint."""
    out = tmp_path_factory.mktemp("rob") / "ort"
    code, err = cli("build-engine", "--checkpoint", tiny_engine, "--backend", "onnxruntime", "--precision", "fp32",
                    "--out", out)
    assert code == 0, err
    return out


@pytest.fixture(scope="session")
def sender(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("net") / "sender.py"
    p.write_text(SENDER)
    return p


@pytest.fixture(scope="session")
def net_clip(tmp_path_factory, clip) -> Path:
    """2 s of the real clip at 320×180 with a key frame every 10 frames (like a camera stream)."""
    return cut_clip(clip, tmp_path_factory.mktemp("net") / "endo_gop10.mp4", 2.0, (320, 180), gop=10)


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
