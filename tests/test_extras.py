"""The integrations are optional: ``import idgen`` loads none of their frameworks, and importing an integration
whose framework is missing names the extra to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

FRAMEWORKS = ("django", "rest_framework", "sqlalchemy", "pydantic")


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_import_idgen_loads_no_framework() -> None:
    result = python(f"import sys, idgen, idgen.client; print(sorted(set({FRAMEWORKS!r}) & set(sys.modules)))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("integration", "blocked", "extra"),
    [
        ("idgen.django", "django", "django"),
        ("idgen.django.rest_framework", "rest_framework", "drf"),
        ("idgen.sqlalchemy", "sqlalchemy", "sqlalchemy"),
        ("idgen.pydantic", "pydantic", "pydantic"),
    ],
)
def test_an_integration_without_its_framework_names_the_extra(integration: str, blocked: str, extra: str) -> None:
    result = python(f"import sys; sys.modules[{blocked!r}] = None; import {integration}")  # None: not installed
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: ") and f"pip install 'idgen[{extra}]'" in last, result.stderr
