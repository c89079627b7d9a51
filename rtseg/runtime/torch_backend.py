"""PyTorch eager reference backend (the checkpoint itself, no engine).

Used by ``rtseg eval``/``bench``/``stream`` when given a checkpoint folder instead of an engine
folder, and as the reference the engines are compared with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_checkpoint
from ..meta import ModelMeta
from .base import Backend


class TorchBackend(Backend):
    """Runs a checkpoint with PyTorch eager on the CPU (fp32, or bf16 autocast).

    ``infer(float32[N, 3, H, W]) -> float32[N, C, H, W]`` logits.
    """

    name = "torch"

    def __init__(self, model: torch.nn.Module, meta: ModelMeta, precision: str = "fp32",
                 folder: Path | None = None, channels_last: bool = False):
        super().__init__(precision=precision, input_hw=meta.input_hw, num_classes=meta.num_classes,
                         mean=tuple(meta.mean), std=tuple(meta.std), meta={"model": meta.to_dict()}, folder=folder, model_meta=meta)
        self.model = model.eval()
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    @classmethod
    def from_checkpoint(cls, path: str | Path, precision: str = "fp32", channels_last: bool = False) -> "TorchBackend":
        """Load a checkpoint folder (``model.safetensors`` + ``model.json``)."""
        model, meta = load_checkpoint(path)
        return cls(model, meta, precision=precision, folder=Path(path), channels_last=channels_last)

    @torch.inference_mode()
    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.check_nchw(batch)
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = self.model(x)
        else:
            y = self.model(x)
        return y.float().numpy()
