"""Triton Inference Server (issue 24): ``rtseg export-triton`` writes a model repository, and a real Triton
server (NVIDIA PyTriton's bundled ``tritonserver``, started here from ``.venv-triton`` on loopback ports,
tests/servers/triton_server.py) serves the exported model with its dynamic batcher to ``--engine
kserve://…`` (gRPC) and ``http://…`` clients: eval equals the local engine, a stream keeps its frames and
timestamps, two streams are batched together by the server, and a server that goes away mid-stream
ends a file stream with one line and a playable partial file while a live stream reconnects.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from helpers import (
    REPO,
    cli,
    cut_clip,
    decode_video,
    free_port,
    one_error_line,
    port_bound,
    run_cli_process,
    start_sender,
    video_pts_seconds,
    wait_for,
)

TRITON_PY = REPO / ".venv-triton" / "bin" / "python"
SERVER = REPO / "tests" / "servers" / "triton_server.py"


def read_config(model_dir: Path) -> dict:
    """``config.pbtxt`` parsed with Triton's own ``ModelConfig`` schema, as a dict."""
    msg = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


class Triton:
    """A tritonserver process group serving one exported model on loopback ports."""

    def __init__(self, model_dir: Path, engine: Path):
        if not TRITON_PY.exists():
            pytest.fail("the Triton test server's virtualenv is missing: run 'bash scripts/triton-venv.sh' "
                        "(scripts/test.sh does)")
        self.model_dir, self.engine = model_dir, engine
        self.http, self.grpc, self.metrics_port = (free_port(socket.SOCK_STREAM) for _ in range(3))
        self.name = read_config(model_dir)["name"]
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Triton":
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
        self.proc = subprocess.Popen([str(TRITON_PY), str(SERVER), str(self.model_dir), str(self.engine),
                                      str(self.http), str(self.grpc), str(self.metrics_port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, env=dict(env, OMP_NUM_THREADS="1"))
        lines = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 180:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                break
            lines.append(line)
            if line.strip() == "ready":
                return self
        self.stop()
        raise AssertionError("Triton did not start:\n" + "".join(lines[-30:]))

    def stop(self) -> None:
        """Kill the whole process group (PyTriton and its tritonserver child) and wait for the ports."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        self.proc = None
        wait_for(lambda: not any(port_bound(p, "tcp") for p in (self.http, self.grpc, self.metrics_port)), 30,
                 "Triton's ports to close")

    def url(self, protocol: str = "grpc", query: str = "") -> str:
        scheme, port = ("kserve", self.grpc) if protocol == "grpc" else ("http", self.http)
        return f"{scheme}://127.0.0.1:{port}/{self.name}" + (f"?{query}" if query else "")

    def counters(self) -> dict[str, float]:
        """Triton's own ``nv_inference_*`` counters of the model, from its Prometheus metrics port."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        out = {}
        for m in re.finditer(r'^(nv_inference_\w+)\{[^}]*model="' + re.escape(self.name) + r'"[^}]*\} (\S+)$', text, re.M):
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
        return out


@pytest.fixture(scope="module")
def default_engine() -> Path:
    """The shipped default model's OpenVINO fp32 engine (trained on Kvasir-SEG; built into the cache)."""
    from rtseg.defaults import load_default_engine

    return Path(load_default_engine().folder)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, default_engine) -> Path:
    r = tmp_path_factory.mktemp("triton") / "models"
    # the dynamic batcher waits up to 20 ms for a batch: long enough for the requests of two streams that
    # each keep one request in flight to meet (the default 2 ms suits many clients at a camera's rate)
    code, err = cli("export-triton", default_engine, "--repo", r, "--name", "eunet", "--max-queue-delay-us", "20000")
    assert code == 0, err
    return r


@pytest.fixture(scope="module")
def triton(repo, default_engine):
    server = Triton(repo / "eunet", default_engine).start()
    yield server
    server.stop()


# -- the repository ------------------------------------------------------------------------------------
def test_export_triton_repository(tmp_path, tiny_engine, ort_engine):
    """A checkpoint (built into ONNX Runtime fp32) and an ONNX Runtime engine → two models whose
    config.pbtxt parses with Triton's schema and carries the engine's shapes and rtseg's metadata."""
    r = tmp_path / "repo"
    code, err = cli("export-triton", tiny_engine, ort_engine, "--repo", r, "--name", "ckpt", "--name", "ort",
                    "--max-batch-size", "4", "--max-queue-delay-us", "500")
    assert code == 0, err
    engine = json.loads((ort_engine / "engine.json").read_text())
    for name in ("ckpt", "ort"):
        cfg = read_config(r / name)
        assert sorted(p.name for p in (r / name).rglob("*")) == ["1", "config.pbtxt", "model.onnx"]
        assert cfg["platform"] == "onnxruntime_onnx" and cfg["max_batch_size"] == 4
        assert cfg["input"] == [{"name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": ["3", "64", "64"]}]
        assert cfg["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": ["1", "64", "64"]}]
        assert cfg["dynamic_batching"] == {"preferred_batch_size": [2, 4], "max_queue_delay_microseconds": "500"}
        assert cfg["instance_group"] == [{"count": 1, "kind": "KIND_CPU"}]
        model = json.loads(cfg["parameters"]["rtseg_model"]["string_value"])
        assert model == engine["model"]
        served = json.loads(cfg["parameters"]["rtseg_engine"]["string_value"])
        assert served["backend"] == "onnxruntime" and served["precision"] == "fp32" and served["seal_sha256"]
    assert (r / "ort" / "1" / "model.onnx").read_bytes() == (ort_engine / engine["engine_file"]).read_bytes()
    assert not list(r.glob(".*"))  # no temporary folder left


def test_export_triton_refusals(tmp_path, ort_engine):
    """What Triton cannot serve, or what would overwrite a model, is one line and writes nothing."""
    r = tmp_path / "repo"
    assert cli("export-triton", ort_engine, "--repo", r, "--name", "m")[0] == 0
    before = sorted(p.relative_to(r) for p in r.rglob("*"))
    edited = tmp_path / "edited"
    shutil.copytree(ort_engine, edited)
    meta = json.loads((edited / "engine.json").read_text())
    meta["model"]["mean"] = [0.0, 0.0, 0.0]
    (edited / "engine.json").write_text(json.dumps(meta))
    cases = {
        ("export-triton", ort_engine, "--repo", r, "--name", "m"): "already exists",
        ("export-triton", ort_engine, ort_engine, "--repo", r): "two models would be named",
        ("export-triton", ort_engine, "--repo", r, "--name", "a/b"): "not a Triton model name",
        ("export-triton", tmp_path, "--repo", r): "neither an engine folder",
        ("export-triton", edited, "--repo", r): "engine.json",
        ("export-triton", ort_engine, "--repo", r / "m" / "config.pbtxt"): "is a file",
    }
    for args, words in cases.items():
        code, err = cli(*args)
        assert code == 2 and words in one_error_line(err), (args, err)
    assert sorted(p.relative_to(r) for p in r.rglob("*")) == before


def test_engine_url_errors(tmp_path):
    """A malformed URL or a server that is not there: one line each, quickly."""
    port = free_port(socket.SOCK_STREAM)
    cases = {f"kserve://127.0.0.1:{port}": "must be kserve://HOST:PORT/MODEL",
             f"kserve://127.0.0.1:{port}/m?in_flight=0": "in_flight",
             f"kserve://127.0.0.1:{port}/m?retry_s=0.3": "cannot connect to the inference server",
             f"http://127.0.0.1:{port}/m?retry_s=0.3": "cannot connect to the inference server"}
    for url, words in cases.items():
        t0 = time.monotonic()
        code, err = cli("eval", "--engine", url, "--data", REPO / "tests")
        assert code == 2 and words in one_error_line(err), (url, err)
        assert time.monotonic() - t0 < 20


# -- a real Triton server ------------------------------------------------------------------------------
@pytest.mark.slow
def test_eval_and_api_through_triton_equal_the_local_engine(triton, default_engine, kvasir, capsys):
    """``rtseg eval`` on the Kvasir-SEG test split: Dice through Triton (gRPC and HTTP) within 1e-4 of
    the local engine; the Python API's masks agree; the server's metadata gives the model's record."""
    import rtseg

    def dice(engine):
        p = run_cli_process("eval", "--engine", str(engine), "--data", str(kvasir), "--json")
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)["global"]["dice"]

    wrong = triton.url().rsplit("/", 1)[0] + "/no-such-model"
    code, err = cli("eval", "--engine", wrong, "--data", kvasir)
    assert code == 2 and "'no-such-model' is not ready" in one_error_line(err)
    local = dice(default_engine)
    for protocol in ("grpc", "http"):
        assert abs(dice(triton.url(protocol)) - local) <= 1e-4
    remote, here = rtseg.load(triton.url()), rtseg.load(default_engine)
    assert remote.backend.model_info == here.backend.model_info and remote.backend.max_batch == 8
    img = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(sorted((kvasir / "images").glob("*.jpg"))[0]).convert("RGB"))
    a, b = remote.predict(img), here.predict(img)
    assert a.shape == b.shape and (a == b).mean() > 0.999


@pytest.mark.slow
def test_stream_through_triton_keeps_frames_and_timestamps(triton, default_engine, clip, tmp_path):
    """The 720p clip through Triton: the same frame count, size, rate and timestamps as the local engine."""
    outs = {}
    for key, engine in (("local", default_engine), ("triton", triton.url())):
        outs[key] = tmp_path / f"{key}.mp4"
        p = run_cli_process("stream", "--engine", str(engine), "--source", str(clip), "--output", str(outs[key]))
        assert p.returncode == 0, p.stderr
    (pts_l, _, info_l), (pts_t, _, info_t) = decode_video(outs["local"], fmt=None), decode_video(outs["triton"], fmt=None)
    pts_src, _, info_src = decode_video(clip, fmt=None)
    assert len(pts_t) == len(pts_l) == len(pts_src) and pts_t == pts_l
    assert (info_t["width"], info_t["height"], info_t["rate"]) == (info_l["width"], info_l["height"], info_l["rate"]) == (1280, 720, info_src["rate"])


@pytest.mark.slow
def test_two_streams_are_batched_together_by_triton(triton, clip, tmp_path):
    """One request in flight per client: one stream alone is never batched (executions = requests);
    two streams at once are (Triton's own counters: executions < requests), and both complete."""
    short = cut_clip(clip, tmp_path / "short.mp4", 3.0)
    url = triton.url(query="in_flight=1")

    def run(n: int) -> dict[str, float]:
        before = triton.counters()
        procs = [subprocess.Popen([str(Path(os.sys.executable)), "-m", "rtseg", "stream", "--engine", url, "--source",
                                   str(short), "--output", str(tmp_path / f"o{n}{i}.mp4")], cwd=str(REPO),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
        for p in procs:
            _, err = p.communicate(timeout=240)
            assert p.returncode == 0, err
        after = triton.counters()
        return {k: after[k] - before.get(k, 0.0) for k in after}

    frames = len(decode_video(short, fmt=None)[0])
    alone = run(1)
    per_stream = frames + 1  # every frame, and the warm-up request of the pipeline's start
    assert alone["nv_inference_request_success"] == alone["nv_inference_exec_count"] == per_stream
    both = run(2)
    assert both["nv_inference_request_success"] == 2 * per_stream
    assert both["nv_inference_exec_count"] < both["nv_inference_request_success"]
    for i in range(2):
        assert len(decode_video(tmp_path / f"o2{i}.mp4", fmt=None)[0]) == frames


@pytest.mark.slow
def test_server_killed_mid_stream(repo, default_engine, clip, sender, tmp_path):
    """The server killed mid-stream: a file stream ends with one error line and a playable partial file;
    a live UDP stream drops frames while it is away, reconnects when it is back and goes on."""
    server = Triton(repo / "eunet", default_engine).start()
    try:
        out = tmp_path / "file.mp4"
        p = subprocess.Popen([os.sys.executable, "-m", "rtseg", "stream", "--engine", server.url(query="retry_s=1"),
                              "--source", str(clip), "--loop", "20", "--output", str(out)], cwd=str(REPO),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: server.counters().get("nv_inference_request_success", 0) >= 20, 120, "frames through Triton")
        server.stop()
        _, err = p.communicate(timeout=120)
        assert p.returncode == 2 and "inference server" in one_error_line(err), err
        assert len(decode_video(out, fmt=None)[0]) >= 10  # playable, with what was done before

        server.start()
        port = free_port()
        live = tmp_path / "live.mp4"
        net = cut_clip(clip, tmp_path / "net.mp4", 2.0, (640, 360), gop=10)
        s = subprocess.Popen([os.sys.executable, "-m", "rtseg", "stream", "--engine", server.url(query="retry_s=1"),
                              "--source", f"udp://127.0.0.1:{port}", "--output", str(live), "--json",
                              "--stall-timeout", "3"], cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        wait_for(lambda: port_bound(port), 60, "rtseg to bind the UDP port")
        tx = start_sender(sender, f"udp://127.0.0.1:{port}", net, -1)
        wait_for(lambda: server.counters().get("nv_inference_request_success", 0) >= 10, 120, "live frames through Triton")
        server.stop()
        time.sleep(2)
        server.start()  # counters start again from 0
        wait_for(lambda: server.counters().get("nv_inference_request_success", 0) >= 10, 120, "live frames after the restart")
        tx.kill()
        tx.wait(10)
        s.send_signal(signal.SIGINT)
        outp, err = s.communicate(timeout=120)
        assert s.returncode == 0, err
        assert "inference server" in err and "answers again" in err
        src = json.loads(outp)["sources"][0]
        assert src["drop_causes"].get("server_unavailable", 0) > 0 and src["frames"] >= 20
        t = np.array(video_pts_seconds(live))
        assert len(t) == src["frames"] and np.all(np.diff(t) > 0)
        assert t[-1] - t[0] > 4.0  # the timeline kept going through the outage
    finally:
        server.stop()
