"""rtseg's Python API: load a model, predict on images and frames, stream, evaluate, build engines,
bring your own model, train — the same library the ``rtseg`` commands are a thin layer over.

Example (a model folder from a PyTorch module, its OpenVINO engine, masks and a stream)::

    import rtseg
    folder = rtseg.export_model(my_module, "meta.yaml", "models/unet")   # or rtseg.import_onnx("unet.onnx", ...)
    engine = rtseg.build_engine(folder, "openvino", "fp32", "engines/unet/openvino-fp32")
    seg = rtseg.load(engine, threads=2)
    mask = seg.predict(rgb_image)                      # uint8[h, w] at the image's own resolution
    report = seg.stream("clip.mp4", "overlay.mp4")     # StreamReport: frames, FPS, latency p50/p99
    metrics = seg.evaluate("data/kvasir-seg-256", split="test")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from .errors import RtsegError
from .runtime.registry import DEFAULT_BACKEND, DEFAULT_PRECISION


class Segmenter:
    """A loaded model: an engine folder, a checkpoint (PyTorch reference), a model folder (ONNX Runtime
    fp32) or rtseg's default model; wraps a :class:`rtseg.runtime.base.Backend`.

    Attributes:
        backend: the backend (``infer(float32[N, 3, H, W]) -> float32[N, C, H, W]`` logits).
        input_hw: (H, W) network input in pixels; num_classes: C (1 = binary); class_names: from ``model.json``.
    """

    def __init__(self, backend):
        self.backend = backend
        self.input_hw = backend.input_hw
        self.num_classes = backend.num_classes
        self.class_names = list(backend.model_info.get("class_names") or [])
        self._resize = backend.resize

    def __repr__(self) -> str:
        return f"Segmenter({self.backend.describe()}, folder={self.backend.folder})"

    def predict(self, images, output: str = "mask", batch_size: int = 8, raw: bool = False):
        """Segment RGB images at their own resolution.

        Args:
            images: one ``uint8[h, w, 3]`` RGB image, a batch ``uint8[N, h, w, 3]``, or a list of images
                of any sizes (video frames decoded to RGB, ``cv2.imread`` + ``cv2.cvtColor(..., COLOR_BGR2RGB)``).
            output: ``"mask"`` → ``uint8[h, w]`` class map (binary: 1 = foreground; all zero where the
                model's presence decision, :mod:`rtseg.decision`, says the image holds no object);
                ``"logits"`` → ``float32[C, h, w]`` raw logits resized bilinearly to the image.
            batch_size: images per inference call (capped by the engine's ``max_batch``).
            raw: masks straight from the logits (``logit > 0``), without the presence decision.

        Returns:
            one result for one image; for a batch array an array ``[N, ...]``; for a list a list.

        Raises:
            RtsegError: ``images`` not one uint8 RGB image, a batch or a list of them; no image; an image
                of 0 pixels; ``batch_size`` not an integer in 1..(memory limit); an unknown ``output``.
        """
        from .data.transforms import Preprocessor
        from .decision import resolve_presence
        from .limits import check_batch

        if output not in ("mask", "logits"):
            raise RtsegError(f"output={output!r} is not 'mask' or 'logits'; pass one of them")
        check_batch(batch_size, self.input_hw, "batch_size")
        single, seq = _image_list(images)
        bs = min(batch_size, self.backend.max_batch) if self.backend.max_batch else batch_size
        pre, h, w = Preprocessor(self.input_hw, self._resize), *self.input_hw
        rule = None if output == "logits" else resolve_presence(self.backend.model_info, self.num_classes,
                                                                raw=raw)
        out: list[np.ndarray] = []
        for i in range(0, len(seq), bs):
            chunk = seq[i:i + bs]
            batch = np.empty((len(chunk), h, w, 3), np.uint8)
            geoms = [pre(im, out=batch[j])[1] for j, im in enumerate(chunk)]
            logits = self.backend.infer_u8(batch)
            present = rule.present(logits) if rule is not None else np.ones(len(chunk), bool)
            out += [_to_image(z, g, output) if ok else np.zeros(g.src_hw, np.uint8)
                    for z, g, ok in zip(logits, geoms, present)]
        if single:
            return out[0]
        if isinstance(images, np.ndarray):
            return np.stack(out)
        return out

    def stream(self, sources: str | Sequence[str], outputs: str | Sequence[str] | None = None, options=None, **kwargs):
        """Run the stream pipeline (as ``rtseg stream``) and return its report.

        Args:
            sources: one source or a list (video files, ``cameraN``, URLs, image folders, ``lavfi:...``).
            outputs: one output or a list (``.mp4``/``.mkv`` files, URLs, folders, ``null``); ``None``: none.
            options: :class:`rtseg.stream.StreamOptions`; or its fields as keyword arguments
                (e.g. ``batch_size=4, max_frames=100``).

        Returns:
            :class:`rtseg.stream.StreamReport` (``frames``, ``fps``, per-stage latency p50/p99 in ms, drops).

        Raises:
            RtsegError: as :func:`rtseg.stream.run_stream`; no source; a source or output that is not a
                string or path; both ``options`` and keyword arguments; an unknown keyword option.
        """
        from dataclasses import fields

        from .stream import StreamOptions, run_stream

        if options is not None and kwargs:
            raise RtsegError("pass either options=StreamOptions(...) or keyword options, not both")
        unknown = sorted(set(kwargs) - {f.name for f in fields(StreamOptions)})
        if unknown:
            raise RtsegError(f"stream() has no option {unknown[0]!r}; pass fields of rtseg.stream.StreamOptions "
                             f"(e.g. batch_size=4, max_frames=100)")
        if options is not None and not isinstance(options, StreamOptions):
            raise RtsegError(f"options must be a rtseg.stream.StreamOptions, not {type(options).__name__}")
        opts = options or StreamOptions(**kwargs)
        srcs, outs = _paths(sources, "sources"), ([] if outputs is None else _paths(outputs, "outputs"))
        if not srcs:
            raise RtsegError("stream() got no source; pass a video file, camera, URL, image folder or 'lavfi:...'")
        return run_stream(self.backend, [str(s) for s in srcs], [str(o) for o in outs], opts, log=lambda m: None)

    def evaluate(self, data: str | Path | None = None, split: str | None = None, data_format: str | None = None,
                 batch_size: int = 8, limit: int = 0, raw: bool = False) -> dict[str, Any]:
        """§5 metrics (as ``rtseg eval``) on a labelled folder.

        Args:
            data: labelled folder (default: the model's training data); split: train/val/test/all
                (default: test of the training data, all of another folder); data_format: layout name.
            batch_size: images per call; limit: at most this many images (0 = all).
            raw: score the network's own masks (default: with the model's presence decision, as shown).

        Returns:
            binary: ``{"per_image": {...}, "global": {...}, "n_images", "ms_per_image"}`` (Dice, IoU, ...);
            multi-class: ``{"miou", "per_class_iou", "mean_dice", "pixel_accuracy", ...}``.

        Raises:
            RtsegError: ``data`` not a folder path, no labelled data, unknown split or layout,
                ``batch_size`` not an integer in 1..(memory limit), ``limit`` not an integer ≥ 0.
        """
        from .evaluation import evaluate_backend, resolve_samples
        from .limits import check_batch

        if data is not None and not isinstance(data, (str, Path)):
            raise RtsegError(f"data must be a folder path (str or pathlib.Path), not {type(data).__name__}")
        check_batch(batch_size, self.input_hw, "batch_size")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise RtsegError(f"limit={limit!r} must be an integer ≥ 0 (0 = every image)")

        samples, reader, _ = resolve_samples(str(data) if data is not None else None, split,
                                             self.backend.model_info, data_format)
        bs = min(batch_size, self.backend.max_batch) if self.backend.max_batch else batch_size
        return evaluate_backend(self.backend, samples, batch_size=bs, limit=limit, reader=reader,
                                presence=None if raw else "model")

    def close(self) -> None:
        """Release the engine."""
        self.backend.close()


def _image_list(images) -> tuple[bool, list[np.ndarray]]:
    """``(single, [uint8[h, w, 3], ...])`` of :meth:`Segmenter.predict`'s argument.

    Raises:
        RtsegError: not an image, a batch or a sequence of images; no image; an image that is not
            uint8 RGB ``[h, w, 3]`` or has 0 pixels (each one line naming the image).
    """
    hint = "pass uint8 RGB images [h, w, 3] (cv2.cvtColor(img, cv2.COLOR_BGR2RGB), dtype uint8)"
    if isinstance(images, np.ndarray):
        if images.ndim not in (3, 4):
            raise RtsegError(f"predict takes an image [h, w, 3] or a batch [N, h, w, 3]; got an array of shape "
                             f"{tuple(images.shape)} — {hint}")
        single, seq = images.ndim == 3, ([images] if images.ndim == 3 else list(images))
    elif isinstance(images, (list, tuple)):
        single, seq = False, list(images)
    else:
        raise RtsegError(f"predict takes an image, a batch array or a list of images, not {type(images).__name__}; {hint}")
    if not seq:
        raise RtsegError(f"predict got an empty batch (no image); {hint}")
    for i, im in enumerate(seq):
        if not isinstance(im, np.ndarray) or im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            got = f"{im.dtype} {im.shape}" if isinstance(im, np.ndarray) else type(im).__name__
            raise RtsegError(f"predict takes uint8 RGB images [h, w, 3]; got {got} — convert with "
                             f"cv2.cvtColor(img, cv2.COLOR_BGR2RGB) and keep uint8")
        if im.shape[0] == 0 or im.shape[1] == 0:
            raise RtsegError(f"image {i} is {im.shape[1]}x{im.shape[0]} pixels (empty); pass images of at least 1x1 pixel")
    return single, seq


def _paths(v, what: str) -> list[str]:
    """One path or a list of them → ``[str]``.

    Raises:
        RtsegError: an entry that is not a str or path.
    """
    items = [v] if isinstance(v, (str, Path)) else (list(v) if isinstance(v, (list, tuple)) else [v])
    bad = [x for x in items if not isinstance(x, (str, Path))]
    if bad:
        raise RtsegError(f"{what} must be a path or URL (str) or a list of them, not {type(bad[0]).__name__}")
    return [str(x) for x in items]


def _to_image(z: np.ndarray, geom, output: str) -> np.ndarray:
    """Logits ``float32[C, H, W]`` at the network size → mask ``uint8[h, w]`` or logits ``float32[C, h, w]`` at the image's."""
    y0, y1, x0, x1 = geom.box
    h, w = geom.src_hw
    zz = np.ascontiguousarray(z[:, y0:y1, x0:x1])
    if zz.shape[1:] != (h, w):
        zz = np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in zz])
    if output == "logits":
        return zz.astype(np.float32, copy=False)
    return (zz[0] > 0).astype(np.uint8) if zz.shape[0] == 1 else zz.argmax(0).astype(np.uint8)


def load(path: str | Path | None = None, backend: str | None = None, threads: int | None = None,
         allow_failed_gate: bool = False, allow_unsealed: bool = False) -> Segmenter:
    """Open an engine folder, a checkpoint, a model folder, or (``path=None``) rtseg's default polyp model.

    Args:
        path: engine folder (``engine.json``), checkpoint folder (PyTorch reference) or model folder
            (:func:`import_onnx` / :func:`export_model`; ONNX Runtime fp32); ``None``: the default model
            (its OpenVINO engine is built into the cache on first use).
        backend: refuse a folder built for another backend; threads: inference threads.
        allow_failed_gate: open an engine that failed its accuracy gate.
        allow_unsealed: open an engine whose ``engine.json`` has no seal (built by an older rtseg).

    Raises:
        RtsegError: ``path`` not a path, ``backend`` not a backend name, or as :func:`rtseg.runtime.load_engine`.
    """
    from .limits import check_threads

    check_threads(threads, "threads")
    if backend is not None and not isinstance(backend, str):
        raise RtsegError(f"backend must be a backend name (str, e.g. 'openvino'), not {type(backend).__name__}")
    if path is None:
        from .defaults import load_default_engine

        return Segmenter(load_default_engine(num_threads=threads))
    from .runtime import load_engine

    return Segmenter(load_engine(path, backend=backend, num_threads=threads, allow_failed_gate=allow_failed_gate,
                                 allow_unsealed=allow_unsealed))


def build_engine(checkpoint: str | Path, backend: str = DEFAULT_BACKEND, precision: str = DEFAULT_PRECISION, out: str | Path | None = None,
                 options=None, log=None) -> Path:
    """Build an engine folder (``rtseg build-engine``) from a checkpoint or a model folder.

    The same function as :func:`rtseg.export.build.build_engine` (``precision="auto"`` included: every
    precision the backend runs here, the fastest that passes the accuracy gate kept), with its arguments'
    types checked. ``options``: :class:`rtseg.export.build.BuildOptions`.

    Returns:
        the engine folder.

    Raises:
        RtsegError: ``checkpoint``/``out`` not a path, or as :func:`rtseg.export.build.build_engine`.
    """
    from .export.build import build_engine as _build

    for name, v in (("checkpoint", checkpoint), ("out", out)):
        if not isinstance(v, (str, Path)) and not (name == "out" and v is None):
            raise RtsegError(f"{name} must be a folder path (str or pathlib.Path), not {type(v).__name__}")

    return _build(checkpoint, backend, precision, out, options, log)


def train(config, log=None) -> dict[str, Any]:
    """Train one of rtseg's networks (``rtseg train``): ``config`` is a
    :class:`rtseg.training.loop.TrainConfig` or its dict. Returns the summary (``OUT/summary.json``).

    Raises:
        RtsegError: ``config`` not a TrainConfig or dict, unknown settings, bad data folder/format,
            unknown model/loss/optimizer.
    """
    from .training.loop import TrainConfig
    from .training.loop import train as _train

    if not isinstance(config, (TrainConfig, dict)):
        raise RtsegError(f"config must be a TrainConfig or a dict of its fields, not {type(config).__name__}")
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config))
    return _train(cfg, log=log or (lambda *a, **k: None))


__all__ = ["Segmenter", "build_engine", "load", "train"]
