"""Issue 17 — nothing lost, nothing hung, no traceback. One test (or a few) per numbered case:

1. an output that is an input is refused (the input survives);
2. ``train --out`` on an existing run refuses without ``--resume``/``--overwrite``; ``--overwrite``
   starts a clean metrics.jsonl;
3. outputs go to a temporary name: a stream killed with SIGKILL leaves the earlier output intact;
4. a full file system is one error line (real tmpfs) and a failed mux never reaches FFmpeg's close;
5. an inference thread that dies ends the stream within seconds, outputs finalised;
6. a UDP listener waits for a late sender and gets it from its first frame, no drop counted at start;
7. bad metadata, recipes, names and destinations: exit 2 and one ``error:`` line, never a traceback;
8. silently wrong inputs are refused or reported (edited engine.json, eval --limit, a 1×1 first image).

Real data: the laparoscopy clip and Kvasir-SEG images (../shared/data). Mounts need root (tmpfs).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from rtseg.errors import RtsegError
from rtseg.stream import StreamOptions, StreamPipeline, run_stream

from helpers import (
    REPO,
    cli,
    decode_video,
    free_port,
    one_error_line,
    py,
    sha,
    start_sender,
    tiny_train_config,
    tmpfs,
    video_pts_seconds,
    wait_for,
)

# -- helpers ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory, kvasir) -> Path:
    """Four real Kvasir-SEG images in a folder."""
    d = tmp_path_factory.mktemp("rob") / "imgs"
    d.mkdir()
    for p in sorted((kvasir / "images").iterdir())[:4]:
        shutil.copy(p, d / p.name)
    return d


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, kvasir) -> Path:
    """A finished 2-epoch tiny training run (a real ``--out`` folder)."""
    from rtseg.training.loop import train

    out = tmp_path_factory.mktemp("rob") / "run"
    cfg = tiny_train_config(out, kvasir)
    cfg.epochs = 2
    train(cfg, log=lambda *a, **k: None)
    return out


# -- 1. writing onto the input ------------------------------------------------------------------------
def test_case1_video_output_onto_its_input_is_refused(tmp_path, tiny_engine, small_clip):  # noqa: F811
    clip = tmp_path / "clip.mp4"
    shutil.copy(small_clip, clip)
    before = sha(clip)
    (tmp_path / "sub").mkdir()
    os.link(clip, tmp_path / "hard.mp4")
    for out in (clip, tmp_path / "sub" / ".." / "clip.mp4", tmp_path / "hard.mp4"):
        code, err = cli("stream", "--engine", tiny_engine, "--source", clip, "--output", out, "-q")
        assert code == 2 and "would overwrite the input" in one_error_line(err)
    assert sha(clip) == before and len(decode_video(clip)[0]) == 50


def test_case1_image_folder_output_onto_its_input_is_refused(tmp_path, backend, images):  # noqa: F811
    folder = tmp_path / "frames"
    shutil.copytree(images, folder)
    before = {p.name: sha(p) for p in folder.iterdir()}
    for out in (f"{folder}/", f"{folder}/%06d.png"):
        with pytest.raises(RtsegError, match="would overwrite the input"):
            run_stream(backend, [str(folder)], [out], StreamOptions(handle_signals=False))
    with pytest.raises(RtsegError, match="would overwrite the input"):
        run_stream(backend, [f"{folder}/*.jpg"], [f"{folder}/"], StreamOptions(handle_signals=False))
    assert {p.name: sha(p) for p in folder.iterdir()} == before


# -- 2. train --out on an existing run ----------------------------------------------------------------
def test_case2_train_refuses_an_existing_run_without_resume_or_overwrite(tmp_path, kvasir, trained_run):
    from rtseg.training.loop import train

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    best, lines = sha(run / "model.safetensors"), (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    with pytest.raises(RtsegError, match="already holds a training run.*--resume.*--overwrite"):
        train(tiny_train_config(run, kvasir), log=lambda *a, **k: None)
    code, err = cli("train", "--model", "eunet-s", "--widths", "8,16,32,64", "--data", kvasir, "--img-size", "32",
                    "--epochs", "1", "--out", run, "--quiet")
    assert code == 2 and "already holds a training run" in one_error_line(err)
    assert sha(run / "model.safetensors") == best and (run / "metrics.jsonl").read_text().splitlines() == lines
    s = train(tiny_train_config(run, kvasir, overwrite=True, seed=1), log=lambda *a, **k: None)
    new = (run / "metrics.jsonl").read_text().splitlines()
    assert s["epochs_run"] == 1 and len(new) == 1 and json.loads(new[0])["epoch"] == 1  # not mixed with the old run


# -- 3. a killed run leaves the earlier output ----------------------------------------------------------
def test_case3_sigkill_mid_stream_leaves_the_earlier_output_intact(tmp_path, tiny_engine, small_clip, clip):  # noqa: F811
    out = tmp_path / "out.mp4"
    shutil.copy(small_clip, out)  # the earlier good output of that name
    before = sha(out)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, "-m", "rtseg", "stream", "--engine", str(tiny_engine), "--source", str(clip),
                          "--output", str(out), "-q"], env=env, cwd=str(REPO), stderr=subprocess.PIPE)
    try:
        wait_for(lambda: any(f.name.startswith(".out.mp4.") and f.name.endswith(".tmp.mp4") and f.stat().st_size > 20000 for f in tmp_path.iterdir())
                 or p.poll() is not None, 180, "the stream to write its temporary output")
        assert p.poll() is None, p.stderr.read()
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
    assert sha(out) == before and len(decode_video(out)[0]) == 50  # untouched and still playable


def test_case3_finished_outputs_are_renamed_into_place(tmp_path, backend, small_clip, images):  # noqa: F811
    out, frames = tmp_path / "o.mp4", tmp_path / "frames"
    out.write_bytes(b"earlier")
    rep = run_stream(backend, [str(small_clip)], [str(out)], StreamOptions(handle_signals=False))
    assert rep.frames == 50 and len(decode_video(out)[0]) == 50
    run_stream(backend, [str(images)], [f"{frames}/"], StreamOptions(handle_signals=False))
    assert sorted(p.name for p in frames.iterdir()) == [f"{i:06d}.png" for i in range(4)]
    assert not [p for p in tmp_path.rglob(".*tmp*")]  # no temporary file left behind


# -- 4. full disk ------------------------------------------------------------------------------------------
def test_case4_full_filesystem_is_one_error_line(tmp_path, tiny_engine, small_clip, clip):  # noqa: F811
    with tmpfs(tmp_path / "full", "size=400k") as full:
        shutil.copy(small_clip, full / "out.mp4")  # an earlier output that must survive
        before = sha(full / "out.mp4")
        r = subprocess.run([sys.executable, "-m", "rtseg", "stream", "--engine", str(tiny_engine), "--source", str(clip),
                            "--max-frames", "100", "--crf", "0", "--output", str(full / "out.mp4"), "-q"],
                           capture_output=True, text=True, timeout=300, cwd=str(REPO),
                           env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO)))
        assert r.returncode == 2, r.stderr  # not 139 (segmentation fault) nor 1 (traceback)
        assert "no space left" in one_error_line(r.stderr)
        assert sha(full / "out.mp4") == before and os.listdir(full) == ["out.mp4"]


class _FullDisk:
    """Stands in for an output container on a full disk: every mux fails with ENOSPC."""

    def __init__(self):
        self.closed = 0

    def mux(self, packet):
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self):
        self.closed += 1


def test_case4_failed_mux_never_reaches_a_native_close(tmp_path):
    from rtseg.stream.sinks import FileSink
    from rtseg.stream.sources import VideoInfo

    target = tmp_path / "o.mp4"
    target.write_bytes(b"earlier")
    sink = FileSink(target)
    sink.open(VideoInfo(64, 64, Fraction(1, 25), Fraction(25)))
    full = sink.container = _FullDisk()
    frame = av.VideoFrame.from_ndarray(np.full((96, 64), 128, np.uint8), format="yuv420p")
    frame.time_base = Fraction(1, 25)
    with pytest.raises(RtsegError, match="no space left on the device; free some space"):
        for i in range(30):  # x264 buffers a few frames before its first packet
            frame.pts = i
            sink.write(frame)
    sink.close()
    sink.close()
    assert full.closed == 0  # abandoned: FFmpeg never writes a trailer into the broken output
    assert target.read_bytes() == b"earlier" and os.listdir(tmp_path) == ["o.mp4"]


# -- 5. a dying inference thread -------------------------------------------------------------------------
def test_case5_inference_thread_death_ends_the_stream(tmp_path, tiny_engine, small_clip):  # noqa: F811
    """The batch buffer allocation fails (an absurd batch): before, the thread died outside its error
    handling and the sink threads waited forever (only kill -9 ended it)."""
    out = tmp_path / "o.mp4"
    code = (f"from rtseg.runtime import load_engine\nfrom rtseg.stream import run_stream, StreamOptions\n"
            f"from rtseg.errors import RtsegError\nimport sys\nb = load_engine({str(tiny_engine)!r}, num_threads=1)\n"
            f"try:\n    run_stream(b, [{str(small_clip)!r}], [{str(out)!r}], StreamOptions(batch_size=10**9))\n"
            f"except RtsegError as e:\n    print('error:', e, file=sys.stderr)\n    sys.exit(2)\n")
    t0 = time.monotonic()
    r = py(code, timeout=120)
    assert r.returncode == 2 and "memory" in one_error_line(r.stderr).lower(), r.stderr
    assert time.monotonic() - t0 < 60


class _DiesAtThirdBatch(StreamPipeline):
    calls = 0

    def infer(self, batch):
        self.calls += 1
        if self.calls == 3:
            raise MemoryError("simulated: cannot allocate")
        return super().infer(batch)


def test_case5_error_mid_stream_finalises_what_was_processed(tmp_path, backend, small_clip):  # noqa: F811
    out = tmp_path / "o.mp4"
    pipe = _DiesAtThirdBatch(backend, [str(small_clip)], [str(out)], StreamOptions(batch_size=2, handle_signals=False))
    t0 = time.monotonic()
    with pytest.raises(RtsegError, match="MemoryError"):
        pipe.run()
    assert time.monotonic() - t0 < 60
    n = len(decode_video(out)[0])
    assert 1 <= n <= 4 and n == sum(s.written for s in pipe.states)  # the processed frames, playable


def test_case5_batch_max_zero_is_refused(tmp_path, ort_engine):
    eng = tmp_path / "eng"
    shutil.copytree(ort_engine, eng)
    d = json.loads((eng / "engine.json").read_text())
    d["batch"] = {"min": 1, "opt": 1, "max": 0}
    (eng / "engine.json").write_text(json.dumps(d))
    code, err = cli("stream", "--engine", eng, "--source", "lavfi:testsrc2=size=64x64:rate=5:duration=1",
                    "--no-output", "-q")
    assert code == 2 and "'batch'" in one_error_line(err)


# -- 6. live UDP ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_case6_listener_waits_for_a_late_sender_and_keeps_its_first_frames(backend, sender, net_clip):  # noqa: F811
    """The sender starts 6.5 s after rtseg (past FFmpeg's old 5 s open timeout): rtseg says it waits,
    then takes every frame from the first one on, none counted as a drop (before: ~1 s of frames
    held back by the 5 s probe and dropped in one burst, or "Immediate exit requested")."""
    port = free_port()
    logs: list[str] = []
    got: list[float] = []

    class Times(StreamPipeline):
        def write(self, sinks, frame):
            got.append(float(frame.pts * frame.time_base))

    res: dict = {}

    def target():
        try:
            res["report"] = Times(backend, [f"udp://127.0.0.1:{port}"], None,
                                  StreamOptions(batch_size=4, stall_timeout=1.5, handle_signals=False),
                                  log=logs.append).run()
        except BaseException as e:  # noqa: BLE001
            res["error"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    time.sleep(6.5)
    assert th.is_alive() and any("waiting for udp://127.0.0.1" in m and "Ctrl-C" in m for m in logs), (logs, res)
    p = start_sender(sender, f"udp://127.0.0.1:{port}", net_clip, 1)
    assert p.wait(60) == 0, p.stderr.read()
    th.join(60)
    assert "error" not in res, res.get("error")
    src = res["report"].sources[0]
    assert src.frames + src.drops == 50 and src.drops == 0, (src.frames, src.drops)
    assert got[0] == 0 and np.allclose(np.diff(got), 0.04, atol=1e-3)  # from the first frame, at the sender's rate


def test_case6_open_timeout_gives_up(backend):  # noqa: F811
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(RtsegError, match="cannot open stream udp://"):
        run_stream(backend, [f"udp://127.0.0.1:{port}"], None, StreamOptions(open_timeout=1.0, handle_signals=False))
    assert time.monotonic() - t0 < 15


def test_case6_joining_a_running_stream_still_finds_its_size(tmp_path, backend, sender, net_clip):  # noqa: F811
    """Joined mid-GOP, the fast probe cannot see the picture size: the source reprobes instead of failing."""
    port = free_port()
    p = start_sender(sender, f"udp://127.0.0.1:{port}", net_clip, 3)
    try:
        time.sleep(1.3)
        out = tmp_path / "o.mp4"
        rep = run_stream(backend, [f"udp://127.0.0.1:{port}"], [str(out)],
                         StreamOptions(batch_size=4, stall_timeout=1.5, handle_signals=False, max_frames=20))
    finally:
        p.kill()
    assert rep.sources[0].frames >= 10 and (rep.sources[0].width, rep.sources[0].height) == (320, 180)
    assert video_pts_seconds(out)[0] == 0


# -- 7. no traceback ------------------------------------------------------------------------------------------
def _edit_json(folder: Path, name: str, edit) -> Path:
    d = json.loads((folder / name).read_text())
    (folder / name).write_text(json.dumps(edit(d)))
    return folder


MODEL_EDITS = {
    "a list": (lambda d: [d], "must be a JSON object"),
    "num_classes abc": (lambda d: {**d, "num_classes": "abc"}, "'num_classes'"),
    "input_size [64]": (lambda d: {**d, "input_size": [64]}, "'input_size'"),
    "model_kwargs a list": (lambda d: {**d, "model_kwargs": [1]}, "'model_kwargs'"),
    "odd input size": (lambda d: {**d, "input_size": [65, 63]}, "not a multiple of"),
    "input 100000²": (lambda d: {**d, "input_size": [100000, 100000]}, "'input_size'"),
    "std 0": (lambda d: {**d, "std": [0, 0, 0]}, "'std'"),
}


@pytest.mark.parametrize("case", list(MODEL_EDITS))
def test_case7_bad_model_json_is_one_line(tmp_path, tiny_engine, kvasir, case):  # noqa: F811
    edit, words = MODEL_EDITS[case]
    ck = _edit_json(Path(shutil.copytree(tiny_engine, tmp_path / "ck")), "model.json", edit)
    code, err = cli("eval", "--checkpoint", ck, "--data", kvasir, "--limit", "2")
    assert code == 2 and words in one_error_line(err)


ENGINE_EDITS = {
    "a list": (lambda d: [d], "must be a JSON object"),
    "no input": (lambda d: {k: v for k, v in d.items() if k != "input"}, "'input'"),
    "input shape differs from the engine file": (
        lambda d: {**d, "input": {**d["input"], "shape": [-1, 3, 96, 96]}, "model": {**d["model"], "input_size": [96, 96]}},
        "'input.shape' is [-1, 3, 96, 96] but the engine file's"),
}


def _unsealed(edit):
    """``edit`` with the seal dropped: the checks behind the seal (issue 26) still hold for an engine
    loaded with --allow-unsealed."""
    return lambda d: edit({k: v for k, v in d.items() if k != "seal"} if isinstance(d, dict) else d)


@pytest.mark.parametrize("case", list(ENGINE_EDITS))
def test_case7_bad_engine_json_is_one_line(tmp_path, ort_engine, kvasir, case):
    edit, words = ENGINE_EDITS[case]
    eng = _edit_json(Path(shutil.copytree(ort_engine, tmp_path / "eng")), "engine.json", _unsealed(edit))
    code, err = cli("eval", "--engine", eng, "--data", kvasir, "--limit", "2", "--allow-unsealed")
    assert code == 2 and words in one_error_line(err)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/rtseg-issue17-pwned",))


@pytest.mark.parametrize("kind", ["malicious", "truncated"])
def test_case7_bad_train_state_with_resume_is_one_line(tmp_path, kvasir, trained_run, kind):
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    state = run / "last" / "train_state.pt"
    marker = Path("/tmp/rtseg-issue17-pwned")
    marker.unlink(missing_ok=True)
    if kind == "malicious":
        import torch

        torch.save({"optimizer": _Payload()}, state)
    else:
        state.write_bytes(state.read_bytes()[:200])
    code, err = cli("train", "--model", "eunet-s", "--widths", "8,16,32,64", "--data", kvasir, "--img-size", "32",
                    "--max-images", "20", "--batch-size", "4", "--epochs", "3", "--out", run, "--resume", "--quiet")
    assert code == 2 and "cannot be loaded safely" in one_error_line(err)
    assert not marker.exists()


def test_case7_bad_recipe_names_fps_and_destinations_are_one_line(tmp_path, tiny_engine, small_clip, kvasir):  # noqa: F811
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: many\n")
    code, err = cli("train", "--config", recipe, "--data", kvasir, "--out", tmp_path / "run")
    assert code == 2 and "'epochs'" in one_error_line(err)
    code, err = cli("stream", "--engine", tiny_engine, "--source", small_clip, "--output", tmp_path / ("x" * 300 + ".mp4"))
    assert code == 2 and "bytes long" in one_error_line(err)
    code, err = cli("stream", "--engine", tiny_engine, "--source", tmp_path / ("y" * 300 + ".mp4"), "--output", "null")
    assert code == 2 and "bytes long" in one_error_line(err)
    code, err = cli("stream", "--engine", tiny_engine, "--source", small_clip, "--no-output", "--fps", "nan")
    assert code == 2 and "--fps" in one_error_line(err)
    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        for args in (("stream", "--engine", tiny_engine, "--source", small_clip, "--no-output", "--metrics-jsonl",
                      ro / "m.jsonl", "-q"),
                     ("eval", "--checkpoint", tiny_engine, "--data", kvasir, "--limit", "2", "--out", ro / "r.json"),
                     ("train", "--model", "eunet-s", "--data", kvasir, "--out", ro / "run", "--quiet"),
                     ("build-engine", "--checkpoint", tiny_engine, "--backend", "onnxruntime", "--out", ro / "eng"),
                     ("export", "--checkpoint", tiny_engine, "--out", ro / "m.onnx")):
            code, err = cli(*args)
            assert code == 2 and "read-only" in one_error_line(err).lower(), (args[0], err)


# -- 8. silently wrong -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case,edit,words", [
    ("3 output channels for a binary model", lambda d: {**d, "output": {**d["output"], "shape": [-1, 3, 64, 64]}},
     "has 3 channels but the model has num_classes 1"),
    ("channels and num_classes both edited", lambda d: {**d, "output": {**d["output"], "shape": [-1, 2, 64, 64]},
                                                        "model": {**d["model"], "num_classes": 2}},
     "'output.shape' is [-1, 2, 64, 64] but the engine file's"),
    ("engine_file out of its folder", lambda d: {**d, "engine_file": "../../etc/passwd"}, "inside the engine folder"),
    ("std 0", lambda d: {**d, "model": {**d["model"], "std": [0, 0, 0]}}, "'std'"),
    ("checkpoint hash edited", lambda d: {**d, "checkpoint": {**d["checkpoint"], "sha256": "0" * 64}}, "edited after the build"),
    ("device edited", lambda d: {**d, "device": {**d["device"], "name": "another CPU"}}, "edited after the build"),
    ("precision edited", lambda d: {**d, "precision": "int8"}, "edited after the build"),
])
def test_case8_edited_engine_json_is_refused(tmp_path, ort_engine, kvasir, case, edit, words):
    sealed = "edited after the build" in words  # the other checks hold behind the seal too (--allow-unsealed)
    eng = _edit_json(Path(shutil.copytree(ort_engine, tmp_path / "eng")), "engine.json", edit if sealed else _unsealed(edit))
    code, err = cli("eval", "--engine", eng, "--data", kvasir, "--limit", "2", *(() if sealed else ("--allow-unsealed",)))
    assert code == 2 and words in one_error_line(err)


def test_case8_an_edited_record_is_refused_and_an_unedited_engine_loads(tmp_path, ort_engine, kvasir):
    """Issue 26: the seal covers the records too — an accuracy gate edited after the build is refused."""
    eng = _edit_json(Path(shutil.copytree(ort_engine, tmp_path / "eng")), "engine.json",
                     lambda d: {**d, "accuracy_gate": {"status": "skipped", "reason": "test"}})
    assert "seal" in json.loads((ort_engine / "engine.json").read_text())
    code, err = cli("eval", "--engine", ort_engine, "--data", kvasir, "--limit", "2")
    assert code == 0, err
    code, err = cli("eval", "--engine", eng, "--data", kvasir, "--limit", "2")
    assert code == 2 and "edited after the build" in one_error_line(err)


def test_case8_eval_limit_says_how_many_were_evaluated(tmp_path, ort_engine, kvasir):
    code, err = cli("eval", "--engine", ort_engine, "--data", kvasir, "--limit", "4", "--json", "--out", tmp_path / "r.json")
    assert code == 0, err
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["n_images"] == 4 and "first 4 evaluated" in res["data"]


def test_case8_a_tiny_first_image_does_not_set_the_frame_size(tmp_path, images):
    import cv2

    from rtseg.stream.sources import open_source

    folder = Path(shutil.copytree(images, tmp_path / "imgs"))
    cv2.imwrite(str(folder / "0000_thumb.png"), np.zeros((1, 1, 3), np.uint8))
    src = open_source(str(folder))
    h, w = cv2.imread(str(sorted(images.iterdir())[0])).shape[:2]
    assert (src.info.width, src.info.height) == (w - w % 2, h - h % 2) and len(list(src.read())) == 5


def test_metrics_jsonl_write_failure_mid_run_is_reported_not_a_thread_traceback(tmp_path, monkeypatch):
    """A --metrics-jsonl that fills up while the stream runs: the writer thread stops quietly and
    close() raises the OSError, which the pipeline turns into one line (write_error)."""
    import errno
    import threading

    from rtseg.stream.metrics import MetricsWriter

    hooked = []
    monkeypatch.setattr(threading, "excepthook", lambda args: hooked.append(args))

    class FullDisk:
        def write(self, s):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass

    w = MetricsWriter(tmp_path / "m.jsonl", lambda marks: ({"t": 0.0}, marks), interval=0.01)
    w._fh.close()
    w._fh = FullDisk()
    w.start()
    w.join(timeout=5)
    assert not w.is_alive() and not hooked and w.error is not None
    with pytest.raises(OSError) as e:
        w.close()
    assert e.value.errno == errno.ENOSPC
