"""The back-off between failed attempts of a background loop (the lease's renewal thread)."""

from __future__ import annotations

import random

RETRY_FIRST_S = 0.1  # the back-off after one failed attempt; it doubles with each failure in a row
RETRY_MAX_S = 1.0  # ... up to this, so a loop recovers within about this long once its fault clears


def backoff_s(failures: int) -> float:
    """The wait after ``failures`` failed attempts in a row: exponential, capped, with full jitter in its upper half."""
    return random.uniform(0.5, 1.0) * min(RETRY_MAX_S, RETRY_FIRST_S * 2.0 ** min(failures - 1, 16))
