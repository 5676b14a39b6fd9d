"""``/decode``'s ``node``: which lease holder minted an ID, looked up in the lease history off the event loop.

Invariant: lookups (files or ZooKeeper) run on threads of their own, at most ``TRACE_LOOKUPS`` at once, each awaited
for at most ``timeout_s``; beyond that many, a lookup answers at once with ``node`` null and ``node_error``. So a
coordinator outage queues nothing, and ``/metrics``, ``/healthz`` and ``/readyz`` never wait on it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from idgen.leases.base import Lease

log = logging.getLogger("idgen.http")

DEFAULT_TRACE_TIMEOUT_S = 2.0
TRACE_LOOKUPS = 4  # lease history lookups at once, each on its own thread; /decode answers further ones at once


class TraceLookups:
    """Lookups in the history of the lease that ``lease_of()`` returns (read at each lookup: a forked child's
    generator adopts a lease of its own)."""

    def __init__(self, lease_of: Callable[[], Lease], timeout_s: float) -> None:
        self.lease_of, self.timeout_s = lease_of, timeout_s
        self._executor = ThreadPoolExecutor(max_workers=TRACE_LOOKUPS, thread_name_prefix="idgen-trace")
        self._slots = threading.BoundedSemaphore(TRACE_LOOKUPS)  # taken per lookup until its thread is done

    async def node_of(self, worker_id: int, unix_ms: int) -> dict[str, Any]:
        """The ``node`` fields of an ID, looked up off the event loop (:meth:`Traced.to_json`); if the lease history
        cannot be read, ``node`` is null and ``node_error`` says why. A lookup holds one of ``TRACE_LOOKUPS`` slots
        until its thread returns, even after this request gave up on it, so stuck lookups never pile up."""
        if not self._slots.acquire(blocking=False):
            return {
                "node": None,
                "node_error": f"the lease history is busy: {TRACE_LOOKUPS} lookups are still waiting on it",
            }
        try:
            future = self._executor.submit(self.lease_of().trace, worker_id, unix_ms)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        try:
            traced = await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except TimeoutError:
            return {"node": None, "node_error": f"the lease history did not answer within {self.timeout_s:g} s"}
        except Exception as exc:
            log.warning("lease history lookup failed: %s", exc, extra={"event": "trace_failed"})
            why = " ".join(str(exc).split()) or type(exc).__name__
            return {"node": None, "node_error": f"the lease history could not be read: {why}"}
        return traced.to_json()

    def shutdown(self) -> None:
        """Start no more lookups; those running end on their own threads."""
        self._executor.shutdown(wait=False, cancel_futures=True)
