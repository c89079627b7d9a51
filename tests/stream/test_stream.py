"""``rtseg stream`` / :func:`rtseg.stream.run_stream` on real clips (../shared/data/video).

Fast: 2 s of a real clip (full 720p for the CLI test, 320×180 copies made here with PyAV for the
rest), a tiny EUNet-S checkpoint (64×64) whose head bias is centred so that about half of the
pixels are foreground (a random network would otherwise paint all or nothing).
Edge-case media (VFR, audio) are synthesised from the real clips with PyAV.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from rtseg.errors import RtsegError

from helpers import cut_clip, decode_video, expected_masks, run_cli_process, video_pts_seconds, wait_for

REPO = Path(__file__).resolve().parents[2]


# -- helpers (also imported by test_stream_net.py) ------------------------------------------------------


# -- fixtures -----------------------------------------------------------------------------------------


# -- A: the issue-2 stream ----------------------------------------------------------------------------
def test_cli_stream_real_clip_720p(tmp_path, clip, tiny_engine, backend):
    """2 s of the real 1280×720 clip: frame count, size, rate and timestamps kept; overlay where the mask is."""
    out = tmp_path / "out.mp4"
    r = run_cli_process("stream", "--engine", str(tiny_engine), "--source", str(clip), "--output", str(out),
                "--max-frames", "50", "--json", "--threads", "1")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["frames"] == 50 and report["sources"][0]["frames"] == 50
    for stage in ("decode", "preprocess", "infer", "postprocess", "encode", "e2e"):
        lat = report["latency"][stage]
        assert lat["count"] > 0 and 0 < lat["p50_ms"] <= lat["p99_ms"], (stage, lat)
    assert "infer" in r.stderr and "FPS" in r.stderr  # the table

    pts_out, frames_out, info = decode_video(out)
    pts_in, frames_in, info_in = decode_video(clip)
    assert len(frames_out) == 50
    assert (info["width"], info["height"]) == (1280, 720)
    assert info["rate"] == 25 and info["codec"] == "h264"
    assert [p * info["time_base"] for p in pts_out] == [p * info_in["time_base"] for p in pts_in[:50]]

    masks = expected_masks(backend, frames_in[:50:10])
    kernel = np.ones((9, 9), np.uint8)
    for m, fin, fout in zip(masks, frames_in[:50:10], frames_out[::10]):
        diff = np.abs(fout.astype(np.int16) - fin.astype(np.int16)).sum(-1)
        inside = cv2.erode(m, kernel).astype(bool)
        outside = cv2.erode(1 - m, kernel).astype(bool)
        assert 0.1 < m.mean() < 0.9, "the test engine should paint part of the frame"
        assert diff[inside].mean() > 40, diff[inside].mean()  # green at alpha 0.5
        assert diff[outside].mean() < 8, diff[outside].mean()  # only coding noise
        # inside the mask the output moved towards green
        assert (fout[..., 1].astype(int) - fin[..., 1])[inside].mean() > 20


@pytest.mark.parametrize("case,words", [("missing", "does not exist"), ("not_video", "not a readable video"),
                                        ("camera", "/dev/video7"), ("scheme", "unknown source scheme"),
                                        ("output_dir", "cannot be created")])
def test_cli_bad_input_one_line_error(tmp_path, tiny_engine, small_clip, capsys, case, words):
    """Missing/unreadable video, missing camera, unknown scheme, unwritable output: one line, exit 2."""
    src, out = str(small_clip), str(tmp_path / "o.mp4")
    if case == "missing":
        src = str(tmp_path / "nope.mp4")
    elif case == "not_video":
        p = tmp_path / "text.mp4"  # a text file renamed .mp4
        p.write_text("this is not a video\n")
        src = str(p)
    elif case == "camera":
        src = "camera7"
    elif case == "scheme":
        src = "gopher://127.0.0.1/x"
    elif case == "output_dir":
        (tmp_path / "afile").write_text("x")
        out = str(tmp_path / "afile" / "sub" / "o.mp4")  # parent is a file: cannot be created
    from rtseg.cli import main

    with pytest.raises(SystemExit) as e:
        main(["stream", "--engine", str(tiny_engine), "--source", src, "--output", out, "--quiet"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert not list(tmp_path.glob("o.mp4"))  # nothing half-written


def test_cli_error_exit_code_in_a_real_process(tmp_path, tiny_engine):
    p = tmp_path / "renamed.mp4"
    p.write_text("hello\n")
    r = run_cli_process("stream", "--engine", str(tiny_engine), "--source", str(p), "--output", str(tmp_path / "o.mp4"), "-q")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not a readable video" in lines[0], r.stderr


def test_run_stream_api_no_output(backend, small_clip):
    from rtseg.stream import StreamOptions, StreamReport, run_stream

    rep = run_stream(backend, [str(small_clip)], None, StreamOptions(batch_size=2))
    assert isinstance(rep, StreamReport)
    assert rep.frames == 50 and rep.sources[0].frames == 50 and rep.drops == 0
    assert rep.fps > 0 and rep.seconds > 0 and math.isclose(rep.fps, rep.frames / rep.seconds)
    assert 1 < rep.batch_mean <= 2
    assert 25 <= rep.latency["infer"].count < 50  # one sample per batch
    assert rep.sources[0].outputs == []
    t = rep.table()
    assert "p50" in t and "e2e" in t and "50 frames" in t
    d = json.loads(rep.to_json())
    assert d["frames"] == 50 and d["latency"]["encode"]["count"] == 50


def test_overlay_yuv_matches_rgb_blend():
    """The YUV overlay equals an RGB alpha blend (away from 4:2:0 edges); outside the mask nothing changes."""
    from rtseg.data.transforms import compute_geometry
    from rtseg.stream.overlay import Overlay, default_palette

    rng = np.random.default_rng(0)
    rgb = cv2.GaussianBlur(rng.integers(40, 200, (180, 320, 3), dtype=np.uint8), (9, 9), 3)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p", dst_colorspace=1)
    frame.pts, frame.time_base = 7, Fraction(1, 25)
    frame.colorspace = 1
    mask = np.zeros((64, 64), np.uint8)
    mask[10:40, 20:50] = 1
    mask[45:60, 5:15] = 2
    geom = compute_geometry((180, 320), (64, 64), "stretch")
    ov = Overlay(default_palette(3), alpha=0.5)
    out = ov.apply_yuv420(frame, mask, geom)
    assert out is not frame and out.pts == 7 and out.time_base == Fraction(1, 25)
    before = frame.to_ndarray(format="rgb24").astype(int)
    after = out.to_ndarray(format="rgb24").astype(int)
    full = cv2.resize(mask, (320, 180), interpolation=cv2.INTER_NEAREST)
    ref = ov.apply_rgb(before.astype(np.uint8).copy(), full).astype(int)
    core = cv2.erode((full > 0).astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    bg = cv2.erode((full == 0).astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    assert np.abs(after - ref)[core].mean() < 3
    assert np.abs(after - before)[bg].max() == 0
    assert np.abs(after - before)[core].mean() > 30
    # an empty mask costs nothing: the very same frame comes back
    assert ov.apply_yuv420(frame, np.zeros((64, 64), np.uint8), geom) is frame
    # contour only (alpha 0) still draws
    ov2 = Overlay(default_palette(3), alpha=0.0, contour=True)
    out2 = ov2.apply_yuv420(frame, mask, geom).to_ndarray(format="rgb24").astype(int)
    deep = cv2.erode((full > 0).astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
    assert np.abs(out2 - before)[bg].max() == 0 and np.abs(out2 - before)[deep].max() == 0
    edge = (full > 0) & ~deep
    assert np.abs(out2 - before)[edge].mean() > 10  # the outline is on the region's border


def test_letterbox_engine_and_batches(tmp_path, tiny_engine, small_bikes):
    """Letterbox geometry and batch 4: same frames, same timestamps; overlay only inside the content."""
    from rtseg.runtime import load_engine
    from rtseg.stream import StreamOptions, run_stream

    b = load_engine(tiny_engine, num_threads=1)
    b.meta["model"]["resize"] = "letterbox"
    out1, out4 = tmp_path / "b1.mkv", tmp_path / "b4.mkv"
    r1 = run_stream(b, [str(small_bikes)], [str(out1)], StreamOptions(batch_size=1, preset="ultrafast"))
    r4 = run_stream(b, [str(small_bikes)], [str(out4)], StreamOptions(batch_size=4, preset="ultrafast"))
    assert r1.frames == r4.frames == 50 and r4.batch_mean > 2
    p_in, _, _ = decode_video(small_bikes, fmt=None)
    for o in (out1, out4):
        p, f, info = decode_video(o)
        assert (info["width"], info["height"], len(f)) == (320, 136, 50)
        assert video_pts_seconds(o) == video_pts_seconds(small_bikes)


def test_vfr_timestamps_kept(tmp_path, backend, small_clip):
    """A variable-frame-rate input (irregular PTS) comes out with exactly the same timestamps."""
    from rtseg.stream import StreamOptions, run_stream

    durations = [1, 3, 2, 5, 1, 1, 4]  # in 1/25 s ticks of 512/12800
    acc = [0]
    for i in range(60):
        acc.append(acc[-1] + durations[i % len(durations)] * 512)
    vfr = cut_clip(small_clip, tmp_path / "vfr.mp4", 2.0, retime=lambda i, pts: acc[i])
    t_in = video_pts_seconds(vfr)
    assert len(set(np.round(np.diff(t_in), 4))) > 3  # really variable
    out = tmp_path / "vfr_out.mp4"
    rep = run_stream(backend, [str(vfr)], [str(out)], StreamOptions(preset="ultrafast"))
    assert rep.frames == len(t_in)
    assert video_pts_seconds(out) == t_in


def test_audio_passthrough_real_opus(tmp_path, backend, shared_data):
    """The real pancake clip's Opus track is copied packet for packet (mkv → mkv and → mp4)."""
    from rtseg.stream import StreamOptions, run_stream

    src = cut_clip(shared_data / "video" / "flipping_a_pancake.mkv", tmp_path / "pancake2s.mkv", 2.0, (214, 120),
                   audio="copy")
    outs = [tmp_path / "a.mkv", tmp_path / "a.mp4"]
    rep = run_stream(backend, [str(src)], [str(o) for o in outs], StreamOptions(preset="ultrafast", alpha=0.6))
    n_video = len(video_pts_seconds(src))
    assert rep.frames == n_video

    def audio_packets(p):
        with av.open(str(p)) as c:
            a = c.streams.audio[0]
            return a.codec_context.name, [(bytes(k), round(float(k.pts * k.time_base), 4)) for k in c.demux(a) if k.size]

    name_in, pk_in = audio_packets(src)
    assert name_in == "opus" and len(pk_in) > 50
    for o in outs:
        name, pk = audio_packets(o)
        assert name == "opus"
        assert [b for b, _ in pk] == [b for b, _ in pk_in]
        assert [t for _, t in pk] == [t for _, t in pk_in]
        assert len(video_pts_seconds(o)) == n_video


def test_audio_passthrough_synth_aac(tmp_path, backend, small_clip):
    """A generated AAC track muxed with the real clip comes out identical."""
    from rtseg.stream import StreamOptions, run_stream

    src = cut_clip(small_clip, tmp_path / "with_aac.mp4", 2.0, audio="sine")
    out = tmp_path / "aac_out.mp4"
    run_stream(backend, [str(src)], [str(out)], StreamOptions(preset="ultrafast"))
    with av.open(str(src)) as a, av.open(str(out)) as b:
        pa = [bytes(p) for p in a.demux(a.streams.audio[0]) if p.size]
        pb = [bytes(p) for p in b.demux(b.streams.audio[0]) if p.size]
    assert len(pa) > 80 and pa == pb


def test_two_sources_batched_together(tmp_path, backend, small_clip, small_bikes):
    """Two real clips feed one engine with batch 2: each output complete, in order, with its own timing."""
    from rtseg.stream import StreamOptions, run_stream

    rep = run_stream(backend, [str(small_clip), str(small_bikes)], [str(tmp_path / "seg_{name}.mp4")],
                     StreamOptions(batch_size=2, batch_timeout_ms=50, preset="ultrafast"))
    assert [s.frames for s in rep.sources] == [50, 50] and rep.frames == 100
    assert rep.batch_mean > 1.5  # frames of both sources shared inference calls
    for src, size in [(small_clip, (320, 180)), (small_bikes, (320, 136))]:
        o = tmp_path / f"seg_{src.stem}.mp4"
        _, f, info = decode_video(o)
        assert (info["width"], info["height"]) == size and len(f) == 50
        assert video_pts_seconds(o) == video_pts_seconds(src)


def test_sources_image_folder_and_lavfi(tmp_path, backend, small_clip):
    """Image folder in (played at --fps) → image folder + mp4 out; a lavfi test pattern in."""
    from rtseg.stream import StreamOptions, run_stream

    _, frames, _ = decode_video(small_clip)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames[:12]):
        cv2.imwrite(str(folder / f"{i:04d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    rep = run_stream(backend, [str(folder)], [str(tmp_path / "imgs") + "/", str(tmp_path / "imgs.mp4")],
                     StreamOptions(fps=10, preset="ultrafast"))
    assert rep.frames == 12
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir())[:2] == ["000000.png", "000001.png"]
    assert len(list((tmp_path / "imgs").iterdir())) == 12
    t = video_pts_seconds(tmp_path / "imgs.mp4")
    assert len(t) == 12 and np.allclose(np.diff(t), 0.1)
    # a glob of the same images
    rep = run_stream(backend, [str(folder / "*.png")], None, StreamOptions(fps=10, max_frames=5))
    assert rep.frames == 5 and rep.stopped == "max frames"
    # lavfi test pattern, 30 FPS
    out = tmp_path / "lavfi.mp4"
    rep = run_stream(backend, ["lavfi:testsrc2=size=320x240:rate=30"], [str(out)],
                     StreamOptions(max_frames=15, preset="ultrafast"))
    _, f, info = decode_video(out)
    assert rep.frames == 15 and len(f) == 15 and info["rate"] == 30 and (info["width"], info["height"]) == (320, 240)


def test_output_mapping_errors(tmp_path, backend, small_clip, small_bikes):
    from rtseg.stream import StreamOptions, run_stream

    with pytest.raises(RtsegError, match="one --output per source"):
        run_stream(backend, [str(small_clip), str(small_bikes)], [str(tmp_path / "a.mp4")])
    with pytest.raises(RtsegError, match="unknown output type"):
        run_stream(backend, [str(small_clip)], [str(tmp_path / "a.webm")])
    with pytest.raises(RtsegError, match="needs a display|GUI"):
        run_stream(backend, [str(small_clip)], None, StreamOptions(show=True))


def test_metrics_jsonl(tmp_path, backend, small_clip):
    from rtseg.stream import StreamOptions, run_stream

    m = tmp_path / "m.jsonl"
    run_stream(backend, [str(small_clip)], None, StreamOptions(metrics_jsonl=str(m), max_frames=50))
    lines = [json.loads(x) for x in m.read_text().splitlines()]
    assert lines and lines[-1]["final"] is True and lines[-1]["frames"] == 50
    assert {"fps", "drops", "sources", "latency"} <= set(lines[-1])
    assert {"in_queue", "out_queue", "drops", "fps"} <= set(lines[-1]["sources"][0])


@pytest.mark.parametrize("sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_signal_finalises_playable_file(tmp_path, tiny_engine, sig):
    """SIGINT/SIGTERM to a running ``rtseg stream``: the file is playable and holds every processed frame."""
    out, metrics = tmp_path / "live.mp4", tmp_path / "m.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-m", "rtseg", "stream", "--engine", str(tiny_engine), "--source",
                          "lavfi:testsrc2=size=320x240:rate=25", "--output", str(out), "--json", "--threads", "1",
                          "--metrics-jsonl", str(metrics)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env, cwd=str(REPO))
    try:
        def progressed():
            if p.poll() is not None:
                raise AssertionError(f"stream exited early: {p.stderr.read()}")
            lines = metrics.read_text().splitlines() if metrics.exists() else []
            return bool(lines) and json.loads(lines[-1])["frames"] >= 20

        wait_for(progressed, 120, "20 frames")
        p.send_signal(sig)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, stderr
    rep = json.loads(stdout)
    assert rep["stopped"] == signal.Signals(sig).name
    n = rep["frames"]
    assert n >= 20
    pts, frames, info = decode_video(out, fmt=None)
    assert len(frames) == n  # every frame processed up to the stop
    assert (info["width"], info["height"]) == (320, 240) and info["rate"] == 25
    assert pts == [i * pts[1] for i in range(n)]  # lavfi timing kept (1/25 s steps)


def test_codec_choice():
    from rtseg.stream.sinks import HW_H264, resolve_codec

    assert resolve_codec("h264") == "libx264"
    assert resolve_codec("auto", 320, 180) in ("libx264", *HW_H264)  # a hardware encoder only if one opens here
    with pytest.raises(RtsegError, match="not in this FFmpeg build"):
        resolve_codec("h264_doesnotexist")
    with pytest.raises(RtsegError, match="not a video encoder"):
        resolve_codec("aac")


@pytest.mark.slow
def test_loop_continues_timestamps_and_reports_rss(tmp_path, clip):
    """--loop: a second pass over the file continues the timeline (one frame after the last), so the
    output is one playable clip of twice the frames; the report carries RSS samples."""
    from rtseg.stream import StreamOptions, run_stream
    from rtseg.stream.sources import open_source

    src = open_source(str(clip))
    n = sum(1 for it in src.read() if it.kind == "video")
    src.close()

    class Identity:
        name, precision, input_hw, num_classes, max_batch, meta, folder = "none", "fp32", (32, 32), 1, None, {}, None

        def predict_u8(self, frames):
            return np.zeros(frames.shape[:3], np.uint8)

        def describe(self):
            return "identity"

    out = tmp_path / "loop.mp4"
    rep = run_stream(Identity(), [str(clip)], [str(out)], StreamOptions(loop=2, handle_signals=False))
    assert rep.frames == 2 * n
    with av.open(str(out)) as c:
        pts = [f.pts for f in c.decode(video=0)]
    assert len(pts) == 2 * n and all(b > a for a, b in zip(pts, pts[1:]))
    assert rep.rss_mb["samples"] >= 1 and rep.rss_mb["max"] >= rep.rss_mb["first"] > 0
    with pytest.raises(RtsegError, match="--loop applies to video files"):
        run_stream(Identity(), ["lavfi:testsrc2=size=64x64:rate=5"], [],
                   StreamOptions(loop=2, max_frames=2, handle_signals=False))
