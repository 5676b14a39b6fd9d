"""Several real processes, forked and spawned, insert at once through Django and SQLAlchemy into real SQLite and
PostgreSQL with idgen's defaults for keys; every row arrives, no key repeats, and no two processes share a worker ID
(the forked ones inherit a default source their parent already minted from)."""

from __future__ import annotations

import multiprocessing
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from dbworkers import BULK, SINGLES, engine_for, insert_with_django, insert_with_sqlalchemy, metadata, rows

import idgen

START_METHODS = ("fork", "fork", "spawn", "spawn")


def run_workers(target: Callable[..., None], *args: Any) -> list[str]:
    """Run ``target(*args, process_name, start)`` in one process per entry of START_METHODS; fail on any failure."""
    idgen.next_id()  # the parent mints first: its forked children inherit a source in use
    start = multiprocessing.get_context("spawn").Barrier(len(START_METHODS))
    workers = []
    for n, method in enumerate(START_METHODS):
        name = f"{method}-{n}"
        workers.append(multiprocessing.get_context(method).Process(target=target, args=(*args, name, start), name=name))
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0] * len(workers), "a worker failed: see its traceback above"
    return [w.name for w in workers]


def check(stored: list[tuple[int, str]], names: list[str]) -> None:
    keys = [key for key, _ in stored]
    assert len(keys) == len(names) * (SINGLES + BULK)
    assert len(set(keys)) == len(keys), f"{len(keys) - len(set(keys))} duplicate keys"
    workers_of: dict[str, set[int]] = defaultdict(set)
    for key, process in stored:
        workers_of[process].add(idgen.decode(key)["worker"])
    assert sorted(workers_of) == sorted(names)
    all_workers = [w for ws in workers_of.values() for w in ws]
    assert len(all_workers) == len(set(all_workers)), f"processes shared a worker ID: {dict(workers_of)}"


@pytest.mark.timeout(180)
def test_sqlalchemy_processes_insert_concurrently_without_a_duplicate(db_url: str) -> None:
    engine = engine_for(db_url)
    metadata.create_all(engine)
    names = run_workers(insert_with_sqlalchemy, db_url)
    with engine.connect() as conn:
        stored = [tuple(row) for row in conn.execute(sa.select(rows.c.id, rows.c.process))]
    engine.dispose()
    check(stored, names)  # type: ignore[arg-type]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("alias", ["default", "postgresql"])
def test_django_processes_insert_concurrently_without_a_duplicate(
    django_site: dict[str, Any], default_ids: None, alias: str
) -> None:
    from django.db import connections
    from orders_app.models import Row

    Row.objects.using(alias).all().delete()
    connections.close_all()  # a forked child must not share its parent's connection (as Django advises)
    names = run_workers(insert_with_django, django_site, alias)
    check(list(Row.objects.using(alias).values_list("id", "process")), names)
