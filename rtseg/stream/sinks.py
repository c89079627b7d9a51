"""Stream sinks: video files, network streams, image folders, a display window, null.

:func:`make_sink` turns an ``--output`` string into a :class:`Sink`:

=========================================  ==============================================================
``out.mp4`` ``.mkv`` ``.mov`` ``.m4v``     :class:`FileSink`: H.264 (``--codec``, default ``libx264``;
``.ts`` ``.avi`` ``.flv``                  ``auto`` picks a hardware encoder when one opens), audio copied
``udp://host:port``                        :class:`NetworkSink`: MPEG-TS over UDP
``rtp://host:port``                        MPEG-TS over RTP (``rtp_mpegts``; readable without an SDP file)
``rtsp://host:port/path``                  RTSP publish (ANNOUNCE/RECORD) to a server, over TCP
``srt://``, ``tcp://``                     MPEG-TS over SRT/TCP (when this FFmpeg build has them)
``frames/`` or ``frames/%06d.jpg``         :class:`ImageFolderSink`: one image per frame (PNG by default)
``null``                                   :class:`NullSink`
``show``                                   :class:`DisplaySink` (``--show``): an OpenCV window
=========================================  ==============================================================

Sinks take ``av.VideoFrame`` s in ``yuv420p`` whose ``pts``/``time_base`` are the source's: the
encoded output keeps the input's timestamps (and so its frame count, frame rate and VFR timing).
Network sinks use ``tune=zerolatency`` (no B-frames, no look-ahead), a key frame every second and,
for non-live sources, are paced to the stream clock (like ``ffmpeg -re``) so receivers are not
flooded.

To add an output, subclass :class:`Sink`, implement :meth:`Sink.write` (optionally ``open`` and
``close``) and pass the object in ``outputs``; capabilities are declared on the class
(``accepts_audio``, ``writes_frames``, ``notes``, ``has_audio``, ``set_pacing``).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from abc import ABC, abstractmethod
from fractions import Fraction
from pathlib import Path
from urllib.parse import urlparse

import av

from ..errors import RtsegError, redact
from ..safe_io import atomic_write_bytes, check_outputs, discard, finish_mode, same_file, temp_path, write_error
from .sources import IMAGE_EXTS, VideoInfo

FILE_EXTS = (".mp4", ".mkv", ".mov", ".m4v", ".ts", ".avi", ".flv")
#: the x264/x265 encoder presets (``--preset``), fastest first
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")
NET_FORMATS = {"udp": "mpegts", "rtp": "rtp_mpegts", "rtsp": "rtsp", "srt": "mpegts", "tcp": "mpegts"}
HW_H264 = ("h264_nvenc", "h264_qsv", "h264_vaapi", "h264_amf", "h264_videotoolbox", "h264_v4l2m2m")
CODEC_ALIASES = {"h264": "libx264", "x264": "libx264", "avc": "libx264", "hevc": "libx265", "h265": "libx265",
                 "x265": "libx265"}
_PICT_NONE = 0
#: containers whose mux failed: never closed natively (FFmpeg's trailer/close after a failed write
#: has crashed the process), kept referenced so that they are not freed either
_ABANDONED: list = []
#: seconds of frames a network sink queues for a receiver that is momentarily slow (then drops)
NET_QUEUE_S = 1.0
#: socket I/O timeout of tcp:// and rtsp:// outputs (s): connect, RTSP handshake, every write
NET_IO_TIMEOUT_S = 5.0
#: how long closing a network sink waits for its thread to send the rest (s)
NET_CLOSE_S = 5.0


class Sink(ABC):
    """Base class of every stream output.

    Life cycle: :meth:`open` once (before the first frame), :meth:`write` per frame (``av.VideoFrame``
    ``yuv420p`` of ``info.width``×``info.height`` pixels whose ``pts``/``time_base`` are the
    source's), :meth:`write_audio` per audio packet (only when ``accepts_audio`` and ``has_audio``),
    :meth:`close` at the end (flush + finalise; idempotent). :meth:`write` runs in the source's
    sink thread; an exception there stops the stream (the outputs are still finalised).

    Declared capabilities (class attributes / properties the pipeline reads):

    * ``accepts_audio``: the sink can copy the source's audio packets;
    * ``has_audio``: an audio stream was opened (after :meth:`open`);
    * ``writes_frames``: the sink wants frames (``False`` for :class:`NullSink`: the pipeline then
      skips it and leaves it out of the report's outputs);
    * ``notes``: one-line hints for the user, logged once after :meth:`open`;
    * ``on_quit``: set by the pipeline to a callable that stops the stream gracefully (a display
      calls it when its window is closed); ``None`` until then.

    To add an output: subclass, implement :meth:`write`, optionally :meth:`open`/:meth:`close`,
    and pass the object in ``outputs`` of :func:`rtseg.stream.run_stream`.
    """

    accepts_audio = False
    #: set by the pipeline: a ``threading.Event`` that is set when queued frames are being abandoned
    #: (a sink that waits for a receiver gives up then)
    stop_event = None
    writes_frames = True
    #: listed among the source's outputs in the report (``False`` for internal taps such as the
    #: ``--http`` preview)
    reported = True
    name = "sink"
    notes: tuple[str, ...] | list[str] = ()
    on_quit = None

    def open(self, info: VideoInfo, audio=None, *, live: bool = False) -> None:
        """Prepare for frames of ``info`` (pixels, timing); ``audio``: the input audio stream or
        ``None``; ``live``: the source is live. Raises RtsegError when the output cannot be opened."""
        self.info = info

    @abstractmethod
    def write(self, frame: av.VideoFrame) -> None:
        """Encode/store one frame."""

    def write_audio(self, packet: av.Packet) -> None:
        """Copy one audio packet (its ``pts`` in the packet's ``time_base``)."""

    def close(self) -> None:
        """Flush and finalise (idempotent)."""

    @property
    def has_audio(self) -> bool:
        """True when :meth:`open` opened an audio stream to copy the source's packets into."""
        return False

    def set_pacing(self, pace: bool) -> None:
        """Ask the sink to send frames at the stream's own rate (like ``ffmpeg -re``); only network
        sinks pace, the others ignore it. The pipeline paces the outputs of non-live sources."""

    def would_overwrite(self, path: str | os.PathLike) -> bool:
        """True when writing this output would replace or write into ``path`` (a file or folder an
        input is read from); see :func:`refuse_overwriting_inputs`. Sinks that write no file: False."""
        return False


class NullSink(Sink):
    """Discards frames (``--no-output``; ``rtseg bench`` measures the pipeline with it)."""

    name = "null"
    writes_frames = False

    def write(self, frame: av.VideoFrame) -> None:
        pass


_hw_cache: dict[tuple[int, int], str] = {}


def resolve_codec(codec: str, width: int = 1280, height: int = 720) -> str:
    """Map ``--codec`` to an FFmpeg encoder name.

    ``auto``: the first hardware H.264 encoder that opens at ``width``×``height`` (NVENC, QSV,
    VAAPI, AMF, VideoToolbox, V4L2 M2M), else ``libx264``. Aliases: ``h264``/``x264`` → ``libx264``,
    ``hevc``/``h265`` → ``libx265``.

    Raises:
        RtsegError: an encoder this FFmpeg build does not have.
    """
    name = CODEC_ALIASES.get(codec.lower(), codec)
    if name == "auto":
        key = (width, height)
        if key not in _hw_cache:
            _hw_cache[key] = "libx264"
            for hw in HW_H264:
                if hw in av.codecs_available and _encoder_opens(hw, width, height):
                    _hw_cache[key] = hw
                    break
        return _hw_cache[key]
    if name not in av.codecs_available:
        raise RtsegError(f"encoder {codec!r} is not in this FFmpeg build; use --codec libx264 (or 'auto' to pick a hardware encoder)")
    try:
        c = av.Codec(name, "w")
    except Exception:  # noqa: BLE001 - a decoder-only name
        raise RtsegError(f"{codec!r} is not a video encoder; use --codec libx264 or auto") from None
    if c.type != "video":
        raise RtsegError(f"{codec!r} is not a video encoder; use --codec libx264 or auto")
    return name


def _encoder_opens(name: str, width: int, height: int) -> bool:
    try:
        cc = av.CodecContext.create(name, "w")
        cc.width, cc.height, cc.pix_fmt = width, height, "yuv420p"
        cc.time_base = Fraction(1, 25)
        cc.open()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not usable here"
        return False


def _check_writable_dir(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RtsegError(f"output folder {folder} cannot be created ({e.strerror}); choose another {what}") from None
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise RtsegError(f"output folder {folder} is not writable; choose another {what} or fix its permissions")


class EncodedSink(Sink):
    """Common part of :class:`FileSink` and :class:`NetworkSink`: one encoded video stream (+ audio).

    Args:
        target: path or URL.
        codec: ``--codec`` (see :func:`resolve_codec`).
        preset, crf: x264/x265 speed preset and constant rate factor (lower = better, bigger).
        format: FFmpeg muxer name (``None``: from the file extension).
        pace: sleep so that frames leave at the stream's own rate (network output of files).
    """

    accepts_audio = True

    def __init__(self, target: str, *, codec: str = "libx264", preset: str = "ultrafast", crf: int = 23,
                 format: str | None = None, options: dict | None = None, low_latency: bool = False,
                 pace: bool = False):
        self.target = target
        self.name = redact(target)
        self.codec = codec
        self.preset = preset
        self.crf = crf
        self.format = format
        self.options = dict(options or {})
        self.low_latency = low_latency
        self.pace = pace
        self.container = None
        self.vstream = None
        self.astream = None
        self.notes: list[str] = []
        self.frames = 0
        self._last_pts = None
        self._closed = False
        self._failed = False  # a mux/encode failed: the container is abandoned, never closed natively
        self._t0 = None

    def open(self, info: VideoInfo, audio=None, *, live: bool = False) -> None:
        self.info = info
        codec = resolve_codec(self.codec, info.width, info.height)
        try:
            self.container = av.open(self.target, "w", format=self.format, options=self.options,
                                     timeout=(10.0, 10.0) if self.format else None)
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise RtsegError(f"cannot open output {self.name} ({_short(e)}); check the path/URL "
                             f"(an RTSP output needs a server that accepts publishing)") from None
        rate = info.rate or Fraction(25)
        try:
            vs = self.container.add_stream(codec, rate=rate)
        except (ValueError, av.error.FFmpegError) as e:
            _ABANDONED.append(self.container)  # nothing was written: never asked to finalise
            self.container = None
            raise RtsegError(f"cannot write {codec} video to {self.name} ({_short(e)}); pick another --codec "
                             f"(libx264) or output type (.mp4, .mkv)") from None
        vs.width, vs.height, vs.pix_fmt = info.width, info.height, "yuv420p"
        cc = vs.codec_context
        cc.time_base = info.time_base
        vs.time_base = info.time_base
        cc.thread_count = 0  # FFmpeg/x264 pick the thread count
        for attr in ("colorspace", "color_range", "color_primaries", "color_trc"):
            v = getattr(info, attr)
            if v:
                try:
                    setattr(cc, attr, v)
                except (AttributeError, TypeError, ValueError):
                    pass
        opts = {}
        if codec in ("libx264", "libx265"):
            opts["preset"] = self.preset
            opts["crf"] = str(self.crf)
            if self.low_latency:
                opts["tune"] = "zerolatency"
        if self.low_latency:
            cc.gop_size = max(1, round(float(rate)))
        vs.options = opts
        self.vstream = vs
        if audio is not None and self.accepts_audio:
            try:
                self.astream = self.container.add_stream_from_template(audio)
                _carry_learned_audio(audio, self.astream)
            except (ValueError, av.error.FFmpegError) as e:
                self.notes.insert(0, f"audio not copied to {self.target}: {_short(e)}")
                self.astream = None
        if self.format:  # network: connect now, so a refused connection is an error before streaming
            try:
                self.container.start_encoding()
            except (av.error.FFmpegError, OSError, ValueError) as e:
                self.container = None
                raise RtsegError(f"cannot open output {self.target} ({_short(e)}); check that the receiver/server is "
                                 f"running and the URL is right") from None

    @property
    def has_audio(self) -> bool:
        """True when the source's audio stream was added to the output (copied packet by packet)."""
        return self.astream is not None

    def write(self, frame: av.VideoFrame) -> None:
        """Encode + mux one ``yuv420p`` frame (its ``pts`` in its ``time_base``)."""
        pts = frame.pts
        if self._last_pts is not None and pts <= self._last_pts:  # never feed non-increasing pts
            pts = self._last_pts + 1
            frame.pts = pts
        self._last_pts = pts
        frame.pict_type = _PICT_NONE  # let the encoder choose frame types (decoded frames carry I/P/B)
        if self.pace:
            self._wait(pts * frame.time_base)
        try:
            for pkt in self.vstream.encode(frame):
                self.container.mux(pkt)
        except (av.error.FFmpegError, OSError) as e:
            self._failed = True
            raise self._write_error(e) from None
        self.frames += 1

    def _wait(self, t: Fraction) -> None:
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = now - float(t)
            return
        delay = self._t0 + float(t) - now
        if delay > 0:
            time.sleep(min(delay, 1.0))

    def write_audio(self, packet: av.Packet) -> None:
        """Copy one audio packet of the source's audio stream (no re-encode)."""
        if self.astream is None or self._failed:
            return
        packet.stream = self.astream
        try:
            self.container.mux(packet)
        except (av.error.FFmpegError, OSError) as e:
            self._failed = True
            raise self._write_error(e) from None

    def close(self) -> None:
        """Flush the encoder and finalise the container (the file is playable afterwards).

        After a failed write (full disk, receiver gone) the container is abandoned instead: FFmpeg
        is not asked to write a trailer into a broken output (that has crashed the process).

        Raises:
            RtsegError: flushing or finalising failed (one line naming the cause and the fix).
        """
        if self._closed or self.container is None:
            return
        self._closed = True
        if self._failed:
            self._abandon()
            return
        try:
            if self.vstream is not None and self.frames:
                for pkt in self.vstream.encode(None):
                    self.container.mux(pkt)
        except (av.error.FFmpegError, OSError) as e:
            self._failed = True
            self._abandon()
            raise self._write_error(e) from None
        try:
            self.container.close()
        except (av.error.FFmpegError, OSError) as e:
            self._failed = True
            self._discard()
            raise self._write_error(e) from None
        self._commit()

    def _abandon(self) -> None:
        _ABANDONED.append(self.container)
        self._discard()

    def _discard(self) -> None:
        """Forget a failed output (a file sink removes its temporary file)."""

    def _commit(self) -> None:
        """The output is complete (a file sink renames its temporary file into place)."""

    def _write_error(self, e: BaseException) -> RtsegError:
        return RtsegError(f"cannot send to {self.name} ({_short(e)}); check that the receiver/server is still running")


class FileSink(EncodedSink):
    """An H.264 (``--codec``) video file; the container comes from the extension."""

    def __init__(self, path: str | Path, **kw):
        path = Path(path)
        if len(path.name.encode()) > 200:  # the temporary name adds a few characters; file systems stop at 255
            raise RtsegError(f"output file name {path.name[:40]}... is {len(path.name.encode())} bytes long; "
                             f"choose a name under 200 bytes")
        if path.suffix.lower() not in FILE_EXTS:
            raise RtsegError(f"unknown output type {path.suffix or '(no extension)'} for {path}; "
                             f"use one of {', '.join(FILE_EXTS)}, a folder ending in '/', a URL or null")
        _check_writable_dir(path.parent if str(path.parent) else Path("."), "--output")
        if path.is_dir():
            raise RtsegError(f"output {path} is a folder; give a file name such as {path}/out.mp4")
        self.path = path
        super().__init__("", **kw)
        self.name = str(path)

    def open(self, info: VideoInfo, audio=None, *, live: bool = False) -> None:
        """Create the temporary file beside the target (:func:`rtseg.safe_io.temp_path`; renamed into
        place by :meth:`close`) and open the muxer on it."""
        try:
            self.target = str(temp_path(self.path))
        except OSError as e:
            raise self._write_error(e) from None
        try:
            super().open(info, audio, live=live)
        except RtsegError:
            self._discard()
            raise

    def would_overwrite(self, path: str | os.PathLike) -> bool:
        return same_file(self.path, path)

    def _discard(self) -> None:
        if self.target:
            discard(self.target)

    def _commit(self) -> None:
        if not self.frames:  # nothing was written: keep an earlier file rather than replace it by an empty one
            self._discard()
            return
        try:
            finish_mode(self.target, self.path)
            os.replace(self.target, self.path)
        except OSError as e:
            self._discard()
            raise self._write_error(e) from None

    def _write_error(self, e: BaseException) -> RtsegError:
        return write_error(self.path, e, "--output")


class NetworkSink(EncodedSink):
    """MPEG-TS over UDP/RTP/SRT/TCP, or RTSP publishing (see the module docstring).

    Encoding and sending run in the sink's own thread behind a queue of :data:`NET_QUEUE_S` seconds
    of frames, so a receiver that stops reading (a TCP peer that never drains its socket, an RTSP
    server that stops answering) never stalls the pipeline or the other outputs: for a live source
    the frames it cannot take are dropped (``dropped``: the report's ``slow_receiver`` drops), for a file source
    the pipeline waits (it is paced to the stream clock). Socket I/O on ``tcp://`` and ``rtsp://``
    has a timeout of ``io_timeout`` s (a server that accepts and never answers fails the open in one
    line); :meth:`close` waits at most :data:`NET_CLOSE_S` s for the thread and then abandons it.
    """

    def __init__(self, url: str, *, pace: bool = False, io_timeout: float = NET_IO_TIMEOUT_S, **kw):
        scheme = urlparse(url).scheme.lower()
        fmt = NET_FORMATS.get(scheme)
        shown = redact(url)
        if fmt is None:
            raise RtsegError(f"unknown output scheme {scheme}:// in {shown}; use udp://, rtp://, rtsp://, srt://, tcp://, "
                             f"a file, a folder or null")
        if scheme == "udp" and "pkt_size" not in url:
            url += ("&" if "?" in url else "?") + "pkt_size=1316"
        opts = {"rtsp_transport": "tcp"} if scheme == "rtsp" else {}
        io_us = str(int(io_timeout * 1e6))  # socket I/O timeout (connect, RTSP handshake, every write), µs
        if scheme == "rtsp":
            opts["timeout"] = io_us  # an option of the RTSP muxer
        elif scheme == "tcp" and "timeout=" not in url:  # an option of the tcp protocol: in the URL
            url += ("&" if "?" in url else "?") + f"timeout={io_us}"
        # video PES with their length: a receiver's demuxer can hand each frame on as soon as it is
        # complete (instead of at the next frame's start), so the last frame is not held back
        if fmt == "mpegts":
            opts.update({"flush_packets": "1", "omit_video_pes_length": "0"})
        elif fmt == "rtp_mpegts":
            opts["mpegts_muxer_options"] = "omit_video_pes_length=0"
        super().__init__(url, format=fmt, options=opts, low_latency=True, pace=pace, **kw)
        self.name = shown
        self.dropped = 0
        self.io_timeout = io_timeout
        self._live = False
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._error_raised = False
        if fmt == "rtp_mpegts":
            u = urlparse(url)
            self.notes = [f"RTP receivers need an SDP for {url}: 'v=0 / o=- 0 0 IN IP4 {u.hostname} / s=rtseg / "
                          f"c=IN IP4 {u.hostname} / t=0 0 / m=video {u.port} RTP/AVP 33 / a=rtpmap:33 MP2T/90000' "
                          f"(one line each; ffplay -protocol_whitelist file,udp,rtp -i stream.sdp)"]

    def set_pacing(self, pace: bool) -> None:
        """Send frames at the stream's own rate (``True`` for file sources, so receivers are not
        flooded; ``False`` for live sources, which are paced by their input)."""
        self.pace = pace

    def open(self, info: VideoInfo, audio=None, *, live: bool = False) -> None:
        """Connect (see :class:`EncodedSink`), then start the sending thread."""
        super().open(info, audio, live=live)
        self._live = live
        rate = float(info.rate) if info.rate else 25.0
        self._queue = queue.Queue(maxsize=max(4, round(NET_QUEUE_S * rate)))
        self._thread = threading.Thread(target=self._send_loop, name=f"rtseg-send {self.name}", daemon=True)
        self._thread.start()

    def write(self, frame: av.VideoFrame) -> None:
        """Queue one frame for the sending thread (live: dropped when the queue is full).

        Raises:
            RtsegError: an earlier send failed (receiver gone, socket timeout).
        """
        self._put(("video", frame, frame.pts))

    def write_audio(self, packet: av.Packet) -> None:
        """Queue one audio packet (dropped with the frames when the receiver cannot keep up)."""
        if self.astream is not None:
            self._put(("audio", packet, None))

    def _put(self, job: tuple) -> None:
        self._raise_error()
        if self._live:
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                self.dropped += job[0] == "video"
            return
        deadline = time.monotonic() + self.io_timeout
        while True:  # a file source waits for the receiver (it is paced anyway), for io_timeout at most
            try:
                self._queue.put(job, timeout=0.1)
                return
            except queue.Full:
                self._raise_error()
            if self.stop_event is not None and self.stop_event.is_set():
                return  # the run is abandoning its queued frames (a second Ctrl-C)
            if time.monotonic() > deadline:
                self._error, self._error_raised = RtsegError(
                    f"{self.name} took no data for {self.io_timeout:g} s; check the receiver"), True
                raise self._error

    def _raise_error(self) -> None:
        """Raise the sending thread's failure, once (the pipeline then stops writing to this sink)."""
        if self._error is not None and not self._error_raised:
            self._error_raised = True
            raise self._error
        if self._error is not None:
            raise RtsegError(f"cannot send to {self.name}; the receiver is gone")

    def _send_loop(self) -> None:
        """The sending thread: encode + mux each queued job; on ``None`` flush and finalise."""
        try:
            while True:
                job = self._queue.get()
                if job is None:
                    EncodedSink.close(self)
                    return
                kind, obj, pts = job
                if kind == "video":
                    obj.pts = pts
                    EncodedSink.write(self, obj)
                else:
                    EncodedSink.write_audio(self, obj)
        except BaseException as e:  # noqa: BLE001 - raised in the pipeline's thread by the next write/close
            self._failed = True
            self._error = e
            while self._queue.get() is not None:  # keep the queue moving so a waiting writer never blocks
                pass

    def close(self) -> None:
        """Send what is queued, finalise the stream and stop the thread (at most :data:`NET_CLOSE_S` s;
        a receiver that does not take it by then is abandoned).

        Raises:
            RtsegError: a send failed, or the receiver stopped answering.
        """
        if self._thread is None:
            return super().close()
        th, self._thread = self._thread, None
        wait_s = 1.0 if self.stop_event is not None and self.stop_event.is_set() else NET_CLOSE_S
        try:
            self._queue.put(None, timeout=wait_s)
        except queue.Full:
            pass
        th.join(wait_s)
        if th.is_alive():
            self._failed = True
            _ABANDONED.append(self.container)
            raise RtsegError(f"{self.name} stopped taking data; its stream was abandoned after {wait_s:g} s "
                             f"(check the receiver)")
        if not self._error_raised:
            self._raise_error()


class ImageFolderSink(Sink):
    """One image per frame: ``folder/000000.png`` ... or a printf pattern ``folder/%06d.jpg``.

    Numbering starts at 0 in output order.
    """

    def __init__(self, target: str):
        self.name = target
        p = Path(target)
        if "%" in p.name:
            self.folder, self.pattern = p.parent, p.name
        else:
            self.folder, self.pattern = p, "%06d.png"
        _check_writable_dir(self.folder, "--output")
        self.index = 0

    def write(self, frame: av.VideoFrame) -> None:
        """Encode one image and write it atomically (temporary name, then renamed into place)."""
        import cv2

        path = self.folder / (self.pattern % self.index)
        ok, buf = cv2.imencode(path.suffix or ".png", frame.to_ndarray(format="bgr24"))
        if not ok:
            raise RtsegError(f"cannot encode {path}; use a .png or .jpg pattern for --output")
        try:
            atomic_write_bytes(path, buf, fsync=False)
        except OSError as e:
            raise write_error(path, e, "--output") from None
        self.index += 1

    def would_overwrite(self, path: str | os.PathLike) -> bool:
        p = Path(path)
        return same_file(self.folder, p) or (p.is_file() and same_file(self.folder, p.parent))


class DisplaySink(Sink):
    """An OpenCV window (``--show``); pressing q or Esc calls :attr:`Sink.on_quit` (the pipeline's
    graceful stop, reported as ``"display closed"``).

    Raises:
        RtsegError: no display (``$DISPLAY``/``$WAYLAND_DISPLAY`` unset) or OpenCV without GUI
            support (``opencv-python-headless``).
    """

    name = "show"

    def __init__(self, title: str = "rtseg"):
        import cv2

        self.title = title
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise RtsegError("--show needs a display but $DISPLAY is not set; run on a desktop or write a file with --output")
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise RtsegError("--show needs OpenCV with GUI support (this install is opencv-python-headless); "
                             "pip install opencv-python, or write a file with --output") from None

    def write(self, frame: av.VideoFrame) -> None:
        import cv2

        cv2.imshow(self.title, frame.to_ndarray(format="bgr24"))
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27) and self.on_quit:
            self.on_quit()

    def close(self) -> None:
        import cv2

        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass


def refuse_overwriting_inputs(per_source_sinks: list[list[Sink]], sources: list) -> None:
    """Refuse an output that would replace or write into an input (``--source clip.mp4 --output
    clip.mp4``, an image folder as both): the input would be lost.

    Args:
        per_source_sinks: the sinks of each source; sources: opened :class:`rtseg.stream.sources.Source` s
            (their ``input_paths()``).

    Raises:
        RtsegError: an output names an input file or folder.
    """
    inputs = [p for src in sources for p in src.input_paths()]
    for sinks in per_source_sinks:
        for sk in sinks:
            for p in inputs:
                if sk.would_overwrite(p):
                    raise RtsegError(f"output {sk.name} would overwrite the input {p}; write to another file or folder")


def refuse_output_collisions(per_source_sinks: list[list[Sink]], sources: list,
                             extra: list[tuple[str, str | os.PathLike]]) -> None:
    """The output-safety rule of a stream run beyond :func:`refuse_overwriting_inputs`: an output is never
    an input, never another output of the same run (``--output 'seg_{name}.mp4'`` for ``a/c.mp4`` and
    ``b/c.mp4``), and the other files the run writes (``extra``: ``[(option, path)]``, e.g.
    ``--metrics-jsonl``, ``--save-masks``) are neither inputs nor outputs.

    Raises:
        RtsegError: two outputs name the same file, or an extra output names an input or an output.
    """
    inputs = [p for src in sources for p in src.input_paths()]
    files = [sk for sinks in per_source_sinks for sk in sinks if isinstance(sk, FileSink)]
    for i, a in enumerate(files):
        for b in files[i + 1:]:
            if a.would_overwrite(b.path):
                raise RtsegError(f"two sources would write the same output {a.name}; give each its own, e.g. "
                                 f"--output 'seg_{{i}}.mp4' (source index) instead of {{name}}")
    check_outputs(extra, inputs)
    for option, path in extra:
        p = Path(path)
        for sinks in per_source_sinks:
            for sk in sinks:
                if sk.would_overwrite(p):
                    raise RtsegError(f"{option} {p} is also the output {sk.name}; write it elsewhere")


def make_sink(target: str, *, codec: str = "libx264", preset: str = "ultrafast", crf: int = 23,
              pace_network: bool = True) -> Sink:
    """Parse one ``--output`` string into an (unopened) sink; see the module docstring.

    Raises:
        RtsegError: unknown extension or scheme, output folder not writable.
    """
    t = str(target)
    if t.lower() in ("null", "none", "-"):
        return NullSink()
    if t.lower() in ("show", "display", "window"):
        return DisplaySink()
    if "://" in t:
        scheme = urlparse(t).scheme.lower()
        if scheme == "file":
            return make_sink(urlparse(t).path, codec=codec, preset=preset, crf=crf, pace_network=pace_network)
        return NetworkSink(t, codec=codec, preset=preset, crf=crf, pace=pace_network)
    p = Path(t)
    long = [part for part in p.parts if len(part.encode()) > 200]
    if long:  # the temporary name adds a few characters; file systems stop at 255 bytes
        raise RtsegError(f"output name {long[0][:40]}... is {len(long[0].encode())} bytes long; choose a name under 200 bytes")
    if t.endswith(("/", os.sep)) or p.is_dir() or ("%" in p.name and p.suffix.lower() in IMAGE_EXTS):
        return ImageFolderSink(t)
    return FileSink(p, codec=codec, preset=preset, crf=crf)


def _carry_learned_audio(template, stream) -> None:
    """Give the output audio ``stream`` the sample rate and channel layout the source learned by
    decoding a packet (:func:`rtseg.stream.sources._learn_audio`): a copied stream takes its
    parameters from the template's stream header, which a short live probe left empty."""
    src, dst = template.codec_context, stream.codec_context
    if not dst.sample_rate and src.sample_rate:
        dst.sample_rate = src.sample_rate
    if not getattr(dst, "channels", 0) and getattr(src, "channels", 0):
        dst.layout = src.layout


def _short(e: Exception) -> str:
    s = str(e)
    for sep in (": '", "; "):
        s = s.split(sep)[0]
    import re

    return re.sub(r"^\[Errno -?\d+\]\s*", "", s)
