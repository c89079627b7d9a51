"""Helpers shared by the test modules (plain functions and classes; the shared fixtures are in conftest.py).

One home for each: the tiny EUNet-S checkpoint, clip cutting and decoding with PyAV, the CLI run in this
process (:func:`run_cli`, :func:`cli`) or in a child process (:func:`run_cli_process`), the one-line error
check, free loopback ports, the real-time MPEG-TS sender, toy backends and sinks.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from rtseg.runtime.base import Backend
from rtseg.stream import Sink
from rtseg.stream.sources import VideoInfo

REPO = Path(__file__).resolve().parents[1]
#: The tiny EUNet-S every fast test trains, exports or streams (64×64 input unless a test says otherwise).
TINY_MODEL = "eunet-s"
TINY_WIDTHS = [8, 16, 32, 64]
#: Input size (H, W) of the toy backends.
TOY_HW = (64, 64)


def make_tiny_engine(folder: Path, clip: Path) -> Path:
    """Tiny EUNet-S checkpoint (64×64) with the head bias set to the median logit on ``clip``."""
    import torch

    from rtseg.checkpoint import save_checkpoint
    from rtseg.data.transforms import Preprocessor
    from rtseg.meta import ModelMeta
    from rtseg.models import create_model
    from rtseg.runtime import load_engine

    torch.manual_seed(0)
    model = create_model(TINY_MODEL, widths=TINY_WIDTHS)
    meta = ModelMeta(model=TINY_MODEL, model_kwargs={"widths": list(TINY_WIDTHS)}, input_size=[64, 64])
    save_checkpoint(folder, model, meta)
    backend = load_engine(folder)
    pre = Preprocessor(backend.input_hw)
    with av.open(str(clip)) as c:
        x = np.stack([pre(f.to_ndarray(format="rgb24"))[0] for _, f in zip(range(4), c.decode(video=0))])
    med = float(np.median(backend.infer_u8(x)))
    with torch.no_grad():
        model.head.bias -= med
    save_checkpoint(folder, model, meta)
    return folder


def cut_clip(src: Path, dst: Path, seconds: float, size: tuple[int, int] | None = None, *,
             retime=None, audio: str | None = None, gop: int | None = None) -> Path:
    """Re-encode the first ``seconds`` of ``src`` (optionally scaled to ``size`` = (w, h)) into ``dst``
    with the same timestamps (or ``retime(i, pts) -> pts``). ``audio``: ``"copy"`` copies the source's
    audio packets, ``"sine"`` adds a generated 440 Hz AAC track, ``None`` none. ``gop``: key-frame
    interval in frames (x264's default otherwise)."""
    with av.open(str(src)) as ic, av.open(str(dst), "w") as oc:
        vs = ic.streams.video[0]
        tb = vs.time_base
        w, h = size or (vs.codec_context.width, vs.codec_context.height)
        ov = oc.add_stream("libx264", rate=vs.average_rate)
        ov.width, ov.height, ov.pix_fmt = w, h, "yuv420p"
        ov.time_base = tb
        ov.codec_context.time_base = tb
        ov.options = {"preset": "ultrafast"}
        if gop:
            ov.codec_context.gop_size = gop
        oa = None
        ias = ic.streams.audio[0] if ic.streams.audio else None
        if audio == "copy":
            oa = oc.add_stream_from_template(ias)
        elif audio == "sine":
            oa = oc.add_stream("aac", rate=48000)
            oa.layout = "mono"
        streams = [vs] + ([ias] if audio == "copy" else [])
        i = 0
        for pkt in ic.demux(*streams):
            if pkt.stream.type == "audio":
                if pkt.pts is not None and pkt.size and pkt.pts * pkt.time_base < seconds:
                    pkt.stream = oa
                    oc.mux(pkt)
                continue
            for f in pkt.decode():
                if f.pts * tb >= seconds:
                    continue
                g = f.reformat(width=w, height=h, format="yuv420p")
                g.pts = retime(i, f.pts) if retime else f.pts
                g.time_base = tb
                g.pict_type = 0
                oc.mux(ov.encode(g))
                i += 1
        oc.mux(ov.encode(None))
        if audio == "sine":
            sr, n = 48000, 1024
            for k in range(int(seconds * sr) // n):
                t = (np.arange(n) + k * n) / sr
                a = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None], format="fltp",
                                               layout="mono")
                a.sample_rate, a.pts, a.time_base = sr, k * n, Fraction(1, sr)
                oc.mux(oa.encode(a))
            oc.mux(oa.encode(None))
    return dst


def decode_video(path: Path, fmt: str = "rgb24"):
    """(list of pts, list of frames as ndarray, stream info dict)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        info = {"rate": s.average_rate, "time_base": s.time_base, "width": s.codec_context.width,
                "height": s.codec_context.height, "codec": s.codec_context.name}
        pts, frames = [], []
        for f in c.decode(s):
            pts.append(f.pts)
            frames.append(f.to_ndarray(format=fmt) if fmt else None)
    return pts, frames, info


def video_pts_seconds(path: Path) -> list[float]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [float(f.pts * s.time_base) for f in c.decode(s)]


def run_cli_process(*args: str, timeout: float = 240):
    """``python -m rtseg ARGS`` → CompletedProcess (text)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "rtseg", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=str(REPO))


def cli(*args) -> tuple[int, str]:
    """``rtseg ARGS`` in this process → (exit status, stderr). Any exception but SystemExit propagates
    (a traceback fails the test)."""
    from rtseg.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def py(code: str, timeout: float, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=str(REPO), **kw)


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """A tmpfs mounted at ``path`` (root only), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def tiny_train_config(out: Path, kvasir: Path, **kw):
    from rtseg.training.loop import TrainConfig

    return TrainConfig(model=TINY_MODEL, model_kwargs={"widths": list(TINY_WIDTHS)}, data=str(kvasir), out=str(out),
                       img_size=(32, 32), epochs=1, batch_size=4, max_images=20, threads=1, progress=False, **kw)


SENDER = r'''
import av, sys, time
url, clip, loops = sys.argv[1], sys.argv[2], int(sys.argv[3])
fmt = "rtp_mpegts" if url.startswith("rtp") else ("rtsp" if url.startswith("rtsp") else "mpegts")
if url.startswith("udp"):
    url += "?pkt_size=1316"
inp = av.open(clip)
streams = [inp.streams.video[0]] + list(inp.streams.audio[:1])
out = av.open(url, "w", format=fmt)
outs = {s.index: out.add_stream_from_template(s) for s in streams}
t0 = time.monotonic()
offset = k = 0.0  # offset in seconds
while loops < 0 or k < loops:
    inp.seek(0)
    end = 0.0
    for pkt in inp.demux(*streams):
        if pkt.dts is None:
            continue
        tb = pkt.time_base
        d = t0 + float(pkt.dts * tb) + offset - time.monotonic()
        if d > 0:
            time.sleep(d)
        end = max(end, float((pkt.pts + (pkt.duration or 0)) * tb))
        shift = round(offset / tb)
        pkt.pts += shift
        pkt.dts += shift
        pkt.stream = outs[pkt.stream.index]
        out.mux(pkt)
    offset += end
    k += 1
out.close()
'''


def free_port(kind=socket.SOCK_DGRAM, pair: bool = False) -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if pair:  # RTP uses port and port+1 (RTCP)
            if port % 2 or port > 65000:
                continue
            try:
                with socket.socket(socket.AF_INET, kind) as s2:
                    s2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


def port_bound(port: int, proto: str = "udp") -> bool:
    """Is a local socket bound to ``port`` (UDP) / listening on it (TCP)? Read from /proc/net."""
    want = f":{port:04X}"
    for line in Path(f"/proc/net/{proto}").read_text().splitlines()[1:]:
        f = line.split()
        if f[1].endswith(want) and (proto == "udp" or f[3] == "0A"):
            return True
    return False


def wait_for(pred, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start_sender(sender: Path, url: str, clip: Path, loops: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(sender), url, str(clip), str(loops)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class BrightBackend(Backend):
    """Logits +4 where the frame is bright, −4 elsewhere (NCHW float32 in, [N, 1, H, W] out)."""

    name = "toy"

    def __init__(self, meta=None):
        super().__init__(precision="fp32", input_hw=TOY_HW, num_classes=1, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                         meta={"model": meta or {"class_names": ["background", "object"]}})

    def infer(self, batch):
        self.check_nchw(batch)
        v = batch[:, 0] * self.std[0] + self.mean[0]
        return np.where(v > 0.5, 4.0, -4.0).astype(np.float32)[:, None]


def square_frames(folder, pattern):
    """PNG frames: a 16×16 white square (moving 2 px a frame) where ``pattern`` is 1, else black."""
    folder.mkdir()
    for i, v in enumerate(pattern):
        img = np.zeros((*TOY_HW, 3), np.uint8)
        if v:
            img[16:32, 8 + 2 * i % 32:24 + 2 * i % 32] = 255
        cv2.imwrite(str(folder / f"{i:03d}.png"), img)
    return folder


def run_cli(capsys, *argv):
    """``rtseg ARGV`` in this process → (exit status, stdout, stderr), read through ``capsys``."""
    from rtseg.cli import main

    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
        raise SystemExit(0)
    cap = capsys.readouterr()
    return e.value.code, cap.out, cap.err


class PtsRecorder(Sink):
    """The recipe's toy sink: remembers every frame's timestamp (and, if asked, its RGB pixels)."""

    name = "pts-recorder"

    def __init__(self, keep_pixels: bool = False):
        self.keep_pixels = keep_pixels
        self.info: VideoInfo | None = None
        self.pts: list[tuple[int, Fraction]] = []
        self.sizes: set[tuple[int, int]] = set()
        self.pixels: list[np.ndarray] = []
        self.closed = False

    def open(self, info, audio=None, *, live=False):
        self.info = info

    def write(self, frame):
        self.pts.append((frame.pts, frame.time_base))
        self.sizes.add((frame.width, frame.height))
        if self.keep_pixels:
            self.pixels.append(frame.to_ndarray(format="rgb24"))

    def close(self):  # called at least once at the end (closing is idempotent)
        self.closed = True

    def seconds(self) -> list[float]:
        return [float(p * tb) for p, tb in self.pts]


def expected_masks(backend, frames_rgb: list[np.ndarray]) -> list[np.ndarray]:
    """What the stream should draw: Preprocessor → predict_u8 → unplace, per frame (uint8[h, w])."""
    from rtseg.data.transforms import Preprocessor, unplace

    pre = Preprocessor(backend.input_hw, backend.meta["model"].get("resize", "stretch"))
    out = []
    for f in frames_rgb:
        x, g = pre(f)
        out.append(unplace(backend.predict_u8(x[None])[0], g))
    return out
