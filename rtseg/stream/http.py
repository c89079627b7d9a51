"""``rtseg stream --http HOST:PORT``: Prometheus ``/metrics``, ``/healthz``, ``/readyz`` and a live
MJPEG preview (``/``, ``/video/<i>.mjpg``) of a running :class:`rtseg.stream.pipeline.StreamPipeline`.

Design (the hot path is not touched):

* ``/metrics`` is a per-pipeline ``prometheus_client.CollectorRegistry`` with one custom collector
  (:class:`PipelineCollector`) that reads the pipeline's own counters and latency ring buffers at
  scrape time; latency histograms are built incrementally from the samples added since the last scrape.
* The preview is a :class:`PreviewSink` per source: its ``write`` keeps a reference to the latest
  overlaid frame and its time (no copy, no conversion). Each viewer's request thread converts and
  JPEG-encodes at most ``preview_fps`` frames a second, scaled to ≤ ``PREVIEW_MAX_WIDTH`` px, and
  simply skips frames it cannot keep up with; nothing is encoded when no viewer is connected.
* The server is a ``ThreadingHTTPServer`` in a daemon thread, loopback by default, with at most
  ``MAX_CONNECTIONS`` connections at once (others get 503 and are closed) and a socket timeout of
  ``SOCKET_TIMEOUT_S`` (idle or stalled clients are dropped).
"""

from __future__ import annotations

import collections
import hmac
import html
import http.cookies
import ipaddress
import json
import os
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from ..errors import RtsegError, redact
from ..runtime.base import model_info_of
from .metrics import DROP_CAUSES
from .sinks import Sink

#: connections served at once; more are answered 503 and closed
MAX_CONNECTIONS = 64
#: seconds a client may stay silent (request) or stop reading (MJPEG) before it is dropped
SOCKET_TIMEOUT_S = 5.0
#: preview frames are scaled down to at most this width (px)
PREVIEW_MAX_WIDTH = 640
#: JPEG quality of the preview (0-100)
JPEG_QUALITY = 75
#: environment variable holding the bearer token when ``--http-token`` is not given
TOKEN_ENV = "RTSEG_HTTP_TOKEN"
#: the cookie that carries the token for a browser (set by ``/?token=TOKEN``)
TOKEN_COOKIE = "rtseg_token"
#: latency histogram bucket bounds (s)
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
_BOUNDARY = "rtsegframe"
#: ``rtseg_fps`` and the page's FPS: frames written per second over at least this many seconds (s)
FPS_WINDOW_S = 5.0


def parse_http_address(value) -> tuple[str, int]:
    """``"HOST:PORT"``, ``"PORT"`` or an int → ``(host, port)``; a bare port means 127.0.0.1.

    Raises:
        RtsegError: not a ``HOST:PORT`` / port number in 0-65535.
    """
    s = str(value).strip()
    host, sep, port_s = s.rpartition(":")
    if not sep:
        host, port_s = "127.0.0.1", s
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_s)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise RtsegError(f"--http {value!r} is not HOST:PORT or PORT; pass e.g. --http 127.0.0.1:8080 or --http 8080")
    return host, port


def is_loopback(host: str) -> bool:
    """Is ``host`` a loopback address (``localhost``, 127.0.0.0/8, ::1)?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PreviewSink(Sink):
    """Keeps a reference to the latest overlaid frame of one source (for ``/video/<i>.mjpg`` and ``/readyz``).

    ``write`` costs two attribute stores: no copy, no conversion. ``viewers`` counts connected viewers.
    """

    writes_frames = True
    reported = False  # not an output of the report
    name = "http-preview"

    def __init__(self):
        self.latest = None  # av.VideoFrame (a new object per frame: the pipeline never reuses it)
        self.seq = 0
        self.t_last: float | None = None  # time.monotonic() of the latest frame
        self.viewers = 0
        self._lock = threading.Lock()

    def add_viewer(self, n: int) -> None:
        """Count a viewer in (+1) or out (-1) (viewer threads only)."""
        with self._lock:
            self.viewers += n

    def write(self, frame) -> None:
        """Remember ``frame`` as the latest (the sink thread; never blocks)."""
        self.latest = frame
        self.seq += 1
        self.t_last = time.monotonic()

    def close(self) -> None:
        """Drop the frame reference."""
        self.latest = None


def source_labels(states) -> list[str]:
    """The ``source`` label of each source: its name, a URL's password redacted; a name that several
    sources share gets ``#i`` (source index) appended so every series stays unique."""
    names = [redact(st.src.name) for st in states]
    return [f"{n}#{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


class _Histogram:
    """Cumulative Prometheus histogram buckets fed from a :class:`LatencyRecorder` (ms) at scrape time."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self.counts = np.zeros(len(bounds) + 1, dtype=np.int64)  # per bucket, last = +Inf
        self.sum = 0.0
        self.seen = 0

    def feed(self, values: np.ndarray, total: int) -> None:
        """Add ``values`` (s) and advance to ``total`` samples seen (samples lost from the ring count as +Inf)."""
        if values.size:
            self.counts += np.bincount(np.searchsorted(self.bounds, values, side="left"),
                                       minlength=len(self.counts))
            self.sum += float(values.sum())
        lost = total - self.seen - values.size
        if lost > 0:
            self.counts[-1] += lost
        self.seen = total

    def buckets(self) -> list[tuple[str, int]]:
        """``[(le, cumulative count), ...]`` ending with ``+Inf``."""
        cum = np.cumsum(self.counts)
        return [(_fmt(b), int(c)) for b, c in zip(self.bounds, cum[:-1])] + [("+Inf", int(cum[-1]))]


def _fmt(b: float) -> str:
    return repr(float(b))


class FpsMeter:
    """Frames written per second, per source, over the last :data:`FPS_WINDOW_S` or more: from the
    newest earlier reading at least that old (one per call, bounded), else since the stream started.
    Shared by ``/metrics`` (``rtseg_fps``) and the page's figures; thread-safe."""

    def __init__(self, pipe):
        self.pipe = pipe
        self._marks: collections.deque = collections.deque(maxlen=512)  # (perf_counter s, frames per source)
        self._lock = threading.Lock()

    def __call__(self) -> list[float]:
        """FPS of each source (frames/s), in the order of ``pipe.states``."""
        p = self.pipe
        now = time.perf_counter()
        counts = [st.written for st in p.states]
        with self._lock:
            marks = self._marks
            while len(marks) > 1 and now - marks[1][0] >= FPS_WINDOW_S:
                marks.popleft()
            t0, base = marks[0] if marks and now - marks[0][0] >= FPS_WINDOW_S else (p._t_start or now, [])
            marks.append((now, counts))
        dt = now - t0
        base = list(base) + [0] * (len(counts) - len(base))
        return [(c - b) / dt if dt > 0 else 0.0 for c, b in zip(counts, base)]


class PipelineCollector:
    """A ``prometheus_client`` collector reading a :class:`StreamPipeline`'s counters at scrape time."""

    def __init__(self, pipe):
        self.pipe = pipe
        self._lock = threading.Lock()
        self._lat: dict[tuple[str, int], _Histogram] = {}
        self._batch = _Histogram(tuple(float(2 ** k) for k in range(0, 7)))
        self._rss_proc = None
        self.fps = FpsMeter(pipe)

    def describe(self):
        """Nothing up front (the registry then does not call :meth:`collect` on registration)."""
        return []

    def collect(self):
        """Yield every metric family (called per scrape, under a lock)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        with self._lock:
            p = self.pipe
            states = list(p.states)
            names = source_labels(states)
            info = InfoMetricFamily("rtseg_engine", "The engine that runs the stream.")
            meta = model_info_of(p.backend)
            info.add_metric([], {"backend": str(p.backend.describe()),
                                 "model": str(meta.get("model") or meta.get("name") or "unknown")})
            yield info
            yield from self._counters(CounterMetricFamily, p, states, names)
            yield from self._gauges(GaugeMetricFamily, p, states, names)
            yield from self._histograms(p, states, names)

    def _counters(self, Counter, p, states, names):
        frames = Counter("rtseg_frames", "Frames written to the outputs.", labels=["source"])
        read = Counter("rtseg_frames_read", "Frames decoded from the source.", labels=["source"])
        drops = Counter("rtseg_frames_dropped", "Frames dropped, by cause.", labels=["source", "cause"])
        dec = Counter("rtseg_decode_errors", "Packets the decoder rejected.", labels=["source"])
        rec = Counter("rtseg_reconnects", "Reconnects of a network source.", labels=["source"])
        causes = p.drop_causes() if p.inq is not None else [(0,) * len(DROP_CAUSES)] * len(states)
        for name, st, dc in zip(names, states, causes):
            frames.add_metric([name], st.written)
            read.add_metric([name], st.read)
            for cause, n in zip(DROP_CAUSES, dc):
                drops.add_metric([name, cause], n)
            dec.add_metric([name], getattr(st.src, "decode_errors", 0))
            rec.add_metric([name], st.reconnects)
        yield from (frames, read, drops, dec, rec)

    def _gauges(self, Gauge, p, states, names):
        import psutil

        q = Gauge("rtseg_queue_depth", "Frames waiting in a queue now.", labels=["source", "queue"])
        for i, (name, st) in enumerate(zip(names, states)):
            q.add_metric([name, "in"], len(p.inq.q[i]) if p.inq is not None else 0)
            q.add_metric([name, "out"], len(st.out_q))
        self._rss_proc = self._rss_proc or psutil.Process()
        rss = Gauge("rtseg_process_resident_memory_bytes", "Resident memory of the process (bytes).")
        rss.add_metric([], self._rss_proc.memory_info().rss)
        up = Gauge("rtseg_uptime_seconds", "Seconds since the stream started.")
        up.add_metric([], time.perf_counter() - p._t_start if p._t_start else 0.0)
        fps = Gauge("rtseg_fps", f"Frames written per second over the last {FPS_WINDOW_S:g} s or more "
                    "(since the start when younger).", labels=["source"])
        for name, v in zip(names, self.fps()):
            fps.add_metric([name], v)
        yield from (q, rss, up, fps)

    def _histograms(self, p, states, names):
        from prometheus_client.core import HistogramMetricFamily

        lat = HistogramMetricFamily("rtseg_stage_latency_seconds", "Latency of a pipeline stage per frame "
                                    "(infer: per engine call).", labels=["stage", "source"])
        for stage in ("decode", "preprocess", "infer", "postprocess", "encode", "e2e"):
            recs = [("all", p.infer_lat)] if stage == "infer" else [(n, st.lat[stage]) for n, st in zip(names, states)]
            for j, (name, r) in enumerate(recs):
                h = self._lat.setdefault((stage, j), _Histogram(LATENCY_BUCKETS_S))
                total = r.count
                h.feed(r.samples(h.seen)[: max(0, total - h.seen)] / 1000.0, total)
                lat.add_metric([stage, name], h.buckets(), h.sum)
        sizes = p.batch_sizes
        n = len(sizes)
        self._batch.feed(np.asarray(sizes[self._batch.seen:n], dtype=np.float64), n)
        bs = HistogramMetricFamily("rtseg_batch_size", "Frames per engine call.")
        bs.add_metric([], self._batch.buckets(), self._batch.sum)
        yield from (lat, bs)


class _Server(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` with a bound on concurrent connections (the rest: 503, closed)."""

    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, addr, handler, app: "HttpServer"):
        self.app = app
        self.active = 0
        self._count_lock = threading.Lock()
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.address_family = family
        super().__init__(addr, handler)

    def process_request(self, request, client_address):
        """Serve in a thread when under ``MAX_CONNECTIONS``, else answer 503 and close."""
        with self._count_lock:
            full = self.active >= self.app.max_connections
            if not full:
                self.active += 1
        if full:
            self.app.rejected += 1
            try:
                request.settimeout(0.2)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 20\r\nConnection: close\r\n"
                                b"\r\ntoo many connections")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._count_lock:
                self.active -= 1


class _Handler(BaseHTTPRequestHandler):
    """One connection: routes GET requests; any other method is 405."""

    server_version = "rtseg"
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT_S

    def log_message(self, format, *args):  # noqa: A002 - quiet: a scrape per second must not flood stderr
        pass

    # -- routing -------------------------------------------------------------------------------------
    def do_GET(self):  # noqa: N802
        """Serve ``/metrics``, ``/healthz``, ``/readyz``, ``/``, ``/video/<i>.mjpg``."""
        app: HttpServer = self.server.app
        if not self._authorised(app):
            return
        if self.headers.get("Content-Length", "0").strip() not in ("", "0") or self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            return self._send(400, "a GET request takes no body; send it without one\n")
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            return self._metrics(app)
        if path == "/healthz":
            return self._send(200, "ok\n")
        if path == "/readyz":
            ok, why = app.ready()
            return self._send(200 if ok else 503, why + "\n")
        if path in ("/", "/index.html"):
            return self._send(200, app.index_html(), "text/html; charset=utf-8")
        if path == "/stats.json":
            return self._send(200, json.dumps(app.figures()), "application/json")
        if path.startswith("/video/") and path.endswith(".mjpg"):
            idx = path[len("/video/"):-len(".mjpg")]
            if idx.isdigit() and int(idx) < len(app.previews):
                return self._mjpeg(app, int(idx))
        self._send(404, f"no such endpoint {path}; try /, /metrics, /healthz, /readyz, /video/0.mjpg\n")

    def _not_allowed(self):
        app: HttpServer = self.server.app
        if not self._authorised(app):
            return
        self.close_connection = True  # the body (if any) is not read
        self._send(405, f"{self.command} is not supported; use GET\n", extra={"Allow": "GET"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _not_allowed

    # -- helpers -------------------------------------------------------------------------------------
    def _authorised(self, app: "HttpServer") -> bool:
        """True when no token is set, or the request carries it: ``Authorization: Bearer TOKEN`` (Prometheus,
        curl) or the :data:`TOKEN_COOKIE` a browser got by opening ``/?token=TOKEN`` once (answered here
        with a redirect to ``/`` that sets the cookie, so the token leaves the address bar). Else 401."""
        if app.token is None:
            return True
        want = app.token.encode()
        got = self.headers.get("Authorization", "")
        if hmac.compare_digest(got.encode(), b"Bearer " + want):
            return True
        jar = http.cookies.SimpleCookie()
        try:
            jar.load(self.headers.get("Cookie", ""))
        except http.cookies.CookieError:
            jar = {}
        if TOKEN_COOKIE in jar and hmac.compare_digest(jar[TOKEN_COOKIE].value.encode(), want):
            return True
        self.close_connection = True
        query = urllib.parse.parse_qs(self.path.partition("?")[2]).get("token", [""])[0]
        if query and hmac.compare_digest(query.encode(), want):
            cookie = http.cookies.SimpleCookie()
            cookie[TOKEN_COOKIE] = app.token
            cookie[TOKEN_COOKIE].update({"path": "/", "httponly": True, "samesite": "Strict"})
            self._send(303, "token accepted\n", extra={"Location": self.path.split("?", 1)[0],
                                                       "Set-Cookie": cookie[TOKEN_COOKIE].OutputString()})
            return False
        self._send(401, "missing or wrong bearer token; send 'Authorization: Bearer TOKEN' (a browser: open "
                        "/?token=TOKEN once)\n", extra={"WWW-Authenticate": "Bearer"})
        return False

    def _send(self, code: int, body: str | bytes, ctype: str = "text/plain; charset=utf-8", extra=None) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _metrics(self, app: "HttpServer") -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        self._send(200, generate_latest(app.registry), CONTENT_TYPE_LATEST)

    def _mjpeg(self, app: "HttpServer", i: int) -> None:
        """``multipart/x-mixed-replace`` JPEG stream of source ``i`` until the client or the server goes."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={_BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        pv = app.previews[i]
        pv.add_viewer(1)
        try:
            app.stream_jpegs(pv, self.wfile)
        except OSError:
            pass  # the viewer went away or stopped reading (socket timeout)
        finally:
            pv.add_viewer(-1)


class HttpServer:
    """The ``--http`` endpoints of one pipeline, served in a daemon thread.

    Args:
        pipe: the :class:`StreamPipeline` (its states may still be empty while sources open).
        address: ``HOST:PORT`` / ``PORT`` (see :func:`parse_http_address`).
        token: bearer token (``None``: ``$RTSEG_HTTP_TOKEN``, else no authentication).
        preview_fps: at most this many preview frames a second per viewer.
        log: ``callable(str)`` for the warning about a non-loopback bind without a token.

    Raises:
        RtsegError: a bad address, or the port cannot be bound (in use, no permission).
    """

    def __init__(self, pipe, address, token: str | None = None, preview_fps: float = 10.0, log=None,
                 max_connections: int = MAX_CONNECTIONS):
        from prometheus_client import CollectorRegistry

        self.pipe = pipe
        self.host, self.port = parse_http_address(address)
        self.token = token if token else (os.environ.get(TOKEN_ENV) or None)
        self.preview_fps = float(preview_fps)
        self.max_connections = max_connections
        self.rejected = 0
        self.previews: list[PreviewSink] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = PipelineCollector(pipe)
        self.registry.register(self.collector)
        self._closed = threading.Event()
        try:
            self._srv = _Server((self.host, self.port), _Handler, self)
        except OSError as e:
            raise RtsegError(f"cannot serve --http {self.host}:{self.port} ({e.strerror or e}); "
                             f"pick another port or stop the process using it") from None
        self.port = self._srv.server_address[1]
        if not is_loopback(self.host) and self.token is None and log is not None:
            log(f"--http {self.host}:{self.port} is reachable from the network without a token; "
                f"pass --http-token (or set {TOKEN_ENV})")
        self._thread = threading.Thread(target=self._srv.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="rtseg-http", daemon=True)

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> "HttpServer":
        """Start serving in the background; returns ``self``."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving (idempotent); open MJPEG streams end within a frame interval."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._thread.ident is not None:  # shutdown() waits for serve_forever: only once started
            self._srv.shutdown()
        self._srv.server_close()

    def preview_sink(self) -> PreviewSink:
        """A new :class:`PreviewSink` for the next source (call once per source, in order)."""
        pv = PreviewSink()
        self.previews.append(pv)
        return pv

    # -- readiness and figures -----------------------------------------------------------------------
    def ready(self) -> tuple[bool, str]:
        """(ready, reason): engine loaded and every source delivered a frame within max(2 s, stall_timeout)."""
        p = self.pipe
        if p.inq is None or not self.previews:
            return False, "not ready: engine warming up or sources opening"
        if p.stop.is_set():
            return False, f"not ready: stream stopping ({p.stop_reason or 'stop requested'})"
        window = max(2.0, float(p.options.stall_timeout))
        now = time.monotonic()
        for i, pv in enumerate(self.previews):
            name = redact(p.states[i].src.name) if i < len(p.states) else str(i)
            if pv.t_last is None:
                return False, f"not ready: source {i} ({name}) has delivered no frame yet"
            if now - pv.t_last > window:
                return False, f"not ready: source {i} ({name}) delivered no frame for {now - pv.t_last:.1f} s"
        return True, "ready"

    def figures(self) -> dict:
        """Current per-source figures for the page: frames, FPS (:class:`FpsMeter`), drops, reconnects, queue
        depth, seconds running."""
        p = self.pipe
        causes = p.drop_causes() if p.inq is not None else [()] * len(p.states)
        return {"seconds": round(time.perf_counter() - p._t_start, 1) if p._t_start else 0.0,
                "backend": p.backend.describe(), "ready": self.ready()[1],
                "sources": [{"name": redact(st.src.name), "frames": st.written, "fps": round(fps, 1),
                             "drops": int(sum(dc)), "reconnects": st.reconnects,
                             "in_queue": len(p.inq.q[i]) if p.inq else 0}
                            for i, (st, dc, fps) in enumerate(zip(p.states, causes, self.collector.fps()))]}

    def index_html(self) -> str:
        """The page: one MJPEG ``<img>`` per source and figures refreshed once a second."""
        views = "".join(f'<figure><img src="/video/{i}.mjpg" alt="source {i}"><figcaption id="s{i}">'
                        f'{html.escape(redact(self.pipe.states[i].src.name)) if i < len(self.pipe.states) else i}'
                        f'</figcaption></figure>' for i in range(len(self.previews)))
        return _PAGE.replace("{views}", views)

    # -- preview -------------------------------------------------------------------------------------
    def stream_jpegs(self, pv: PreviewSink, wfile) -> None:
        """Write JPEG parts of ``pv``'s latest frames to ``wfile`` at ≤ ``preview_fps`` until closed.

        Raises:
            OSError: the viewer disconnected or stopped reading for ``SOCKET_TIMEOUT_S``.
        """
        period = 1.0 / max(0.1, self.preview_fps)
        seen = -1
        while not self._closed.is_set():
            t0 = time.monotonic()
            frame, seq = pv.latest, pv.seq
            if frame is not None and seq != seen:
                seen = seq
                jpg = encode_jpeg(frame)
                wfile.write(f"--{_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpg)}\r\n\r\n".encode())
                wfile.write(jpg)
                wfile.write(b"\r\n")
                wfile.flush()
            self._closed.wait(max(0.0, period - (time.monotonic() - t0)))


def encode_jpeg(frame, max_width: int = PREVIEW_MAX_WIDTH, quality: int = JPEG_QUALITY) -> bytes:
    """``av.VideoFrame`` → JPEG bytes, scaled to ≤ ``max_width`` px wide (aspect kept)."""
    import cv2

    w, h = frame.width, frame.height
    if w > max_width:
        w, h = max_width, max(2, round(h * max_width / frame.width) // 2 * 2)
        frame = frame.reformat(width=w, height=h, format="bgr24")
    else:
        frame = frame.reformat(format="bgr24")
    ok, buf = cv2.imencode(".jpg", frame.to_ndarray(), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes()


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>rtseg stream</title>
<style>body{font-family:sans-serif;background:#111;color:#eee;margin:8px}figure{display:inline-block;margin:4px}
img{max-width:640px;background:#000}pre{font-size:12px}</style></head>
<body><div id="views">{views}</div><pre id="figures"></pre>
<script>
async function tick(){try{const r=await fetch('/stats.json',{cache:'no-store'});
document.getElementById('figures').textContent=JSON.stringify(await r.json(),null,1);}catch(e){}}
tick();setInterval(tick,1000);
</script></body></html>
"""

__all__ = ["HttpServer", "PipelineCollector", "PreviewSink", "encode_jpeg", "parse_http_address"]
