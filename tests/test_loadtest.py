"""The load test's tooling: the verdict script on known inputs, and one short real run of the runner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from idgen import DEFAULT_LAYOUT

LOADTEST = Path(__file__).resolve().parent.parent / "loadtest"


def write(results: Path, name: str, records: list[dict]) -> None:
    results.mkdir(exist_ok=True)
    (results / f"ids-{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def check(results: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LOADTEST / "check.py"), str(results), "--json"], capture_output=True, text=True, timeout=30
    )


def ids(*sequences: int, worker: int = 3) -> list[str]:
    return [str(DEFAULT_LAYOUT.compose(1000 + s, worker, 0)) for s in sequences]


def test_a_clean_run_passes_and_counts_everything(tmp_path: Path) -> None:
    write(
        tmp_path,
        "1",
        [{"user": "a", "ids": ids(1, 2), "status": 200, "ms": 1.0}, {"user": "a", "ids": [], "status": 503, "ms": 2.0}],
    )
    write(tmp_path, "2", [{"user": "b", "ids": ids(3), "status": 200, "ms": 3.0}])
    result = check(tmp_path)
    assert result.returncode == 0
    summary = json.loads(result.stdout)
    assert (summary["ids"], summary["duplicates"], summary["out_of_order"]) == (3, 0, 0)
    assert summary["by_status"] == {"200": 2, "503": 1}


def test_a_duplicate_across_processes_fails_the_run(tmp_path: Path) -> None:
    write(tmp_path, "1", [{"user": "a", "ids": ids(1), "status": 200, "ms": 1.0}])
    write(tmp_path, "2", [{"user": "b", "ids": ids(1), "status": 200, "ms": 1.0}])
    result = check(tmp_path)
    assert result.returncode == 1
    assert json.loads(result.stdout)["duplicates"] == 1


def test_ids_going_backwards_for_one_user_and_worker_fail_the_run(tmp_path: Path) -> None:
    write(
        tmp_path,
        "1",
        [
            {"user": "a", "ids": ids(5), "status": 200, "ms": 1.0},
            {"user": "a", "ids": ids(4), "status": 200, "ms": 1.0},
            {"user": "a", "ids": ids(1, worker=4), "status": 200, "ms": 1.0},
        ],
    )  # another worker: fine
    result = check(tmp_path)
    assert result.returncode == 1
    assert json.loads(result.stdout)["out_of_order"] == 1


@pytest.mark.zookeeper  # the runner starts its own ensemble
@pytest.mark.timeout(180)
def test_the_runner_starts_everything_loads_it_and_reports(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(LOADTEST / "run.py"),
            "--duration",
            "2",
            "--servers",
            "2",
            "--users",
            "6",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "duplicates                               0" in result.stdout
    assert (tmp_path / "report.html").stat().st_size > 0
    assert list(tmp_path.glob("ids-*.jsonl"))
    assert len(list(tmp_path.glob("server-*.log"))) == 2
