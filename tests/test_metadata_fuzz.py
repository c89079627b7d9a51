"""Property-based (hypothesis): mutated ``model.json``, ``engine.json`` and recipe files fed to
``rtseg eval``, ``rtseg stream``, ``rtseg build-engine`` and ``rtseg train`` always end with exit
status 0 or 2 — a result or one ``error:`` line — never a traceback (issue 17, "Validated metadata").

A mutation replaces a top-level or nested field with an arbitrary JSON value, deletes a field, or
replaces the whole document. Numbers are drawn small (plus a few absurd ones) so that a mutation that
stays valid still runs in a second on the tiny real checkpoint.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import REPO, cli

SCALARS = (st.none() | st.booleans() | st.integers(-5, 130) | st.sampled_from([0, 10**6, 2**63, -(2**31)])
           | st.floats(allow_nan=True, allow_infinity=True, width=32) | st.text(max_size=6)
           | st.sampled_from(["eunet-s", "letterbox", "fp32", "int8", "model.ort.onnx", "../x", "binary"]))
JSON = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=6)
FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def mutate(data, doc: dict):
    """One drawn mutation of ``doc`` (a JSON object): replace/delete a field, edit inside one, or replace it all."""
    kind = data.draw(st.sampled_from(["replace", "delete", "inside", "inside", "whole"]), label="kind")
    if kind == "whole":
        return data.draw(JSON, label="document")
    doc = copy.deepcopy(doc)
    key = data.draw(st.sampled_from(sorted(doc)), label="key")
    inner = doc[key]
    if kind == "delete":
        del doc[key]
    elif kind == "inside" and isinstance(inner, dict) and inner:
        sub = data.draw(st.sampled_from(sorted(inner)), label="sub")
        inner[sub] = data.draw(JSON, label="value")
    elif kind == "inside" and isinstance(inner, list) and inner:
        inner[data.draw(st.integers(0, len(inner) - 1), label="index")] = data.draw(JSON, label="value")
    else:
        doc[key] = data.draw(JSON, label="value")
    return doc


def mutated_copy(data, src: Path, dst: Path, name: str) -> Path:
    """``dst``: a copy of folder ``src`` (made once) whose JSON file ``name`` is one drawn mutation of ``src``'s."""
    if not dst.exists():
        shutil.copytree(src, dst)
    (dst / name).write_text(json.dumps(mutate(data, json.loads((src / name).read_text()))))
    return dst


def assert_clean(code, err: str) -> None:
    assert code in (0, 2), err
    assert "Traceback" not in err, err
    if code == 2:
        assert len([ln for ln in err.strip().splitlines() if ln.startswith("error:")]) == 1, err


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@given(data=st.data())
@settings(FUZZ, max_examples=40)
def test_eval_survives_any_model_json(work, tiny_engine, kvasir, data):  # noqa: F811
    ck = mutated_copy(data, tiny_engine, work / "ck-eval", "model.json")
    assert_clean(*cli("eval", "--checkpoint", ck, "--data", kvasir, "--limit", "2", "--batch-size", "2"))


@given(data=st.data())
@settings(FUZZ, max_examples=40)
def test_stream_survives_any_engine_json(work, ort_engine, small_clip, data):  # noqa: F811
    eng = mutated_copy(data, ort_engine, work / "eng-stream", "engine.json")
    assert_clean(*cli("stream", "--engine", eng, "--source", small_clip, "--max-frames", "2", "--no-output", "-q"))


@given(data=st.data())
@settings(FUZZ, max_examples=12)
def test_build_engine_survives_any_model_json(work, tiny_engine, data):  # noqa: F811
    ck = mutated_copy(data, tiny_engine, work / "ck-build", "model.json")
    out = work / "built"
    shutil.rmtree(out, ignore_errors=True)
    assert_clean(*cli("build-engine", "--checkpoint", ck, "--backend", "onnxruntime", "--precision", "fp32",
                      "--out", out))


@pytest.fixture(scope="module")
def existing_run(work) -> Path:
    """A folder holding a (fake) earlier run: a recipe that passes validation stops at the --out check."""
    run = work / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("{}\n")
    return run


@given(data=st.data())
@settings(FUZZ, max_examples=40)
def test_train_survives_any_recipe(work, existing_run, kvasir, data):
    doc = mutate(data, yaml.safe_load((REPO / "rtseg" / "configs" / "eunet.yaml").read_text()))
    recipe = work / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(doc))
    code, err = cli("train", "--config", recipe, "--data", kvasir, "--out", existing_run, "--quiet")
    assert_clean(code, err)
    assert code == 2  # never trains here: a valid recipe is stopped by the existing run in --out


@pytest.mark.parametrize("gate", [7, {"status": "failed", "after": 7}, {"status": "failed", "after": {"delta_pt": "x"}}])
def test_unreadable_gate_record_is_refused_not_passed(work, ort_engine, gate):  # noqa: F811
    """Found by the fuzzer above: a non-object ``accuracy_gate`` crashed the gate check with a traceback."""
    from rtseg.errors import RtsegError
    from rtseg.meta import EngineMeta

    doc = json.loads((ort_engine / "engine.json").read_text()) | {"accuracy_gate": gate}
    with pytest.raises(RtsegError, match="'accuracy_gate' is not the gate record"):
        EngineMeta.from_dict(doc)
