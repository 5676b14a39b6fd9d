"""Scenario 8: capacity. Twenty servers started at once in one namespace all become ready with distinct worker IDs;
and with every worker ID of a namespace held, one more server exits at once with a one-line error (exit code 1).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from faultkit import TINY, IdgenServer, create_namespace
from loadclient import LoadClient, Report, check

from idgen import DEFAULT_LAYOUT, Layout


def _workers_of(ids: list[int], layout: Layout) -> set[int]:
    return {layout.split(i)["worker"] for i in ids}


def test_twenty_servers_started_at_once_are_ready_with_distinct_worker_ids(
    zk_hosts: str,
    zk_namespace: str,
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    fault_results: list[Report],
) -> None:
    started = time.monotonic()
    servers = [spawn_server(f"s{n:02d}", "--zk", zk_hosts, "--namespace", zk_namespace) for n in range(20)]
    targets = [server.wait_ready(120) for server in servers]
    all_ready = time.monotonic() - started
    workers = {server.name: server.info()["worker_id"] for server in servers}
    load = start_load(*targets)
    loaded = time.monotonic()
    for server in servers:
        load.wait_ok(server.name, 20, since=loaded)
    records = load.stop()

    report = check(records, "8a. 20 servers started at once, one namespace")
    report.notes.append(f"all 20 ready {all_ready:.1f} s after they were started together (2 shared cores)")
    fault_results.append(report)
    report.assert_ok()
    assert len(set(workers.values())) == 20, workers
    for server in servers:
        minted = [i for r in records if r.server == server.name for i in r.ids]
        assert _workers_of(minted, DEFAULT_LAYOUT) == {workers[server.name]}, server.name


def test_with_every_worker_id_held_one_more_server_exits_with_a_one_line_error(
    zk_hosts: str,
    zk_namespace: str,
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    fault_results: list[Report],
) -> None:
    create_namespace(zk_hosts, zk_namespace, TINY)  # 4 worker IDs
    options = ("--zk", zk_hosts, "--namespace", zk_namespace)
    holders = [spawn_server(f"h{n}", *options) for n in range(4)]
    load = start_load(*(holder.wait_ready() for holder in holders))
    assert {holder.info()["worker_id"] for holder in holders} == {0, 1, 2, 3}
    refused = time.monotonic()
    fifth = spawn_server("fifth", *options)
    code = fifth.wait_exit(30)
    exited = time.monotonic() - refused
    for holder in holders:  # the holders go on serving, untouched
        load.wait_ok(holder.name, 50)
    records = load.stop()

    report = check(records, "8b. every worker ID held (4 of 4), a 5th server starts", layout=TINY)
    report.notes.append(f"the 5th server exited with code {code} after {exited:.1f} s")
    fault_results.append(report)
    report.assert_ok()
    assert code == 1
    assert all("not_json" not in e for e in fifth.events), fifth.log  # JSON lines only: no traceback
    [error] = [e for e in fifth.events if e.get("level") == "ERROR"]
    assert error["event"] == "start_failed"
    assert "all 4 worker IDs" in error["message"] and "held" in error["message"], error["message"]
    assert zk_namespace in error["message"]
    assert "listening" not in {e.get("event") for e in fifth.events}
