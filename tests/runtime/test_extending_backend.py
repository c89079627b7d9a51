"""docs/extending.md "Add a backend", followed with a toy: a backend registered through the public
table (``rtseg.runtime.register_backend``) builds with ``build_engine`` and serves ``rtseg stream`` and
``rtseg eval`` without any other change to rtseg.

The toy is ONNX Runtime with every graph optimisation disabled, under its own name and engine file:
small, but a real engine whose outputs can be checked against the shipped onnxruntime backend.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from rtseg.errors import RtsegError
from rtseg.export.build import build_engine
from rtseg.runtime import BackendSpec, LoadOptions, backend_names, load_engine, register_backend, unregister_backend
from rtseg.runtime.base import Backend, check_engine_header, engine_settings
from rtseg.runtime.onnxruntime_backend import cpu_device_info, make_session, onnxruntime_version

from helpers import run_cli

CKPT = Path(__file__).resolve().parents[1] / "assets" / "eunet-tiny-kvasir64"
NAME = "toy-ort-noopt"


# -- the recipe: one module with a Backend subclass and its SPEC ------------------------------------
class ToyBackend(Backend):
    """ONNX Runtime without graph optimisations: ``infer(float32[N, 3, H, W]) -> float32[N, C, H, W]``."""

    name = NAME

    def __init__(self, folder: Path, meta: dict, num_threads: int | None = None):
        rebuild = check_engine_header(folder, meta, NAME, "ONNX Runtime (toy)", onnxruntime_version())
        if not (folder / meta["engine_file"]).is_file():
            raise RtsegError(f"{folder} lacks {meta['engine_file']}; {rebuild}")
        super().__init__(**engine_settings(folder, meta))
        self.session = make_session(folder / meta["engine_file"], num_threads, level="disable")
        self.calls = 0

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.check_nchw(batch)
        self.calls += 1
        return self.session.run(None, {self.session.get_inputs()[0].name: batch.astype(np.float32)})[0]


def _build(req) -> dict:
    target = req.folder / "model.toy.onnx"
    shutil.copyfile(req.onnx, target)
    sess = make_session(target, level="disable")
    y = sess.run(None, {sess.get_inputs()[0].name: req.sample})[0]
    return {"backend_version": onnxruntime_version(), "device": cpu_device_info(), "engine_file": target.name,
            "output_sample": y}


SPEC = BackendSpec(name=NAME, label="ONNX Runtime (no graph optimisation)", precisions=("fp32",),
                   engine_file="model.toy.onnx", version=onnxruntime_version, device_info=cpu_device_info,
                   build=_build, load=lambda folder, meta, opts: ToyBackend(folder, meta, opts.num_threads))


@pytest.fixture(scope="module")
def toy_engine(tmp_path_factory):
    register_backend(SPEC)  # the one registration line
    try:
        yield build_engine(CKPT, NAME, "fp32", tmp_path_factory.mktemp("toy") / "engine")
    finally:
        unregister_backend(NAME)


def test_toy_backend_is_in_the_table_and_builds_a_checked_engine(toy_engine):
    assert NAME in backend_names()
    meta = json.loads((toy_engine / "engine.json").read_text())
    assert meta["backend"] == NAME and meta["engine_file"] == "model.toy.onnx"
    assert meta["verify"]["max_abs_diff"] < 1e-3 and meta["verify"]["mask_agreement"] > 0.999  # vs PyTorch
    with pytest.raises(RtsegError, match="builds fp32 engines, not 'int8'"):
        build_engine(CKPT, NAME, "int8", toy_engine.parent / "never")
    b = load_engine(toy_engine)
    assert isinstance(b, ToyBackend)
    ort = SPEC.load(toy_engine, meta, LoadOptions())
    x = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(b.infer_u8(x), ort.infer_u8(x), atol=1e-5)


def test_toy_backend_serves_stream_and_eval(toy_engine, tmp_path, capsys, shared_data):
    clip = shared_data / "video" / "colonoscopy_polypgen_seq11.mp4"
    out = tmp_path / "toy.mp4"
    code, _, err = run_cli(capsys, "stream", "--engine", toy_engine, "--source", clip, "--output", out,
                           "--max-frames", 12, "--batch-size", 4, "--quiet")
    assert code == 0, err
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 12
    code, stdout, err = run_cli(capsys, "eval", "--engine", toy_engine, "--data", shared_data / "kvasir-seg-256",
                                "--limit", 16, "--json")
    assert code == 0, err
    res = json.loads(stdout)
    assert res["backend"] == NAME and res["n_images"] == 16 and 0.0 <= res["per_image"]["dice"] <= 1.0


def test_unregistered_backend_is_a_one_line_error(toy_engine, capsys, shared_data):
    unregister_backend(NAME)
    try:
        code, _, err = run_cli(capsys, "eval", "--engine", toy_engine, "--data", shared_data / "kvasir-seg-256",
                               "--limit", 2)
    finally:
        register_backend(SPEC)
    assert code == 2 and "unknown backend 'toy-ort-noopt'" in err and len(err.strip().splitlines()) == 1
