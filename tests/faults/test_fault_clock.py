"""Clock faults under load, with the server's wall clock moved by libfaketime through a timestamp file the test
rewrites (only the idgen server runs under it; its monotonic clock stays real). Local leases.

Scenario 6, a live jump back (DESIGN.md section 3, "clock steps back while running"): up to ``--max-lead`` (15 s) the
server rides it, minting in ticks above the last one used, inside its reserved fence: no error, ready throughout.
An hour back, with a second worker ID free, it switches to that worker ID, whose fence is below the clock: refusals
only while the switch runs. Scenario 7, a restart with the clock behind the fence the killed server left ("restart
with the clock behind the old fence"): the restart starts right above that fence, at once, as fast as a clean start,
and never mints at or below it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from faultkit import Faketime, IdgenServer
from loadclient import LoadClient, Record, Report, check, ids_of, timestamps_ms

from idgen import decode

SERVER = "clock"


def _local(state: Path, workers: str = "0-0") -> tuple[str, ...]:
    return ("--state-dir", str(state), "--worker-ids", workers)


def _clock_behind(record: Record, since: float) -> bool:
    return record.status == 503 and record.code == "clock_behind" and record.done >= since


def _start(
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    faketime: Faketime,
    tmp_path: Path,
    workers: str = "0-0",
) -> tuple[IdgenServer, LoadClient]:
    server = spawn_server(SERVER, *_local(tmp_path / "state", workers), env=faketime.env())
    load = start_load(server.wait_ready())
    load.wait_ok(SERVER, 300)
    return server, load


def _lead_note(server: IdgenServer) -> str:
    info = server.info()
    return (
        f"largest lead {info['clock_lead_max_ms']:.0f} ms (bound {info['max_lead_ms']} ms);"
        f" {info['clock_rides']} ride(s), {info['worker_id_switches']} switch(es) of worker ID"
    )


# -- 6: live jumps back ------------------------------------------------------------------------------------------


def test_a_jump_back_of_4_ms_is_ridden_through(
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    faketime: Faketime,
    tmp_path: Path,
    fault_results: list[Report],
) -> None:
    server, load = _start(spawn_server, start_load, faketime, tmp_path)
    rollbacks = server.info()["clock_rollbacks"]
    for _ in range(20):  # mint, then step the clock 4 ms back and mint at once: the server sees the rollback
        faketime.set(0)
        assert load.request(server.target).ok
        faketime.set(-0.004)
        assert load.request(server.target).ok
        if server.info()["clock_rollbacks"] > rollbacks:
            break
    seen = server.info()["clock_rollbacks"] - rollbacks
    load.wait_ok(SERVER, 300)
    records = load.stop()

    report = check(records, "6a. live clock jump back 4 ms")
    report.notes.append(f"the server counted {seen} clock rollback(s); {_lead_note(server)}")
    fault_results.append(report)
    report.assert_ok()
    assert seen >= 1, "the jump back never reached the generator: the scenario tested nothing"


def test_a_jump_back_of_2_s_is_ridden_through_without_an_error(
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    faketime: Faketime,
    tmp_path: Path,
    fault_results: list[Report],
) -> None:
    server, load = _start(spawn_server, start_load, faketime, tmp_path)
    jumped = time.monotonic()
    faketime.set(-2)
    load.wait_ok(SERVER, 300, since=jumped)
    assert server.ready()  # riding is ready
    riding = server.info()
    load.wait_ok(SERVER, 300, since=jumped + 2.5, timeout=15)  # and on, past the moment the clock catches up
    records = load.stop()

    report = check(records, "6b. live clock jump back 2 s")
    report.notes.append(_lead_note(server))
    fault_results.append(report)
    report.assert_ok()  # no error at all: no 503, nothing out of order, no duplicate
    assert riding["clock_rides"] == 1 and riding["worker_id"] == 0 and riding["worker_id_switches"] == 0
    assert 1_500 <= riding["clock_lead_max_ms"] <= 2_000
    assert server.info()["clock_lead_ms"] == 0  # the clock has caught up: no lead left
    assert len([e for e in server.events if e.get("event") == "clock_ride"]) == 1  # logged once, not once per request


def test_a_jump_back_of_1_h_switches_to_the_free_worker_id_with_errors_only_during_the_switch(
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    faketime: Faketime,
    tmp_path: Path,
    fault_results: list[Report],
) -> None:
    server, load = _start(spawn_server, start_load, faketime, tmp_path, workers="0-1")
    assert server.info()["worker_id"] == 0  # worker 1 stays free, never used: its fence is below any clock
    jumped = time.monotonic()
    faketime.set(-3600)
    load.wait_ok(SERVER, 300, since=jumped)
    info = server.info()
    load.wait_ok(SERVER, 300)
    records = load.stop()

    report = check(
        records,
        "6c. live clock jump back 1 h, a second worker ID free",
        allow=lambda r: _clock_behind(r, jumped),
        recovery_since=jumped,
        recovery_from="after the jump",
    )
    refused = [r for r in records if not r.ok]
    window = max(r.done for r in refused) - min(r.done for r in refused) if refused else 0.0
    report.notes.append(f"refused for {window:.3f} s ({len(refused)} requests) while switching; {_lead_note(server)}")
    fault_results.append(report)
    report.assert_ok()
    assert (info["worker_id"], info["worker_id_switches"]) == (1, 1)
    assert window < 1.0 and all(r.retry_after == "1" for r in refused)
    after = [i for r in records if r.ok and r.sent > jumped + window + 0.1 for i in r.ids]
    assert after and {decode(i)["worker"] for i in after} == {1}
    assert len([e for e in server.events if e.get("event") == "worker_id_switched"]) == 1


# -- 7: restart with the clock behind the old fence -------------------------------------------------------------


def _crash_leaving_a_fence(
    spawn_server: Callable[..., IdgenServer], start_load: Callable[..., LoadClient], state: Path
) -> tuple[LoadClient, float, int, float]:
    """A server (real clock) under load, killed with SIGKILL: the load, the kill's time, the fence it left and how
    long its own clean start took to readiness."""
    spawned = time.monotonic()
    first = spawn_server("first", *_local(state))
    load = start_load(first.wait_ready())
    clean_start_s = time.monotonic() - spawned
    load.wait_ok("first", 300)
    killed = time.monotonic()
    first.kill()
    load.remove("first")
    fence_ms = json.loads((state / "worker-00000.json").read_text())["fence_ms"]
    return load, killed, fence_ms, clean_start_s


def _restart_behind(
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    faketime: Faketime,
    tmp_path: Path,
    fault_results: list[Report],
    behind_s: float,
    scenario: str,
    *options: str,
) -> None:
    load, killed, fence_ms, clean_start_s = _crash_leaving_a_fence(spawn_server, start_load, tmp_path / "state")
    faketime.set((fence_ms - behind_s * 1000) / 1000 - time.time())
    restarted = time.monotonic()
    second = spawn_server(SERVER, *_local(tmp_path / "state"), *options, env=faketime.env())
    load.add(second.wait_ready())
    restart_s = time.monotonic() - restarted
    load.wait_ok(SERVER, 300)
    records = load.stop()

    report = check(
        records,
        scenario,
        allow=lambda r: r.server == "first" and r.status == 0 and r.done >= killed,  # in flight at the kill
        recovery_since=restarted,
        recovery_from="from the restart to its first ID",
    )
    report.notes.append(
        f"ready {restart_s:.2f} s after the restart; the clean start took {clean_start_s:.2f} s; {_lead_note(second)}"
    )
    fault_results.append(report)
    report.assert_ok()
    before, after = ids_of(records, "first"), ids_of(records, SERVER)
    assert max(before) < min(after)
    assert min(timestamps_ms(after)) == fence_ms + 1  # right above the old fence, not after waiting for it
    assert restart_s <= clean_start_s + 1.0, "the restart waited for its clock"
    assert second.info()["clock_rides"] == 1


@pytest.mark.parametrize(
    ("behind_s", "options", "scenario"),
    [
        (3, (), "7a. restart with the clock 3 s behind the old fence"),
        (30, ("--max-lead", "60"), "7b. restart with the clock 30 s behind the old fence, --max-lead 60"),
    ],
    ids=["7a", "7b"],
)
def test_a_restart_with_the_clock_behind_the_old_fence_starts_right_above_it_as_fast_as_a_clean_start(
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    faketime: Faketime,
    tmp_path: Path,
    fault_results: list[Report],
    behind_s: float,
    options: tuple[str, ...],
    scenario: str,
) -> None:
    _restart_behind(spawn_server, start_load, faketime, tmp_path, fault_results, behind_s, scenario, *options)
