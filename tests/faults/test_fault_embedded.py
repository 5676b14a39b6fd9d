"""The embedded generator inside real Python processes (DESIGN.md, forks and close).

Scenario 10a: gunicorn ``--preload`` imports an app that made a :class:`~idgen.Generator` and minted with it, then
forks three workers under load. Each worker copies the master's generator, its live tick and its lease; it must
lease a worker ID of its own on first use. Before the fork fix every worker minted the master's IDs again.
Scenario 10e is the same with the process default: the app calls ``idgen.next_id()`` at import and per request.

Scenario 10b: in a real process, threads mint from one generator while the main thread calls ``close()``; a second
process, polling for the worker ID, takes it the moment it is free. Its clock is a little behind (libfaketime), as a
successor's may be, so it waits for its clock to pass the final fence and then mints in the very ticks just above it.
Before the close fix threads went on opening ticks above the final fence ``close()`` wrote, and the successor
repeated their IDs.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import close_race
import pytest
from faultkit import Faketime, IdgenServer
from loadclient import LoadClient, Report, check, ids_of

from idgen import DEFAULT_LAYOUT

HERE = Path(__file__).resolve().parent
GUNICORN_WORKERS = 3
CLOSE_TRIALS = 5
SUCCESSOR_BEHIND_S = 0.2  # the successor's clock behind the closing process's


# The app module, and the scenario it plays: an explicit Generator() made at import (10a), or the process default
# behind idgen.next_id() made by its first use at import (10e).
PRELOAD_APPS = {
    "preload_app": "10a. gunicorn --preload, 3 workers forked from a master that minted",
    "default_app": "10e. gunicorn --preload, 3 workers forked from a master that minted with idgen.next_id()",
}


@pytest.mark.parametrize("app", PRELOAD_APPS)
def test_gunicorn_preload_workers_each_mint_under_a_worker_id_of_their_own(
    app: str,
    tmp_path: Path,
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    fault_results: list[Report],
) -> None:
    gunicorn = spawn_server(
        "gunicorn",
        *("--preload", "--workers", str(GUNICORN_WORKERS), "--bind", "127.0.0.1:0", "--graceful-timeout", "5"),
        *("--config", str(HERE / "preload_gunicorn.py"), "--chdir", str(HERE), f"{app}:application"),
        command=[sys.executable, "-m", "gunicorn"],
        env={"IDGEN_STATE_DIR": str(tmp_path / "state")},
    )
    load = start_load(gunicorn.wait_ready(), threads=6, rate=900)
    load.wait_ok("gunicorn", 1500)  # each request on a new connection (sync workers), so all workers serve
    preloaded = int(gunicorn.info()["preloaded_id"])
    records = load.stop()

    report = check(records, PRELOAD_APPS[app])
    served = ids_of(records)
    worker_ids = {DEFAULT_LAYOUT.split(id_)["worker"] for id_ in served}
    master = DEFAULT_LAYOUT.split(preloaded)["worker"]
    report.notes.append(
        f"the master minted under worker {master} at import; {len(served):,} IDs served under workers"
        f" {sorted(worker_ids)}"
    )
    fault_results.append(report)
    report.assert_ok()
    assert len(worker_ids) == GUNICORN_WORKERS and master not in worker_ids, (master, worker_ids)
    assert preloaded not in served


def test_close_while_threads_mint_leaves_nothing_for_the_successor_to_repeat(
    tmp_path: Path, faketime: Faketime, fault_results: list[Report]
) -> None:
    report = Report("10b. close() while 4 threads mint; a successor process takes the worker ID at once")
    fault_results.append(report)
    faketime.set(-SUCCESSOR_BEHIND_S)
    shared: list[int] = []  # IDs both processes minted, by trial
    for trial in range(CLOSE_TRIALS):
        state, out = tmp_path / f"state-{trial}", tmp_path / f"trial-{trial}"
        with _script("race", state, out / "race") as racer:
            _expect_line(racer, "holding")
            with _script("succeed", state, out / "successor", env=faketime.env()) as successor:
                _expect_line(successor, "waiting")
                assert racer.stdin is not None
                racer.stdin.write("close\n")
                racer.stdin.close()
                assert racer.wait(30) == 0 and successor.wait(30) == 0
        raced, succeeded = (json.loads((out / name).read_text()) for name in ("race", "successor"))
        before, after = [i for ids in raced for i in ids], succeeded[0]
        report.ids += len(before) + len(after)
        shared.append(len(set(before) & set(after)))
        report.duplicates += shared[-1]
        report.out_of_order += sum(_disorder(ids) for ids in [*raced, after])
        assert {DEFAULT_LAYOUT.split(i)["worker"] for i in before + after} == {close_race.WORKER_ID}
    report.notes.append(
        f"{CLOSE_TRIALS} trials, each in a new state directory; the successor's clock"
        f" {SUCCESSOR_BEHIND_S * 1000:.0f} ms behind, so it minted in the ticks just above the final fence;"
        f" IDs checked: both processes' together; shared by trial: {shared}"
    )
    report.assert_ok()


@contextlib.contextmanager
def _script(role: str, state: Path, out: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """``close_race.py role state out`` as a child with pipes (``env`` added); killed if still running at the end."""
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(HERE / "close_race.py"), role, str(state), str(out)]
    proc = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()


def _expect_line(proc: subprocess.Popen[str], line: str, timeout: float = 30.0) -> None:
    """Wait (bounded) for ``proc`` to print ``line``."""
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], timeout)
    got = proc.stdout.readline().strip() if readable else f"nothing within {timeout} s"
    assert got == line, f"expected {line!r} from the script, got {got!r} (exit code {proc.poll()})"


def _disorder(ids: Sequence[int]) -> int:
    """IDs not above the one before: one thread's IDs from one generator must strictly increase."""
    return sum(b <= a for a, b in itertools.pairwise(ids))


STORM_FORKS = 300
STORM_AFTER_S = 8.0  # beyond the 5 s a claim waits for the directory lock


@pytest.mark.parametrize("fork", ["os.fork", "C fork"])
def test_a_fork_storm_under_load_never_locks_the_state_directory(
    tmp_path: Path, fork: str, fault_results: list[Report]
) -> None:
    """Scenario 12b: 300 forks while threads mint and the renewal thread writes a record every 100 ms under the state
    directory's ``flock``. The children live on and never call idgen. Before the fix, a child forked while the lock
    was held kept it: the parent's renewals then failed and it refused, and a fresh ``idgen mint`` on the directory
    failed after waiting 5 s, for as long as the child lived."""
    state = tmp_path / "state"
    storm = subprocess.Popen(
        [sys.executable, str(HERE / "fork_storm.py"), str(state), fork, str(STORM_FORKS), str(STORM_AFTER_S)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its children too are killed with its process group
    )
    try:
        assert storm.stdout is not None
        assert json.loads(storm.stdout.readline()) == {"forked": STORM_FORKS}
        began = time.monotonic()
        fresh = subprocess.run(
            [sys.executable, "-m", "idgen.cli", "mint", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        fresh_s = time.monotonic() - began
        figures = json.loads(storm.stdout.readline())
    finally:
        os.killpg(storm.pid, signal.SIGKILL)
        storm.wait(10)
        storm.stdout.close()
    report = Report(f"12b. {STORM_FORKS} forks ({fork}) of a process minting on a local lease, children living on")
    report.ids = figures["ids"]
    report.out_of_order = figures["out_of_order"]
    report.errors.update({f"refused {code}": n for code, n in figures["refused"].items()})
    report.notes.append(
        f"{fork}: the parent refused {sum(figures['refused'].values())} times, {figures['refused_after_forks']} of"
        f" them after the forks were done at {figures['forked_s']} s (the last at {figures['last_refusal_s']} s),"
        f" {figures['renewal_failures']}"
        f" renewal failures, ended {figures['state']!r} ({figures['reason']!r}); a fresh `idgen mint` while the"
        f" children lived: exit {fresh.returncode} in {fresh_s:.1f} s {fresh.stderr.strip()!r}"
    )
    report.notes[-1] = report.notes[-1].replace(str(state), "$STATE")
    fault_results.append(report)
    report.assert_ok()
    assert fresh.returncode == 0, fresh.stderr
    assert figures["renewal_failures"] == 0 and figures["state"] == "held", figures
    # During the storm a 200 ms window can run out while forks hold up the renewal thread; after it, never.
    assert figures["refused_after_forks"] == 0, figures
