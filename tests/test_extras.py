"""The integrations are optional: ``import idgen`` loads none of their frameworks, and importing an integration
whose framework is missing names the extra to install. The distribution is ``idgen-service`` (``idgen`` on the index is
an unrelated package), and every install line of the docs installs this checkout, not a name on the index."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

import idgen

ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTION = "idgen-service"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
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
    assert last.startswith("ImportError: ") and f"pip install '.[{extra}]'" in last, result.stderr
    assert f"{DISTRIBUTION}[{extra}]" in last, result.stderr


def test_the_distribution_is_idgen_service_and_the_test_extra_names_it() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION
    assert project["scripts"] == {"idgen": "idgen.cli:main"}  # the command keeps its name
    assert any(r.startswith(f"{DISTRIBUTION}[") for r in project["optional-dependencies"]["test"])
    assert version(DISTRIBUTION) == idgen.__version__ == project["version"]


PIP_COMMAND = r"^(?:RUN\s+)?(?:\S*python3?\s+-m\s+)?pip\s+(?:install|wheel|download)\b.*"  # a line that runs pip


def install_targets(line: str) -> list[str]:
    """What a ``pip install|wheel|download`` command line installs: its words after the verb that are no option,
    up to the end of the command."""
    words = shlex.split(line, comments=True)
    verb = next(i for i, word in enumerate(words) if word in ("install", "wheel", "download"))
    targets = []
    for word in words[verb + 1 :]:
        if word in ("&&", ";", "|"):
            break
        if not word.startswith("-"):
            targets.append(word)
    return targets


def test_every_install_line_installs_this_checkout() -> None:
    """``pip install 'idgen[django]'`` installed an unrelated package of 2011 from the index: every install line
    installs a checkout (or the wheels built from one), and one that installs an extra names the distribution."""
    lines = [
        (path.name, line, command)
        for path in [*DOCS, ROOT / "tests" / "run.sh", ROOT / "Dockerfile"]
        for line in path.read_text().splitlines()
        for command in [*re.findall(r"`([^`]*\bpip [^`]*)`", line), *re.findall(PIP_COMMAND, line.strip())]
    ]
    assert len(lines) >= 6, lines
    for doc, _, command in lines:
        for target in install_targets(command):
            assert target.startswith((".", "/")), f"{doc}: {command!r} installs {target!r} from the index"
    extras = [line for _, line, command in lines if "'.[" in command and not re.search(r"\[(test|bench)\]", command)]
    assert extras and all(DISTRIBUTION in line for line in extras), extras
