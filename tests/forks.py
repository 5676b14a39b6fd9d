"""Forking the test process the ways Python servers do, and hearing back from the child.

``FORKS``: ``os.fork`` (runs Python's at-fork hooks, as gunicorn, Celery and multiprocessing do) and a fork made
in C that skips them (as uWSGI does by default; ``PyDLL`` keeps the GIL across the call, as a C caller does).
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import time
from collections.abc import Callable
from typing import Any

FORKS: dict[str, Callable[[], int]] = {
    "os.fork": os.fork,
    "C fork without at-fork hooks": ctypes.PyDLL(None).fork,
}


class Child:
    """A child forked with ``fork`` that runs ``work(report)`` and exits at once, never returning into the test.

    Each ``report(value)`` sends ``value`` to the parent as one JSON line; an exception is sent as
    ``{"error": ...}``. The parent reads them in order with :meth:`next`.
    """

    def __init__(self, fork: Callable[[], int], work: Callable[[Callable[[Any], None]], None]) -> None:
        read, write = os.pipe()
        self.pid = fork()
        if self.pid == 0:
            code = 1
            try:
                work(lambda value: _send(write, value))
                code = 0
            except BaseException as exc:
                _send(write, {"error": f"{type(exc).__name__}: {exc}"})
            finally:
                os._exit(code)
        os.close(write)
        self.fd = read
        self._unread = b""

    def next(self, timeout: float = 15.0) -> Any:
        """The child's next report; fails the test if it sent an error or nothing within ``timeout``."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._unread and select.select([self.fd], [], [], max(deadline - time.monotonic(), 0))[0]:
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                break
            self._unread += chunk
        line, newline, self._unread = self._unread.partition(b"\n")
        assert newline, f"the child (pid {self.pid}) sent no report within {timeout:g} s: {line!r}"
        value = json.loads(line)  # one report: the child may have sent the next one already
        assert not (isinstance(value, dict) and "error" in value), f"the child failed: {value['error']}"
        return value

    def close(self, timeout: float = 10.0) -> None:
        """Wait for the child to exit; kill -9 it if it has not within ``timeout``."""
        os.close(self.fd)
        deadline = time.monotonic() + timeout
        while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
                return
            time.sleep(0.005)


def _send(fd: int, value: Any) -> None:
    os.write(fd, (json.dumps(value) + "\n").encode())
