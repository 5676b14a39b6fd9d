"""Servers that die or freeze under load, in a namespace with a single worker ID, so the replacement must reuse it.

Scenario 1: ``kill -9``; the replacement takes the worker ID once the dead session expires and mints only above the
old fence. Scenario 2: a server frozen (SIGSTOP) past its session timeout while another takes its worker ID, then
resumed (SIGCONT): the zombie mints nothing above its old fence, notices LOST, and re-leases once the ID is free.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from faultkit import (
    SOLO,
    IdgenServer,
    claim_owner,
    create_namespace,
    held_again,
    lost_lease,
    read_fence,
    read_holders,
    wait_until,
    zk_client,
    zombie_refusal,
)
from loadclient import LoadClient, Record, Report, check, ids_of, timestamps_ms

from idgen import DEFAULT_LAYOUT, Layout

SESSION_TIMEOUT = "2"


def test_kill_9_under_load_the_replacement_mints_only_above_the_old_fence(
    zk_hosts: str,
    zk_namespace: str,
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    fault_results: list[Report],
) -> None:
    create_namespace(zk_hosts, zk_namespace, SOLO)
    options = ("--zk", zk_hosts, "--namespace", zk_namespace, "--zk-session-timeout", SESSION_TIMEOUT)
    spawned = time.monotonic()
    old = spawn_server("old", *options)
    load = start_load(old.wait_ready())
    clean_start_s = time.monotonic() - spawned
    load.wait_ok("old", 300)
    info = old.info()
    assert (info["layout"]["name"], info["worker_id"]) == ("solo", 0)

    killed = time.monotonic()
    old.kill()
    load.remove("old")
    with zk_client(zk_hosts) as zk:
        wait_until(lambda: claim_owner(zk, zk_namespace, 0) is None, 20, "the dead server's session to expire")
        fence = read_fence(zk, zk_namespace, 0)  # what the dead holder left: no successor has read it yet
        restarted = time.monotonic()
        new = spawn_server("new", *options)
        load.add(new.wait_ready())
        restart_s = time.monotonic() - restarted
        load.wait_ok("new", 300)
        [successor] = [h for h in read_holders(zk, zk_namespace, 0) if h["pid"] == new.pid]
    records = load.stop()

    report = check(
        records,
        "1. kill -9 under load; replacement reuses the worker ID",
        allow=lambda r: r.server == "old" and r.status == 0 and r.done >= killed,  # requests in flight at the kill
        recovery_since=killed,
        recovery_servers=["new"],
        recovery_from="from the kill to the replacement's first ID",
        layout=SOLO,
    )
    fault_results.append(report)
    report.assert_ok()
    before, after = ids_of(records, "old"), ids_of(records, "new")
    assert new.info()["worker_id"] == 0
    assert fence["lease_id"] == info["lease"]["lease_id"] and fence["fence_ms"] >= info["fence_ms"]
    assert successor["after_ms"] == fence["fence_ms"]
    assert min(timestamps_ms(after, SOLO)) > fence["fence_ms"], "the replacement minted at or below the old fence"
    assert max(before) < min(after)
    ahead_ms = fence["fence_ms"] - timestamps_ms(before[-1:], SOLO)[0]
    report.notes.append(
        f"the old fence was {ahead_ms} ms above the last ID served; the replacement was ready {restart_s:.2f} s after"
        f" it started (a clean start: {clean_start_s:.2f} s), riding up to"
        f" {new.info()['clock_lead_max_ms']:.0f} ms ahead of its clock instead of waiting for it to pass the fence"
    )
    assert restart_s <= clean_start_s + 1.0, "the replacement waited for its clock to pass the old fence"


def test_sigstop_zombie_mints_nothing_above_its_fence_notices_lost_and_re_leases(
    zk_hosts: str,
    zk_namespace: str,
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    fault_results: list[Report],
) -> None:
    create_namespace(zk_hosts, zk_namespace, SOLO)
    options = ("--zk", zk_hosts, "--namespace", zk_namespace, "--zk-session-timeout", SESSION_TIMEOUT)
    zombie = spawn_server("zombie", *options)
    load = start_load(zombie.wait_ready())
    load.wait_ok("zombie", 300)
    held = zombie.info()

    with zk_client(zk_hosts) as zk:
        frozen = time.monotonic()
        zombie.freeze()  # requests keep arriving; they wait in the socket
        try:
            frozen_fence = read_fence(zk, zk_namespace, 0)
            wait_until(lambda: claim_owner(zk, zk_namespace, 0) is None, 20, "the frozen server's session to expire")
            other = spawn_server("other", *options)
            wait_until(lambda: claim_owner(zk, zk_namespace, 0) == other.pid, 20, "the other server's claim")
        finally:
            resumed = time.monotonic()
            zombie.thaw()
        # Frozen past its session: the claim went away and the other server's came while it was stopped. (ZooKeeper
        # counts the timeout from the last ping before the freeze, so the freeze itself may be slightly shorter.)
        # The zombie's fence: what its successor read. An extension in flight at SIGSTOP may have landed after the
        # read above (the zombie then learns of it at SIGCONT), so the successor's after_ms is the exact value.
        # The claim node comes first; the history record follows in the claim's transaction.
        successor = wait_until(
            lambda: next((h for h in read_holders(zk, zk_namespace, 0) if h["pid"] == other.pid), None),
            10,
            "the other server's history record",
        )
        fence = successor["after_ms"]

        lost = wait_until(lambda: lost_lease(zombie), 15, "the zombie to notice that its lease is lost")
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
        "2. SIGSTOP past the session timeout while another takes the worker ID; SIGCONT",
        allow=lambda r: zombie_refusal(r, resumed, relet_seen),
        recovery_since=released,
        recovery_servers=["zombie"],
        recovery_from="from the other server's stop to the zombie's re-lease",
        layout=SOLO,
    )
    zombie_after = timestamps_ms(ids_of(_between(records, "zombie", resumed, released)), SOLO)
    above = sum(t > fence for t in zombie_after)
    report.notes.append(
        f"frozen {resumed - frozen:.1f} s; after SIGCONT the zombie answered {len(zombie_after)} IDs, {above} of them"
        f" above its old fence; it went LOST ({lost['reason']!r})"
    )
    fault_results.append(report)
    report.assert_ok()
    assert frozen_fence["lease_id"] == held["lease"]["lease_id"]
    assert held["fence_ms"] <= frozen_fence["fence_ms"] <= fence
    assert above == 0, f"the zombie minted above its old fence {fence}: up to {max(zombie_after)}"
    other_ids = ids_of(records, "other")
    assert min(timestamps_ms(other_ids, SOLO)) > fence
    again = ids_of(records, "zombie", since=released)
    assert again and min(again) > max(other_ids), "the re-leased zombie must mint above everything the other minted"
    assert relet["worker_id"] == 0 and relet["lease"]["lease_id"] != held["lease"]["lease_id"]


def _between(records: list[Record], server: str, start: float, end: float) -> list[Record]:
    """Answers of ``server`` that came between ``start`` and ``end``."""
    return [r for r in records if r.server == server and start <= r.done <= end]


# -- 16: crash loops on one worker ID ------------------------------------------------------------------------------

# Before the fix the fence each crash left grew by about a window: from the 4th start on (local lease) and the 5th
# (ZooKeeper), every request was refused (docs/RELIABILITY.md, 16a and 16b).
CRASH_LOOP_STARTS = 5


def _crash_loop(
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    options: tuple[str, ...],
    fence_of: Callable[[], int],
    claim_gone: Callable[[], bool],
    starts: int,
) -> tuple[list[Record], list[int], list[float], list[float]]:
    """``starts`` servers on one worker ID, each loaded from the moment it listens and SIGKILLed about 1 s later; each
    starts once its predecessor's claim is gone. Returns the records, the 503s of each start, the lead (s) of the
    fence each one left over the clock at its death, and how long each took from spawn to listening."""
    load = start_load()
    refused, leads_s, listening_s = [], [], []
    for number in range(starts):
        name = f"start{number + 1}"
        wait_until(claim_gone, 20, "the previous holder's claim to go")
        spawned = time.monotonic()
        server = spawn_server(name, *options)
        target = server.listening()
        listening_s.append(time.monotonic() - spawned)
        load.add(target)
        load.wait_for(lambda r, name=name: r.server == name and r.status in (200, 503), 250)  # about 1 s of load
        server.kill()
        load.remove(name)
        leads_s.append((fence_of() - time.time_ns() // 1_000_000) / 1000)
        refused.append(sum(r.server == name and r.status == 503 for r in load.records))
    return load.stop(), refused, leads_s, listening_s


def _crash_loop_report(
    records: list[Record],
    scenario: str,
    refused: list[int],
    leads_s: list[float],
    listening_s: list[float],
    layout: Layout = DEFAULT_LAYOUT,
) -> Report:
    report = check(records, scenario, allow=lambda r: r.status == 0, layout=layout)  # in flight at a kill
    report.notes.append(
        f"503s per start: {refused}; lead of the fence each left over the clock at its death:"
        f" {', '.join(f'{s:.1f}' for s in leads_s)} s; listening after {min(listening_s):.2f}"
        f" to {max(listening_s):.2f} s"
    )
    return report


def test_a_crash_loop_on_one_local_worker_id_serves_every_start_at_once(
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    fault_results: list[Report],
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    options = ("--state-dir", str(state), "--worker-ids", "0-0")

    def fence() -> int:
        return json.loads((state / "worker-00000.json").read_text())["fence_ms"]

    records, refused, leads_s, listening_s = _crash_loop(
        spawn_server, start_load, options, fence, lambda: True, CRASH_LOOP_STARTS
    )
    report = _crash_loop_report(
        records, "16a. crash loop: kill -9 about 1 s after each start, local lease", refused, leads_s, listening_s
    )
    fault_results.append(report)
    report.assert_ok()
    assert refused == [0] * CRASH_LOOP_STARTS, "a successor was refused: the fences ratcheted ahead of the clock"
    assert max(leads_s) <= 7.5, "a holder reserved further ahead than a clean one"


def test_a_crash_loop_on_one_zookeeper_worker_id_serves_every_start_at_once(
    zk_hosts: str,
    zk_namespace: str,
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    fault_results: list[Report],
) -> None:
    create_namespace(zk_hosts, zk_namespace, SOLO)
    options = ("--zk", zk_hosts, "--namespace", zk_namespace, "--zk-session-timeout", SESSION_TIMEOUT)
    with zk_client(zk_hosts) as zk:
        records, refused, leads_s, listening_s = _crash_loop(
            spawn_server,
            start_load,
            options,
            lambda: read_fence(zk, zk_namespace, 0)["fence_ms"],
            lambda: claim_owner(zk, zk_namespace, 0) is None,
            CRASH_LOOP_STARTS,
        )
    report = _crash_loop_report(
        records, "16b. crash loop: kill -9 about 1 s after each start, ZooKeeper", refused, leads_s, listening_s, SOLO
    )
    fault_results.append(report)
    report.assert_ok()
    assert refused == [0] * CRASH_LOOP_STARTS, "a successor was refused: the fences ratcheted ahead of the clock"
    assert max(leads_s) <= 7.5, "a holder reserved further ahead than a clean one"
