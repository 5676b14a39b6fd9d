"""A real PostgreSQL server for tests, from Debian's ``postgresql`` package.

:class:`PgServer` runs ``initdb`` into a private temp directory, starts ``postgres`` on a free 127.0.0.1 port (its
socket also in that directory) and removes everything in :meth:`PgServer.stop`. PostgreSQL refuses to run as root,
so under root (CI) both run as the ``postgres`` system user (``nobody`` where there is none), which owns the directory.
Readiness is ``postmaster.pid``'s status line saying ``ready``, as ``pg_ctl -w`` reads it.

    with PgServer() as pg:
        pg.create_database("orders")
        psycopg.connect(pg.dsn("orders"))      # user "idgen", trust authentication, no password

Durability is off (``fsync``, ``synchronous_commit``, ``full_page_writes``): a throwaway server needs none of it.
This module does not import pytest; ``tests/conftest.py`` wraps it in a fixture.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType

import tiers
from zkharness import free_port

__all__ = ["PG_BIN", "PgServer"]


def _newest_pg_bin() -> Path:
    """Where Debian installs the server programs (not on PATH) of its newest PostgreSQL: /usr/lib/postgresql/<major>/bin
    (15 in bookworm)."""
    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    return max(found, key=lambda p: int(p.parent.name), default=Path("/usr/lib/postgresql/15/bin"))


PG_BIN = _newest_pg_bin()
USER = "idgen"

_LOCALHOST = "127.0.0.1"
_LIVE: weakref.WeakSet[PgServer] = weakref.WeakSet()


def _unprivileged_account() -> pwd.struct_passwd | None:
    """The account to run PostgreSQL as: None when we are not root, else ``postgres`` or ``nobody``."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and there is neither a 'postgres' nor a 'nobody' user to run PostgreSQL as")


class PgServer:
    """One ``postgres`` process with its own data directory, port and log."""

    def __init__(self, *, start_timeout: float = 30.0) -> None:
        if not (PG_BIN / "postgres").is_file():
            raise RuntimeError(f"{PG_BIN}/postgres not found: install the Debian package 'postgresql'")
        self.start_timeout = start_timeout
        self.port = free_port()
        self._account = _unprivileged_account()
        self.base_dir = Path(tempfile.mkdtemp(prefix="idgen-pg-"))
        self.data_dir = self.base_dir / "data"
        self.log_path = self.base_dir / "postgres.log"
        if self._account is not None:
            os.chown(self.base_dir, self._account.pw_uid, self._account.pw_gid)
        self._proc: subprocess.Popen[bytes] | None = None
        _LIVE.add(self)

    def dsn(self, database: str = "postgres") -> str:
        """A libpq connection string for ``database``."""
        return f"host={_LOCALHOST} port={self.port} user={USER} dbname={database}"

    def url(self, database: str = "postgres", driver: str = "psycopg") -> str:
        """A SQLAlchemy-style URL, e.g. ``postgresql+psycopg://idgen@127.0.0.1:5432/db``."""
        return f"postgresql+{driver}://{USER}@{_LOCALHOST}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (an identifier of letters, digits and ``_``) and return it."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"not a plain database name: {name!r}")
        self._run(PG_BIN / "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", f"CREATE DATABASE {name}", self.dsn())
        return name

    def _run(self, *cmd: str | os.PathLike[str]) -> None:
        result = subprocess.run(
            [str(c) for c in cmd], cwd=self.base_dir, capture_output=True, text=True, **self._as_account()
        )
        if result.returncode != 0:
            raise RuntimeError(f"{Path(cmd[0]).name} failed (rc={result.returncode}): {result.stderr.strip()}")

    def _as_account(self) -> dict[str, object]:
        if self._account is None:
            return {}
        return {"user": self._account.pw_uid, "group": self._account.pw_gid, "extra_groups": []}

    def start(self) -> PgServer:
        """``initdb`` (first start only), then start ``postgres`` and wait until it accepts connections.

        Raises:
            RuntimeError: initdb failed, or the server exited or was not ready within ``start_timeout``; the message
                has the tail of the log. The process is killed in that case.
        """
        tiers.check_may_start("postgres", "a PgServer")
        if not self.data_dir.exists():
            self._run(PG_BIN / "initdb", "-D", self.data_dir, "-A", "trust", "-U", USER, "-E", "UTF8",
                      "--locale=C", "--no-sync", "--no-instructions")  # fmt: skip
        for attempt in range(3):  # a free port may be taken before postgres binds it
            self._spawn()
            try:
                self._wait_ready()
                return self
            except _PortInUse:
                if attempt == 2:
                    raise
                self.port = free_port()
        return self

    def _spawn(self) -> None:
        options = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "max_connections": "50",
                   "listen_addresses": _LOCALHOST, "unix_socket_directories": str(self.base_dir)}  # fmt: skip
        cmd = [str(PG_BIN / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        for key, value in options.items():
            cmd += ["-c", f"{key}={value}"]
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            if self._account is not None:
                os.chown(self.log_path, self._account.pw_uid, self._account.pw_gid)
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                start_new_session=True,
                **self._as_account(),  # type: ignore[arg-type]
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        pid_file = self.data_dir / "postmaster.pid"
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                log = self._log_this_run()
                error = _PortInUse if "could not bind" in log else RuntimeError
                raise error(f"postgres exited (rc={self._proc.returncode}) before it was ready\n{log[-3000:]}")
            with contextlib.suppress(OSError):
                lines = pid_file.read_text().splitlines()
                if len(lines) >= 8 and lines[0] == str(self._proc.pid) and lines[7].strip() == "ready":
                    return
            if time.monotonic() >= deadline:
                self._stop_process(signal.SIGKILL)
                raise RuntimeError(f"postgres not ready after {self.start_timeout:g} s\n{self._log_this_run()[-3000:]}")
            time.sleep(0.02)

    def _log_this_run(self) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                return log.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _stop_process(self, sig: signal.Signals, timeout: float = 10.0) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the backends too
            proc.wait(timeout)

    def stop(self) -> None:
        """Fast shutdown (SIGINT: running transactions are rolled back), then remove the directory. Idempotent."""
        self._stop_process(signal.SIGINT)
        _LIVE.discard(self)
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> PgServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _PortInUse(RuntimeError):
    """postgres exited because its port was taken."""


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):  # best effort at interpreter exit
            server.stop()
