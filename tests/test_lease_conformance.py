"""The Lease contract (idgen/leases/base.py), checked the same way on every backend.

Every test takes the ``backend`` fixture and runs once per name in ``lease_backends.BACKENDS``: ``local``
(a state directory), ``zookeeper`` (the shared test server, with credentials) and ``etcd`` (the shared test member,
auth enabled). A new backend runs the whole
suite by adding one class and one name there. Holders are real processes (tests/holder.py) wherever users have
processes: concurrent starts, clean stops, kill -9, another process taking a claim, fork.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from forks import Child
from holder import HolderProcess
from lease_backends import BACKENDS, WINDOW_MS, Backend, make_backend, observe
from polling import eventually, poll

from idgen import DEFAULT_LAYOUT, Generator, Layout, decode
from idgen.clock import ManualClock
from idgen.errors import LeaseUnavailable, Unavailable
from idgen.leases.base import Lease, Reservation

EPOCH = DEFAULT_LAYOUT.epoch_ms
TINY = Layout("tiny", (("time", 41), ("worker_id", 2), ("sequence", 20)), epoch_ms=EPOCH)  # 4 worker IDs
SOLO = Layout("solo", (("time", 41), ("sequence", 22)), epoch_ms=EPOCH)  # 1 worker ID: every holder reuses it


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Backend]:
    made = make_backend(request.param, tmp_path, request.getfixturevalue)
    yield made
    made.close()


@pytest.fixture
def leases() -> Iterator[list[Lease]]:
    """Leases a test started; closed at the end (closing twice is harmless)."""
    made: list[Lease] = []
    yield made
    for lease in made:
        lease.close()


def stamp(id_: int, layout: Layout) -> int:
    return decode(id_, layout)["timestamp_ms"]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def start(leases: list[Lease], lease: Lease, listener: Callable[[Reservation | None], None] = lambda _: None) -> Lease:
    leases.append(lease)
    lease.start(listener)
    return lease


def reservation(lease: Lease) -> Reservation:
    held = lease.status().reservation
    assert held is not None, lease.status()
    return held


# -- acquisition ----------------------------------------------------------------------------------


def test_processes_starting_at_once_get_distinct_worker_ids_and_one_more_is_refused_clearly(
    backend: Backend, spawn_holder: Callable[..., HolderProcess], leases: list[Lease]
) -> None:
    started = [backend.holder(spawn_holder, TINY) for _ in range(4)]  # racing for the same never-used IDs
    assert sorted(h.ready().worker_id for h in started) == [0, 1, 2, 3]
    assert len({h.first_id for h in started}) == 4
    with pytest.raises(LeaseUnavailable, match=r"all 4 worker IDs .* are held by"):
        start(leases, backend.lease(TINY))


def test_the_first_fence_is_durable_before_it_is_published_and_a_window_ahead(
    backend: Backend, leases: list[Lease]
) -> None:
    seen: list[tuple[Reservation, int | None]] = []

    def listener(published: Reservation | None) -> None:
        if published is not None:
            seen.append((published, backend.fence(TINY, published.worker_id)))  # what is stored at that moment

    before = now_ms()
    lease = start(leases, backend.lease(TINY), listener)
    first, durable = seen[0]
    assert first == reservation(lease)
    assert durable is not None and durable >= first.fence_ms
    assert first.fence_ms >= before + WINDOW_MS
    assert first.found_ms is None and first.after_ms < before  # a never-used worker ID: no fence found


def test_extension_keeps_the_durable_fence_a_window_ahead_of_the_clock(backend: Backend, leases: list[Lease]) -> None:
    clock = ManualClock()
    seen: list[tuple[Reservation, int | None]] = []

    def listener(published: Reservation | None) -> None:
        if published is not None:
            seen.append((published, backend.fence(TINY, published.worker_id)))

    lease = start(leases, backend.lease(TINY, clock=clock), listener)
    fences = [reservation(lease).fence_ms]
    for _ in range(4):
        clock.advance(WINDOW_MS * 0.7)  # past the renewal point: the fence is now less than a window ahead
        lease.renew_soon()
        fences.append(
            poll(
                lambda: (f := reservation(lease).fence_ms) >= clock.now_ms() + WINDOW_MS and f,
                what="the fence to be extended",
            )
        )
    assert fences == sorted(set(fences))
    poll(lambda: len(seen) == 5, what="the listener to get every extension")  # it runs just after status() changes
    assert all(durable is not None and durable >= published.fence_ms for published, durable in seen)


# -- successors -------------------------------------------------------------------------------------


def test_after_a_clean_stop_the_fence_is_the_last_id_and_the_successor_starts_above_it(
    backend: Backend, spawn_holder: Callable[..., HolderProcess]
) -> None:
    predecessor = backend.holder(spawn_holder, SOLO).ready()
    predecessor.stop()
    fence = backend.fence(SOLO, 0)
    assert fence == stamp(predecessor.first_id, SOLO)  # lowered to the high-water mark: the one tick it used
    with Generator(SOLO, backend.lease(SOLO)) as successor:
        assert reservation(successor.lease).after_ms == fence
        first = successor.next_id()
    assert stamp(first, SOLO) > fence
    assert first > predecessor.first_id


def test_after_kill_9_the_successor_starts_strictly_above_the_fence_the_crash_left(
    backend: Backend, spawn_holder: Callable[..., HolderProcess]
) -> None:
    crashed = backend.holder(spawn_holder, SOLO).ready()
    crashed.kill()
    fence = backend.fence(SOLO, 0)
    assert fence is not None and fence >= stamp(crashed.first_id, SOLO) + WINDOW_MS - 1_000  # a window was reserved
    successor = poll(lambda: Generator(SOLO, backend.lease(SOLO)), what="the crashed claim to be freed")
    with successor:
        held = reservation(successor.lease)
        assert held.found_ms == fence  # after_ms is that, or a window below the clock if the claim came later
        assert held.after_ms >= fence
        first = successor.next_id()
    assert stamp(first, SOLO) > fence
    assert first > crashed.first_id


def test_holders_killed_one_after_another_leave_no_more_lead_than_a_clean_holder(
    backend: Backend, spawn_holder: Callable[..., HolderProcess]
) -> None:
    """Each successor rides above the fence the last one left; what it reserves must not add up from one to the next
    (DESIGN.md 3a). A 4 s window (fences 6 s ahead) outlasts a ZooKeeper session's expiry, so leads would add up
    there too."""
    window_ms, leads_ms, last = 4_000, [], 0

    def successor() -> HolderProcess | None:
        try:
            return backend.holder(spawn_holder, SOLO, window_ms=window_ms).ready()
        except RuntimeError:  # the last one's claim is not gone yet (its session has to expire)
            return None

    for _ in range(3):  # leads that add up grow from the first successor on
        holder = poll(successor, what="the killed holder's claim to be freed", timeout=30)
        assert holder.first_id > last
        last = holder.first_id
        holder.kill()
        fence = backend.fence(SOLO, 0)
        assert fence is not None
        leads_ms.append(fence - now_ms())
    assert max(leads_ms) <= window_ms * 3 // 2, f"leads of the fences left: {leads_ms} ms"


def test_release_lowers_the_fence_to_the_high_water_mark_but_never_below_after_nor_above_the_fence(
    backend: Backend, leases: list[Lease]
) -> None:
    clock = ManualClock()
    first = start(leases, backend.lease(SOLO, clock=clock))
    held = reservation(first)
    first.close(high_water_ms=held.fence_ms - 300)
    assert backend.fence(SOLO, 0) == held.fence_ms - 300

    second = start(leases, backend.lease(SOLO, clock=clock))
    assert reservation(second).after_ms == held.fence_ms - 300
    held = reservation(second)
    second.close(high_water_ms=held.after_ms - 5_000)  # minted nothing: the fence stays at after_ms
    assert backend.fence(SOLO, 0) == held.after_ms

    third = start(leases, backend.lease(SOLO, clock=clock))
    held = reservation(third)
    third.close(high_water_ms=held.fence_ms + 10_000)  # a high-water mark above the fence is not believed
    assert backend.fence(SOLO, 0) == held.fence_ms


def test_recycling_prefers_never_used_worker_ids_then_the_oldest_fence(backend: Backend, leases: list[Lease]) -> None:
    clock = ManualClock()
    a = start(leases, backend.lease(TINY, clock=clock))
    b = start(leases, backend.lease(TINY, clock=clock))
    used = [reservation(a).worker_id, reservation(b).worker_id]
    a.close(high_water_ms=clock.now_ms() + 500)  # released first, with the newer fence
    b.close(high_water_ms=clock.now_ms() + 200)
    order = [reservation(start(leases, backend.lease(TINY, clock=clock))).worker_id for _ in range(4)]
    assert sorted(order[:2]) == sorted({0, 1, 2, 3} - set(used))  # in any order: ZooKeeper's is random
    assert order[2:] == used[::-1]  # the oldest fence first (ZooKeeper's sample of 8 holds all 4)


# -- history and tracing ----------------------------------------------------------------------------


def test_history_records_each_holder_and_trace_names_the_one_that_minted_an_id(
    backend: Backend, spawn_holder: Callable[..., HolderProcess]
) -> None:
    other = backend.holder(spawn_holder, SOLO).ready()
    other.stop()
    with Generator(SOLO, backend.lease(SOLO)) as mine:
        my_id = mine.next_id()
        my_lease_id = reservation(mine.lease).lease_id
    history = backend.history(SOLO, 0)
    host = socket.gethostname()
    assert [(h.host, h.pid, h.lease_id) for h in history] == [
        (host, other.pid, other.lease_id),
        (host, os.getpid(), my_lease_id),
    ]
    reader = backend.lease(SOLO)
    try:
        traced = [reader.trace(0, stamp(i, SOLO)).holder for i in (other.first_id, my_id)]
        assert [(t.pid, t.lease_id) if t else None for t in traced] == [
            (other.pid, other.lease_id),
            (os.getpid(), my_lease_id),
        ]
    finally:
        reader.close()


def test_trace_skips_a_holder_that_minted_nothing_and_names_nobody_outside_every_window(backend: Backend) -> None:
    lease_ids, ids = [], []
    for mints in (True, False, True):  # the idle holder's window is empty: its successor has the same after_ms
        with Generator(SOLO, backend.lease(SOLO)) as gen:
            if mints:
                ids.append(gen.next_id())
            lease_ids.append(reservation(gen.lease).lease_id)
    reader = backend.lease(SOLO)
    try:
        assert [(t.lease_id if (t := reader.trace(0, stamp(i, SOLO)).holder) else None) for i in ids] == [
            lease_ids[0],
            lease_ids[2],
        ]
        future = reader.trace(0, now_ms() + 10 * 365 * 86_400_000)
        assert (future.holder, future.code) == (None, "future")
        early = reader.trace(0, EPOCH + 1)  # years before the first holder started
        assert (early.holder, early.code) == (None, "before_history")
    finally:
        reader.close()


# -- unreadable records -----------------------------------------------------------------------------

CORRUPT_RECORDS = {
    "not JSON": b"\x00\xffnot json",
    "empty": b"",
    "torn": b'{"fence_ms": 17',
    "fence a string": b'{"fence_ms": "x"}',
    "fence a boolean": b'{"fence_ms": true}',
    "fence missing": b'{"holders": []}',
    "a list": b"[]",
    "fence huge": json.dumps({"fence_ms": 10**30}).encode(),
    "fence negative": b'{"fence_ms": -5}',
}


@pytest.mark.parametrize("raw", CORRUPT_RECORDS.values(), ids=CORRUPT_RECORDS.keys())
def test_an_unreadable_record_quarantines_its_worker_id_and_the_others_still_work(
    backend: Backend, leases: list[Lease], raw: bytes
) -> None:
    with Generator(TINY, backend.lease(TINY)) as used:
        used.next_id()
        tampered = used.worker_id
    backend.tamper(TINY, tampered, raw)
    others = [reservation(start(leases, backend.lease(TINY))).worker_id for _ in range(3)]
    assert sorted(others) == sorted({0, 1, 2, 3} - {tampered})
    refused = backend.lease(TINY)
    with pytest.raises(LeaseUnavailable):
        start(leases, refused)  # the tampered worker ID is free but unreadable: never claimed
    assert tampered in refused.quarantined, refused.quarantined
    assert refused.quarantined[tampered]


# -- a claim taken away -------------------------------------------------------------------------------


def test_a_holder_whose_claim_is_taken_stops_and_never_mints_above_the_takers_fence(
    backend: Backend, spawn_holder: Callable[..., HolderProcess]
) -> None:
    lease = backend.lease(SOLO)
    published = observe(lease)
    minted: list[int] = []
    stop = threading.Event()
    with Generator(SOLO, lease) as gen:

        def mint() -> None:
            while not stop.is_set():
                with contextlib.suppress(Unavailable):
                    minted.extend(gen.next_ids(16))
                time.sleep(0.001)

        minter = threading.Thread(target=mint)
        minter.start()
        try:
            poll(lambda: len(minted) > 100, what="minting to start")
            bound = backend.take_claim(SOLO, 0, spawn_holder)
            noticed = eventually(lambda: None in published, timeout=10 * WINDOW_MS / 1000)
        finally:
            stop.set()
            minter.join()
    above = [i for i in minted if stamp(i, SOLO) > bound]
    assert len(above) == 0, f"{len(above)} IDs minted above the fence {bound} the new owner of worker 0 mints above"
    assert noticed, "the holder never learned that its claim was taken (no None published to the generator)"


def test_close_while_threads_mint_leaves_no_id_above_the_final_fence(backend: Backend) -> None:
    minted: list[list[int]] = [[] for _ in range(3)]
    gen = Generator(SOLO, backend.lease(SOLO))

    def mint(out: list[int]) -> None:
        while True:
            try:
                out.append(gen.next_id())
                out.extend(gen.next_ids(8))
            except Unavailable:
                return  # closed

    threads = [threading.Thread(target=mint, args=(out,)) for out in minted]
    for thread in threads:
        thread.start()
    poll(lambda: all(len(out) > 1_000 for out in minted), what="all threads to mint")
    gen.close()
    for thread in threads:
        thread.join()
    fence = backend.fence(SOLO, 0)  # where the successor will start
    assert fence is not None
    above = [i for out in minted for i in out if stamp(i, SOLO) > fence]
    assert len(above) == 0, f"{len(above)} IDs minted above the final fence {fence}, which a successor reuses"


# -- fork -----------------------------------------------------------------------------------------------


def _mint_for(gen: Generator, seconds: float) -> list[int]:
    out: list[int] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            out += gen.next_ids(50)
        except Unavailable:
            time.sleep(0.001)
    return out


def test_after_fork_parent_and_child_mint_disjoint_ids(backend: Backend) -> None:
    """``os.fork``, as gunicorn, Celery and multiprocessing fork. (A fork in C skips the at-fork hooks CPython needs
    in a child of a process with busy threads, such as kazoo's; tests/test_fork.py and test_model.py cover it on the
    local lease.)"""
    with Generator(TINY, backend.lease(TINY)) as gen:
        before = gen.next_ids(100)
        held = reservation(gen.lease)

        def in_child(report: Callable[[Any], None]) -> None:
            report(_mint_for(gen, 0.05))  # alongside the parent
            gen.close()
            report("closed")

        child = Child(os.fork, in_child)
        try:
            mine = _mint_for(gen, 0.05)
            theirs = child.next()
            assert theirs and mine
            shared = set(theirs) & (set(before) | set(mine))
            assert len(shared) == 0, f"parent and child minted {len(shared)} of the same IDs"
            assert len(set(theirs)) == len(theirs)
            assert child.next() == "closed"
        finally:
            child.close()
        after = gen.next_ids(100)  # the parent is unaffected by the child, its close included
        assert reservation(gen.lease).lease_id == held.lease_id
        assert min(after) > max(mine)
        durable = backend.fence(TINY, held.worker_id)
        assert durable is not None and durable >= stamp(after[-1], TINY)
