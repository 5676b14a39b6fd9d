"""Scenario 9: a stranger on the ZooKeeper network. An anonymous kazoo client keeps trying to delete and overwrite the
claims, fences and histories of servers under load, to take their worker IDs, and to delete the layout and clock
nodes (DESIGN.md section 3, ACLs). Without credentials every node was world-writable, and one such delete let the next
server take a worker ID from scratch: thousands of duplicates. With credentials every attempt is refused.

Scenario 11a: the stranger comes first. It creates the namespace and its containers with an ``ip:0.0.0.0/0`` ALL ACL,
which lets everyone, idgen included, do anything: a check that looked for ``world:anyone`` only let idgen serve there,
and the stranger then deleted the fence, history and claim of a serving worker ID, so the next server, its clock
0.9 s behind, started that worker ID from scratch and re-minted IDs already handed out. ACLs are now checked by
allow-list (DESIGN.md section 4): the server refuses to start, naming the node, the entry and ``idgen zk-secure``;
once that has run, the same attack is refused by ZooKeeper.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from faultkit import SOLO, TINY, Faketime, IdgenServer, create_namespace
from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoAuthError, NoNodeError
from kazoo.security import ACL, Id, Permissions
from loadclient import LoadClient, Report, check

ROUNDS = 10  # of attempts on every worker ID of the layout, then on whatever a new server claims


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


# -- scenario 11a --------------------------------------------------------------------------------------------------

EVERYONE = [ACL(Permissions.ALL, Id("ip", "0.0.0.0/0"))]  # every IPv4 client, idgen's included: not world:anyone
BEHIND_S = 0.9  # the next server's clock: behind, but within the skew ZooKeeper's clock check allows (1 s)


@pytest.fixture
def stranger(zk_hosts: str) -> Iterator[KazooClient]:
    """A kazoo client without credentials."""
    client = KazooClient(hosts=zk_hosts)
    client.start(timeout=15)
    yield client
    client.stop()
    client.close()


def pre_create(stranger: KazooClient, namespace: str) -> None:
    """The stranger makes the namespace and its containers first, open to every IPv4 client."""
    stranger.create(namespace, acl=EVERYONE, makepath=True)
    for kind in ("leases", "fences", "history", "clock"):
        stranger.create(f"{namespace}/{kind}", acl=EVERYONE)


def delete_worker_records(stranger: KazooClient, namespace: str, worker_id: int) -> Counter[str]:
    """The stranger deletes a serving worker ID's fence, history and claim: the outcomes by name."""
    outcomes: Counter[str] = Counter()
    for kind in ("fences", "history", "leases"):
        try:
            stranger.delete(f"{namespace}/{kind}/{worker_id}")
            outcomes["deleted"] += 1
        except KazooException as exc:
            outcomes[type(exc).__name__] += 1
    return outcomes


def attack_under_load(
    stranger: KazooClient,
    namespace: str,
    options: tuple[str, ...],
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    faketime: Faketime,
) -> tuple[LoadClient, IdgenServer, Counter[str]]:
    """Server ``a`` serves worker 0 of ``solo`` under load; the stranger deletes its records; server ``b``, its clock
    ``BEHIND_S`` behind, starts and joins the load if it serves."""
    first = spawn_server("a", *options)
    load = start_load(first.wait_ready())
    load.wait_ok("a", 300)
    outcomes = delete_worker_records(stranger, namespace, 0)
    faketime.set(-BEHIND_S)
    second = spawn_server("b", *options, env=faketime.env())
    try:
        load.add(second.wait_ready(timeout=15))
        load.wait_ok("b", 300)
    except AssertionError:  # it did not serve: nothing was free to claim
        pass
    load.wait_ok("a", 50)
    return load, second, outcomes


def test_a_namespace_pre_created_open_to_every_ip_is_refused_and_once_secured_the_attack_fails(
    zk_hosts: str,
    zk_namespace: str,
    stranger: KazooClient,
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    faketime: Faketime,
    fault_results: list[Report],
) -> None:
    pre_create(stranger, zk_namespace)
    zk = ("--zk", zk_hosts, "--namespace", zk_namespace)
    options = (*zk, "--layout", SOLO.spec_string(), "--zk-session-timeout", "2")

    refused = spawn_server("refused", *options)
    assert refused.wait_exit() == 1
    why = refused.event("start_failed")["message"]
    secured = subprocess.run(
        [sys.executable, "-m", "idgen.cli", "zk-secure", *zk], capture_output=True, text=True, timeout=60
    )
    load, second, outcomes = attack_under_load(stranger, zk_namespace, options, spawn_server, start_load, faketime)
    records = load.stop()
    served_by_b = [r for r in records if r.server == "b" and r.ok]

    report = check(
        records, "11a. a namespace pre-created open to every IP; its fence, history, claim deleted", layout=SOLO
    )
    report.notes += [
        f"refused at start: {why}",
        f"idgen zk-secure: {secured.stdout.strip()}",
        "the stranger's deletes of fences/0, history/0, leases/0 under load: "
        + ", ".join(f"{name} {count}" for name, count in sorted(outcomes.items())),
        f"server b (clock {BEHIND_S} s behind): exit code {second.proc.poll()}, answers {len(served_by_b)}",
    ]
    fault_results.append(report)
    report.assert_ok()
    assert f"ZooKeeper node {zk_namespace}" in why and "ip:0.0.0.0/0:cdrwa" in why and "idgen zk-secure" in why
    assert secured.returncode == 0 and secured.stdout == f"secured 5 nodes of {zk_namespace}\n", secured.stderr
    assert outcomes == {NoAuthError.__name__: 3}
    assert served_by_b == []  # every worker ID held: it exits 1 (or, were its clock check slow, waits unready)
