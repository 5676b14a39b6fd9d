"""The embedded generator: mints IDs locally inside the window its lease reserved.

Usage::

    from idgen import Generator
    with Generator() as gen:          # a local lease in the default state directory
        gen.next_id(), gen.next_ids(100)

How it mints. The current time unit (a *tick*) is one immutable :class:`_Tick` snapshot: the tick's wall
clock bounds and an iterator over that tick's IDs in order (a ``range`` iterator, so it ends by itself).
``next_id`` reads the clock and, while the clock is inside the snapshot's tick, takes the iterator's next
value. Under the GIL that ``next()`` is one C call and atomic, so this fast path needs no lock. Everything
else (a new tick, an exhausted sequence, a clock behind, the fence, a lease change) goes through
``_advance`` under ``self._lock``. Without the GIL every call, ``next_ids`` included, takes the lock.

Forks. A process forked from the one that made the generator (``os.fork``, multiprocessing, gunicorn ``--preload``,
a fork made in C by uWSGI) holds a copy of the current tick. The fast path also checks a wipe-on-fork marker
(:mod:`idgen.forking`), so in a child every call takes the slow path, which sees the new pid and *adopts* the
generator: it drops the parent's ticks, locks and lease (whose threads, connections and claim stay the parent's) and
leases a worker ID of its own, on first use. The parent is unaffected.

Clock steps. When the wall clock is behind the last tick used (stepped back, or behind the fence a previous holder
of the worker ID left), the generator *rides* the step: it keeps minting in ticks above the last one, inside its
reservation, instead of refusing. A ridden tick's snapshot is served from the moment it is opened until the wall
clock reaches the tick's end; the next tick opens only when its IDs run out, so the lead (how far IDs run ahead of
the clock) shrinks as the clock advances and never exceeds ``max_lead_ms``. Further behind than that, it refuses
(:class:`~idgen.errors.ClockBehind`) and leases, in the background, another worker ID whose fence is below the clock
(a *switch*, :mod:`idgen.switching`), then mints there; the old lease is released with its fence at the last tick
used. A batch stays strictly increasing across a switch (:class:`IdBatch`).

Invariants:

- under one reservation ticks only move forward: a snapshot is published only for a tick above every tick published
  under it before; a switch starts above the new reservation's ``after`` instead;
- a snapshot is published only for a tick ``t`` with ``after < t <= fence`` of the current reservation
  (in Unix ms, the tick's start), and only while a reservation is held; a ridden tick also has ``t`` at most
  ``max_lead_ms`` above the clock when it opens;
- so IDs minted under one reservation are unique and strictly increasing, and IDs from holders of one worker ID
  never meet, because their reservations' windows are disjoint (see docs/DESIGN.md); a generator's IDs strictly
  increase except across a switch, which happens only after the clock stepped back beyond ``max_lead_ms``;
- a process mints only from snapshots it published itself, under a lease it started itself;
- after ``close()`` no new tick is opened: the final fence it hands the lease covers every ID minted.

Waits are bounded: an exhausted sequence waits for the next tick (one time unit; while riding, for the bound to
allow the next tick) and, with ``max_lead_ms=0`` (no riding), a clock behind by at most ``rollback_tolerance_ms``
is waited out. Anything longer raises an :class:`~idgen.errors.Unavailable`.
"""

from __future__ import annotations

import functools
import itertools
import logging
import operator
import os
import sys
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from idgen.clock import SYSTEM_CLOCK, Clock
from idgen.errors import (
    ClockBehind,
    FenceReached,
    InvalidInput,
    LayoutMismatch,
    NoLease,
    TimeExhausted,
    whole_number,
)
from idgen.forking import ProcessLock, process_marker
from idgen.layout import DEFAULT_LAYOUT, Layout, get_layout, iso_ms
from idgen.leases.base import Lease, Reservation
from idgen.switching import WorkerSwitch

log = logging.getLogger("idgen.generator")

DEFAULT_ROLLBACK_TOLERANCE_MS = 5
DEFAULT_MAX_LEAD_MS = 15_000  # how far IDs may run ahead of a clock that stepped back (Hazelcast's Flake IDs: 15 s)


class _Tick:
    """The IDs of tick ``tick`` left when the snapshot was made (``size`` of them), in order, served while the wall
    clock is in ``[start_ns, end_ns)``: ``ids`` yields each of them once, then stops. ``start_ns`` is the tick's own
    start, or earlier for a tick ahead of the clock (ridden); ``end_ns`` is always the tick's end."""

    __slots__ = ("end_ns", "ids", "size", "start_ns", "tick")

    def __init__(self, tick: int, start_ns: int, end_ns: int, ids: Iterator[int], size: int) -> None:
        self.tick, self.start_ns, self.end_ns, self.ids, self.size = tick, start_ns, end_ns, ids, size

    def left(self) -> int:
        return operator.length_hint(self.ids)


_NO_TICK = _Tick(-1, 0, 0, iter(()), 0)  # matches no clock reading: every call takes the slow path


def _check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidInput(f"count must be a positive integer, not {n!r}")


class IdBatch:
    """``n`` IDs of ``generator``, minted in chunks by the caller (:meth:`Generator.batch`, :meth:`Generator.next_ids`).

    The rule it owns: a batch is strictly increasing, across a switch of worker IDs too. It reads
    ``worker_switches`` before the batch's first ID and after its last; if a switch came in between, ``ids`` may
    not be in order, so they are dropped (never returned, so never a duplicate) and the batch is minted afresh under
    the new worker ID. The count is raised only once the old worker ID's snapshot is gone, so a batch that read it
    after the raise took no old ID. Usage::

        for size in batch.chunk_sizes(chunk):
            batch.add(generator.next_ids(size))
        batch.ids  # n strictly increasing IDs
    """

    __slots__ = ("_generator", "_n", "ids")

    def __init__(self, generator: Generator, n: int) -> None:
        self._generator, self._n = generator, n
        self.ids: list[int] = []

    def chunk_sizes(self, chunk: int) -> Iterator[int]:
        """How many IDs to mint and :meth:`add` next, at most ``chunk`` each time, in order; it ends once ``ids``
        holds the whole batch, minted on one side of every switch."""
        while True:
            switches = self._generator.worker_switches
            self.ids = []
            while len(self.ids) < self._n:
                yield min(chunk, self._n - len(self.ids))
            if self._generator.worker_switches == switches:
                return
            # A switch of worker IDs came during the batch: mint it afresh (see the class docstring).

    def add(self, ids: list[int]) -> None:
        """The IDs of one chunk, minted by the generator after those added before."""
        self.ids += ids


class Generator:
    """Mints 63-bit IDs of ``layout`` under the worker ID that ``lease`` holds. Thread-safe.

    With no ``lease`` it takes a :class:`~idgen.leases.local.LocalLease` (``lease_options`` go to it).
    ``max_lead_ms``: how far ahead of a clock that stepped back IDs may run (see the module docstring); 0 refuses
    as soon as the clock is behind the last tick used by more than ``rollback_tolerance_ms``, and never switches.
    """

    def __init__(
        self,
        layout: Layout | str = DEFAULT_LAYOUT,
        lease: Lease | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rollback_tolerance_ms: int = DEFAULT_ROLLBACK_TOLERANCE_MS,
        max_lead_ms: int = DEFAULT_MAX_LEAD_MS,
        **lease_options: Any,
    ) -> None:
        whole_number("max_lead_ms", max_lead_ms, 0, "of milliseconds")
        whole_number("rollback_tolerance_ms", rollback_tolerance_ms, 0, "of milliseconds")
        if not (callable(getattr(clock, "now_ns", None)) and callable(getattr(clock, "sleep", None))):
            raise InvalidInput(f"clock must be a Clock (with now_ns() and sleep()), not {clock!r}")
        self.layout = get_layout(layout)
        if lease is None:
            from idgen.leases.local import LocalLease

            lease = LocalLease(self.layout, clock=clock, **lease_options)
        elif not isinstance(lease, Lease):
            raise InvalidInput(f"lease must be a Lease (such as LocalLease or ZkLease), not {lease!r}")
        elif lease_options:
            raise InvalidInput(
                f"{', '.join(sorted(lease_options))}: options of the default lease, not of the one given"
            )
        elif lease.layout != self.layout:
            raise LayoutMismatch(
                f"the lease is for layout {lease.layout.name!r}, the generator for {self.layout.name!r}"
            )
        self.lease = lease
        self.clock = clock
        self.rollback_tolerance_ns = rollback_tolerance_ms * 1_000_000
        self.max_lead_ms = max_lead_ms
        self.max_lead_ns = max_lead_ms * 1_000_000
        self.overflow_waits = 0
        self.clock_rollbacks = 0  # times the clock was seen behind the last tick used (each episode once)
        self.clock_rides = 0  # ... and ridden through
        # Times it moved to another worker ID, the clock beyond max_lead_ms behind; raised only once the old worker
        # ID's snapshot is gone, so a batch that reads it unchanged before its first ID and after its last is in order.
        self.worker_switches = 0
        self.lead_max_ms = 0.0  # the furthest ahead of the clock a tick was served
        self._now_ns = clock.now_ns
        self._lock = threading.Lock()
        self._snapshot = _NO_TICK
        self._taken_before = 0  # IDs handed out from the snapshots before the current one
        self._tick = -1  # the highest tick published, or the first one the reservation forbids
        self._tick_worker: int | None = None  # the worker ID self._tick was reached under
        self._reservation: Reservation | None = None
        self._node = 0
        self._fence_tick = -1
        self._behind = False  # the clock is behind the last tick used (one rollback episode)
        self._riding = False  # ... and the generator mints ahead of it
        self._closed = False
        self._unit_ns = self.layout.unit_ms * 1_000_000
        self._time_shift = self.layout.shifts["time"]
        self._step = 1 << self.layout.shifts["sequence"]
        self._lock_free = getattr(sys, "_is_gil_enabled", lambda: True)()  # without the GIL, next() is not atomic
        self._pid = os.getpid()
        self._adopting = ProcessLock()  # the lock under which a forked process adopts the generator
        self._marker = process_marker()
        self._init_switching()
        self.next_id = self._fast_path() if self._lock_free else self._next_id_locked
        self._start_lease()

    def _init_switching(self) -> None:
        """A switch of worker IDs of this process's own (:mod:`idgen.switching`), under this process's lock."""
        self._switching = WorkerSwitch(self._lock, self._now_ns, self._on_reservation, lambda: self._closed)

    def _start_lease(self) -> None:
        lease = self.lease
        try:
            lease.start(functools.partial(self._on_reservation, lease))
        except BaseException:
            lease.close()  # e.g. a ZooKeeper client connected before every worker ID turned out to be taken
            raise

    # -- minting ----------------------------------------------------------------------------------

    next_id: Callable[[], int]
    """``next_id()``: the next ID, unique and greater than every ID this generator returned before (see the module
    docstring for the one exception, a switch). An instance attribute: the lock-free closure from :meth:`_fast_path`
    (or the locked path without a GIL)."""

    def _fast_path(self) -> Callable[[], int]:
        """``next_id`` as a closure. The clock as a cell variable saves ~15% of a ~200 ns call over a
        method reading ``self._now_ns``, and the layout's limit leaves only 244 ns per ID. ``marker[0]`` is 0 in a
        forked child (whose copy of the snapshot holds the parent's IDs), which sends it to the slow path."""
        now_ns, slow_path, marker = self._now_ns, self._next_id_locked, self._marker

        def next_id() -> int:
            now = now_ns()
            snapshot = self._snapshot
            if snapshot.start_ns <= now < snapshot.end_ns and marker[0]:
                for id_ in snapshot.ids:  # the tick's next ID, if one is left
                    return id_
            return slow_path()

        return next_id

    def next_ids(self, n: int) -> list[int]:
        """``n`` IDs, strictly increasing. All or nothing: on an error none of them is returned."""
        _check_count(n)
        if not self._lock_free:
            self._check_fork()
            with self._lock:
                return [self._advance() for _ in range(n)]
        batch = IdBatch(self, n)
        for size in batch.chunk_sizes(n):
            batch.add(self._next_ids_lock_free(size))
        return batch.ids

    def batch(self, n: int) -> IdBatch:
        """A batch of ``n`` strictly increasing IDs for a caller that mints them in chunks, with ``next_ids``, and
        does other work in between (the HTTP service lets its event loop run): see :class:`IdBatch`."""
        _check_count(n)
        return IdBatch(self, n)

    def _next_ids_lock_free(self, n: int) -> list[int]:
        """``n`` IDs, in order unless a switch of worker IDs came meanwhile (:class:`IdBatch` checks that)."""
        out: list[int] = []
        while len(out) < n:
            marker = self._marker  # before the snapshot: an adoption swaps the snapshot first, then the marker
            snapshot = self._snapshot
            if snapshot.start_ns <= self._now_ns() < snapshot.end_ns and marker[0]:
                out += itertools.islice(snapshot.ids, n - len(out))
                if len(out) == n:
                    break
            out.append(self._next_id_locked())  # a new tick, or the wait for one
        return out

    def _next_id_locked(self) -> int:
        self._check_fork()
        with self._lock:
            return self._advance()

    def _check_fork(self, start_lease: bool = True) -> None:
        """In a process forked from this generator's: adopt it first (once, whichever thread comes first)."""
        pid = os.getpid()
        if pid == self._pid:
            return
        # The parent's locks may have been held by threads that do not exist here: take one made in this process.
        with self._adopting():
            if pid == self._pid:
                return
            self._lock = threading.Lock()
            self._snapshot = _NO_TICK
            self._taken_before = 0
            self._reservation, self._fence_tick = None, -1
            # The parent's ticks are no floor here: this process claims a worker ID of its own, whose window is.
            self._tick, self._tick_worker, self._behind, self._riding = -1, None, False, False
            self._init_switching()  # the parent's switch, if one runs, is the parent's
            self._marker = process_marker()
            if self._lock_free:
                self.next_id = self._fast_path()  # a caller holding the old closure is still right, only slower
            self.lease = self.lease.forked()
            if start_lease and not self._closed:
                self._start_lease()  # if it raises, the next call adopts afresh
            self._pid = pid

    def _advance(self) -> int:
        """Mint one ID the slow way; the caller holds ``self._lock``."""
        while True:
            now = self._now_ns()
            snapshot = self._snapshot
            if snapshot.start_ns <= now < snapshot.end_ns:
                for id_ in snapshot.ids:
                    return id_
                if self._tick_start_ns(self._tick) <= now:  # a tick of the clock, used up: wait for the next one
                    self.overflow_waits += 1
                    self.clock.sleep((snapshot.end_ns - now) / 1e9)
                    continue
                # a tick ahead of the clock, used up: ride on into the next one, below
            if self._reservation is None:
                raise NoLease("the generator is closed" if self._closed else self._why_no_lease())
            tick = self.layout.tick_of(now // 1_000_000)
            if tick > self._tick:
                return self._open_tick(tick, self._tick_start_ns(tick))
            behind_ns = self._tick_start_ns(self._tick) - now
            if behind_ns <= 0:  # in the last tick used, none of its IDs left for us: the next tick is soon
                self.clock.sleep((self._tick_start_ns(self._tick + 1) - now) / 1e9)
                continue
            if not self._behind:
                self._behind = True
                self.clock_rollbacks += 1
            if behind_ns <= self.max_lead_ns:
                ridden = self._ride(now, behind_ns)
                if ridden is not None:
                    return ridden
                continue
            if behind_ns <= self.rollback_tolerance_ns:
                self.clock.sleep((self._tick_start_ns(self._tick + 1) - now) / 1e9)
                continue
            self._switch_soon()
            raise self._refusal(behind_ns)

    def _ride(self, now: int, behind_ns: int) -> int | None:
        """The clock is ``behind_ns`` behind the last tick used, within ``max_lead_ms``: an ID from the rest of that
        tick, else from the next tick if the bound allows it; ``None`` after waiting (at most a unit) for the bound."""
        if not self._riding:
            self._riding = True
            self.clock_rides += 1
            log.warning(
                "clock is %.0f ms behind the last timestamp used; riding through: IDs run ahead of it, inside the"
                " reserved fence",
                behind_ns / 1e6,
                extra={"event": "clock_ride", "behind_ms": behind_ns / 1e6, "worker_id": self.worker_id},
            )
        snapshot = self._snapshot
        left = snapshot.left() if snapshot.tick == self._tick else 0
        if left:  # the rest of the last tick's IDs, served until the clock reaches its end
            resumed = _Tick(self._tick, now, snapshot.end_ns, snapshot.ids, left)
            self.lead_max_ms = max(self.lead_max_ms, behind_ns / 1e6)
            self._publish_tick(resumed)
            for id_ in resumed.ids:
                return id_
        wait_ns = self._tick_start_ns(self._tick + 1) - now - self.max_lead_ns
        if wait_ns <= 0:
            return self._open_tick(self._tick + 1, now)
        self.overflow_waits += 1
        self.clock.sleep(wait_ns / 1e9)
        return None

    def _open_tick(self, tick: int, start_ns: int) -> int:
        """Publish ``tick`` and mint its first ID. ``start_ns``: from when it is served, its own start, or the clock
        now for a tick ahead of the clock."""
        tick_ms = self.layout.tick_ms(tick)
        ahead_ns = tick_ms * 1_000_000 - start_ns
        if ahead_ns > 0:
            self.lease.minting_at(tick_ms)  # so the lease keeps its fence above the ridden ticks
        if tick > self._fence_tick:
            self.lease.renew_soon()
            raise FenceReached(
                f"the next timestamp ({iso_ms(tick_ms)}) is past the reserved fence"
                f" ({iso_ms(self.layout.tick_ms(self._fence_tick))}); waiting for the lease to extend it",
                retry_after=0.1,
            )
        if tick > self.layout.max_tick or tick < 0:
            raise TimeExhausted(
                f"layout {self.layout.name!r} cannot encode the current time: its time bits cover "
                f"{iso_ms(self.layout.epoch_ms)} to {iso_ms(self.layout.expires_ms)}"
            )
        size = self.layout.sequence_capacity
        first = tick << self._time_shift | self._node
        ids = iter(range(first, first + self._step * size, self._step))
        snapshot = _Tick(tick, start_ns, self._tick_start_ns(tick + 1), ids, size)
        if ahead_ns > 0:
            self.lead_max_ms = max(self.lead_max_ms, ahead_ns / 1e6)
        else:  # the clock has reached the ticks it stamps: any step back is over
            self._behind = self._riding = False
            self._switching.failure = None
        self._tick = tick
        self._publish_tick(snapshot)
        return next(snapshot.ids)

    def _publish_tick(self, snapshot: _Tick) -> None:
        """Make ``snapshot`` the one ``next_id`` takes from; the caller holds ``self._lock``."""
        previous, self._snapshot = self._snapshot, snapshot
        # A thread that read ``previous`` just before the swap may still take one of its IDs (valid: its tick is
        # inside the reservation); only the count below can miss it. A resumed tick carries on previous's IDs.
        carried = snapshot.size if snapshot.ids is previous.ids else previous.left()
        self._taken_before += previous.size - carried

    def _tick_start_ns(self, tick: int) -> int:
        return self.layout.tick_ms(tick) * 1_000_000

    def _refusal(self, behind_ns: int) -> ClockBehind:
        """Why the clock, ``behind_ns`` behind the last tick used and beyond every allowance, gets no ID."""
        what = f"the last timestamp used or reserved ({iso_ms(self.layout.tick_ms(self._tick))})"
        if not self.max_lead_ns:
            return ClockBehind(behind_ns / 1e6, what)
        beyond_s = (behind_ns - self.max_lead_ns) / 1e9
        return ClockBehind(
            behind_ns / 1e6,
            f"{what}, more than the {self.max_lead_ms} ms IDs may run ahead of it",
            until=self._switching.until(),
            retry_after=min(self._switching.retry_after_s(), beyond_s),
        )

    # -- switching worker IDs -----------------------------------------------------------------------

    def _switch_soon(self) -> None:
        """Start a switch to a worker ID whose fence is below the clock (:meth:`WorkerSwitch.start_soon
        <idgen.switching.WorkerSwitch.start_soon>`); the caller holds the lock and has seen the clock beyond
        ``max_lead_ms`` behind. Called by a refused ``next_id`` and by :meth:`readiness` (the HTTP app checks it every
        half second, so an instance out of rotation still retries). None with ``max_lead_ms=0``, nor once closed."""
        if self.max_lead_ns and not self._closed:
            self._switching.start_soon(self.lease)

    # -- the lease feeds the generator --------------------------------------------------------------

    def _on_reservation(self, lease: Lease, reservation: Reservation | None) -> None:
        """Called by ``lease`` on acquisition, extension, loss and release. Only the current lease is heard, and the
        first reservation of a switch's candidate, which makes that lease current if the clock is still beyond
        ``max_lead_ms`` behind the last tick used (else the switch thread closes it: no switch is needed any more)."""
        with self._lock:
            if self._closed and reservation is not None:
                return  # an extension racing close(): the final fence is computed already; never mint again
            switching = lease is not self.lease
            if switching:
                if not self._switching.takes(lease, reservation) or not self._beyond_lead():
                    return  # a lease switched away from, a candidate that failed, or the clock has come back
                self._switching.retire(self.lease, self.layout.tick_ms(self._tick))
                self.lease, self._reservation = lease, None
            previous, self._reservation = self._reservation, reservation
            if reservation is None:
                self._publish_tick(_NO_TICK)  # stop at once
                self._fence_tick = -1
                return
            self._fence_tick = self.layout.tick_of(reservation.fence_ms)
            if previous is None or previous.lease_id != reservation.lease_id:
                # A new claim: mint only above the old holder's fence, and above all this generator minted, unless
                # that is a worker ID left behind beyond max_lead_ms (a switch, or a lost claim re-acquired elsewhere):
                # then this claim's own window is the floor (DESIGN.md section 3a), and it counts as a switch.
                leaving = switching or (reservation.worker_id != self._tick_worker and self._beyond_lead())
                if leaving:
                    self._tick, self._behind, self._riding = -1, False, False
                self._node = self.layout.node_bits(reservation.worker_id)
                self._tick = max(self._tick, self.layout.tick_of(reservation.after_ms))
                self._tick_worker = reservation.worker_id
                self._publish_tick(_NO_TICK)
                if leaving:
                    # Only now, with no snapshot of the old worker ID left to take from: a batch that reads the same
                    # count before its first ID and after its last was minted on one side of the switch (next_ids).
                    self.worker_switches += 1
                    if switching:
                        log.warning(
                            "switched to worker ID %d: the clock is beyond %d ms behind the fence of the one before",
                            reservation.worker_id,
                            self.max_lead_ms,
                            extra={"event": "worker_id_switched", "worker_id": reservation.worker_id},
                        )

    def _beyond_lead(self) -> bool:
        """Whether the last tick used is more than ``max_lead_ms`` ahead of the clock (never with ``max_lead_ms=0``);
        the caller holds the lock."""
        return bool(self.max_lead_ns) and self._tick_start_ns(self._tick) - self._now_ns() > self.max_lead_ns

    # -- state ------------------------------------------------------------------------------------

    def _why_no_lease(self) -> str:
        # Safe under self._lock: status() takes only the lease's state lock, never held while it calls us.
        return self.lease.status().reason or "no worker ID lease is held right now"

    @property
    def minted(self) -> int:
        """How many IDs this generator has handed out; never decreases. It counts IDs, not successful calls: a
        ``next_ids`` that fails part-way counts the IDs it took. Another thread taking an ID just as the tick
        changes may go uncounted."""
        with self._lock:
            return self._taken_before + self._snapshot.size - self._snapshot.left()

    @property
    def worker_id(self) -> int | None:
        """The leased worker ID; ``None`` without a lease, and in a forked child until its first use leases one."""
        reservation = self._reservation
        return reservation.worker_id if reservation and os.getpid() == self._pid else None

    @property
    def lead_ms(self) -> int:
        """How far the last tick used is ahead of the clock now: 0 unless riding a clock step."""
        if self._reservation is None:
            return 0
        return max(0, self.layout.tick_ms(self._tick) - self._now_ns() // 1_000_000)

    def stop_sleeping_on_rollbacks(self) -> None:
        """From now on, never sleep out a clock behind the last tick used (``rollback_tolerance_ms`` becomes 0): beyond
        what ``max_lead_ms`` rides, :class:`ClockBehind` is raised at once. For a caller that waits rollbacks out
        itself, such as the HTTP service, whose event loop must never sleep; it gives its own tolerance to
        :meth:`readiness`."""
        self.rollback_tolerance_ns = 0

    def readiness(self, rollback_tolerance_ms: float | None = None) -> tuple[bool, str | None]:
        """Whether the next ``next_id`` is expected to succeed (or, with a larger ``rollback_tolerance_ms`` than
        the generator's, to succeed after a wait the caller will do), and if not, why. Riding a clock step is ready."""
        if os.getpid() != self._pid:
            return False, "this process was forked from the generator's; it leases a worker ID of its own on first use"
        status = self.lease.status()
        reservation = self._reservation
        if reservation is None:
            return False, self._why_no_lease()
        if status.reason:
            return False, status.reason
        now_ms = self._now_ns() // 1_000_000
        if now_ms > reservation.fence_ms:
            return False, "the clock has passed the reserved fence; the lease has not extended it yet"
        behind_ms = self.layout.tick_ms(self._tick) - now_ms
        tolerance_ns = self.rollback_tolerance_ns if rollback_tolerance_ms is None else rollback_tolerance_ms * 1e6
        if behind_ms * 1_000_000 > max(tolerance_ns, self.max_lead_ns):
            reason = f"clock is {behind_ms} ms behind the last timestamp used or reserved"
            if self.max_lead_ns:
                with self._lock:
                    self._switch_soon()
                reason += f", more than the {self.max_lead_ms} ms IDs may run ahead of it; minting resumes when"
                reason += f" {self._switching.until()}"
            return False, reason
        return True, None

    def close(self) -> None:
        """Stop minting and release the lease, bringing its fence down to the last tick used. Idempotent.

        In a forked child that never minted, nothing is released: the lease it inherited is the parent's."""
        self._check_fork(start_lease=False)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # No thread opens a tick from here on; one that read the old snapshot takes IDs only in its tick.
            self._reservation, self._fence_tick = None, -1
            self._publish_tick(_NO_TICK)
            high_water_ms = self.layout.tick_ms(self._tick)  # nothing was minted above it, even if nothing was
            switcher = self._switching.thread
        if switcher is not None:
            switcher.join()  # it closes its candidate, or the lease it switched away from, before it ends
        self.lease.close(high_water_ms)

    def __enter__(self) -> Generator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
