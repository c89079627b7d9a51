"""``rtseg stream --http``: Prometheus metrics (scraped by a real Prometheus server), health endpoints,
the MJPEG live view (opened by headless Chromium) and bad requests, on the real clip."""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from rtseg.errors import RtsegError
from rtseg.stream.http import HttpServer, parse_http_address
from rtseg.stream.pipeline import StreamOptions, StreamPipeline

from helpers import free_port, wait_for

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@contextlib.contextmanager
def serving(backend, sources, **opts):
    """Run a pipeline with ``--http`` on a free loopback port in a thread; yield (pipe, base URL, result)."""
    stop = threading.Event()
    logs: list[str] = []
    pipe = StreamPipeline(backend, sources, [], StreamOptions(http="127.0.0.1:0", handle_signals=False, **opts),
                          stop_event=stop, log=logs.append)
    res: dict = {"logs": logs}

    def target():
        try:
            res["report"] = pipe.run()
        except BaseException as e:  # noqa: BLE001
            res["error"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    wait_for(lambda: pipe.http is not None or not th.is_alive(), 30, "the http server")
    try:
        yield pipe, pipe.http.url, res
    finally:
        stop.set()
        th.join(30)
        assert not th.is_alive()
    assert "error" not in res, res.get("error")


def get(url: str, token: str | None = None, timeout: float = 5.0, method: str = "GET", body: bytes | None = None):
    """(status, body text) of one request."""
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def frames(pipe) -> int:
    return sum(st.written for st in pipe.states)


# -- unit ----------------------------------------------------------------------------------------------
def test_parse_http_address():
    assert parse_http_address("8080") == ("127.0.0.1", 8080)
    assert parse_http_address(9000) == ("127.0.0.1", 9000)
    assert parse_http_address("0.0.0.0:81") == ("0.0.0.0", 81)
    assert parse_http_address("[::1]:81") == ("::1", 81)
    for bad in ("host:", "x:70000", "abc"):
        with pytest.raises(RtsegError, match="--http"):
            parse_http_address(bad)
    with pytest.raises(RtsegError, match="--http"):
        StreamOptions(http="nope")


def test_port_in_use_and_non_loopback_warning(backend):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        pipe = StreamPipeline(backend, ["lavfi:testsrc2=size=64x64:rate=5"], [], StreamOptions(handle_signals=False))
        with pytest.raises(RtsegError, match="in use.*pick another port"):
            HttpServer(pipe, f"127.0.0.1:{port}")
    logs: list[str] = []
    srv = HttpServer(pipe, "0.0.0.0:0", log=logs.append)
    srv.close()
    assert len(logs) == 1 and "without a token" in logs[0]
    logs.clear()
    HttpServer(pipe, "0.0.0.0:0", token="t", log=logs.append).close()
    assert not logs


def test_nothing_listens_without_http(backend, small_clip):
    pipe = StreamPipeline(backend, [str(small_clip)], [], StreamOptions(handle_signals=False, max_frames=5))
    pipe.run()
    assert pipe.http is None


# -- endpoints -----------------------------------------------------------------------------------------
def test_metrics_health_and_bad_requests(backend, small_clip):
    with serving(backend, [str(small_clip)], loop=0, http_token="s3cret") as (pipe, url, res):
        wait_for(lambda: frames(pipe) > 5, 30, "frames")
        tok = "s3cret"
        assert get(url + "/healthz")[0] == 401
        assert get(url + "/healthz", token="wrong")[0] == 401
        assert get(url + "/healthz", token=tok) == (200, "ok\n")
        wait_for(lambda: get(url + "/readyz", token=tok)[0] == 200, 10, "readyz 200")
        code, text = get(url + "/metrics", token=tok)
        assert code == 200
        for name in ("rtseg_frames_total{", 'rtseg_frames_dropped_total{cause="backpressure"', "rtseg_decode_errors_total",
                     "rtseg_reconnects_total", 'stage="e2e"', 'stage="infer"', "rtseg_batch_size_bucket",
                     "rtseg_queue_depth{", "rtseg_process_resident_memory_bytes", "rtseg_engine_info{backend=",
                     "rtseg_fps{"):
            assert name in text, name
        assert get(url + "/nope", token=tok)[0] == 404
        assert get(url + "/video/7.mjpg", token=tok)[0] == 404
        assert get(url + "/metrics", token=tok, method="POST", body=b"x=1")[0] == 405
        assert get(url + "/metrics", token=tok, method="PUT", body=b"x")[0] == 405
        c = http.client.HTTPConnection(pipe.http.host, pipe.http.port, timeout=5)
        c.request("GET", "/metrics", body=b"unexpected", headers={"Authorization": f"Bearer {tok}"})
        assert c.getresponse().status == 400
        c.close()
        c = http.client.HTTPConnection(pipe.http.host, pipe.http.port, timeout=5)  # a browser: /?token= → cookie
        c.request("GET", "/?token=s3cret")
        r = c.getresponse()
        r.read()
        assert r.status == 303 and r.getheader("Location") == "/"
        cookie = r.getheader("Set-Cookie").split(";")[0]
        assert cookie == "rtseg_token=s3cret" and "HttpOnly" in r.getheader("Set-Cookie")
        c.close()
        for hdr, code in ((cookie, 200), ("rtseg_token=wrong", 401), ('x="', 401)):
            c = http.client.HTTPConnection(pipe.http.host, pipe.http.port, timeout=5)
            c.request("GET", "/stats.json", headers={"Cookie": hdr})
            assert c.getresponse().status == code, hdr
            c.close()
        assert get(url + "/?token=wrong")[0] == 401
        st = json.loads(get(url + "/stats.json", token=tok)[1])
        assert st["sources"][0]["frames"] > 0 and st["sources"][0]["fps"] > 0
        n0 = frames(pipe)
        time.sleep(0.5)
        assert frames(pipe) > n0  # the stream goes on
    assert res["report"].sources[0].outputs == []  # the preview is not an output of the report


@pytest.mark.parametrize("n", [400, pytest.param(10_000, marks=pytest.mark.slow)])
def test_many_idle_connections_are_bounded(backend, small_clip, n):
    """``n`` idle connections held open at once (the issue's 10k: ~30 s here; the fd limit must allow them):
    at most ``max_connections`` are served, the rest get 503 and are closed, the stream goes on."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 1000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1000) if hard != resource.RLIM_INFINITY else n + 1000, hard))
    with serving(backend, [str(small_clip)], loop=0) as (pipe, url, res):
        wait_for(lambda: frames(pipe) > 5, 30, "frames")
        socks = []
        t0 = time.perf_counter()
        for _ in range(n):
            s = socket.create_connection((pipe.http.host, pipe.http.port), timeout=5)
            socks.append(s)
        print(f"{n} connections opened in {time.perf_counter() - t0:.1f} s")
        # the rest get 503 at once; a served idle connection frees its slot after the 5 s socket timeout
        wait_for(lambda: pipe.http.rejected >= max(1, n - 1000), 30, "connections over the limit to be refused")
        print(f"{pipe.http.rejected} refused")
        assert pipe.http._srv.active <= pipe.http.max_connections
        n_threads = threading.active_count()
        assert n_threads < pipe.http.max_connections + 30
        n0 = frames(pipe)
        time.sleep(0.5)
        assert frames(pipe) > n0
        for s in socks:
            s.close()
        wait_for(lambda: pipe.http._srv.active < pipe.http.max_connections, 15, "idle connections to be dropped")
        assert get(url + "/healthz")[0] == 200


@pytest.mark.slow
@pytest.mark.slow
def test_stalled_viewer_does_not_stall_the_stream(backend, small_clip):
    with serving(backend, [str(small_clip)], loop=0, http_preview_fps=25) as (pipe, url, res):
        wait_for(lambda: frames(pipe) > 5, 30, "frames")
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((pipe.http.host, pipe.http.port))
        s.sendall(b"GET /video/0.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: pipe.http.previews[0].viewers == 1, 5, "the viewer")
        counts = []
        for _ in range(4):  # never read: the server's sends block, then time out
            n0 = frames(pipe)
            time.sleep(1.0)
            counts.append(frames(pipe) - n0)
        assert all(c > 0 for c in counts), counts
        assert get(url + "/healthz")[0] == 200
        # its sends filled the socket buffers and timed out: the server dropped it, the stream went on
        n0 = frames(pipe)
        wait_for(lambda: pipe.http.previews[0].viewers == 0, 20, "the stalled viewer to be dropped")
        assert frames(pipe) > n0
        s.close()


def test_mjpeg_stream_gives_jpegs_and_costs_nothing_without_viewer(backend, small_clip):
    with serving(backend, [str(small_clip)], loop=0, http_preview_fps=5) as (pipe, url, res):
        wait_for(lambda: frames(pipe) > 5, 30, "frames")
        import rtseg.stream.http as H

        calls = []
        orig = H.encode_jpeg
        H.encode_jpeg = lambda f, *a, **k: (calls.append(1), orig(f, *a, **k))[1]
        try:
            time.sleep(0.5)
            assert not calls  # no viewer: nothing converted or encoded
            with urllib.request.urlopen(url + "/video/0.mjpg", timeout=5) as r:
                assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
                t0 = time.monotonic()
                data = b""
                while time.monotonic() - t0 < 2.0:
                    data += r.read1(65536)
        finally:
            H.encode_jpeg = orig
        n = data.count(b"Content-Type: image/jpeg")
        assert 3 <= n <= 13, n  # capped at 5 FPS
        jpg = data[data.index(b"\xff\xd8"):]
        import cv2

        img = cv2.imdecode(np.frombuffer(jpg[:jpg.index(b"\xff\xd9") + 2], np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (180, 320, 3)


# -- readiness of a network source -------------------------------------------------------------------
def _udp_sender(clip: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(["ffmpeg", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip), "-c", "copy",
                             "-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
def test_readyz_follows_a_udp_source(backend, net_clip):
    port = free_port()
    with serving(backend, [f"udp://127.0.0.1:{port}"], reconnect=True, stall_timeout=1.0) as (pipe, url, res):
        assert get(url + "/readyz")[0] == 503  # no sender yet
        p = _udp_sender(net_clip, port)
        try:
            wait_for(lambda: get(url + "/readyz")[0] == 200, 30, "readyz 200 once frames flow")
        finally:
            p.kill()
            p.wait()
        wait_for(lambda: get(url + "/readyz")[0] == 503, 10, "readyz 503 after the sender stopped")
        assert "no frame for" in get(url + "/readyz")[1]
        p = _udp_sender(net_clip, port)
        try:
            wait_for(lambda: get(url + "/readyz")[0] == 200, 30, "readyz 200 after the reconnect")
            assert pipe.states[0].reconnects >= 1
            assert "rtseg_reconnects_total" in get(url + "/metrics")[1]
        finally:
            p.kill()
            p.wait()


# -- a real Prometheus server ----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.slow
def test_real_prometheus_scrapes_the_stream(tmp_path, backend, clip):
    if not Path(PROMETHEUS).exists():
        pytest.fail(f"{PROMETHEUS} not installed: apt-get install prometheus (scripts/test.sh does)")
    with serving(backend, [str(clip)], loop=0, batch_size=2) as (pipe, url, res):
        prom_port = free_port(socket.SOCK_STREAM)
        cfg = tmp_path / "prom.yml"
        cfg.write_text(f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
                       f"  - job_name: rtseg\n    static_configs:\n      - targets: ['127.0.0.1:{pipe.http.port}']\n")
        prom = subprocess.Popen([PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        api = f"http://127.0.0.1:{prom_port}/api/v1/query?query="

        def query(q: str) -> list:
            try:
                code, text = get(api + urllib.parse.quote(q))
            except OSError:
                return []
            return json.loads(text)["data"]["result"] if code == 200 else []

        try:
            wait_for(lambda: len(query("rtseg_frames_total[30s]")[:1] and
                                 query("rtseg_frames_total[30s]")[0]["values"]) >= 5, 60, "5 scrapes")
            rate = float(query("rate(rtseg_frames_total[4s])")[0]["value"][1])
            gauge = float(query("rtseg_fps")[0]["value"][1])
            pipe.stop.set()
            wait_for(lambda: res.get("report") is not None, 30, "the report")
            time.sleep(1.5)  # any in-flight scrape lands
            series = query("rtseg_frames_total[1m]")[0]["values"]
            last_t, last_n = float(series[-1][0]), int(float(series[-1][1]))
            e2e = query('rtseg_stage_latency_seconds_count{stage="e2e"}[1m]')[0]["values"]
            infer = query('rtseg_stage_latency_seconds_count{stage="infer"}[1m]')[0]["values"]
            p99 = query('histogram_quantile(0.99, rate(rtseg_stage_latency_seconds_bucket{stage="e2e"}[1m]))')
        finally:
            prom.terminate()
            prom.wait(10)
    rep = res["report"]
    # the last scrape saw all but what was written in ≤ 1 scrape interval (+ slack) before the end
    assert 0 <= rep.frames - last_n <= rep.fps * 2.0 + 10, (rep.frames, last_n, rep.fps)
    # the histogram's count is the frame count of the same scrape (e2e is recorded just before the count)
    assert 0 <= int(float(e2e[-1][1])) - last_n <= 1
    assert int(float(infer[-1][1])) >= last_n / 2 - 1  # batches of ≤ 2
    assert 0.3 * rep.fps <= rate <= 3.0 * rep.fps, (rate, rep.fps)
    assert 0.3 * rep.fps <= gauge <= 3.0 * rep.fps, (gauge, rep.fps)
    assert len(series) >= 5 and last_t > float(series[0][0])
    assert p99 and float(p99[0]["value"][1]) * 1000 >= rep.latency["e2e"].p50_ms * 0.5


# -- headless Chromium opens the live view ----------------------------------------------------------
def _shot(url: str, path: Path) -> np.ndarray:
    import cv2

    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={path}",
                    "--window-size=800,600", "--virtual-time-budget=2000", "--hide-scrollbars", url],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=90)
    img = cv2.imread(str(path))
    assert img is not None, "chromium wrote no screenshot"
    return img


@pytest.mark.slow
def test_chromium_shows_the_live_view(tmp_path, backend, small_clip):
    if CHROMIUM is None:
        pytest.fail("chromium not installed: apt-get install chromium (scripts/test.sh does)")
    with serving(backend, [str(small_clip)], loop=0) as (pipe, url, res):
        wait_for(lambda: frames(pipe) > 5, 30, "frames")
        view_a = _shot(url + "/", tmp_path / "a.png")[20:180, 20:320].astype(int)  # the <img> (320×180 at ~12,12)
        assert view_a.std() > 10, "the view is blank"
        for k in range(3):  # on busy cores a headless screenshot can catch the same frame again: up to 3 more
            time.sleep(1.5)
            view_b = _shot(url + "/", tmp_path / f"b{k}.png")[20:180, 20:320].astype(int)
            assert view_b.std() > 10, "the view is blank"
            if np.abs(view_a - view_b).mean() > 1.0:
                break
    assert np.abs(view_a - view_b).mean() > 1.0, "the view did not change between the screenshots"


# -- the CLI and the Python API ---------------------------------------------------------------------
def test_cli_http_with_token_from_env(tiny_engine, small_clip):
    import os
    import signal
    import sys

    port = free_port(socket.SOCK_STREAM)
    env = dict(os.environ, OMP_NUM_THREADS="1", RTSEG_HTTP_TOKEN="envtok")
    p = subprocess.Popen([sys.executable, "-m", "rtseg", "stream", "--engine", str(tiny_engine), "--source",
                          str(small_clip), "--no-output", "--loop", "0", "--http", str(port), "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"

        def up():
            try:
                return get(url + "/readyz", token="envtok")[0] == 200
            except OSError:
                return False

        wait_for(lambda: up() or p.poll() is not None, 60, "the CLI's /readyz")
        assert get(url + "/metrics")[0] == 401
        assert "rtseg_frames_total" in get(url + "/metrics", token="envtok")[1]
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "http: serving" in err and json.loads(out)["frames"] > 0


def test_api_stream_http_kwarg(tiny_engine, small_clip):
    import rtseg

    port = free_port(socket.SOCK_STREAM)
    seen: dict = {}

    def poll():
        for _ in range(200):
            try:
                seen["code"], seen["text"] = get(f"http://127.0.0.1:{port}/metrics", timeout=1)
                return
            except OSError:
                time.sleep(0.05)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    seg = rtseg.load(tiny_engine, threads=1)
    rep = seg.stream(str(small_clip), None, http=f"127.0.0.1:{port}", loop=3, handle_signals=False)
    th.join(10)
    assert rep.frames > 0 and seen.get("code") == 200 and "rtseg_frames_total" in seen["text"]


def test_source_labels_redact_passwords_and_stay_unique():
    from types import SimpleNamespace as NS

    from rtseg.stream.http import source_labels

    st = [NS(src=NS(name="rtsp://u:pw@cam/x")), NS(src=NS(name="a.mp4")), NS(src=NS(name="a.mp4"))]
    assert source_labels(st) == ["rtsp://u:***@cam/x", "a.mp4#1", "a.mp4#2"]


def test_fps_meter_uses_a_window_of_at_least_five_seconds(monkeypatch):
    """``rtseg_fps``: since the start while the stream is younger than the window, then over the newest
    earlier reading at least :data:`FPS_WINDOW_S` old (a rate that follows the stream, not its average)."""
    from types import SimpleNamespace

    from rtseg.stream import http as h

    now = [100.0]
    monkeypatch.setattr(h.time, "perf_counter", lambda: now[0])
    st = SimpleNamespace(written=0)
    meter = h.FpsMeter(SimpleNamespace(states=[st], _t_start=98.0))
    st.written = 60  # 30 FPS for the first 2 s
    assert meter() == [pytest.approx(30.0)]
    for _ in range(10):  # then 10 FPS, read once a second
        now[0] += 1.0
        st.written += 10
        fps = meter()
    assert fps == [pytest.approx(10.0)]
    assert len(meter._marks) <= 8
