"""The code stays lint-clean and type-correct: ruff over the repo, mypy over the package."""

from __future__ import annotations

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
