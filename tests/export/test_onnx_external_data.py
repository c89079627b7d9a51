"""Issue 26, external ONNX data confined to the model's folder: an initializer whose external data lies
outside the folder of its ``.onnx`` (``../../../../etc/passwd``, an absolute path, a symlink out), or is
not a regular file (a FIFO), is refused with one line naming the tensor — everywhere rtseg reads an
ONNX: import-onnx, model folders (ONNX Runtime reference, build-engine, calibration) and engine loads.

Real data: the ONNX of a tiny EUNet-S tuned on the laparoscopy clip (test_stream), Kvasir-SEG images.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, numpy_helper

from rtseg.errors import RtsegError

import byom_models as bm
from helpers import cli, one_error_line

HW = (64, 64)


@pytest.fixture(scope="module")
def ort_engine(tmp_path_factory, tiny_engine):  # noqa: F811
    from rtseg.export.build import build_engine

    return build_engine(tiny_engine, "onnxruntime", "fp32", tmp_path_factory.mktemp("ext") / "ort")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, ort_engine):
    """An imported model folder (import-onnx of the tiny network's ONNX)."""
    import rtseg

    return rtseg.import_onnx(ort_engine / "model.onnx", bm.meta("tiny", HW), tmp_path_factory.mktemp("ext") / "mf")


#: how a planted location escapes: (location, what to create in the model's folder first)
ESCAPES = {
    "parent": "../../../../../../../../etc/passwd",
    "absolute": "/etc/passwd",
    "link out": "link.bin",
    "fifo": "fifo.bin",
}


def with_external(src: Path, dst: Path, location: str) -> Path:
    """``dst``: the ONNX ``src`` with its largest initializer moved to external data at ``location``
    (``link.bin``: a symlink to /etc/passwd; ``fifo.bin``: a FIFO, both made beside ``dst``)."""
    m = onnx.load(str(src))
    t = max(m.graph.initializer, key=lambda t: len(t.raw_data))
    n = len(t.raw_data)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(n))):
        e = t.external_data.add()
        e.key, e.value = k, v
    dst.parent.mkdir(parents=True, exist_ok=True)
    if location == "link.bin":
        os.symlink("/etc/passwd", dst.parent / location)
    elif location == "fifo.bin":
        os.mkfifo(dst.parent / location)
    dst.write_bytes(m.SerializeToString())
    return dst


WORDS = r"tensor '.*' keeps its data in .*, which (is outside the model's folder|is an absolute path|is not a regular file)"


@pytest.mark.parametrize("case", list(ESCAPES))
def test_import_onnx_refuses_external_data_out_of_the_folder(tmp_path, ort_engine, case):
    import rtseg

    evil = with_external(ort_engine / "model.onnx", tmp_path / "in" / "evil.onnx", ESCAPES[case])
    with pytest.raises(RtsegError, match=WORDS):
        rtseg.import_onnx(evil, bm.meta("evil", HW), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    meta = tmp_path / "m.json"
    meta.write_text(json.dumps(bm.meta("evil", HW)))
    code, err = cli("import-onnx", evil, "--meta", meta, "--out", tmp_path / "out")
    assert code == 2 and "keeps its data in" in one_error_line(err)


def test_external_data_inside_the_folder_is_read(tmp_path, ort_engine):
    import rtseg

    m = onnx.load(str(ort_engine / "model.onnx"))
    (tmp_path / "in").mkdir()
    onnx.save(m, str(tmp_path / "in" / "m.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0)
    folder = rtseg.import_onnx(tmp_path / "in" / "m.onnx", bm.meta("ok", HW), tmp_path / "out")
    assert rtseg.load(folder).backend.name == "onnx"


@pytest.mark.parametrize("case", ["parent", "link out"])
def test_a_model_folder_with_escaping_data_is_refused_by_every_reader(tmp_path, model_folder, ort_engine, kvasir, case):
    from rtseg.calib.calibrate import CalibOptions, calibrate_checkpoint
    from rtseg.export.build import build_engine
    from rtseg.runtime import load_engine

    folder = Path(shutil.copytree(model_folder, tmp_path / "mf"))
    with_external(ort_engine / "model.onnx", folder / "model.onnx", ESCAPES[case])
    with pytest.raises(RtsegError, match=WORDS):
        load_engine(folder)  # the ONNX Runtime reference of a model folder
    with pytest.raises(RtsegError, match=WORDS):
        build_engine(folder, "onnxruntime", "fp32", tmp_path / "eng")
    with pytest.raises(RtsegError, match=WORDS):
        calibrate_checkpoint(folder, CalibOptions(calib_data=kvasir / "images", num_images=2, out=tmp_path / "calib",
                                                  verify=False))


@pytest.mark.parametrize("resealed", [False, True], ids=["unsealed", "resealed by hand"])
def test_an_engine_file_with_escaping_data_is_refused(tmp_path, ort_engine, resealed):
    """Even an engine whose seal was recomputed after the edit (or one loaded with allow_unsealed) never
    reads data from outside its folder."""
    from rtseg.runtime import load_engine, seal_engine

    eng = Path(shutil.copytree(ort_engine, tmp_path / "eng"))
    with_external(ort_engine / "model.ort.onnx", eng / "model.ort.onnx", ESCAPES["parent"])
    doc = json.loads((eng / "engine.json").read_text())
    doc.pop("seal")
    if resealed:
        doc["seal"] = seal_engine(eng, doc)
    (eng / "engine.json").write_text(json.dumps(doc))
    with pytest.raises(RtsegError, match=WORDS):
        load_engine(eng, num_threads=1, allow_unsealed=not resealed)


def test_the_check_names_no_false_alarm_on_self_contained_files(ort_engine):
    from rtseg.onnx_files import check_external_data, external_locations, load_onnx

    m = load_onnx(ort_engine / "model.onnx")
    assert external_locations(m) == [] and numpy_helper.to_array(m.graph.initializer[0]).size > 0
    check_external_data(ort_engine / "model.ort.onnx")


@pytest.mark.parametrize("kind", ["/dev/zero", "fifo"])
def test_import_onnx_of_a_device_or_fifo_is_one_line_not_read(tmp_path, kind):
    """``import-onnx /dev/zero`` read 24 GB before the kernel killed it; a FIFO blocked forever."""
    src = Path("/dev/zero") if kind == "/dev/zero" else tmp_path / "m.onnx"
    if kind == "fifo":
        os.mkfifo(src)
    meta = tmp_path / "m.json"
    meta.write_text(json.dumps(bm.meta("z", HW)))
    code, err = cli("import-onnx", src, "--meta", meta, "--out", tmp_path / "out")
    assert code == 2 and "not a regular file" in one_error_line(err)


def test_load_meta_parses_model_onnx_once_per_file_version(tmp_path, model_folder, monkeypatch):
    """``load_meta`` of a model folder checks ``input_size`` against ``model.onnx``: the ONNX is parsed once,
    not on every call (each parse reads the whole graph), and again after the file changes."""
    from rtseg.checkpoint import load_meta

    mf = tmp_path / "mf"
    shutil.copytree(model_folder, mf)
    calls = []
    real = onnx.load
    monkeypatch.setattr(onnx, "load", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    for _ in range(3):
        assert load_meta(mf).input_hw == HW
    assert len(calls) == 1
    m = onnx.load(str(mf / "model.onnx"))
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 32
    onnx.save(m, str(mf / "model.onnx"))
    calls.clear()
    with pytest.raises(RtsegError, match="'input_size' is \\[64, 64\\]"):
        load_meta(mf)
    assert len(calls) == 1
