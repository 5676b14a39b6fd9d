"""The test tiers: which tests need a real component beyond Python, so that ``pytest -m quick`` needs none.

Each component marker (registered in pyproject.toml) names something a test starts from a Debian package:
``zookeeper``, ``postgres``, ``etcd``, ``browser`` (chromium), ``prometheus`` (promtool). ``faults`` marks the
fault-injection suite (tests/faults/), which takes minutes. tests/conftest.py marks every test:

- by the fixtures it uses, directly or through other fixtures (``zk_hosts`` uses ``zk_server``): a test that takes
  ``zk_server`` is marked ``zookeeper`` without saying so;
- by a parameter that names a component (a lease backend ``"zookeeper"``, a database ``"postgresql"``), for the
  parametrized fixtures that ask for the component's fixture only on that parameter (``request.getfixturevalue``);
- by its place: everything under tests/faults/;
- by its own marker, where it starts the component itself (``ZkServer()`` in a test, ``promtool``);
- and ``quick`` when it has none of these.

The guard makes the marks honest: while a test is set up or runs, starting a component's program (``java``,
``initdb``, ``chromedriver``, ``etcd``, ``promtool``...) that the test is not marked for fails the test at once, in
every run, so a test that forgets its mark cannot slip into the quick tier. The harnesses check too, so that a
script the test runs (which starts ZooKeeper through tests/zkharness.py) is caught in its own process. Teardown is
not guarded: a session fixture is torn down in whichever test ran last.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the harnesses import this module in scripts that run without pytest (loadtest/run.py)
    import pytest

TESTS = Path(__file__).resolve().parent

#: The markers of tests that need a component from outside Python (pyproject.toml says what each needs).
COMPONENTS: tuple[str, ...] = ("zookeeper", "postgres", "etcd", "browser", "prometheus")
FAULTS = "faults"
QUICK = "quick"
#: Every tier marker; ``quick`` is the absence of the others.
TIERS: tuple[str, ...] = (*COMPONENTS, FAULTS)

#: The fixtures that start a component (every fixture that uses one of them inherits its mark).
STARTED_BY_FIXTURE: dict[str, str] = {
    "zk_server": "zookeeper",
    "fresh_zk": "zookeeper",
    "zk_ensemble": "zookeeper",
    "pg_server": "postgres",
    "etcd_server": "etcd",
    "etcd_cluster": "etcd",
    "own_etcd": "etcd",  # test_etcd_lease.py: a member of the test's own
    "short_token_etcd": "etcd",  # test_etcd_security.py: tokens that expire after 1 s
    "tls_etcd": "etcd",  # test_etcd_security.py: TLS with client certificates
    "browser": "browser",
}

#: Parameter values that make a parametrized fixture ask for a component's fixture.
STARTED_BY_PARAMETER: dict[str, str] = {"zookeeper": "zookeeper", "postgresql": "postgres", "etcd": "etcd"}

#: The programs that start (or are) a component, by file name, as a test would run them.
PROGRAMS: dict[str, str] = {
    "java": "zookeeper",
    "initdb": "postgres",
    "pg_ctl": "postgres",
    "postgres": "postgres",
    "psql": "postgres",
    "etcd": "etcd",
    "etcdctl": "etcd",
    "chromium": "browser",
    "chromedriver": "browser",
    "promtool": "prometheus",
}


def tiers_of(item: pytest.Item) -> set[str]:
    """The tier markers ``item`` needs: its own, and those its fixtures, parameters and place imply."""
    tiers = {mark.name for mark in item.iter_markers() if mark.name in TIERS}
    tiers |= {STARTED_BY_FIXTURE[name] for name in getattr(item, "fixturenames", ()) if name in STARTED_BY_FIXTURE}
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        tiers |= {STARTED_BY_PARAMETER[value] for value in callspec.params.values() if _names_component(value)}
    if item.path.is_relative_to(TESTS / FAULTS):
        tiers.add(FAULTS)
    return tiers


def _names_component(value: object) -> bool:
    return isinstance(value, str) and value in STARTED_BY_PARAMETER


def mark(item: pytest.Item) -> None:
    """Add the tier markers ``item`` needs, or ``quick`` if it needs none."""
    for tier in sorted(tiers_of(item) or {QUICK}):
        item.add_marker(tier)


# --- the guard ---

#: The components the running test may start (comma-separated), in the environment so that the processes it starts
#: inherit it: a script that starts ZooKeeper itself (loadtest/run.py) checks it in the harness. Unset outside a
#: test's setup and call, where anything may start.
MAY_START_ENV = "TEST_TIER_MAY_START"

_installed = False


class UnmarkedComponent(RuntimeError):
    """A test started a component without the component's marker."""


@contextlib.contextmanager
def guarding(item: pytest.Item) -> Iterator[None]:
    """While the block runs, ``item`` (and what it starts) may start only the components it is marked for."""
    os.environ[MAY_START_ENV] = ",".join(sorted(mark.name for mark in item.iter_markers() if mark.name in COMPONENTS))
    try:
        yield
    finally:
        os.environ.pop(MAY_START_ENV, None)


def check_may_start(component: str, what: str) -> None:
    """Raise :class:`UnmarkedComponent` if the running test may not start ``component`` (here by ``what``)."""
    allowed = os.environ.get(MAY_START_ENV)
    if allowed is not None and component not in allowed.split(","):
        raise UnmarkedComponent(
            f"this test started {what} but is not marked {component!r}: mark it @pytest.mark.{component}, "
            f"or start {component} through its fixture (see tests/tiers.py)"
        )


def _refuse_unmarked_start(event: str, args: tuple[Any, ...]) -> None:
    """Audit hook: refuse to start a component's program in a test not marked for it."""
    if event == "subprocess.Popen":
        program = os.path.basename(os.fsdecode(args[0]))
        if program in PROGRAMS:
            check_may_start(PROGRAMS[program], repr(program))


def install_guard() -> None:
    """Install the guard once per process (an audit hook cannot be removed; outside a test it lets all pass)."""
    global _installed
    if not _installed:
        sys.addaudithook(_refuse_unmarked_start)
        _installed = True
