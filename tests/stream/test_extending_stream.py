"""The "add a source or sink" recipe (docs/extending.md): subclass :class:`rtseg.stream.Sink` /
:class:`rtseg.stream.Source`, pass the objects to :func:`rtseg.stream.run_stream`; and a
:class:`rtseg.stream.StreamPipeline` subclass that replaces one per-frame step.

Real data: the laparoscopy clip (cut short with ``max_frames``), its 2 s 320×180 copy and a few
Kvasir-SEG images; the tiny engine of tests/stream/test_stream.py.
"""

from __future__ import annotations

import socket
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from rtseg.errors import RtsegError
from rtseg.stream import Source, SourceSpecError, StreamOptions, StreamPipeline, open_source, run_stream
from rtseg.stream.sources import Item, VideoInfo

from helpers import PtsRecorder, decode_video, video_pts_seconds


class KvasirStills(Source):
    """The recipe's toy source: a few real Kvasir-SEG images played as a 10 FPS video (not live)."""

    def __init__(self, files: list[Path]):
        super().__init__("kvasir-stills")
        self.files = files
        self.images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in files]
        self.closed = False

    def open(self):
        h, w = self.images[0].shape[:2]
        self.info = VideoInfo(w - w % 2, h - h % 2, Fraction(1, 10), Fraction(10))

    def read(self):
        for i, img in enumerate(self.images):
            f = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(
                width=self.info.width, height=self.info.height, format="yuv420p")
            f.pts, f.time_base = i, self.info.time_base
            yield Item("video", f)

    def close(self):
        self.closed = True


@pytest.fixture(scope="module")
def kvasir_files(kvasir) -> list[Path]:
    return sorted((kvasir / "images").iterdir())[:6]


def test_recipe_sink_gets_every_frame_of_a_real_clip_in_order(backend, clip):
    """A toy sink on the real 1280×720 clip (25 frames): every frame, in order, with the input's timestamps."""
    rec = PtsRecorder()
    rep = run_stream(backend, [str(clip)], [rec], StreamOptions(max_frames=25, batch_size=2, handle_signals=False))
    with av.open(str(clip)) as c:
        s = c.streams.video[0]
        want = [(f.pts, s.time_base) for _, f in zip(range(25), c.decode(s))]
    assert rec.pts == want
    assert rec.info is not None and (rec.info.width, rec.info.height) == (1280, 720) and rec.sizes == {(1280, 720)}
    assert rec.closed
    assert rep.frames == 25 and rep.stopped == "max frames" and rep.sources[0].outputs == ["pts-recorder"]


def test_recipe_sink_beside_a_file_output(tmp_path, backend, small_clip):
    """A toy sink next to an mp4 output of the same source: both get all 50 frames with the same timestamps."""
    rec = PtsRecorder()
    out = tmp_path / "o.mp4"
    rep = run_stream(backend, [str(small_clip)], [str(out), rec], StreamOptions(handle_signals=False))
    t_in = video_pts_seconds(small_clip)
    assert len(t_in) == 50 and rec.seconds() == t_in and video_pts_seconds(out) == t_in
    assert rep.sources[0].outputs == [str(out), "pts-recorder"]


def test_recipe_source_streams_real_images(backend, kvasir_files):
    """A toy Source of six Kvasir images: the sink gets them in order, pts 0..5 at 1/10 s, pixels intact."""
    src = KvasirStills(kvasir_files)
    rec = PtsRecorder(keep_pixels=True)
    rep = run_stream(backend, [src], [rec], StreamOptions(overlay=False, handle_signals=False))
    assert rec.pts == [(i, Fraction(1, 10)) for i in range(6)]
    assert rep.frames == 6 and rep.drops == 0 and not rep.sources[0].live and rep.sources[0].name == "kvasir-stills"
    for got, img in zip(rec.pixels, src.images):  # overlay off: the source's frames unchanged (4:2:0 round trip)
        h, w = got.shape[:2]
        assert np.abs(got.astype(int) - img[:h, :w].astype(int)).mean() < 4
    assert src.closed  # the pipeline closes the sources it was given


def test_recipe_source_is_segmented(backend, kvasir_files):
    """With the overlay on, the toy source's frames come out painted where the engine's mask is."""
    src = KvasirStills(kvasir_files)
    rec = PtsRecorder(keep_pixels=True)
    run_stream(backend, [src], [rec], StreamOptions(alpha=0.8, handle_signals=False))
    diffs = [np.abs(got.astype(int) - img[:got.shape[0], :got.shape[1]].astype(int)).mean()
             for got, img in zip(rec.pixels, src.images)]
    assert len(diffs) == 6 and max(diffs) > 10


def test_toy_source_cannot_loop(backend, kvasir_files):
    """``can_loop`` is false for a source that does not say otherwise: ``loop=2`` is a one-line error."""
    src = KvasirStills(kvasir_files)
    assert not src.can_loop
    src.set_loop(1)  # once is what every source does
    with pytest.raises(RtsegError) as e:
        run_stream(backend, [src], [PtsRecorder()], StreamOptions(loop=2, handle_signals=False))
    assert str(e.value) == "--loop applies to video files, not kvasir-stills; drop --loop for live sources"
    assert src.closed


def test_declared_capabilities(clip):
    """Sources and sinks say what they can do; nothing is guessed from their type."""
    from rtseg.stream.sinks import NullSink, make_sink

    f = open_source(str(clip))
    lav = open_source("lavfi:testsrc2=size=64x64:rate=5")
    try:
        assert f.can_loop and not f.live and not f.network
        assert not lav.can_loop and not lav.live
        with pytest.raises(RtsegError, match="--loop applies to video files, not lavfi:"):
            lav.set_loop(0)
    finally:
        f.close()
        lav.close()
    assert not NullSink().writes_frames and PtsRecorder().writes_frames
    assert not PtsRecorder().has_audio and PtsRecorder.on_quit is None and PtsRecorder().notes == ()
    rtp = make_sink("rtp://127.0.0.1:5004")
    assert rtp.writes_frames and rtp.accepts_audio and any("SDP" in n for n in rtp.notes)
    rtp.set_pacing(False)
    assert rtp.pace is False


def test_sink_on_quit_stops_the_stream(backend):
    """A sink that calls ``on_quit`` (as the ``--show`` window does on q) stops an endless source gracefully."""

    class QuitAfter(PtsRecorder):
        def write(self, frame):
            super().write(frame)
            if len(self.pts) == 10:
                self.on_quit()

    rec = QuitAfter()
    rep = run_stream(backend, ["lavfi:testsrc2=size=160x120:rate=25"], [rec], StreamOptions(handle_signals=False))
    assert rep.stopped == "display closed" and rep.frames == len(rec.pts) >= 10 and rec.closed
    assert [p for p, _ in rec.pts] == list(range(len(rec.pts)))  # every frame decoded before the stop, in order


def test_pipeline_subclass_replaces_one_step(backend, small_clip):
    """Overriding ``postprocess`` alone: the masks arrive at network size, the frames pass unchanged."""

    class MaskStats(StreamPipeline):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.fg: list[float] = []

        def postprocess(self, item):
            assert item.mask.shape == tuple(self.backend.input_hw) and item.mask.dtype == np.uint8
            self.fg.append(float((item.mask > 0).mean()))
            return item.frame

    rec = PtsRecorder(keep_pixels=True)
    pipe = MaskStats(backend, [str(small_clip)], [rec], StreamOptions(batch_size=4, handle_signals=False))
    rep = pipe.run()
    _, frames_in, _ = decode_video(small_clip)
    assert rep.frames == 50 and len(pipe.fg) == 50 and 0.05 < np.mean(pipe.fg) < 0.95
    assert all(np.array_equal(a, b) for a, b in zip(rec.pixels, frames_in))
    with pytest.raises(RtsegError, match="already run; create a new one"):
        pipe.run()


def _closed_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_spec_errors_are_never_retried(tmp_path, backend):
    """Unknown scheme / missing file: ``SourceSpecError`` at once, even with ``reconnect``."""
    with pytest.raises(SourceSpecError, match="unknown source scheme"):
        open_source("gopher://127.0.0.1/x")
    logs: list[str] = []
    t0 = time.monotonic()
    with pytest.raises(SourceSpecError, match="does not exist"):
        run_stream(backend, [str(tmp_path / "nope.mp4")], None, StreamOptions(reconnect=True, handle_signals=False),
                   log=logs.append)
    assert logs == [] and time.monotonic() - t0 < 5


def test_network_source_not_up_is_retried_with_backoff(backend):
    """An RTSP server that is not up yet (connection refused): retried 0.25 s, 0.5 s, ... until stopped."""
    url = f"rtsp://127.0.0.1:{_closed_tcp_port()}/live"
    stop = threading.Event()
    logs: list[str] = []

    def log(msg: str) -> None:
        logs.append(msg)
        if len(logs) == 2:
            stop.set()

    with pytest.raises(RtsegError) as e:
        run_stream(backend, [url], None, StreamOptions(reconnect=True, stall_timeout=2, handle_signals=False),
                   stop_event=stop, log=log)
    assert not isinstance(e.value, SourceSpecError) and "cannot open stream" in str(e.value)
    assert [m.rsplit("retrying in ", 1)[1] for m in logs] == ["0.25 s", "0.5 s"]
