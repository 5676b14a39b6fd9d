"""The Django project of the idgen.django tests: ``orders_app`` plus the admin, over real databases.

``configure(databases)`` sets Django up in this process (once); a spawned worker calls it with the parent's
``databases`` to share its databases. ``database(url)`` turns a SQLAlchemy-style URL (see tests/conftest.py's
``db_url``) into Django's settings for it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import django
from django.conf import settings

SQLITE_TIMEOUT_S = 30  # writers wait for SQLite's lock instead of failing with "database is locked"


def database(url: str) -> dict[str, Any]:
    """Django's ``DATABASES`` entry for a ``sqlite:///path`` or ``postgresql+psycopg://user@host:port/db`` URL."""
    if url.startswith("sqlite:///"):
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": url.removeprefix("sqlite:///"),
                "OPTIONS": {"timeout": SQLITE_TIMEOUT_S}}  # fmt: skip
    parts = urlsplit(url)
    return {"ENGINE": "django.db.backends.postgresql", "NAME": parts.path.lstrip("/"), "USER": parts.username,
            "HOST": parts.hostname, "PORT": parts.port}  # fmt: skip


def configure(databases: dict[str, dict[str, Any]]) -> None:
    """Configure Django for ``orders_app`` with ``databases`` and set it up."""
    settings.configure(
        DEBUG=False,
        SECRET_KEY="idgen-tests-not-a-secret",
        ALLOWED_HOSTS=["testserver"],
        DATABASES=databases,
        INSTALLED_APPS=[
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
            "rest_framework",
            "orders_app",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ],
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages",
                    ]
                },
            }
        ],
        ROOT_URLCONF="orders_app.urls",
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],  # fast: tests only
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    )
    django.setup()
