"""A model on an inference server as a backend: KServe v2 / Open Inference Protocol through ``tritonclient``
(Triton Inference Server, OpenVINO Model Server, KServe; docs/triton.md).

``--engine kserve://HOST:PORT/MODEL`` (gRPC) or ``--engine http://HOST:PORT/MODEL`` (HTTP/REST) opens
MODEL on the server for ``stream``, ``eval``, ``bench`` and the Python API. What the local engine folder's
``engine.json`` says comes from the server instead: the model's input/output names, dims and data types
from its metadata, and rtseg's record (classes, mean/std, resize mode, decision layer, precision) from the
model config's ``parameters`` written by ``rtseg export-triton`` (:mod:`rtseg.export.triton`).

Frames are resized and normalised here (``float32[N, 3, H, W]`` NCHW is what goes over the wire, as for
the local engine's :meth:`~rtseg.runtime.base.Backend.infer`), the server returns the logits
``float32[N, C, H, W]``. :meth:`KServeBackend.submit_u8` keeps up to ``in_flight`` requests on the wire
(one client per worker thread), so the stream pipeline decodes and encodes while the server computes,
and the server's dynamic batcher sees the requests of every client at once.

Failures: a server that does not answer is :class:`~rtseg.errors.BackendUnavailable` after ``retry_s``
of retries with backoff (a live stream then drops frames and keeps retrying; everything else stops with
that one line); a model that is not ready, has no rtseg record, or another input shape or data type is
one :class:`~rtseg.errors.RtsegError` line at open.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from ..errors import BackendUnavailable, RtsegError, require
from ..meta import ModelMeta
from .base import Backend, logits_to_mask

#: URL scheme → protocol; ``kserve://`` and ``grpc://`` are gRPC (Triton's :8001), ``http://`` HTTP (:8000)
SCHEMES = {"kserve": "grpc", "grpc": "grpc", "http": "http"}


@dataclass(frozen=True)
class KServeOptions:
    """How to talk to the server.

    Attributes:
        timeout_s: per-request timeout (s); a request over it counts as the server not answering.
        retry_s: how long one request is retried with backoff (0.1 s doubling to 2 s) while the server
            does not answer, before :class:`BackendUnavailable` (s).
        in_flight: requests kept on the wire at once by :meth:`KServeBackend.submit_u8` (≥ 1).
    """

    timeout_s: float = 10.0
    retry_s: float = 3.0
    in_flight: int = 2


def parse_url(url: str) -> tuple[str, str, str, dict[str, float]]:
    """``kserve://HOST:PORT/MODEL?in_flight=1&timeout_s=5`` → ``("grpc", "HOST:PORT", "MODEL", {"in_flight": 1.0,
    "timeout_s": 5.0})``: protocol, address, model name and the :class:`KServeOptions` fields of the query.

    Raises:
        RtsegError: no host, port or model name, or a query key that is not a :class:`KServeOptions` field
            or not a positive number.
    """
    u = urlsplit(url)
    model = u.path.strip("/")
    try:
        port = u.port
    except ValueError:
        port = None
    if not u.hostname or not port or not model or "/" in model:
        raise RtsegError(f"engine URL {url!r} must be kserve://HOST:PORT/MODEL (gRPC) or http://HOST:PORT/MODEL; "
                         f"e.g. kserve://127.0.0.1:8001/eunet")
    fields = KServeOptions.__dataclass_fields__
    query: dict[str, float] = {}
    for key, value in parse_qsl(u.query, keep_blank_values=True):
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if key not in fields or not number > 0 or number == float("inf"):
            raise RtsegError(f"engine URL option {key}={value!r} is not valid; use {', '.join(f'{k}=N' for k in fields)} "
                             f"with N > 0")
        query[key] = number
    return SCHEMES[u.scheme], f"{u.hostname}:{port}", model, query


class KServeBackend(Backend):
    """MODEL on a KServe v2 server (Triton) behind the :class:`~rtseg.runtime.base.Backend` contract.

    Attributes (besides the base class's):
        url: the engine URL; ``protocol`` ``"grpc"`` or ``"http"``; ``model`` the model name.
        in_flight: requests :meth:`submit_u8` keeps on the wire at once.
        served: the server's ``rtseg_engine`` record (backend, precision, versions, seal of the engine).
    """

    name = "kserve"

    def __init__(self, url: str, options: KServeOptions = KServeOptions()):
        self.protocol, self.address, self.model, _ = parse_url(url)
        self.url, self.options = url, options
        self.in_flight = max(1, int(options.in_flight))
        self._clients = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        config, metadata = self._open()
        model = _parameter(config, "rtseg_model", url)
        served = _parameter(config, "rtseg_engine", url)
        mm = ModelMeta.from_dict(model, f"{url} parameter rtseg_model")
        self.input_name, self.output_name, hw, c = _io(metadata, url)
        if hw != mm.input_hw:
            raise RtsegError(f"{url}: the model's input is {hw[1]}x{hw[0]} but its rtseg record says "
                             f"{mm.input_hw[1]}x{mm.input_hw[0]}; re-export it with 'rtseg export-triton'")
        self.served = served
        max_batch = int(config.get("max_batch_size") or 0) or 1
        super().__init__(precision=str(served.get("precision") or "fp32"), input_hw=hw, num_classes=c,
                         mean=tuple(mm.mean), std=tuple(mm.std), max_batch=max_batch, model_meta=mm,
                         meta={"backend": "kserve", "server": url, "served": served, "model": model})

    # -- connection ---------------------------------------------------------------------------------
    def _client(self):
        """This thread's client (tritonclient's clients are not shared across threads)."""
        c = getattr(self._clients, "c", None)
        if c is None:
            if self.protocol == "grpc":
                mod = require("tritonclient.grpc", "triton", "a kserve:// engine")
                c = mod.InferenceServerClient(url=self.address)
            else:
                mod = require("tritonclient.http", "triton", "an http:// engine")
                c = mod.InferenceServerClient(url=self.address, connection_timeout=self.options.timeout_s,
                                              network_timeout=self.options.timeout_s)
            self._clients.c = c
        return c

    def _open(self) -> tuple[dict, dict]:
        def check():
            c = self._client()
            if not c.is_server_live():
                raise BackendUnavailable(f"the inference server at {self.address} is not live")
            if not c.is_model_ready(self.model):
                raise RtsegError(f"model {self.model!r} is not ready on {self.address}; load it (Triton: put it in "
                                 f"the model repository, see 'rtseg export-triton') or check the name")
            config = c.get_model_config(self.model, **({"as_json": True} if self.protocol == "grpc" else {}))
            meta = c.get_model_metadata(self.model, **({"as_json": True} if self.protocol == "grpc" else {}))
            return config.get("config", config), meta

        return self._call(check, "connect to")

    def _call(self, fn: Callable[[], Any], what: str = "reach") -> Any:
        """``fn()`` retried with backoff while the server does not answer (≤ ``retry_s``)."""
        deadline, delay = time.monotonic() + self.options.retry_s, 0.1
        while True:
            try:
                return fn()
            except RtsegError:
                raise
            except Exception as e:  # noqa: BLE001 - tritonclient raises its own, socket and gevent errors
                err = self._classify(e, what)
                if not isinstance(err, BackendUnavailable) or time.monotonic() + delay > deadline:
                    raise err from None
                self._clients.c = None  # a fresh connection on the next try
                time.sleep(delay)
                delay = min(2.0, delay * 2)

    def _classify(self, e: Exception, what: str) -> RtsegError:
        status = str(getattr(e, "status", lambda: "")() or "")
        text = str(getattr(e, "message", lambda: "")() or e) if hasattr(e, "message") else str(e)
        low = text.lower()
        down = (isinstance(e, (OSError, TimeoutError, ConnectionError)) or "UNAVAILABLE" in status
                or "DEADLINE" in status or "CANCELLED" in status or "failed to connect" in low
                or "timed out" in low or "connection" in low
                # the model went away after it was opened: a server restarting and loading it again
                or (what == "run inference on" and ("unknown model" in low or "no available versions" in low
                                                   or "not ready" in low)))
        if down:
            return BackendUnavailable(f"cannot {what} the inference server at {self.address} ({text.strip()[:160] or type(e).__name__}); "
                                      f"start it or check --engine")
        return RtsegError(f"the inference server at {self.address} refused the request for {self.model!r}: "
                          f"{text.strip()[:200]}")

    # -- inference ----------------------------------------------------------------------------------
    def _request(self, batch: np.ndarray) -> np.ndarray:
        mod = require(f"tritonclient.{self.protocol}", "triton", "a kserve engine")

        def once():
            inp = mod.InferInput(self.input_name, list(batch.shape), "FP32")
            inp.set_data_from_numpy(batch)
            out = [mod.InferRequestedOutput(self.output_name)]
            kw = {"client_timeout": self.options.timeout_s} if self.protocol == "grpc" else {}
            res = self._client().infer(self.model, [inp], outputs=out, **kw)
            return res.as_numpy(self.output_name)

        y = self._call(once, "run inference on")
        if y is None or y.shape != (batch.shape[0], self.num_classes, *self.input_hw):
            raise RtsegError(f"{self.url} returned {None if y is None else y.shape} for a batch of {batch.shape[0]}; "
                             f"expected [N, {self.num_classes}, {self.input_hw[0]}, {self.input_hw[1]}] logits")
        return np.asarray(y, dtype=np.float32)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """``float32[N, 3, H, W]`` normalised → logits ``float32[N, C, H, W]`` from the server (one request).

        Raises:
            RtsegError: wrong input shape, or the server refused the request.
            BackendUnavailable: the server did not answer within ``retry_s``.
        """
        self.check_nchw(batch)
        return self._request(np.ascontiguousarray(batch, dtype=np.float32))

    def submit_u8(self, frames: np.ndarray, logits: bool = False) -> Callable[[], np.ndarray]:
        """Start one request for ``uint8[N, H, W, 3]`` RGB frames (copied now, so the caller may reuse the
        buffer); returns a function that waits for the logits ``float32[N, C, H, W]`` (``logits``) or the
        class mask ``uint8[N, H, W]``. Up to :attr:`in_flight` requests run at once."""
        x = self.normalize(frames)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.in_flight, thread_name_prefix="rtseg-kserve")
        fut: Future = self._pool.submit(self._request, x)
        return lambda: fut.result() if logits else logits_to_mask(fut.result())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def describe(self) -> str:
        h, w = self.input_hw
        return (f"kserve {self.model}@{self.address} ({self.served.get('backend')} {self.precision}) "
                f"{w}x{h} C={self.num_classes}")


def _parameter(config: dict, key: str, url: str) -> dict:
    raw = ((config.get("parameters") or {}).get(key) or {}).get("string_value")
    if not raw:
        raise RtsegError(f"{url} has no rtseg metadata (model config parameter {key!r}); serve a model written by "
                         f"'rtseg export-triton'")
    try:
        d = json.loads(raw)
    except json.JSONDecodeError:
        raise RtsegError(f"{url}: model config parameter {key!r} is not JSON; re-export it with 'rtseg export-triton'") from None
    if not isinstance(d, dict):
        raise RtsegError(f"{url}: model config parameter {key!r} is not a JSON object; re-export it with 'rtseg export-triton'")
    return d


def _io(metadata: dict, url: str) -> tuple[str, str, tuple[int, int], int]:
    """(input name, output name, (H, W), C) from the model metadata; FP32 ``[-1, 3, H, W]`` → ``[-1, C, H, W]``."""
    ins, outs = metadata.get("inputs") or [], metadata.get("outputs") or []
    if len(ins) != 1 or len(outs) != 1:
        raise RtsegError(f"{url} has {len(ins)} inputs and {len(outs)} outputs; rtseg serves one image input and one "
                         f"logits output — export the model with 'rtseg export-triton'")
    i, o = ins[0], outs[0]
    shape_i = [int(d) for d in i.get("shape", [])]
    shape_o = [int(d) for d in o.get("shape", [])]
    if i.get("datatype") != "FP32" or len(shape_i) != 4 or shape_i[1] != 3 or o.get("datatype") != "FP32" or len(shape_o) != 4:
        raise RtsegError(f"{url}: input {i.get('name')} is {i.get('datatype')} {shape_i} and output {o.get('name')} "
                         f"{o.get('datatype')} {shape_o}; rtseg needs FP32 [N, 3, H, W] → FP32 [N, C, H, W]")
    if shape_o[2:] != shape_i[2:]:
        raise RtsegError(f"{url}: output {shape_o} is not at the input size {shape_i[2:]}; rtseg needs logits at the input size")
    return i["name"], o["name"], (shape_i[2], shape_i[3]), shape_o[1]


def open_server(url: str, num_threads: int | None = None, **kwargs) -> KServeBackend:
    """Open ``url`` (``kserve://HOST:PORT/MODEL`` or ``http://HOST:PORT/MODEL``, options in its query);
    ``num_threads`` is ignored (the server owns its threads), ``kwargs`` are :class:`KServeOptions` fields
    (the URL's query wins).

    Raises:
        RtsegError: a malformed URL, a model that is not ready or not rtseg's (see :class:`KServeBackend`).
        BackendUnavailable: the server does not answer.
    """
    fields = KServeOptions.__dataclass_fields__
    chosen = {k: v for k, v in kwargs.items() if k in fields} | parse_url(url)[3]
    if "in_flight" in chosen:
        chosen["in_flight"] = max(1, int(chosen["in_flight"]))
    return KServeBackend(url, KServeOptions(**chosen))


__all__ = ["KServeBackend", "KServeOptions", "SCHEMES", "open_server", "parse_url"]
