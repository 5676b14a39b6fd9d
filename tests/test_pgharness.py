"""The PostgreSQL harness: a real server that starts as root or not, serves, and leaves nothing behind."""

from __future__ import annotations

import os

import psycopg
import pytest
from pgharness import PgServer

pytestmark = pytest.mark.postgres


def test_a_server_serves_sql_on_loopback_and_stop_removes_it_all() -> None:
    with PgServer() as pg:
        pg.create_database("shop")
        with psycopg.connect(pg.dsn("shop")) as conn:
            assert conn.execute("SELECT current_database(), inet_server_addr()::text").fetchone() == (
                "shop",
                "127.0.0.1/32",
            )
        pid = pg._proc.pid if pg._proc else None
        assert pid is not None
        assert os.stat(f"/proc/{pid}").st_uid != 0, "postgres refuses root: it must run as an unprivileged user"
    assert not pg.base_dir.exists()
    assert not os.path.exists(f"/proc/{pid}")


def test_the_session_server_gives_each_test_its_own_database(pg_server: PgServer, pg_database: str) -> None:
    with psycopg.connect(pg_server.dsn(pg_database)) as conn:
        conn.execute("CREATE TABLE t (id bigint PRIMARY KEY)")
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
