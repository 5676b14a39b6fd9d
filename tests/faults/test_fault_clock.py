"""Clock faults under load, with the server's wall clock moved by libfaketime through a timestamp file the test
rewrites (only the idgen server runs under it; its monotonic clock stays real). Local leases, one worker ID.

Scenario 6, a live jump back (DESIGN.md section 3, "clock steps back while running"): up to the 5 ms tolerance it is
waited out, no error; further, 503 clock_behind with Retry-After at once, until the clock passes the last tick used.
Scenario 7, a restart with the clock behind the fence the killed server left ("restart with the clock behind the
old fence"): up to 10 s behind the server waits before it serves; further behind it serves 503 clock_behind with the
reason, and never mints at or below the old fence.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from faultkit import Faketime, IdgenServer, wait_until
from loadclient import LoadClient, Record, Report, check, ids_of, timestamps_ms

SERVER = "clock"


def _local(state: Path) -> tuple[str, ...]:
    return ("--state-dir", str(state), "--worker-ids", "0-0")


def _clock_behind(record: Record, since: float) -> bool:
    return record.status == 503 and record.code == "clock_behind" and record.done >= since


def _start(
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    faketime: Faketime,
    tmp_path: Path,
) -> tuple[IdgenServer, LoadClient]:
    server = spawn_server(SERVER, *_local(tmp_path / "state"), env=faketime.env())
    load = start_load(server.wait_ready())
    load.wait_ok(SERVER, 300)
    return server, load


# -- 6: live jumps back ------------------------------------------------------------------------------------------


def test_a_jump_back_within_the_tolerance_is_waited_out(
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

    report = check(records, "6a. live clock jump back 4 ms (< 5 ms tolerance)")
    report.notes.append(f"the server counted {seen} clock rollback(s), each waited out")
    fault_results.append(report)
    report.assert_ok()
    assert seen >= 1, "the jump back never reached the generator: the scenario tested nothing"


def test_a_jump_back_of_2_s_refuses_with_clock_behind_until_the_clock_catches_up(
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    faketime: Faketime,
    tmp_path: Path,
    fault_results: list[Report],
) -> None:
    server, load = _start(spawn_server, start_load, faketime, tmp_path)
    jumped = time.monotonic()
    faketime.set(-2)
    load.wait_for(lambda r: r.status == 503, 1, jumped, 5)
    assert not server.ready()
    load.wait_ok(SERVER, 300, since=jumped + 1, timeout=15)
    records = load.stop()

    report = check(
        records,
        "6b. live clock jump back 2 s",
        allow=lambda r: _clock_behind(r, jumped),
        recovery_since=jumped,
        recovery_from="after the jump",
    )
    refused = [r for r in records if not r.ok]
    report.notes.append(f"refused for {max(r.done for r in refused) - min(r.done for r in refused):.2f} s")
    fault_results.append(report)
    report.assert_ok()
    assert {r.retry_after for r in refused} <= {"1", "2"}
    # The clock passes the last tick used 2 s after the jump (less the few ms since that tick), not before.
    assert report.recovery_s is not None and 1.8 <= report.recovery_s <= 4.0


def test_a_jump_back_of_1_h_refuses_then_recovers_when_the_clock_is_set_right(
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    faketime: Faketime,
    tmp_path: Path,
    fault_results: list[Report],
) -> None:
    server, load = _start(spawn_server, start_load, faketime, tmp_path)
    jumped = time.monotonic()
    faketime.set(-3600)
    load.wait_for(lambda r: r.status == 503, 100, jumped, 10)  # about half a second of refusals
    refusal = server.get("/id")
    assert not server.ready()
    fixed = time.monotonic()
    faketime.set(0)  # NTP steps the clock back to the right time
    load.wait_ok(SERVER, 300, since=fixed, timeout=15)
    records = load.stop()

    report = check(
        records,
        "6c. live clock jump back 1 h, then set right",
        allow=lambda r: _clock_behind(r, jumped) and r.sent <= fixed,
        recovery_since=fixed,
        recovery_from="after the clock is set right",
    )
    fault_results.append(report)
    report.assert_ok()
    assert refusal.status == 503 and refusal.json()["error"]["code"] == "clock_behind"
    assert "behind" in refusal.json()["error"]["message"]
    assert all(3500 <= int(r.retry_after or 0) <= 3601 for r in records if not r.ok)
    assert report.recovery_s is not None and report.recovery_s < 2


# -- 7: restart with the clock behind the old fence -------------------------------------------------------------


def _crash_leaving_a_fence(
    spawn_server: Callable[..., IdgenServer], start_load: Callable[..., LoadClient], state: Path
) -> tuple[LoadClient, float, int]:
    """A server (real clock) under load, killed with SIGKILL: the load, the kill's time and the fence it left."""
    first = spawn_server("first", *_local(state))
    load = start_load(first.wait_ready())
    load.wait_ok("first", 300)
    killed = time.monotonic()
    first.kill()
    load.remove("first")
    fence_ms = json.loads((state / "worker-00000.json").read_text())["fence_ms"]
    return load, killed, fence_ms


def test_a_restart_with_the_clock_3_s_behind_the_old_fence_waits_then_mints_above_it(
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    faketime: Faketime,
    tmp_path: Path,
    fault_results: list[Report],
) -> None:
    load, killed, fence_ms = _crash_leaving_a_fence(spawn_server, start_load, tmp_path / "state")
    faketime.set((fence_ms - 3_000) / 1000 - time.time())
    restarted = time.monotonic()
    second = spawn_server(SERVER, *_local(tmp_path / "state"), env=faketime.env())
    load.add(second.wait_ready())
    load.wait_ok(SERVER, 300)
    records = load.stop()

    report = check(
        records,
        "7a. restart with the clock 3 s behind the old fence (within the 10 s wait)",
        allow=lambda r: r.server == "first" and r.status == 0 and r.done >= killed,  # in flight at the kill
        recovery_since=restarted,
        recovery_from="from the restart to its first ID",
    )
    waited = second.event("clock_behind_fence")["behind_ms"]
    report.notes.append(f"the restarted server waited {waited} ms for its clock to pass the old fence")
    fault_results.append(report)
    report.assert_ok()
    before, after = ids_of(records, "first"), ids_of(records, SERVER)
    assert max(before) < min(after)
    assert min(timestamps_ms(after)) > fence_ms
    assert 0 < waited <= 3_000  # 3 s less the start-up time
    assert report.recovery_s is not None and report.recovery_s >= waited / 1000


def test_a_restart_with_the_clock_30_s_behind_the_old_fence_refuses_with_the_reason_and_never_reuses_time(
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    faketime: Faketime,
    tmp_path: Path,
    fault_results: list[Report],
) -> None:
    load, killed, fence_ms = _crash_leaving_a_fence(spawn_server, start_load, tmp_path / "state")
    faketime.set((fence_ms - 30_000) / 1000 - time.time())
    second = spawn_server(SERVER, *_local(tmp_path / "state"), env=faketime.env())
    restarted = time.monotonic()
    load.add(second.listening())
    load.wait_for(lambda r: r.server == SERVER and r.status == 503, 100, restarted, 15)
    not_ready = second.get("/readyz")
    refusal = second.get("/id")
    fixed = time.monotonic()
    faketime.set(0)  # the clock is set right; the old fence is still a few seconds ahead of it
    load.wait_ok(SERVER, 300, since=fixed, timeout=20)
    wait_until(second.ready, 15, "readiness after the clock is set right")
    ready_after = time.monotonic() - fixed
    records = load.stop()

    report = check(
        records,
        "7b. restart with the clock 30 s behind the old fence (beyond the 10 s wait)",
        allow=lambda r: (r.server == "first" and r.status == 0 and r.done >= killed) or _clock_behind(r, restarted),
        recovery_since=fixed,
        recovery_from="after the clock is set right",
    )
    report.notes.append(f"/readyz was 200 again {ready_after:.2f} s after the clock was set right")
    fault_results.append(report)
    report.assert_ok()
    assert not_ready.status == 503 and "behind the fence" in not_ready.json()["error"]["message"]
    assert refusal.status == 503 and refusal.json()["error"]["code"] == "clock_behind"
    assert 25 <= int(refusal.headers["Retry-After"]) <= 31
    before, after = ids_of(records, "first"), ids_of(records, SERVER)
    assert max(before) < min(after)
    assert min(timestamps_ms(after)) > fence_ms
    assert all(r.sent <= fixed + 10 for r in records if not r.ok), "still refusing long after the clock was right"
