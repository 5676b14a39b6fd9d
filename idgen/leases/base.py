"""The lease interface: a worker ID plus a fenced window of time to mint in.

A lease grants a :class:`Reservation`: mint under ``worker_id`` only timestamps ``t`` with
``after_ms < t <= fence_ms``. The backend keeps three records per worker ID:

- the *claim* (a file lock, or an ephemeral znode): at most one holder at a time;
- the *fence*: durable, monotonic. It is written before any ID above the old value is minted, and a new
  holder's ``after_ms`` is the fence it found, so holders' windows never overlap;
- the *history*: who held the worker ID, and the window ``(after_ms, fence_ms]`` each could mint in, bounded to
  ``history_size`` holders. Windows are disjoint, so the holder whose window contains an ID's timestamp is the one
  that minted it, and an ID in no window was minted by no recorded holder (:mod:`idgen.leases.tracing`).

:class:`Lease` is a small state machine run by one renewal thread::

    ACQUIRING --acquired--> HELD --(session suspended)--> SUSPENDED --(reconnected)--> HELD
        ^                     |                               |
        +------ LOST <--------+-------(session lost)----------+          HELD/LOST --close()--> RELEASED

Invariants:

- the reservation published to the listener never has a fence above the durable fence;
- in HELD the fence is kept at least ``window_ms`` ahead of the clock, and above the last timestamp the holder said it
  mints at (:meth:`Lease.minting_at`, a generator riding a clock step); SUSPENDED never extends it;
- a holder never reserves further ahead of the clock than 1.5 windows, or the lead its claim found, unless it mints
  further ahead than that (:meth:`Lease._fence_target_ms`): holders that die without closing leave fences whose leads
  do not add up from one to the next;
- on LOST the listener gets ``None`` before anything else happens, then the lease is acquired afresh.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Self

from idgen.clock import SYSTEM_CLOCK, Clock
from idgen.errors import ClockUntrusted, LeaseUnavailable, whole_number
from idgen.errors import LeaseLost as LeaseLost  # re-exported: it was defined here
from idgen.layout import Layout, iso_ms
from idgen.leases.tracing import Histories
from idgen.leases.tracing import Holder as Holder  # re-exported: public callers import these from here
from idgen.leases.tracing import Traced as Traced
from idgen.leases.tracing import trace as trace
from idgen.logs import RepeatLimitedLog
from idgen.retry import backoff_s

log = logging.getLogger("idgen.lease")

DEFAULT_WINDOW_MS = 5_000
DEFAULT_HISTORY_SIZE = 100
WAKE_SPACING_S = 0.05  # a healthy lease takes at most one renewal step this often, however often it is woken
TRACED_HISTORIES = 256  # worker IDs whose settled history Lease.trace keeps in memory


class LeaseState(Enum):
    ACQUIRING = "acquiring"
    HELD = "held"
    SUSPENDED = "suspended"
    LOST = "lost"
    RELEASED = "released"


@dataclass(frozen=True)
class Reservation:
    """Mint under ``worker_id`` only timestamps ``t`` (Unix ms) with ``after_ms < t <= fence_ms``. ``found_ms`` is
    the fence the claim found, its previous holder's (``None``: never used); ``after_ms`` is at or above it."""

    worker_id: int
    after_ms: int
    fence_ms: int
    lease_id: str
    found_ms: int | None = None


@dataclass(frozen=True)
class LeaseStatus:
    state: LeaseState
    reservation: Reservation | None
    reason: str | None


@dataclass(frozen=True)
class Census:
    """How the worker IDs a lease draws from stand, as of one cheap scan (:meth:`Lease.census`): ``held`` by a live
    holder, ``quarantined`` (records this lease found unreadable; never claimed) and not held, and ``free``, the
    rest of ``capacity``."""

    capacity: int
    held: int
    quarantined: int

    @property
    def free(self) -> int:
        return self.capacity - self.held - self.quarantined


class Lease(ABC):
    """Base of the backends. Subclasses implement the four storage operations; this class runs the lifecycle.

    ``window_ms``: the fence is kept between ``window_ms`` and ``1.5 * window_ms`` ahead of the clock, and above where
    the holder mints if that is ahead (:meth:`_fence_target_ms`). A clock behind the previous holder's fence is the
    generator's to handle: the lease never waits for it.
    """

    def __init__(
        self,
        layout: Layout,
        *,
        window_ms: int = DEFAULT_WINDOW_MS,
        history_size: int = DEFAULT_HISTORY_SIZE,
        address: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        whole_number("window_ms", window_ms, 10, "of milliseconds")
        whole_number("history_size", history_size, 1)
        self.layout = layout
        self.window_ms = window_ms
        self.history_size = history_size
        self.address = address
        self.clock = clock
        self.host = socket.gethostname()
        self.insecure = False  # set by a backend running without access control, by the operator's explicit opt-out
        self._init_runtime()

    def _init_runtime(self) -> None:
        """The state of one run of the lifecycle: set up by ``__init__`` and, afresh, by :meth:`forked`."""
        self.quarantined: dict[int, str] = {}  # worker ID -> why its records are unreadable; never claimed
        self._state = LeaseState.ACQUIRING
        self._reason: str | None = None
        self._reservation: Reservation | None = None
        self._listener: Callable[[Reservation | None], None] = lambda _: None
        self._lock = threading.RLock()  # guards state; never held while calling out
        self._handing_over = threading.Lock()  # orders listener calls; taken before ``_lock``, never after
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._owner_pid = os.getpid()  # a copy of this lease in a forked child must not act on this process's claim
        self._histories = Histories(TRACED_HISTORIES)
        self.renewal_failures = 0  # renewal steps that failed; each is followed by a back-off
        self._failure_log = RepeatLimitedLog(log)
        self._minting_ms = -1  # the last timestamp the holder said it mints at (minting_at)
        self._lead_found_ms = 0  # how far the first tick the claim allows was ahead of the clock at the claim
        self.clock_untrusted: str | None = None  # why the last clock check failed; None: trusted (or never checked)
        self._fence_below_ms: int | None = None  # a switch's first claim takes only a fence below this

    def fresh(self, fence_below_ms: int | None = None) -> Self:
        """An unstarted lease of the same configuration that shares nothing of this one's run (claim, threads, locks,
        connections) and claims afresh when started. With ``fence_below_ms`` (a generator switching away from a clock
        step) its first claim takes only a worker ID whose fence is below that; later claims take any."""
        clone = copy.copy(self)
        clone._init_runtime()
        clone._fence_below_ms = fence_below_ms
        clone.quarantined = dict(self.quarantined)  # unreadable records stay so: not re-read and logged again
        return clone

    def forked(self) -> Self:
        """For a process forked from this one: a :meth:`fresh` lease; the parent's claim stays the parent's."""
        return self.fresh()

    # -- storage operations, one set per backend ----------------------------------------------------

    @abstractmethod
    def _acquire(self, holder: Holder) -> Reservation:
        """Claim a free worker ID, record ``holder`` (with its ``worker_id``/``after_ms`` filled in by the
        backend) in its history, and durably write a first fence. Raise :class:`LeaseUnavailable` if none is free."""

    @abstractmethod
    def _extend(self, reservation: Reservation, fence_ms: int) -> None:
        """Durably raise the fence to ``fence_ms``, only if the claim is still ours; else raise :class:`LeaseLost`."""

    @abstractmethod
    def _release(self, reservation: Reservation, final_fence_ms: int) -> None:
        """Set the fence to ``final_fence_ms`` (never lowering it below what was minted), mark the holder
        ended and drop the claim. Best effort: the fence stays valid if this fails."""

    @abstractmethod
    def holders(self, worker_id: int) -> list[Holder]:
        """The retained history of ``worker_id``, oldest first."""

    @abstractmethod
    def fence_of(self, worker_id: int) -> int | None:
        """The current durable fence of ``worker_id`` (``None`` if it has none), as of at least the moment of the
        call: every fence written before it began is seen."""

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self, listener: Callable[[Reservation | None], None]) -> Reservation | None:
        """Acquire a worker ID, publish the reservation to ``listener`` and start renewing.

        Raises :class:`LeaseUnavailable` when no worker ID can be had (all taken, coordinator unreachable).
        If only the clock is untrusted, returns ``None``: the lease stays ACQUIRING, not ready, with the
        reason in :meth:`status`, and keeps trying in the background.
        """
        self._listener = listener
        reservation = None
        try:
            reservation = self._acquire_checked()
        except ClockUntrusted as exc:
            with self._lock:
                self._reason = str(exc)
        else:
            self._hand_over(reservation)
        self._thread = threading.Thread(target=self._run, name="idgen-lease", daemon=True)
        self._thread.start()
        return reservation

    def close(self, high_water_ms: int | None = None) -> None:
        """Stop renewing and release the claim. ``high_water_ms`` (the highest timestamp minted) lets the
        fence come down to it, so the next holder need not wait out the unused part of the window.

        In a process forked from the one that started it, this does nothing but mark the copy released: the claim,
        the renewal thread and the connection are the parent's, and the parent still mints under them."""
        if os.getpid() != self._owner_pid:
            with self._lock:
                self._state, self._reservation = LeaseState.RELEASED, None
            return
        self._closing.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(5.0, self.window_ms / 1000))
        with self._handing_over:
            with self._lock:
                reservation, self._reservation = self._reservation, None
                held = self._state in (LeaseState.HELD, LeaseState.SUSPENDED)
                self._state = LeaseState.RELEASED
            self._listener(None)
        if reservation is not None and held:
            final = reservation.fence_ms if high_water_ms is None else max(high_water_ms, reservation.after_ms)
            try:
                self._release(reservation, min(final, reservation.fence_ms))
                log.info("lease released", extra={"event": "lease_released", "worker_id": reservation.worker_id})
            except Exception as exc:  # the fence stays where it was, which is safe
                log.warning("lease release failed: %s", exc, extra={"event": "lease_release_failed"})

    def renew_soon(self) -> None:
        """Ask the renewal thread to check the fence now (the generator calls this when it reaches the fence)."""
        self._wake.set()

    def minting_at(self, unix_ms: int) -> None:
        """The holder mints at ``unix_ms``, ahead of the clock (a generator riding a clock step): from now on the
        fence covers that too (:meth:`_fence_target_ms`). Cheap; the renewal thread does the writing."""
        if unix_ms > self._minting_ms:
            self._minting_ms = unix_ms
            reservation = self._reservation
            if reservation is not None and reservation.fence_ms - unix_ms < self.window_ms // 2:
                self._wake.set()  # an extension is due, or will be as the clock runs: the renewal thread reschedules

    def status(self) -> LeaseStatus:
        with self._lock:
            state, reservation, reason = self._state, self._reservation, self._reason
        return LeaseStatus(state, reservation, reason)

    def trace(self, worker_id: int, unix_ms: int) -> Traced:
        """Who minted an ID stamped ``unix_ms`` under ``worker_id`` (:func:`trace`). Answered from the history read
        last for this worker ID when that answer is settled; otherwise the fence is read, then the history."""
        holders = self._histories.settled(worker_id, unix_ms)
        if holders is not None:
            return trace(holders, unix_ms, None)
        fence_ms = self.fence_of(worker_id)
        holders = self.holders(worker_id)
        self._histories.keep(worker_id, holders)
        return trace(holders, unix_ms, fence_ms)

    def describe(self) -> dict[str, Any]:
        """Backend facts for ``/info``; subclasses add theirs."""
        status = self.status()
        return {
            "state": status.state.value,
            "reason": status.reason,
            "worker_id": status.reservation.worker_id if status.reservation else None,
            "lease_id": status.reservation.lease_id if status.reservation else None,
            "fence_ms": status.reservation.fence_ms if status.reservation else None,
            "window_ms": self.window_ms,
            "host": self.host,
            "pid": os.getpid(),
            "address": self.address,
            "insecure": self.insecure,
            "quarantined": {str(w): why for w, why in sorted(self.quarantined.items())},
            "renewal_failures": self.renewal_failures,
        }

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state transitions for backends with sessions ---------------------------------------------

    def _suspend(self) -> None:
        with self._lock:
            if self._state is LeaseState.HELD:
                self._state = LeaseState.SUSPENDED  # still ready: the reserved fence stays valid
        log.warning("lease suspended", extra={"event": "lease_suspended"})

    def _resume(self) -> None:
        with self._lock:
            if self._state is LeaseState.SUSPENDED:
                self._state = LeaseState.HELD
        self._wake.set()

    def _lose(self, why: str) -> None:
        """The claim is gone: stop minting at once, then let the renewal thread acquire afresh."""
        with self._handing_over:
            with self._lock:
                if self._state in (LeaseState.RELEASED, LeaseState.LOST):
                    return
                lost, self._reservation = self._reservation, None
                self._state, self._reason = LeaseState.LOST, f"lease lost: {why}"
            self._listener(None)
        log.error(
            "lease lost: %s",
            why,
            extra={"event": "lease_lost", "worker_id": lost.worker_id if lost else None},
        )
        self._wake.set()

    # -- internals --------------------------------------------------------------------------------

    def _quarantine(self, worker_id: int, why: str) -> None:
        """Never claim ``worker_id``: its records cannot be read, so it may have minted anything. Logged once."""
        if worker_id in self.quarantined:
            return
        self.quarantined = {**self.quarantined, worker_id: why}  # a new dict: describe() may be iterating the old
        log.error(
            "worker ID %d quarantined: %s",
            worker_id,
            why,
            extra={"event": "worker_id_quarantined", "worker_id": worker_id, "reason": why},
        )

    def _now_ms(self) -> int:
        return self.clock.now_ns() // 1_000_000

    def _claim_order(self, free: Sequence[int], fences: dict[int, int]) -> list[int]:
        """The worker IDs of ``free`` in the order to try to claim them: never used first, then oldest fence first,
        so the ID a process just released (or crashed with) is the last to be reused. For a switch (see
        :meth:`fresh`), only those whose fence is below the bound."""
        below = self._fence_below_ms
        never_used = [w for w in free if w not in fences]
        used = sorted((w for w in free if w in fences and (below is None or fences[w] < below)), key=fences.__getitem__)
        return never_used + used

    def _new_holder(self) -> Holder:
        return Holder(
            worker_id=-1,
            lease_id="",
            host=self.host,
            pid=os.getpid(),
            address=self.address,
            started_ms=self._now_ms(),
            after_ms=-1,
        )

    def _claim_after(self, found_ms: int | None) -> int:
        """The ``after_ms`` of a new holder that found the fence ``found_ms`` (``None``: the worker ID has none): that
        fence, or a window below the clock if that is higher. The generator mints nothing at or below it, so the
        holder's window has a real lower bound for tracing, and the clock is a window ahead of it: no wait."""
        return max(found_ms or 0, self._now_ms() - self.window_ms)

    def _first_fence(self, after_ms: int) -> int:
        """The fence a new holder writes: 1.5 windows above the clock, as any extension puts it, or, if the old fence
        is further ahead than that, just high enough for the first tick above it. Never a window above the old fence:
        a holder that dies without closing leaves its fence for the next, and leads would add up (DESIGN.md 3a)."""
        return max(self._now_ms() + self._fence_ahead_ms(), self._first_tick_ms(after_ms))

    def _first_tick_ms(self, after_ms: int) -> int:
        """The start of the first tick a holder whose window starts after ``after_ms`` can mint."""
        return self.layout.tick_ms(self.layout.tick_of(after_ms) + 1)

    def _fence_ahead_ms(self) -> int:
        """How far above the clock a fence is written: 1.5 windows, so it is extended every half window."""
        return self.window_ms + self.window_ms // 2

    def _fence_target_ms(self, now_ms: int) -> int:
        """Where the fence should be now. 1.5 windows above the clock, as for any holder; a holder riding ahead of the
        clock (:meth:`minting_at`) needs more only if the tick it mints comes close to that:

        - up to the lead its claim found (``_lead_found_ms``, the first tick it may mint less the clock then) above
          the clock, and at most 1.5 windows above the tick it mints. A rider consumes ticks no faster than the clock
          runs, unless it outpaces it, so this covers it, and a holder that dies leaves its fence no further ahead
          than the larger of 1.5 windows and the lead it found: its successors' leads never add up.
        - beyond that (its ticks outpace the clock, or the clock stepped back under it), 1.5 windows above the tick
          it mints: its lead is bounded by ``max_lead_ms`` instead."""
        ahead_ms, minting_ms = self._fence_ahead_ms(), self._minting_ms
        allowed_ms = now_ms + max(self._lead_found_ms, ahead_ms)
        if minting_ms > allowed_ms:
            return minting_ms + ahead_ms
        return max(now_ms + ahead_ms, min(minting_ms + ahead_ms, allowed_ms))

    def _extension_due(self, fence_ms: int, now_ms: int) -> bool:
        """Whether the fence ``fence_ms`` is to be raised now: it has fallen half a window below its target, or it is
        nearer the tick the holder mints than the target is above it (so the fence keeps its distance to a rider's
        ticks growing, in writes that double it, and a tick past it gets an extension at once)."""
        return self._due_in_ms(fence_ms, now_ms) <= 0

    def _due_in_ms(self, fence_ms: int, now_ms: int) -> int:
        """In how many ms of the clock an extension of ``fence_ms`` is due (0 or less: now). The target rises with
        the clock; a rider's next tick can make it due sooner (:meth:`minting_at` wakes the renewal thread then)."""
        target_ms = self._fence_target_ms(now_ms)
        below_target_ms = fence_ms + self.window_ms // 2 - target_ms
        near_rider_ms = 2 * fence_ms - self._minting_ms - target_ms  # 0 once target - fence >= fence - tick
        return max(min(below_target_ms, near_rider_ms), fence_ms - target_ms + 1)

    def _none_claimable(self, all_held: str) -> LeaseUnavailable:
        """What a claim that found no worker ID raises: ``all_held`` (the backend's account), or for a switch, that
        none is free with a fence below its bound."""
        if self._fence_below_ms is not None:
            return LeaseUnavailable(f"no free worker ID has a fence below {iso_ms(self._fence_below_ms)}")
        return LeaseUnavailable(all_held)

    def _acquire_checked(self) -> Reservation:
        """Claim a worker ID if the clock is trusted. A clock behind the fence found is not waited out here: the
        generator mints above that fence, riding ahead of the clock or refusing (DESIGN.md)."""
        problem = self.clock_untrusted = self._clock_problem()
        if problem:
            raise ClockUntrusted(problem)
        reservation = self._acquire(self._new_holder())
        self._fence_below_ms, self._minting_ms = None, -1  # a new claim: the holder has minted nothing under it
        self._lead_found_ms = max(0, self._first_tick_ms(reservation.after_ms) - self._now_ms())
        with self._lock:
            closing = self._closing.is_set()
            if not closing:
                self._state, self._reason = LeaseState.HELD, None
        if closing:  # close() gave up waiting for this acquisition: hand the worker ID straight back
            self._release(reservation, reservation.after_ms)
            raise LeaseUnavailable("the lease was closed while it was being acquired")
        log.info("lease acquired", extra={"event": "lease_acquired", **vars(reservation)})
        return reservation

    def _clock_problem(self) -> str | None:
        """Why the local clock cannot be trusted now, or ``None``. Backends with a reference clock override it."""
        return None

    def _hand_over(self, reservation: Reservation) -> None:
        """Make ``reservation`` (durable already) the current one and give it to the listener (the generator's
        ``_on_reservation``), unless the lease was lost or released meanwhile."""
        with self._handing_over:
            with self._lock:
                if self._state is not LeaseState.HELD and self._state is not LeaseState.SUSPENDED:
                    return  # lost or released meanwhile: a stale reservation must never reach the listener
                self._reservation = reservation
            self._listener(reservation)

    def _run(self) -> None:
        """Run :meth:`_step` until closed. A step that fails (an error, or a reason not to mint) is retried after an
        exponential, jittered back-off, and wake-ups (:meth:`renew_soon`) do not cut a back-off short: a fleet whose
        writes keep failing, or whose clocks are off, never storms its disk or ZooKeeper. A healthy lease honours a
        wake-up at once, but takes at most one step per ``WAKE_SPACING_S``."""
        failures = 0
        while not self._closing.is_set():
            self._wake.clear()
            started = time.monotonic()
            try:
                delay = self._step()
                failed = self._reason is not None
            except Exception as exc:  # a backend fault must never kill renewal; retry after a back-off
                self._failure_log.warning("lease renewal step failed: %s", exc, event="lease_step_failed")
                delay, failed = 0.0, True
            if failed:
                failures += 1
                self.renewal_failures += 1
                self._closing.wait(max(delay, backoff_s(failures)))
                continue
            failures = 0
            self._wake.wait(delay)
            self._closing.wait(started + WAKE_SPACING_S - time.monotonic())

    def _step(self) -> float:
        """One pass of the state machine; returns how long (s) to sleep unless woken."""
        with self._lock:
            state, reservation = self._state, self._reservation
        if state in (LeaseState.ACQUIRING, LeaseState.LOST):
            try:
                self._hand_over(self._acquire_checked())
            except LeaseUnavailable as exc:
                with self._lock:
                    self._reason = f"no lease yet: {exc}" if state is LeaseState.ACQUIRING else f"lease lost: {exc}"
                return 1.0
            return 0.0
        if state is not LeaseState.HELD or reservation is None:
            return 0.5  # SUSPENDED: mint up to the fence already reserved, extend nothing
        problem = self.clock_untrusted = self._clock_problem()
        with self._lock:
            if self._state is not LeaseState.HELD:
                return 0.0  # lost or released meanwhile, on another thread: its reason stands, nothing to extend
            self._reason = problem
        if problem:
            return 1.0  # do not push the fence ahead on a clock we do not trust
        now = self._now_ms()
        fence = reservation.fence_ms
        if self._extension_due(fence, now):
            fence = self._fence_target_ms(now)
            try:
                self._extend(reservation, fence)
            except LeaseLost as exc:
                self._lose(str(exc))
                return 0.0
            self._hand_over(replace(reservation, fence_ms=fence))
            log.debug(
                "fence extended",
                extra={"event": "fence_extended", "worker_id": reservation.worker_id, "fence_ms": fence},
            )
        return self._next_step_s(fence, now)

    def _next_step_s(self, fence_ms: int, now_ms: int) -> float:
        """How long the renewal thread may sleep before an extension of ``fence_ms`` is due, unless woken."""
        return min(max(self._due_in_ms(fence_ms, now_ms), 0) / 1000 + 0.001, self.window_ms / 1000)

    # -- census (metrics) ---------------------------------------------------------------------------

    @abstractmethod
    def census(self) -> Census:
        """How this lease's worker IDs stand now. Cheap at any scale: O(1) coordination requests (one listing of the
        claims), never a read of every record, so quarantined IDs are those this lease found in its own claims' scans.
        Blocking I/O: call it off the event loop. Raises :class:`LeaseUnavailable` when it cannot be told."""

    def _census_of(self, worker_ids: range, held: set[int]) -> Census:
        """The census of ``worker_ids`` of which ``held`` have a live claim."""
        quarantined = {w for w in self.quarantined if w in worker_ids} - held
        return Census(len(worker_ids), sum(1 for w in held if w in worker_ids), len(quarantined))
