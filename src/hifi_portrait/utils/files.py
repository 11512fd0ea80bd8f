"""Files: writing them so that a crash never leaves a half-written one, and telling what a path really is.

* :func:`atomic_file`: temporary file beside the target, ``os.replace``; the file gets the mode that the process's
  umask gives a new file (as ``open`` does), and a full or read-only disk raises
  :class:`~hifi_portrait.errors.OutputError` naming the folder.
* :func:`not_a_regular_file`: why a path cannot be read as a file (dangling link, link loop, FIFO, socket,
  device, folder), checked without opening it, so that a FIFO never blocks a reader.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from hifi_portrait.errors import OutputError

#: errno values of a write that fails because of the output folder (not of the data written).
OUTPUT_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "the file is larger than the system allows",
}

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask (read from ``/proc`` on Linux; elsewhere set and restored under a lock)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def output_error(exc: OSError, folder: Path) -> OutputError | None:
    """The :class:`OutputError` for a write that failed because of ``folder`` (disk full, read-only...), else None."""
    reason = OUTPUT_ERRNOS.get(exc.errno or 0)
    if reason is None:
        return None
    hint = (
        "free some space there or choose another output folder"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        else "choose a folder you can write to"
    )
    return OutputError(f"cannot write to {folder}: {reason} ({exc.strerror}); {hint}. Nothing half-written was kept.")


def _about_output(exc: BaseException, folder: Path) -> bool:
    """Whether an error raised while writing into ``folder`` concerns the output (not an input read meanwhile)."""
    if not isinstance(exc, OSError):
        return False
    if exc.filename is None:  # a failed write() or fsync() names no file
        return True
    failed = Path(os.path.abspath(os.fsdecode(exc.filename)))
    folder = Path(os.path.abspath(folder))
    return failed == folder or folder in failed.parents or failed in folder.parents


@contextlib.contextmanager
def writing_to(folder: Path) -> Iterator[None]:
    """Turn an ``OSError`` of writing into ``folder`` (disk full, read-only, no permission) into an OutputError."""
    try:
        yield
    except OSError as exc:
        typed = output_error(exc, Path(folder)) if _about_output(exc, Path(folder)) else None
        if typed is None:
            raise
        raise typed from None


def check_writable_dir(folder: Path, option: str = "--out") -> None:
    """Create ``folder`` if needed and check that a file can be created in it, before any work starts.

    Raises:
        ConfigError: it cannot be created or written (a file is in the way, read-only, no permission...).
    """
    from hifi_portrait.errors import ConfigError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        why = exc.strerror or str(exc)
        if isinstance(exc, FileExistsError | NotADirectoryError):
            why = "a file, not a folder, is in the way"
        raise ConfigError(
            f"{option} {folder}: cannot write there ({why}); choose a folder you can write to."
        ) from None


@contextlib.contextmanager
def atomic_file(path: Path, suffix: str = "", fsync: bool = False) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for binary writing; on success it replaces ``path`` in one step.

    The temporary file is named ``.tmp-*<suffix>`` in ``path``'s folder (created if needed), so leftovers of a
    killed process are recognisable; on an exception it is removed and the exception re-raised. ``fsync`` flushes
    the data to disk before the rename. The final file has mode ``0o666 & ~umask`` like any file the process
    creates (``mkstemp`` alone would give 0600).

    Raises:
        OutputError: the folder is full, read-only or not writable (the message names it).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent)
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            yield handle
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        typed = output_error(exc, path.parent) if _about_output(exc, path.parent) else None
        if typed is not None:
            raise typed from None
        raise


def not_a_regular_file(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as a regular file, or ``None`` when it can be (symbolic links followed).

    Checked with ``stat`` only: a FIFO is never opened (opening one for reading blocks until a writer comes).
    """
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        if p.is_symlink():
            return f"dangling symbolic link (its target {os.readlink(p)} does not exist)"
        return "no such file"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (the link points back to itself)"
        return f"cannot be examined ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    kinds = [
        (stat.S_ISDIR, "a folder, not an image file"),
        (stat.S_ISFIFO, "a named pipe (FIFO), not a regular file"),
        (stat.S_ISSOCK, "a socket, not a regular file"),
        (stat.S_ISCHR, "a character device, not a regular file"),
        (stat.S_ISBLK, "a block device, not a regular file"),
    ]
    return next((reason for check, reason in kinds if check(mode)), "not a regular file")
