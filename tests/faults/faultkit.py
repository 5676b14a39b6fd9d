"""What the fault scenarios are made of: real ``idgen serve`` processes, ZooKeeper namespaces, a live clock offset
(libfaketime) and a network namespace that can be cut off from ZooKeeper.

Shared by the fixtures in ``conftest.py`` and by ``loadtest/soak.py``; it imports nothing from pytest.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from loadclient import Record, Target
from serverproc import ServerProcess, wait_until
from zkharness import TEST_CREDENTIALS

from idgen import DEFAULT_LAYOUT, Generator, Layout
from idgen.leases.zookeeper import ZK_AUTH_ENV, ZkLease, connected

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")

#: One worker ID: every holder of the namespace reuses it, so a replacement must start above the old fence.
SOLO = Layout("solo", (("time", 41), ("sequence", 22)), epoch_ms=DEFAULT_LAYOUT.epoch_ms)
#: Four worker IDs, to take them all.
TINY = Layout("tiny", (("time", 41), ("worker_id", 2), ("sequence", 20)), epoch_ms=DEFAULT_LAYOUT.epoch_ms)


# -- idgen servers ---------------------------------------------------------------------------------------------


class IdgenServer(ServerProcess):
    """A named server of a scenario: :class:`ServerProcess` plus the load client's target, readiness and the
    signals the scenarios send. It talks to ZooKeeper with :data:`TEST_CREDENTIALS`, as deployments do. ``command``
    runs another server that logs ``listening`` and answers ``/id``, ``/readyz`` and ``/info`` alike (gunicorn)."""

    def __init__(
        self,
        name: str,
        *args: str,
        host: str = "127.0.0.1",
        command: list[str] | None = None,
        env: Mapping[str, str] | None = None,
        netns: str | None = None,
    ) -> None:
        env = {ZK_AUTH_ENV: TEST_CREDENTIALS, **(env or {})}
        super().__init__(*args, name=name, host=host, command=command, env=env, netns=netns)

    @property
    def target(self) -> Target:
        assert self.port, f"{self.name} is not listening yet"
        return Target(self.name, self.host, self.port)

    def listening(self, timeout: float = 60.0) -> Target:
        self.started(timeout)
        return self.target

    def info(self) -> dict[str, Any]:
        reply = self.get("/info", timeout=5)
        assert reply.status == 200, reply
        return reply.json()

    def ready(self) -> bool:
        try:
            return self.get("/readyz", timeout=2).status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 30.0) -> Target:
        """Wait until it listens and ``/readyz`` answers 200."""
        target = self.listening(timeout)
        wait_until(self.ready, timeout, f"{self.name} to be ready", interval=0.05)
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
    with Generator(layout, ZkLease(layout, hosts, namespace, auth=TEST_CREDENTIALS)) as generator:
        generator.next_id()


@contextlib.contextmanager
def zk_client(hosts: str) -> Iterator[KazooClient]:
    """A kazoo client of the test's own, with idgen's credentials, to watch the namespace."""
    with connected(hosts, TEST_CREDENTIALS) as client:
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


# -- the zombie scenarios (2 on ZooKeeper, 18b on etcd) ----------------------------------------------------------


def lost_lease(server: IdgenServer) -> dict[str, Any] | None:
    """``/info``'s lease once ``server`` reports it lost and is not ready, else None."""
    info = server.info()
    return info["lease"] if info["lease"]["state"] == "lost" and not info["ready"] else None


def held_again(server: IdgenServer, old_lease_id: str) -> dict[str, Any] | None:
    """``/info`` once ``server`` holds a lease other than ``old_lease_id`` and is ready, else None."""
    info = server.info()
    fresh = info["lease"]["state"] == "held" and info["lease"]["lease_id"] not in (None, old_lease_id)
    return info if fresh and server.ready() else None


def zombie_refusal(record: Record, resumed: float, relet: float) -> bool:
    """The zombie may refuse (503 + Retry-After) from SIGCONT until it holds the worker ID again."""
    return record.server == "zombie" and record.status == 503 and resumed <= record.done and record.sent <= relet
