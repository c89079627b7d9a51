"""Bounds on user-controlled sizes, from this machine's memory and cores (issue 26, "unbounded").

A typo (``--batch-size 100000``, ``--threads 2000``) must be one line naming the limit, not gigabytes
allocated or thousands of threads started before anything fails.
"""

from __future__ import annotations

import functools
import numbers
import os
import platform

from .errors import RtsegError

#: working set of one frame in a batch, per pixel of the network input (bytes): the uint8 input, the
#: float32 normalised input and logits, and the activations of rtseg's networks (measured ≤ 0.2 KiB)
BYTES_PER_PIXEL = 256
#: inference threads allowed per core (oversubscription beyond this only slows a run down)
THREADS_PER_CORE = 8


@functools.lru_cache(maxsize=1)
def cpu_info() -> tuple[str, frozenset[str]]:
    """(CPU model name, ISA flags) of this machine: the one reader of ``/proc/cpuinfo`` (Linux; ``flags``
    or ARM's ``Features``), :mod:`platform` elsewhere (no flags). Read once per process."""
    name, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "model name" and not name:
                    name = val.strip()
                elif key in ("flags", "Features"):
                    flags = frozenset(val.split())
                    break
    except OSError:
        pass
    return name or platform.processor() or platform.machine(), flags


def memory_bytes() -> int:
    """Physical memory of this machine (bytes)."""
    import psutil

    return int(psutil.virtual_memory().total)


def max_batch(input_hw: tuple[int, int]) -> int:
    """The largest batch whose working set (:data:`BYTES_PER_PIXEL` per input pixel) fits in half the memory."""
    h, w = input_hw
    return max(1, memory_bytes() // 2 // (max(1, h * w) * BYTES_PER_PIXEL))


def check_batch(n: int, input_hw: tuple[int, int], option: str = "--batch-size") -> None:
    """Raises :class:`RtsegError` unless ``n`` is an integer with ``1 ≤ n ≤`` :func:`max_batch` (one line
    naming the memory limit)."""
    import numbers

    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise RtsegError(f"{option} {n!r} is not a whole number of frames; pass an integer of at least 1")
    if n < 1:
        raise RtsegError(f"{option} {n} is below 1; pass a batch of at least 1 frame")
    top = max_batch(input_hw)
    if n > top:
        gib = memory_bytes() / 2**30
        raise RtsegError(f"{option} {n} is outside 1..{top}: a batch of {n} {input_hw[1]}x{input_hw[0]} frames needs "
                         f"about {n * input_hw[0] * input_hw[1] * BYTES_PER_PIXEL / 2**30:.1f} GiB of memory and this "
                         f"machine has {gib:.1f} GiB; pass a smaller {option}")


def check_image_size(input_hw: tuple[int, int], frames: int = 1, option: str = "--img-size") -> None:
    """Raises :class:`RtsegError` when ``frames`` frames of ``input_hw`` (H, W pixels) would need more memory
    than this machine has (:data:`BYTES_PER_PIXEL` per pixel, as :func:`check_batch`), naming the limit."""
    need = frames * input_hw[0] * input_hw[1] * BYTES_PER_PIXEL
    if need > memory_bytes():
        raise RtsegError(f"{option} {input_hw[0]}x{input_hw[1]} needs about {need / 2**30:.1f} GiB of memory for "
                         f"{frames} frame(s) and this machine has {memory_bytes() / 2**30:.1f} GiB; pass a smaller {option}")


def check_threads(n: int | None, option: str = "--threads") -> None:
    """Raises :class:`RtsegError` unless ``n`` is ``None`` or ``1 ≤ n ≤`` cores × :data:`THREADS_PER_CORE`."""
    if n is None:
        return
    cores = os.cpu_count() or 1
    top = cores * THREADS_PER_CORE
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= top:
        raise RtsegError(f"{option} {n} is outside 1..{top} ({cores} cores here); pass a number of threads up to "
                         f"the cores, or omit it for the backend's default")


__all__ = ["check_batch", "check_threads", "max_batch", "memory_bytes"]


#: the annotations :func:`check_field_types` checks, → the Python types they admit
_SIMPLE_TYPES = {"int": (numbers.Integral,), "float": (numbers.Real,), "bool": (bool,), "str": (str,)}


def check_field_types(options) -> None:
    """Refuse a dataclass option object (``StreamOptions``, ...) whose fields have the wrong Python type,
    before any range check compares them (the Python API passes values unchecked by click).

    Fields annotated ``int``, ``float``, ``bool`` or ``str`` (each optionally ``| None``) are checked;
    ``bool`` is not an ``int`` here; any integral number (NumPy's too) is an ``int``, any real one a ``float``. Other annotations are left to the owner.

    Raises:
        RtsegError: a field of the wrong type (one line naming it, the type wanted and the value).
    """
    from dataclasses import fields

    for f in fields(options):
        parts = [p.strip() for p in str(f.type).split("|")]
        optional = "None" in parts
        simple = [p for p in parts if p != "None"]
        if len(simple) != 1 or simple[0] not in _SIMPLE_TYPES:
            continue
        v = getattr(options, f.name)
        if v is None and optional:
            continue
        want = _SIMPLE_TYPES[simple[0]]
        if not isinstance(v, want) or (isinstance(v, bool) and bool not in want):
            raise RtsegError(f"option {f.name} must be {' | '.join(parts)}, not {type(v).__name__} {v!r:.40}; "
                             f"pass a {simple[0]}")
