"""Scenario 5: a network partition between one server and ZooKeeper.

The server runs in its own network namespace. ZooKeeper listens only on the host end of a veth pair (link-local
addresses); taking that end down cuts the server off from ZooKeeper, while the load client still reaches the server
over a second veth pair. Expected (DESIGN.md section 3): SUSPENDED, minting up to the fence it holds, then 503
fence_reached; the session expires meanwhile, so after the link returns the lease is LOST, acquired afresh, and the
server serves again without help.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from faultkit import IdgenServer, Partition, wait_until
from loadclient import LoadClient, Record, Report, check
from zkharness import ZkServer, four_letter_word

pytestmark = pytest.mark.zookeeper  # starts its own ZkServer on the veth

CUT_S = 9.0  # past the 7.5 s the fence can be ahead, and far past the 2 s session timeout


def test_a_server_partitioned_from_zookeeper_refuses_past_its_fence_and_recovers(
    partition: Partition,
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    fault_results: list[Report],
) -> None:
    # ZkServer binds 127.0.0.1 unless told otherwise; its own readiness probe asks 127.0.0.1, so probe here instead.
    zookeeper = ZkServer(name="zk-partition", extra_config={"clientPortAddress": partition.zk_host})
    server: IdgenServer | None = None
    try:
        zookeeper.start(wait=False)
        wait_until(
            lambda: "Mode:" in (four_letter_word(zookeeper.client_port, host=partition.zk_host) or ""),
            30,
            "ZooKeeper on the host end of the veth",
        )
        hosts = f"{partition.zk_host}:{zookeeper.client_port}"
        server = spawn_server(
            "inside",
            *("--zk", hosts, "--namespace", "/partition", "--zk-session-timeout", "2"),
            host=partition.http_address,
            netns=partition.netns,
        )
        load = start_load(server.wait_ready())
        load.wait_ok("inside", 300)
        before = server.info()
        assert before["pid"] == server.pid  # `ip netns exec` execs: signals reach the server itself

        cut_wall, cut = time.time(), time.monotonic()
        partition.cut()
        try:
            lead_s = server.info()["fence_ms"] / 1000 - cut_wall
            load.wait_for(lambda r: r.status == 503, 1, cut, CUT_S)
            time.sleep(max(0.0, cut + CUT_S - time.monotonic()))  # the rest of the partition
            assert not server.ready()
        finally:
            partition.restore()
        restored = time.monotonic()
        load.wait_ok("inside", 300, since=restored, timeout=30)
        after = server.info()
        records = load.stop()
    finally:
        if server is not None:
            server.close()  # while ZooKeeper is up, so that it releases its lease at once
        zookeeper.stop()

    report = check(
        records,
        "5. partition between one server and ZooKeeper (netns, veth down)",
        allow=lambda r: _refused_while_cut_off(r, cut, restored),
        recovery_since=restored,
        recovery_from="after the link is back",
    )
    first_error = min(r.done for r in records if not r.ok) - cut
    report.notes.append(
        f"link down {restored - cut:.1f} s; first 503 {first_error:.2f} s after the cut (the fence was {lead_s:.2f} s"
        f" ahead); lease lost and re-acquired as worker {after['worker_id']} (was {before['worker_id']})"
    )
    fault_results.append(report)
    report.assert_ok()
    assert first_error >= lead_s - 0.1, "a 503 came while the fence still covered the clock"
    assert after["lease"]["lease_id"] != before["lease"]["lease_id"], "the session outlived the partition?"
    assert server.event("lease_lost")["level"] == "ERROR"


def _refused_while_cut_off(record: Record, cut: float, restored: float) -> bool:
    """503s once the fence has passed (fence_reached), and after the link returns until the new lease (no_lease)."""
    return record.status == 503 and record.code in ("fence_reached", "no_lease") and cut <= record.done
