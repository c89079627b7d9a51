"""Issue 26, engine integrity: ``engine.json`` ``seal`` covers the SHA-256 of every engine file, the model
record (mean/std, classes, input size) and the accuracy-gate record. An edited file or record is one
error line naming it and the rebuild command; an engine without a seal is refused unless the caller
opts in (``allow_unsealed`` / ``--allow-unsealed``); the cached default engine is rebuilt when its
seal is old or broken.

Real data: a tiny EUNet-S checkpoint tuned on the laparoscopy clip (test_stream), Kvasir-SEG images.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from rtseg.errors import RtsegError
from rtseg.runtime import load_engine

from helpers import cli, one_error_line


@pytest.fixture(scope="module")
def engines(tmp_path_factory, tiny_engine):  # noqa: F811
    """OpenVINO and ONNX Runtime fp32 engines of the tiny checkpoint (sealed by build-engine)."""
    from rtseg.export.build import build_engine

    root = tmp_path_factory.mktemp("sealed")
    return {b: build_engine(tiny_engine, b, "fp32", root / b) for b in ("openvino", "onnxruntime")}


def _copy(src: Path, dst: Path, edit=None) -> Path:
    shutil.copytree(src, dst)
    if edit is not None:
        d = json.loads((dst / "engine.json").read_text())
        (dst / "engine.json").write_text(json.dumps(edit(d)))
    return dst


def _flip_bytes(path: Path) -> None:
    """A still-loadable edit: weights negated — an ONNX file's largest initializer, else the last 64
    bytes (float32) of a weight file."""
    if path.suffix == ".onnx":
        import onnx
        from onnx import numpy_helper

        m = onnx.load(str(path))
        t = max(m.graph.initializer, key=lambda t: len(t.raw_data))
        t.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(t), t.name))
        onnx.save(m, str(path))
        return
    b = bytearray(path.read_bytes())
    tail = np.frombuffer(bytes(b[-64:]), np.float32) * -1.0
    b[-64:] = tail.astype(np.float32).tobytes()
    path.write_bytes(bytes(b))


def test_the_seal_covers_every_engine_file(engines):
    for backend, folder in engines.items():
        seal = json.loads((folder / "engine.json").read_text())["seal"]
        want = {"model.onnx", "model.xml", "model.bin"} if backend == "openvino" else {"model.onnx", "model.ort.onnx"}
        assert seal["format"] == "rtseg-seal/2" and set(seal["files"]) == want, seal
        assert load_engine(folder, num_threads=1).name == backend


RECORD_EDITS = {
    "mean": lambda d: {**d, "model": {**d["model"], "mean": [0.1, 0.1, 0.1]}},
    "std": lambda d: {**d, "model": {**d["model"], "std": [0.5, 0.5, 0.5]}},
    "classes": lambda d: {**d, "model": {**d["model"], "class_names": ["background", "tumour"]}},
    "input size": lambda d: {**d, "model": {**d["model"], "input_size": [96, 96]}},
    "gate record": lambda d: {**d, "accuracy_gate": {"status": "passed", "metric": "dice",
                                                                      "tolerance_pt": 0.5, "after": {"delta_pt": 0.0}}},
    "calibration record": lambda d: {**d, "calibration": {"method": "minmax"}},
}


@pytest.mark.parametrize("case", list(RECORD_EDITS))
def test_an_edited_record_is_refused(tmp_path, engines, case):
    eng = _copy(engines["openvino"], tmp_path / "e", RECORD_EDITS[case])
    with pytest.raises(RtsegError, match=r"engine\.json was edited after the build.*rtseg build-engine --checkpoint") as e:
        load_engine(eng, num_threads=1)
    assert "\n" not in str(e.value)
    with pytest.raises(RtsegError, match="edited after the build"):  # opting out of seals does not accept a broken one
        load_engine(eng, num_threads=1, allow_unsealed=True)


@pytest.mark.parametrize("backend,name", [("openvino", "model.bin"), ("openvino", "model.xml"),
                                          ("openvino", "model.onnx"), ("onnxruntime", "model.ort.onnx")])
def test_an_edited_engine_file_is_refused_naming_it(tmp_path, engines, backend, name):
    eng = _copy(engines[backend], tmp_path / "e")
    if name.endswith(".xml"):
        (eng / name).write_text((eng / name).read_text().replace("<!--", "<!-- edited", 1) + "\n")
    else:
        _flip_bytes(eng / name)
    with pytest.raises(RtsegError, match=rf"{name} was changed after the build.*rebuild it with 'rtseg build-engine"):
        load_engine(eng, num_threads=1)


def test_a_missing_or_linked_engine_file_is_refused(tmp_path, engines):
    gone = _copy(engines["openvino"], tmp_path / "gone")
    (gone / "model.bin").unlink()
    with pytest.raises(RtsegError, match="model.bin is missing"):
        load_engine(gone, num_threads=1)
    linked = _copy(engines["openvino"], tmp_path / "linked")
    shutil.move(linked / "model.bin", tmp_path / "elsewhere.bin")
    os.symlink(tmp_path / "elsewhere.bin", linked / "model.bin")  # same bytes, but out of the folder
    with pytest.raises(RtsegError, match="model.bin is not a regular file"):
        load_engine(linked, num_threads=1)


@pytest.mark.parametrize("seal", [None, "0" * 64], ids=["no seal", "an older rtseg's seal"])
def test_an_unsealed_engine_needs_the_opt_in(tmp_path, engines, seal):
    def edit(d):
        d.pop("seal")
        return d if seal is None else {**d, "seal": seal}

    eng = _copy(engines["onnxruntime"], tmp_path / "e", edit)
    with pytest.raises(RtsegError, match="cannot be checked; rebuild it with .*--allow-unsealed"):
        load_engine(eng, num_threads=1)
    assert load_engine(eng, num_threads=1, allow_unsealed=True).name == "onnxruntime"
    import rtseg

    assert rtseg.load(eng, allow_unsealed=True).backend.name == "onnxruntime"


def test_commands_refuse_an_unsealed_engine_in_one_line_unless_allowed(tmp_path, engines, kvasir, clip):
    eng = _copy(engines["onnxruntime"], tmp_path / "e", lambda d: {k: v for k, v in d.items() if k != "seal"})
    code, err = cli("eval", "--engine", eng, "--data", kvasir, "--limit", "2")
    assert code == 2 and "has no seal" in one_error_line(err) and "--allow-unsealed" in err
    code, err = cli("eval", "--engine", eng, "--data", kvasir, "--limit", "2", "--allow-unsealed")
    assert code == 0, err
    edited = _copy(engines["onnxruntime"], tmp_path / "x")
    _flip_bytes(edited / "model.ort.onnx")
    code, err = cli("bench", "--engine", edited, "--video", clip, "--no-torch", "--no-stream", "--seconds", "0.1")
    assert code == 2 and "model.ort.onnx was changed after the build" in one_error_line(err)


@pytest.mark.slow
def test_the_cached_default_engine_is_resealed_when_old_or_broken(tmp_path, monkeypatch, tiny_engine):  # noqa: F811
    """The default model's cached engine (here: the tiny checkpoint standing in for it) is built on first
    use; an engine.json with an older seal, or an edited model.bin, makes the next use rebuild it
    (logged) instead of running it."""
    import rtseg.defaults as d

    monkeypatch.setattr(d, "DEFAULT_MODEL_DIR", tiny_engine)
    monkeypatch.setenv("RTSEG_CACHE", str(tmp_path / "cache"))
    logs: list[str] = []
    b = d.load_default_engine(num_threads=1, log=logs.append)
    folder = b.folder
    first = json.loads((folder / "engine.json").read_text())["seal"]
    assert first["format"] == "rtseg-seal/2" and not any("rebuilding" in m for m in logs)
    doc = json.loads((folder / "engine.json").read_text())
    (folder / "engine.json").write_text(json.dumps({**doc, "seal": "0" * 64}))  # as an older rtseg wrote it
    d.load_default_engine(num_threads=1, log=logs.append)
    assert any("rebuilding the cached default engine" in m and "older rtseg" in m for m in logs)
    assert json.loads((folder / "engine.json").read_text())["seal"]["format"] == "rtseg-seal/2"
    _flip_bytes(folder / "model.bin")
    logs.clear()
    again = d.load_default_engine(num_threads=1, log=logs.append)
    assert any("model.bin was changed after the build" in m for m in logs)
    x = np.random.default_rng(0).integers(0, 256, (1, *again.input_hw, 3), dtype=np.uint8)
    np.testing.assert_allclose(again.infer_u8(x), b.infer_u8(x), atol=1e-4)  # the rebuilt engine is the original
