"""User-facing errors.

Every problem a user can cause (a missing file, an unreadable video, a checkpoint of the wrong
architecture, an engine built for another backend, a bad input size) is raised as
:class:`RtsegError` with a one-line message that names the problem *and* the fix. The CLI prints
``error: <message>`` to stderr and exits with status 2; it never shows a traceback for these.
"""

from __future__ import annotations

import re

#: ``scheme://user:password@`` in a URL (RTSP cameras, RTMP/SRT/HTTP sources and sinks)
_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@\s:]*):(?P<password>[^/@\s]*)@")


def redact(text: str) -> str:
    """``text`` with every URL password replaced by ``***`` (``rtsp://admin:S3cret@host/cam`` →
    ``rtsp://admin:***@host/cam``): what rtseg prints or writes never carries a credential."""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", str(text))


class RtsegError(Exception):
    """A user-facing error with a one-line message (problem + fix), credentials redacted
    (:func:`redact`). The CLI exits with code 2."""

    exit_code = 2

    def __init__(self, message: str):
        message = redact(" ".join(str(message).split()))  # always one line, never a password
        super().__init__(message)


class BackendUnavailable(RtsegError):
    """The inference backend cannot be reached right now (an inference server that is down, restarting or
    timing out). A live stream drops the frames of that moment and retries with backoff; a file stream,
    an eval or a bench fails with this one line."""


def require(module: str, extra: str, what: str):
    """Import an optional dependency, or raise the one-line error that names the extra to install.

    Args:
        module: the module to import (``"albumentations"``, ``"lion_pytorch"``, ``"nncf"``).
        extra: the ``pyproject.toml`` extra that installs it (``"train"``, ``"nncf"``).
        what: what needs it, for the message (``"training with augmentation"``).

    Returns:
        the imported module.

    Raises:
        RtsegError: ``module`` is not installed (``pip install 'rtseg[EXTRA]'``).
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise RtsegError(f"{what} needs {module.split('.')[0]}, which is not installed: "
                         f"pip install 'rtseg[{extra}]'") from None
