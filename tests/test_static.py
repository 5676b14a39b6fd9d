"""The code stays lint-clean and type-correct: ruff over the repo, mypy over the package."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing() -> None:
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout


def test_the_package_type_checks() -> None:
    result = run("mypy", "idgen", "--ignore-missing-imports")
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
