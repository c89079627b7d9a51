"""Shared fixtures: the real data in ../shared/data, tiny checkpoints, the `gpu` marker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
