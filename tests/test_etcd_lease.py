"""What the etcd backend adds to the shared contract (tests/test_lease_conformance.py runs that on etcd too):

- a cold start costs O(1) etcd requests, however many worker IDs are in use: no read per worker ID;
- starters racing for the same worker IDs spread out and all get one;
- keepalives that fail stop minting before the etcd lease can expire on the server (DESIGN.md, etcd section).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from etcdharness import TEST_CREDENTIALS, EtcdServer
from polling import poll
from serverproc import ServerProcess as Server

from idgen import DEFAULT_LAYOUT, Layout
from idgen.errors import LayoutMismatch
from idgen.leases.base import LeaseState, Reservation
from idgen.leases.etcd import EtcdClient, EtcdLease

WIDE = Layout("wide", (("time", 41), ("worker_id", 8), ("sequence", 14)), epoch_ms=DEFAULT_LAYOUT.epoch_ms)  # 256


@pytest.fixture
def requests(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Every request any EtcdClient sends, by path."""
    counted: Counter[str] = Counter()
    post = EtcdClient._post

    def counting(self: EtcdClient, path: str, *args: Any, **kwargs: Any) -> Any:
        counted[path] += 1
        return post(self, path, *args, **kwargs)

    monkeypatch.setattr(EtcdClient, "_post", counting)
    return counted


def lease(endpoints: str, namespace: str, layout: Layout = WIDE, **options: Any) -> EtcdLease:
    return EtcdLease(
        layout, endpoints, namespace, **{"auth": TEST_CREDENTIALS, "ttl_s": 3, "window_ms": 1_000, **options}
    )


def test_a_cold_start_costs_the_same_few_requests_with_200_worker_ids_used(
    etcd_endpoints: str, etcd_namespace: str, requests: Counter[str]
) -> None:
    first = lease(etcd_endpoints, etcd_namespace)
    first.start(lambda _: None)
    first.close()  # binds the layout; worker 0 used
    admin = EtcdClient(etcd_endpoints, TEST_CREDENTIALS)
    for worker_id in range(1, 200):  # 199 more used worker IDs, as their holders leave them
        admin.put(
            f"{etcd_namespace}/fences/{worker_id}",
            json.dumps({"fence_ms": 1_000 + worker_id, "lease_id": "x"}).encode(),
        )
        admin.put(f"{etcd_namespace}/history/{worker_id}", b"[]")
    requests.clear()
    cold = lease(etcd_endpoints, etcd_namespace)
    try:
        cold.start(lambda _: None)
        held = cold.status().reservation
        assert held is not None and held.worker_id == 200  # never used first
        # authenticate, bind the layout, the clock check, grant the etcd lease, one scan of fences and claims, two
        # transactions for the claim itself; the renewal thread's first clock check may come too, and a keepalive
        assert sum(n for path, n in requests.items() if path != "/v3/lease/keepalive") <= 8, requests
    finally:
        cold.close()


def test_workers_starting_together_spread_out_and_each_gets_a_worker_id(
    etcd_endpoints: str, etcd_namespace: str, requests: Counter[str]
) -> None:
    tiny = Layout("tiny", (("time", 41), ("worker_id", 4), ("sequence", 18)), epoch_ms=DEFAULT_LAYOUT.epoch_ms)
    leases = [lease(etcd_endpoints, etcd_namespace, tiny) for _ in range(16)]
    barrier = threading.Barrier(len(leases))

    def start(each: EtcdLease) -> Reservation | None:
        barrier.wait()
        return each.start(lambda _: None)

    try:
        with ThreadPoolExecutor(len(leases)) as pool:
            held = list(pool.map(start, leases))
        assert sorted(r.worker_id for r in held if r is not None) == list(range(16))
        txns = requests["/v3/kv/txn"]
        # each: layout, scan, and two per successful claim; a lost race costs one more, and spreading keeps them few
        assert txns <= 16 * 4 + 16 * 4, requests
    finally:
        for each in leases:
            each.close()


@pytest.fixture
def own_etcd() -> Iterator[EtcdServer]:
    with EtcdServer() as server:
        yield server


def test_failing_keepalives_stop_minting_before_the_etcd_lease_can_expire(own_etcd: EtcdServer) -> None:
    published: list[tuple[float, Reservation | None]] = []
    held = lease(own_etcd.endpoints, "/idgen/keepalive", window_ms=60_000)  # a fence far ahead: only the lease stops it
    held.start(lambda r: published.append((time.monotonic(), r)))
    try:
        assert published[-1][1] is not None
        own_etcd.members[0].pause()  # no keepalive gets an answer from now on
        expires_at = held._expires_at  # the earliest the server can expire it: the last answered keepalive's send + TTL
        poll(lambda: published[-1][1] is None, what="minting to stop", timeout=10)
        stopped = published[-1][0]
        assert stopped < expires_at, f"minting stopped {stopped - expires_at:.3f} s after the etcd lease could expire"
        assert held.status().state in (LeaseState.LOST, LeaseState.ACQUIRING)
    finally:
        own_etcd.members[0].resume()
        held.close()


def test_a_namespace_is_bound_to_its_layout(etcd_endpoints: str, etcd_namespace: str) -> None:
    first = lease(etcd_endpoints, etcd_namespace)
    first.start(lambda _: None)
    first.close()
    other = lease(etcd_endpoints, etcd_namespace, DEFAULT_LAYOUT)
    with pytest.raises(LayoutMismatch, match=rf"etcd namespace {etcd_namespace} belongs to layout 'wide'"):
        other.start(lambda _: None)
    other.close()


def test_the_census_of_an_etcd_namespace_shows_in_metrics(etcd_endpoints: str, etcd_namespace: str) -> None:
    env = {"IDGEN_ETCD": etcd_endpoints, "IDGEN_NAMESPACE": etcd_namespace, "IDGEN_LAYOUT": "idgen"}
    with Server(env=env) as server:
        poll(lambda: 'idgen_namespace_worker_ids{state="held"} 1.0' in server.get("/metrics").body.decode(),
             what="the census of the etcd namespace in /metrics")  # fmt: skip
