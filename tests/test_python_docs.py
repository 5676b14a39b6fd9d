"""docs/PYTHON.md cannot rot: every ``python`` block in it is a recipe, and every recipe runs here, in a fresh
process, against real SQLite and PostgreSQL where it touches a database.

Fence info strings: ``python recipe`` runs as a script (with ``DATABASE_URL`` set when it reads it, and ``IDGEN_URL``
naming a real ``idgen serve`` when it reads that);
``python recipe django:<path>`` is a file of a Django project that the test builds, runs ``makemigrations`` and
``migrate`` on, then runs ``python recipe django-shell`` blocks in with ``manage.py shell``. ``python sketch`` is code
for a framework the suite does not install (Celery): it is compiled, and there is exactly one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from djangosite import database
from serverproc import ServerProcess

DOC = Path(__file__).resolve().parent.parent / "docs" / "PYTHON.md"
BLOCK = re.compile(r"^```python(?P<info>[^\n]*)\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)
BLOCKS = [(m["info"].strip(), m["code"]) for m in BLOCK.finditer(DOC.read_text())]
SCRIPTS = [code for info, code in BLOCKS if info == "recipe"]
DJANGO_FILES = {info.removeprefix("recipe django:"): code for info, code in BLOCKS if info.startswith("recipe django:")}
DJANGO_SHELL = [code for info, code in BLOCKS if info == "recipe django-shell"]
SKETCHES = [code for info, code in BLOCKS if info == "sketch"]

SETTINGS = """\
SECRET_KEY = "recipe-test"
DATABASES = {{"default": {database!r}}}
INSTALLED_APPS = ["django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
                  "django.contrib.sessions", "django.contrib.messages", "rest_framework", "shop"]
MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware",
              "django.contrib.auth.middleware.AuthenticationMiddleware",
              "django.contrib.messages.middleware.MessageMiddleware"]
TEMPLATES = [{{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True, "OPTIONS": {{
    "context_processors": ["django.template.context_processors.request",
                           "django.contrib.auth.context_processors.auth",
                           "django.contrib.messages.context_processors.messages"]}}}}]
ROOT_URLCONF = "urls"
USE_TZ = True
"""


def run(args: list[str], cwd: Path, **env: str) -> str:
    result = subprocess.run(args, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_every_python_block_is_a_recipe_and_every_kind_is_there() -> None:
    assert all(info.startswith("recipe") or info == "sketch" for info, _ in BLOCKS), [info for info, _ in BLOCKS]
    assert len(BLOCKS) == len(SCRIPTS) + len(DJANGO_FILES) + len(DJANGO_SHELL) + len(SKETCHES)
    assert DOC.read_text().count("```python") == len(BLOCKS)  # none indented out of BLOCK's sight
    assert len(SKETCHES) == 1  # Celery's signal handler; every other block runs
    assert set(DJANGO_FILES) == {"shop/models.py", "shop/admin.py", "shop/serializers.py"}
    assert DJANGO_SHELL and len(SCRIPTS) >= 5


@pytest.mark.parametrize("code", SKETCHES)
def test_a_sketch_compiles(code: str) -> None:
    compile(code, "docs/PYTHON.md", "exec")


@pytest.mark.usefixtures("default_ids")
@pytest.mark.parametrize(
    "code", [c for c in SCRIPTS if "DATABASE_URL" not in c and "IDGEN_URL" not in c], ids=lambda c: c.split("\n")[0]
)
def test_a_recipe_runs(code: str, tmp_path: Path) -> None:
    run([sys.executable, "-c", code], tmp_path)


@pytest.mark.parametrize("code", [c for c in SCRIPTS if "IDGEN_URL" in c], ids=["async"])
def test_a_recipe_of_servers_runs(code: str, tmp_path: Path) -> None:
    with ServerProcess("--state-dir", str(tmp_path / "state")) as server:
        server.started()
        run([sys.executable, "-c", code], tmp_path, IDGEN_URL=f"http://127.0.0.1:{server.port}")


@pytest.mark.parametrize("code", [c for c in SCRIPTS if "DATABASE_URL" in c], ids=["core", "orm"])
def test_a_database_recipe_runs_and_runs_again(code: str, db_url: str, tmp_path: Path) -> None:
    """Twice on one database, as a reader runs a recipe again: the ORM recipe counted every row and failed."""
    for _ in range(2):
        run([sys.executable, "-c", code], tmp_path, DATABASE_URL=db_url)


def test_the_django_recipes_make_a_migration_that_applies_and_then_run(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    for path, code in DJANGO_FILES.items():
        (tmp_path / path).write_text(code)
    (tmp_path / "settings.py").write_text(SETTINGS.format(database=database(db_url)))
    (tmp_path / "urls.py").write_text("urlpatterns = []\n")
    manage = [sys.executable, "-m", "django"]
    env = {"DJANGO_SETTINGS_MODULE": "settings", "PYTHONPATH": str(tmp_path)}

    run([*manage, "makemigrations", "shop"], tmp_path, **env)
    migration = (tmp_path / "shop" / "migrations" / "0001_initial.py").read_text()
    assert "idgen.django.IdField(primary_key=True, serialize=False)" in migration
    assert "idgen.django.IdField(blank=True, null=True)" in migration
    run([*manage, "makemigrations", "--check", "--dry-run"], tmp_path, **env)  # deconstruct is stable
    run([*manage, "migrate"], tmp_path, **env)
    for code in DJANGO_SHELL:
        run([*manage, "shell", "-c", code], tmp_path, **env)
