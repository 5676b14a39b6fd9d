"""Tracing an ID to the lease holder that minted it (``Lease.trace``, ``/decode``, ``idgen decode --zk``), on both
backends with real leases: a holder is named only for IDs inside the window it could mint in, and otherwise the answer
says why no recorded holder minted the ID. Also: ``/decode`` during a ZooKeeper freeze never stalls the probes."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from serverproc import ServerProcess as Server
from serverproc import wait_until
from zkharness import ZkServer

from idgen import DEFAULT_LAYOUT, Generator, Layout
from idgen.clock import ManualClock
from idgen.errors import LeaseUnavailable
from idgen.leases.base import Lease
from idgen.leases.local import LocalLease
from idgen.leases.tracing import Traced
from idgen.leases.zookeeper import ZkLease, connected

EPOCH = DEFAULT_LAYOUT.epoch_ms
SOLO = Layout("solo", (("time", 41), ("sequence", 22)), epoch_ms=EPOCH)  # 1 worker ID: every holder reuses it
AUTH = "idgen-test:trace-secret"  # ZooKeeper digest credentials; the CLI gets them as IDGEN_ZK_AUTH
WINDOW = {"window_ms": 1_000}
ZK_OPTIONS = {**WINDOW, "session_timeout_s": 2.0, "auth": AUTH}
DECODE = [sys.executable, "-m", "idgen.cli", "decode"]
IN_2093 = 3_881_000_000_000  # Unix ms in 2092-12-25, inside the layouts' 41 bits of time


def stamp(id_: int, layout: Layout = SOLO) -> int:
    return layout.decode(id_)["timestamp_ms"]


def at(unix_ms: int, worker_id: int = 0, layout: Layout = SOLO) -> int:
    """An ID of ``layout`` stamped ``unix_ms`` under ``worker_id``."""
    return layout.compose(layout.tick_of(unix_ms), worker_id, 0)


def lease_id(gen: Generator) -> str:
    reservation = gen.lease.status().reservation
    assert reservation is not None
    return reservation.lease_id


def named(traced: Traced) -> str | None:
    """The lease ID of the holder a trace names (``None``: no holder named)."""
    return traced.holder.lease_id if traced.holder else None


@pytest.fixture(params=["local", "zookeeper"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """How to make a lease of SOLO's one worker ID on one backend: ``new()`` and, for holder processes, ``config``.
    Every lease made by ``new()`` is closed at the end."""
    made: list[Lease] = []
    if request.param == "local":
        config: dict[str, Any] = {"state_dir": str(tmp_path), "worker_ids": [0, 1], "options": WINDOW}

        def new() -> Lease:
            made.append(LocalLease(SOLO, tmp_path, range(1), **WINDOW))
            return made[-1]
    else:
        hosts, namespace = request.getfixturevalue("zk_hosts"), request.getfixturevalue("zk_namespace")
        config = {"zk": hosts, "namespace": namespace, "options": ZK_OPTIONS}
        open_parent(hosts, namespace)

        def new() -> Lease:
            made.append(ZkLease(SOLO, hosts, namespace, **ZK_OPTIONS))
            return made[-1]

    yield {"new": new, "config": config, "name": request.param}
    for lease in made:
        lease.close()


def open_parent(hosts: str, namespace: str) -> None:
    """Create the parent of ``namespace`` without credentials, as other tests on the shared server expect it; the
    lease would otherwise create it readable by its own user only."""
    with connected(hosts) as client:
        client.ensure_path(namespace.rsplit("/", 1)[0])


def claim(new: Callable[[], Lease], timeout: float = 20.0) -> Generator:
    """A generator on a new lease, once the worker ID is free (a crashed ZooKeeper holder's session must expire)."""

    def attempt() -> Generator | None:
        try:
            return Generator(SOLO, new())
        except LeaseUnavailable:
            return None

    return wait_until(attempt, timeout, "the worker ID to be free", interval=0.1)


# -- item 6: the three wrong answers, reproduced -------------------------------------------------------------


def test_a_holder_that_minted_nothing_is_not_named_for_its_successors_ids(backend: dict[str, Any]) -> None:
    """It releases with its fence at its after_ms, so its successor started from the same after_ms."""
    with Generator(SOLO, backend["new"]()) as first:
        first.next_id()  # so that the next holder's after_ms is a real fence, not the empty record's 0
    with Generator(SOLO, backend["new"]()):
        pass
    with Generator(SOLO, backend["new"]()) as successor:
        id_ = successor.next_id()
        assert named(successor.lease.trace(0, stamp(id_))) == lease_id(successor)


def test_an_id_stamped_above_the_current_fence_names_no_holder(backend: dict[str, Any]) -> None:
    future = stamp(at(IN_2093))
    with Generator(SOLO, backend["new"]()) as live:
        live.next_id()
        traced = live.lease.trace(0, future)
        assert (traced.holder, traced.code) == (None, "future")
        assert "fence" in (traced.message or "")
    reader = backend["new"]()
    assert (reader.trace(0, future).holder, reader.trace(0, future).code) == (None, "future")  # released: the same


def test_an_id_stamped_before_the_first_holder_could_mint_names_no_holder(backend: dict[str, Any]) -> None:
    with Generator(SOLO, backend["new"]()) as first:
        first.next_id()
        traced = first.lease.trace(0, EPOCH)  # the layout's epoch: years before this holder started
        assert (traced.holder, traced.code) == (None, "before_history")
        assert traced.message


# -- item 6: the rule holds for every holder that really minted -----------------------------------------------


def test_ids_of_a_crashed_holder_and_of_its_successor_trace_to_each(backend: dict[str, Any], spawn_holder) -> None:
    crashed = spawn_holder(SOLO, **backend["config"]).ready()
    crashed.proc.kill()
    crashed.proc.wait()
    fence_left = backend["new"]().fence_of(0)  # the dead holder's last fence; no successor has read it yet
    with claim(backend["new"]) as successor:
        mine = successor.next_id()
        reader = backend["new"]()
        old = reader.trace(0, stamp(crashed.first_id)).holder
        assert old is not None and old.pid == crashed.pid
        assert old.fence_ms == fence_left  # the successor recorded the fence it read, the crashed holder's last
        assert old.ended_ms is None  # it never said goodbye
        assert named(reader.trace(0, stamp(mine))) == lease_id(successor)
        assert old.fence_ms is not None and old.fence_ms <= reader.holders(0)[-1].after_ms


def test_an_id_between_two_holders_windows_names_no_holder(tmp_path: Path) -> None:
    clock = ManualClock()
    with Generator(SOLO, LocalLease(SOLO, tmp_path, range(1), clock=clock, **WINDOW), clock=clock) as first:
        first_id = first.next_id()
    clock.advance(60_000)  # a minute later the worker ID is claimed again
    with Generator(SOLO, LocalLease(SOLO, tmp_path, range(1), clock=clock, **WINDOW), clock=clock) as second:
        second_id = second.next_id()
        lease = second.lease
        assert named(lease.trace(0, stamp(first_id))) is not None
        assert named(lease.trace(0, stamp(second_id))) == lease_id(second)
        traced = lease.trace(0, clock.now_ms() - 30_000)  # half a minute ago, when no one held it
        assert (traced.holder, traced.code) == (None, "outside_windows")


def test_records_written_before_holders_had_fences_still_trace_every_id(tmp_path: Path) -> None:
    """History entries without ``fence_ms`` (older versions) bound a window by the next holder's after_ms."""
    ids, leases = [], []
    for _ in range(3):
        with Generator(SOLO, LocalLease(SOLO, tmp_path, range(1), **WINDOW)) as gen:
            ids.append(gen.next_id())
            leases.append(lease_id(gen))
    path = tmp_path / "worker-00000.json"
    record = json.loads(path.read_text())
    for holder in record["holders"]:
        del holder["fence_ms"]
    path.write_text(json.dumps(record))
    reader = LocalLease(SOLO, tmp_path, range(1), **WINDOW)
    assert [named(reader.trace(0, stamp(i))) for i in ids] == leases
    assert reader.trace(0, stamp(at(IN_2093))).code == "future"


def test_a_settled_answer_is_given_again_without_reading_zookeeper(fresh_zk: ZkServer) -> None:
    """An ID in a closed window is traced from the history read before, even with ZooKeeper frozen."""
    new = lambda: ZkLease(SOLO, fresh_zk.hosts, "/settled", **ZK_OPTIONS)  # noqa: E731
    with Generator(SOLO, new()) as earlier:
        old_id = earlier.next_id()
        old_lease = lease_id(earlier)
    with Generator(SOLO, new()) as live, ThreadPoolExecutor(1) as pool:
        live.next_id()
        reader = new()
        try:
            assert named(reader.trace(0, stamp(old_id))) == old_lease  # read from ZooKeeper, and kept
            fresh_zk.pause()
            try:
                again = pool.submit(reader.trace, 0, stamp(old_id)).result(timeout=2)
            finally:
                fresh_zk.resume()
            assert named(again) == old_lease
        finally:
            reader.close()


# -- the CLI and HTTP carry the reason ----------------------------------------------------------------------


def test_the_cli_says_why_no_holder_minted_an_id(zk_hosts: str, zk_namespace: str) -> None:
    open_parent(zk_hosts, zk_namespace)
    with Generator(SOLO, ZkLease(SOLO, zk_hosts, zk_namespace, **ZK_OPTIONS)) as gen:
        gen.next_id()
        result = subprocess.run(
            [*DECODE, str(at(IN_2093)), "--zk", zk_hosts, "--namespace", zk_namespace, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "IDGEN_ZK_AUTH": AUTH},
        )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["node"] is None
    assert body["node_reason"]["code"] == "future" and body["node_reason"]["message"]


# -- item 8: /decode during a ZooKeeper outage ----------------------------------------------------------------


def test_decode_during_a_zookeeper_freeze_never_stalls_metrics_or_the_probes(fresh_zk: ZkServer) -> None:
    """Two processes (so /metrics reads every process's files on a thread), ZooKeeper frozen with SIGSTOP, and a
    stream of /decode requests whose history lookups cannot finish: /metrics, /healthz and /readyz still answer
    at once, and /decode answers within its bound, saying the history could not be read."""
    env = {"IDGEN_ZK_AUTH": AUTH}
    with Server("--zk", fresh_zk.hosts, "--namespace", "/frozen", "--processes", "2", env=env) as server:
        id_ = server.get("/id").json()["id"]  # in the live holder's open window: tracing it needs a fresh read
        assert server.get(f"/decode/{id_}").json()["node"]
        stop = threading.Event()
        decoded: list[dict[str, Any]] = []
        slowest = [0.0]

        def decode_in_a_loop() -> None:
            while not stop.is_set():
                began = time.monotonic()
                with contextlib.suppress(OSError):
                    decoded.append(server.get(f"/decode/{id_}", timeout=30).json())
                slowest[0] = max(slowest[0], time.monotonic() - began)
                stop.wait(0.02)  # pacing: a steady stream, not a CPU-bound flood

        fresh_zk.pause()
        clients = [threading.Thread(target=decode_in_a_loop, daemon=True) for _ in range(24)]
        try:
            for client in clients:
                client.start()

            def probes_answer_promptly() -> bool:
                for path in ("/metrics", "/healthz", "/readyz"):
                    began = time.monotonic()
                    reply = server.get(path, timeout=10)
                    took = time.monotonic() - began
                    assert reply.status in (200, 503) and took < 1.0, f"{path}: {reply.status} after {took:.2f} s"
                return any("did not answer within" in body.get("node_error", "") for body in decoded)

            # Probe until some lookup has been given up on (2 s), so the probes run while lookups are stuck.
            wait_until(probes_answer_promptly, 30, "a /decode to give up on ZooKeeper")
            assert all(body["node"] is None for body in decoded if body.get("node_error"))
        finally:
            stop.set()
            fresh_zk.resume()
            for client in clients:
                client.join(40)
        assert slowest[0] < 5.0  # the lookup is awaited for 2 s at most; the rest is a loaded machine's slack
        # The stuck lookups return once ZooKeeper does, and free their slots: /decode names the holder again.
        wait_until(lambda: server.get(f"/decode/{id_}").json()["node"], 30, "/decode to name the holder again")
