"""The ZooKeeper lease on real servers: acquisition, exhaustion, recycling, session faults, clocks, ACLs, tracing."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kazoo import exceptions as kazoo_errors
from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import NoAuthError
from kazoo.handlers.threading import KazooTimeoutError
from polling import eventually, poll
from serverproc import ServerProcess
from stallproxy import StallProxy
from zkharness import TEST_CREDENTIALS, ZkEnsemble, ZkServer
from zkinject import Injector

import idgen
from idgen import DEFAULT_LAYOUT, PRESETS, Generator, Layout, decode, get_layout
from idgen.clock import ManualClock
from idgen.errors import (
    ClockBehind,
    IdgenError,
    InvalidInput,
    LayoutMismatch,
    LeaseLost,
    LeaseUnavailable,
    NoLease,
    Unavailable,
)
from idgen.leases import zookeeper
from idgen.leases.base import LeaseState
from idgen.leases.zookeeper import Namespace, ZkLease, connected

EPOCH = DEFAULT_LAYOUT.epoch_ms
TINY = Layout("tiny", (("time", 41), ("worker_id", 2), ("sequence", 20)), epoch_ms=EPOCH)  # 4 worker IDs
SOLO = Layout("solo", (("time", 41), ("sequence", 22)), epoch_ms=EPOCH)  # 1 worker ID: every holder reuses it
FAST = {"window_ms": 1_000, "session_timeout_s": 2.0, "auth": TEST_CREDENTIALS}


@pytest.fixture
def generators() -> Iterator[list[Generator]]:
    made: list[Generator] = []
    yield made
    for gen in made:
        gen.close()


def zk_generator(generators: list[Generator], layout: Layout, hosts: str, namespace: str, **options: Any) -> Generator:
    clock = options.pop("clock", None)
    lease = ZkLease(layout, hosts, namespace, **{**FAST, **options}, **({"clock": clock} if clock else {}))
    generators.append(Generator(layout, lease, **({"clock": clock} if clock else {})))
    return generators[-1]


def stamp(id_: int, layout: Layout = DEFAULT_LAYOUT) -> int:
    return decode(id_, layout)["timestamp_ms"]


def test_twenty_processes_starting_at_once_get_distinct_worker_ids(
    zk_hosts: str, zk_namespace: str, spawn_holder
) -> None:
    started = [spawn_holder(DEFAULT_LAYOUT, zk=zk_hosts, namespace=zk_namespace, options=FAST) for _ in range(20)]
    workers = [h.ready().worker_id for h in started]
    assert len(set(workers)) == 20  # all distinct
    with connected(zk_hosts, TEST_CREDENTIALS) as client:
        leases = Namespace(client, zk_namespace).live_leases()
    assert {w: h.pid for w, h in leases.items()} == {h.worker_id: h.pid for h in started}


def test_when_every_worker_id_is_taken_the_next_worker_is_refused(
    zk_hosts: str, zk_namespace: str, generators: list[Generator]
) -> None:
    held = [zk_generator(generators, TINY, zk_hosts, zk_namespace).worker_id for _ in range(4)]
    assert sorted(held) == [0, 1, 2, 3]
    with pytest.raises(LeaseUnavailable, match=r"all 4 worker IDs of layout 'tiny' .* are held by live workers"):
        Generator(TINY, ZkLease(TINY, zk_hosts, zk_namespace, **FAST))


def test_a_dead_holders_worker_id_is_recycled_and_the_new_holder_mints_above_its_fence(
    zk_hosts: str, zk_namespace: str, spawn_holder
) -> None:
    dead = spawn_holder(SOLO, zk=zk_hosts, namespace=zk_namespace, options=FAST).ready()
    dead.kill()  # kill -9: its ephemeral claim lives until the session times out (2 s)
    with connected(zk_hosts, TEST_CREDENTIALS) as client:
        namespace = Namespace(client, zk_namespace)
        fence = namespace.fences()[0]
        assert fence > stamp(dead.first_id, SOLO)
        gen = poll(
            lambda: Generator(SOLO, ZkLease(SOLO, zk_hosts, zk_namespace, **FAST)), what="the dead claim to expire"
        )
        with gen:
            assert gen.worker_id == 0
            assert gen.lease.status().reservation.after_ms >= fence  # or a window below its clock, if that is higher
            assert stamp(gen.next_id(), SOLO) > fence
            assert [(h.pid, h.fence_ms) for h in namespace.holders(0)] == [(dead.pid, fence), (os.getpid(), None)]


def test_never_used_ids_first_then_the_oldest_fence(zk_hosts: str, zk_namespace: str) -> None:
    first = Generator(TINY, ZkLease(TINY, zk_hosts, zk_namespace, **FAST))
    second = Generator(TINY, ZkLease(TINY, zk_hosts, zk_namespace, **FAST))
    used = [first.worker_id, second.worker_id]
    first.close()
    second.close()  # released later, so its fence is newer than the first's
    third = Generator(TINY, ZkLease(TINY, zk_hosts, zk_namespace, **FAST))
    fourth = Generator(TINY, ZkLease(TINY, zk_hosts, zk_namespace, **FAST))
    fifth = Generator(TINY, ZkLease(TINY, zk_hosts, zk_namespace, **FAST))
    assert {third.worker_id, fourth.worker_id} == {0, 1, 2, 3} - set(used)  # never used: in random order
    assert fifth.worker_id == used[0]
    for gen in (third, fourth, fifth):
        gen.close()


def test_real_session_expiry_stops_minting_and_resumes_under_a_new_lease(
    zk_hosts: str, zk_namespace: str, generators: list[Generator], caplog: pytest.LogCaptureFixture
) -> None:
    gen = zk_generator(generators, DEFAULT_LAYOUT, zk_hosts, zk_namespace)
    lease: ZkLease = gen.lease  # type: ignore[assignment]
    before = gen.next_ids(100)
    old = lease.status().reservation
    published: list[Any] = []
    forward = lease._listener
    lease._listener = lambda r: (published.append(r), forward(r))  # observe what the generator is told
    states: list[str] = []
    lease._client.add_listener(states.append)
    caplog.set_level(logging.INFO, logger="idgen")

    # Expire the session for real: a second client takes over the session id and password, then closes it.
    session_id, password = lease._client.client_id
    thief = KazooClient(hosts=zk_hosts, client_id=(session_id, password))
    thief.start(timeout=5)
    thief.stop()
    thief.close()

    poll(lambda: KazooState.LOST in states, what="LOST")
    new = poll(lambda: (r := lease.status().reservation) and r.lease_id != old.lease_id and r, what="a new lease")
    changes = [r for r in published if r is None or r.lease_id != old.lease_id]
    assert changes[0] is None  # minting was stopped before anything else happened
    assert changes[1].lease_id == new.lease_id
    with connected(zk_hosts, TEST_CREDENTIALS) as client:
        assert client.exists(f"{zk_namespace}/leases/{old.worker_id}") is None or new.worker_id == old.worker_id
        assert Namespace(client, zk_namespace).live_leases()[new.worker_id].lease_id == new.lease_id
    after = poll(lambda: gen.next_ids(100), what="minting to resume")
    assert min(after) > max(before)
    assert decode(after[0])["worker"] == new.worker_id
    events = [r.event for r in caplog.records if hasattr(r, "event")]
    assert events.index("lease_lost") < len(events) - 1 - events[::-1].index("lease_acquired")


def test_suspended_mints_only_up_to_the_fence_and_recovers_when_the_server_returns(
    fresh_zk: ZkServer, generators: list[Generator]
) -> None:
    gen = zk_generator(generators, DEFAULT_LAYOUT, fresh_zk.hosts, "/ns", session_timeout_s=8.0)
    gen.next_id()
    fresh_zk.kill()
    poll(lambda: gen.lease.status().state is LeaseState.SUSPENDED, what="SUSPENDED")
    fence = gen.lease.status().reservation.fence_ms
    minted: list[int] = []
    with pytest.raises(Unavailable):  # keeps minting, then refuses at the fence instead of passing it
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            minted += gen.next_ids(64)
            time.sleep(0.001)
    assert minted and max(stamp(i) for i in minted) <= fence
    assert gen.lease.status().reservation.fence_ms == fence  # never extended while suspended
    assert not gen.readiness()[0]
    fresh_zk.restart()
    poll(lambda: gen.lease.status().state is LeaseState.HELD, what="HELD again")
    resumed = poll(lambda: gen.next_id(), what="minting to resume")
    assert resumed > max(minted) and stamp(resumed) > fence
    assert gen.readiness() == (True, None)


def test_handshakes_the_server_never_answers_cost_short_retries_not_the_session(
    zk_hosts: str, zk_namespace: str, generators: list[Generator]
) -> None:
    """A ZooKeeper 3.8 server may accept a connection while it starts and never answer it (ZOOKEEPER-5051, seen in
    fault 4a). kazoo waits ``session_timeout / len(hosts)`` for a handshake, so with one host a single such
    connection used to cost the session, the worker ID and every request in between. Now the first unanswered
    handshake is given up after 1 s and the next after 2 s (a slow server is still reached), and the session lives."""
    proxy = StallProxy(zk_hosts).start()
    try:
        gen = zk_generator(generators, DEFAULT_LAYOUT, proxy.hosts, zk_namespace, session_timeout_s=8.0)
        lease: ZkLease = gen.lease  # type: ignore[assignment]
        held = lease.status().reservation
        before = gen.next_id()
        states: list[str] = []
        lease._client.add_listener(states.append)
        proxy.stall_next(2)
        proxy.cut()
        poll(
            lambda: KazooState.SUSPENDED in states and states[-1] != KazooState.SUSPENDED,
            timeout=20,
            what="the session to resume or be lost",
        )
        assert states == [KazooState.SUSPENDED, KazooState.CONNECTED]
        assert lease.status().reservation.lease_id == held.lease_id
        assert poll(gen.next_id, what="the fence, passed meanwhile, to be extended") > before
        first, second = proxy.stalls
        following = min(t for t in proxy.accepted if t > second)
        # Each wait plus kazoo's retry back-off (0.1 to 0.5 s): 1 s, then twice that.
        assert second - first < 2.0 <= following - second < 4.0, (second - first, following - second)
    finally:
        proxy.close()


def test_killing_the_ensemble_leader_under_load_gives_no_duplicates(
    zk_ensemble: ZkEnsemble, generators: list[Generator]
) -> None:
    workers = [
        zk_generator(generators, DEFAULT_LAYOUT, zk_ensemble.hosts, "/ns", session_timeout_s=6.0) for _ in range(3)
    ]
    minted: list[list[int]] = [[] for _ in workers]
    refusals: list[Exception] = []
    stop = threading.Event()

    def mint(gen: Generator, out: list[int]) -> None:
        while not stop.is_set():
            try:
                out += gen.next_ids(50)
            except Unavailable as exc:
                refusals.append(exc)
            time.sleep(0.001)

    threads = [threading.Thread(target=mint, args=pair) for pair in zip(workers, minted, strict=True)]
    for t in threads:
        t.start()
    poll(lambda: all(len(m) > 1000 for m in minted), what="load")
    old_leader = zk_ensemble.leader()
    old_leader.kill()
    zk_ensemble.wait_for_leader(exclude=old_leader)
    counts = [len(m) for m in minted]
    poll(lambda: all(len(m) > c + 2000 for m, c in zip(minted, counts, strict=True)), what="minting after failover")
    stop.set()
    for t in threads:
        t.join()
    everything = [i for m in minted for i in m]
    assert len(everything) == len(set(everything))
    assert all(m == sorted(m) for m in minted)
    assert all(isinstance(e, Unavailable) for e in refusals)


def test_a_clock_behind_the_previous_holders_fence_rides_above_it_at_once_and_never_reuses_time(
    zk_hosts: str, zk_namespace: str, generators: list[Generator]
) -> None:
    ahead = ManualClock()
    ahead.advance(1_500)
    with Generator(
        SOLO, ZkLease(SOLO, zk_hosts, zk_namespace, **FAST, clock=ahead, max_skew_ms=5_000), clock=ahead
    ) as a:
        last_of_a = a.next_ids(10)[-1]
    with connected(zk_hosts, TEST_CREDENTIALS) as client:
        fence_of_a = Namespace(client, zk_namespace).fences()[0]
    assert fence_of_a >= stamp(last_of_a, SOLO) > time.time() * 1000

    b = zk_generator(generators, SOLO, zk_hosts, zk_namespace)  # the real clock, 1.5 s behind the old fence
    assert b.readiness() == (True, None)
    first_of_b = b.next_id()  # at once: no wait for the clock to pass the old fence
    assert b.clock_rides == 1 and b.lead_ms > 0
    assert stamp(first_of_b, SOLO) == fence_of_a + 1
    assert first_of_b > last_of_a


def test_no_switch_of_worker_ids_is_tried_while_zookeeper_calls_the_clock_untrusted(
    zk_hosts: str, zk_namespace: str, generators: list[Generator]
) -> None:
    """A switch is a claim, and a claim needs a clock ZooKeeper agrees with: trying one each second anyway would open
    a session and scan the namespace's ACLs for nothing."""
    clock = ManualClock()
    gen = zk_generator(generators, DEFAULT_LAYOUT, zk_hosts, zk_namespace, clock=clock, max_skew_ms=1_000)
    gen.next_id()
    clock.advance(-3_600_000)

    def untrusted() -> str | None:
        gen.lease.renew_soon()
        return gen.lease.clock_untrusted

    assert "differs from ZooKeeper's" in poll(untrusted, what="the clock check to fail")
    with pytest.raises(ClockBehind, match="the clock is not trusted: local clock differs from ZooKeeper's"):
        for _ in range(3):
            with contextlib.suppress(ClockBehind):
                gen.next_id()  # the first refusal records why no switch is tried
        gen.next_id()
    assert gen._switching.attempts == 0 and gen.worker_switches == 0


def test_a_clock_skewed_from_zookeepers_is_not_ready_with_the_reason(
    zk_hosts: str, zk_namespace: str, generators: list[Generator]
) -> None:
    skewed = ManualClock()
    skewed.advance(5_000)
    gen = zk_generator(generators, DEFAULT_LAYOUT, zk_hosts, zk_namespace, clock=skewed, max_skew_ms=1_000)
    ready, reason = gen.readiness()
    assert not ready
    assert "local clock differs from ZooKeeper's by +" in reason and "more than the 1000 ms allowed" in reason
    assert gen.lease.skew_ms == pytest.approx(5_000, abs=1_000)  # the manual clock stands still; real time does not
    with pytest.raises(NoLease, match="differs from ZooKeeper's"):
        gen.next_id()
    with connected(zk_hosts, TEST_CREDENTIALS) as client:
        assert Namespace(client, zk_namespace).fences() == {}  # nothing was claimed on a bad clock


def test_a_namespace_keeps_one_layout(zk_hosts: str, zk_namespace: str, generators: list[Generator]) -> None:
    zk_generator(generators, DEFAULT_LAYOUT, zk_hosts, zk_namespace)
    with pytest.raises(LayoutMismatch, match=r"belongs to layout 'idgen' \(41 time.*not 'tiny' \(41 time"):
        Generator(TINY, ZkLease(TINY, zk_hosts, zk_namespace, **FAST))


CUSTOM_SPEC = "time:41,region:3,worker_id:5,sequence:14;epoch=2025-01-01"


def test_a_custom_layout_round_trips_through_the_namespace_and_another_is_refused(
    zk_hosts: str, zk_namespace: str, generators: list[Generator]
) -> None:
    custom = get_layout(CUSTOM_SPEC)
    minted = zk_generator(generators, custom, zk_hosts, zk_namespace).next_id()
    with connected(zk_hosts, TEST_CREDENTIALS) as client:
        stored = Namespace(client, zk_namespace).layout()
    assert stored == custom and stored.spec_string() == CUSTOM_SPEC
    cli = [sys.executable, "-m", "idgen.cli", "--zk", zk_hosts, "--namespace", zk_namespace]
    decoded = subprocess.run([*cli[:3], "decode", str(minted), "--json", *cli[3:]], capture_output=True, text=True)
    assert json.loads(decoded.stdout)["layout"] == CUSTOM_SPEC, decoded.stderr  # no --layout: the namespace's
    other = CUSTOM_SPEC.replace("2025-01-01", "2025-01-02")
    with pytest.raises(
        LayoutMismatch, match=r"belongs to layout 'time:41,region:3.*2025-01-01.*not 'time:.*2025-01-02"
    ):
        Generator(other, ZkLease(get_layout(other), zk_hosts, zk_namespace, **FAST))
    refused = subprocess.run([*cli[:3], "mint", "--layout", other, *cli[3:]], capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "belongs to layout" in refused.stderr


def test_acls_refuse_a_client_without_the_credentials(
    zk_hosts: str, zk_namespace: str, generators: list[Generator]
) -> None:
    gen = zk_generator(generators, DEFAULT_LAYOUT, zk_hosts, zk_namespace)
    worker = gen.worker_id
    outsider = KazooClient(hosts=zk_hosts)
    outsider.start(timeout=5)
    try:
        for kind in ("leases", "fences", "history"):
            path = f"{zk_namespace}/{kind}/{worker}"
            with pytest.raises(NoAuthError):
                outsider.set(path, b"{}")
            with pytest.raises(NoAuthError):
                outsider.delete(path)
            with pytest.raises(NoAuthError):
                outsider.get(path)
        with pytest.raises(NoAuthError):
            outsider.create(f"{zk_namespace}/leases/{worker + 1}", b"", ephemeral=True)
    finally:
        outsider.stop()
        outsider.close()
    assert gen.next_id()


def test_decode_traces_an_id_to_the_process_that_minted_it_after_reuse(
    zk_hosts: str, zk_namespace: str, spawn_holder
) -> None:
    earlier = spawn_holder(SOLO, zk=zk_hosts, namespace=zk_namespace, options=FAST).ready()
    earlier.stop()
    with Generator(SOLO, ZkLease(SOLO, zk_hosts, zk_namespace, **FAST)) as later:
        mine = later.next_id()

    def decode_cli(id_: int) -> dict[str, Any]:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "idgen.cli",
                "decode",
                str(id_),
                "--zk",
                zk_hosts,
                "--namespace",
                zk_namespace,
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    old, new = decode_cli(earlier.first_id), decode_cli(mine)
    assert old["worker"] == new["worker"] == 0
    assert (old["node"]["pid"], old["node"]["host"]) == (earlier.pid, os.uname().nodename)
    assert new["node"]["pid"] == os.getpid()
    assert old["node"]["lease_id"] != new["node"]["lease_id"]
    assert old["node"]["ended_ms"] is not None  # released cleanly
    assert old["timestamp_ms"] <= new["node"]["after_ms"] < new["timestamp_ms"]  # windows in order, disjoint


def test_history_keeps_the_configured_number_of_holders(zk_hosts: str, zk_namespace: str) -> None:
    ids = []
    for _ in range(4):
        with Generator(SOLO, ZkLease(SOLO, zk_hosts, zk_namespace, **FAST, history_size=3)) as gen:
            ids.append(gen.next_id())
    with connected(zk_hosts, TEST_CREDENTIALS) as client:
        holders = Namespace(client, zk_namespace).holders(0)
    assert len(holders) == 3
    lease = ZkLease(SOLO, zk_hosts, zk_namespace, auth=TEST_CREDENTIALS)
    try:
        assert lease.trace(0, stamp(ids[0], SOLO)).code == "before_history"  # its holder fell out of the history
        assert [lease.trace(0, stamp(i, SOLO)).holder.lease_id for i in ids[1:]] == [h.lease_id for h in holders]
    finally:
        lease.close()


def test_leases_command_lists_live_leases_fences_and_history(
    zk_hosts: str, zk_namespace: str, generators: list[Generator]
) -> None:
    gen = zk_generator(generators, DEFAULT_LAYOUT, zk_hosts, zk_namespace)
    result = subprocess.run(
        [sys.executable, "-m", "idgen.cli", "leases", "--zk", zk_hosts, "--namespace", zk_namespace, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    listed = json.loads(result.stdout)
    assert listed["leases"][str(gen.worker_id)]["pid"] == os.getpid()
    assert listed["fences"][str(gen.worker_id)] >= gen.lease.status().reservation.fence_ms - 1
    assert listed["history"][str(gen.worker_id)][-1]["lease_id"] == gen.lease.status().reservation.lease_id


def test_an_unreachable_zookeeper_is_a_clear_error_within_a_bounded_time() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "idgen.cli", "mint", "--zk", "127.0.0.1:9", "-n", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr == "idgen: error: cannot reach ZooKeeper at 127.0.0.1:9 within 5 s\n"
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("hosts", ["a:b", ",", "127.0.0.1:99999", "[::1", "127.0.0.1:2181/chroot"])
def test_bad_zookeeper_hosts_are_one_line_in_the_cli_and_invalid_input_in_python(hosts: str) -> None:
    """kazoo's own parser raised a ValueError traceback for these."""
    result = subprocess.run(
        [sys.executable, "-m", "idgen.cli", "mint", "--zk", hosts], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "ZooKeeper hosts" in result.stderr
    with pytest.raises(InvalidInput, match="ZooKeeper hosts"):
        ZkLease(DEFAULT_LAYOUT, hosts, auth=TEST_CREDENTIALS)


def test_without_layout_the_cli_uses_the_namespaces_layout(
    zk_hosts: str, zk_namespace: str, generators: list[Generator]
) -> None:
    zk_generator(generators, PRESETS["twitter"], zk_hosts, zk_namespace)
    result = subprocess.run(
        [sys.executable, "-m", "idgen.cli", "mint", "--zk", zk_hosts, "--namespace", zk_namespace, "-n", "2"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    minted = [decode(line, "twitter") for line in result.stdout.split()]
    assert len({m["worker"] for m in minted}) == 1 and minted[0]["timestamp_ms"] <= time.time() * 1000


def test_wrong_credentials_are_one_clear_error_in_the_lease_the_cli_the_server_and_the_process_default(
    monkeypatch: pytest.MonkeyPatch, zk_hosts: str, zk_namespace: str, generators: list[Generator]
) -> None:
    zk_generator(generators, DEFAULT_LAYOUT, zk_hosts, zk_namespace)
    with pytest.raises(LeaseUnavailable, match=r"ZooKeeper refused access to .*: wrong or missing credentials"):
        Generator(DEFAULT_LAYOUT, ZkLease(DEFAULT_LAYOUT, zk_hosts, zk_namespace, **{**FAST, "auth": "idgen:wrong"}))
    wrong = {"IDGEN_ZK": zk_hosts, "IDGEN_NAMESPACE": zk_namespace, "IDGEN_ZK_AUTH": "idgen:wrong"}
    for name, value in wrong.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("IDGEN_STATE_DIR", raising=False)
    idgen.reset_default()
    with pytest.raises(Unavailable, match="ZooKeeper refused access"):  # not kazoo's NoAuthError
        idgen.next_id()
    server = ServerProcess(env=wrong)  # serve --host 127.0.0.1 --port 0
    assert server.proc.wait(30) == 1
    failed = server.event("start_failed")
    assert failed["message"].startswith("ZooKeeper refused access") and "Traceback" not in json.dumps(failed)
    assert not [e for e in server.events if "not_json" in e]
    for command in (["leases"], ["decode", "1"], ["mint"]):
        result = subprocess.run(
            [sys.executable, "-m", "idgen.cli", *command, "--zk", zk_hosts, "--namespace", zk_namespace],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "IDGEN_ZK_AUTH": "idgen:wrong"},
        )
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith("idgen: error: ZooKeeper refused access") and result.stderr.count("\n") == 1


# -- the clock check, time bounds, a lost claim ----------------------------------------------------------------------


class OffsetClock:
    """The host's wall clock moved by ``offset_ms``, which the test may change while the lease runs; ``read`` is set
    at every reading. A real clock read, not a model of one."""

    def __init__(self, offset_ms: float = 0) -> None:
        self.offset_ms = offset_ms
        self.read = threading.Event()

    def now_ns(self) -> int:
        self.read.set()
        return time.time_ns() + int(self.offset_ms * 1_000_000)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@pytest.mark.parametrize(("offset_ms", "step_ms"), [(1_500, 0), (0, 8_000)], ids=["slow write", "clock step"])
def test_a_slow_write_or_a_clock_step_during_the_clock_check_does_not_pass_a_skewed_clock(
    fresh_zk: ZkServer, offset_ms: int, step_ms: int
) -> None:
    """The server is frozen for 2 s while it holds the clock check's write. With a wall clock 1.5 s ahead, or one
    stepped 8 s ahead during the write, the check must not pass: no worker ID is claimed."""
    clock = OffsetClock(offset_ms)
    lease = ZkLease(DEFAULT_LAYOUT, fresh_zk.hosts, "/clock", **{**FAST, "session_timeout_s": 10.0}, clock=clock)
    assert lease.namespace  # connected and bound: the next request is the clock check's write
    clock.read.clear()
    fresh_zk.pause()

    def slow_write() -> None:
        clock.read.wait(10)  # the check has read the clock and sent its write to the frozen server
        clock.offset_ms += step_ms
        time.sleep(2.0)  # the fault itself: a write that takes 2 s
        fresh_zk.resume()

    thawing = threading.Thread(target=slow_write)
    thawing.start()
    try:
        assert lease.start(lambda _: None) is None
        state, _, reason = lease.status().state, None, lease.status().reason
        assert state is LeaseState.ACQUIRING and reason, reason
    finally:
        thawing.join()
        lease.close()
    with connected(fresh_zk.hosts, TEST_CREDENTIALS) as client:
        assert Namespace(client, "/clock").fences() == {}  # nothing was claimed on that clock


def test_with_the_server_frozen_every_call_returns_within_its_bound(fresh_zk: ZkServer) -> None:
    bound_s = 0.5
    options = {**FAST, "session_timeout_s": 4.0, "connect_timeout_s": bound_s}  # kazoo itself gives up after 2.7 s
    gen = Generator(DEFAULT_LAYOUT, ZkLease(DEFAULT_LAYOUT, fresh_zk.hosts, "/frozen", **options))
    waiting = ZkLease(DEFAULT_LAYOUT, fresh_zk.hosts, "/frozen", **options)
    assert waiting.namespace  # connected and bound
    with connected(fresh_zk.hosts, TEST_CREDENTIALS) as client:
        view = Namespace(client, "/frozen", timeout_s=bound_s)
        calls: dict[str, Callable[[], Any]] = {
            "acquisition": lambda: waiting.start(lambda _: None),
            "claim": lambda: waiting._acquire(waiting._new_holder()),
            "history": lambda: gen.lease.holders(gen.worker_id),
            "live leases": view.live_leases,
            "fences": view.fences,
            "layout": view.layout,
            "describe": view.describe,
        }
        fresh_zk.pause()
        try:
            for name, call in calls.items():
                began = time.monotonic()
                with pytest.raises(LeaseUnavailable, match=f"did not answer .* within {bound_s:g} s"):
                    call()
                assert time.monotonic() - began < bound_s + 0.5, name
            began = time.monotonic()
            with pytest.raises(LeaseUnavailable, match=f"cannot reach ZooKeeper .* within {bound_s:g} s"):
                Generator(DEFAULT_LAYOUT, ZkLease(DEFAULT_LAYOUT, fresh_zk.hosts, "/frozen", **options))  # connect
            assert time.monotonic() - began < bound_s + 0.5
            began = time.monotonic()
            gen.close()  # the release gives up within its bound (the fence stays where it was, which is safe)
            assert time.monotonic() - began < options["session_timeout_s"]  # then kazoo's close: 2/3 of it
        finally:
            fresh_zk.resume()
            waiting.close()


def test_after_a_lost_lease_its_claim_is_dropped_while_the_session_lives(
    zk_hosts: str, zk_namespace: str, generators: list[Generator]
) -> None:
    gen = zk_generator(generators, TINY, zk_hosts, zk_namespace)
    old = gen.lease.status().reservation
    with connected(zk_hosts, TEST_CREDENTIALS) as client:
        fence = f"{zk_namespace}/fences/{old.worker_id}"
        record = json.loads(client.get(fence)[0])
        client.set(fence, json.dumps({**record, "lease_id": "not-yours"}).encode())  # the next extension fails
        new = poll(lambda: (r := gen.lease.status().reservation) and r.lease_id != old.lease_id and r, what="a lease")
        assert new.worker_id != old.worker_id
        assert client.exists(f"{zk_namespace}/leases/{old.worker_id}") is None  # not held until the process exits


# -- no kazoo exception escapes ----------------------------------------------------------------------------------------

# Every kind of failure kazoo reports, by how idgen could tell them apart: the server's answers (the generic one, and
# each idgen handles by name), the client's own (connection closed or lost, session expired, stopped) and time-outs.
KAZOO_ERRORS: tuple[type[BaseException], ...] = (
    kazoo_errors.NoAuthError,
    kazoo_errors.AuthFailedError,
    kazoo_errors.ConnectionLoss,
    kazoo_errors.ConnectionClosedError,
    kazoo_errors.SessionExpiredError,
    kazoo_errors.SessionMovedError,
    kazoo_errors.OperationTimeoutError,
    kazoo_errors.NoNodeError,
    kazoo_errors.NodeExistsError,
    kazoo_errors.BadVersionError,
    kazoo_errors.NotEmptyError,
    kazoo_errors.InvalidACLError,
    kazoo_errors.RolledBackError,
    kazoo_errors.ZookeeperError,
    kazoo_errors.ZookeeperStoppedError,
    kazoo_errors.KazooException,
    KazooTimeoutError,
)


def _every_kazoo_error() -> list[type[BaseException]]:
    """Every exception class kazoo defines (its exceptions module and its threading handler's time-out)."""
    found: list[type[BaseException]] = [KazooTimeoutError]
    pending: list[type[BaseException]] = [kazoo_errors.KazooException]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending += cls.__subclasses__()
    return sorted(set(found), key=lambda c: c.__name__)


def test_every_kazoo_error_class_comes_out_of_a_request_as_an_idgen_error(
    monkeypatch: pytest.MonkeyPatch, zk_hosts: str, used_namespace: str
) -> None:
    """The request/lifecycle tests above fail every request with one error of each kind; here one request fails with
    every class kazoo has: none is let through by name that the caller does not handle."""
    classes = _every_kazoo_error()
    assert len(classes) > 40
    escaped = {}
    for error in classes:
        injector = Injector()
        injector.fail(error, method="get", path="/layout")
        monkeypatch.setattr(zookeeper, "KazooClient", injector.client_class())
        with connected(zk_hosts, TEST_CREDENTIALS) as client:
            try:
                Namespace(client, used_namespace).layout()
            except IdgenError:
                pass
            except Exception as exc:
                escaped[error.__name__] = repr(exc)
        assert injector.fired, error
    assert escaped == {}


def _faulty_lease(monkeypatch: pytest.MonkeyPatch, injector: Injector, hosts: str, namespace: str) -> ZkLease:
    monkeypatch.setattr(zookeeper, "KazooClient", injector.client_class())
    return ZkLease(TINY, hosts, namespace, **{**FAST, "connect_timeout_s": 2.0})


def _lifecycle(lease: ZkLease, watcher: KazooClient) -> tuple[list[BaseException], str | None]:
    """What each ZooKeeper operation of the lease raised, in order: claim (the clock check, binding the layout, the
    ACL checks, the claim; tried again if it failed, when it must succeed and leave no other claim of its session),
    extend, trace, release, close. And what was wrong after the claim, if anything."""
    raised: list[BaseException] = []
    reservation, wrong = None, None
    for _ in range(2):
        try:
            reservation = lease._acquire_checked()
            break
        except Exception as exc:
            raised.append(exc)
    if reservation is None:
        wrong = "no worker ID claimed on the second try"
    else:
        session = lease.namespace.client.client_id[0]
        owned = {w for w in range(TINY.worker_capacity) if _owner(watcher, lease.namespace, w) == session}
        if owned != {reservation.worker_id}:
            wrong = f"the session owns the claims of {sorted(owned)} but holds worker {reservation.worker_id}"
        for step in (
            lambda: lease._extend(reservation, reservation.fence_ms + 1),
            lambda: lease.trace(reservation.worker_id, reservation.after_ms + 1),
            lambda: lease._release(reservation, reservation.after_ms),
        ):
            try:
                step()
            except Exception as exc:
                raised.append(exc)
    try:
        lease.close()
    except Exception as exc:
        raised.append(exc)
    return raised, wrong


def _owner(watcher: KazooClient, namespace: Namespace, worker_id: int) -> int | None:
    stat = watcher.exists(namespace.node("leases", worker_id))
    return None if stat is None else int(stat.ephemeralOwner)


def _namespace_reads(namespace: Namespace) -> list[BaseException]:
    """What each read of ``idgen leases``, ``decode`` and ``zk-secure`` raised."""
    raised: list[BaseException] = []
    for read in (namespace.layout, namespace.describe, lambda: namespace.fence(0), lambda: namespace.holders(0)):
        try:
            read()
        except Exception as exc:
            raised.append(exc)
    try:
        namespace.secure(TEST_CREDENTIALS)
    except Exception as exc:
        raised.append(exc)
    return raised


def _not_idgen(raised: list[BaseException]) -> list[str]:
    return [
        f"{type(e).__module__}.{type(e).__name__}: {e}" for e in raised if not isinstance(e, IdgenError | LeaseLost)
    ]


@pytest.fixture
def used_namespace(zk_hosts: str, zk_namespace: str) -> str:
    """A namespace whose 4 worker IDs have all been held and released, so every claim makes the same requests."""
    for _ in range(4):
        with Generator(TINY, ZkLease(TINY, zk_hosts, zk_namespace, **FAST)) as gen:
            gen.next_id()
    return zk_namespace


def test_no_kazoo_exception_escapes_the_lease_whichever_request_fails_and_however(
    monkeypatch: pytest.MonkeyPatch, zk_hosts: str, used_namespace: str
) -> None:
    """Every request of a lease's life (claim, extend, trace, release, close) is made to fail in turn, with each kind
    of kazoo error, before reaching the server and, for writes, after the server did the work: what comes out is an
    idgen error (or LeaseLost, which the lease turns into LOST), never kazoo's; and a failed claim leaves no claim of
    its session behind (a stray would look held by a live worker for as long as the session lives)."""
    watcher = KazooClient(hosts=zk_hosts, auth_data=[("digest", TEST_CREDENTIALS)])  # kazoo's own: no faults
    watcher.start(timeout=15)
    recorder = Injector()
    assert _lifecycle(_faulty_lease(monkeypatch, recorder, zk_hosts, used_namespace), watcher) == ([], None)
    requests = recorder.calls
    assert {method for method, _ in requests} >= {"create", "get", "set", "get_children", "get_acls", "commit"}
    escaped: dict[str, list[str]] = {}
    stranded: dict[str, str] = {}
    for index in range(1, len(requests) + 1):
        method, path = requests[index - 1]
        writes = method in ("create", "set", "delete", "commit", "set_acls", "ensure_path")
        for error in KAZOO_ERRORS:
            for after in (False, True) if writes else (False,):
                injector = Injector()
                injector.fail(error, nth=index, after=after)
                raised, wrong = _lifecycle(_faulty_lease(monkeypatch, injector, zk_hosts, used_namespace), watcher)
                case = f"#{index} {method} {path} {error.__name__}{' after' if after else ''}"
                if _not_idgen(raised):
                    escaped[case] = _not_idgen(raised)
                if wrong:
                    stranded[case] = wrong
    watcher.stop()
    watcher.close()
    assert escaped == {}
    assert stranded == {}


def test_no_kazoo_exception_escapes_the_namespace_reads_of_the_cli(
    monkeypatch: pytest.MonkeyPatch, zk_hosts: str, used_namespace: str
) -> None:
    """``idgen leases``, ``decode`` and ``zk-secure`` read the namespace directly: each of their requests fails in
    turn with each kind of kazoo error, and what comes out is an idgen error."""
    recorder = Injector()
    monkeypatch.setattr(zookeeper, "KazooClient", recorder.client_class())
    with connected(zk_hosts, TEST_CREDENTIALS) as client:
        assert _namespace_reads(Namespace(client, used_namespace)) == []
    escaped: dict[str, list[str]] = {}
    for index in range(1, len(recorder.calls) + 1):
        for error in KAZOO_ERRORS:
            injector = Injector()
            injector.fail(error, nth=index)
            monkeypatch.setattr(zookeeper, "KazooClient", injector.client_class())
            with connected(zk_hosts, TEST_CREDENTIALS) as client:
                leaked = _not_idgen(_namespace_reads(Namespace(client, used_namespace, timeout_s=2.0)))
            if leaked:
                escaped[f"#{index} {recorder.calls[index - 1]} {error.__name__}"] = leaked
    assert escaped == {}


def test_a_failed_start_is_an_idgen_error_and_the_next_generator_mints(
    monkeypatch: pytest.MonkeyPatch, zk_hosts: str, used_namespace: str
) -> None:
    """Through the public API: ``Generator()`` raises an idgen error whichever request of the lease's start fails, and
    leaves nothing stranded: a generator made right after it mints."""
    recorder = Injector()
    lease = _faulty_lease(monkeypatch, recorder, zk_hosts, used_namespace)
    lease._acquire_checked()  # what start() does before its renewal thread runs
    lease.close()
    start = len(recorder.calls)
    escaped: dict[str, str] = {}
    for index in range(1, start + 1):
        for error in (kazoo_errors.NoAuthError, kazoo_errors.ConnectionLoss, kazoo_errors.ZookeeperError):
            injector = Injector()
            injector.fail(error, nth=index)
            try:
                Generator(TINY, _faulty_lease(monkeypatch, injector, zk_hosts, used_namespace)).close()
            except IdgenError:
                pass
            except Exception as exc:
                escaped[f"#{index} {recorder.calls[index - 1]} {error.__name__}"] = repr(exc)
    assert escaped == {}
    monkeypatch.undo()
    with Generator(TINY, ZkLease(TINY, zk_hosts, used_namespace, **FAST)) as gen:
        assert gen.next_id()


@pytest.mark.parametrize("lost", [kazoo_errors.ConnectionLoss, KazooTimeoutError], ids=["connection loss", "time-out"])
def test_a_claim_whose_create_reply_is_lost_is_dropped_and_the_worker_id_is_claimed_again(
    monkeypatch: pytest.MonkeyPatch, zk_hosts: str, zk_namespace: str, generators: list[Generator], lost: type
) -> None:
    """The lease is lost while its session lives; re-acquiring, the create of its new claim lands but its reply is
    lost. The claim is this session's own: left alone it would look held by a live worker for as long as the session
    lives, here the one worker ID of the layout, for ever."""
    injector = Injector()
    injector.fail(lost, method="create", path="/leases/", nth=2, after=True)  # the 1st is the first claim
    monkeypatch.setattr(zookeeper, "KazooClient", injector.client_class())
    gen = zk_generator(generators, SOLO, zk_hosts, zk_namespace)
    before = gen.next_ids(100)
    old = gen.lease.status().reservation
    with connected(zk_hosts, TEST_CREDENTIALS) as client:
        fence = f"{zk_namespace}/fences/0"
        record = json.loads(client.get(fence)[0])
        client.set(fence, json.dumps({**record, "lease_id": "not-yours"}).encode())  # the next extension fails
    poll(lambda: len(injector.fired) == 1, what="the re-acquisition's create to land with its reply lost")
    new = eventually(lambda: (r := gen.lease.status().reservation) and r.lease_id != old.lease_id and r, 10)
    assert new, f"worker 0 was not claimed again in 10 s: {gen.lease.status().reason}"
    assert new.worker_id == 0 and new.after_ms >= record["fence_ms"]  # still fenced: above the fence it found
    after = poll(lambda: gen.next_ids(100), what="minting to resume")
    assert min(after) > max(before) and stamp(after[0], SOLO) > record["fence_ms"]
