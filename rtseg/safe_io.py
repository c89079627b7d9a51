"""Safe outputs: every file rtseg writes goes to a temporary name beside its target and is renamed
into place (``os.replace``, atomic on POSIX) only once it is complete.

A run killed at any moment (even SIGKILL) therefore leaves either the earlier file of that name,
untouched, or the new complete one — never a truncated mix. Temporary files are hidden and
unpredictable (``.NAME.<random>.tmp.EXT``, the extension kept so that muxers and image writers still
recognise the type) and created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (:func:`tempfile.mkstemp`), so a
symlink planted in a shared output folder never receives a byte; the finished file gets the mode of
the file it replaces (a new one: the umask's default), never a wider one.

Also here: the one-line messages for write errors (full disk, read-only folder, name too long),
:func:`same_file`, used to refuse writing an output onto an input, :func:`check_regular`, which refuses
to read a FIFO or device (it would block forever), and :func:`file_sha256`.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from .errors import RtsegError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: the process umask, read once (reading it means setting it)
_UMASK = _umask()


def new_temp(path: str | os.PathLike) -> tuple[int, Path]:
    """Create a new empty temporary file beside ``path``: ``DIR/.NAME.<random>.tmp.EXT``, opened with
    ``O_EXCL | O_NOFOLLOW`` (never an existing file or a symlink), mode 0600 until :func:`finish_mode`.

    Returns ``(file descriptor, path)``; the caller closes the descriptor.

    Raises:
        OSError: the folder does not exist or cannot be written.
    """
    p = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=f".tmp{p.suffix}", dir=str(p.parent or Path(".")))
    return fd, Path(name)


def temp_path(path: str | os.PathLike) -> Path:
    """:func:`new_temp` for writers that open the file by name themselves (muxers): the file exists,
    empty, and is theirs to overwrite."""
    fd, tmp = new_temp(path)
    os.close(fd)
    return tmp


def new_temp_dir(path: str | os.PathLike) -> Path:
    """Create a new empty temporary folder beside ``path`` (``DIR/.NAME.<random>.tmp``, mode 0700 until
    :func:`finish_mode` with ``folder=True``); never an existing folder or a symlink.

    Raises:
        OSError: the parent folder does not exist or cannot be written.
    """
    p = Path(path)
    return Path(tempfile.mkdtemp(prefix=f".{p.name}.", suffix=".tmp", dir=str(p.parent or Path("."))))


def finish_mode(tmp: str | os.PathLike, target: str | os.PathLike, folder: bool = False) -> None:
    """Give the finished temporary file (``folder``: folder) ``tmp`` the mode of the ``target`` it
    replaces (a new target: 0666 — folders 0777 — less the umask), so that replacing an output never
    widens who may read it."""
    try:
        mode = os.stat(target).st_mode & 0o7777
    except OSError:
        mode = (0o777 if folder else 0o666) & ~_UMASK
    os.chmod(tmp, mode)


def atomic_write_bytes(path: str | os.PathLike, data, *, fsync: bool = True) -> None:
    """Write ``data`` (bytes-like) to ``path`` via a new temporary file (:func:`new_temp`), ``fsync``
    and ``os.replace``.

    On failure the temporary file is removed and an earlier ``path`` is left as it was.

    Raises:
        OSError: the write or the rename failed (see :func:`write_error` for the user-facing line).
    """
    path = Path(path)
    fd, tmp = new_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        finish_mode(tmp, path)
        os.replace(tmp, path)
    except BaseException:
        discard(tmp)
        raise


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes, read in ``chunk``-byte pieces (bounded memory).

    Raises:
        OSError: the file cannot be opened or read.
    """
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def nan_to_none(o: Any) -> Any:
    """``o`` with every float NaN (in nested dicts and lists) replaced by ``None``: strict JSON."""
    if isinstance(o, float) and o != o:
        return None
    if isinstance(o, dict):
        return {k: nan_to_none(v) for k, v in o.items()}
    if isinstance(o, list):
        return [nan_to_none(v) for v in o]
    return o


def save_figure(fig, path: str | os.PathLike, option: str, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG at ``path`` atomically (its folder is created) and close it.

    Raises:
        RtsegError: the folder or file cannot be written (one line naming ``option``, the flag to change).
    """
    import io

    import matplotlib.pyplot as plt

    path = Path(path)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        raise write_error(path, e, option) from None
    finally:
        plt.close(fig)
    return path


def discard(path: str | os.PathLike) -> None:
    """Remove a temporary file if it exists (best effort: an error here must not hide the first one)."""
    try:
        os.unlink(path)
    except OSError:
        pass


def write_error(target: str | os.PathLike, e: BaseException, what: str = "output") -> RtsegError:
    """One-line :class:`RtsegError` for a failed write of ``target`` (``what``: the option that named it).

    Names the cause (no space left, read-only, permission, name too long) and the fix.
    """
    code = getattr(e, "errno", None)
    if code == errno.ENOSPC or code == errno.EDQUOT:
        why, fix = "no space left on the device", f"free some space or choose another {what}"
    elif code == errno.EROFS:
        why, fix = "the file system is read-only", f"choose another {what}"
    elif code in (errno.EACCES, errno.EPERM):
        why, fix = "permission denied", f"fix the folder's permissions or choose another {what}"
    elif code == errno.ENAMETOOLONG:
        why, fix = "the file name is too long", f"choose a shorter {what}"
    elif code == errno.ENOENT:
        why, fix = "its folder does not exist", f"create the folder or choose another {what}"
    else:
        why = " ".join(str(getattr(e, "strerror", None) or e).split())[:200] or type(e).__name__
        fix = f"check the path or choose another {what}"
    return RtsegError(f"cannot write {target}: {why}; {fix} (an earlier file of that name is left unchanged)")


def check_writable(path: str | os.PathLike, what: str = "--out") -> None:
    """Before a long job: make ``path``'s folder and write (then remove) a probe file beside ``path``,
    so that a read-only, full or forbidden destination is refused at once instead of at the end.

    Raises:
        RtsegError: the folder cannot be created or written (see :func:`write_error`).
    """
    p = Path(path)
    probe = None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = new_temp(p.with_name(p.name + ".probe"))
        with os.fdopen(fd, "wb") as f:
            f.write(b"rtseg")
    except OSError as e:
        raise write_error(p, e, what) from None
    finally:
        if probe is not None:
            discard(probe)


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


def check_regular(path: str | os.PathLike) -> None:
    """Refuse an existing ``path`` that is not a regular file (symlinks followed): reading a FIFO, socket
    or device can block forever or never end (``/dev/zero``). A missing file is left to the reader's
    own message.

    Raises:
        RtsegError: ``path`` is a FIFO, socket, device or folder (one line naming it and the fix).
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        kind = next((k for test, k in _KINDS if test(mode)), "not a regular file")
        raise RtsegError(f"{path} is {kind}, not a regular file; reading it could block forever — remove it from "
                         f"its folder or pass a regular file (rtseg reads regular files only)")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name the same existing file or folder (hard links and symlinks
    included), or the same path once resolved."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):
        return False


def check_outputs(outputs: list[tuple[str, str | os.PathLike | None]],
                  inputs: list[str | os.PathLike | None]) -> None:
    """The output-safety rule of a command: no output is an input, lies inside an input folder, or is
    another output of the same run.

    Args:
        outputs: ``[(option, path)]`` of the files the command will write (``None`` paths are skipped).
        inputs: the files and folders it reads (``None`` skipped).

    Raises:
        RtsegError: one line naming the option, the clash and the fix.
    """
    outs = [(o, Path(p)) for o, p in outputs if p is not None]
    ins = [Path(p) for p in inputs if p is not None]
    for i, (opt, p) in enumerate(outs):
        for q in ins:
            inside = q.is_dir() and q.resolve() in p.resolve().parents
            if same_file(p, q) or inside:
                raise RtsegError(f"{opt} {p} would overwrite the input {q}{' (it is inside that folder)' if inside else ''}; "
                                 f"write it elsewhere")
        for opt2, p2 in outs[i + 1:]:
            if same_file(p, p2):
                raise RtsegError(f"{opt} and {opt2} name the same file {p}; give them different names")


__all__ = ["atomic_write_bytes", "check_outputs", "check_regular", "check_writable", "discard", "file_sha256", "finish_mode",
           "new_temp", "same_file", "temp_path",
           "write_error", "write_json"]
