"""Run native code that may crash (a compiler segfault) in a child process (a crash guard).

Used by the backends whose compilers have crashed on some graphs (OpenVINO): a native crash
becomes an :class:`~rtseg.errors.RtsegError` naming the cause and the fix, never a dead ``rtseg``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Sequence

from ..errors import RtsegError


def run_guarded(code: str, args: Sequence[str], what: str, fix: str, timeout: float = 900.0) -> str:
    """Run ``python -c code args...`` in a child process; return its stdout.

    A native crash (segfault, abort) or a failure in the child becomes an :class:`RtsegError`
    ``"<what> crashed (SIGSEGV) ...; <fix>"`` — the caller never dies with it.

    Raises:
        RtsegError: the child was killed by a signal, exited non-zero, or ran past ``timeout`` s.
    """
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    try:
        p = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise RtsegError(f"{what} did not finish in {timeout:.0f} s; {fix}") from None
    if p.returncode < 0:
        try:
            sig = signal.Signals(-p.returncode).name
        except ValueError:
            sig = f"signal {-p.returncode}"
        raise RtsegError(f"{what} crashed ({sig}) in a guarded child process; {fix}")
    if p.returncode != 0:
        lines = [ln for ln in (p.stderr or "").strip().splitlines() if ln.strip()]
        raise RtsegError(f"{what} failed ({lines[-1].strip() if lines else f'exit code {p.returncode}'}); {fix}")
    return p.stdout
