"""Issue 26 (one output-safety rule in the stream): an output is never an input and never another output
of the same run; the refusal comes before anything is written, and the inputs are left as they were."""

from __future__ import annotations

import hashlib
import json
import shutil

import cv2
import numpy as np
import pytest

from rtseg.errors import RtsegError
from rtseg.stream.pipeline import StreamOptions, StreamPipeline

from helpers import BrightBackend, square_frames


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_metrics_jsonl_onto_the_input_video_is_refused(tmp_path, shared_data):
    clip = tmp_path / "c.mp4"
    shutil.copy(shared_data / "video" / "colonoscopy_polypgen_seq11.mp4", clip)
    before = _sha(clip)
    with pytest.raises(RtsegError, match="--metrics-jsonl .* would overwrite the input"):
        StreamPipeline(BrightBackend(), [str(clip)], [str(tmp_path / "o.mp4")],
                       StreamOptions(metrics_jsonl=clip, max_frames=2)).run()
    assert _sha(clip) == before and not (tmp_path / "o.mp4").exists()
    with pytest.raises(RtsegError, match="--metrics-jsonl .* is also the output"):
        StreamPipeline(BrightBackend(), [str(clip)], [str(tmp_path / "o.mp4")],
                       StreamOptions(metrics_jsonl=tmp_path / "o.mp4", max_frames=2)).run()


def test_two_sources_onto_one_output_file_are_refused(tmp_path):
    a, b = square_frames(tmp_path / "a", [1, 0]), square_frames(tmp_path / "b", [0, 1])
    with pytest.raises(RtsegError, match="two sources would write the same output"):
        StreamPipeline(BrightBackend(), [str(a), str(b)], [str(tmp_path / "seg.mp4")] * 2,
                       StreamOptions(fps=25)).run()
    assert not (tmp_path / "seg.mp4").exists()


def test_save_masks_inside_an_input_folder_is_refused(tmp_path):
    a = square_frames(tmp_path / "a", [1, 0])
    with pytest.raises(RtsegError, match="--save-masks .* would overwrite the input"):
        StreamPipeline(BrightBackend(), [str(a)], [], StreamOptions(save_masks=a / "masks", fps=25)).run()
    assert not (a / "masks").exists()





@pytest.mark.parametrize("case", ["plot-onto-clip", "out-into-masks", "overlays-into-data", "bench-out-onto-clip"])
def test_eval_and_bench_outputs_never_replace_an_input(tmp_path, shared_data, tiny_engine, case):
    """``eval --video C --masks M --plot C``, ``--out M/first.jpg``, ``--save-overlays --overlays-path
    D/images/x.jpg``, ``bench --video C --out C``: one error line, exit 2, the inputs unchanged."""
    from helpers import run_cli_process

    clip = tmp_path / "c.mp4"
    shutil.copy(shared_data / "video" / "colonoscopy_polypgen_seq11.mp4", clip)
    masks = tmp_path / "masks"
    masks.mkdir()
    for f in sorted((shared_data / "polypgen-seq11" / "masks").iterdir())[:3]:
        shutil.copy(f, masks / f.name)
    data = tmp_path / "d"
    shutil.copytree(shared_data / "kvasir-seg-256" / "images", data / "images", dirs_exist_ok=True,
                    ignore=lambda d, names: sorted(names)[4:])
    shutil.copytree(shared_data / "kvasir-seg-256" / "masks", data / "masks", dirs_exist_ok=True,
                    ignore=lambda d, names: sorted(names)[4:])
    first_mask, first_image = sorted(masks.iterdir())[0], sorted((data / "images").iterdir())[0]
    args, victim = {
        "plot-onto-clip": (["eval", "--video", str(clip), "--masks", str(masks), "--max-frames", "3", "--plot", str(clip)], clip),
        "out-into-masks": (["eval", "--video", str(clip), "--masks", str(masks), "--max-frames", "3",
                            "--out", str(first_mask)], first_mask),
        "overlays-into-data": (["eval", "--data", str(data), "--save-overlays", "2", "--overlays-path", str(first_image)],
                               first_image),
        "bench-out-onto-clip": (["bench", "--video", str(clip), "--out", str(clip), "--no-torch", "--seconds", "0.2"], clip),
    }[case]
    before = _sha(victim)
    r = run_cli_process(*args, "--engine", str(tiny_engine))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "would overwrite the input" in r.stderr, r.stderr
    assert _sha(victim) == before


def test_engine_is_warmed_before_the_first_frame(tmp_path, tiny_engine, shared_data):
    """Issue 22: OpenVINO compiles its uint8 pre-processing graph lazily; the stream runs the engine at
    every batch size it will use before reading a frame, so the first live frame waits for nothing."""
    from rtseg.export.build import build_engine
    from rtseg.runtime import load_engine

    ov = load_engine(build_engine(tiny_engine, "openvino", "fp32", out=tmp_path / "ov"), num_threads=1)
    seen = []

    class FirstCall(StreamPipeline):
        def infer(self, batch):
            seen.append(ov._compiled_u8 is not None)
            return super().infer(batch)

    rep = FirstCall(ov, [str(shared_data / "video" / "endo_laparoscopy.mp4")], [],
                    StreamOptions(batch_size=3, max_frames=6, handle_signals=False)).run()
    assert seen and seen[0] and rep.warmup_ms > 0 and rep.frames == 6


@pytest.mark.parametrize("args, words", [
    (["stream", "--source", "V", "--no-output", "--batch-size", "100000000"], "GiB of memory"),
    (["eval", "--data", "K", "--batch-size", "100000000"], "GiB of memory"),
    (["bench", "--video", "V", "--batch-sizes", "1,100000000", "--no-torch", "--seconds", "0.1"], "GiB of memory"),
    (["bench", "--video", "V", "--batch-sizes", "1", "--stream-batch", "100000000", "--no-torch", "--seconds", "0.1"],
     "--stream-batch 100000000 is outside"),
    (["eval", "--data", "K", "--threads", "2000"], "--threads 2000 is outside"),
])
def test_sizes_are_bounded_by_the_machine(tmp_path, shared_data, tiny_engine, args, words):
    """Issue 26 (unbounded): an absurd batch or thread count is one line naming the limit, before any
    large allocation (each of these ran for minutes or was killed by the kernel before)."""
    import time

    from helpers import run_cli_process

    subst = {"V": str(shared_data / "video" / "endo_laparoscopy.mp4"), "K": str(shared_data / "kvasir-seg-256")}
    t0 = time.monotonic()
    r = run_cli_process(*[subst.get(a, a) for a in args], "--engine", str(tiny_engine))
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last.startswith("error: ") and words in last and r.stderr.count("error") == 1, r.stderr
    assert time.monotonic() - t0 < 60


def test_eval_of_the_training_data_checks_its_fingerprint(tmp_path, kvasir, monkeypatch):
    """Issue 26: a model's recorded data root is relative; run elsewhere, whatever folder sits at that path
    was scored and called the model's test split. Now the recorded fingerprint must match."""
    from rtseg.data.folder import find_pairs, fingerprint
    from rtseg.evaluation import resolve_samples

    fp = fingerprint(find_pairs(kvasir))
    meta = {"data": {"root": "data/kvasir", "format": "polyp", "fingerprint": fp}}
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "kvasir").symlink_to(kvasir)
    monkeypatch.chdir(tmp_path)
    samples, _, _ = resolve_samples(None, None, meta)  # the real training folder: accepted
    assert len(samples) == 100
    other = tmp_path / "elsewhere" / "data"
    other.mkdir(parents=True)
    shutil.copytree(kvasir / "images", other / "kvasir" / "images", ignore=lambda d, n: sorted(n)[20:])
    shutil.copytree(kvasir / "masks", other / "kvasir" / "masks", ignore=lambda d, n: sorted(n)[20:])
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(RtsegError, match="not the data this model was trained on"):
        resolve_samples(None, None, meta)
    assert resolve_samples("data/kvasir", "test", meta)[0]  # an explicit --data is the user's choice


def test_names_with_glob_characters_are_names(tmp_path, kvasir, small_clip, tiny_engine):
    """A file or folder whose name holds ``[``, ``]``, ``?`` or ``*`` is opened by that name (before: taken as
    a pattern and not found) — ``eval --data``, ``eval --video/--masks`` and ``stream --source/--output``."""
    from helpers import cli, video_pts_seconds

    data = tmp_path / "kv[1]*?"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
        for f in sorted((kvasir / sub).iterdir())[:3]:
            shutil.copy(f, data / sub / f.name)
    code, err = cli("eval", "--engine", tiny_engine, "--data", data, "--out", tmp_path / "r[1].json")
    assert code == 0, err
    assert json.loads((tmp_path / "r[1].json").read_text())["n_images"] == 3
    clip = tmp_path / "c[2]*.mp4"
    shutil.copy(small_clip, clip)
    out = tmp_path / "o?[3].mp4"
    code, err = cli("stream", "--engine", tiny_engine, "--source", clip, "--output", out)
    assert code == 0, err
    n = len(video_pts_seconds(out))
    assert n == len(video_pts_seconds(clip))
    masks = tmp_path / "m[4]?"
    masks.mkdir()
    blank = np.zeros((32, 32), np.uint8)
    for k in range(n):
        cv2.imwrite(str(masks / f"{k:04d}.png"), blank)
    code, err = cli("eval", "--engine", tiny_engine, "--video", clip, "--masks", masks, "--out", tmp_path / "v[5].json",
                    "--plot", tmp_path / "p[6].png")
    assert code == 0, err
    assert (tmp_path / "v[5].json").exists() and (tmp_path / "p[6].png").exists()


@pytest.mark.slow
def test_huge_model_kwargs_and_export_sizes_are_refused_before_allocating(tmp_path):
    """Issue 26 (unbounded): ``model_kwargs`` asking for a network far larger than its weights is refused from
    the weight file's header (the architecture is built on the meta device first), and ``export --img-size
    8192`` from the machine's memory — one line each, not a MemoryError traceback after gigabytes."""
    import time

    from helpers import REPO, run_cli_process

    ck = tmp_path / "ck"
    shutil.copytree(REPO / "tests" / "assets" / "eunet-tiny-kvasir64", ck)
    meta = json.loads((ck / "model.json").read_text())
    meta["model_kwargs"]["widths"] = [8, 16, 32, 2**17]  # a 2^17-channel bottleneck: ~100 GB of weights
    (ck / "model.json").write_text(json.dumps(meta))
    t0 = time.monotonic()
    r = run_cli_process("eval", "--checkpoint", str(ck), "--data", str(REPO.parent / "shared" / "data" / "kvasir-seg-256"),
                        "--limit", "1")
    assert r.returncode == 2 and "do not match architecture 'eunet-s'" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_cli_process("export", "--checkpoint", str(REPO / "tests" / "assets" / "eunet-tiny-kvasir64"),
                        "--img-size", "8192", "--out", str(tmp_path / "x.onnx"))
    assert r.returncode == 2 and "--img-size 8192x8192 needs about" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "x.onnx").exists()
    r = run_cli_process("build-engine", "--checkpoint", str(REPO / "tests" / "assets" / "eunet-tiny-kvasir64"),
                        "--backend", "onnxruntime", "--img-size", "8192", "--out", str(tmp_path / "e"))
    assert r.returncode == 2 and "--img-size 8192x8192 needs about" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "e").exists() and time.monotonic() - t0 < 120
