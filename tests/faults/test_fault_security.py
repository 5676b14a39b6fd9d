"""Scenario 9: a stranger on the ZooKeeper network. An anonymous kazoo client keeps trying to delete and overwrite the
claims, fences and histories of servers under load, to take their worker IDs, and to delete the layout and clock
nodes (DESIGN.md section 3, ACLs). Without credentials every node was world-writable, and one such delete let the next
server take a worker ID from scratch: thousands of duplicates. With credentials every attempt is refused.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from faultkit import TINY, IdgenServer, create_namespace
from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoAuthError, NoNodeError
from loadclient import LoadClient, Report, check

ROUNDS = 20  # of attempts on every worker ID of the layout, then on whatever a new server claims


def _attack(client: KazooClient, namespace: str) -> Counter[str]:
    """What a stranger with network access tries: delete and overwrite the claim, fence and history of every worker
    ID, claim them, delete the layout and clock nodes. The outcomes by name (``accepted``, or the error)."""
    attempts = [client.delete_async(f"{namespace}/{node}") for node in ("layout", "clock")]
    for worker_id in range(TINY.worker_capacity):
        for kind in ("leases", "fences", "history"):
            path = f"{namespace}/{kind}/{worker_id}"
            attempts += [client.delete_async(path), client.set_async(path, b'{"fence_ms": 0, "lease_id": "x"}')]
        attempts.append(client.create_async(f"{namespace}/leases/{worker_id}", b"{}", ephemeral=True))
    outcomes: Counter[str] = Counter()
    for attempt in attempts:
        try:
            attempt.get(timeout=10)
            outcomes["accepted"] += 1
        except KazooException as exc:
            outcomes[type(exc).__name__] += 1  # NoNodeError: a worker ID never used has no fence to delete
    return outcomes


def test_an_anonymous_client_deleting_claims_and_fences_under_load_changes_nothing(
    zk_hosts: str,
    zk_namespace: str,
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    fault_results: list[Report],
) -> None:
    """Two servers under load; the stranger deletes what it can, and a third server starts at once: with the claims
    and fences gone it would take a worker ID in use from scratch (``after_ms`` 0), minting what its holder mints."""
    create_namespace(zk_hosts, zk_namespace, TINY)
    options = ("--zk", zk_hosts, "--namespace", zk_namespace, "--zk-session-timeout", "2")
    servers = [spawn_server(name, *options) for name in ("a", "b")]
    load = start_load(*(s.wait_ready() for s in servers))
    for server in servers:
        load.wait_ok(server.name, 150)
    before = {s.name: s.info()["lease"]["lease_id"] for s in servers}

    stranger = KazooClient(hosts=zk_hosts)
    stranger.start(timeout=15)
    try:
        outcomes = _attack(stranger, zk_namespace)
        servers.append(spawn_server("c", *options))
        load.add(servers[-1].wait_ready())
        for _ in range(ROUNDS):
            outcomes += _attack(stranger, zk_namespace)
        for server in servers:
            load.wait_ok(server.name, 300)
    finally:
        stranger.stop()
        stranger.close()
    records = load.stop()

    report = check(records, "9. an anonymous ZooKeeper client deletes claims and fences under load", layout=TINY)
    report.notes.append(
        f"{outcomes.total()} deletes, overwrites and claims by a client without credentials: "
        + ", ".join(f"{name} {count}" for name, count in sorted(outcomes.items()))
    )
    fault_results.append(report)
    report.assert_ok()
    assert outcomes[NoAuthError.__name__] > 0 and set(outcomes) <= {NoAuthError.__name__, NoNodeError.__name__}
    assert {s.name: s.info()["lease"]["lease_id"] for s in servers[:2]} == before  # no lease was lost
    assert len({s.info()["worker_id"] for s in servers}) == 3
