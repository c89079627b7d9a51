"""The one interface every inference backend exposes (docs/architecture.md, "Runtime interface").

A backend is loaded from an engine folder (``engines/<model>/<backend>-<precision>/``, holding
``engine.json``) and runs batches of preprocessed images:

* :meth:`Backend.infer` — ``float32[N, 3, H, W]`` normalised RGB (NCHW) → logits
  ``float32[N, C, H, W]``. This is the reference contract every backend honours.
* :meth:`Backend.infer_u8` — ``uint8[N, H, W, 3]`` RGB (NHWC, already resized/letterboxed to the
  engine's H×W) → logits ``float32[N, C, H, W]``. Backends that can fold normalisation and the
  NHWC→NCHW layout change into the compiled graph (OpenVINO's PrePostProcessor, TensorRT) override
  it; the default does it with NumPy and calls :meth:`infer`.
* :meth:`Backend.predict_u8` — like ``infer_u8`` but returns the class mask ``uint8[N, H, W]``
  (binary: ``sigmoid(logit) > 0.5`` ⇔ ``logit > 0``; multi-class: argmax).

H and W are fixed per engine (``input_hw``); the batch is dynamic up to ``max_batch``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RtsegError
from ..meta import ENGINE_FORMAT, EngineMeta, ModelMeta


class Backend(ABC):
    """Base class of the inference backends.

    Attributes:
        name: backend name (``"openvino"``, ``"onnxruntime"``, ``"tensorrt"``, ``"torch"``).
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"int8"``.
        input_hw: (H, W) in pixels of the network input.
        num_classes: C, channels of the logits.
        mean, std: per-channel normalisation of RGB scaled to [0, 1].
        max_batch: largest batch accepted (``None`` = unbounded).
        meta: the engine folder's ``engine.json`` as written (a dict; ``{"model": ...}`` for the torch
            and model-folder references), for records and reports.
        engine_meta: the same ``engine.json`` typed and checked (:class:`rtseg.meta.EngineMeta`), or
            ``None`` for a backend without an engine folder (torch reference, model folder, toy backends).
        model_meta: the model's ``model.json`` typed and checked (:class:`rtseg.meta.ModelMeta`), or
            ``None`` for a backend built by hand without one.
    """

    name: str = "base"
    #: requests :meth:`submit_u8` keeps running at once (a local engine: 1, the call runs at once; an
    #: inference server: several, so that the network round trip overlaps decode and encode)
    in_flight: int = 1

    def __init__(self, *, precision: str, input_hw: tuple[int, int], num_classes: int,
                 mean: tuple[float, float, float], std: tuple[float, float, float],
                 meta: dict[str, Any] | None = None, folder: Path | None = None, max_batch: int | None = None,
                 engine_meta: EngineMeta | None = None, model_meta: ModelMeta | None = None):
        self.precision = precision
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.num_classes = int(num_classes)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.meta = dict(meta or {})
        if engine_meta is None and self.meta.get("format") == ENGINE_FORMAT:
            engine_meta = EngineMeta.from_dict(self.meta, Path(folder or ".") / "engine.json")
        self.engine_meta = engine_meta
        self.model_meta = model_meta if model_meta is not None else (engine_meta.model_meta if engine_meta else None)
        self.folder = folder
        self.max_batch = max_batch
        # (x/255 - mean)/std == x*scale + shift, folded once
        self._scale = (1.0 / (255.0 * self.std)).astype(np.float32)
        self._shift = (-self.mean / self.std).astype(np.float32)

    @property
    def model_info(self) -> dict[str, Any]:
        """The model's ``model.json`` fields as a dict: :attr:`model_meta`'s, or for a backend built by hand
        without one, ``meta["model"]`` as given (possibly partial: readers use ``.get`` with a default)."""
        if self.model_meta is not None:
            return self.model_meta.to_dict()
        return dict(self.meta.get("model") or {})

    @property
    def resize(self) -> str:
        """How frames are fitted to :attr:`input_hw`: ``"stretch"`` or ``"letterbox"`` (model.json ``resize``)."""
        return self.model_meta.resize if self.model_meta is not None else self.model_info.get("resize", "stretch")

    # -- the contract ---------------------------------------------------------------------------
    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run the network: ``float32[N, 3, H, W]`` normalised → logits ``float32[N, C, H, W]``.

        Raises:
            RtsegError: wrong input shape/dtype for this engine.
        """

    def infer_u8(self, frames: np.ndarray) -> np.ndarray:
        """``uint8[N, H, W, 3]`` RGB at the engine's H×W → logits ``float32[N, C, H, W]``."""
        return self.infer(self.normalize(frames))

    def predict_u8(self, frames: np.ndarray) -> np.ndarray:
        """``uint8[N, H, W, 3]`` RGB → class mask ``uint8[N, H, W]`` (binary: 1 = foreground)."""
        return logits_to_mask(self.infer_u8(frames))

    def submit_u8(self, frames: np.ndarray, logits: bool = False):
        """Start inference on ``uint8[N, H, W, 3]`` RGB frames and return a function that waits for the
        result: logits ``float32[N, C, H, W]`` (``logits``) or the class mask ``uint8[N, H, W]``. The
        caller may reuse ``frames`` once this returns. Here it runs at once; a backend with
        :attr:`in_flight` > 1 (:class:`rtseg.runtime.kserve.KServeBackend`) overlaps requests."""
        out = self.infer_u8(frames) if logits else self.predict_u8(frames)
        return lambda: out

    def close(self) -> None:
        """Release the engine (optional)."""

    # -- helpers --------------------------------------------------------------------------------
    def normalize(self, frames: np.ndarray) -> np.ndarray:
        """``uint8[N, H, W, 3]`` RGB → ``float32[N, 3, H, W]`` normalised (NumPy reference path)."""
        self.check_u8(frames)
        x = frames.astype(np.float32) * self._scale + self._shift
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def check_u8(self, frames: np.ndarray) -> None:
        """Raise :class:`RtsegError` unless ``frames`` is ``uint8[N, H, W, 3]`` at the engine size."""
        h, w = self.input_hw
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (h, w, 3):
            raise RtsegError(
                f"engine expects uint8 frames [N, {h}, {w}, 3]; got {frames.dtype} {tuple(frames.shape)} "
                f"(resize or letterbox frames to {w}x{h} first, e.g. with rtseg.data.transforms.Preprocessor)")
        self._check_batch(frames.shape[0])

    def check_nchw(self, batch: np.ndarray) -> None:
        """Raise :class:`RtsegError` unless ``batch`` is ``float32[N, 3, H, W]`` at the engine size."""
        h, w = self.input_hw
        if batch.ndim != 4 or batch.shape[1:] != (3, h, w):
            raise RtsegError(
                f"engine expects input [N, 3, {h}, {w}]; got {tuple(batch.shape)} "
                f"(this engine was built for {w}x{h}; rebuild with --img-size to change it)")
        self._check_batch(batch.shape[0])

    def _check_batch(self, n: int) -> None:
        if n < 1 or (self.max_batch is not None and n > self.max_batch):
            raise RtsegError(f"batch of {n} is outside this engine's range 1..{self.max_batch}; "
                             f"rebuild with a larger --max-batch or send smaller batches")

    def describe(self) -> str:
        """One line: backend, precision, input size."""
        h, w = self.input_hw
        return f"{self.name} {self.precision} {w}x{h} C={self.num_classes}"


def model_info_of(backend: Any) -> dict[str, Any]:
    """:attr:`Backend.model_info` of ``backend``, also for a duck-typed wrapper that is not a
    :class:`Backend` (a ``meta`` dict with a ``"model"`` entry, or nothing: ``{}``)."""
    info = getattr(backend, "model_info", None)
    if isinstance(info, dict):
        return info
    meta = getattr(backend, "meta", None)
    return dict(meta.get("model") or {}) if isinstance(meta, dict) else {}


def resize_of(backend: Any) -> str:
    """:attr:`Backend.resize` of ``backend`` (``"stretch"`` for a wrapper that does not say)."""
    r = getattr(backend, "resize", None)
    return r if isinstance(r, str) else model_info_of(backend).get("resize", "stretch")


def logits_to_mask(logits: np.ndarray) -> np.ndarray:
    """Logits ``float32[N, C, H, W]`` → mask ``uint8[N, H, W]``.

    C = 1: ``sigmoid(z) > 0.5``, computed as ``z > 0`` (docs/networks.md §5); C > 1: argmax.
    """
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).astype(np.uint8)
    return logits.argmax(axis=1).astype(np.uint8)


def check_engine_header(folder: Path, meta: dict, backend: str, label: str, here_version: str,
                        check_version: bool = True) -> str:
    """Check ``engine.json``'s backend, format and backend version against the running one.

    Returns the rebuild hint used in the messages.

    Raises:
        RtsegError: another backend, another engine format, or another backend version.
    """
    rebuild = f"rebuild it with 'rtseg build-engine --checkpoint CKPT --backend {backend} --precision {meta.get('precision', 'fp32')}'"
    if meta.get("backend") != backend:
        raise RtsegError(f"{folder} is a {meta.get('backend')} engine, not {backend}; {rebuild}")
    if meta.get("format") != ENGINE_FORMAT:
        raise RtsegError(f"{folder}/engine.json has format {meta.get('format')!r}, expected {ENGINE_FORMAT!r}; {rebuild}")
    if check_version and meta.get("backend_version") != here_version:
        raise RtsegError(f"{folder} was built with {label} {meta.get('backend_version')} but {here_version} is installed; {rebuild}")
    return rebuild


def check_io_shapes(folder: Path, meta: dict, input_shape, output_shape, rebuild: str) -> None:
    """Cross-check ``engine.json``'s ``input.shape``/``output.shape`` against the engine file's own
    (dimensions the engine leaves dynamic — ``None``, ``-1`` or a name — are not compared; the batch
    never is). An edited ``engine.json`` (another input size, a channel count that is not the
    engine's) would otherwise feed wrong-sized batches or score the logits as another task.

    Raises:
        RtsegError: a fixed dimension differs (one line naming the field, both shapes and the fix).
    """
    for key, real in (("input", input_shape), ("output", output_shape)):
        want = (meta.get(key) or {}).get("shape") or []
        real = list(real or [])
        if len(real) != len(want):
            raise RtsegError(f"{folder}/engine.json: '{key}.shape' is {want} but the engine file's {key} has rank "
                             f"{len(real)}; the file was edited or belongs to another engine — {rebuild}")
        for i, (w, r) in enumerate(zip(want, real)):
            if i and isinstance(r, int) and r > 0 and w != r:
                raise RtsegError(f"{folder}/engine.json: '{key}.shape' is {want} but the engine file's is {real}; "
                                 f"the file was edited or belongs to another engine — {rebuild}")


def engine_settings(folder: Path, meta: dict) -> dict[str, Any]:
    """:class:`Backend` constructor arguments (precision, input size, classes, normalisation, batch
    limit) read from an ``engine.json`` dict, checked by :meth:`rtseg.meta.EngineMeta.from_dict`.

    Raises:
        RtsegError: a field of the wrong shape (one line naming it and the fix).
    """
    em = EngineMeta.from_dict(meta, Path(folder) / "engine.json")
    mm = em.model
    return {"precision": em.precision, "input_hw": em.input_hw, "num_classes": em.num_classes,
            "mean": tuple(mm.get("mean", (0.485, 0.456, 0.406))), "std": tuple(mm.get("std", (0.229, 0.224, 0.225))),
            "meta": meta, "folder": Path(folder), "max_batch": em.max_batch, "engine_meta": em}
