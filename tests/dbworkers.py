"""Worker processes that insert rows with their framework's idgen defaults, for tests/test_concurrent_inserts.py.

Each worker is a top-level function (spawn pickles it by name), waits at ``start`` so that all insert at once, then
inserts ``SINGLES`` rows one by one and ``BULK`` rows in bulk, every key from ``idgen.next_id()``.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from djangosite import SQLITE_TIMEOUT_S

import idgen
from idgen.sqlalchemy import IdType

SINGLES = 60
BULK = 240

metadata = sa.MetaData()
rows = sa.Table(
    "rows",
    metadata,
    sa.Column("id", IdType, primary_key=True, default=idgen.next_id),
    sa.Column("process", sa.String(40), nullable=False),
)


def engine_for(url: str) -> sa.Engine:
    return sa.create_engine(url, connect_args={"timeout": SQLITE_TIMEOUT_S} if url.startswith("sqlite") else {})


def insert_with_sqlalchemy(url: str, process: str, start: Any) -> None:
    engine = engine_for(url)
    start.wait()
    for _ in range(SINGLES):
        with engine.begin() as conn:
            conn.execute(rows.insert().values(process=process))
    with engine.begin() as conn:
        conn.execute(rows.insert(), [{"process": process}] * BULK)  # executemany
    engine.dispose()


def insert_with_django(databases: dict[str, Any], alias: str, process: str, start: Any) -> None:
    from django.conf import settings

    if not settings.configured:  # spawned; a forked worker has its parent's settings (and no open connection)
        from djangosite import configure

        configure(databases)
    from orders_app.models import Row

    start.wait()
    for _ in range(SINGLES):
        Row.objects.using(alias).create(process=process)
    Row.objects.using(alias).bulk_create([Row(process=process) for _ in range(BULK)], batch_size=80)
