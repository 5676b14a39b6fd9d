"""The timing loops every benchmark here shares: the same loop for every candidate, so their figures compare."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

CALLS_PER_READ = 1_000  # calls between two reads of the benchmark's own timer


def per_call(fn: Callable[[], object]) -> Callable[[float], tuple[int, int, float]]:
    """Call ``fn`` for about ``seconds``; the same loop for every candidate, a ``None`` result is not an ID."""

    def run(seconds: float) -> tuple[int, int, float]:
        calls = nones = 0
        start = time.perf_counter()
        while True:
            for _ in itertools.repeat(None, CALLS_PER_READ):
                if fn() is None:
                    nones += 1
            calls += CALLS_PER_READ
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return calls - nones, nones, elapsed

    return run


def per_batch(fn: Callable[[int], list[int]], n: int) -> Callable[[float], tuple[int, int, float]]:
    def run(seconds: float) -> tuple[int, int, float]:
        ids = 0
        start = time.perf_counter()
        while True:
            for _ in range(100):
                ids += len(fn(n))
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return ids, 0, elapsed

    return run
