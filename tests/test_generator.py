"""The embedded generator, driven through every policy by a manual clock over a real local lease."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from idgen import DEFAULT_LAYOUT, Generator, Layout, decode
from idgen.clock import ManualClock
from idgen.errors import ClockBehind, FenceReached, InvalidInput, NoLease, TimeExhausted
from idgen.leases.local import LocalLease

WINDOW_MS = 1_000


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def gen(tmp_path: Path, clock: ManualClock) -> Iterator[Generator]:
    with Generator(lease=LocalLease(DEFAULT_LAYOUT, tmp_path, clock=clock, window_ms=WINDOW_MS), clock=clock) as g:
        yield g


def stamp(id_: int) -> int:
    return decode(id_)["timestamp_ms"]


def test_ids_strictly_increase_and_carry_the_leased_worker(gen: Generator, clock: ManualClock) -> None:
    ids, stamps = [], []
    for _ in range(50):
        ids += [gen.next_id(), *gen.next_ids(7)]
        stamps.append((stamp(ids[-1]), clock.now_ms()))
        clock.advance(0.4)
    assert ids == sorted(set(ids))
    assert {decode(i)["worker_id"] for i in ids} == {gen.worker_id}
    assert all(minted == now for minted, now in stamps)  # never a stale timestamp


def test_sequence_overflow_waits_for_the_next_tick(gen: Generator, clock: ManualClock) -> None:
    ids = [gen.next_id() for _ in range(4096 + 1)]
    assert ids == sorted(set(ids))
    assert {stamp(i) for i in ids[:4096]} == {stamp(ids[0])}
    assert stamp(ids[4096]) == stamp(ids[0]) + 1
    assert decode(ids[4096])["sequence"] == 0
    assert gen.overflow_waits == 1
    assert 0 < clock.slept_s <= 0.001


def test_batches_span_ticks_without_gaps_or_repeats(gen: Generator) -> None:
    batch = gen.next_ids(10_000)
    assert len(batch) == 10_000
    assert batch == sorted(set(batch))
    assert [decode(i)["sequence"] for i in batch[:3]] == [0, 1, 2]
    assert len({stamp(i) for i in batch}) == 3  # 4096 + 4096 + 1808


def test_minted_counts_every_id_handed_out_across_ticks_and_close(gen: Generator, clock: ManualClock) -> None:
    assert gen.minted == 0
    gen.next_id()
    gen.next_ids(5_000)  # fills this tick, waits for the next
    assert gen.minted == 5_001
    clock.advance(3)
    gen.next_id()
    assert gen.minted == 5_002
    gen.close()
    with pytest.raises(NoLease):
        gen.next_id()
    assert gen.minted == 5_002


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", True])
def test_batch_size_must_be_a_positive_int(gen: Generator, bad: object) -> None:
    with pytest.raises(InvalidInput):
        gen.next_ids(bad)  # type: ignore[arg-type]


@pytest.fixture
def strict(tmp_path: Path, clock: ManualClock) -> Iterator[Generator]:
    """A generator that never rides a clock step (tests/test_ride.py covers riding)."""
    lease = LocalLease(DEFAULT_LAYOUT, tmp_path, clock=clock, window_ms=WINDOW_MS)
    with Generator(lease=lease, clock=clock, max_lead_ms=0) as g:
        yield g


def test_without_riding_a_small_rollback_is_waited_out(strict: Generator, clock: ManualClock) -> None:
    first = strict.next_id()
    clock.advance(-3)
    second = strict.next_id()
    assert second > first
    assert stamp(second) == stamp(first) + 1
    assert 0.003 <= clock.slept_s <= 0.005
    assert strict.clock_rollbacks == 1


def test_without_riding_a_large_rollback_raises_how_far_and_recovers_by_itself(
    strict: Generator, clock: ManualClock
) -> None:
    first = strict.next_id()
    clock.advance(-2_000)
    with pytest.raises(ClockBehind, match=r"2000\.0 ms behind") as caught:
        strict.next_id()
    assert caught.value.behind_ms == pytest.approx(2_000)
    assert caught.value.retry_after == pytest.approx(2.0)
    assert clock.slept_s == 0  # refused at once, no unbounded sleep
    assert strict.readiness() == (False, "clock is 2000 ms behind the last timestamp used or reserved")
    clock.advance(1_990)
    with pytest.raises(ClockBehind, match=r"10\.0 ms behind"):
        strict.next_id()
    clock.advance(10)
    assert strict.next_id() > first
    assert strict.readiness() == (True, None)


def test_minting_stops_at_the_fence_until_the_lease_extends_it(
    tmp_path: Path, gen: Generator, clock: ManualClock
) -> None:
    gen.next_id()
    fence = gen.lease.status().reservation.fence_ms
    clock.set_ms(fence + 1)
    with pytest.raises(FenceReached):
        gen.next_id()
    deadline = time.monotonic() + 5
    while True:  # the refusal asked the renewal thread to extend; poll until it has
        try:
            id_ = gen.next_id()
            break
        except FenceReached:
            assert time.monotonic() < deadline, "the fence was never extended"
            time.sleep(0.01)
    durable_fence = json.loads((tmp_path / f"worker-{gen.worker_id:05d}.json").read_text())["fence_ms"]
    assert stamp(id_) == fence + 1 <= durable_fence


def test_close_stops_minting_and_brings_the_fence_down_to_the_last_tick(tmp_path: Path, clock: ManualClock) -> None:
    lease = LocalLease(DEFAULT_LAYOUT, tmp_path, clock=clock, window_ms=WINDOW_MS)
    with Generator(lease=lease, clock=clock) as gen:
        last = gen.next_id()
        worker = gen.worker_id
    with pytest.raises(NoLease, match="closed"):
        gen.next_id()
    record = json.loads((tmp_path / f"worker-{worker:05d}.json").read_text())
    assert record["fence_ms"] == stamp(last)
    assert record["holders"][-1]["ended_ms"] is not None


def test_closing_without_minting_leaves_no_fence_ahead(tmp_path: Path, clock: ManualClock) -> None:
    options = {"clock": clock, "window_ms": WINDOW_MS, "worker_ids": range(3, 4)}
    with Generator(lease=LocalLease(DEFAULT_LAYOUT, tmp_path, **options), clock=clock):
        pass
    assert json.loads((tmp_path / "worker-00003.json").read_text())["fence_ms"] < clock.now_ms()  # nothing ahead
    with Generator(lease=LocalLease(DEFAULT_LAYOUT, tmp_path, **options), clock=clock) as successor:
        successor.next_id()
    assert clock.slept_s == 0  # the successor did not wait out an unused window


def test_a_clock_far_behind_the_old_fence_is_refused_with_the_reason(tmp_path: Path) -> None:
    ahead = ManualClock()
    ahead.advance(60_000)
    options = {"window_ms": WINDOW_MS, "worker_ids": range(3, 4)}
    with Generator(lease=LocalLease(DEFAULT_LAYOUT, tmp_path, clock=ahead, **options), clock=ahead) as first:
        first.next_id()
    behind = ManualClock(ahead.now_ms() - 60_000)
    with Generator(lease=LocalLease(DEFAULT_LAYOUT, tmp_path, clock=behind, **options), clock=behind) as second:
        ready, reason = second.readiness()
        assert not ready
        assert "behind the last timestamp used or reserved, more than the 15000 ms IDs may run ahead" in reason
        with pytest.raises(ClockBehind, match="ms behind"):
            second.next_id()
        assert behind.slept_s == 0
        behind.set_ms(ahead.now_ms() - 10_000)  # within the bound of the old fence: ready at once, riding
        assert second.readiness() == (True, None)
        assert second.next_id()


def test_minting_past_the_time_bits_is_an_error_never_a_wrapped_id(tmp_path: Path, clock: ManualClock) -> None:
    short = Layout("short", (("time", 20), ("worker_id", 10), ("sequence", 33)), epoch_ms=clock.now_ms() - 3_600_000)
    assert short.expires_ms < clock.now_ms()
    with (
        Generator(short, LocalLease(short, tmp_path, clock=clock), clock=clock) as gen,
        pytest.raises(TimeExhausted, match="cannot encode the current time"),
    ):
        gen.next_id()


def test_threads_sharing_a_generator_never_see_a_duplicate(tmp_path: Path) -> None:
    per_thread = 200_000  # 800k IDs at 4096 per ms forces the sequence to overflow many times
    results: list[list[int]] = [[] for _ in range(4)]
    with Generator(lease=LocalLease(DEFAULT_LAYOUT, tmp_path)) as gen:

        def mint(out: list[int]) -> None:
            out += [gen.next_id() for _ in range(per_thread // 2)]
            for _ in range(per_thread // 2 // 1000):
                out += gen.next_ids(1000)

        threads = [threading.Thread(target=mint, args=(r,)) for r in results]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        overflow_waits, minted = gen.overflow_waits, gen.minted
    everything = [i for r in results for i in r]
    assert len(everything) == 4 * per_thread == len(set(everything))
    assert 0.99 * len(everything) <= minted <= len(everything)  # a take racing a tick change may go uncounted
    assert all(r == sorted(r) for r in results)
    assert overflow_waits > 0


def test_without_the_gil_next_ids_takes_the_lock_as_next_id_does(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a free-threaded build ``next()`` on the shared range iterator is not atomic, so no call may take IDs from
    the snapshot without the lock. (No free-threaded CPython can be installed here: its switch is simulated.)"""
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    with Generator(lease=LocalLease(DEFAULT_LAYOUT, tmp_path, clock=clock, window_ms=WINDOW_MS), clock=clock) as gen:
        gen.next_id()  # the current tick's snapshot now has IDs left
        results: dict[str, list[int]] = {}
        calls = {"next_id": lambda: [gen.next_id()], "next_ids": lambda: gen.next_ids(3)}
        with gen._lock:
            threads = [threading.Thread(target=lambda k=k: results.update({k: calls[k]()})) for k in calls]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(0.3)
            assert results == {}, "a call took IDs without the lock"
        for thread in threads:
            thread.join(5)
        assert len(results["next_id"]) == 1 and len(results["next_ids"]) == 3


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"layout": "twitter", "lease": "not a lease"}, "lease"),
        ({"lease": 5}, "lease"),
        ({"clock": "not a clock"}, "clock"),
        ({"clock": None}, "clock"),
        ({"rollback_tolerance_ms": "5"}, "rollback_tolerance_ms"),
        ({"rollback_tolerance_ms": -1}, "rollback_tolerance_ms"),
        ({"rollback_tolerance_ms": 1.5}, "rollback_tolerance_ms"),
        ({"rollback_tolerance_ms": True}, "rollback_tolerance_ms"),
        ({"max_lead_ms": "15"}, "max_lead_ms"),
        ({"window_ms": "5000"}, "window_ms"),
        ({"window_ms": 5}, "window_ms"),
        ({"history_size": "x"}, "history_size"),
    ],
)
def test_a_bad_argument_is_refused_at_construction_naming_it(
    tmp_path: Path, options: dict[str, object], named: str
) -> None:
    """Not an AttributeError or a TypeError from deep inside, nor a value accepted now that fails at the first ID."""
    with pytest.raises(InvalidInput, match=named):
        Generator(**{"state_dir": tmp_path, **options})  # type: ignore[arg-type]
    assert not list(tmp_path.glob("*/*.lock")), "a refused generator left a worker ID claimed"


def test_options_of_the_default_lease_given_with_a_lease_are_refused_not_ignored(tmp_path: Path) -> None:
    lease = LocalLease(DEFAULT_LAYOUT, tmp_path)
    with pytest.raises(InvalidInput, match="window_ms"):
        Generator(lease=lease, window_ms=60_000)
    assert lease.status().state.value == "acquiring"  # never started: nothing to release
