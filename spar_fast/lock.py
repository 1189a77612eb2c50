"""One writer at a time: an advisory ``fcntl.flock`` on ``<folder>/.lock``.

The lock file stays in the folder (deleting it would race with a process that just opened it);
the lock itself is released by the kernel when its holder exits, also after ``kill -9``, so a
crashed job never leaves a stale lock. A second writer gets a one-line ``UserError`` at once
instead of waiting. Readers (training from a store, ``verify``) take no lock.
"""
from __future__ import annotations

import contextlib
import errno
import os

from .atomic import write_error
from .errors import UserError

LOCK_NAME = ".lock"


@contextlib.contextmanager
def exclusive_lock(folder: str, what: str):
    """Hold the writer lock of ``folder`` (created if needed) for the ``with`` block.

    ``what`` names the folder's role in the error message ("feature store", "training run")."""
    import fcntl

    folder = os.fspath(folder)
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(os.path.join(folder, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
    except FileExistsError:
        raise UserError(f"{folder} exists and is not a folder") from None
    except OSError as exc:
        raise write_error(folder, exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(f"{folder}: another process is writing this {what}; wait for it "
                                "to finish or use another folder") from None
            raise
        yield
    finally:
        os.close(fd)
