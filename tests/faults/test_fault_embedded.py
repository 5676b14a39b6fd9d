"""The embedded generator inside real Python processes (DESIGN.md, forks and close).

Scenario 10a: gunicorn ``--preload`` imports an app that made a :class:`~idgen.Generator` and minted with it, then
forks three workers under load. Each worker copies the master's generator, its live tick and its lease; it must
lease a worker ID of its own on first use. Before the fork fix every worker minted the master's IDs again.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from faultkit import IdgenServer
from loadclient import LoadClient, Report, check, ids_of

from idgen import DEFAULT_LAYOUT

HERE = Path(__file__).resolve().parent
GUNICORN_WORKERS = 3


def test_gunicorn_preload_workers_each_mint_under_a_worker_id_of_their_own(
    tmp_path: Path,
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    fault_results: list[Report],
) -> None:
    gunicorn = spawn_server(
        "gunicorn",
        *("--preload", "--workers", str(GUNICORN_WORKERS), "--bind", "127.0.0.1:0", "--graceful-timeout", "5"),
        *("--config", str(HERE / "preload_gunicorn.py"), "--chdir", str(HERE), "preload_app:application"),
        command=[sys.executable, "-m", "gunicorn"],
        env={"IDGEN_STATE_DIR": str(tmp_path / "state")},
    )
    load = start_load(gunicorn.wait_ready(), threads=6, rate=900)
    load.wait_ok("gunicorn", 1500)  # each request on a new connection (sync workers), so all workers serve
    preloaded = int(gunicorn.info()["preloaded_id"])
    records = load.stop()

    report = check(records, "10a. gunicorn --preload, 3 workers forked from a master that minted")
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
