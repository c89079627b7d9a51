"""Issue 26, every metadata field validated: ``model.json`` fields no validator checked (``data`` not an
object, ``class_names`` not a list, ``palette`` "xx" or with Infinity, ...) and a model folder whose
``input_size`` is not its ``model.onnx``'s are one error line naming the field, never a traceback.

Issue 25 item 3, the same checks written as pydantic types (:mod:`rtseg.meta`): the exact error lines,
the strict types (``true``, ``"3"``, ``3.0`` are not integers), and no pydantic error or other exception
escaping ``from_dict`` whatever value any field (or a field inside a record) holds.

Real data: a tiny EUNet-S checkpoint tuned on the laparoscopy clip (test_stream), Kvasir-SEG images.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtseg.errors import RtsegError
from rtseg.meta import EngineMeta, ModelMeta

import byom_models as bm
from helpers import REPO, cli, one_error_line

EDITS = {
    "data a number": (lambda d: {**d, "data": 5}, "'data' must be an object"),
    "class_names a string": (lambda d: {**d, "class_names": "ab"}, "'class_names' must be a list"),
    "class_names numbers": (lambda d: {**d, "class_names": [1, 2]}, "'class_names' must be a list"),
    "palette xx": (lambda d: {**d, "palette": "xx"}, "'palette' must be a list of [R, G, B]"),
    "palette Infinity": (lambda d: {**d, "palette": [[0, 0, float("inf")], [0, 255, 0]]}, "'palette' must be a list of [R, G, B]"),
    "palette pairs": (lambda d: {**d, "palette": [[0, 0], [0, 255]]}, "'palette' must be a list of [R, G, B]"),
    "mean Infinity": (lambda d: {**d, "mean": [float("inf"), 0.5, 0.5]}, "'mean' must be three finite numbers"),
    "metrics a list": (lambda d: {**d, "metrics": [1]}, "'metrics' must be an object"),
    "task 7": (lambda d: {**d, "task": 7}, "'task' must be 'binary' or 'multiclass'"),
    "ignore_index a string": (lambda d: {**d, "ignore_index": "a"}, "'ignore_index' must be a class index"),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_a_bad_model_json_field_is_one_line(tmp_path, tiny_engine, kvasir, case):  # noqa: F811
    edit, words = EDITS[case]
    ck = Path(shutil.copytree(tiny_engine, tmp_path / "ck"))
    (ck / "model.json").write_text(json.dumps(edit(json.loads((ck / "model.json").read_text()))))  # inf → Infinity
    code, err = cli("eval", "--checkpoint", ck, "--data", kvasir, "--limit", "2", "--save-overlays", "2",
                    "--overlays-path", tmp_path / "o.png")
    assert code == 2 and words in one_error_line(err)


def test_a_model_folder_input_size_other_than_its_onnx_is_one_line(tmp_path, tiny_engine, kvasir, clip):  # noqa: F811
    import rtseg
    from rtseg.export.build import build_engine

    eng = build_engine(tiny_engine, "onnxruntime", "fp32", tmp_path / "ort")
    folder = rtseg.import_onnx(eng / "model.onnx", bm.meta("tiny", (64, 64)), tmp_path / "mf")
    d = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**d, "input_size": [96, 96]}))
    words = "'input_size' is [96, 96] but model.onnx takes 64x64 images"
    for args in (("eval", "--checkpoint", folder, "--data", kvasir, "--limit", "2"),
                 ("build-engine", "--checkpoint", folder, "--backend", "onnxruntime", "--out", tmp_path / "e2"),
                 ("stream", "--engine", folder, "--source", clip, "--max-frames", "2", "--no-output", "-q")):
        code, err = cli(*args)
        assert code == 2 and words in one_error_line(err), (args[0], err)


# -- issue 25 item 3: model.json / engine.json checked by pydantic types, messages unchanged --------------
MODEL = json.loads((REPO / "tests" / "assets" / "eunet-tiny-kvasir64" / "model.json").read_text()) | {
    "decision": {"presence": {"min_peak": 1.0, "min_area": 4}, "persistence": {"on_frames": 2, "hold_frames": 1}}}
ENGINE = {"format": "rtseg-engine/1", "backend": "onnxruntime", "backend_version": "1.20.0", "precision": "fp32",
          "engine_file": "model.ort.onnx", "input": {"name": "input", "shape": [-1, 3, 64, 64], "dtype": "float32"},
          "output": {"name": "logits", "shape": [-1, 1, 64, 64], "dtype": "float32"},
          "batch": {"min": 1, "opt": 2, "max": 4}, "model": MODEL, "verify": {"ok": True},
          "accuracy_gate": {"status": "passed", "metric": "dice", "tolerance_pt": 1.0, "after": {"delta_pt": -0.2}}}
FIX = "; fix the file or rebuild it with rtseg"


def edited(doc: dict, path: str, value) -> dict:
    """A deep copy of ``doc`` with ``doc[a][b] = value`` for ``path`` ``"a.b"`` (``...`` deletes the key)."""
    doc = copy.deepcopy(doc)
    *outer, last = path.split(".")
    inner = doc
    for key in outer:
        inner = inner[key]
    if value is ...:
        del inner[last]
    else:
        inner[last] = value
    return doc


MODEL_LINES = [  # (field, value, the whole error line)
    ("num_classes", True, "'num_classes' must be an integer in 1..1024, not True"),
    ("num_classes", "3", "'num_classes' must be an integer in 1..1024, not '3'"),
    ("num_classes", 3.0, "'num_classes' must be an integer in 1..1024, not 3.0"),
    ("num_classes", 1025, "'num_classes' must be an integer in 1..1024, not 1025"),
    ("model", "", "'model' must be a registry name (a non-empty string)"),
    ("model_kwargs", [1], "'model_kwargs' must be an object of keyword arguments"),
    ("input_size", [256.0, 256], "'input_size' must be [H, W] with integers in 1..8192, not [256.0, 256]"),
    ("input_size", [True, 256], "'input_size' must be [H, W] with integers in 1..8192, not [True, 256]"),
    ("input_size", [64], "'input_size' must be [H, W] with integers in 1..8192, not [64]"),
    ("mean", [float("nan"), 0.5, 0.5], "'mean' must be three finite numbers (RGB in [0, 1]), not [nan, 0.5, 0.5]"),
    ("mean", [10**400, 0.5, 0.5], "'mean' must be three finite numbers (RGB in [0, 1]), not "),  # an OverflowError once
    ("std", [0.2, 0.2], "'std' must be three finite numbers (RGB in [0, 1]), not [0.2, 0.2]"),
    ("std", [0, 0.2, 0.2], "'std' must be positive (a zero std divides by zero)"),
    ("resize", "crop", "'resize' must be 'stretch' or 'letterbox', not 'crop'"),
    ("task", 7, "'task' must be 'binary' or 'multiclass', not 7"),
    ("ignore_index", True, "'ignore_index' must be a class index in 0..255 or null, not True"),
    ("ignore_index", 256, "'ignore_index' must be a class index in 0..255 or null, not 256"),
    ("data", None, "'data' must be an object, not NoneType"),
    ("source", [], "'source' must be an object, not list"),
    ("class_names", [], "'class_names' must be a list of 1..1025 class names (strings), not []"),
    ("palette", [[0, 0, True]], "'palette' must be a list of [R, G, B] colours with levels in 0..255, not [[0, 0, True]]"),
    ("palette", [[0, 0, 256]], "'palette' must be a list of [R, G, B] colours with levels in 0..255, not [[0, 0, 256]]"),
    ("decision", 3, "'decision' must be an object (see rtseg calibrate-decision)"),
    ("decision.persistence", {"on_frames": 2}, "'decision.persistence' must be an object with on_frames and hold_frames"),
    ("decision.persistence.on_frames", 0,
     "'decision.persistence' --persist must be a whole number of frames in 1..10000, got 0; 1 shows a detection at once"),
    ("rtseg_version", 5, "'rtseg_version' must be a string (the rtseg version that wrote the file), not 5"),  # new
]


@pytest.mark.parametrize("path,value,line", MODEL_LINES, ids=[f"{p}={v!r:.20}" for p, v, _ in MODEL_LINES])
def test_model_json_field_errors_are_these_lines(path, value, line):
    with pytest.raises(RtsegError) as e:
        ModelMeta.from_dict(edited(MODEL, path, value), "ck/model.json")
    assert str(e.value).startswith(f"ck/model.json: {line}") and str(e.value).endswith(FIX), str(e.value)


ENGINE_LINES = [
    ("format", ..., "'format' is None, expected 'rtseg-engine/1' (another tool or rtseg version)"),
    ("backend", 5, "'backend' is missing or not a str"),
    ("precision", 5, "'precision' is missing or not a str"),
    ("precision", "fp64", "'precision' is 'fp64', not one of fp32, bf16, fp16, int8"),
    ("engine_file", "../x.onnx", "'engine_file' is '../x.onnx': it must be a file name inside the engine folder"),
    ("input", [1], "'input' is missing or not a dict"),
    ("input.shape", [-1, 3, 64.0, 64], "'input.shape' must be [N, 3, H, W] with H, W in 1..8192, not [-1, 3, 64.0, 64]"),
    ("input.shape", [-1, 1, 64, 64], "'input.shape' must be [N, 3, H, W] with H, W in 1..8192, not [-1, 1, 64, 64]"),
    ("output.shape", ..., "'output.shape' must be [N, C, H, W], not None"),
    ("output.shape", [-1, 2, 64, 64], "'output.shape' has 2 channels but the model has num_classes 1"),
    ("batch", "x", "'batch' must be an object {min, opt, max}"),
    ("batch.min", True, "'batch' must satisfy 1 ≤ min ≤ opt ≤ max, not {'min': True, 'opt': 2, 'max': 4}"),
    ("batch.min", None, "'batch' must satisfy 1 ≤ min ≤ opt ≤ max, not {'min': None, 'opt': 2, 'max': 4}"),  # a TypeError once
    ("batch.max", 1, "'batch' must satisfy 1 ≤ min ≤ opt ≤ max, not {'min': 1, 'opt': 2, 'max': 1}"),
    ("accuracy_gate.after.delta_pt", "x", "'accuracy_gate' is not the gate record 'rtseg build-engine' writes "
                                         "({status, metric, tolerance_pt, after: {delta_pt}, ...})"),
]


@pytest.mark.parametrize("path,value,line", ENGINE_LINES, ids=[f"{p}={v!r:.20}" for p, v, _ in ENGINE_LINES])
def test_engine_json_field_errors_are_these_lines(path, value, line):
    with pytest.raises(RtsegError) as e:
        EngineMeta.from_dict(edited(ENGINE, path, value), Path("eng/engine.json"))
    assert str(e.value) == f"eng/engine.json: {line}{FIX}"


def test_engine_model_record_is_checked_as_model_json_and_format_is_reported_first():
    with pytest.raises(RtsegError, match=r"^engine.json 'model': 'num_classes' must be an integer in 1..1024, not True;"):
        EngineMeta.from_dict(edited(ENGINE, "model.num_classes", True))
    with pytest.raises(RtsegError, match=r"^engine.json: 'format' is 'x', expected"):  # before the other fields
        EngineMeta.from_dict(edited(edited(ENGINE, "precision", "fp64"), "format", "x"))


def test_a_valid_file_reads_back_as_written():
    """Unknown keys of model.json are ignored, records of engine.json kept in order; ints stay ints."""
    meta = ModelMeta.from_dict(MODEL | {"unknown": 1, "std": [1, 1, 1]})
    assert meta.to_dict() == {k: v for k, v in MODEL.items()} | {"std": [1, 1, 1], "source": {}}
    assert list(meta.to_dict()) == list(ModelMeta.__dataclass_fields__) and dataclasses.asdict(meta) == meta.to_dict()
    eng = EngineMeta.from_dict(ENGINE)
    assert eng.to_dict() == ENGINE and list(eng.to_dict())[-2:] == ["verify", "accuracy_gate"]
    assert (eng.input_hw, eng.num_classes, eng.max_batch, eng.get("verify")) == ((64, 64), 1, 4, {"ok": True})
    assert eng.model_meta.to_dict() == ModelMeta.from_dict(MODEL).to_dict()


def test_constructing_checks_the_fields_too():
    assert dataclasses.replace(ModelMeta(model="eunet-s"), num_classes=3).num_classes == 3
    with pytest.raises(pydantic.ValidationError):
        ModelMeta(model="eunet-s", num_classes=True)
    with pytest.raises(pydantic.ValidationError):
        dataclasses.replace(ModelMeta(model="eunet-s"), input_size=[64.0, 64])


ODD = (st.none() | st.booleans() | st.integers(-3, 300) | st.floats(allow_nan=True, allow_infinity=True)
       | st.sampled_from([10**400, 2**63, -(2**63), 8193, 1025, "", "fp32", "../x", ".", "letterbox", "multiclass"])
       | st.text(max_size=4))
ANY_JSON = st.recursive(ODD, lambda c: st.lists(c, max_size=4) | st.dictionaries(
    st.sampled_from(["min", "opt", "max", "shape", "after", "delta_pt", "min_peak", "min_area", "on_frames"]) | st.text(max_size=3),
    c, max_size=3), max_leaves=6)
MODEL_PATHS = [*MODEL, "decision.presence", "decision.presence.min_area", "decision.persistence",
               "decision.persistence.hold_frames"]
ENGINE_PATHS = [*ENGINE, "input.shape", "output.shape", "batch.min", "batch.opt", "batch.max", "accuracy_gate.after",
                "accuracy_gate.after.delta_pt", *(f"model.{p}" for p in MODEL_PATHS)]
ANY_VALUE = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                     suppress_health_check=[HealthCheck.too_slow])


@given(path=st.sampled_from(MODEL_PATHS), value=ANY_JSON | st.just(...))
@ANY_VALUE
def test_any_value_of_any_model_json_field_is_a_result_or_one_line(path, value):
    try:
        ModelMeta.from_dict(edited(MODEL, path, value), "m.json")
    except RtsegError as e:
        assert str(e).startswith("m.json") and "\n" not in str(e)


@given(path=st.sampled_from(ENGINE_PATHS), value=ANY_JSON | st.just(...))
@ANY_VALUE
def test_any_value_of_any_engine_json_field_is_a_result_or_one_line(path, value):
    try:
        EngineMeta.from_dict(edited(ENGINE, path, value), "e.json")
    except RtsegError as e:
        assert str(e).startswith("e.json") and "\n" not in str(e)
