"""Real ZooKeeper servers for tests, started from Debian's ``zookeeper`` package.

The harness starts the ZooKeeper JVM directly (``QuorumPeerMain``), never through
``zkServer.sh``, binds every port to 127.0.0.1 and keeps all state in a private temp
directory that is removed by :meth:`ZkServer.stop`.

Typical use::

    with ZkServer() as zk:                 # standalone, ready when the block starts
        client = KazooClient(hosts=zk.hosts)
        ...
        zk.kill()                          # SIGKILL; data directory kept
        zk.restart()                       # same dataDir and ports

    with ZkEnsemble(3) as ens:             # ready when one leader + followers
        old = ens.leader()
        old.kill()
        new = ens.wait_for_leader(exclude=old)

Readiness is the ``srvr`` four-letter word answering with a ``Mode:`` line; an open
port alone is not enough.  ``tickTime`` defaults to 500 ms, so the server grants session
timeouts from 1 s (2 x tick) to 10 s (20 x tick).

This module deliberately does not import pytest; ``tests/conftest.py`` wraps it in
fixtures.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import tiers

__all__ = [
    "DEFAULT_JVM_OPTIONS",
    "JAVA_DIR",
    "TEST_CREDENTIALS",
    "ZkEnsemble",
    "ZkServer",
    "four_letter_word",
    "free_port",
    "zookeeper_classpath",
]

#: Where Debian installs jars (``dpkg -L libzookeeper-java``).
JAVA_DIR = Path("/usr/share/java")

#: JVM options used unless a server is given its own.  Measured on 2 cores against plain
#: ``-Xmx256m``: a 3-node quorum forms in ~1.1-1.7 s instead of ~1.6-1.75 s, with ~15 % less
#: CPU and ~8 MiB less RSS per JVM (~58 MiB); a warm standalone start stays ~0.35-0.6 s.
DEFAULT_JVM_OPTIONS: tuple[str, ...] = (
    "-Xmx256m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Xss512k",
    "-XX:-UsePerfData",
    "-Djava.net.preferIPv4Stack=true",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
)

#: The digest credentials (``user:password``) idgen uses in the tests, the fault suite and the load test, as an
#: operator sets them in ``IDGEN_ZK_AUTH``: idgen refuses ZooKeeper without credentials unless told otherwise.
TEST_CREDENTIALS = "idgen-test:not-a-secret"

_LOCALHOST = "127.0.0.1"
_MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
_MODE_RE = re.compile(r"^Mode:\s*(\S+)", re.MULTILINE)
_POLL_INTERVAL = 0.05

# Every server that may still own a JVM; killed at interpreter exit so an aborted test
# run does not leave ZooKeeper processes behind (they run in their own session, so a
# Ctrl-C in the terminal does not reach them).
_LIVE: weakref.WeakSet[ZkServer] = weakref.WeakSet()


def zookeeper_classpath(java_dir: str | os.PathLike[str] = JAVA_DIR) -> str:
    """Return the classpath for running a ZooKeeper server from Debian's jars.

    The list is ``zookeeper.jar``, every jar named in its manifest ``Class-Path`` that
    exists (``jline.jar`` is only needed by the CLI and is usually absent), then
    ``slf4j-simple.jar`` when installed so the server writes its log to stderr.

    Raises:
        RuntimeError: ``zookeeper.jar`` is not installed (install the Debian package
            ``zookeeper``, which pulls in ``libzookeeper-java``), or its manifest
            names a required jar that is missing.
    """
    java_dir = Path(java_dir)
    main_jar = java_dir / "zookeeper.jar"
    if not main_jar.is_file():
        raise RuntimeError(
            f"{main_jar} not found: install the Debian package 'zookeeper' "
            "(apt-get install zookeeper; it provides libzookeeper-java)"
        )
    jars = [main_jar]
    for entry in _manifest_class_path(main_jar):
        dep = Path(entry) if os.path.isabs(entry) else java_dir / entry
        if dep.is_file():
            jars.append(dep)
        elif dep.name.startswith(("zookeeper-jute", "netty-", "slf4j-api")):
            raise RuntimeError(f"{dep} (needed by {main_jar.name}) not found: reinstall the Debian package 'zookeeper'")
    simple = java_dir / "slf4j-simple.jar"
    if simple.is_file():
        jars.append(simple)
    return os.pathsep.join(str(j) for j in dict.fromkeys(jars))


def _manifest_class_path(jar: Path) -> list[str]:
    with zipfile.ZipFile(jar) as zf:
        raw = zf.read("META-INF/MANIFEST.MF").decode("utf-8")
    # Manifest lines are wrapped at 72 bytes; a continuation line starts with a space.
    unfolded = raw.replace("\r\n", "\n").replace("\n ", "")
    for line in unfolded.splitlines():
        if line.startswith("Class-Path:"):
            return line.split(":", 1)[1].split()
    return []


def _java_executable() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("no 'java' on PATH: install the Debian package 'openjdk-17-jre-headless'")
    return java


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    return _free_ports(1)[0]


def _free_ports(count: int) -> list[int]:
    # Hold all sockets open until every port is chosen so one call never repeats a port.
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((_LOCALHOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def four_letter_word(port: int, command: str = "srvr", *, host: str = _LOCALHOST, timeout: float = 0.5) -> str | None:
    """Send a four-letter command and return the reply, or None if none came in ``timeout``.

    A paused (SIGSTOPped) server still accepts the TCP connection in the kernel but never
    answers, so the timeout also bounds that case.
    """
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(command.encode("ascii"))
            chunks: list[bytes] = []
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                sock.settimeout(remaining)
                data = sock.recv(4096)
                if not data:
                    break
                chunks.append(data)
    except OSError:
        return None
    return b"".join(chunks).decode("utf-8", "replace")


class _PortInUse(RuntimeError):
    """The server exited because its client port was taken."""


class ZkServer:
    """One ZooKeeper server process with its own temp directory, ``zoo.cfg`` and log.

    Without ``quorum`` the server runs standalone.  :class:`ZkEnsemble` passes ``quorum``
    (``{server_id: (peer_port, election_port)}``) and ``server_id`` to build members.

    Life cycle: :meth:`start` -> (:meth:`kill` | :meth:`pause`/:meth:`resume` |
    :meth:`restart`)* -> :meth:`stop`.  ``stop()`` removes the directory, after which
    the server cannot be started again.  The log of every run is appended to
    :attr:`log_path`.

    Args:
        tick_time: ZooKeeper ``tickTime`` in ms; sessions may last 2x to 20x this.
        client_port: port for clients, on 127.0.0.1; a free one by default.
        server_id: ``myid`` of an ensemble member (requires ``quorum``).
        quorum: every member's ``(peer_port, election_port)`` by server id.
        init_limit: ``initLimit`` in ticks (ensemble only).
        sync_limit: ``syncLimit`` in ticks (ensemble only).  A frozen leader is noticed
            after about ``sync_limit * tick_time``.
        force_sync: fsync the transaction log.  Off by default: data still survives a
            SIGKILL of the server (the page cache keeps it), and tests run faster.
        extra_config: more ``zoo.cfg`` lines; override the generated ones.
        jvm_options: JVM options; :data:`DEFAULT_JVM_OPTIONS` by default.
        start_timeout: default bound for :meth:`start` in seconds.
        name: prefix of the temp directory and label in error messages.
        keep_dir: keep the temp directory on :meth:`stop` (for debugging).
    """

    def __init__(
        self,
        *,
        tick_time: int = 500,
        client_port: int | None = None,
        server_id: int | None = None,
        quorum: Mapping[int, tuple[int, int]] | None = None,
        init_limit: int = 10,
        sync_limit: int = 5,
        force_sync: bool = False,
        extra_config: Mapping[str, str] | None = None,
        jvm_options: Sequence[str] | None = None,
        start_timeout: float = 30.0,
        name: str = "zk",
        keep_dir: bool = False,
    ) -> None:
        if (server_id is None) != (quorum is None):
            raise ValueError("server_id and quorum go together")
        if quorum is not None and server_id not in quorum:
            raise ValueError(f"server_id {server_id} is not in quorum {sorted(quorum)}")
        self.tick_time = tick_time
        self.client_port = client_port if client_port is not None else free_port()
        # A port we picked may be taken by someone else before the JVM binds it; then the
        # first start retries on a new one.  An explicit port is never changed.
        self._may_repick_port = client_port is None and quorum is None
        self.server_id = server_id
        self.quorum = dict(quorum) if quorum is not None else None
        self.init_limit = init_limit
        self.sync_limit = sync_limit
        self.force_sync = force_sync
        self.extra_config = dict(extra_config or {})
        self.jvm_options = tuple(jvm_options if jvm_options is not None else DEFAULT_JVM_OPTIONS)
        self.start_timeout = start_timeout
        self.name = name if server_id is None else f"{name}{server_id}"
        self.keep_dir = keep_dir

        self.base_dir = Path(tempfile.mkdtemp(prefix=f"idgen-{self.name}-"))
        self.data_dir = self.base_dir / "data"
        self.config_path = self.base_dir / "zoo.cfg"
        self.log_path = self.base_dir / "zookeeper.log"
        self.data_dir.mkdir()
        if server_id is not None:
            (self.data_dir / "myid").write_text(f"{server_id}\n")
        self.config_path.write_text(self._render_config())

        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._paused = False
        self._closed = False
        self._lock = threading.RLock()
        _LIVE.add(self)

    # -- configuration -------------------------------------------------------------

    def _render_config(self) -> str:
        cfg: dict[str, str] = {
            "tickTime": str(self.tick_time),
            "dataDir": str(self.data_dir),
            "clientPort": str(self.client_port),
            "clientPortAddress": _LOCALHOST,
            "admin.enableServer": "false",
            "4lw.commands.whitelist": "*",
            "maxClientCnxns": "0",
            "forceSync": "yes" if self.force_sync else "no",
        }
        if self.quorum is not None:
            cfg["initLimit"] = str(self.init_limit)
            cfg["syncLimit"] = str(self.sync_limit)
            for sid, (peer, election) in sorted(self.quorum.items()):
                cfg[f"server.{sid}"] = f"{_LOCALHOST}:{peer}:{election}"
        cfg.update(self.extra_config)
        return "".join(f"{k}={v}\n" for k, v in cfg.items())

    @property
    def hosts(self) -> str:
        """Connection string for clients: ``"127.0.0.1:<client_port>"``."""
        return f"{_LOCALHOST}:{self.client_port}"

    @property
    def pid(self) -> int | None:
        """PID of the JVM while it runs (also while paused), else None."""
        return self._proc.pid if self.running else None

    @property
    def running(self) -> bool:
        """True while the JVM process exists (paused counts as running)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        return self._paused and self.running

    # -- life cycle ----------------------------------------------------------------

    def start(self, *, wait: bool = True, timeout: float | None = None) -> ZkServer:
        """Start the JVM; with ``wait`` block until ``srvr`` reports a ``Mode``.

        A lone ensemble member reports no mode until a quorum forms, so
        :class:`ZkEnsemble` starts its members with ``wait=False``.  On its first
        start, a standalone server whose free port was taken meanwhile retries on
        another (``client_port`` and ``hosts`` change then).

        Raises:
            RuntimeError: the server exited or was not ready within ``timeout``
                (default ``start_timeout``); the message has the tail of the log.
                The process is killed in that case; the directory is kept.
        """
        tiers.check_may_start("zookeeper", "a ZkServer")
        attempts = 3 if (wait and self._may_repick_port) else 1
        self._may_repick_port = False  # later starts keep their ports
        for attempt in range(1, attempts + 1):
            self._spawn()
            if not wait:
                return self
            try:
                self.wait_ready(timeout)
            except _PortInUse:
                if attempt == attempts:
                    raise
                self.client_port = free_port()
                self.config_path.write_text(self._render_config())
                continue
            break
        return self

    def _spawn(self) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name}: stopped and cleaned up; create a new server")
            if self.running:
                raise RuntimeError(f"{self.name}: already running (pid {self._proc.pid if self._proc else '?'})")
            cmd = [
                _java_executable(),
                *self.jvm_options,
                "-cp",
                zookeeper_classpath(),
                _MAIN_CLASS,
                str(self.config_path),
            ]
            with open(self.log_path, "ab") as log:
                self._log_offset = log.tell()
                log.write(f"==== {time.strftime('%H:%M:%S')} start: {' '.join(cmd)}\n".encode())
                log.flush()
                self._proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.base_dir,
                    start_new_session=True,
                )
            self._paused = False

    def wait_ready(self, timeout: float | None = None) -> str:
        """Block until ``srvr`` reports a mode and return it; see :meth:`start`."""
        timeout = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                rc = self._proc.returncode if self._proc is not None else None
                error = _PortInUse if "Address already in use" in self._log_this_run() else RuntimeError
                raise error(f"{self.name}: ZooKeeper exited (rc={rc}) before it was ready\n{self.log_tail()}")
            mode = self.mode(timeout=0.25)
            if mode is not None:
                return mode
            if time.monotonic() >= deadline:
                self._signal_and_reap(signal.SIGKILL, 5.0)
                raise RuntimeError(f"{self.name}: ZooKeeper not ready after {timeout:.1f}s\n{self.log_tail()}")
            time.sleep(_POLL_INTERVAL)

    def stop(self, *, timeout: float = 5.0, cleanup: bool = True) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` s; then remove the temp directory.

        Idempotent.  With ``cleanup=False`` the directory is kept so that
        :meth:`restart` can follow.
        """
        with self._lock:
            self._signal_and_reap(signal.SIGTERM, timeout)
            if cleanup and not self._closed:
                self._closed = True
                _LIVE.discard(self)
                if not self.keep_dir:
                    shutil.rmtree(self.base_dir, ignore_errors=True)

    def kill(self, *, timeout: float = 5.0) -> None:
        """SIGKILL the JVM and wait for it to exit.  The data directory is kept."""
        with self._lock:
            self._signal_and_reap(signal.SIGKILL, timeout)

    def pause(self) -> None:
        """Freeze the JVM with SIGSTOP (clients and peers see it hang, not close)."""
        with self._lock:
            if not self.running:
                raise RuntimeError(f"{self.name}: not running")
            assert self._proc is not None
            self._proc.send_signal(signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """Unfreeze the JVM with SIGCONT."""
        with self._lock:
            if not self.running:
                raise RuntimeError(f"{self.name}: not running")
            assert self._proc is not None
            self._proc.send_signal(signal.SIGCONT)
            self._paused = False

    def restart(self, *, wait: bool = True, timeout: float | None = None) -> ZkServer:
        """Start again with the same dataDir and ports; a running JVM is stopped first."""
        with self._lock:
            if self.running:
                self.stop(cleanup=False)
        return self.start(wait=wait, timeout=timeout)

    def _signal_and_reap(self, sig: signal.Signals, timeout: float) -> None:
        self._send(sig)
        self._reap(timeout)

    def _send(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.send_signal(sig)
            if self._paused and sig != signal.SIGKILL:
                proc.send_signal(signal.SIGCONT)  # a stopped JVM cannot act on SIGTERM
        except ProcessLookupError:
            pass

    def _reap(self, timeout: float) -> None:
        """Wait for the JVM to exit, SIGKILLing it after ``timeout`` s."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self._paused = False

    # -- inspection ----------------------------------------------------------------

    def mode(self, *, timeout: float = 0.5) -> str | None:
        """``standalone``, ``leader``, ``follower`` ... per ``srvr``; None if not serving."""
        reply = four_letter_word(self.client_port, "srvr", timeout=timeout)
        if reply is None:
            return None
        match = _MODE_RE.search(reply)
        return match.group(1) if match else None

    def _log_this_run(self) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                return log.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """Last ``lines`` lines of the server log (empty if there is none), without the harness's own ``srvr`` polls
        (one every 50 ms while it waits, which would hide what the server did)."""
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join([line for line in text.splitlines() if "Processing srvr command" not in line][-lines:])

    def __repr__(self) -> str:
        state = "closed" if self._closed else "paused" if self.paused else "running" if self.running else "stopped"
        return f"<ZkServer {self.name} {self.hosts} {state}>"

    def __enter__(self) -> ZkServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class ZkEnsemble:
    """``size`` ZooKeeper servers forming one quorum, all on 127.0.0.1.

    Args:
        size: number of servers (default 3).
        tick_time, init_limit, sync_limit, force_sync, extra_config, jvm_options:
            passed to every :class:`ZkServer`.
        start_timeout: default bound for :meth:`start`.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        tick_time: int = 500,
        init_limit: int = 10,
        sync_limit: int = 5,
        force_sync: bool = False,
        extra_config: Mapping[str, str] | None = None,
        jvm_options: Sequence[str] | None = None,
        start_timeout: float = 30.0,
        keep_dir: bool = False,
    ) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        ports = _free_ports(3 * size)
        quorum = {sid: (ports[3 * (sid - 1) + 1], ports[3 * (sid - 1) + 2]) for sid in range(1, size + 1)}
        self.start_timeout = start_timeout
        self.servers: list[ZkServer] = []
        try:
            for sid in range(1, size + 1):
                self.servers.append(
                    ZkServer(
                        tick_time=tick_time,
                        client_port=ports[3 * (sid - 1)],
                        server_id=sid,
                        quorum=quorum,
                        init_limit=init_limit,
                        sync_limit=sync_limit,
                        force_sync=force_sync,
                        extra_config=extra_config,
                        jvm_options=jvm_options,
                        start_timeout=start_timeout,
                        name="zkens",
                        keep_dir=keep_dir,
                    )
                )
        except BaseException:
            self.stop()
            raise

    @property
    def hosts(self) -> str:
        """Comma-joined connection string of every member."""
        return ",".join(s.hosts for s in self.servers)

    def modes(self, *, timeout: float = 0.5) -> dict[ZkServer, str | None]:
        """Mode of every member per ``srvr`` (None for a dead, paused or electing one)."""
        return {s: s.mode(timeout=timeout) for s in self.servers}

    def start(self, *, timeout: float | None = None) -> ZkEnsemble:
        """Start every member; wait until exactly one is ``leader`` and all others ``follower``.

        Raises:
            RuntimeError: no such quorum within ``timeout``; every member is stopped
                (directories kept) and the message has the tail of each log.
        """
        for s in self.servers:
            s.start(wait=False)
        try:
            self._wait_for(lambda: self._settled(self.servers), timeout, "a leader and all followers")
        except BaseException:
            for s in self.servers:
                s.kill()
            raise
        return self

    def leader(self) -> ZkServer:
        """The one member that reports ``leader`` now.

        Raises:
            RuntimeError: there is not exactly one (e.g. during an election).
        """
        leaders = [s for s, m in self.modes().items() if m == "leader"]
        if len(leaders) != 1:
            raise RuntimeError(f"expected one leader, modes are {self._describe()}")
        return leaders[0]

    def followers(self) -> list[ZkServer]:
        """Members that report ``follower`` now."""
        return [s for s, m in self.modes().items() if m == "follower"]

    def wait_for_leader(self, *, exclude: ZkServer | Iterable[ZkServer] = (), timeout: float | None = None) -> ZkServer:
        """Wait until the live members outside ``exclude`` agree on exactly one leader.

        Members whose JVM is not running are left out automatically; pass paused members
        in ``exclude``.  Every remaining member must report ``leader`` or ``follower``.

        Raises:
            RuntimeError: no such leader within ``timeout`` (default 15 s).
        """
        excluded = {exclude} if isinstance(exclude, ZkServer) else set(exclude)

        def check() -> ZkServer | None:
            candidates = [s for s in self.servers if s not in excluded and s.running]
            return self._settled(candidates)

        return self._wait_for(check, 15.0 if timeout is None else timeout, "a new leader")

    @staticmethod
    def _settled(candidates: Sequence[ZkServer]) -> ZkServer | None:
        modes = [(s, s.mode(timeout=0.25)) for s in candidates]
        leaders = [s for s, m in modes if m == "leader"]
        if len(leaders) == 1 and all(m in ("leader", "follower", "observer") for _, m in modes):
            return leaders[0]
        return None

    def _wait_for(self, check: Callable[[], ZkServer | None], timeout: float | None, what: str) -> ZkServer:
        timeout = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            found = check()
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                logs = "\n".join(f"--- {s.name} ({s.log_path}) ---\n{s.log_tail(15)}" for s in self.servers)
                raise RuntimeError(f"no {what} after {timeout:.1f}s; modes: {self._describe()}\n{logs}")
            time.sleep(_POLL_INTERVAL)

    def _describe(self) -> str:
        return ", ".join(f"{s.name}={m}" for s, m in self.modes(timeout=0.25).items())

    def stop(self) -> None:
        """Stop every member and remove their directories.  Idempotent."""
        for s in self.servers:  # SIGTERM all first so they shut down in parallel
            with s._lock:
                s._send(signal.SIGTERM)
        for s in self.servers:
            with s._lock:
                s._reap(5.0)
            s.stop()

    def __enter__(self) -> ZkEnsemble:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):  # best effort at interpreter exit
            server.stop(timeout=2.0)
