"""Clock steps without outage (DESIGN.md section 3): a generator rides a step back inside its reservation, within
``max_lead_ms``; beyond it, it switches to a worker ID whose fence is below the clock. Driven by a manual clock over
real local leases; the fault suite (tests/faults/test_fault_clock.py) does the same to real servers."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from forks import Child
from polling import eventually, poll

from idgen import DEFAULT_LAYOUT, Generator, Layout, switching
from idgen.clock import ManualClock
from idgen.errors import ClockBehind, FenceReached, InvalidInput, LeaseUnavailable
from idgen.leases.base import DEFAULT_WINDOW_MS
from idgen.leases.local import LocalLease
from idgen.switching import SWITCH_RETRY_AFTER_S

WINDOW_MS = 1_000
# 16 IDs per 1 ms tick, so riding runs through ticks quickly.
SMALL = Layout("small", (("time", 41), ("worker_id", 18), ("sequence", 4)), epoch_ms=DEFAULT_LAYOUT.epoch_ms)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def make(tmp_path: Path, clock: ManualClock, workers: range = range(3, 4), **options: Any) -> Generator:
    layout = options.pop("layout", DEFAULT_LAYOUT)
    lease = LocalLease(layout, tmp_path, clock=clock, window_ms=WINDOW_MS, worker_ids=workers)
    return Generator(layout, lease, clock=clock, **options)


@pytest.fixture
def gen(tmp_path: Path, clock: ManualClock) -> Iterator[Generator]:
    with make(tmp_path, clock) as g:
        yield g


def stamp(id_: int, layout: Layout = DEFAULT_LAYOUT) -> int:
    return layout.decode(id_)["timestamp_ms"]


def record(tmp_path: Path, worker_id: int) -> dict[str, Any]:
    return json.loads((tmp_path / f"worker-{worker_id:05d}.json").read_text())


# -- riding -----------------------------------------------------------------------------------------------------


def test_a_step_back_within_the_bound_is_ridden_through_ready_and_in_order(gen: Generator, clock: ManualClock) -> None:
    before = gen.next_ids(10)
    clock.advance(-2_000)
    ridden = []
    for _ in range(200):  # 0.2 s of traffic on the stepped-back clock: never a refusal, never a wait
        ridden += gen.next_ids(30)
        clock.advance(1)
    assert clock.slept_s == 0
    assert before + ridden == sorted(set(before + ridden))
    assert gen.readiness() == (True, None)
    assert gen.clock_rides == 1 and gen.clock_rollbacks == 1
    assert 1_790 <= gen.lead_ms <= 2_000 and gen.lead_max_ms == pytest.approx(2_000, abs=1)
    fence = gen.lease.status().reservation.fence_ms
    assert max(stamp(i) for i in ridden) <= fence  # inside the reservation
    assert stamp(ridden[0]) == stamp(before[-1])  # the rest of the last tick first


def test_a_ride_drains_as_the_clock_catches_up(gen: Generator, clock: ManualClock) -> None:
    last = gen.next_id()
    clock.advance(-500)
    gen.next_id()
    clock.advance(501)  # the clock is past the tick it rode
    after = gen.next_id()
    assert gen.lead_ms == 0
    assert stamp(after) == clock.now_ms() and after > last
    clock.advance(-700)  # a new step is a new ride
    gen.next_id()
    assert gen.clock_rides == 2


def test_riding_ticks_open_only_as_the_last_runs_out_and_never_beyond_the_bound(
    tmp_path: Path, clock: ManualClock
) -> None:
    with make(tmp_path, clock, layout=SMALL, max_lead_ms=50) as gen:
        gen.next_id()
        clock.advance(-40)
        ids = gen.next_ids(16 * 30)  # 30 ticks' worth with the clock standing still: the bound stops the lead
        assert ids == sorted(set(ids))
        leads = [stamp(i, SMALL) - (clock.now_ms()) for i in ids]
        assert max(leads) <= 50  # the clock moved only by the waits the bound imposed
        assert clock.slept_s > 0
        assert gen.lead_max_ms <= 50


def test_riding_past_the_fence_gets_it_extended_above_the_lead(tmp_path: Path, clock: ManualClock) -> None:
    with make(tmp_path, clock, layout=SMALL, max_lead_ms=10_000) as gen:
        gen.next_id()
        fence = gen.lease.status().reservation.fence_ms
        clock.advance(-3_000)  # the fence is at most 1.5 s ahead: riding reaches it long before the clock does
        ids: list[int] = []

        def more() -> bool:
            try:
                ids.extend(gen.next_ids(16 * 100))
            except FenceReached:
                return False
            return stamp(ids[-1], SMALL) > fence

        poll(more, "riding past the first fence", 10)
        durable = record(tmp_path, 3)["fence_ms"]
    assert max(stamp(i, SMALL) for i in ids) <= durable
    assert durable >= stamp(ids[-1], SMALL) + WINDOW_MS  # extended from the lead, not from the clock alone


def test_max_lead_0_refuses_as_before(tmp_path: Path, clock: ManualClock) -> None:
    with make(tmp_path, clock, max_lead_ms=0) as gen:
        gen.next_id()
        clock.advance(-2_000)
        with pytest.raises(ClockBehind, match=r"2000\.0 ms behind .*until it catches up") as caught:
            gen.next_id()
        assert caught.value.retry_after == pytest.approx(2.0)
        assert gen.clock_rides == 0 and gen.worker_switches == 0


@pytest.mark.parametrize("bad", [-1, 1.5, "15", True, None])
def test_max_lead_must_be_a_whole_number_of_ms(tmp_path: Path, clock: ManualClock, bad: object) -> None:
    with pytest.raises(InvalidInput, match="max_lead_ms"):
        make(tmp_path, clock, max_lead_ms=bad)


def test_close_while_riding_leaves_the_fence_at_the_ridden_tick(tmp_path: Path, clock: ManualClock) -> None:
    with make(tmp_path, clock) as first:
        first.next_id()
        clock.advance(-1_000)
        last = first.next_ids(5_000)[-1]  # into the next tick, a second ahead of the clock
    assert record(tmp_path, 3)["fence_ms"] == stamp(last)
    with make(tmp_path, clock) as second:  # the successor starts above it, at once, riding too
        assert second.next_id() > last
    assert clock.slept_s == 0


# -- a restart behind the fence ------------------------------------------------------------------------------------


def test_a_restart_behind_the_old_fence_starts_right_above_it_without_waiting(
    tmp_path: Path, clock: ManualClock
) -> None:
    with make(tmp_path, clock) as first:
        old = first.next_ids(3)
    clock.advance(-3_000)  # the host's clock went back while nobody held worker 3
    with make(tmp_path, clock) as second:
        assert second.readiness() == (True, None)
        new = second.next_id()
        assert second.clock_rides == 1
    assert clock.slept_s == 0
    assert stamp(new) == stamp(old[-1]) + 1 and new > old[-1]


def test_a_crash_leaves_a_fence_ahead_and_the_restart_rides_above_it(tmp_path: Path, clock: ManualClock) -> None:
    first = make(tmp_path, clock)
    first.next_id()
    fence = first.lease.status().reservation.fence_ms
    first.lease._drop_claim()  # the process dies: its flock goes, its fence stays up to 1.5 windows ahead
    with make(tmp_path, clock) as second:
        new = second.next_id()
    assert stamp(new) == fence + 1 and clock.slept_s == 0


def crash(gen: Generator) -> None:
    """The process dies: its claim goes, its fence stays where it was, nothing is released."""
    gen.lease._drop_claim()
    gen.lease._closing.set()


def mint_past_the_fence(gen: Generator, n: int) -> tuple[list[int], int]:
    """``gen.next_ids(n)``, and how many times it first had to wait for its lease to extend the fence."""
    for waits in itertools.count():
        fence_ms = gen.lease.status().reservation.fence_ms
        try:
            return gen.next_ids(n), waits
        except FenceReached:
            poll(lambda fence_ms=fence_ms: gen.lease.status().reservation.fence_ms > fence_ms, "an extension", 5)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("found_ahead_ms", [0, 3_000], ids=["after a clean holder", "after a clock step"])
def test_successors_that_crash_leave_no_more_lead_than_they_found(
    tmp_path: Path, clock: ManualClock, found_ahead_ms: int
) -> None:
    """A crash leaves the fence up to 1.5 windows ahead; the successor rides above it. What it reserves must not add
    a window on top of that lead, or a few crashes in a row put the fence beyond max_lead_ms (DESIGN.md 3a). Only a
    holder that found a lead beyond 1.5 windows (a clock step) reserves as the clock runs, never ahead of it."""
    with make(tmp_path, clock) as first:
        first.next_id()
    clock.advance(-found_ahead_ms)  # the host's clock went back while nobody held worker 3
    bound_ms = max(found_ahead_ms, WINDOW_MS * 3 // 2) + DEFAULT_LAYOUT.unit_ms
    last, leads_ms, waits = 0, [], 0
    for _ in range(12):
        gen = make(tmp_path, clock, max_lead_ms=5_000)
        ids: list[int] = []
        for _ in range(20):  # 0.2 s of traffic, then the crash
            minted, waited = mint_past_the_fence(gen, 500)
            ids, waits = ids + minted, waits + waited
            clock.advance(10)
        assert ids == sorted(set(ids)) and ids[0] > last
        last = ids[-1]
        gen.lease._closing.set()  # the process dies: its renewals stop, its claim goes, its fence stays
        gen.lease._thread.join()
        gen.lease._drop_claim()
        leads_ms.append(record(tmp_path, 3)["fence_ms"] - clock.now_ms())
        clock.advance(50)  # the restart
    assert max(leads_ms) <= bound_ms, leads_ms
    assert waits == 0 if found_ahead_ms == 0 else waits <= 12


def _mint_and_die(state: str, workers: range) -> None:
    """A multiprocessing child that mints one ID on a local lease and exits without closing (os._exit): exit code 0
    if it minted, 3 if it was refused ClockBehind."""
    code = 1
    try:
        Generator(lease=LocalLease(DEFAULT_LAYOUT, state, worker_ids=workers)).next_id()
        code = 0
    except ClockBehind:
        code = 3
    finally:
        os._exit(code)


def test_rounds_of_children_that_exit_without_closing_are_all_served(tmp_path: Path) -> None:
    """Each round's children find the fences the last round's left (up to 1.5 windows ahead of the clock) and ride
    above them; what they reserve must not add up round after round until a successor is beyond ``max_lead_ms``."""
    workers, codes = range(3), []
    context = multiprocessing.get_context("fork")
    for _ in range(6):
        children = [context.Process(target=_mint_and_die, args=(str(tmp_path), workers)) for _ in workers]
        for child in children:
            child.start()
        for child in children:
            child.join(30)
        codes += [child.exitcode for child in children]
    assert codes == [0] * len(codes), f"{codes.count(3)} of {len(codes)} children refused ClockBehind"
    leads_ms = [record(tmp_path, w)["fence_ms"] - time.time_ns() // 1_000_000 for w in workers]
    assert max(leads_ms) <= DEFAULT_WINDOW_MS * 3 // 2  # never further ahead than a clean holder's fence


# -- switching worker IDs --------------------------------------------------------------------------------------


def test_beyond_the_bound_it_switches_to_a_worker_id_whose_fence_is_below_the_clock(
    tmp_path: Path, clock: ManualClock
) -> None:
    with make(tmp_path, clock, range(3, 5)) as gen:
        before = gen.next_ids(10)
        old_worker, old_lease = gen.worker_id, gen.lease
        old_lease_id = old_lease.status().reservation.lease_id
        clock.advance(-3_600_000)
        with pytest.raises(ClockBehind, match="more than the 15000 ms") as caught:
            gen.next_id()
        assert caught.value.retry_after <= 1.0  # a switch is under way: come back soon, not in an hour
        after = poll(gen.next_id, "the switch", 5)
        assert gen.worker_id != old_worker and gen.worker_switches == 1
        assert stamp(after) == clock.now_ms()  # on the clock again: no lead
        assert gen.readiness() == (True, None)
        more = gen.next_ids(5)
        assert [after, *more] == sorted({after, *more})
        poll(lambda: old_lease.status().state.value == "released", "the old lease's release")
        old = record(tmp_path, old_worker)
        assert old["fence_ms"] == stamp(before[-1])  # brought down to the last tick used
        assert old["holders"][-1]["ended_ms"] is not None
        new_lease_id = gen.lease.status().reservation.lease_id
        for id_, minter in ((before[0], old_lease_id), (after, new_lease_id)):  # trace names each ID's minter
            fields = DEFAULT_LAYOUT.decode(id_)
            traced = gen.lease.trace(fields["worker_id"], fields["timestamp_ms"])
            assert traced.holder is not None and traced.holder.lease_id == minter


def test_a_batch_in_chunks_that_a_switch_crosses_is_minted_afresh_in_order(tmp_path: Path, clock: ManualClock) -> None:
    """Generator.batch, as Service.mint mints a count= request: chunks one after another, here a switch of worker
    IDs between two of them. The chunks before the switch are dropped and the batch starts again on the new worker."""
    with make(tmp_path, clock, range(3, 5)) as gen:
        batch = gen.batch(40)
        sizes = batch.chunk_sizes(16)
        batch.add(gen.next_ids(next(sizes)))
        dropped = list(batch.ids)  # on worker 3, at the clock
        clock.advance(-3_600_000)
        with pytest.raises(ClockBehind):
            gen.next_id()  # starts the switch
        poll(gen.next_id, "the switch", 5)
        for size in sizes:
            assert size <= 16
            batch.add(gen.next_ids(size))
        assert len(batch.ids) == 40 and batch.ids == sorted(set(batch.ids))
        assert {DEFAULT_LAYOUT.decode(i)["worker_id"] for i in batch.ids} == {4}
        assert not set(dropped) & set(batch.ids)


def test_without_a_worker_id_below_the_clock_it_refuses_with_the_reason_and_recovers_when_the_clock_does(
    tmp_path: Path, clock: ManualClock
) -> None:
    with make(tmp_path, clock) as gen:  # worker 3 only
        gen.next_id()
        clock.advance(-60_000)
        with pytest.raises(ClockBehind):
            gen.next_id()

        def refused_with_the_reason() -> bool:
            try:
                gen.next_id()
            except ClockBehind as exc:
                return "no other worker ID could be leased" in str(exc) and exc.retry_after == SWITCH_RETRY_AFTER_S
            return False

        poll(refused_with_the_reason, "the failed switch's reason", 5)
        ready, reason = gen.readiness()
        assert not ready and "60000 ms behind" in reason and "no free worker ID" in reason
        assert gen.worker_switches == 0 and gen.worker_id == 3
        clock.advance(60_000)
        assert gen.next_id() and gen.readiness() == (True, None)


def test_a_restart_far_behind_the_old_fence_switches_to_another_worker_id(tmp_path: Path, clock: ManualClock) -> None:
    ahead = ManualClock(clock.now_ms() + 3_600_000)  # a host whose clock visited the future
    with make(tmp_path, ahead, range(3, 4)) as first:
        first.next_id()
    with make(tmp_path, clock, range(3, 5)) as second:  # worker 4 was never used: claimed first, no switch needed
        assert second.worker_id == 4
    with make(tmp_path, clock, range(3, 5)) as third, make(tmp_path, clock, range(3, 5)) as fourth:
        # 4 is now the oldest fence: third takes it; fourth gets only worker 3, an hour ahead, and nothing else
        assert (third.worker_id, fourth.worker_id) == (4, 3)
        with pytest.raises(ClockBehind):
            fourth.next_id()
        third.close()  # worker 4 frees up, its fence below the clock: fourth switches to it
        poll(fourth.next_id, "the switch after worker 4 is free", 5)
        assert fourth.worker_id == 4 and fourth.worker_switches == 1


def test_close_during_a_switch_releases_both_leases(tmp_path: Path, clock: ManualClock) -> None:
    gen = make(tmp_path, clock, range(3, 5))
    gen.next_id()
    clock.advance(-3_600_000)
    with pytest.raises(ClockBehind):
        gen.next_id()
    gen.close()  # whatever the switch had reached: no claim is left behind
    with make(tmp_path, clock, range(3, 5)) as a, make(tmp_path, clock, range(3, 5)) as b:
        assert {a.worker_id, b.worker_id} == {3, 4}


# -- switching: found by review ---------------------------------------------------------------------------------


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(switching, "SWITCH_RETRY_S", 0.05)


def claimable(tmp_path: Path, clock: ManualClock, workers: range) -> list[int]:
    """The worker IDs another process could claim now (each claimed, then released)."""
    got, leases = [], []
    for _ in workers:
        lease = LocalLease(DEFAULT_LAYOUT, tmp_path, clock=clock, window_ms=WINDOW_MS, worker_ids=workers)
        try:
            got.append(lease.start(lambda _: None).worker_id)
        except LeaseUnavailable:
            break
        leases.append(lease)
    for lease in leases:
        lease.close()
    return sorted(got)


def test_a_failed_switch_is_retried_on_readiness_checks_without_traffic_and_logged_once(
    tmp_path: Path, clock: ManualClock, quick_retries: None, caplog: pytest.LogCaptureFixture
) -> None:
    """An instance that refuses is taken out of rotation, so no request may come to start another attempt; its
    readiness checks (the HTTP app's, every half second) do."""
    past = ManualClock(clock.now_ms() - 7_200_000)
    holder = make(tmp_path, past, range(4, 5))  # worker 4 is busy, its fence two hours back
    with make(tmp_path, clock, range(3, 5)) as gen, caplog.at_level(logging.WARNING, logger="idgen.generator"):
        gen.next_id()
        clock.advance(-3_600_000)
        with pytest.raises(ClockBehind):
            gen.next_id()  # the one request: it starts the switch, which finds no worker ID free
        poll(lambda: "no other worker ID could be leased" in (gen.readiness()[1] or ""), "the failed switch")
        with pytest.raises(ClockBehind) as refused:
            gen.next_id()
        assert refused.value.retry_after <= switching.SWITCH_RETRY_AFTER_S  # not an hour: a worker ID may free up
        poll(lambda: not gen.readiness()[0] and gen._switching.attempts >= 4, "more attempts, on readiness checks")
        holder.close()  # worker 4 frees up, its fence below the clock
        poll(lambda: gen.readiness()[0] and gen.worker_id == 4, "the switch, with no request to start it")
        assert gen.readiness() == (True, None) and gen.worker_switches == 1
    failures = [r for r in caplog.records if getattr(r, "event", None) == "worker_id_switch_failed"]
    assert len(failures) == 1, [r.getMessage() for r in failures]


def test_close_right_after_a_switch_leaves_no_worker_id_claimed(tmp_path: Path) -> None:
    for trial in range(30):
        clock = ManualClock()
        directory = tmp_path / str(trial)
        gen = make(directory, clock, range(3, 5))
        gen.next_id()
        clock.advance(-3_600_000)
        with pytest.raises(ClockBehind):
            gen.next_id()
        poll(lambda gen=gen: gen.worker_switches, "the switch")
        gen.close()  # as soon as the switch shows: the old lease's release may still be under way
        assert claimable(directory, clock, range(3, 5)) == [3, 4], f"trial {trial}"


def test_a_child_forked_far_behind_mints_on_its_own_fresh_claim_at_once(tmp_path: Path, clock: ManualClock) -> None:
    """The parent's ticks an hour ahead are no floor for a child's claim on another worker ID, whose fence is below
    the clock: that claim's own window is all uniqueness needs (DESIGN.md section 2)."""
    ahead = ManualClock(clock.now_ms() + 3_600_000)
    with make(tmp_path, ahead, range(3, 4)) as first:
        first.next_id()  # worker 3 fenced an hour ahead of the clock
    holder = make(tmp_path, clock, range(4, 5))  # worker 4 busy while the parent starts, so it gets worker 3
    gen = make(tmp_path, clock, range(3, 5), max_lead_ms=15_000)
    with pytest.raises(ClockBehind):
        gen.next_id()
    poll(lambda: gen._switching.failure, "the parent's failed switch")  # the next is a second away
    holder.close()  # worker 4 is free, its fence below the clock

    def child_work(report: Any) -> None:
        report({"id": gen.next_id(), "worker": gen.worker_id})
        gen.close()

    child = Child(os.fork, child_work)
    try:
        minted = child.next()
    finally:
        child.close()
        gen.close()
    assert minted["worker"] == 4 and stamp(minted["id"]) == clock.now_ms()


class _OnRecord(logging.Handler):
    """Runs ``action`` in the logging thread when a record with ``event`` is logged there: a seam to act at a precise
    moment of another thread's work (the generator's lock may be held)."""

    def __init__(self, event: str, action: Callable[[], None]) -> None:
        super().__init__(logging.DEBUG)
        self.event, self.action = event, action

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) == self.event and threading.current_thread().name == "idgen-switch":
            self.action()


@contextlib.contextmanager
def on_record(logger: str, event: str, action: Callable[[], None]) -> Iterator[None]:
    handler, target = _OnRecord(event, action), logging.getLogger(logger)
    level = target.level
    target.setLevel(logging.DEBUG)
    target.addHandler(handler)
    try:
        yield
    finally:
        target.removeHandler(handler)
        target.setLevel(level)


def test_a_batch_racing_a_switch_is_strictly_increasing_and_a_switch_the_clock_outran_is_dropped(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A switch is claimed on a thread of its own; the clock may come back within max_lead_ms meanwhile, and the
    generator rides on the old worker ID. A batch minted as the claim lands must not mix the old ridden tick's last
    IDs with the new worker ID's lower ones, and the switch, no longer needed, is not made."""
    batches: list[list[int]] = []
    racers: list[threading.Thread] = []

    def race_a_batch() -> None:
        batches.append(gen.next_ids(6_000))  # more than the ridden tick has left: it crosses ticks

    def clock_comes_back() -> None:  # the candidate holds worker 4; its reservation is not yet published
        clock.advance(1_000)  # 14.5 s behind the last tick: within max_lead_ms, ridden (and below worker 4's fence)
        gen.next_id()

    def batch_as_the_switch_lands() -> None:  # the generator's lock is held by the switch
        racers.append(threading.Thread(target=race_a_batch))
        racers[0].start()
        snapshot = gen._snapshot
        eventually(lambda: snapshot.left() == 0 or not racers[0].is_alive(), 1)

    with make(tmp_path, clock, range(3, 5)) as gen:
        before = gen.next_ids(10)
        clock.advance(-15_500)  # beyond max_lead_ms (15 s)
        with (
            on_record("idgen.lease", "lease_acquired", clock_comes_back),
            on_record("idgen.generator", "worker_id_switched", batch_as_the_switch_lands),
        ):
            with pytest.raises(ClockBehind):
                gen.next_id()  # starts the switch
            poll(lambda: gen._switching.thread is None, "the switch attempt to end")
        for racer in racers:
            racer.join(5)
        if not racers:  # no switch landed: nothing to race, mint the batch now
            race_a_batch()
        [batch] = batches
        assert batch == sorted(set(batch)), "a batch went down across the switch"
        assert batch[0] > before[-1]
        assert gen.worker_switches == 0 and gen.worker_id == 3  # the clock came back: no switch was needed
        poll(lambda: 4 in claimable(tmp_path, clock, range(4, 5)), "the unneeded candidate's release")
