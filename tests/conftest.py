"""Shared pytest fixtures for the idgen tests."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tiers
from etcdharness import TEST_CREDENTIALS as ETCD_TEST_CREDENTIALS
from etcdharness import EtcdCluster, EtcdServer
from holder import HolderProcess
from pgharness import PgServer
from zkharness import TEST_CREDENTIALS, ZkEnsemble, ZkServer

import idgen
from idgen import Layout
from idgen.leases.etcd import ETCD_CREDENTIALS
from idgen.leases.zookeeper import ZK_AUTH_ENV, ZK_AUTH_FILE_ENV, connected

# Every idgen process the tests start talks to ZooKeeper with credentials, as deployments do (DEPLOY.md).
os.environ[ZK_AUTH_ENV] = TEST_CREDENTIALS
os.environ.pop(ZK_AUTH_FILE_ENV, None)
os.environ[ETCD_CREDENTIALS.auth_env] = ETCD_TEST_CREDENTIALS  # and to etcd likewise
os.environ.pop(ETCD_CREDENTIALS.auth_file_env, None)

# --- tiers (tests/tiers.py): each test is marked for the components it needs, or `quick` ---

tiers.install_guard()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tiers.mark(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with tiers.guarding(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with tiers.guarding(item):
        return (yield)


# --- worker processes ---


@pytest.fixture
def spawn_holder() -> Iterator[Callable[..., HolderProcess]]:
    """Start real worker processes (see tests/holder.py); any still running at the end are killed."""
    started: list[HolderProcess] = []

    def spawn(layout: Layout, **config: Any) -> HolderProcess:
        started.append(HolderProcess(layout, **config))
        return started[-1]

    yield spawn
    for holder in started:
        holder.kill()


# --- ZooKeeper ---
# Real ZooKeeper servers from Debian's `zookeeper` package, started by the tests
# themselves (see tests/zkharness.py).  Every fixture binds 127.0.0.1 on free ports;
# tests never connect to a server they did not start.

ZK_NAMESPACE_ROOT = "/idgen-test"


@pytest.fixture(scope="session")
def zk_server() -> Iterator[ZkServer]:
    """One standalone server (tickTime 500 ms) shared by the whole session.

    Do not kill, pause or restart it: use ``fresh_zk`` for that.  Isolate data with
    ``zk_namespace``.
    """
    server = ZkServer(name="zk-session")
    try:
        server.start()
        with connected(server.hosts) as client:
            client.ensure_path(ZK_NAMESPACE_ROOT)  # open to all, so tests with and without credentials share it
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def zk_hosts(zk_server: ZkServer) -> str:
    """Connection string of the shared session server, e.g. ``"127.0.0.1:40123"``."""
    return zk_server.hosts


@pytest.fixture
def zk_namespace(zk_server: ZkServer) -> str:
    """A unique absolute path (not a chroot) for one test on the shared server.

    For example ``/idgen-test/3f2b...``.  The node is not created; code under test (or
    the test) creates it, e.g. with ``client.ensure_path(zk_namespace)``.  Nothing is
    cleaned up: the session server and its data directory go away at the end.
    """
    return f"{ZK_NAMESPACE_ROOT}/{uuid.uuid4().hex}"


@pytest.fixture
def fresh_zk() -> Iterator[ZkServer]:
    """A dedicated standalone server this test may kill, pause, resume or restart."""
    server = ZkServer(name="zk-fresh")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def zk_ensemble() -> Iterator[ZkEnsemble]:
    """A dedicated 3-node ensemble with an elected leader; members may be killed etc."""
    ensemble = ZkEnsemble(3)
    try:
        ensemble.start()
        yield ensemble
    finally:
        ensemble.stop()


# --- end ZooKeeper ---


# --- etcd ---
# Real etcd members from Debian's `etcd-server` package, started by the tests (see tests/etcdharness.py), with auth
# enabled: the `idgen` user may read and write only under /idgen.

ETCD_NAMESPACE_ROOT = "/idgen-test"


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """One single-member cluster shared by the whole session: never kill or pause it (use ``etcd_cluster``)."""
    server = EtcdServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def etcd_endpoints(etcd_server: EtcdServer) -> str:
    return etcd_server.endpoints


@pytest.fixture
def etcd_namespace() -> str:
    """A unique namespace (key prefix) for one test on the shared server, e.g. ``/idgen-test/3f2b...``."""
    return f"{ETCD_NAMESPACE_ROOT}/{uuid.uuid4().hex}"


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    """A dedicated 3-member cluster whose members a test may kill, pause or restart."""
    cluster = EtcdCluster(3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


# --- end etcd ---


# --- PostgreSQL ---
# A real server from Debian's `postgresql` package, started by the tests (see tests/pgharness.py).


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server (the newest Debian installed) for the whole session; isolate data with ``pg_database``."""
    with PgServer() as server:
        yield server


@pytest.fixture
def pg_database(pg_server: PgServer) -> str:
    """The name of a new, empty database on the session server, for one test."""
    return pg_server.create_database(f"t_{uuid.uuid4().hex}")


# --- databases for the framework integrations ---


@pytest.fixture(scope="session")
def default_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("idgen-default-state")


@pytest.fixture
def default_ids(monkeypatch: pytest.MonkeyPatch, default_state_dir: Path) -> Iterator[None]:
    """``idgen.next_id()`` leases from a local state directory of this session (not ``~/.local/state``), which
    processes the test starts inherit; the default source is closed (its lease released) after the test."""
    monkeypatch.setenv("IDGEN_STATE_DIR", str(default_state_dir))
    idgen.reset_default()
    yield
    idgen.reset_default()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, default_ids: None) -> str:
    """A SQLAlchemy URL of an empty database: a SQLite file, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'app.db'}"
    pg_server: PgServer = request.getfixturevalue("pg_server")
    return pg_server.url(request.getfixturevalue("pg_database"))


@pytest.fixture(scope="session")
def django_site(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Django set up in this process (tests/djangosite.py) over two real databases with their tables created:
    ``default`` (a SQLite file) and ``postgresql``. Returns ``DATABASES``, for spawned workers."""
    from django.core.management import call_command
    from djangosite import configure, database

    databases = {
        "default": database(f"sqlite:///{tmp_path_factory.mktemp('django') / 'site.db'}"),
        "postgresql": database(pg_server.url(pg_server.create_database("django_site"))),
    }
    configure(databases)
    for alias in databases:
        call_command("migrate", run_syncdb=True, database=alias, verbosity=0)
    return databases
