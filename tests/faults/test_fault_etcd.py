"""etcd faults under load, on a 3-member cluster with auth enabled (tests/etcdharness.py), servers run with
``--etcd`` (all three client URLs) and the default etcd lease TTL (10 s; 3 s where a lease must expire).

- 18a: the etcd leader killed under load: the servers' keepalives and fence writes go to the surviving members; the
  fence lead covers the election, so nothing is refused and no claim is lost.
- 18b: a server frozen (SIGSTOP) past its etcd lease's TTL while another takes its worker ID, then resumed: the zombie
  mints nothing above its old fence (the successor's ``after_ms``), goes LOST and re-leases once the ID is free.
- 18c: an anonymous client (no credentials) tries to delete the claims and fences under load: etcd refuses every
  attempt, nothing is lost or refused.
- 18d: one member partitioned from its peers and from the servers (network namespace, veth down), the servers' first
  endpoint: they fail over to the majority; nothing is lost or refused.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from etcdharness import TEST_CREDENTIALS, EtcdCluster
from faultkit import SOLO, IdgenServer, Partition, held_again, lost_lease, wait_until, zombie_refusal
from loadclient import LoadClient, Report, check, ids_of, timestamps_ms

from idgen import Generator
from idgen.leases.etcd import EtcdClient, EtcdLease

TTL = "10"  # the default: keepalives may fail for 9 s before minting stops, far longer than an election (1-2 s)
ZOMBIE_TTL = "3"  # short, so the frozen server's etcd lease expires soon


@pytest.fixture
def admin(etcd_cluster: EtcdCluster) -> Iterator[EtcdClient]:
    """The test's own etcd client, with idgen's credentials, to watch the namespace."""
    client = EtcdClient(etcd_cluster.endpoints, TEST_CREDENTIALS)
    yield client
    client.close()


def _record(admin: EtcdClient, key: str) -> Any:
    kvs = admin.range(key)
    return json.loads(base64.b64decode(kvs[0]["value"])) if kvs else None


def _options(cluster: EtcdCluster, namespace: str, ttl: str = TTL) -> tuple[str, ...]:
    return ("--etcd", cluster.endpoints, "--namespace", namespace, "--etcd-ttl", ttl)


def _leases(servers: list[IdgenServer]) -> dict[str, dict[str, Any]]:
    return {s.name: s.info()["lease"] for s in servers}


def test_killing_the_etcd_leader_under_load_costs_nothing(
    etcd_cluster: EtcdCluster,
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    fault_results: list[Report],
) -> None:
    servers = [spawn_server(name, *_options(etcd_cluster, "/idgen-faults/leader")) for name in ("a", "b")]
    load = start_load(*(s.wait_ready() for s in servers))
    for server in servers:
        load.wait_ok(server.name, 150)
    before = _leases(servers)
    leader = etcd_cluster.leader()
    killed = time.monotonic()
    leader.kill()
    new_leader = etcd_cluster.wait_for_leader(exclude=leader)
    elected = time.monotonic() - killed
    wait_until(
        lambda: all(
            lease["state"] == "held" and lease["fence_ms"] > before[name]["fence_ms"]
            for name, lease in _leases(servers).items()
        ),
        15,
        "fences extended through the new leader",
    )
    for server in servers:
        load.wait_ok(server.name, 100)
    records = load.stop()

    report = check(records, "18a. etcd leader killed under load (3-member cluster)")
    report.notes.append(f"new leader {new_leader.name} after {elected:.2f} s; no claim lost, no request refused")
    fault_results.append(report)
    report.assert_ok()
    after = _leases(servers)
    assert all(after[n]["lease_id"] == before[n]["lease_id"] for n in after), "a claim was lost"


def _create_namespace(cluster: EtcdCluster, namespace: str) -> None:
    """Bind ``namespace`` to SOLO (one worker ID: every holder reuses it) by leasing and releasing in-process."""
    with Generator(SOLO, EtcdLease(SOLO, cluster.endpoints, namespace, auth=TEST_CREDENTIALS)) as generator:
        generator.next_id()


def _claim_pid(admin: EtcdClient, namespace: str) -> int | None:
    claim = _record(admin, f"{namespace}/leases/0")
    return None if claim is None else claim.get("pid")


def _holder(admin: EtcdClient, namespace: str, pid: int) -> dict[str, Any] | None:
    """The entry of process ``pid`` in worker 0's history, once its claim has written it."""
    history = _record(admin, f"{namespace}/history/0") or []
    return next((h for h in history if h["pid"] == pid), None)


def test_sigstop_zombie_past_its_etcd_lease_mints_nothing_above_its_fence_and_re_leases(
    etcd_cluster: EtcdCluster,
    admin: EtcdClient,
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    fault_results: list[Report],
) -> None:
    namespace = "/idgen-faults/zombie"
    _create_namespace(etcd_cluster, namespace)
    zombie = spawn_server("zombie", *_options(etcd_cluster, namespace, ZOMBIE_TTL))
    load = start_load(zombie.wait_ready())
    load.wait_ok("zombie", 300)
    held = zombie.info()

    frozen = time.monotonic()
    zombie.freeze()  # requests keep arriving; they wait in the socket
    try:
        wait_until(lambda: _claim_pid(admin, namespace) is None, 20, "the frozen server's etcd lease to expire")
        other = spawn_server("other", *_options(etcd_cluster, namespace, ZOMBIE_TTL))
        # The claim is put first, its fence and history in the next transaction: wait for the whole claim.
        successor = wait_until(lambda: _holder(admin, namespace, other.pid), 20, "the other server's claim")
    finally:
        resumed = time.monotonic()
        zombie.thaw()
    fence = successor["after_ms"]  # the zombie's last fence, as its successor read it

    wait_until(lambda: lost_lease(zombie), 15, "the zombie to notice that its lease is lost")
    lost = zombie.event("lease_lost")
    load.add(other.wait_ready())
    load.wait_ok("other", 300)
    assert zombie.get("/readyz").status == 503

    released = time.monotonic()
    load.remove("other")
    assert other.stop() == 0  # releases worker 0
    relet = wait_until(lambda: held_again(zombie, held["lease"]["lease_id"]), 15, "the zombie to re-lease")
    relet_seen = time.monotonic()
    load.wait_ok("zombie", 300, since=released)
    records = load.stop()

    report = check(
        records,
        "18b. etcd: SIGSTOP past the etcd lease TTL while another takes the worker ID; SIGCONT",
        allow=lambda r: zombie_refusal(r, resumed, relet_seen),
        recovery_since=released,
        recovery_servers=["zombie"],
        recovery_from="from the other server's stop to the zombie's re-lease",
        layout=SOLO,
    )
    zombie_after = timestamps_ms(
        ids_of([r for r in records if r.server == "zombie" and resumed <= r.done <= released]), SOLO
    )
    above = sum(t > fence for t in zombie_after)
    report.notes.append(
        f"frozen {resumed - frozen:.1f} s (TTL {ZOMBIE_TTL} s); after SIGCONT the zombie answered"
        f" {len(zombie_after)} IDs, {above} of them above its old fence; it went LOST ({lost['message']!r})"
    )
    fault_results.append(report)
    report.assert_ok()
    assert above == 0, f"the zombie minted above its old fence {fence}: up to {max(zombie_after)}"
    other_ids = ids_of(records, "other")
    assert min(timestamps_ms(other_ids, SOLO)) > fence
    again = ids_of(records, "zombie", since=released)
    assert again and min(again) > max(other_ids), "the re-leased zombie must mint above everything the other minted"
    assert relet["worker_id"] == 0 and relet["lease"]["lease_id"] != held["lease"]["lease_id"]


def _anonymous(endpoint: str, path: str, body: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(endpoint + path, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_an_anonymous_client_deleting_claims_and_fences_under_load_is_refused(
    etcd_cluster: EtcdCluster,
    admin: EtcdClient,
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    fault_results: list[Report],
) -> None:
    namespace = "/idgen-faults/anonymous"
    servers = [spawn_server(name, *_options(etcd_cluster, namespace)) for name in ("a", "b")]
    load = start_load(*(s.wait_ready() for s in servers))
    for server in servers:
        load.wait_ok(server.name, 150)
    before = _leases(servers)
    attempts = refused = 0
    for member in etcd_cluster.members:
        for kind in ("leases", "fences", "history"):
            for body in (
                {"key": _b64(f"{namespace}/{kind}/"), "range_end": _b64(f"{namespace}/{kind}0")},  # all of them
                *({"key": _b64(f"{namespace}/{kind}/{lease['worker_id']}")} for lease in before.values()),
            ):
                for path in ("/v3/kv/deleterange", "/v3/kv/put"):
                    attempts += 1
                    status, answer = _anonymous(member.url, path, {**body, "value": _b64("{}")})
                    refused += status != 200 and "user name is empty" in answer
        for lease in before.values():  # and the claims' etcd leases themselves
            attempts += 1
            status, answer = _anonymous(member.url, "/v3/lease/revoke", {"ID": lease["etcd_lease"]})
            refused += status != 200
    for server in servers:
        load.wait_ok(server.name, 150)
    records = load.stop()

    report = check(records, "18c. etcd: an anonymous client deletes claims, fences and etcd leases under load")
    report.notes.append(f"{refused} of {attempts} anonymous deletes, overwrites and revokes refused by etcd")
    fault_results.append(report)
    report.assert_ok()
    assert refused == attempts
    after = _leases(servers)
    assert all(after[n]["lease_id"] == before[n]["lease_id"] for n in after)
    for lease in after.values():
        assert admin.range(f"{namespace}/leases/{lease['worker_id']}")
        assert admin.range(f"{namespace}/fences/{lease['worker_id']}")


CUT_S = 9.0  # past the 7.5 s a fence can be ahead and three etcd lease TTLs: a stale member would have shown


@pytest.mark.etcd
def test_an_etcd_member_partitioned_from_the_others_and_the_servers_costs_nothing(
    partition: Partition,
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    fault_results: list[Report],
) -> None:
    """Member m3 runs in a network namespace; m1 and m2 listen on loopback and on the host's end of the veth. Cutting
    the veth isolates m3 from its peers and from the servers (whose first endpoint it is): they fail over to m1/m2."""
    host_side = ("127.0.0.1", partition.zk_host)
    cluster = EtcdCluster(
        3, placement={0: (host_side, ""), 1: (host_side, ""), 2: ((partition.zk_peer,), partition.netns)}
    )
    try:
        cluster.start()
        isolated = cluster.members[2]
        endpoints = ",".join(m.url for m in (isolated, *cluster.members[:2]))  # the isolated member first
        options = ("--etcd", endpoints, "--namespace", "/idgen-faults/partition", "--etcd-ttl", TTL)
        servers = [spawn_server(name, *options) for name in ("a", "b")]
        load = start_load(*(s.wait_ready() for s in servers))
        for server in servers:
            load.wait_ok(server.name, 150)
        before = _leases(servers)
        cut = time.monotonic()
        partition.cut()
        try:
            wait_until(lambda: not isolated.healthy(timeout_s=0.5), 10, "the isolated member to be unreachable")
            wait_until(
                lambda: all(
                    lease["state"] == "held" and lease["fence_ms"] > before[name]["fence_ms"]
                    for name, lease in _leases(servers).items()
                ),
                15,
                "fences extended through the majority",
            )
            time.sleep(max(0.0, cut + CUT_S - time.monotonic()))  # the rest of the partition
        finally:
            partition.restore()
        restored = time.monotonic()
        wait_until(lambda: isolated.healthy(), 30, "the isolated member to rejoin")
        for server in servers:
            load.wait_ok(server.name, 100, since=restored)
        records = load.stop()
        after = _leases(servers)
    finally:
        cluster.stop()

    report = check(records, "18d. etcd: one member of 3 partitioned (netns, veth down), the servers' first endpoint")
    report.notes.append(
        f"link down {restored - cut:.1f} s; both servers kept their claims and fences through m1/m2, nothing refused"
    )
    fault_results.append(report)
    report.assert_ok()
    assert all(after[n]["lease_id"] == before[n]["lease_id"] for n in after), "a claim was lost"
