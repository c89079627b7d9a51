"""Temporal modes of the stream (``--temporal off|ema|flow``, ``--infer-every K``) and its flicker figure.

Real data: 2 s (50 frames) of the laparoscopy and street clips at low resolution (the fixtures of
tests/stream/test_stream.py) through the tiny engine; a real colonoscopy frame shifted by hand for the
optical-flow propagation; hand-made frame sequences (gaps, reconnects, logits) for the keyframe
and EMA definitions.
"""

from __future__ import annotations

import json
import math
import time
from types import SimpleNamespace

import av
import cv2
import numpy as np
import pytest

from rtseg.errors import RtsegError
from rtseg.stream import Source, StreamOptions, StreamPipeline
from rtseg.stream.sources import Item, VideoInfo
from rtseg.stream.temporal import Temporal, make_temporal

from helpers import PtsRecorder, run_cli_process, video_pts_seconds


class Recording(StreamPipeline):
    """Records every frame's (source, seq, mask) in the sink threads and the frames sent to the engine."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.masks: dict[int, list[tuple[int, bytes]]] = {}
        self.engine_frames = 0

    def infer(self, batch):
        self.engine_frames += len(batch)
        return super().infer(batch)

    def infer_logits(self, batch):
        self.engine_frames += len(batch)
        return super().infer_logits(batch)

    def postprocess(self, item):
        self.masks.setdefault(item.src, []).append((item.seq, item.mask.tobytes()))
        return super().postprocess(item)


def _run(backend, sources, **opts):
    sinks = [PtsRecorder() for _ in sources]
    pipe = Recording(backend, [str(s) for s in sources], sinks, StreamOptions(handle_signals=False, **opts))
    return pipe, pipe.run(), sinks


@pytest.mark.parametrize("mode,k", [("off", 2), ("ema", 1), ("ema", 3), ("flow", 2), ("flow", 3)])
def test_mode_keeps_count_order_timestamps(backend, small_clip, mode, k):
    """Each mode: every frame comes out once, in order, with the input's timestamps; only keyframes
    (every K-th frame) reach the engine; the report carries the mode and a flicker figure."""
    pipe, rep, (sink,) = _run(backend, [small_clip], batch_size=2, temporal=mode, infer_every=k)
    assert rep.frames == 50 and rep.drops == 0
    assert sink.seconds() == video_pts_seconds(small_clip)
    assert [s for s, _ in pipe.masks[0]] == list(range(50))
    assert pipe.engine_frames == math.ceil(50 / k)
    assert rep.temporal.startswith(mode) and rep.temporal.endswith(f"K={k}")
    assert 0.0 <= rep.flicker <= 1.0 and rep.sources[0].flicker == rep.flicker
    assert "flicker" in rep.table() and json.loads(rep.to_json())["flicker"] == rep.flicker


def test_two_sources_flow_keeps_each_timeline(backend, small_clip, small_bikes):
    """Two real clips batched into one engine with flow, K = 2: each source's frames complete, in
    order, with its own timestamps; keyframes counted per source (25 each)."""
    pipe, rep, sinks = _run(backend, [small_clip, small_bikes], batch_size=2, batch_timeout_ms=50,
                            temporal="flow", infer_every=2)
    assert [s.frames for s in rep.sources] == [50, 50]
    for sink, src in zip(sinks, (small_clip, small_bikes)):
        assert sink.seconds() == video_pts_seconds(src)
    assert [s for s, _ in pipe.masks[0]] == list(range(50)) == [s for s, _ in pipe.masks[1]]
    assert pipe.engine_frames == 50
    assert rep.batch_mean > 1.2  # keyframes of both sources shared engine calls


def test_flow_k1_equals_off_and_keyframes_match(backend, small_clip):
    """flow with K = 1 is the default path (no temporal state) and gives exactly off's masks; with
    K = 2 the keyframes' masks are exactly off's and the frames in between are propagated."""
    assert make_temporal("flow", 1, 0.5, (64, 64)) is None
    off, _, _ = _run(backend, [small_clip], batch_size=1, temporal="off", infer_every=1)
    flow1, _, _ = _run(backend, [small_clip], batch_size=1, temporal="flow", infer_every=1)
    assert flow1.temporal is None
    assert flow1.masks[0] == off.masks[0]
    flow2, _, _ = _run(backend, [small_clip], batch_size=1, temporal="flow", infer_every=2)
    hold2, _, _ = _run(backend, [small_clip], batch_size=1, temporal="off", infer_every=2)
    off_m, flow_m, hold_m = ([m for _, m in p.masks[0]] for p in (off, flow2, hold2))
    assert flow_m[::2] == off_m[::2] == hold_m[::2]
    assert hold_m[1::2] == off_m[::2]  # off, K = 2 holds the keyframe's mask
    assert flow_m[1::2] != hold_m[1::2]  # flow moves it


def _item(src, seq, fresh=False, net=None, logits=None):
    return SimpleNamespace(src=src, seq=seq, fresh=fresh, net=net, logits=logits, gray=None)


def test_keyframes_every_k_and_after_gaps_and_reconnects():
    """Keyframe = every K-th frame since the last one, the first frame of a source, after a gap
    (dropped live frames) and after a reconnect; counted per source."""
    t = Temporal("off", 3, 0.5, (8, 8))
    seqs = [0, 1, 2, 3, 4, 7, 8, 9, 10, 11]  # frames 5 and 6 were dropped
    keys = [t.plan(_item(0, s, fresh=(s == 0))) for s in seqs]
    assert keys == [True, False, False, True, False, True, False, False, True, False]
    assert t.plan(_item(1, 0, fresh=True))  # another source has its own count
    assert t.plan(_item(0, 12, fresh=True))  # reconnect: first frame of the new connection
    assert not t.plan(_item(0, 13)) and not t.plan(_item(1, 1))


def test_ema_and_hold_definitions():
    """ema: z_t = a·z_{t−1} + (1 − a)·logits_t on keyframes, held in between; a reconnect restarts it."""
    t = Temporal("ema", 2, 0.25, (2, 2))
    z = [np.full((1, 2, 2), v, np.float32) for v in (4.0, -8.0, 2.0)]
    m0 = t.resolve(_item(0, 0, fresh=True, logits=z[0]))
    assert m0.dtype == np.uint8 and m0.shape == (2, 2) and m0.all()
    held = _item(0, 1)
    t.resolve(held)
    np.testing.assert_array_equal(held.logits, z[0])
    it = _item(0, 2, logits=z[1])
    assert not t.resolve(it).any()  # 0.25·4 + 0.75·(−8) = −5
    np.testing.assert_allclose(it.logits, -5.0)
    it = _item(0, 4, fresh=True, logits=z[2])
    t.resolve(it)
    np.testing.assert_array_equal(it.logits, z[2])


def test_flow_propagates_a_shifted_real_frame(shared_data):
    """A real colonoscopy frame at 96×96 shifted by 6 px: the keyframe's logits warped by DIS flow
    follow the shift (the warped mask overlaps the shifted one far better than the held one)."""
    with av.open(str(shared_data / "video" / "colonoscopy_polypgen_seq11.mp4")) as c:
        rgb = next(c.decode(video=0)).to_ndarray(format="rgb24")
    key = cv2.resize(rgb, (96, 96), interpolation=cv2.INTER_AREA)
    cur = np.roll(key, (6, 6), axis=(0, 1))
    z = np.full((1, 96, 96), -4.0, np.float32)
    z[0, 30:60, 25:55] = 4.0
    want = np.roll(z[0] > 0, (6, 6), axis=(0, 1))
    t = Temporal("flow", 2, 0.5, (96, 96))
    k_item = _item(0, 0, fresh=True, net=key, logits=z)
    assert t.plan(k_item)
    t.resolve(k_item)
    c_item = _item(0, 1, net=cur)
    assert not t.plan(c_item) and c_item.gray is not None
    mask = t.resolve(c_item).astype(bool)

    def iou(a, b):
        return (a & b).sum() / (a | b).sum()

    assert iou(mask, want) > 0.8 > iou(z[0] > 0, want) + 0.1, (iou(mask, want), iou(z[0] > 0, want))


def test_bad_options_one_line_error(tiny_engine, small_clip):
    for kw, words in [({"temporal": "optical"}, "--temporal"), ({"infer_every": 0}, "--infer-every"),
                      ({"ema": 1.0}, "--ema")]:
        with pytest.raises(RtsegError, match=words):
            StreamOptions(**kw)
    r = run_cli_process("stream", "--engine", str(tiny_engine), "--source", str(small_clip), "--no-output",
                "--infer-every", "0", "-q")
    assert r.returncode == 2 and "--infer-every" in r.stderr


def test_cli_stream_flow_prints_flicker(tiny_engine, small_clip):
    r = run_cli_process("stream", "--engine", str(tiny_engine), "--source", str(small_clip), "--no-output", "--json",
                "--temporal", "flow", "--infer-every", "2", "--batch-size", "2", "--threads", "1")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["frames"] == 50 and rep["temporal"] == "flow, K=2" and 0 <= rep["flicker"] <= 1
    assert "temporal: flow, K=2; flicker" in r.stderr


class LiveClip(Source):
    """A real clip replayed as a live source, as fast as it decodes (so a slow engine makes drops)."""

    live = True

    def __init__(self, path):
        super().__init__(f"live:{path.name}")
        self.path = path

    def open(self):
        with av.open(str(self.path)) as c:
            s = c.streams.video[0]
            self.info = VideoInfo(s.codec_context.width, s.codec_context.height, s.time_base, s.average_rate)

    def read(self):
        with av.open(str(self.path)) as c:
            for f in c.decode(video=0):
                yield Item("video", f.reformat(format="yuv420p"))


def test_live_drops_flow_keyframe_after_each_gap(backend, small_clip):
    """A live source with a slow engine drops frames: the frames that remain come out in order with
    increasing timestamps, and the first frame after every gap is a keyframe (flow, K = 3)."""

    class Slow(Recording):
        def infer_logits(self, batch):
            time.sleep(0.03)
            return super().infer_logits(batch)

    sink = PtsRecorder()
    pipe = Slow(backend, [LiveClip(small_clip)], [sink],
                StreamOptions(handle_signals=False, batch_size=1, temporal="flow", infer_every=3))
    plans = []
    plan = pipe.temporal.plan
    pipe.temporal.plan = lambda it: plans.append((it.seq, plan(it))) or plans[-1][1]
    rep = pipe.run()
    assert rep.drops > 0 and rep.frames + rep.drops == 50
    secs = sink.seconds()
    assert len(secs) == rep.frames and all(a < b for a, b in zip(secs, secs[1:]))
    seqs = [s for s, _ in pipe.masks[0]]
    assert seqs == [s for s, _ in plans] and all(a < b for a, b in zip(seqs, seqs[1:]))
    gaps = [k for (a, _), (b, k) in zip(plans, plans[1:]) if b != a + 1]
    assert gaps and all(gaps) and plans[0][1]
    assert pipe.engine_frames == sum(k for _, k in plans) < rep.frames
