"""Crash-safe file writes: readers see the old file or the whole new one, never a torn one.

The content goes to a temporary file in the destination folder, is fsynced, renamed over the
destination (``os.replace`` is atomic on POSIX and Windows), and the folder is fsynced so the
rename itself survives a power loss.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable


def fsync_dir(folder: str) -> None:
    """fsync a directory (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_with(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` to produce the file, then move it atomically to ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(folder)


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
    atomic_write_with(path, write)
