"""Issue 26, every metadata field validated: ``model.json`` fields no validator checked (``data`` not an
object, ``class_names`` not a list, ``palette`` "xx" or with Infinity, ...) and a model folder whose
``input_size`` is not its ``model.onnx``'s are one error line naming the field, never a traceback.

Real data: a tiny EUNet-S checkpoint tuned on the laparoscopy clip (test_stream), Kvasir-SEG images.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import byom_models as bm
from helpers import cli, one_error_line

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
