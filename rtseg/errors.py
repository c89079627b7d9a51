"""User-facing errors.

Every problem a user can cause (a missing file, an unreadable video, a checkpoint of the wrong
architecture, an engine built for another backend, a bad input size) is raised as
:class:`RtsegError` with a one-line message that names the problem *and* the fix. The CLI prints
``error: <message>`` to stderr and exits with status 2; it never shows a traceback for these.
"""

from __future__ import annotations


class RtsegError(Exception):
    """A user-facing error with a one-line message (problem + fix). The CLI exits with code 2."""

    exit_code = 2

    def __init__(self, message: str):
        message = " ".join(str(message).split())  # always one line
        super().__init__(message)
