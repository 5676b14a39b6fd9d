"""The local lease's state directory tampered with under load (DESIGN.md: what the local lease assumes of it).

Scenario 10c: the lock file of a server's worker ID is removed (a tmp cleaner, an operator's ``rm``) and a second
server with the same directory and worker ID starts at once: it locks a new file of that name and claims the worker
ID. The first must notice at its next record write (every half lease window) and stop; the second starts above the
fence the first left. Before the fix nothing checked the lock file again, and both minted the same IDs.

Scenario 10d: one worker ID's record is garbage. It may belong to a worker ID that minted anything, so it is never
claimed (quarantined, and shown in ``/info`` and ``/metrics``); the server serves with another. With only that worker
ID in range the server refuses to start, with one log line that says why, never a traceback.

Scenario 12a: another local user attacks the state of a running server (see the test).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from faultkit import IdgenServer, wait_until
from loadclient import LoadClient, Record, Report, check, ids_of, timestamps_ms

from idgen import DEFAULT_LAYOUT

HALF_WINDOW_S = 2.5  # the local lease writes its record every half of its 5 s window


def _fence(record: Path) -> int:
    return json.loads(record.read_text())["fence_ms"]


def test_lock_file_removed_under_load_the_holder_stops_and_the_new_claimant_starts_above_its_fence(
    tmp_path: Path,
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    fault_results: list[Report],
) -> None:
    state = tmp_path / "state"
    options = ("--state-dir", str(state), "--worker-ids", "3-3")
    record, lock = state / "worker-00003.json", state / "worker-00003.lock"
    first = spawn_server("first", *options)
    load = start_load(first.wait_ready(), threads=4, rate=600, batch_every=4, batch_size=20)
    load.wait_ok("first", 300)
    # Remove the lock file just after an extension, so the second server claims before the first writes again.
    extended = _fence(record)
    wait_until(lambda: _fence(record) != extended, 10, "the first server to extend its fence")

    removed = time.monotonic()
    lock.unlink()
    second = spawn_server("second", *options)
    unready_s = _seconds_until(lambda: not first.ready(), removed, timeout=10)
    load.add(second.wait_ready())
    load.wait_ok("second", 300)
    still_refusing = not first.ready()
    lost = first.info()["lease"]
    holders = json.loads(record.read_text())["holders"]
    records = load.stop()

    report = check(
        records,
        "10c. lock file removed under load; a second server claims the worker ID",
        allow=lambda r: _refused_after(r, "first", removed),
        recovery_since=removed,
        recovery_servers=["second"],
        recovery_from="from the removal to the second server's first ID",
    )
    refusals = [r.done - removed for r in records if r.server == "first" and not r.ok]
    stop_s = min(refusals, default=None)
    last_ok = max(r.done - removed for r in records if r.server == "first" and r.ok)
    report.notes.append(
        f"the first server refused from {_s(stop_s)} after the removal (its last ID {last_ok:.2f} s after it),"
        f" /readyz 503 from {_s(unready_s)}; it reported {lost['state']!r}: {lost['reason']!r}"
    )
    report.notes[-1] = report.notes[-1].replace(str(state), "$STATE")
    fault_results.append(report)
    report.assert_ok()
    assert stop_s is not None and unready_s is not None and still_refusing, "the first server never stopped"
    assert stop_s <= HALF_WINDOW_S + 1.0 and unready_s <= HALF_WINDOW_S + 1.0
    [successor] = [h for h in holders if h["pid"] == second.pid]
    first_ids, second_ids = ids_of(records, "first"), ids_of(records, "second")
    assert max(timestamps_ms(first_ids)) <= successor["after_ms"] < min(timestamps_ms(second_ids))
    assert {DEFAULT_LAYOUT.split(i)["worker"] for i in first_ids + second_ids} == {3}


def _seconds_until(done: Callable[[], bool], since: float, timeout: float) -> float | None:
    """Seconds from ``since`` until ``done()`` held (polled), or ``None`` if it did not within ``timeout``: the
    scenario records its row before it asserts."""
    try:
        wait_until(done, timeout, "a condition", interval=0.01)
    except AssertionError:
        return None
    return time.monotonic() - since


def _s(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.2f} s"


def _refused_after(record: Record, server: str, since: float) -> bool:
    """``server`` may refuse (503 + Retry-After) once its lock file is gone."""
    return record.server == server and record.status == 503 and record.done >= since


def test_a_garbage_record_is_never_claimed_and_is_reported(
    tmp_path: Path,
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    fault_results: list[Report],
) -> None:
    """Worker 3 mints under load and is killed; its record is overwritten with garbage. A server on 3-5 would take
    3 first, as never used, were the garbage read as no record: it takes 4. A server on 3-3 refuses to start."""
    state = tmp_path / "state"
    minted = spawn_server("minted", "--state-dir", str(state), "--worker-ids", "3-3")
    load = start_load(minted.wait_ready())
    load.wait_ok("minted", 150)
    minted.kill()
    load.remove("minted")
    (state / "worker-00003.json").write_bytes(b'{"fence_ms": 17\x00\xff garbage')

    server = spawn_server("other", "--state-dir", str(state), "--worker-ids", "3-5")
    since = time.monotonic()
    load.add(server.wait_ready())
    load.wait_ok("other", 300)
    info = server.info()
    metrics = server.get("/metrics").body.decode()
    records = load.stop()

    alone = spawn_server("alone", "--state-dir", str(state), "--worker-ids", "3-3")
    code = alone.wait_exit(30)
    report = check(
        records,
        "10d. a worker ID's record is garbage; servers on a range with it, and on it alone",
        allow=lambda r: r.server == "minted" and r.status == 0,  # requests in flight at the kill
    )
    failed = [e for e in alone.events if e.get("level") == "ERROR"]
    report.notes.append(
        f"served as worker {info['worker_id']}, quarantined {info['lease']['quarantined']};"
        f" on 3-3 alone it exited with code {code}: " + "; ".join(repr(e.get("message")) for e in failed)
    )
    report.notes[-1] = report.notes[-1].replace(str(state), "$STATE")
    fault_results.append(report)
    report.assert_ok()
    assert info["worker_id"] == 4 and list(info["lease"]["quarantined"]) == ["3"]
    assert "idgen_quarantined_worker_ids 1.0" in metrics.splitlines()
    assert {DEFAULT_LAYOUT.split(i)["worker"] for i in ids_of(records, "other", since)} == {4}
    assert code == 1 and alone.port == 0, "with only a quarantined worker ID the server must not start"
    assert all("not_json" not in e for e in alone.events), f"not a JSON log line (a traceback?):\n{alone.log}"
    assert [e.get("event") for e in failed] == ["start_failed"]  # one line, with the reason in it
    assert "quarantined (1: worker 3: the record" in failed[-1]["message"]


ATTACKER = """
import fcntl, json, os, sys, time
state, hold_s = sys.argv[1], float(sys.argv[2])
def attempt(name, action):
    try:
        action()
        print(json.dumps([name, "done"]), flush=True)
    except OSError as exc:
        print(json.dumps([name, exc.strerror]), flush=True)
def overwrite():
    with open(os.path.join(state, "worker-00000.json"), "w") as f:
        f.write('{"worker_id": 0, "fence_ms": 0, "lease_id": "attacker", "holders": []}')
def lock():
    fcntl.flock(os.open(state, os.O_RDONLY), fcntl.LOCK_EX)
attempt("overwrite worker-00000.json", overwrite)
attempt("delete layout.json", lambda: os.unlink(os.path.join(state, "layout.json")))
attempt("flock the directory", lock)
time.sleep(hold_s)
"""
LOCK_HOLD_S = 8.0


def test_another_local_user_can_neither_change_nor_lock_the_state_of_a_running_server(
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    fault_results: list[Report],
) -> None:
    """Scenario 12a: a server runs under umask 000 in a directory other users can traverse (as a home directory). A
    real process of the unprivileged user ``nobody`` overwrites worker 0's record (fence 0, another lease ID),
    deletes ``layout.json`` and holds the state directory's ``flock`` while a fresh ``idgen mint`` runs on the
    directory (up to 8 s). Before the fix the state was 0777/0666 and every step worked: the server lost its claim and
    refused, and the mint failed. After, the directory is 0700 and every step is refused."""
    parent = Path(tempfile.mkdtemp(prefix="idgen-shared-"))
    try:
        parent.chmod(0o755)
        state = parent / "state"
        umask = os.umask(0)
        try:
            server = spawn_server("server", "--state-dir", str(state), "--worker-ids", "0-0")
            target = server.wait_ready()
        finally:
            os.umask(umask)
        load = start_load(target, threads=2, rate=300)
        load.wait_ok("server", 300)
        since = time.monotonic()
        attacker = subprocess.Popen(
            ["/usr/bin/python3", "-c", ATTACKER, str(state), str(LOCK_HOLD_S)], user="nobody", stdout=subprocess.PIPE
        )
        assert attacker.stdout is not None
        steps = [json.loads(attacker.stdout.readline()) for _ in range(3)]
        began = time.monotonic()
        mint = subprocess.run(
            [sys.executable, "-m", "idgen.cli", "mint", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        mint_s = time.monotonic() - began
        attacker.kill()  # it held what it could for as long as the mint took (before the fix: 5 s, then a failure)
        attacker.wait(30)
        attacker.stdout.close()
        load.wait_ok("server", 300)
        records = load.stop()
    finally:
        shutil.rmtree(parent)
    report = check(records, "12a. another local user overwrites a record, deletes layout.json, flocks the directory")
    refusals = [r.done - since for r in records if r.server == "server" and not r.ok and r.done >= since]
    report.notes.append(
        f"attacker (user nobody): {'; '.join(f'{step}: {result}' for step, result in steps)}; the server refused"
        f" {len(refusals)} requests"
        + (f" from {min(refusals):.2f} to {max(refusals):.2f} s" if refusals else "")
        + f"; a fresh `idgen mint` exited {mint.returncode} in {mint_s:.1f} s {mint.stderr.strip()!r}"
    )
    report.notes[-1] = report.notes[-1].replace(str(state), "$STATE")
    fault_results.append(report)
    report.assert_ok()
    assert [result for _, result in steps] == ["Permission denied"] * 3
    assert mint.returncode == 0, mint.stderr
