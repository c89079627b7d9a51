"""rtseg bench: the report's structure (not its speeds) on a real clip, an OpenVINO engine and the torch reference."""

import json

import pytest

from rtseg.checkpoint import save_checkpoint
from rtseg.cli import main
from rtseg.meta import ModelMeta
from rtseg.models import create_model

from helpers import TINY_WIDTHS


@pytest.fixture(scope="module")
def engine(tmp_path_factory, kvasir):
    from rtseg.export.build import build_engine

    d = tmp_path_factory.mktemp("bench")
    ck = save_checkpoint(d / "ckpt", create_model("eunet-s", widths=list(TINY_WIDTHS)),
                         ModelMeta(model="eunet-s", model_kwargs={"widths": list(TINY_WIDTHS)}, input_size=[64, 64],
                                   data={"root": str(kvasir), "format": "polyp"}))
    return build_engine(ck, backend="openvino", precision="fp32", out=d / "ov"), ck


def test_bench_json_report(capsys, engine, clip, tmp_path):
    eng, ck = engine
    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit) as e:
        main(["bench", "--engine", str(eng), "--video", str(clip), "--batch-sizes", "1,2", "--seconds", "0.2",
              "--warmup", "1", "--threads", "1", "--stream-frames", "20", "--json", "--out", str(out)])
        raise SystemExit(0)
    assert e.value.code == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep == json.loads(out.read_text())
    rows = rep["rows"]
    kinds = {(r["backend"], r["kind"], r["batch"]) for r in rows}
    # engine at both batch sizes, the torch reference of its checkpoint, and the stream row
    assert {("openvino", "infer", 1), ("openvino", "infer", 2), ("torch", "infer", 1), ("openvino", "stream", 1)} <= kinds
    for r in rows:
        assert r["calls"] > 0 and r["fps"] > 0
        if r["kind"] == "infer":
            assert 0 < r["p50_ms"] <= r["p99_ms"]
    stream = [r for r in rows if r["kind"] == "stream"][0]
    assert stream["calls"] == 20
    assert rep["machine"]["cores"] >= 1 and rep["input_hw"] == [64, 64]
    # the PNG chart next to the JSON: latency per batch size per engine, end-to-end FPS per path
    import cv2

    png = cv2.imread(str(out.with_suffix(".png")))
    assert png is not None and png.shape[0] > 200 and png.shape[1] > 400
    assert (png < 250).mean() > 0.02  # something is drawn, not a blank canvas


def test_bench_table_and_wrong_backend(capsys, engine, clip):
    eng, _ = engine
    with pytest.raises(SystemExit) as e:
        main(["bench", "--engine", str(eng), "--video", str(clip), "--backend", "onnxruntime", "--seconds", "0.1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "is a openvino engine, not onnxruntime" in err.strip().splitlines()[-1]
    with pytest.raises(SystemExit) as e:
        main(["bench", "--engine", str(eng), "--video", str(clip), "--batch-sizes", "1", "--seconds", "0.1",
              "--threads", "1", "--no-stream"])
        raise SystemExit(0)
    out = capsys.readouterr().out
    assert "p50 ms" in out and "openvino-fp32" in out and "speed-up over torch eager" in out


def test_bench_compare_has_naive_loop_torch_engines_and_ratios(capsys, engine, clip):
    """Issue 8: one run prints naive loop, torch eager, each engine (inference and end to end) and the ratios."""
    eng, _ = engine
    with pytest.raises(SystemExit) as e:
        main(["bench", "--engine", str(eng), "--video", str(clip), "--batch-sizes", "1", "--seconds", "0.2",
              "--warmup", "1", "--threads", "1", "--stream-frames", "12", "--no-stream", "--compare", "--json"])
        raise SystemExit(0)
    assert e.value.code == 0
    rep = json.loads(capsys.readouterr().out)
    kinds = {(r["backend"], r["kind"]) for r in rep["rows"]}
    assert {("torch", "naive"), ("torch", "infer"), ("openvino", "infer"), ("openvino", "stream")} <= kinds
    naive = next(r for r in rep["rows"] if r["kind"] == "naive")
    assert naive["calls"] == 12 and naive["fps"] > 0 and naive["p50_ms"] > 0
    (c,) = rep["comparison"]
    rows = {(r["backend"], r["kind"]): r for r in rep["rows"]}
    assert c["engine"] == "openvino-fp32" and c["batch"] == 1
    assert c["stream_vs_naive"] == pytest.approx(rows["openvino", "stream"]["fps"] / naive["fps"])
    assert c["infer_vs_torch"] == pytest.approx(rows["openvino", "infer"]["fps"] / rows["torch", "infer"]["fps"])
    assert c["pipeline_efficiency"] == pytest.approx(rows["openvino", "stream"]["fps"] / rows["openvino", "infer"]["fps"])
    with pytest.raises(SystemExit) as e:
        main(["bench", "--engine", str(eng), "--video", str(clip), "--no-torch", "--compare", "--seconds", "0.1"])
    assert e.value.code == 2 and "--compare needs the PyTorch reference" in capsys.readouterr().err
