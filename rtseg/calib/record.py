"""The calibration record (``calib.json``) checked as a typed object (pydantic).

Only the fields that later steps read are typed — the checkpoint it belongs to (``--qdq-from``), the
preprocessing and the image list (NNCF re-reads the images) — the rest is kept as written. Every
violation is one :class:`~rtseg.errors.RtsegError` line naming the file, the field and the fix.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import RtsegError
from ..meta import MAX_INPUT_SIDE

#: The files of a calibration folder and the record's format.
CALIB_FORMAT = "rtseg-calib/1"
CALIB_JSON = "calib.json"  # the record
FP32_ONNX = "model.onnx"  # the FP32 ONNX it was calibrated from
QDQ_ONNX = "model.qdq.onnx"  # the INT8 Q/DQ ONNX every backend builds from
TRT_CACHE = "calib.cache"  # TensorRT <= 10 calibration cache (on request)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class CalibCheckpoint(_Open):
    """``checkpoint``: the checkpoint (or model folder) the Q/DQ ONNX was calibrated for."""

    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class CalibPreprocessing(_Open):
    """``preprocessing``: how the images were turned into network inputs (as the runtime does)."""

    input_hw: tuple[int, int]
    resize: Literal["stretch", "letterbox"]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @field_validator("input_hw")
    @classmethod
    def _sides(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not all(1 <= s <= MAX_INPUT_SIDE for s in v):
            raise ValueError(f"sides must be in 1..{MAX_INPUT_SIDE}")
        return v

    @field_validator("std")
    @classmethod
    def _positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(s > 0 for s in v):
            raise ValueError("must be positive")
        return v


class CalibImage(_Open):
    """One calibration image: ``file`` relative to ``source.root`` (never outside it) and its SHA-256."""

    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("file")
    @classmethod
    def _inside(cls, v: str) -> str:
        p = PurePosixPath(v.replace("\\", "/"))
        if not v or p.is_absolute() or ".." in p.parts:
            raise ValueError("must be a path inside the calibration data folder")
        return v


class CalibRecord(_Open):
    """``calib.json`` (docs/internals.md "Calibration folder")."""

    format: Literal["rtseg-calib/1"]
    checkpoint: CalibCheckpoint
    method: Literal["minmax", "entropy", "percentile"]
    seed: int
    num_images: int = Field(ge=1)
    images: list[CalibImage]
    preprocessing: CalibPreprocessing
    qdq_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


def check_calib_record(rec: object, source: str) -> dict:
    """Check a ``calib.json`` dict; return it unchanged.

    Raises:
        RtsegError: not an object, another format, or a field of the wrong type or out of bounds
            (one line: file, field, fix).
    """
    if not isinstance(rec, dict):
        raise RtsegError(f"{source} must be a JSON object, not {type(rec).__name__}; re-run 'rtseg calibrate'")
    try:
        CalibRecord.model_validate(rec)
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"]) or "(record)"
        raise RtsegError(f"{source}: '{key}' {err['msg'].lower()} (got {err.get('input')!r:.60}); "
                         f"re-run 'rtseg calibrate' to write a new record") from None
    return rec


__all__ = ["CalibRecord", "check_calib_record"]
