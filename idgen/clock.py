"""Clocks: where the generator and the leases read the time and wait for it.

A clock has two operations: ``now_ns()`` (Unix time in nanoseconds, the wall clock that IDs carry)
and ``sleep(seconds)``. :data:`SYSTEM_CLOCK` is the real one. :class:`ManualClock` is stepped by hand
so tests can drive every policy (overflow, rollback, fence) without waiting for real time; its
``sleep`` advances it, so a wait is instant and its length is recorded.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Protocol

_SPIN_S = 0.0002


class Clock(Protocol):
    def now_ns(self) -> int:
        """Wall-clock Unix time in nanoseconds. It may jump backwards; callers must guard against that."""

    def sleep(self, seconds: float) -> None:
        """Wait about ``seconds`` (never negative)."""


class SystemClock:
    """The host's wall clock. ``time.time_ns`` is used unwrapped on the minting hot path."""

    now_ns = staticmethod(time.time_ns)

    @staticmethod
    def sleep(seconds: float) -> None:
        """Sleep, then yield in a loop for the last ``_SPIN_S``: ``time.sleep`` (even ``sleep(0)``) overshoots
        by ~0.1 ms of timer slack, a tenth of every 1 ms tick that a full batch waits for."""
        deadline = time.monotonic() + seconds
        if seconds > _SPIN_S:
            time.sleep(seconds - _SPIN_S)
        while time.monotonic() < deadline:
            os.sched_yield()


SYSTEM_CLOCK = SystemClock()


class ManualClock:
    """A clock that moves only when told to. ``sleep`` advances it instead of waiting; it is thread-safe."""

    def __init__(self, start_ms: int | None = None) -> None:
        self._ns = (start_ms if start_ms is not None else time.time_ns() // 1_000_000) * 1_000_000
        self._lock = threading.Lock()
        self.slept_s = 0.0

    def now_ns(self) -> int:
        return self._ns

    def now_ms(self) -> int:
        return self._ns // 1_000_000

    def sleep(self, seconds: float) -> None:
        with self._lock:
            seconds = max(seconds, 0.0)
            self.slept_s += seconds
            self._ns += max(int(seconds * 1e9), 1)

    def advance(self, ms: float) -> None:
        """Move the clock by ``ms`` milliseconds; negative values step it back."""
        with self._lock:
            self._ns += int(ms * 1_000_000)

    def set_ms(self, unix_ms: int) -> None:
        with self._lock:
            self._ns = unix_ms * 1_000_000
