"""ZooKeeper faults under load (DESIGN.md section 3 and 6): the ensemble leader killed (scenario 3), and all of
ZooKeeper down for less, then for more, than the fence window (scenario 4).

What DESIGN.md promises: a session SUSPENDED (server down, leader gone) keeps minting up to the fence it already
has, which is kept 5-7.5 s ahead, so an outage shorter than that costs nothing; past the fence, 503 with
Retry-After until ZooKeeper is back; recovery is automatic.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from faultkit import IdgenServer, wait_until
from loadclient import LoadClient, Record, Report, check
from zkharness import ZkEnsemble, ZkServer

SHORT_OUTAGE_S = 2.0  # well inside the 5 s fence lead, also counting ZooKeeper's restart and kazoo's reconnect
LONG_OUTAGE_S = 9.0  # beyond the 7.5 s the fence can be ahead


def _start_pair(
    spawn_server: Callable[..., IdgenServer], start_load: Callable[..., LoadClient], hosts: str, timeout_s: str
) -> tuple[list[IdgenServer], LoadClient]:
    options = ("--zk", hosts, "--namespace", "/faults", "--zk-session-timeout", timeout_s)
    servers = [spawn_server(name, *options) for name in ("a", "b")]
    load = start_load(*(s.wait_ready() for s in servers))
    for server in servers:
        load.wait_ok(server.name, 150)
    return servers, load


def _leases(servers: list[IdgenServer]) -> dict[str, dict[str, Any]]:
    return {s.name: s.info()["lease"] for s in servers}


def _extended_since(servers: list[IdgenServer], fences: dict[str, int]) -> bool:
    """Every server holds its lease again and has moved its fence past ``fences`` (so ZooKeeper took a write)."""
    return all(
        lease["state"] == "held" and lease["fence_ms"] > fences[name] for name, lease in _leases(servers).items()
    )


def _suspended_after(server: IdgenServer, index: int) -> bool:
    return any(e.get("event") == "lease_suspended" for e in server.events[index:])


def test_killing_the_zookeeper_leader_under_load_costs_nothing(
    zk_ensemble: ZkEnsemble,
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    fault_results: list[Report],
) -> None:
    servers, load = _start_pair(spawn_server, start_load, zk_ensemble.hosts, "2")
    before = _leases(servers)
    logged = {s.name: len(s.events) for s in servers}
    leader = zk_ensemble.leader()
    killed = time.monotonic()
    leader.kill()
    zk_ensemble.wait_for_leader(exclude=leader)
    elected = time.monotonic() - killed
    # Followers drop every client while they elect, so every server's session is cut, not only the leader's.
    wait_until(lambda: all(_suspended_after(s, logged[s.name]) for s in servers), 10, "the servers to be SUSPENDED")
    wait_until(
        lambda: _extended_since(servers, {n: lease["fence_ms"] for n, lease in before.items()}),
        15,
        "fences extended through the new leader",
    )
    for server in servers:
        load.wait_ok(server.name, 100)
    records = load.stop()

    report = check(records, "3. ZooKeeper leader killed (3-node ensemble)")
    report.notes.append(f"new leader after {elected:.2f} s; both sessions SUSPENDED, then resumed without LOST")
    fault_results.append(report)
    report.assert_ok()
    after = _leases(servers)
    assert all(after[n]["lease_id"] == before[n]["lease_id"] for n in after), "a session was lost: DESIGN promises not"


def test_zookeeper_down_for_less_than_the_fence_window_costs_nothing(
    fresh_zk: ZkServer,
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    fault_results: list[Report],
) -> None:
    servers, load = _start_pair(spawn_server, start_load, fresh_zk.hosts, "8")  # a session outliving the outage
    before = _leases(servers)
    killed = time.monotonic()
    fresh_zk.kill()
    wait_until(lambda: all(lease["state"] == "suspended" for lease in _leases(servers).values()), 5, "SUSPENDED")
    time.sleep(max(0.0, killed + SHORT_OUTAGE_S - time.monotonic()))  # the outage itself
    fresh_zk.restart()
    restored = time.monotonic()
    wait_until(lambda: _extended_since(servers, {n: lease["fence_ms"] for n, lease in before.items()}), 15, "fences")
    for server in servers:
        load.wait_ok(server.name, 100)
    records = load.stop()

    report = check(records, "4a. all of ZooKeeper down for less than the fence window")
    report.notes.append(f"down {restored - killed:.1f} s, from the SIGKILL to the restarted server answering")
    fault_results.append(report)
    report.assert_ok()
    assert all(lease["lease_id"] == before[n]["lease_id"] for n, lease in _leases(servers).items())


def test_zookeeper_down_for_longer_than_the_fence_window_gives_503s_then_recovers(
    fresh_zk: ZkServer,
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    fault_results: list[Report],
) -> None:
    servers, load = _start_pair(spawn_server, start_load, fresh_zk.hosts, "2")
    killed_wall = time.time()
    killed = time.monotonic()
    fresh_zk.kill()
    # Read after the kill: nothing can extend these fences any more, so they are exactly what the servers hold.
    lead_s = min(lease["fence_ms"] for lease in _leases(servers).values()) / 1000 - killed_wall
    for server in servers:  # every server refuses once its fence has passed
        load.wait_for(_refusal_from(server.name), 1, killed, LONG_OUTAGE_S)
    time.sleep(max(0.0, killed + LONG_OUTAGE_S - time.monotonic()))  # the rest of the outage
    assert all(not s.ready() for s in servers)
    fresh_zk.restart()
    restored = time.monotonic()
    for server in servers:
        load.wait_ok(server.name, 100, since=restored, timeout=20)
    records = load.stop()

    report = check(
        records,
        "4b. all of ZooKeeper down for longer than the fence window",
        allow=lambda r: _refused_for_lack_of_zookeeper(r, killed, restored),
        recovery_since=restored,
        recovery_from="after ZooKeeper is back",
    )
    errors = [r for r in records if not r.ok]
    first_error = min(r.done for r in errors) - killed
    report.notes.append(
        f"down {restored - killed:.1f} s; first 503 {first_error:.2f} s after the kill, when the fence (then"
        f" {lead_s:.2f} s ahead) had passed"
    )
    fault_results.append(report)
    report.assert_ok()
    assert first_error >= lead_s - 0.1, "a 503 came while the fence still covered the clock"
    assert report.recovery_s is not None and report.recovery_s < 10


def _refusal_from(name: str) -> Callable[[Record], bool]:
    return lambda record: record.server == name and record.status == 503


def _refused_for_lack_of_zookeeper(record: Record, killed: float, restored: float) -> bool:
    """503 fence_reached while ZooKeeper is down (or no_lease should the session be lost), until it is back."""
    in_outage = killed <= record.done and record.sent <= restored + 15
    return in_outage and record.status == 503 and record.code in ("fence_reached", "no_lease")
