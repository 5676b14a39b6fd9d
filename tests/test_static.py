"""The code stays lint-clean and type-correct: ruff over the repo, mypy over the package; the package ships its
types; the quick test tier starts no component from outside Python."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tiers

ROOT = Path(__file__).resolve().parent.parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing() -> None:
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout


def test_the_package_type_checks() -> None:
    result = run("mypy")  # strict, over the package: pyproject's [tool.mypy]
    assert result.returncode == 0, result.stdout


def _imports(module: str, path: Path, modules: set[str]) -> set[str]:
    """The idgen modules ``module`` imports anywhere in its source: at the top, under ``TYPE_CHECKING``, in functions.
    ``from idgen import x`` names the module ``idgen.x`` if there is one, else the package itself."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
    return found & modules


def _import_graph() -> dict[str, set[str]]:
    paths = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for path in (ROOT / "idgen").rglob("*.py")
    }
    return {module: _imports(module, path, set(paths)) - {module} for module, path in paths.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each module that lies on one (depth-first search, each as ``a -> b -> ... -> a``)."""
    cycles, seen = [], set()
    for start in sorted(graph):
        stack = [(start, [start])]
        while stack:
            module, path = stack.pop()
            for target in sorted(graph[module]):
                if target == start and start not in seen:
                    cycles.append([*path, start])
                    seen.update(path)
                elif target not in path and target > start:
                    stack.append((target, [*path, target]))
    return cycles


def test_no_module_of_idgen_imports_itself_back() -> None:
    """No import cycle among idgen's modules, counting imports inside functions and under ``TYPE_CHECKING``: each
    module can be read, tested and loaded without the ones that depend on it."""
    graph = _import_graph()
    assert graph["idgen.cli"], "the parser found no imports"
    assert _cycles(graph) == []


def test_the_package_ships_its_type_hints() -> None:
    """PEP 561: without ``py.typed`` in the wheel, a user's mypy ignores every hint in idgen."""
    assert (ROOT / "idgen" / "py.typed").is_file()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["idgen"]


# --- the tiers (tests/tiers.py) ---

#: Scripts outside tests/ that start components through the harnesses (loadtest/run.py starts ZooKeeper).
STARTING_SCRIPTS = sorted(
    path.name
    for path in ROOT.glob("*/*.py")
    if path.parent.name != "tests" and re.search(r"^from (zk|pg|etcd)harness import", path.read_text(), re.MULTILINE)
)
#: Code that starts a component from outside Python, in a test or a fixture (the guard in tests/tiers.py catches the
#: programs themselves while a test runs; this catches them before anything runs, in code that never ran here).
STARTS_A_COMPONENT = re.compile(
    r"\b(?:(?:ZkServer|ZkEnsemble|PgServer|EtcdServer|EtcdCluster|webdriver\.Chrome|promtool|zookeeper_classpath)\("
    + "".join(f"|{re.escape(name)}\\b" for name in STARTING_SCRIPTS)
    + ")"
)


class _Census:
    """A pytest plugin that records, for each collected test, whether ``-m`` selected it, its markers, its fixtures,
    and which of the test and its fixtures have code that starts a component."""

    def __init__(self) -> None:
        self.tests: dict[str, dict[str, Any]] = {}

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self._record(items, selected=False)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._record(session.items, selected=True)

    def _record(self, items: list[pytest.Item], *, selected: bool) -> None:
        for item in items:
            assert isinstance(item, pytest.Function)
            # _fixtureinfo is private, but the only way to reach the code of the fixtures a test uses
            fixtures = {name: defs[-1].func for name, defs in item._fixtureinfo.name2fixturedefs.items()}
            code = {"the test": item.function, **fixtures}
            self.tests[item.nodeid] = {
                "selected": selected,
                "markers": sorted({mark.name for mark in item.iter_markers()}),
                "fixtures": sorted(item.fixturenames),
                "starting": sorted(name for name, func in code.items() if STARTS_A_COMPONENT.search(_source(func))),
            }


def _source(func: Any) -> str:
    try:
        return inspect.getsource(func)
    except (OSError, TypeError):  # a fixture of pytest or a plugin, written in C or without a file
        return ""


def census_main() -> None:
    """``python -c 'import test_static; test_static.census_main()' OUT [PYTEST ARGS]``: collect, write JSON to OUT."""
    out, *args = sys.argv[1:]
    census = _Census()
    code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *args], plugins=[census])
    Path(out).write_text(json.dumps({"exit": int(code), "tests": census.tests}))


def census(tmp_path: Path, *args: str) -> dict[str, dict[str, Any]]:
    """Every test of the suite as :class:`_Census` saw it, collected by ``pytest --collect-only *args``."""
    out = tmp_path / "census.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-c", "import test_static; test_static.census_main()", str(out), "tests", *args]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and out.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["exit"] == 0
    tests: dict[str, dict[str, Any]] = result["tests"]
    return tests


def test_every_tier_marker_is_registered_and_unknown_markers_are_errors() -> None:
    pytest_options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    registered = {line.partition(":")[0] for line in pytest_options["markers"]}
    assert registered == {*tiers.TIERS, tiers.QUICK}
    assert "--strict-markers" in pytest_options["addopts"].split()


def test_the_quick_tier_deselects_every_test_that_starts_a_component(tmp_path: Path) -> None:
    everything = census(tmp_path, "-m", tiers.QUICK)
    quick = {nodeid: test for nodeid, test in everything.items() if test["selected"]}
    assert 0 < len(quick) < len(everything)
    for nodeid, test in everything.items():
        tiers_needed = set(test["markers"]) & set(tiers.TIERS)
        assert (tiers.QUICK in test["markers"]) != bool(tiers_needed), f"{nodeid}: {test['markers']}"
        assert test["selected"] == (not tiers_needed), nodeid
    for nodeid, test in quick.items():
        starting = set(test["fixtures"]) & tiers.STARTED_BY_FIXTURE.keys()
        assert not starting, f"{nodeid} is in the quick tier but uses {sorted(starting)}"
        assert not test["starting"], f"{nodeid} is in the quick tier but code of {test['starting']} starts a component"
        assert not nodeid.startswith("tests/faults/"), nodeid
    # the marks reach tests through a fixture's fixture, a parameter, a module's own mark, and their place
    for pattern, marker in [
        (r"^tests/test_model\.py::.*zookeeper", "zookeeper"),  # zk_hosts uses zk_server
        (r"^tests/test_lease_conformance\.py::.*\[zookeeper\]", "zookeeper"),
        (r"^tests/test_lease_conformance\.py::.*\[local\]", tiers.QUICK),
        (r"^tests/test_pgharness\.py::", "postgres"),
        (r"^tests/faults/", tiers.FAULTS),
    ]:
        matching = [test["markers"] for nodeid, test in everything.items() if re.search(pattern, nodeid)]
        assert matching and all(marker in markers for markers in matching), pattern
