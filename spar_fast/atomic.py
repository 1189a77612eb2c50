"""Crash-safe file writes: readers see the old file or the whole new one, never a torn one.

The content goes to a temporary file ``<name>.<random>.tmp`` in the destination folder, is
fsynced, given the permissions a plain ``open()`` would give (``0o666 & ~umask``; ``mkstemp``
creates 0600), renamed over the destination (``os.replace`` is atomic on POSIX and Windows), and
the folder is fsynced so the rename itself survives a power loss. :func:`create_exclusive`
creates a file only if it does not exist yet, with its whole content (``os.link`` of the finished
temporary file fails when the name is taken), so two processes creating the same file at the
same instant cannot mix. Disk-full and permission errors become one-line ``UserError`` naming the
path; the temporary file is removed, the destination is untouched.
"""
from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Callable

from .errors import UserError

TEMP_SUFFIX = ".tmp"
# safetensors' writer stages its output in ``.tmpXXXXXX`` beside the target (Rust tempfile
# naming); a kill during ``save_file`` leaves one behind.
_FOREIGN_TEMP = re.compile(r"^\.tmp[A-Za-z0-9]{6}$")
# errors a user fixes outside the program (space, quota, permissions, read-only mounts)
_USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
                errno.EISDIR, errno.ENAMETOOLONG, errno.EFBIG}


def write_error(path: str, exc: OSError) -> Exception:
    """A one-line ``UserError`` for an ``OSError`` a user can fix, else ``exc`` itself."""
    if getattr(exc, "errno", None) in _USER_ERRNOS:
        return UserError(f"cannot write {path}: {exc.strerror or exc}")
    return exc


def current_umask() -> int:
    """The process umask, read without changing it where Linux exposes it (thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


def _write_temp(path: str, write: Callable[[str], None]) -> str:
    """Produce the finished, fsynced temporary file for ``path``; returns its name."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=TEMP_SUFFIX, dir=folder)
    except OSError as exc:
        raise write_error(path, exc) from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    except BaseException as exc:
        _remove_quietly(tmp)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise
    return tmp


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def atomic_write_with(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` to produce the file, then move it atomically to ``path``."""
    path = os.fspath(path)
    tmp = _write_temp(path, write)
    try:
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise write_error(path, exc) from None
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def _bytes_writer(data: bytes) -> Callable[[str], None]:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
    return write


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write_with(path, _bytes_writer(data))


def create_exclusive(path: str, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists. True when this call created it.

    The file appears complete or not at all, and of two concurrent callers exactly one wins."""
    path = os.fspath(path)
    tmp = _write_temp(path, _bytes_writer(data))
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        _remove_quietly(tmp)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    return True


def remove_temp_files(folder: str) -> list[str]:
    """Delete the temporary files an interrupted atomic write left in ``folder`` (only call it
    while holding the folder's writer lock). Returns the removed names."""
    removed = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if (name.endswith(TEMP_SUFFIX) or _FOREIGN_TEMP.match(name)) and os.path.isfile(os.path.join(folder, name)):
            _remove_quietly(os.path.join(folder, name))
            removed.append(name)
    return removed
