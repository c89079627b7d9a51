"""Issue 22 — live input from real senders and servers, started by the tests (``slow``).

Senders: the ffmpeg CLI (x264's default GOP joined before and after it starts; ``-g 25 -tune
zerolatency``; ``-c:v copy`` of the clip's own B-frame H.264 with its audio; MPEG-TS timestamps that
wrap around), a GStreamer pipeline (``videotestsrc ! x264enc ! mpegtsmux ! udpsink``) and GStreamer's
RTSP server fed by ffmpeg (over TCP and UDP, and restarted mid-stream). Outputs that stop answering (a TCP receiver
that never reads, an RTSP server that never answers) and the signals that must still end the run.

Each case runs ``rtseg stream`` as a process, as a user would, and checks the counts of its JSON
report (frames written, dropped, skipped before the first keyframe) and the output with ffprobe
(monotonic timestamps). Needs Debian's ``ffmpeg``, ``gstreamer1.0-tools``/``-plugins-*`` and
``gir1.2-gst-rtsp-server-1.0`` + ``python3-gi`` (``scripts/test.sh`` installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import pytest

from helpers import REPO, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _senders_installed():
    """The senders are part of what these tests prove: missing ones fail (``scripts/test.sh`` installs them)."""
    missing = [t for t in ("ffmpeg", "ffprobe", "gst-launch-1.0") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: apt-get install ffmpeg gstreamer1.0-tools (scripts/test.sh does)")

SYSTEM_PY = "/usr/bin/python3"  # GStreamer's Python bindings (python3-gi) live in the system Python
RTSP_SERVER = REPO / "tests" / "servers" / "gst_rtsp_server.py"


# -- helpers ------------------------------------------------------------------------------------------
class Rtseg:
    """``python -m rtseg stream ... --json`` as a process; stderr collected by a thread."""

    def __init__(self, *args):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.p = subprocess.Popen([sys.executable, "-m", "rtseg", "stream", *map(str, args), "--json"], cwd=str(REPO),
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.err: list[str] = []
        self._t = threading.Thread(target=lambda: self.err.extend(self.p.stderr), daemon=True)
        self._t.start()

    def wait_for(self, text: str, timeout: float = 60) -> None:
        t0 = time.monotonic()
        while not any(text in ln for ln in self.err):
            assert self.p.poll() is None, "".join(self.err)
            assert time.monotonic() - t0 < timeout, f"no {text!r} in {''.join(self.err)}"
            time.sleep(0.1)

    def report(self, timeout: float = 90) -> dict:
        out, _ = self.p.communicate(timeout=timeout)
        self._t.join(5)
        assert self.p.returncode == 0, "".join(self.err)
        return json.loads(out)

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()


def ffmpeg(*args, background: bool = False):
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", *map(str, args)]
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def video_packets(path: Path) -> list[tuple[float, bool]]:
    """(pts s, keyframe) of every video packet, in decode order (ffprobe)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time,flags",
                          "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout
    rows = [ln.split(",") for ln in out.split() if ln and "," in ln]
    return [(float(r[0]), "K" in r[1]) for r in rows if r[0] != "N/A"]


def assert_plays_monotonic(path: Path, frames: int) -> None:
    """ffprobe decodes ``frames`` video frames and their timestamps strictly increase."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time",
                          "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout
    pts = [float(x.split(",")[0]) for x in out.split() if x.split(",")[0] not in ("", "N/A")]
    assert len(pts) == frames, (len(pts), frames)
    assert all(b > a for a, b in zip(pts, pts[1:])), pts


def streams_of(path: Path) -> list[str]:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


@pytest.fixture(scope="module")
def clip4s(tmp_path_factory, clip) -> Path:
    """4 s (100 frames) of the real 720p clip, re-encoded with x264's defaults (one keyframe, B-frames)."""
    p = tmp_path_factory.mktemp("live") / "endo_4s.mp4"
    ffmpeg("-i", clip, "-t", "4", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "copy", p)
    return p


def listen(tmp: Path, engine: Path, *extra) -> tuple[Rtseg, str, Path]:
    port = free_port()
    url = f"udp://127.0.0.1:{port}"
    out = tmp / "out.mp4"
    r = Rtseg("--engine", engine, "--source", url, "--output", out, "--stall-timeout", "2", *extra)
    r.wait_for("waiting for udp://")
    return r, url + "?pkt_size=1316", out


def source(report: dict) -> dict:
    return report["sources"][0]


# -- ffmpeg senders -----------------------------------------------------------------------------------
def test_default_gop_sender_started_after_the_listener_every_frame(tmp_path, tiny_engine, clip4s):  # noqa: F811
    """x264's default GOP (one keyframe per 250 frames), the sender starting after rtseg waits: before,
    ``has a video stream of unknown size`` (the fast probe failed, the default probe waited 5 s for
    parameter sets and lost the first keyframe); now every frame, none dropped, none skipped."""
    r, url, out = listen(tmp_path, tiny_engine)
    ffmpeg("-re", "-i", clip4s, "-an", "-c:v", "libx264", "-preset", "ultrafast", "-f", "mpegts", url)
    s = source(r.report())
    assert (s["frames"], s["drops"], s["skipped_before_keyframe"]) == (100, 0, 0), s
    assert_plays_monotonic(out, 100)


def test_default_gop_sender_joined_mid_stream_waits_for_its_keyframe(tmp_path, tiny_engine, clip):  # noqa: F811
    """Joined between keyframes: the sender's stream starts in the middle of a GOP of x264's default
    length (the real clip twice at 320×180, cut at a TS packet boundary half-way into the first GOP and
    sent with ``-c copy -copyinkf``, 4× real time). rtseg says once that it waits for a keyframe, skips
    only the packets before it (counted), and hands on every frame from it (written or, at 4×, dropped)."""
    two = tmp_path / "two.ts"
    ffmpeg("-stream_loop", "1", "-i", clip, "-an", "-vf", "scale=320:180", "-c:v", "libx264", "-preset", "ultrafast",
           "-f", "mpegts", two)
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pos,flags",
                          "-of", "csv=p=0", str(two)], capture_output=True, text=True, check=True).stdout
    pk = [ln.split(",") for ln in out.split() if "," in ln]
    keys = [i for i, r in enumerate(pk) if "K" in r[1]]
    assert len(keys) >= 2 and keys[0] == 0, keys
    cut = tmp_path / "mid_gop.ts"
    cut.write_bytes(two.read_bytes()[int(pk[keys[1] // 2][0]):])
    r, url, out_mp4 = listen(tmp_path, tiny_engine)
    ffmpeg("-readrate", "4", "-i", cut, "-c", "copy", "-copyinkf", "-f", "mpegts", url)
    s = source(r.report())
    assert sum("waiting for a keyframe" in ln for ln in r.err) == 1, r.err
    assert s["skipped_before_keyframe"] > 0 and s["frames"] + s["drops"] == len(pk) - keys[1], (s, len(pk), keys)
    assert_plays_monotonic(out_mp4, s["frames"])


def test_zerolatency_g25_sender_drops_nothing_and_latency(tmp_path, tiny_engine, clip4s, record_property):  # noqa: F811
    """``-tune zerolatency -g 25`` at 25 fps, 720p: every frame written, no drop (before: 207 of 250
    written, 18 dropped); end-to-end latency p50/p99 recorded for batch 1 and 4."""
    for batch in (1, 4):
        r, url, out = listen(tmp_path, tiny_engine, "--batch-size", batch)
        ffmpeg("-re", "-i", clip4s, "-an", "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "25",
               "-f", "mpegts", url)
        s = source(r.report())
        assert (s["frames"], s["drops"]) == (100, 0), (batch, s)
        record_property(f"e2e_ms_batch{batch}", (round(s["e2e"]["p50_ms"], 1), round(s["e2e"]["p99_ms"], 1)))
        assert_plays_monotonic(out, 100)


@pytest.mark.parametrize("ext,acodec", [("mp4", "mp2"), ("mkv", "mp2"), ("mp4", "aac")])
def test_copied_bframe_h264_with_its_audio(tmp_path, tiny_engine, clip4s, ext, acodec):  # noqa: F811
    """The clip's own H.264 (B-frames) sent with ``-c:v copy``, its audio becoming MP2 or AAC in MPEG-TS:
    before, ``cannot write out.mp4: Invalid argument`` (the audio's parameters were unknown after the
    fast probe; for AAC the source learned them, but the copied stream took the empty header); now every
    frame and the audio are written, timestamps monotonic, and the audio decodes."""
    port = free_port()
    out = tmp_path / f"out.{ext}"
    r = Rtseg("--engine", tiny_engine, "--source", f"udp://127.0.0.1:{port}", "--output", out, "--stall-timeout", "2")
    r.wait_for("waiting for udp://")
    ffmpeg("-re", "-i", clip4s, "-c:v", "copy", "-c:a", acodec, "-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316")
    s = source(r.report())
    assert (s["frames"], s["drops"]) == (100, 0), s
    assert_plays_monotonic(out, 100)
    assert sorted(streams_of(out)) == ["audio", "video"], streams_of(out)
    with av.open(str(out)) as c:
        a = c.streams.audio[0]
        assert a.codec_context.sample_rate > 0 and (acodec == "mp2" or a.codec_context.name == "aac")
        assert sum(len(p.decode()) for p in c.demux(a)) > 50  # ~4 s of audio decodes


def test_mpegts_timestamps_wrapping_around_stay_monotonic(tmp_path, tiny_engine, clip4s):  # noqa: F811
    """A sender whose 33-bit MPEG-TS clock wraps 1.5 s into the stream (``-output_ts_offset``)."""
    r, url, out = listen(tmp_path, tiny_engine)
    wrap_s = 2 ** 33 / 90000
    ffmpeg("-re", "-i", clip4s, "-an", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-output_ts_offset",
           f"{wrap_s - 1.5:.3f}", "-f", "mpegts", url)
    s = source(r.report())
    assert (s["frames"], s["drops"]) == (100, 0), s
    assert_plays_monotonic(out, 100)


# -- GStreamer ----------------------------------------------------------------------------------------
def test_gstreamer_sender(tmp_path, tiny_engine):  # noqa: F811
    """``videotestsrc ! x264enc ! mpegtsmux ! udpsink``: every frame of the 100 sent."""
    r, url, out = listen(tmp_path, tiny_engine)
    port = url.split(":")[2].split("?")[0]
    subprocess.run(["gst-launch-1.0", "-q", "videotestsrc", "num-buffers=100", "is-live=true", "pattern=ball", "!",
                    "video/x-raw,width=320,height=240,framerate=25/1", "!", "x264enc", "tune=zerolatency",
                    "speed-preset=ultrafast", "key-int-max=25", "!", "mpegtsmux", "!", "udpsink", "host=127.0.0.1",
                    f"port={port}"], check=True, timeout=60, capture_output=True)
    s = source(r.report())
    assert (s["frames"], s["drops"]) == (100, 0), s
    assert_plays_monotonic(out, 100)


class RtspServer:
    """GStreamer's RTSP server (:data:`RTSP_SERVER`) on a loopback port, as a process, fed by an
    ffmpeg sender of the real clip (320×180, 25 fps, a keyframe a second, looped) over RTP."""

    def __init__(self, port: int, rtp_port: int):
        self.port, self.rtp_port = port, rtp_port
        self.p = None

    def start(self) -> "RtspServer":
        self.p = subprocess.Popen([SYSTEM_PY, str(RTSP_SERVER), str(self.port), str(self.rtp_port)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.p.stdout.readline().strip() == "ready", self.p.stderr.read()
        return self

    def stop(self) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/live"


@pytest.fixture
def rtsp_server(clip):
    if subprocess.run([SYSTEM_PY, "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"],
                      capture_output=True).returncode:
        pytest.fail("GStreamer's RTSP server is not installed: apt-get install gir1.2-gst-rtsp-server-1.0 python3-gi "
                    "(scripts/test.sh does)")
    srv = RtspServer(free_port(socket.SOCK_STREAM), free_port()).start()
    feed = ffmpeg("-re", "-stream_loop", "-1", "-i", clip, "-an", "-vf", "scale=320:180", "-c:v", "libx264",
                  "-preset", "ultrafast", "-tune", "zerolatency", "-g", "25", "-x264-params", "repeat-headers=1",
                  "-f", "rtp", f"rtp://127.0.0.1:{srv.rtp_port}", background=True)
    yield srv
    feed.kill()
    srv.stop()


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_rtsp_server_over_tcp_and_udp(tmp_path, tiny_engine, rtsp_server, transport):  # noqa: F811
    out = tmp_path / "out.mp4"
    rep = Rtseg("--engine", tiny_engine, "--source", rtsp_server.url, "--rtsp-transport", transport, "--output", out,
                "--max-frames", "50").report()
    s = source(rep)
    assert s["frames"] + s["drops"] == 50 and s["frames"] >= 48, s
    assert_plays_monotonic(out, s["frames"])


def test_rtsp_server_restarted_mid_stream_reconnects(tmp_path, tiny_engine, rtsp_server):  # noqa: F811
    """The server is killed 3 s in and restarted 1 s later on the same port: the stream reconnects and
    goes on, one timeline, the output plays."""
    out = tmp_path / "out.mp4"
    r = Rtseg("--engine", tiny_engine, "--source", rtsp_server.url, "--output", out, "--reconnect", "--stall-timeout",
              "1")
    r.wait_for("engine:")
    time.sleep(4)
    rtsp_server.stop()
    time.sleep(1)
    rtsp_server.start()
    r.wait_for("reconnected", timeout=30)
    time.sleep(2)
    r.p.send_signal(signal.SIGINT)
    s = source(r.report())
    assert s["reconnects"] >= 1 and s["frames"] > 50, s
    assert_plays_monotonic(out, s["frames"])


# -- outputs that stop answering, and the signals ------------------------------------------------------
class BlackHole:
    """A TCP server on a loopback port that accepts connections and never reads (nor answers)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            self.conns.append(c)

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def black_hole():
    bh = BlackHole()
    yield bh
    bh.close()


def _live_source_with(tmp_path, engine, *outputs):
    """rtseg on a live UDP source (an ffmpeg sender looping the clip at 25 fps) with ``outputs``."""
    port = free_port()
    args = ["--engine", engine, "--source", f"udp://127.0.0.1:{port}"]
    for o in outputs:
        args += ["--output", o]
    r = Rtseg(*args)
    r.wait_for("waiting for udp://")
    sender = ffmpeg("-re", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-c:v", "libx264", "-preset", "ultrafast",
                    "-g", "25", "-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316", background=True)
    return r, sender


def test_a_tcp_receiver_that_never_reads_cannot_hold_the_run(tmp_path, tiny_engine, black_hole):  # noqa: F811
    """Before: SIGINT twice and SIGTERM ignored, only SIGKILL ended it. Now the output's writes time
    out: one error line naming it, and the file output beside it is finalised and plays."""
    out = tmp_path / "out.mp4"
    r, sender = _live_source_with(tmp_path, tiny_engine, f"tcp://127.0.0.1:{black_hole.port}", out)
    try:
        r.p.wait(40)
    finally:
        sender.kill()
        r.kill()
    err = "".join(r.err)
    assert r.p.returncode == 2 and f"tcp://127.0.0.1:{black_hole.port}" in err and "Traceback" not in err, err
    assert len(streams_of(out)) == 1
    n = len(video_packets(out))
    assert n > 0
    assert_plays_monotonic(out, n)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_is_honoured_while_an_output_blocks(tmp_path, tiny_engine, black_hole, sig):  # noqa: F811
    """A stop while the TCP output is blocked: the process ends within seconds with the file finalised
    (SIGTERM once; SIGINT twice exits at once)."""
    out = tmp_path / "out.mp4"
    r, sender = _live_source_with(tmp_path, tiny_engine, f"tcp://127.0.0.1:{black_hole.port}", out)
    try:
        time.sleep(3)  # the receiver's socket buffers are full by now
        t0 = time.monotonic()
        r.p.send_signal(sig)
        if sig == signal.SIGINT:
            time.sleep(0.3)
            r.p.send_signal(sig)
        r.p.wait(30)
        took = time.monotonic() - t0
    finally:
        sender.kill()
        r.kill()
    assert took < (5 if sig == signal.SIGINT else 12), (took, r.err)
    assert "Traceback" not in "".join(r.err), r.err
    n = len(video_packets(out))
    assert n > 0
    assert_plays_monotonic(out, n)


def test_an_rtsp_server_that_never_answers_is_one_line(tmp_path, tiny_engine, clip4s, black_hole):  # noqa: F811
    """Publishing to a server that accepts and never answers: one error line within the socket
    timeout (before: the process never ended)."""
    r = Rtseg("--engine", tiny_engine, "--source", clip4s, "--output",
              f"rtsp://admin:S3cretPass@127.0.0.1:{black_hole.port}/cam")
    r.p.wait(40)
    err = "".join(r.err)
    assert r.p.returncode == 2 and err.count("error:") == 1 and "Traceback" not in err, err
    assert "S3cretPass" not in err and "admin:***@" in err, err
