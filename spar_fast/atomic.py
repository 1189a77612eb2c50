"""Crash-safe file writes: readers see the old file or the whole new one, never a torn one.

The content goes to a file inside a private temporary folder ``.spar_fast~<random>.tmp`` made in
the destination folder (the unique prefix is what proves a leftover is this package's own: a
cleanup removes nothing else), is fsynced, given the permissions a plain ``open()`` would give
(``0o666 & ~umask``; ``mkstemp`` creates 0600), renamed over the destination (``os.replace`` is
atomic on POSIX and Windows), and the folder is fsynced so the rename itself survives a power
loss. Writers that stage their own temporary files (safetensors' ``save_file`` makes
``.tmpXXXXXX`` beside its target) therefore stage them inside the private folder too.
:func:`create_exclusive` creates a file only if it does not exist yet, with its whole content
(``os.link`` of the finished temporary file fails when the name is taken), so two processes
creating the same file at the same instant cannot mix. Every write failure a user can fix (disk
full, quota, permissions, read-only mounts, a name too long, a folder in the way, safetensors'
own write errors) becomes one-line ``UserError`` naming the path (:func:`write_error`); the
temporary folder is removed, the destination is untouched.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable

from .errors import UserError

TEMP_SUFFIX = ".tmp"
TEMP_PREFIX = ".spar_fast~"
_OWN_TEMP = re.compile(re.escape(TEMP_PREFIX) + r"[A-Za-z0-9_]{8}" + re.escape(TEMP_SUFFIX) + "$")
# errors a user fixes outside the program (space, quota, permissions, read-only mounts, names)
_USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
                errno.EISDIR, errno.ENAMETOOLONG, errno.EFBIG, errno.ENOENT, errno.ELOOP,
                errno.EEXIST, errno.ENOTEMPTY, errno.EBUSY, errno.ETXTBSY, errno.EIO}


def write_error(path: str, exc: BaseException) -> BaseException:
    """A one-line ``UserError`` for a write failure a user can fix (an ``OSError`` with one of
    the errnos above, or an error of the safetensors writer, which reports a full disk as its own
    exception type), else ``exc`` itself."""
    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, OSError) and getattr(exc, "errno", None) in _USER_ERRNOS:
        return UserError(f"cannot write {path}: {exc.strerror or exc}")
    if type(exc).__module__.split(".")[0] == "safetensors":
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return UserError(f"cannot write {path}: {first}")
    return exc


def is_own_temp(name: str, legacy: re.Pattern | None = None) -> bool:
    """True when ``name`` (a folder entry) is a temporary of this package: the private folder of
    an atomic write, or (``legacy``: the names the caller writes in that folder) the
    ``<name>.<8 random>.tmp`` file of an older version."""
    if _OWN_TEMP.match(name):
        return True
    if legacy is not None and name.endswith(TEMP_SUFFIX):
        stem = name[:-len(TEMP_SUFFIX)]
        base, dot, rand = stem.rpartition(".")
        return bool(dot) and len(rand) == 8 and re.fullmatch(r"[a-z0-9_]{8}", rand) is not None \
            and legacy.fullmatch(base) is not None
    return False


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
    """Produce the finished, fsynced file for ``path`` inside a new private temporary folder
    beside it; returns the file's name (its folder is ``os.path.dirname`` of it)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        tmp_dir = tempfile.mkdtemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=folder)
    except OSError as exc:
        raise write_error(path, exc) from None
    tmp = os.path.join(tmp_dir, "out")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    except BaseException as exc:
        _remove_temp(tmp)
        mapped = write_error(path, exc)
        if mapped is exc:
            raise
        raise mapped from None
    return tmp


def _remove_temp(tmp: str) -> None:
    """Remove a private temporary folder and what it holds."""
    shutil.rmtree(os.path.dirname(tmp), ignore_errors=True)


def atomic_write_with(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` to produce the file, then move it atomically to ``path``."""
    path = os.fspath(path)
    tmp = _write_temp(path, write)
    try:
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        _remove_temp(tmp)
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
        _remove_temp(tmp)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    return True


_IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def save_image(image, path: str) -> None:
    """Save a PIL image atomically, its format from the suffix of ``path`` (PNG otherwise);
    write failures are one line like every atomic write."""
    fmt = _IMAGE_FORMATS.get(os.path.splitext(os.fspath(path))[1].lower(), "PNG")
    atomic_write_with(path, lambda tmp: image.save(tmp, format=fmt))


def check_writable(path: str) -> None:
    """One-line ``UserError`` unless a file can be written at ``path`` (checked before long work:
    a private temporary folder is made beside it and removed; the name's length is checked too)."""
    path = os.fspath(path)
    name = os.path.basename(path)
    if len(os.fsencode(name)) > 255:
        raise UserError(f"cannot write {path}: {os.strerror(errno.ENAMETOOLONG)}")
    _remove_temp(_write_temp(path, _bytes_writer(b"")))


def remove_temp_files(folder: str, legacy: re.Pattern | None = None) -> list[str]:
    """Delete the temporaries interrupted atomic writes left in ``folder`` (only call it while
    holding the folder's writer lock): private ``.spar_fast~*.tmp`` folders and, with
    ``legacy``, older versions' ``<name>.<random>.tmp`` files of the names it matches. Nothing
    else is touched. Returns the removed names."""
    removed = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        full = os.path.join(folder, name)
        if not is_own_temp(name, legacy) or os.path.islink(full):
            continue
        if os.path.isdir(full) and _OWN_TEMP.match(name):
            shutil.rmtree(full, ignore_errors=True)
        elif os.path.isfile(full):
            try:
                os.remove(full)
            except OSError:
                continue
        else:
            continue
        removed.append(name)
    return removed
