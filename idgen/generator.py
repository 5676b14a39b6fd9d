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

Invariants:

- ticks only move forward: a snapshot is published only for a tick above every tick published before;
- a snapshot is published only for a tick ``t`` with ``after < t <= fence`` of the current reservation
  (in Unix ms, the tick's start), and only while a reservation is held;
- so IDs from one generator are unique and strictly increasing, and IDs from holders of one worker ID
  never meet, because their reservations' windows are disjoint (see docs/DESIGN.md);
- a process mints only from snapshots it published itself, under a lease it started itself;
- after ``close()`` no new tick is opened: the final fence it hands the lease covers every ID minted.

Waits are bounded: an exhausted sequence waits for the next tick (one time unit) and a clock behind by
at most ``rollback_tolerance_ms`` is waited out. Anything longer raises an :class:`~idgen.errors.Unavailable`.
"""

from __future__ import annotations

import itertools
import operator
import os
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from idgen.clock import SYSTEM_CLOCK, Clock
from idgen.errors import ClockBehind, FenceReached, InvalidInput, LayoutMismatch, NoLease, TimeExhausted
from idgen.forking import process_marker
from idgen.layout import DEFAULT_LAYOUT, Layout, get_layout, iso_ms
from idgen.leases.base import Lease, Reservation

DEFAULT_ROLLBACK_TOLERANCE_MS = 5


class _Tick:
    """The ``size`` IDs of one tick, in order: ``ids`` yields each of them once, then stops."""

    __slots__ = ("end_ns", "ids", "size", "start_ns")

    def __init__(self, start_ns: int, end_ns: int, first: int, step: int, size: int) -> None:
        self.start_ns, self.end_ns, self.size = start_ns, end_ns, size
        self.ids = iter(range(first, first + step * size, step))

    def taken(self) -> int:
        """How many of its IDs have been handed out so far."""
        return self.size - operator.length_hint(self.ids)


_NO_TICK = _Tick(0, 0, 0, 1, 0)  # matches no clock reading: every call takes the slow path


class Generator:
    """Mints 63-bit IDs of ``layout`` under the worker ID that ``lease`` holds. Thread-safe.

    With no ``lease`` it takes a :class:`~idgen.leases.local.LocalLease` (``lease_options`` go to it).
    """

    def __init__(
        self,
        layout: Layout | str = DEFAULT_LAYOUT,
        lease: Lease | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rollback_tolerance_ms: int = DEFAULT_ROLLBACK_TOLERANCE_MS,
        **lease_options: Any,
    ) -> None:
        self.layout = get_layout(layout)
        if lease is None:
            from idgen.leases.local import LocalLease

            lease = LocalLease(self.layout, clock=clock, **lease_options)
        elif lease.layout != self.layout:
            raise LayoutMismatch(
                f"the lease is for layout {lease.layout.name!r}, the generator for {self.layout.name!r}"
            )
        self.lease = lease
        self.clock = clock
        self.rollback_tolerance_ns = rollback_tolerance_ms * 1_000_000
        self.overflow_waits = 0
        self.clock_rollbacks = 0
        self._now_ns = clock.now_ns
        self._lock = threading.Lock()
        self._snapshot = _NO_TICK
        self._taken_before = 0  # IDs handed out from the snapshots before the current one
        self._tick = -1  # the highest tick published, or the first one the reservation forbids
        self._reservation: Reservation | None = None
        self._node = 0
        self._fence_tick = -1
        self._behind = False
        self._closed = False
        self._unit_ns = self.layout.unit_ms * 1_000_000
        self._time_shift = self.layout.shifts["time"]
        self._step = 1 << self.layout.shifts["sequence"]
        self._lock_free = getattr(sys, "_is_gil_enabled", lambda: True)()  # without the GIL, next() is not atomic
        self._pid = os.getpid()
        self._adopting: dict[int, threading.Lock] = {}  # pid -> the lock under which that process adopts a fork
        self._marker = process_marker()
        self.next_id = self._fast_path() if self._lock_free else self._next_id_locked
        self._start_lease()

    def _start_lease(self) -> None:
        try:
            self.lease.start(self._on_reservation)
        except BaseException:
            self.lease.close()  # e.g. a ZooKeeper client connected before every worker ID turned out to be taken
            raise

    # -- minting ----------------------------------------------------------------------------------

    next_id: Callable[[], int]
    """``next_id()``: the next ID, unique and greater than every ID this generator returned before.
    An instance attribute: the lock-free closure from :meth:`_fast_path` (or the locked path without a GIL)."""

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
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidInput(f"count must be a positive integer, not {n!r}")
        if not self._lock_free:
            self._check_fork()
            with self._lock:
                return [self._advance() for _ in range(n)]
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
        # ``setdefault`` is atomic, so every thread of this process gets the same new lock.
        with self._adopting.setdefault(pid, threading.Lock()):
            if pid == self._pid:
                return
            self._lock = threading.Lock()
            self._snapshot = _NO_TICK
            self._taken_before = 0
            self._reservation, self._fence_tick = None, -1
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
                self.overflow_waits += 1
                self.clock.sleep((snapshot.end_ns - now) / 1e9)
                continue
            if self._reservation is None:
                raise NoLease("the generator is closed" if self._closed else self._why_no_lease())
            tick = self.layout.tick_of(now // 1_000_000)
            if tick > self._tick:
                return self._open_tick(tick)
            # The clock is at or behind the last tick used: wait for the next tick, if that is soon.
            behind_ns = self._tick_start_ns(self._tick) - now
            if behind_ns > 0 and not self._behind:
                self._behind = True
                self.clock_rollbacks += 1
            if behind_ns > self.rollback_tolerance_ns:
                raise ClockBehind(
                    behind_ns / 1e6, f"the last timestamp used or reserved ({iso_ms(self.layout.tick_ms(self._tick))})"
                )
            self.clock.sleep((self._tick_start_ns(self._tick + 1) - now) / 1e9)

    def _open_tick(self, tick: int) -> int:
        if tick > self._fence_tick:
            self.lease.renew_soon()
            raise FenceReached(
                f"the clock ({iso_ms(self.layout.tick_ms(tick))}) has passed the reserved fence"
                f" ({iso_ms(self.layout.tick_ms(self._fence_tick))}); waiting for the lease to extend it",
                retry_after=0.1,
            )
        if tick > self.layout.max_tick or tick < 0:
            raise TimeExhausted(
                f"layout {self.layout.name!r} cannot encode the current time: its time bits cover "
                f"{iso_ms(self.layout.epoch_ms)} to {iso_ms(self.layout.expires_ms)}"
            )
        start_ns = self._tick_start_ns(tick)
        first = tick << self._time_shift | self._node
        snapshot = _Tick(start_ns, start_ns + self._unit_ns, first, self._step, self.layout.sequence_capacity)
        self._tick, self._behind = tick, False
        self._publish(snapshot)
        return next(snapshot.ids)

    def _publish(self, snapshot: _Tick) -> None:
        """Make ``snapshot`` the one ``next_id`` takes from; the caller holds ``self._lock``."""
        previous, self._snapshot = self._snapshot, snapshot
        # A thread that read ``previous`` just before the swap may still take one of its IDs (valid: its tick is
        # inside the reservation); only the count below can miss it.
        self._taken_before += previous.taken()

    def _tick_start_ns(self, tick: int) -> int:
        return self.layout.tick_ms(tick) * 1_000_000

    # -- the lease feeds the generator --------------------------------------------------------------

    def _on_reservation(self, reservation: Reservation | None) -> None:
        """Called by the lease on acquisition, extension, loss and release."""
        with self._lock:
            if self._closed and reservation is not None:
                return  # an extension racing close(): the final fence is computed already; never mint again
            previous, self._reservation = self._reservation, reservation
            if reservation is None:
                self._publish(_NO_TICK)  # stop at once
                self._fence_tick = -1
                return
            self._fence_tick = self.layout.tick_of(reservation.fence_ms)
            if previous is None or previous.lease_id != reservation.lease_id:
                # A new claim: mint only above the old holder's fence, and above all this generator minted.
                self._node = self.layout.node_bits(reservation.worker_id)
                self._tick = max(self._tick, self.layout.tick_of(reservation.after_ms))
                self._publish(_NO_TICK)

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
            return self._taken_before + self._snapshot.taken()

    @property
    def worker_id(self) -> int | None:
        """The leased worker ID; ``None`` without a lease, and in a forked child until its first use leases one."""
        reservation = self._reservation
        return reservation.worker_id if reservation and os.getpid() == self._pid else None

    def readiness(self, rollback_tolerance_ms: float | None = None) -> tuple[bool, str | None]:
        """Whether the next ``next_id`` is expected to succeed (or, with a larger ``rollback_tolerance_ms`` than
        the generator's, to succeed after a wait the caller will do), and if not, why."""
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
        if behind_ms * 1_000_000 > tolerance_ns:
            return False, f"clock is {behind_ms} ms behind the last timestamp used or reserved"
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
            self._publish(_NO_TICK)
            high_water_ms = self.layout.tick_ms(self._tick)  # nothing was minted above it, even if nothing was
        self.lease.close(high_water_ms)

    def __enter__(self) -> Generator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
