"""Requests take turns: one runs at a time, the others wait in arrival order, a bounded number."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager

from .examples import RequestError


class Turns:
    """A ticket queue: ``with turns.take(): ...`` waits for the earlier tickets to finish. At most
    ``max_waiting`` requests wait beside the running one; more get a 503 ``RequestError``."""

    def __init__(self, max_waiting: int):
        self.max_waiting = max_waiting
        self._cond = threading.Condition()
        self._issued = 0  # tickets given out
        self._done = 0  # tickets finished; the running ticket is number ``_done``

    @property
    def waiting(self) -> int:
        """Requests holding a ticket that are not running (0 when idle)."""
        with self._cond:
            return max(0, self._issued - self._done - 1)

    @contextmanager
    def take(self):
        """Yields the seconds this request waited for its turn."""
        start = time.perf_counter()
        with self._cond:
            if self._issued - self._done > self.max_waiting:
                raise RequestError(f"busy: {self.max_waiting} requests are already waiting; try again "
                                   "in a moment", status=503)
            ticket = self._issued
            self._issued += 1
            while self._done != ticket:
                self._cond.wait()
        try:
            yield time.perf_counter() - start
        finally:
            with self._cond:
                self._done += 1
                self._cond.notify_all()
