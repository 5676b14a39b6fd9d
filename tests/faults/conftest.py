"""Fixtures of the fault-injection suite: server processes, steady load, a live clock offset, a network partition;
and the results table, printed at the end of every run that ran a scenario (copy it into docs/RELIABILITY.md)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faultkit import Faketime, IdgenServer, Partition, close_all, faketime_library
from loadclient import LoadClient, Report, Target, render

_RESULTS = pytest.StashKey[list[Report]]()


def _results(config: pytest.Config) -> list[Report]:
    return config.stash.setdefault(_RESULTS, [])


@pytest.fixture
def fault_results(request: pytest.FixtureRequest) -> list[Report]:
    """Append each scenario's :class:`Report` here *before* asserting on it, so failed scenarios show too."""
    return _results(request.config)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    reports = sorted(_results(config), key=_scenario_order)
    if reports:
        terminalreporter.section("fault-injection results")
        terminalreporter.write_line(render(reports))


def _scenario_order(report: Report) -> tuple[int, str]:
    """Rows by scenario number ("4b. ..." after "4a. ...", before "5. ...")."""
    number = re.match(r"\d+", report.scenario)
    return (int(number.group()) if number else 0, report.scenario)


@pytest.fixture
def spawn_server() -> Iterator[Callable[..., IdgenServer]]:
    """``spawn_server(name, *serve_args, host=, env=, netns=)`` starts ``idgen serve``; all are stopped at the end."""
    started: list[IdgenServer] = []

    def spawn(name: str, *args: str, **options: Any) -> IdgenServer:
        started.append(IdgenServer(name, *args, **options))
        return started[-1]

    yield spawn
    close_all(started)


@pytest.fixture
def start_load() -> Iterator[Callable[..., LoadClient]]:
    """``start_load(*targets, **options)`` starts a :class:`LoadClient` (2 threads, 300 requests/s by default)."""
    clients: list[LoadClient] = []

    def start(*targets: Target, **options: Any) -> LoadClient:
        clients.append(LoadClient(targets, **options).start())
        return clients[-1]

    yield start
    for client in clients:
        client.stop()


@pytest.fixture
def faketime(tmp_path: Path) -> Faketime:
    library = faketime_library()
    if library is None:
        pytest.skip("libfaketime is not installed: pip install 'libfaketime>=3.0' (the test extra has it)")
    return Faketime(library, tmp_path)


@pytest.fixture
def partition() -> Iterator[Partition]:
    """A network namespace with a veth to ZooKeeper that the test can cut; skipped where namespaces are not
    permitted. The veths and the namespace are always deleted afterwards."""
    why_not = Partition.available()
    if why_not:
        pytest.skip(why_not)
    made = Partition().create()
    try:
        yield made
    finally:
        made.delete()
    assert not made.exists(), f"{made.netns} or its veths were left behind"
