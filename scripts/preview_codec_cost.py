"""Per-frame cost of the live view's codec choices (issue 23: MJPEG or WebRTC), on the real 720p clip.

Encodes 150 frames of ``../shared/data/video/endo_laparoscopy.mp4`` scaled to the preview's 640 px
width, three rounds alternating: JPEG quality 75 (what ``--http`` serves, OpenCV), VP8 realtime
(libvpx, the codec aiortc's WebRTC sends by default) and H.264 ultrafast/zerolatency (libx264), and
prints the median encode time (ms/frame), the mean size (bytes/frame) and the frames an encoder holds
back before its first packet. Encode cost only: WebRTC's RTP/SRTP packetisation and the browser's
jitter buffer come on top.

    python scripts/preview_codec_cost.py
"""

from __future__ import annotations

import statistics
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2

CLIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "video" / "endo_laparoscopy.mp4"


def frames(n: int = 150, width: int = 640) -> list:
    out = []
    with av.open(str(CLIP)) as c:
        for f in c.decode(video=0):
            img = f.to_ndarray(format="bgr24")
            h, w = img.shape[:2]
            out.append(cv2.resize(img, (width, round(h * width / w) // 2 * 2)))
            if len(out) == n:
                break
    return out


def jpeg(imgs) -> tuple[float, float, int]:
    t, size = [], 0
    for im in imgs:
        t0 = time.perf_counter()
        _, buf = cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, 75])
        t.append(time.perf_counter() - t0)
        size += len(buf)
    return statistics.median(t) * 1000, size / len(imgs), 0


def video(imgs, codec: str, options: dict) -> tuple[float, float, int]:
    cc = av.CodecContext.create(codec, "w")
    cc.height, cc.width = imgs[0].shape[:2]
    cc.pix_fmt, cc.time_base, cc.bit_rate, cc.options = "yuv420p", Fraction(1, 30), 1_000_000, options
    t, size, held = [], 0, None
    for i, im in enumerate(imgs):
        vf = av.VideoFrame.from_ndarray(im, format="bgr24").reformat(format="yuv420p")
        vf.pts = i
        t0 = time.perf_counter()
        pkts = cc.encode(vf)
        t.append(time.perf_counter() - t0)
        size += sum(p.size for p in pkts)
        held = i if pkts and held is None else held
    return statistics.median(t) * 1000, size / len(imgs), held


def main() -> None:
    imgs = frames()
    print(f"{CLIP.name}: {len(imgs)} frames at {imgs[0].shape[1]}x{imgs[0].shape[0]}")
    for r in range(3):
        for name, fn in (("jpeg q75", lambda: jpeg(imgs)),
                         ("vp8 realtime", lambda: video(imgs, "libvpx", {"deadline": "realtime", "cpu-used": "8",
                                                                          "lag-in-frames": "0"})),
                         ("h264 zerolatency", lambda: video(imgs, "libx264", {"preset": "ultrafast",
                                                                              "tune": "zerolatency"}))):
            ms, size, held = fn()
            print(f"round {r} {name:17s} {ms:6.2f} ms/frame {size:8.0f} B/frame  held back {held} frames")


if __name__ == "__main__":
    main()
