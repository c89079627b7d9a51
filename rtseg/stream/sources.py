"""Stream sources: files, cameras, network URLs, image folders/globs and lavfi test patterns.

:func:`open_source` turns a ``--source`` string into a :class:`Source`:

==========================================  ===========================================================
``clip.mp4`` (any container PyAV reads)     :class:`AVSource`, not live (never drops; blocks instead)
``camera0``, ``/dev/video0``                V4L2 through PyAV (``format="v4l2"``), OpenCV as fallback; live
``rtsp://``, ``rtp://``, ``udp://``,        :class:`AVSource` through FFmpeg's network protocols; live
``srt://``, ``tcp://``, ``rtmp://``         (``http(s)://`` URLs of a video *file* — .mp4, .mkv, ... — are
``http(s)://``                              not live)
``frames/`` or ``frames/*.png``             :class:`ImageFolderSource`, played at ``fps`` (default 25)
``lavfi:testsrc2=size=1280x720:rate=30``    FFmpeg lavfi filter graph (test patterns), not live
==========================================  ===========================================================

A live network input is joined at any moment: what FFmpeg's short probe did not learn (the picture
size of a stream joined between keyframes, its audio parameters) is read from the first packets
(:meth:`AVSource._prime`); the packets before the first decodable keyframe are the only ones skipped
(``skipped_before_keyframe``), and a stall flushes the frames a B-frame decoder still holds.

A source yields :class:`Item` s from :meth:`Source.read`: decoded video frames as ``av.VideoFrame``
in ``yuv420p`` (other pixel formats are converted once, here) carrying their presentation timestamp
``pts`` in ``time_base`` units, and, when the input has audio, the first audio stream's *packets*
untouched (``av.Packet``, passed through to file sinks without re-encoding).

Every user error is an :class:`rtseg.errors.RtsegError` with one line (problem + fix); a spec
that can never open (unknown scheme, missing file or camera, empty folder) raises its subclass
:class:`SourceSpecError`, which is never worth retrying.

To add a source, subclass :class:`Source`: set ``live``/``network`` (and ``can_loop`` when it can
replay itself), fill ``info`` in :meth:`Source.open` and yield :class:`Item` s from :meth:`Source.read`.
"""

from __future__ import annotations

import glob
import math
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import av
import numpy as np

from ..errors import RtsegError, redact


class SourceSpecError(RtsegError):
    """A ``--source`` that can never open as given (unknown scheme, missing file, missing camera,
    empty folder or glob): retrying it is pointless, unlike a network source that is not up yet."""


#: ``--rtsp-transport`` values: how RTP travels from an RTSP server (FFmpeg's ``rtsp_transport``)
RTSP_TRANSPORTS = ("tcp", "udp")
NETWORK_SCHEMES = ("rtsp", "rtsps", "rtp", "udp", "srt", "tcp", "rtmp", "rtmps", "http", "https")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_FILE_EXTS = (".mp4", ".mkv", ".mov", ".m4v", ".avi", ".webm", ".ts", ".mts", ".m2ts", ".flv", ".mpg",
                   ".mpeg", ".wmv", ".3gp", ".ogv", ".y4m", ".h264", ".264", ".hevc", ".265", ".mjpeg")
# pixel formats the pipeline works in (planar 4:2:0, 8 bit)
_INTERNAL_FORMATS = ("yuv420p", "yuvj420p")
#: live MPEG-TS over UDP/RTP and RTSP: probe only the first packets instead of FFmpeg's default 5 s, which
#: held ~5 s of frames back and released them in one burst (counted as backpressure drops); what
#: the probe did not learn (picture size before the first keyframe, audio parameters) comes from
#: the first packets themselves (:meth:`AVSource._prime`)
FAST_PROBE = {"probesize": "32", "analyzeduration": "0"}
#: how long a waiting listener is quiet before it says so (s)
WAIT_NOTICE_S = 1.0
#: video frames a live input is read past its first keyframe, at most, to learn the parameters of its
#: audio from a first audio packet (a sender may put the first keyframe before any audio)
AUDIO_LEARN_FRAMES = 25


@dataclass
class VideoInfo:
    """Geometry and timing of a source's video.

    ``width``/``height`` in pixels (even: odd sizes are scaled to the next even size below),
    ``time_base`` (s per ``pts`` tick), ``rate`` the nominal frame rate in FPS (``None`` when the
    input does not say), colour description as FFmpeg enum values (for the encoder's VUI).
    """

    width: int
    height: int
    time_base: Fraction
    rate: Fraction | None = None
    colorspace: int = 2
    color_range: int = 0
    color_primaries: int = 2
    color_trc: int = 2


@dataclass
class Item:
    """One thing read from a source: ``kind`` ``"video"`` (``obj``: ``av.VideoFrame`` yuv420p,
    ``decode_ms``: decoder time spent on it) or ``"audio"`` (``obj``: ``av.Packet``)."""

    kind: str
    obj: object
    decode_ms: float = 0.0


class Source(ABC):
    """Base class of every stream input.

    What a source can do is declared, not guessed by the pipeline:

    * ``live`` (bool): frames arrive in real time (cameras, network streams); under backpressure
      the pipeline drops the oldest queued frame instead of blocking the reader, and rebases the
      timestamps to start at 0;
    * ``network`` (bool): a network input, reopened with backoff on failure when ``reconnect`` is on;
    * ``can_loop`` (bool): :meth:`set_loop` can replay it (seekable video files only).

    Subclasses set ``name`` and, after :meth:`open`, ``info`` (:class:`VideoInfo`) and ``audio``
    (the input ``av.AudioStream`` to copy, or ``None``); :meth:`read` yields :class:`Item` s whose
    video frames are ``av.VideoFrame`` ``yuv420p`` of ``info.width``×``info.height`` pixels with
    ``pts`` in ``time_base`` units.

    Raises (open/read):
        RtsegError: the input is missing, unreadable, or has no video.
    """

    live = False
    network = False
    can_loop = False

    def __init__(self, spec: str):
        self.spec = spec
        self.name = redact(spec)  # what reports and messages show: never a URL's password
        self.info: VideoInfo | None = None
        self.audio = None
        self.decode_errors = 0
        self.skipped_before_keyframe = 0  # video packets of a stream joined between keyframes, never decodable

    @abstractmethod
    def open(self) -> None:
        """Open the input (raises RtsegError if it cannot be opened)."""

    @abstractmethod
    def read(self) -> Iterator[Item]:
        """Yield items until the input ends (``StopIteration``) or fails (exception)."""

    def close(self) -> None:
        """Release the input (idempotent)."""

    def interrupt(self) -> None:
        """Ask a blocking :meth:`read` to return soon (called from another thread on stop)."""

    def input_paths(self) -> list[Path]:
        """Files or folders this source reads (an output must not write onto them); ``[]`` for
        cameras, network streams and filter graphs."""
        return []

    def set_loop(self, passes: int) -> None:
        """Read the input ``passes`` times (``--loop``; 0 = until stopped), timestamps continuing.

        Raises:
            RtsegError: ``passes`` ≠ 1 on a source whose ``can_loop`` is false (cameras, network
                streams, lavfi graphs, image folders).
        """
        if passes != 1 and not self.can_loop:
            raise RtsegError(f"--loop applies to video files, not {self.name}; drop --loop for live sources")


def _even(n: int) -> int:
    return max(2, n - (n % 2))


def _to_internal(frame: av.VideoFrame, w: int, h: int) -> av.VideoFrame:
    """Convert a decoded frame to ``yuv420p`` of even size ``w``×``h`` (no-op when it already is)."""
    if frame.format.name in _INTERNAL_FORMATS and frame.width == w and frame.height == h:
        return frame
    out = frame.reformat(width=w, height=h, format="yuv420p")
    out.pts = frame.pts
    out.time_base = frame.time_base
    return out


class AVSource(Source):
    """Anything FFmpeg opens: a file, a URL, a V4L2 device (``format="v4l2"``) or a lavfi graph.

    Args:
        spec: the ``--source`` string (for messages).
        url: what to pass to ``av.open``.
        format: FFmpeg input format (``"v4l2"``, ``"lavfi"``) or ``None`` to probe.
        options: FFmpeg demuxer/protocol options.
        live: drop frames under backpressure instead of blocking.
        network: reconnectable (``--reconnect``).
        timeout: (open, read) timeouts in s; a read stalled longer than ``timeout[1]`` fails; an
            open timeout of ``None`` waits for the sender (a listener, :meth:`wait_for_sender`).
    """

    #: a listener that waits for its sender (``udp://``, ``rtp://``): set by :func:`open_source`
    listener = False
    #: set to a ``threading.Event`` to abandon a wait for the sender; ``log`` gets the waiting line
    stop_event: threading.Event | None = None
    log = staticmethod(lambda msg: None)

    def __init__(self, spec: str, url: str, *, format: str | None = None, options: dict | None = None,
                 live: bool = False, network: bool = False, timeout: tuple[float | None, float] | None = None):
        super().__init__(spec)
        self.url = url
        self.format = format
        self.options = dict(options or {})
        self.live = live
        self.network = network
        self.timeout = timeout
        self.container = None
        self.vstream = None
        self._interrupted = False

    def input_paths(self) -> list[Path]:
        """The video file (``[]`` for network streams, cameras and lavfi graphs)."""
        return [Path(self.url)] if not self.network and self.format is None else []

    @property
    def can_loop(self) -> bool:  # type: ignore[override]
        """True for a seekable video file (not a camera, network stream or lavfi graph)."""
        return not self.live and not self.network and self.format is None

    def set_loop(self, passes: int) -> None:
        """Read the file ``passes`` times (0 = until stopped); audio is not copied when looping.

        Raises:
            RtsegError: ``passes`` ≠ 1 and the input is not a video file.
        """
        super().set_loop(passes)
        if passes != 1:
            self.loop, self.audio = int(passes), None

    def open(self) -> None:
        """Open the input. A live input joined mid-stream (no parameter sets yet: the picture size
        is unknown) is not an error: :meth:`_prime` reads on until the first decodable keyframe.

        Raises:
            RtsegError: missing/unreadable input, no video stream, unknown size (not live), a sender
                that did not come within the open timeout, or a stop while waiting for it.
        """
        self._open(self.options)
        if self.live and (self.info is None or not _audio_known(self.audio)):
            self._prime()
        elif self.can_loop:
            self._peek()
        if self.info is None:
            self.close()
            raise RtsegError(f"{self.spec} has a video stream of unknown size; it is not a readable video — re-encode it (e.g. with ffmpeg -i IN -c:v libx264 OUT.mp4)")

    def _open(self, options: dict) -> None:
        self._interrupted = False
        self.info = None
        self._pending: list[Item] = []
        self._demux = None
        self.rotation = None  # quarter turns counterclockwise that make the picture upright (display matrix)
        try:
            self.container = self._av_open(options)
        except av.error.FileNotFoundError:
            raise RtsegError(f"video {self.spec} does not exist; check the path or URL") from None
        except av.error.PermissionError:
            raise RtsegError(f"video {self.spec} is not readable (permission denied); fix its permissions") from None
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise RtsegError(_open_error(self.spec, e, self.network)) from None
        if not self.container.streams.video:
            self.close()
            raise RtsegError(f"{self.spec} has no video stream; pass a video file, camera or stream URL")
        vs = self.container.streams.video[0]
        vs.thread_type = "SLICE" if self.live else "AUTO"  # frame threads add latency on live input
        self.vstream = vs
        self.audio = self.container.streams.audio[0] if self.container.streams.audio else None
        cc = vs.codec_context
        if cc.width and cc.height:
            self.info = self._info(cc.width, cc.height, cc)

    def _info(self, width: int, height: int, desc) -> VideoInfo:
        """:class:`VideoInfo` of the video stream at ``width``×``height``, colours read from ``desc``
        (the codec context, or the first decoded frame when the stream was joined mid-way)."""
        vs = self.vstream
        rate = vs.average_rate or vs.guessed_rate or vs.base_rate
        rate = Fraction(rate) if rate else None
        tb = Fraction(vs.time_base) if vs.time_base else (1 / rate if rate else Fraction(1, 1000))
        return VideoInfo(_even(width), _even(height), tb, rate,
                         int(_attr(desc, "colorspace", 2)), int(_attr(desc, "color_range", 0)),
                         int(_attr(desc, "color_primaries", 2)), int(_attr(desc, "color_trc", 2)))

    def _prime(self) -> None:
        """Read a live input until its first video frame decodes: a stream joined between keyframes
        (long GOP: x264's default is one per 250 frames) has no SPS/PPS/IDR yet, and FFmpeg's probe
        would give up. Packets before it are counted in ``skipped_before_keyframe``; the frame and the
        audio packets read on the way are handed out first by :meth:`read`. Audio whose parameters
        are still unknown then (no header seen) is decoded once to learn them, else not copied.

        Raises:
            RtsegError: the stream ended or was stopped before a keyframe came.
        """
        try:
            self._read_to_first_frame()
        except (av.error.FFmpegError, OSError) as e:
            self.close()
            raise RtsegError(f"{self.name} stopped sending before its first keyframe ({_short_av(e)}); check the "
                             f"sender (a keyframe interval of 1-2 s, e.g. ffmpeg -g 50, lets receivers join fast)") from None
        if not self._pending or self._pending[-1].kind != "video":
            self.close()
            raise RtsegError(f"{self.name} ended or was stopped before its first keyframe; check the sender")
        self._read_until_audio_known()
        if self.audio is not None and not _audio_known(self.audio):
            self.log(f"audio of {self.name} is not copied: its parameters (sample rate, channels) were not in the "
                     f"stream's first {AUDIO_LEARN_FRAMES} frames")
            self.audio = None
            self._pending = [it for it in self._pending if it.kind == "video"]

    def _read_until_audio_known(self) -> None:
        """Keep reading (into ``_pending``) past the first video frame while the audio's parameters
        are unknown and no audio packet has been decoded yet: a sender such as ``ffmpeg -c:v copy``
        can put the first keyframe before any audio. At most :data:`AUDIO_LEARN_FRAMES` video frames."""
        frames = 0
        while (self.audio is not None and not _audio_known(self.audio) and frames < AUDIO_LEARN_FRAMES
               and not (self.stop_event is not None and self.stop_event.is_set())):
            try:
                item = next(self._demux, None)
            except (av.error.FFmpegError, OSError):
                item = None
            if item is None:
                return
            frames += item.kind == "video"
            if item.kind != "skip":
                self._pending.append(item)

    def _peek(self) -> None:
        """A video file: decode its first frame now (handed out first by :meth:`read`), so that a
        rotation in its display matrix (phone videos) sets ``info``'s upright size before any output
        opens. A file without a decodable frame is left to :meth:`read`'s own message."""
        try:
            self._read_to_first_frame()
        except (av.error.FFmpegError, OSError):
            self._pending, self._demux = [], None
            self.container.seek(0)

    def _read_to_first_frame(self) -> None:
        """Start demuxing (kept in ``_demux`` for :meth:`read`) and keep every item up to and including the
        first video frame in ``_pending``."""
        told = False
        self._demux = self._packets()
        for item in self._demux:
            if self.stop_event is not None and self.stop_event.is_set():
                return
            if item.kind == "video":
                if self.info is None:
                    w, h = item.obj.width, item.obj.height
                    self.info = self._info(*((h, w) if self.rotation % 2 else (w, h)), item.obj)
                    item.obj = self._convert(item.obj)
                self._pending.append(item)
                return
            if item.kind == "skip":
                if not told:
                    self.log(f"waiting for a keyframe from {self.name}")
                    told = True
                continue
            self._pending.append(item)

    def _av_open(self, options: dict):
        if not (self.listener and self.timeout and self.timeout[0] is None):
            return av.open(self.url, format=self.format, options=options, timeout=self.timeout)
        return self.wait_for_sender(options)

    def wait_for_sender(self, options: dict):
        """Open a listener without an open timeout: ``av.open`` runs in a helper thread while this
        one stays responsive (Ctrl-C, ``stop_event``) and says, after :data:`WAIT_NOTICE_S`, that it
        is waiting. The first packets the sender sends are the first the demuxer sees.

        Returns:
            The opened ``av.container.InputContainer``.

        Raises:
            RtsegError: ``stop_event`` was set while waiting; whatever ``av.open`` raised.
        """
        box: dict = {}
        lock = threading.Lock()

        def target() -> None:
            try:
                c = av.open(self.url, format=self.format, options=options, timeout=self.timeout)
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                box["error"] = e
                return
            with lock:
                if box.get("abandoned"):
                    c.close()
                else:
                    box["container"] = c

        th = threading.Thread(target=target, name="rtseg-open", daemon=True)
        th.start()
        t0, told = time.monotonic(), False
        try:
            while th.is_alive():
                th.join(0.2)
                if self.stop_event is not None and self.stop_event.is_set():
                    raise RtsegError(f"stopped while waiting for {self.spec}")
                if not told and th.is_alive() and time.monotonic() - t0 > WAIT_NOTICE_S:
                    self.log(f"waiting for {self.spec} (Ctrl-C to stop)")
                    told = True
        except BaseException:
            with lock:
                box["abandoned"] = True
                if "container" in box:
                    box.pop("container").close()
            raise
        if "error" in box:
            raise box["error"]
        return box["container"]

    #: passes over a video file (``--loop``): 1 = once, 0 = until stopped (files only; audio is
    #: not copied when looping)
    loop = 1

    def read(self) -> Iterator[Item]:
        passes, last_out = 0, None
        frame_ticks = _frame_ticks(self.info)
        while True:
            offset = None
            for item in self._read_once():
                if item.kind == "video" and passes:
                    f = item.obj
                    if offset is None:  # continue the timeline one frame after the last pass
                        offset = last_out + frame_ticks - f.pts
                    f.pts += offset
                if item.kind == "video":
                    last_out = item.obj.pts
                yield item
            passes += 1
            if self._interrupted or last_out is None or (self.loop and passes >= self.loop):
                return
            self.container.seek(0)

    def _read_once(self) -> Iterator[Item]:
        pending, self._pending = self._pending, []
        yield from pending
        demux, self._demux = self._demux or self._packets(), None
        for item in demux:
            if item.kind != "skip":
                yield item

    def _packets(self) -> Iterator[Item]:
        """Demux + decode: video frames (``yuv420p`` of ``info``'s size once it is known), audio
        packets, and ``Item("skip", packet)`` for each video packet before the first decoded frame of
        this connection (a stream joined between keyframes: counted in ``skipped_before_keyframe``;
        the decoder's complaints about missing parameter sets then are not decode errors)."""
        vs, aus = self.vstream, self.audio
        last_pts = None
        pending_ms = 0.0
        started = False
        streams = [vs] + ([aus] if aus is not None else [])
        perf = time.perf_counter
        audio_next = None  # pts the next audio packet starts at (its time_base), when known
        for packet in _flush_on_stall(self.container.demux(*streams), vs):
            if self._interrupted:
                return
            if packet.stream is aus:
                if packet.size and self.audio is not None:
                    _learn_audio(aus, packet)
                    audio_next = _stamp_audio(packet, aus, audio_next)
                    yield Item("audio", packet)
                continue
            started = started or packet.is_keyframe
            t0 = perf()
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                frames = None
                if started:
                    self.decode_errors += 1
            pending_ms += (perf() - t0) * 1000.0
            if not frames:
                if not started and packet.size:
                    self.skipped_before_keyframe += 1
                    yield Item("skip", packet)
                continue
            started = True
            per = pending_ms / len(frames)
            pending_ms = 0.0
            for f in frames:
                if f.pts is None:
                    f.pts = 0 if last_pts is None else last_pts + (_frame_ticks(self.info) if self.info else 1)
                last_pts = f.pts
                if f.time_base is None:
                    f.time_base = vs.time_base
                if self.rotation is None:
                    self._set_rotation(f)
                yield Item("video", f if self.info is None else self._convert(f), per)

    def _set_rotation(self, f: av.VideoFrame) -> None:
        """Read the display rotation from the first decoded frame (``frame.rotation``, degrees
        counterclockwise, as FFmpeg's own autorotation applies it); a quarter turn swaps ``info``'s size."""
        self.rotation = _quarter_turns(f)
        if self.rotation % 2 and self.info is not None:
            self.info.width, self.info.height = self.info.height, self.info.width

    def _convert(self, f: av.VideoFrame) -> av.VideoFrame:
        """A decoded frame → ``yuv420p`` at ``info``'s size, turned upright (rotated videos only)."""
        if not self.rotation:
            return _to_internal(f, self.info.width, self.info.height)
        rgb = np.rot90(f.to_ndarray(format="rgb24"), self.rotation)
        out = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        out = out.reformat(width=self.info.width, height=self.info.height, format="yuv420p")
        out.pts, out.time_base = f.pts, f.time_base
        return out

    def interrupt(self) -> None:
        self._interrupted = True

    def close(self) -> None:
        c, self.container = self.container, None
        if c is not None:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - closing a failed network input
                pass


class CvCameraSource(Source):
    """A V4L2 camera through OpenCV (fallback when PyAV's v4l2 input cannot open it); live.

    Frames are timestamped with the monotonic clock (``time_base`` 1/1 000 000 s).
    """

    live = True

    def __init__(self, spec: str, index: int, fps: float | None = None):
        super().__init__(spec)
        self.index = index
        self.fps = fps
        self.cap = None

    def open(self) -> None:
        import cv2

        cap = cv2.VideoCapture(self.index, cv2.CAP_V4L2)
        if self.fps:
            cap.set(cv2.CAP_PROP_FPS, float(self.fps))
        ok, img = cap.read() if cap.isOpened() else (False, None)
        if not ok or img is None:
            cap.release()
            raise RtsegError(f"camera {self.spec} could not be opened (busy or not a capture device); close other programs using it or pick another cameraN")
        self.cap = cap
        self._first = img
        h, w = img.shape[:2]
        fps = cap.get(cv2.CAP_PROP_FPS) or self.fps or 30
        self.info = VideoInfo(_even(w), _even(h), Fraction(1, 1_000_000), Fraction(fps).limit_denominator(1001))

    def read(self) -> Iterator[Item]:
        import cv2

        t_start = time.monotonic()
        img = self._first
        while self.cap is not None:
            if img is None:
                ok, img = self.cap.read()
                if not ok:
                    return
            t0 = time.perf_counter()
            f = av.VideoFrame.from_ndarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), format="rgb24")
            f = f.reformat(width=self.info.width, height=self.info.height, format="yuv420p")
            f.pts = int((time.monotonic() - t_start) * 1_000_000)
            f.time_base = self.info.time_base
            img = None
            yield Item("video", f, (time.perf_counter() - t0) * 1000.0)

    def close(self) -> None:
        cap, self.cap = self.cap, None
        if cap is not None:
            cap.release()


class ImageFolderSource(Source):
    """Images of a folder (sorted by name) or a glob, played as a video at ``fps`` FPS.

    Every image is scaled to the folder's most common image size (ties: the largest; made even), so
    that one odd image (a 1×1 thumbnail first) does not set the size of all; ``pts`` = image index,
    ``time_base`` = 1/fps s.
    """

    def __init__(self, spec: str, files: list[Path], fps: float | None = None):
        super().__init__(spec)
        self.files = files
        self.fps = Fraction(fps).limit_denominator(1001) if fps else Fraction(25)

    def input_paths(self) -> list[Path]:
        """The folders the images are read from."""
        return sorted({f.parent for f in self.files})

    def _frame_size(self) -> tuple[int, int]:
        """(w, h): the most common upright image size (from the headers, EXIF orientation applied),
        ties to the largest."""
        from collections import Counter

        from ..data.folder import image_size

        sizes: Counter = Counter(sz for sz in map(image_size, self.files) if sz is not None)
        if not sizes:
            img = self._load(self.files[0])
            return img.shape[1], img.shape[0]
        return max(sizes, key=lambda s: (sizes[s], s[0] * s[1]))

    def open(self) -> None:
        w, h = self._frame_size()
        self.info = VideoInfo(_even(w), _even(h), 1 / self.fps, self.fps, colorspace=1 if h >= 720 else 6)

    def _load(self, path: Path) -> np.ndarray:
        """``uint8[H, W, 3]`` RGB, upright (:func:`rtseg.data.folder.read_image`, one reader for
        every image rtseg reads)."""
        from ..data.folder import read_image

        try:
            return read_image(path)
        except RtsegError:
            raise RtsegError(f"image {path} is unreadable; remove it from the folder or replace it with a PNG/JPEG") from None

    def read(self) -> Iterator[Item]:
        w, h = self.info.width, self.info.height
        for i, p in enumerate(self.files):
            t0 = time.perf_counter()
            f = av.VideoFrame.from_ndarray(self._load(p), format="rgb24")
            f = f.reformat(width=w, height=h, format="yuv420p", dst_colorspace=self.info.colorspace)
            f.pts = i
            f.time_base = self.info.time_base
            yield Item("video", f, (time.perf_counter() - t0) * 1000.0)


def _attr(obj, name: str, default: int) -> int:
    try:
        v = getattr(obj, name)
        return int(v) if v is not None else default
    except (AttributeError, TypeError, ValueError):
        return default


def _quarter_turns(f: av.VideoFrame) -> int:
    """Quarter turns (0-3, counterclockwise) of a frame's display rotation (0 when it has none)."""
    try:
        deg = float(f.rotation or 0)
    except (AttributeError, TypeError, ValueError):
        return 0
    return round(deg / 90) % 4


def _flush_on_stall(packets: Iterator[av.Packet], vs) -> Iterator[av.Packet]:
    """The demuxer's packets; when the input stalls (read timeout), first an empty packet of ``vs``
    (decoding it flushes the frames a B-frame decoder still holds), then the timeout error."""
    try:
        yield from packets
    except av.error.ExitError:
        flush = av.Packet()
        flush.stream = vs
        yield flush
        raise


def _audio_known(stream) -> bool:
    """True when there is no audio, or its sample rate and channel count are known (a copy needs them)."""
    if stream is None:
        return True
    cc = stream.codec_context
    return bool(cc.sample_rate) and bool(_attr(cc, "channels", 0))


def _learn_audio(stream, packet: av.Packet) -> None:
    """Fill in an audio stream's unknown parameters (a live input probed for a few bytes only) by
    decoding one of its packets; the packet itself is still copied untouched."""
    if _audio_known(stream):
        return
    try:
        stream.codec_context.decode(packet)
    except (av.error.FFmpegError, ValueError):
        pass


def _stamp_audio(packet: av.Packet, stream, next_pts: int | None) -> int | None:
    """Give an audio packet without timestamps the ``pts``/``dts`` that follow the previous one, and
    a missing ``duration`` its frame's (codec frame size / sample rate): MPEG-TS carries one PES
    timestamp for several AAC frames, and the demuxer, without the parameters a short live probe
    skipped, leaves the later frames unstamped. Returns where the next packet starts (``time_base``
    ticks), or None when unknown."""
    if packet.pts is None and next_pts is not None:
        packet.pts = packet.dts = next_pts
    if packet.pts is None:
        return None
    if not packet.duration:
        cc = stream.codec_context
        if cc.frame_size and cc.sample_rate and packet.time_base:
            packet.duration = round(Fraction(cc.frame_size, cc.sample_rate) / packet.time_base)
    return packet.pts + packet.duration if packet.duration else None


def _frame_ticks(info: VideoInfo) -> int:
    if info.rate:
        return max(1, round(1 / (info.rate * info.time_base)))
    return 1


def _short_av(e: Exception) -> str:
    """An FFmpeg error without its errno prefix and quoted URL (which may hold a password)."""
    return re.sub(r"^\[Errno -?\d+\]\s*", "", str(e).split(": '")[0])


def _open_error(spec: str, e: Exception, network: bool) -> str:
    msg = _short_av(e)
    if network:
        return (f"cannot open stream {spec} ({msg}); check that the sender is running and the URL/port is right "
                f"(pass --reconnect to keep retrying)")
    return f"{spec} is not a readable video ({msg}); pass a video file FFmpeg can decode (mp4, mkv, mov, ...)"


def _camera_index(spec: str) -> int | None:
    m = re.fullmatch(r"camera(\d+)", spec) or re.fullmatch(r"/dev/video(\d+)", spec)
    return int(m.group(1)) if m else None


def open_source(spec: str | os.PathLike, *, fps: float | None = None, timeout: float = 10.0,
                open_timeout: float | None = None, stop_event: threading.Event | None = None,
                log=None, rtsp_transport: str = "tcp") -> Source:
    """Parse a ``--source`` string and open it (see the module docstring for the forms).

    Args:
        spec: file path, ``cameraN`` / ``/dev/videoN``, URL, image folder/glob or ``lavfi:GRAPH``.
        fps: frame rate for image folders (default 25) and the rate asked of cameras.
        timeout: network read timeout in s (a stalled stream fails after it); also the open
            timeout of network clients (``rtsp://``, ``http://``, ...) when ``open_timeout`` is ``None``.
        open_timeout: how long a network source may take to open (s). ``None``: a listener
            (``udp://``, ``rtp://``) waits for its sender until stopped, saying so through ``log``
            after a second ("waiting for udp://… (Ctrl-C to stop)").
        stop_event: set it to abandon a wait for a sender (``RtsegError``).
        log: ``callable(str)`` for the waiting line (default: none).
        rtsp_transport: ``"tcp"`` or ``"udp"`` (:data:`RTSP_TRANSPORTS`) for ``rtsp://`` sources.

    Returns:
        The opened source (``info`` set).

    Raises:
        SourceSpecError: unknown scheme, missing file or camera, empty folder or glob (never
            worth retrying).
        RtsegError: unreadable video, a network stream that does not answer (may come up later).
    """
    if open_timeout is not None and not (open_timeout > 0 and math.isfinite(open_timeout)):
        raise RtsegError(f"--open-timeout must be a positive number of seconds, not {open_timeout}; omit it to wait")
    src = _make_source(str(spec), fps=fps, timeout=timeout)
    if isinstance(src, AVSource) and "rtsp_transport" in src.options:
        if rtsp_transport not in RTSP_TRANSPORTS:
            raise SourceSpecError(f"--rtsp-transport must be one of {', '.join(RTSP_TRANSPORTS)}, not {rtsp_transport!r}")
        src.options["rtsp_transport"] = rtsp_transport
    if isinstance(src, AVSource) and src.network:
        src.timeout = (open_timeout if (open_timeout is not None or src.listener) else timeout, timeout)
        src.stop_event = stop_event
        if log is not None:
            src.log = log
    src.open()
    return src


def _make_source(spec: str, *, fps: float | None, timeout: float) -> Source:
    if spec.startswith("lavfi:"):
        graph = spec[len("lavfi:"):]
        if not graph:
            raise SourceSpecError("lavfi: needs a filter graph, e.g. lavfi:testsrc2=size=1280x720:rate=30")
        return AVSource(spec, graph, format="lavfi")
    idx = _camera_index(spec)
    if idx is not None:
        dev = f"/dev/video{idx}"
        if not os.path.exists(dev):
            raise SourceSpecError(f"{spec} not found ({dev} does not exist); connect a camera, check 'ls /dev/video*', "
                                   f"or pass a video file or URL with --source")
        return _CameraSource(spec, dev, idx, fps)
    scheme = urlparse(spec).scheme.lower()
    if "://" in spec:
        if scheme not in NETWORK_SCHEMES and scheme != "file":
            raise SourceSpecError(f"unknown source scheme {scheme + '://'!r} in {spec}; use a file, cameraN, "
                                   f"{', '.join(s + '://' for s in ('rtsp', 'rtp', 'udp', 'srt', 'tcp', 'rtmp', 'http', 'https'))} "
                                   f"an image folder or lavfi:GRAPH")
        if scheme == "file":
            return _make_source(urlparse(spec).path, fps=fps, timeout=timeout)
        path = urlparse(spec).path.lower()
        is_file = scheme in ("http", "https") and path.endswith(VIDEO_FILE_EXTS) and not path.endswith(".ts")
        opts = {}
        if scheme in ("rtsp", "rtsps"):  # streams come from the SDP: no 5 s probe (its frames would come in a burst)
            opts.update({"rtsp_transport": "tcp", **FAST_PROBE})
        if scheme in ("udp", "rtp"):
            opts.update({"fifo_size": "50000", "overrun_nonfatal": "1", "buffer_size": "4194304", **FAST_PROBE})
        src = AVSource(spec, spec, options=opts, live=not is_file, network=True, timeout=(timeout, timeout))
        src.listener = scheme in ("udp", "rtp")
        return src
    p = Path(spec)
    long = [part for part in p.parts if len(part.encode()) > 255]
    if long:
        raise SourceSpecError(f"source name {long[0][:40]}... is {len(long[0].encode())} bytes long, more than a file "
                              f"system allows; check the path")
    if any(ch in spec for ch in "*?[") and not p.exists():  # a name that exists is a name, not a pattern
        files = sorted(Path(f) for f in glob.glob(spec) if f.lower().endswith(IMAGE_EXTS))
        if not files:
            raise SourceSpecError(f"no images match {spec}; check the pattern (e.g. 'frames/*.png')")
        return ImageFolderSource(spec, files, fps)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise SourceSpecError(f"folder {spec} holds no images ({', '.join(IMAGE_EXTS)}); pass a video file or a folder of frames")
        return ImageFolderSource(spec, files, fps)
    if not p.exists():
        raise SourceSpecError(f"video file {spec} does not exist; check the path (or use cameraN, a URL, a folder or lavfi:GRAPH)")
    if not os.access(p, os.R_OK):
        raise SourceSpecError(f"video file {spec} is not readable (permission denied); fix its permissions")
    return AVSource(spec, str(p))


class _CameraSource(Source):
    """``cameraN``: PyAV's V4L2 input, else OpenCV's."""

    live = True

    def __init__(self, spec: str, dev: str, index: int, fps: float | None):
        super().__init__(spec)
        opts = {"framerate": str(fps)} if fps else {}
        self._impl: Source = AVSource(spec, dev, format="v4l2", options=opts, live=True)
        self._fallback = CvCameraSource(spec, index, fps)

    def open(self) -> None:
        try:
            self._impl.open()
        except RtsegError:
            self._impl = self._fallback
            self._impl.open()
        self.info, self.audio = self._impl.info, self._impl.audio

    def read(self) -> Iterator[Item]:
        return self._impl.read()

    def interrupt(self) -> None:
        self._impl.interrupt()

    def close(self) -> None:
        self._impl.close()

    @property
    def decode_errors(self) -> int:  # type: ignore[override]
        return self._impl.decode_errors

    @decode_errors.setter
    def decode_errors(self, v: int) -> None:
        pass
