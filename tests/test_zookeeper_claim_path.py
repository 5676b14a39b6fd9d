"""The cost of a ZooKeeper claim, on a real server: one acquisition sends as many requests whatever the number of
used worker IDs, starters at once spread instead of colliding, and the sampled order keeps recycling oldest-first
enough that a just-released worker ID is not the next one taken (DESIGN.md, *the claim path and its cost*)."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator

import pytest
from kazoo.client import KazooClient
from zkharness import TEST_CREDENTIALS
from zkinject import Injector

from idgen import DEFAULT_LAYOUT, Generator, Layout
from idgen.errors import LeaseUnavailable
from idgen.leases import zookeeper
from idgen.leases.base import Reservation
from idgen.leases.zookeeper import CLAIM_SAMPLE, ZkLease, connected

EPOCH = DEFAULT_LAYOUT.epoch_ms
FAST = {"window_ms": 1_000, "session_timeout_s": 2.0, "auth": TEST_CREDENTIALS}
HOUR_MS = 3_600_000


def layout_of(worker_bits: int) -> Layout:
    """A layout of ``2**worker_bits`` worker IDs."""
    return Layout(
        f"w{worker_bits}", (("time", 41), ("worker_id", worker_bits), ("sequence", 22 - worker_bits)), epoch_ms=EPOCH
    )


def bound_namespace(hosts: str, namespace: str, layout: Layout) -> int:
    """Bind ``layout`` to ``namespace`` the way a first deployment does (one worker claims, mints, closes); the worker
    ID it used."""
    with Generator(layout, ZkLease(layout, hosts, namespace, **FAST)) as gen:
        gen.next_id()
        return gen.worker_id


def write_fences(client: KazooClient, namespace: str, fences_ms: dict[int, int]) -> None:
    """Give each worker ID of ``fences_ms`` that fence, as a holder that closed long ago would have left it; all the
    writes in one round trip."""
    sent = []
    for worker_id, fence_ms in fences_ms.items():
        path, record = f"{namespace}/fences/{worker_id}", json.dumps({"fence_ms": fence_ms, "lease_id": "old"}).encode()
        sent.append(client.set_async(path, record) if client.exists(path) else client.create_async(path, record))
    for answer in sent:
        answer.get(timeout=10)


def used_namespace(hosts: str, namespace: str, layout: Layout, now_ms: int) -> None:
    """Every worker ID of ``layout`` used and free, the fence of worker ``w`` ``w`` seconds above an hour ago."""
    bound_namespace(hosts, namespace, layout)
    with connected(hosts, TEST_CREDENTIALS) as client:
        write_fences(client, namespace, {w: now_ms - HOUR_MS + 1_000 * w for w in range(layout.worker_capacity)})


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Injector:
    """Records every request of the leases made from now on (real requests to the real server)."""
    injector = Injector()
    monkeypatch.setattr(zookeeper, "KazooClient", injector.client_class())
    return injector


def claim_requests(recorder: Injector, lease: ZkLease) -> int:
    """The requests one acquisition of ``lease`` sends, its session already set up."""
    lease.namespace  # noqa: B018 - connects, binds the layout, checks the containers' ACLs: once per session
    before = len(recorder.calls)
    reservation = lease._acquire_checked()
    sent = len(recorder.calls) - before
    lease._release(reservation, reservation.after_ms)
    return sent


def test_one_acquisition_sends_as_many_requests_with_512_used_worker_ids_as_with_8(
    zk_hosts: str, zk_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading every fence one by one cost a request per used worker ID: 18 requests with 8 of them, 522 with 512."""
    sent = {}
    for worker_bits in (3, 9):
        namespace = f"{zk_namespace}-{worker_bits}"
        used_namespace(zk_hosts, namespace, layout_of(worker_bits), int(time.time() * 1000))
        recorder = Injector()
        monkeypatch.setattr(zookeeper, "KazooClient", recorder.client_class())
        lease = ZkLease(layout_of(worker_bits), zk_hosts, namespace, **FAST)
        try:
            sent[worker_bits] = claim_requests(recorder, lease)
        finally:
            lease.close()
    assert sent[3] == sent[9], sent  # listing both containers, CLAIM_SAMPLE fences, then the claim itself
    assert sent[9] <= 2 + CLAIM_SAMPLE + 8, sent


def test_workers_starting_at_once_spread_over_the_never_used_worker_ids(
    zk_hosts: str, zk_namespace: str, recorder: Injector
) -> None:
    """Every starter used to try the lowest never-used worker ID first: 32 starters collided hundreds of times."""
    bound_namespace(zk_hosts, zk_namespace, DEFAULT_LAYOUT)
    starters, barrier = 32, threading.Barrier(32)
    started: list[Generator] = []
    errors: list[BaseException] = []

    def start() -> None:
        lease = ZkLease(DEFAULT_LAYOUT, zk_hosts, zk_namespace, **FAST)
        lease.namespace  # noqa: B018 - sessions set up before the race, so the claims start together
        barrier.wait()
        try:
            started.append(Generator(DEFAULT_LAYOUT, lease))
        except BaseException as exc:  # reported below
            errors.append(exc)

    claims_before = sum(1 for method, path in recorder.calls if method == "create" and "/leases/" in (path or ""))
    threads = [threading.Thread(target=start) for _ in range(starters)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        assert len({gen.worker_id for gen in started}) == starters
        claims = sum(1 for method, path in recorder.calls if method == "create" and "/leases/" in (path or ""))
        collisions = claims - claims_before - starters
        assert collisions <= 8, collisions  # about 32 * 31 / 2 / 1023 = 0.5 expected
    finally:
        for gen in started:
            gen.close()


def test_a_just_released_worker_id_is_not_the_next_claimed_while_older_ones_are_free(
    zk_hosts: str, zk_namespace: str
) -> None:
    """64 used worker IDs, 20 claims one after another, each closed before the next: each claim tries the oldest
    fence of a random sample of 8 first, so it takes a worker ID released by an earlier claim (all newer than the 44
    left untouched) only if its whole sample is among them: at most (19/63)^8 < 1e-4 per claim."""
    layout = layout_of(6)
    used_namespace(zk_hosts, zk_namespace, layout, int(time.time() * 1000))
    taken: list[int] = []
    for _ in range(20):
        with Generator(layout, ZkLease(layout, zk_hosts, zk_namespace, **FAST)) as gen:
            gen.next_id()
            taken.append(gen.worker_id)
    assert all(now != just for just, now in itertools.pairwise(taken)), taken  # never the just released
    assert len(taken) - len(set(taken)) <= 1, taken  # a released one again: at most rarely


@pytest.fixture
def leases() -> Iterator[list[ZkLease]]:
    made: list[ZkLease] = []
    yield made
    for lease in made:
        lease.close()


def test_a_switch_takes_only_a_fence_below_its_bound_reading_beyond_the_first_sample(
    zk_hosts: str, zk_namespace: str, leases: list[ZkLease]
) -> None:
    """64 used worker IDs, one with a fence below the bound: a switch finds it whatever sample it draws first."""
    layout = layout_of(6)
    now_ms = int(time.time() * 1000)
    used_namespace(zk_hosts, zk_namespace, layout, now_ms)
    bound_ms, below = now_ms - HOUR_MS // 2, 37
    ahead = {w: now_ms + HOUR_MS for w in range(layout.worker_capacity) if w != below}
    for _ in range(3):
        with connected(zk_hosts, TEST_CREDENTIALS) as client:
            write_fences(client, zk_namespace, {**ahead, below: now_ms - HOUR_MS})
        switch = ZkLease(layout, zk_hosts, zk_namespace, **FAST).fresh(fence_below_ms=bound_ms)
        leases.append(switch)
        reservation: Reservation | None = switch.start(lambda _: None)
        assert reservation is not None and reservation.worker_id == below
        assert reservation.found_ms is not None and reservation.found_ms < bound_ms
        switch.close()
    with connected(zk_hosts, TEST_CREDENTIALS) as client:
        write_fences(client, zk_namespace, {below: now_ms + HOUR_MS})
    refused = ZkLease(layout, zk_hosts, zk_namespace, **FAST).fresh(fence_below_ms=bound_ms)
    leases.append(refused)
    with pytest.raises(LeaseUnavailable, match="no free worker ID has a fence below"):
        refused.start(lambda _: None)
