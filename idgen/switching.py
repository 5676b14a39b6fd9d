"""Switches of worker IDs: how a generator leaves a worker ID whose fence the clock fell far behind.

When the clock is beyond ``max_lead_ms`` behind the last tick used, the generator refuses
(:class:`~idgen.errors.ClockBehind`) and asks its :class:`WorkerSwitch` to lease, on a thread of its own, another
worker ID whose fence is below the clock. The candidate lease's first reservation makes it the generator's lease
(``Generator._on_reservation``, which calls :meth:`WorkerSwitch.retire` for the old one); then the old lease is
released, its fence brought down to the last tick used under it.

Invariants (every field is guarded by the generator's lock, given to the constructor):

- at most one attempt runs at a time (``thread``), and attempts start at most once per ``SWITCH_RETRY_S``;
- a lease an attempt made or left is closed before ``thread`` is cleared: the candidate with ``-1`` if it was not
  adopted (nothing was minted under it, so its fence comes down to its ``after_ms``), else the retired lease with
  the last tick used under it; so ``Generator.close`` waits for ``thread`` and leaves no worker ID claimed;
- ``failure`` is why the last attempt leased no worker ID, ``None`` once one did or none is needed.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable

from idgen.leases.base import Lease, Reservation
from idgen.logs import RepeatLimitedLog

log = logging.getLogger("idgen.generator")

SWITCH_RETRY_S = 1.0  # switches of worker IDs start at most this often (on refusals and readiness checks)
SWITCH_RETRY_AFTER_S = 5.0  # the Retry-After of a refusal once a switch has failed: a worker ID may free up any time


class WorkerSwitch:
    """The switch of one generator (in one process). ``lock``: the generator's lock; ``now_ns``: its clock;
    ``listener``: its ``_on_reservation``, which hears the candidate lease; ``closed``: whether it is closed."""

    def __init__(
        self,
        lock: threading.Lock,
        now_ns: Callable[[], int],
        listener: Callable[[Lease, Reservation | None], None],
        closed: Callable[[], bool],
    ) -> None:
        self._lock, self._now_ns, self._listener, self._closed = lock, now_ns, listener, closed
        # The thread switching worker IDs, if any: set under the lock when it starts, cleared when it has closed every
        # lease it made or left, so close() can wait for it.
        self.thread: threading.Thread | None = None
        self._next_at = 0.0  # monotonic: no switch starts before
        self.candidate: Lease | None = None  # the lease it is starting
        self._retired: tuple[Lease, int] | None = None  # the lease switched away from, and its last tick used (ms)
        self.attempts = 0  # claims tried for a switch
        self.failure: str | None = None  # why the last attempt leased no worker ID
        self._log = RepeatLimitedLog(log)

    def start_soon(self, lease: Lease) -> None:
        """Start a switch away from ``lease``, on a thread of its own; the caller holds the lock, has seen the clock
        beyond ``max_lead_ms`` behind and checked that switching is allowed (``max_lead_ms`` above 0, not closed).
        One switch at a time, at most one per ``SWITCH_RETRY_S``, and none while the lease calls the clock untrusted
        (a claim would be refused for the same reason)."""
        if self.thread is not None:
            return
        now = time.monotonic()
        if now < self._next_at:
            return
        self._next_at = now + SWITCH_RETRY_S
        untrusted = lease.clock_untrusted
        if untrusted is not None:
            self.failure = f"the clock is not trusted: {untrusted}"
            return
        self.thread = threading.Thread(target=self._run, args=(lease,), name="idgen-switch", daemon=True)
        self.thread.start()

    def takes(self, lease: Lease, reservation: Reservation | None) -> bool:
        """Whether ``lease`` is the candidate of the running attempt and ``reservation`` one to mint under."""
        return lease is self.candidate and reservation is not None

    def retire(self, lease: Lease, high_water_ms: int) -> None:
        """The candidate is adopted: ``lease``, left at ``high_water_ms``, is released when the attempt ends. The
        caller holds the lock."""
        self._retired = (lease, high_water_ms)

    def _run(self, lease: Lease) -> None:
        """The switch thread: one attempt (:meth:`_once`); it stays registered until every lease it made or left is
        closed, so that ``Generator.close`` can wait for it."""
        try:
            if not self._once(lease) and self.failure:
                self._log.warning(  # once per episode, whatever the numbers in each attempt's reason
                    "no switch of worker IDs: %s", self.failure, event="worker_id_switch_failed", key="switch"
                )
        finally:
            with self._lock:
                self.thread = None

    def _once(self, lease: Lease) -> bool:
        """Start a new lease that claims only a worker ID whose fence is below the clock. Its first reservation makes
        it current (``Generator._on_reservation`` calls :meth:`retire`); then the old lease is released, its fence
        brought down to the last tick used under it. Without a switch the new lease is closed (it minted nothing)
        and the reason kept."""
        candidate = lease.fresh(fence_below_ms=self._now_ns() // 1_000_000)
        with self._lock:
            self.candidate = candidate
            self.attempts += 1
        failure = None
        try:
            if candidate.start(functools.partial(self._listener, candidate)) is None:
                failure = candidate.status().reason or "the clock is not trusted"  # e.g. ZooKeeper's clock check
        except Exception as exc:  # LeaseUnavailable above all: no worker ID is free below the clock
            failure = str(exc)
        with self._lock:
            retired, self._retired, self.candidate = self._retired, None, None
            switched = retired is not None  # retire() is called only as the candidate becomes the generator's lease
            if not switched and failure is None and self._closed():
                failure = "the generator was closed"
            self.failure = None if switched else failure  # None too if the clock came back: none needed
        if retired is None:
            candidate.close(-1)  # nothing was minted under it: its fence comes down to its after_ms
        else:
            retired_lease, high_water_ms = retired
            retired_lease.close(high_water_ms)
        return switched

    def retry_after_s(self) -> float:
        """The longest Retry-After of a refusal while a switch is due: longer once one has failed."""
        return SWITCH_RETRY_AFTER_S if self.failure else SWITCH_RETRY_S

    def until(self) -> str:
        """Until when a clock far behind is refused: the end of a refusal's message."""
        if self.failure:
            return f"it is within that (no other worker ID could be leased: {self.failure})"
        return "it is within that, or another worker ID, whose fence is below the clock, is leased"
