"""What the fault scenarios are made of: real ``idgen serve`` processes, ZooKeeper namespaces, a live clock offset
(libfaketime) and a network namespace that can be cut off from ZooKeeper.

Shared by the fixtures in ``conftest.py`` and by ``loadtest/soak.py``; it imports nothing from pytest.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from loadclient import Target

from idgen import DEFAULT_LAYOUT, Generator, Layout
from idgen.leases.zookeeper import ZkLease, connected

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")

#: One worker ID: every holder of the namespace reuses it, so a replacement must start above the old fence.
SOLO = Layout("solo", (("time", 41), ("sequence", 22)), epoch_ms=DEFAULT_LAYOUT.epoch_ms)
#: Four worker IDs, to take them all.
TINY = Layout("tiny", (("time", 41), ("worker_id", 2), ("sequence", 20)), epoch_ms=DEFAULT_LAYOUT.epoch_ms)


def wait_until(
    probe: Callable[[], T | None], timeout: float = 30.0, what: str = "a condition", interval: float = 0.05
) -> T:
    """Poll ``probe`` until it returns something truthy, and return that; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# -- idgen servers ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: Any  # the parsed JSON, or None


class IdgenServer:
    """``idgen serve`` as a child process on a free port (``--port 0``; the port comes from the ``listening``
    event). Its stderr, JSON lines, is collected into :attr:`events`. ``netns`` runs it in that network namespace
    (``ip netns exec`` execs, so :attr:`proc` is the server itself); ``env`` is added to its environment only."""

    def __init__(
        self,
        name: str,
        *args: str,
        host: str = "127.0.0.1",
        env: Mapping[str, str] | None = None,
        netns: str | None = None,
    ) -> None:
        self.name, self.host, self.port = name, host, 0
        command = [sys.executable, "-m", "idgen.cli", "serve", "--host", host, "--port", "0", *args]
        if netns is not None:
            command = ["ip", "netns", "exec", netns, *command]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            cwd=REPO,
        )
        self.pid = self.proc.pid
        self.events: list[dict[str, Any]] = []
        self._eof = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=f"log-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"not_json": line.decode(errors="replace").rstrip()}
            with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def event(self, name: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        """The first log event ``name`` with ``fields``; waits for it, and fails if the process exits first."""

        def found() -> dict[str, Any] | None:
            return next((e for e in self.events if e.get("event") == name and fields.items() <= e.items()), None)

        with self._changed:
            self._changed.wait_for(lambda: found() is not None or self._eof, timeout=timeout)
            event = found()
        if event is None:
            raise AssertionError(f"{self.name}: no {name!r} event; exit code {self.proc.poll()}; log:\n{self.log}")
        return event

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(json.dumps(e) for e in self.events[-30:])

    @property
    def target(self) -> Target:
        assert self.port, f"{self.name} is not listening yet"
        return Target(self.name, self.host, self.port)

    def listening(self, timeout: float = 60.0) -> Target:
        self.port = self.event("listening", timeout)["port"]
        return self.target

    def get(self, path: str, timeout: float = 5.0) -> Reply:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        return Reply(response.status, response.headers, data)

    def info(self) -> dict[str, Any]:
        reply = self.get("/info")
        assert reply.status == 200, reply
        return reply.body

    def ready(self) -> bool:
        try:
            return self.get("/readyz", timeout=2).status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 30.0) -> Target:
        """Wait until it listens and ``/readyz`` answers 200."""
        target = self.listening(timeout)
        wait_until(self.ready, timeout, f"{self.name} to be ready")
        return target

    def wait_exit(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def freeze(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (a clean stop: the lease is released) and the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def close(self) -> None:
        """Stop it if it still runs: SIGCONT (in case it is frozen), SIGTERM, SIGKILL if that does not do."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)


def close_all(servers: list[IdgenServer]) -> None:
    """Stop every server, in parallel: SIGTERM all, then wait for each."""
    for server in servers:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGCONT)
            server.proc.terminate()
    for server in servers:
        server.close()


# -- ZooKeeper ----------------------------------------------------------------------------------------------


def create_namespace(hosts: str, namespace: str, layout: Layout) -> None:
    """Bind ``namespace`` to ``layout``: lease a worker ID in-process, mint one ID (so that the release brings its
    fence down to now) and release it. Servers started without ``--layout`` then take this layout."""
    with Generator(layout, ZkLease(layout, hosts, namespace)) as generator:
        generator.next_id()


@contextlib.contextmanager
def zk_client(hosts: str) -> Iterator[KazooClient]:
    """A kazoo client of the test's own, to watch the namespace."""
    with connected(hosts) as client:
        yield client


def read_fence(client: KazooClient, namespace: str, worker_id: int) -> dict[str, Any]:
    """The durable fence record of ``worker_id``: ``{"fence_ms", "lease_id"}``."""
    data, _ = client.get(f"{namespace}/fences/{worker_id}")
    return json.loads(data)


def read_holders(client: KazooClient, namespace: str, worker_id: int) -> list[dict[str, Any]]:
    data, _ = client.get(f"{namespace}/history/{worker_id}")
    return json.loads(data)


def claim_owner(client: KazooClient, namespace: str, worker_id: int) -> int | None:
    """The pid in the live claim on ``worker_id``, ``None`` if nobody holds it."""
    try:
        data, _ = client.get(f"{namespace}/leases/{worker_id}")
    except NoNodeError:
        return None
    return json.loads(data)["pid"]


# -- the clock: libfaketime -------------------------------------------------------------------------------------


def faketime_library() -> Path | None:
    """libfaketime from the PyPI package ``libfaketime`` (Debian's 0.9.10 hangs Python 3.11's waits), or ``None``."""
    try:
        import libfaketime
    except ImportError:
        return None
    path = Path(libfaketime.__file__).parent / "vendor" / "libfaketime" / "src" / "libfaketime.so.1"
    return path if path.is_file() else None


class Faketime:
    """A wall-clock offset for one process, changed while it runs. Only the process started with :meth:`env` is
    affected (never ZooKeeper's JVM); its monotonic clock stays real."""

    def __init__(self, library: Path, directory: Path) -> None:
        self.library = library
        self.path = directory / "faketime-offset"
        self.offset_s = 0.0
        self.set(0)

    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": str(self.library),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }

    def set(self, offset_s: float) -> None:
        """Move the faked wall clock to real time + ``offset_s``: effective on the process's next clock read."""
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(f"{offset_s:+.3f}\n")
        os.replace(temporary, self.path)  # atomic: the library never reads a half-written file
        self.offset_s = offset_s


# -- the network: a namespace that can be cut off from ZooKeeper ---------------------------------------------------


def _ip(*args: str, netns: str | None = None) -> None:
    command = ["ip", *args] if netns is None else ["ip", "netns", "exec", netns, "ip", *args]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=10)


class Partition:
    """A network namespace joined to the host by two veth pairs with link-local /30 addresses.

    ``zk_host`` (host side) and the namespace's end of the first pair carry ZooKeeper traffic: :meth:`cut` takes
    the host end down, :meth:`restore` brings it up. The second pair carries HTTP from the host's load client to
    ``http_address`` in the namespace and is never cut, so the load keeps reaching the partitioned server.
    """

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.netns = f"idgen-fi-{tag}"
        self.zk_veth, self.http_veth = f"fiz{tag}", f"fih{tag}"  # host ends; at most 15 characters
        subnet = secrets.randbelow(250) + 2
        self.zk_host, self.zk_peer = f"169.254.{subnet}.1", f"169.254.{subnet}.2"
        self.http_host, self.http_address = f"169.254.{subnet}.5", f"169.254.{subnet}.6"
        self._created = False

    @staticmethod
    def available() -> str | None:
        """``None`` if network namespaces can be made here, else why not."""
        probe = f"idgen-fi-probe-{secrets.token_hex(3)}"
        try:
            _ip("netns", "add", probe)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            return f"network namespaces are not permitted here: ip netns add failed: {detail.strip()}"
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
        return None

    def create(self) -> Partition:
        try:
            _ip("netns", "add", self.netns)
            self._created = True
            for host_end, host_address, peer_address in (
                (self.zk_veth, self.zk_host, self.zk_peer),
                (self.http_veth, self.http_host, self.http_address),
            ):
                inner = "n" + host_end[1:]
                _ip("link", "add", host_end, "type", "veth", "peer", "name", inner)
                _ip("link", "set", inner, "netns", self.netns)
                _ip("addr", "add", f"{host_address}/30", "dev", host_end)
                _ip("link", "set", host_end, "up")
                _ip("addr", "add", f"{peer_address}/30", "dev", inner, netns=self.netns)
                _ip("link", "set", inner, "up", netns=self.netns)
            _ip("link", "set", "lo", "up", netns=self.netns)
        except BaseException:
            self.delete()
            raise
        return self

    def cut(self) -> None:
        _ip("link", "set", self.zk_veth, "down")

    def restore(self) -> None:
        _ip("link", "set", self.zk_veth, "up")

    def delete(self) -> None:
        """Remove both veth pairs and the namespace; idempotent, and quiet about what is already gone."""
        for veth in (self.zk_veth, self.http_veth):
            subprocess.run(["ip", "link", "del", veth], capture_output=True, timeout=10)
        if self._created:
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, timeout=10)
            self._created = False

    def exists(self) -> bool:
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=10).stdout
        return self.netns in names or self.zk_veth in links or self.http_veth in links
