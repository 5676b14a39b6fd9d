"""A warning logged from a retry loop, limited so that a fault that lasts makes a few lines, not one per attempt.

Used by the lease's renewal thread and the generator's switch thread. Not the same as the HTTP side's
:class:`~idgen.http.connections.Tally`, which counts a flood of one fixed event and flushes its count on the event
loop's timer: this one is keyed by the warning (a changed warning is logged at once), runs on plain threads and says
how many were skipped with the next line logged.
"""

from __future__ import annotations

import logging
import time

REPEAT_LOG_INTERVAL_S = 30.0  # the same warning is logged at most once this often; the rest are counted


class RepeatLimitedLog:
    """Logs a warning, then the same warning at most once per ``REPEAT_LOG_INTERVAL_S``, with how many were skipped.
    Two warnings are the same if their ``key`` is: their text by default; give one where the text carries numbers
    that change from one attempt to the next."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._last: str | None = None
        self._last_at = 0.0
        self._skipped = 0

    def warning(self, message: str, *args: object, event: str, key: str | None = None) -> None:
        text = message % args
        same = text if key is None else key
        now = time.monotonic()
        if same == self._last and now - self._last_at < REPEAT_LOG_INTERVAL_S:
            self._skipped += 1
            return
        skipped = f" (and {self._skipped} more like it)" if same == self._last and self._skipped else ""
        self._last, self._last_at, self._skipped = same, now, 0
        self._logger.warning("%s%s", text, skipped, extra={"event": event})
