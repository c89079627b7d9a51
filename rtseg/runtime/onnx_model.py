"""Reference backend of an imported model folder: its ``model.onnx`` run by ONNX Runtime in FP32.

A model folder (``model.onnx`` + ``model.json``, :mod:`rtseg.byom`) plays the role a checkpoint plays
for rtseg's own networks: ``load_engine(model_folder)`` opens it with this backend, as it opens a
checkpoint with the PyTorch reference (:mod:`rtseg.runtime.torch_backend`). ``rtseg eval``, ``stream``
and ``bench`` run it directly; ``build-engine`` compiles it into engines and uses it as the parity
and accuracy-gate reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..checkpoint import MODEL_ONNX, is_model_folder, load_meta
from ..errors import RtsegError
from .base import Backend


class OnnxModelBackend(Backend):
    """``model.onnx`` of a model folder in ONNX Runtime (CPU, fp32, all graph optimisations).

    ``infer(float32[N, 3, H, W]) -> float32[N, C, H, W]`` logits (the folder's graph already follows
    rtseg's contract: NCHW normalised RGB in, logits-like out). ``max_batch`` is ``None`` for a dynamic
    batch and ``1`` for a graph whose batch is fixed at 1.

    Raises:
        RtsegError: not a model folder, or ONNX Runtime cannot load the graph.
    """

    name = "onnx"

    def __init__(self, folder: str | Path, num_threads: int | None = None):
        from .onnxruntime_backend import make_session

        folder = Path(folder)
        if not is_model_folder(folder):
            raise RtsegError(f"{folder} is not a model folder ({MODEL_ONNX} + model.json); create one with 'rtseg import-onnx'")
        meta = load_meta(folder)
        fixed = (meta.source or {}).get("batch") == "fixed"
        super().__init__(precision="fp32", input_hw=meta.input_hw, num_classes=meta.num_classes, mean=tuple(meta.mean),
                         std=tuple(meta.std), meta={"model": meta.to_dict(), "checkpoint": {"path": str(folder.resolve())}},
                         folder=folder, max_batch=1 if fixed else None, model_meta=meta)
        try:
            self._session = make_session(folder / MODEL_ONNX, num_threads, level="all")
        except RtsegError:  # the external-data rule's own line
            raise
        except Exception as e:  # onnxruntime raises its own exception types
            raise RtsegError(f"ONNX Runtime cannot load {folder / MODEL_ONNX} ({str(e).strip().splitlines()[0]}); "
                             f"re-import the model with 'rtseg import-onnx'") from None
        self._in = self._session.get_inputs()[0].name
        self._out = self._session.get_outputs()[0].name

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """``float32[N, 3, H, W]`` normalised RGB → logits ``float32[N, C, H, W]``.

        Raises:
            RtsegError: wrong shape for this model.
        """
        self.check_nchw(batch)
        return self._session.run([self._out], {self._in: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def close(self) -> None:
        self._session = None
