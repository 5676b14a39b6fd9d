"""Lease backends as the conformance suite and the model test see them: one worker-ID space per backend.

A :class:`Backend` makes leases over one shared space (a state directory, a ZooKeeper or etcd namespace), starts real
holder processes in it (tests/holder.py), and reads or damages its records the way an outsider would: from the
files, or from another ZooKeeper or etcd client. Adding a backend means adding one subclass here and one name to
``BACKENDS``; every test in tests/test_lease_conformance.py then runs on it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from etcdharness import TEST_CREDENTIALS as ETCD_TEST_CREDENTIALS
from holder import HolderProcess
from kazoo.client import KazooClient

from idgen import Layout
from idgen.clock import ManualClock
from idgen.leases.base import Lease, Reservation
from idgen.leases.etcd import EtcdClient, EtcdLease
from idgen.leases.local import LocalLease
from idgen.leases.tracing import Holder
from idgen.leases.zookeeper import ZkLease, connect

WINDOW_MS = 1_000
ZK_AUTH = "idgen:secret"  # the one place the suite's ZooKeeper credentials (or an insecure opt-out) are set
ZK_OPTIONS: dict[str, Any] = {"auth": ZK_AUTH, "session_timeout_s": 2.0}
ETCD_OPTIONS: dict[str, Any] = {"auth": ETCD_TEST_CREDENTIALS, "ttl_s": 4.0}  # slack for keepalives on a busy machine


class Backend(ABC):
    """One worker-ID space of one backend. ``options`` given to :meth:`lease` and :meth:`holder` go to the lease."""

    name: str

    @abstractmethod
    def lease(self, layout: Layout, **options: Any) -> Lease:
        """A new, unstarted lease over this space (window 1 s unless ``window_ms`` is given)."""

    @abstractmethod
    def holder_config(self, layout: Layout, **options: Any) -> dict[str, Any]:
        """The config tests/holder.py needs to lease in this space."""

    @abstractmethod
    def fence(self, layout: Layout, worker_id: int) -> int | None:
        """The durable fence of ``worker_id`` as stored, read by an outsider; ``None`` if never written."""

    @abstractmethod
    def history(self, layout: Layout, worker_id: int) -> list[Holder]:
        """The stored holder history of ``worker_id``, read by an outsider."""

    @abstractmethod
    def tamper(self, layout: Layout, worker_id: int, raw: bytes) -> None:
        """Replace the fence record of ``worker_id`` with ``raw`` (an operator's slip, a disk error, an attacker)."""

    @abstractmethod
    def take_claim(self, layout: Layout, worker_id: int, spawn_holder: Callable[..., HolderProcess]) -> int:
        """Take the claim on ``worker_id`` away from its live holder and keep it; return the fence the taker
        relies on: the new owner mints only above it, so the old holder must never mint above it."""

    @abstractmethod
    def crash(self, lease: Lease) -> None:
        """What ``kill -9`` of the process holding ``lease`` does to the claim (the process's threads stop too)."""

    @abstractmethod
    def lose_claim(self, lease: Lease) -> None:
        """Take away the claim of a live ``lease`` by the backend's own failure: the lock file removed (local), the
        session expired (ZooKeeper). Nobody else holds it yet."""

    def holder(self, spawn_holder: Callable[..., HolderProcess], layout: Layout, **options: Any) -> HolderProcess:
        """Start a real process that leases in this space and mints one ID (call ``ready()`` on it)."""
        return spawn_holder(layout, **self.holder_config(layout, **options))

    @abstractmethod
    def close(self) -> None:
        """Drop any connection the backend opened for its outsider's view."""


def _lease_options(options: dict[str, Any]) -> dict[str, Any]:
    return {"window_ms": WINDOW_MS, **options}


class LocalBackend(Backend):
    """``LocalLease`` over one state directory per layout, under ``root``; the space is the layout's worker IDs."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def state_dir(self, layout: Layout) -> Path:
        return self.root / layout.name

    def lease(self, layout: Layout, **options: Any) -> LocalLease:
        return LocalLease(layout, self.state_dir(layout), **_lease_options(options))

    def holder_config(self, layout: Layout, **options: Any) -> dict[str, Any]:
        return {
            "state_dir": str(self.state_dir(layout)),
            "worker_ids": [0, layout.worker_capacity],
            "options": _lease_options(options),
        }

    def record_path(self, layout: Layout, worker_id: int) -> Path:
        return self.lease(layout)._path(worker_id, "json")

    def lock_path(self, layout: Layout, worker_id: int) -> Path:
        return self.lease(layout)._path(worker_id, "lock")

    def _record(self, layout: Layout, worker_id: int) -> dict[str, Any] | None:
        path = self.record_path(layout, worker_id)
        return json.loads(path.read_text()) if path.exists() else None

    def fence(self, layout: Layout, worker_id: int) -> int | None:
        record = self._record(layout, worker_id)
        return None if record is None else record["fence_ms"]

    def history(self, layout: Layout, worker_id: int) -> list[Holder]:
        return [Holder.from_json(h) for h in (self._record(layout, worker_id) or {}).get("holders", [])]

    def tamper(self, layout: Layout, worker_id: int, raw: bytes) -> None:
        path = self.record_path(layout, worker_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)

    def take_claim(self, layout: Layout, worker_id: int, spawn_holder: Callable[..., HolderProcess]) -> int:
        """A tmp cleaner (or an operator's ``rm``) removes the lock file; then another process leases."""
        assert layout.worker_capacity == 1, "the taker must land on the holder's worker ID"
        self.lock_path(layout, worker_id).unlink()
        taker = self.holder(spawn_holder, layout).ready()
        assert taker.worker_id == worker_id
        return taker.after_ms

    def crash(self, lease: Lease) -> None:
        """The OS drops the flock: it closes the descriptor."""
        assert isinstance(lease, LocalLease)
        stop_renewal(lease)
        if lease._claim_fd is not None:
            os.close(lease._claim_fd)
            lease._claim_fd = None

    def lose_claim(self, lease: Lease) -> None:
        """A tmp cleaner or an operator removes the lock file."""
        held = lease.status().reservation
        if held is not None:
            with contextlib.suppress(FileNotFoundError):
                self.lock_path(lease.layout, held.worker_id).unlink()

    def close(self) -> None:
        """Nothing to close: the outsider reads the files."""


class ZooKeeperBackend(Backend):
    """``ZkLease`` with credentials on the shared test server, one namespace per layout under ``namespace``."""

    name = "zookeeper"

    def __init__(self, hosts: str, namespace: str) -> None:
        self.hosts = hosts
        self.namespace = namespace
        self._admin: KazooClient | None = None

    def path(self, layout: Layout, kind: str, worker_id: int) -> str:
        return f"{self.namespace}/{layout.name}/{kind}/{worker_id}"

    @property
    def admin(self) -> KazooClient:
        """Another client with the same credentials: an operator's shell, or a second deployment's bug."""
        if self._admin is None:
            self._admin = connect(self.hosts, ZK_AUTH)
        return self._admin

    def lease(self, layout: Layout, **options: Any) -> ZkLease:
        if isinstance(options.get("clock"), ManualClock):
            options.setdefault("max_skew_ms", 3_600_000)  # a manual clock parts from ZooKeeper's by design
        return ZkLease(layout, self.hosts, f"{self.namespace}/{layout.name}", **ZK_OPTIONS, **_lease_options(options))

    def holder_config(self, layout: Layout, **options: Any) -> dict[str, Any]:
        return {
            "zk": self.hosts,
            "namespace": f"{self.namespace}/{layout.name}",
            "options": {**ZK_OPTIONS, **_lease_options(options)},
        }

    def _get(self, path: str) -> Any:
        stat = self.admin.exists(path)
        return None if stat is None else json.loads(self.admin.get(path)[0])

    def fence(self, layout: Layout, worker_id: int) -> int | None:
        record = self._get(self.path(layout, "fences", worker_id))
        return None if record is None else record["fence_ms"]

    def history(self, layout: Layout, worker_id: int) -> list[Holder]:
        return [Holder.from_json(h) for h in self._get(self.path(layout, "history", worker_id)) or []]

    def tamper(self, layout: Layout, worker_id: int, raw: bytes) -> None:
        path = self.path(layout, "fences", worker_id)
        if self.admin.exists(path) is None:
            self.admin.create(path, raw, makepath=True)
        else:
            self.admin.set(path, raw)

    def take_claim(self, layout: Layout, worker_id: int, spawn_holder: Callable[..., HolderProcess]) -> int:
        """Another client deletes the claim node and creates its own in its place."""
        claim = self.path(layout, "leases", worker_id)
        self.admin.delete(claim)
        self.admin.create(claim, b"{}", ephemeral=True)
        fence = self.fence(layout, worker_id)  # any extension after the delete fails its check on the claim
        assert fence is not None
        return fence

    def crash(self, lease: Lease) -> None:
        """The session expires (the server deletes the claim node), and the dead process's client is gone."""
        assert isinstance(lease, ZkLease)
        stop_renewal(lease)
        self.expire(lease)
        if lease._client is not None:
            lease._client.stop()
            lease._client.close()

    def lose_claim(self, lease: Lease) -> None:
        """The session expires; returns once the lease has seen it (it then acquires afresh by itself)."""
        assert isinstance(lease, ZkLease)
        held = lease.status().reservation
        if held is None or lease._client is None:
            return
        self.expire(lease)
        deadline = time.monotonic() + 5
        while (now := lease.status().reservation) is not None and now.lease_id == held.lease_id:
            assert time.monotonic() < deadline, "the lease did not notice its session expired within 5 s"
            time.sleep(0.005)

    def expire(self, lease: ZkLease) -> None:
        """Expire ``lease``'s session for real: another client takes over its session ID and closes it."""
        assert lease._client is not None
        session_id, password = lease._client.client_id
        thief = KazooClient(hosts=self.hosts, client_id=(session_id, password))
        thief.start(timeout=5)
        thief.stop()
        thief.close()

    def close(self) -> None:
        if self._admin is not None:
            self._admin.stop()
            self._admin.close()


class EtcdBackend(Backend):
    """``EtcdLease`` with credentials on the shared test member, one namespace per layout under ``namespace``."""

    name = "etcd"

    def __init__(self, endpoints: str, namespace: str) -> None:
        self.endpoints = endpoints
        self.namespace = namespace
        self.admin = EtcdClient(endpoints, ETCD_TEST_CREDENTIALS)  # an operator's etcdctl, or another deployment

    def key(self, layout: Layout, kind: str, worker_id: int) -> str:
        return f"{self.namespace}/{layout.name}/{kind}/{worker_id}"

    def lease(self, layout: Layout, **options: Any) -> EtcdLease:
        if isinstance(options.get("clock"), ManualClock):
            options.setdefault("max_skew_ms", 3_600_000)  # a manual clock parts from etcd's by design
        return EtcdLease(
            layout, self.endpoints, f"{self.namespace}/{layout.name}", **ETCD_OPTIONS, **_lease_options(options)
        )

    def holder_config(self, layout: Layout, **options: Any) -> dict[str, Any]:
        return {
            "etcd": self.endpoints,
            "namespace": f"{self.namespace}/{layout.name}",
            "options": {**ETCD_OPTIONS, **_lease_options(options)},
        }

    def _get(self, key: str) -> Any:
        kvs = self.admin.range(key)
        return None if not kvs else json.loads(base64.b64decode(kvs[0]["value"]))

    def fence(self, layout: Layout, worker_id: int) -> int | None:
        record = self._get(self.key(layout, "fences", worker_id))
        return None if record is None else record["fence_ms"]

    def history(self, layout: Layout, worker_id: int) -> list[Holder]:
        return [Holder.from_json(h) for h in self._get(self.key(layout, "history", worker_id)) or []]

    def tamper(self, layout: Layout, worker_id: int, raw: bytes) -> None:
        self.admin.put(self.key(layout, "fences", worker_id), raw)

    def take_claim(self, layout: Layout, worker_id: int, spawn_holder: Callable[..., HolderProcess]) -> int:
        """Another client deletes the claim key and puts its own in its place."""
        claim = self.key(layout, "leases", worker_id)
        self.admin.delete(claim)
        self.admin.put(claim, b"{}")
        fence = self.fence(layout, worker_id)  # any extension after the delete fails its compare on the claim
        assert fence is not None
        return fence

    def crash(self, lease: Lease) -> None:
        """The dead process stops renewing; its etcd lease expires (revoked here, rather than waited for)."""
        assert isinstance(lease, EtcdLease)
        stop_renewal(lease)
        if lease._etcd_lease is not None:
            self.admin.revoke(lease._etcd_lease)
        if lease._keepalive_thread is not None:
            lease._keepalive_thread.join(timeout=10)

    def lose_claim(self, lease: Lease) -> None:
        """The etcd lease expires (revoked); returns once the lease has seen it."""
        assert isinstance(lease, EtcdLease)
        held = lease.status().reservation
        if held is None or lease._etcd_lease is None:
            return
        self.admin.revoke(lease._etcd_lease)
        deadline = time.monotonic() + 5
        while (now := lease.status().reservation) is not None and now.lease_id == held.lease_id:
            assert time.monotonic() < deadline, "the lease did not notice its etcd lease expired within 5 s"
            time.sleep(0.005)

    def close(self) -> None:
        self.admin.close()


def stop_renewal(lease: Lease) -> None:
    """Stop ``lease``'s renewal thread where it is, releasing nothing: what a crash does to it."""
    lease._closing.set()
    lease._wake.set()
    assert lease._thread is not None
    lease._thread.join(timeout=10)
    assert not lease._thread.is_alive(), "the renewal thread did not stop"


def observe(
    lease: Lease, log: list[Reservation | None] | None = None, published: list[Reservation | None] | None = None
) -> list[Reservation | None]:
    """Everything ``lease`` will publish to its listener, in order, also appended to ``log`` if given (one log
    for many leases orders their acquisitions). The generator's listener still gets it all. Leases made from it
    (:meth:`Lease.fresh`: a generator's switch of worker IDs, a fork) are observed into the same list."""
    published = [] if published is None else published
    start, fresh = lease.start, lease.fresh

    def start_and_record(listener: Callable[[Reservation | None], None]) -> Reservation | None:
        def record(reservation: Reservation | None) -> None:
            published.append(reservation)
            if log is not None:
                log.append(reservation)
            listener(reservation)

        return start(record)

    def fresh_and_observe(fence_below_ms: int | None = None) -> Lease:
        clone = fresh(fence_below_ms)
        for patched in ("start", "fresh"):  # copied from this lease's instance dict: they would act on this lease
            clone.__dict__.pop(patched, None)
        observe(clone, log, published)
        return clone

    lease.start = start_and_record  # type: ignore[method-assign]
    lease.fresh = fresh_and_observe  # type: ignore[method-assign]
    return published


BACKENDS = ("local", "zookeeper", "etcd")


def make_backend(name: str, tmp_path: Path, fixture: Callable[[str], Any]) -> Backend:
    """The backend called ``name``; ``fixture`` is ``request.getfixturevalue`` (ZooKeeper starts only if needed)."""
    if name == "local":
        return LocalBackend(tmp_path / "state")
    if name == "zookeeper":
        return ZooKeeperBackend(fixture("zk_hosts"), fixture("zk_namespace"))
    if name == "etcd":
        return EtcdBackend(fixture("etcd_endpoints"), fixture("etcd_namespace"))
    raise ValueError(f"unknown lease backend {name!r}")
