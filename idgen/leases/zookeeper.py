"""The ZooKeeper lease backend: worker IDs for many hosts, fenced in ZooKeeper, recycled, traceable.

Znodes of a namespace ``NS`` (every one created with the digest ACL when credentials are set):

- ``NS/layout``: the layout spec, written once; a worker with another layout refuses to start.
- ``NS/leases/<w>``: the claim on worker ID ``w``, an *ephemeral* node holding the holder's identity.
  It vanishes when the holder's session ends, so churned pods never exhaust the IDs (Leaf #84).
- ``NS/fences/<w>``: persistent ``{"fence_ms", "lease_id"}``. Every write is a multi-op that also checks
  the claim, and is conditional on the fence's version, so only the current holder can move it.
- ``NS/history/<w>``: persistent list of the last ``history_size`` holders, for tracing IDs to nodes.
- ``NS/clock``: a scratch node written to read ZooKeeper's own time (its mtime) for the skew check.

Session states (kazoo) map onto the lease states: SUSPENDED keeps minting up to the reserved fence and
extends nothing; LOST stops minting at once and acquires afresh; CONNECTED after SUSPENDED resumes.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError,
    KazooException,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import ZnodeStat
from kazoo.security import make_digest_acl

from idgen.errors import InvalidInput, LayoutMismatch, LeaseUnavailable
from idgen.layout import Layout
from idgen.leases.base import Holder, Lease, LeaseLost, Reservation, remember

ZK_AUTH_ENV = "IDGEN_ZK_AUTH"
ZK_AUTH_FILE_ENV = "IDGEN_ZK_AUTH_FILE"
DEFAULT_NAMESPACE = "/idgen"
DEFAULT_SESSION_TIMEOUT_S = 10.0
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_MAX_SKEW_MS = 1_000
_RETRY = {"max_tries": -1, "delay": 0.1, "backoff": 1.5, "max_delay": 0.5}  # kazoo's default backoff grows to an hour


def credentials_from_env() -> str | None:
    """``user:password`` from ``$IDGEN_ZK_AUTH`` or the file named by ``$IDGEN_ZK_AUTH_FILE`` (never from argv)."""
    if os.environ.get(ZK_AUTH_ENV):
        auth = os.environ[ZK_AUTH_ENV]
    elif os.environ.get(ZK_AUTH_FILE_ENV):
        auth = Path(os.environ[ZK_AUTH_FILE_ENV]).read_text().strip()
    else:
        return None
    if ":" not in auth or auth.startswith(":"):
        raise InvalidInput(
            f"ZooKeeper credentials must look like user:password (from {ZK_AUTH_ENV} or {ZK_AUTH_FILE_ENV})"
        )
    return auth


def explain(exc: KazooException) -> str:
    """A one-line reason for a ZooKeeper error, naming the fix where there is one."""
    if isinstance(exc, NoAuthError):
        return (
            f"ZooKeeper refused access (wrong or missing credentials: set {ZK_AUTH_ENV}=user:password"
            f" or {ZK_AUTH_FILE_ENV}=FILE)"
        )
    return f"ZooKeeper error: {type(exc).__name__} {' '.join(str(exc).split())}".rstrip()


def connect(
    hosts: str,
    auth: str | None = None,
    session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> KazooClient:
    """A started kazoo client, or :class:`LeaseUnavailable` within ``connect_timeout_s``. With ``auth``
    (``user:password``) every node it creates is readable and writable by that user only."""
    user, _, password = (auth or "").partition(":")
    client = KazooClient(
        hosts=hosts,
        timeout=session_timeout_s,
        connection_retry=_RETRY,
        auth_data=[("digest", auth)] if auth else None,
        default_acl=[make_digest_acl(user, password, all=True)] if auth else None,
    )
    try:
        client.start(timeout=connect_timeout_s)
    except (KazooTimeoutError, KazooException, OSError) as exc:
        client.stop()
        client.close()
        detail = "" if isinstance(exc, KazooTimeoutError) else f" ({exc})"
        raise LeaseUnavailable(f"cannot reach ZooKeeper at {hosts} within {connect_timeout_s:g} s{detail}") from None
    return client


@contextlib.contextmanager
def connected(hosts: str, auth: str | None = None) -> Iterator[KazooClient]:
    """A client for a short job (the CLI, a test); stopped and closed on exit."""
    client = connect(hosts, auth)
    try:
        yield client
    finally:
        client.stop()
        client.close()


class Namespace:
    """The znodes of one namespace: the layout check and read-only views. Used by the lease and the CLI."""

    def __init__(self, client: KazooClient, path: str = DEFAULT_NAMESPACE) -> None:
        if not path.startswith("/") or (path.endswith("/") and path != "/"):
            raise InvalidInput(f"ZooKeeper namespace {path!r} must be an absolute path like /idgen")
        self.client = client
        self.path = path.rstrip("/") or ""

    def node(self, kind: str, worker_id: int | None = None) -> str:
        return f"{self.path}/{kind}" + ("" if worker_id is None else f"/{worker_id}")

    def bind_layout(self, layout: Layout) -> None:
        """Store ``layout`` as the namespace's layout, or check that it is the one already stored."""
        for kind in ("leases", "fences", "history", "clock"):
            self.client.ensure_path(self.node(kind))  # safe when many workers create them at once
        try:
            self.client.create(self.node("layout"), json.dumps(layout.spec()).encode(), makepath=True)
        except NodeExistsError:
            stored = self.layout()
            if stored != layout:
                raise LayoutMismatch(
                    f"ZooKeeper namespace {self.path} belongs to layout {stored.summary()}, not {layout.summary()}"
                ) from None

    def layout(self) -> Layout:
        try:
            data, _ = self.client.get(self.node("layout"))
        except NoNodeError:
            raise InvalidInput(
                f"ZooKeeper namespace {self.path} has no idgen layout (nothing was ever minted there)"
            ) from None
        return Layout.from_spec(json.loads(data))

    def live_leases(self) -> dict[int, Holder]:
        leases = {}
        for child in self._children("leases"):
            data = self._get(self.node("leases", int(child)))
            if data is not None:
                leases[int(child)] = Holder.from_json(data)
        return leases

    def fences(self) -> dict[int, int]:
        fences = {}
        for child in self._children("fences"):
            data = self._get(self.node("fences", int(child)))
            if data is not None:
                fences[int(child)] = data["fence_ms"]
        return fences

    def holders(self, worker_id: int) -> list[Holder]:
        return [Holder.from_json(h) for h in self._get(self.node("history", worker_id)) or []]

    def fence(self, worker_id: int) -> int | None:
        """The fence of ``worker_id`` as of now: ``sync`` first, since this client's server may lag the leader."""
        path = self.node("fences", worker_id)
        self.client.sync(path)
        data = self._get(path)
        return None if data is None else data["fence_ms"]

    def describe(self) -> dict[str, Any]:
        """Everything ``idgen leases`` shows: live leases, fences and the history of every used worker ID."""
        fences = self.fences()
        return {
            "namespace": self.path,
            "layout": self.layout().spec(),
            "leases": {str(w): h.to_json() for w, h in sorted(self.live_leases().items())},
            "fences": {str(w): f for w, f in sorted(fences.items())},
            "history": {str(w): [h.to_json() for h in self.holders(w)] for w in sorted(fences)},
        }

    def _children(self, kind: str) -> list[str]:
        try:
            return [c for c in self.client.get_children(self.node(kind)) if c.isdigit()]
        except NoNodeError:
            return []

    def _get(self, path: str) -> Any:
        try:
            data, _ = self.client.get(path)
        except NoNodeError:
            return None
        return json.loads(data)


class ZkLease(Lease):
    """A worker ID leased from the ZooKeeper ensemble at ``hosts`` under ``namespace``."""

    def __init__(
        self,
        layout: Layout,
        hosts: str,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        auth: str | None = None,
        session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
        **options: Any,
    ) -> None:
        super().__init__(layout, **options)
        self.hosts = hosts
        self.namespace_path = namespace
        self.auth = auth
        self.session_timeout_s = session_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_skew_ms = max_skew_ms
        self.skew_ms: float | None = None
        self._client: KazooClient | None = None
        self._ns: Namespace | None = None
        self._fence_version = -1

    # -- connection and clock check -----------------------------------------------------------------

    @property
    def namespace(self) -> Namespace:
        if self._ns is None:
            client = connect(self.hosts, self.auth, self.session_timeout_s, self.connect_timeout_s)
            try:
                namespace = Namespace(client, self.namespace_path)
                namespace.bind_layout(self.layout)
            except BaseException as exc:
                client.stop()
                client.close()
                if isinstance(exc, KazooException):
                    raise LeaseUnavailable(explain(exc)) from None
                raise
            client.add_listener(self._on_session_state)
            self._client, self._ns = client, namespace
        return self._ns

    def _on_session_state(self, state: str) -> None:
        """kazoo's listener; it runs on kazoo's thread and must not block."""
        if state == KazooState.SUSPENDED:
            self._suspend()
        elif state == KazooState.LOST:
            self._lose("the ZooKeeper session expired")
        else:
            self._resume()

    def _clock_problem(self) -> str | None:
        """Compare the local clock with ZooKeeper's: the mtime of a node written just now."""
        namespace = self.namespace
        before = self._now_ms()
        try:
            stat = namespace.client.set(namespace.node("clock"), b"")  # created by bind_layout
        except KazooException as exc:
            raise LeaseUnavailable(explain(exc)) from None
        after = self._now_ms()
        self.skew_ms = (before + after) / 2 - stat.mtime
        if abs(self.skew_ms) > self.max_skew_ms + (after - before) / 2:
            return (
                f"local clock differs from ZooKeeper's by {self.skew_ms:+.0f} ms, more than the {self.max_skew_ms} ms"
                " allowed; not leasing or extending until it is back in bounds"
            )
        return None

    # -- storage operations -------------------------------------------------------------------------

    def _acquire(self, holder: Holder) -> Reservation:
        namespace = self.namespace
        client = namespace.client
        try:
            live = set(namespace.live_leases())
            fences = namespace.fences()
            never_used = (w for w in range(self.layout.worker_capacity) if w not in fences and w not in live)
            oldest_first = sorted((w for w in fences if w not in live), key=fences.__getitem__)
            session_id = client.client_id[0]
            for worker_id in (*never_used, *oldest_first):
                claimed = self._claim(worker_id, holder, session_id)
                if claimed:
                    return claimed
        except KazooException as exc:
            raise LeaseUnavailable(explain(exc)) from None
        raise LeaseUnavailable(
            f"all {self.layout.worker_capacity} worker IDs of layout {self.layout.name!r} in ZooKeeper namespace"
            f" {namespace.path} are held by live workers"
        )

    def _claim(self, worker_id: int, holder: Holder, session_id: int) -> Reservation | None:
        """Create the claim on ``worker_id`` and write its first fence and history; ``None`` if it is taken."""
        namespace = self.namespace
        client = namespace.client
        lease_path = namespace.node("leases", worker_id)
        me = replace(holder, worker_id=worker_id, lease_id=f"{session_id:016x}-{uuid.uuid4().hex[:8]}")
        try:
            client.create(lease_path, _json(me.to_json()), ephemeral=True)
        except NodeExistsError:
            owner = client.exists(lease_path)
            if owner is None or owner.ephemeralOwner != session_id:
                return None  # held by another live worker
            # ours: an earlier create landed but its reply was lost to a connection blip
        fence_data, fence_stat = self._read(namespace.node("fences", worker_id))
        history_data, history_stat = self._read(namespace.node("history", worker_id))
        found = fence_data["fence_ms"] if fence_data else None
        after = self._claim_after(found)
        me = replace(me, after_ms=after)
        fence = self._first_fence(after)
        history = remember([Holder.from_json(h) for h in history_data or []], me, self.history_size, found)
        transaction = client.transaction()
        transaction.check(lease_path, 0)
        transaction.set_data(lease_path, _json(me.to_json()), 0)
        _write(
            transaction, namespace.node("fences", worker_id), {"fence_ms": fence, "lease_id": me.lease_id}, fence_stat
        )
        _write(transaction, namespace.node("history", worker_id), [h.to_json() for h in history], history_stat)
        results = transaction.commit()
        if any(isinstance(r, Exception) for r in results):
            client.delete(lease_path)  # someone raced us on the records; leave this worker ID alone
            return None
        self._fence_version = results[2].version if isinstance(results[2], ZnodeStat) else 0
        return Reservation(worker_id, after, fence, me.lease_id, found)

    def _extend(self, reservation: Reservation, fence_ms: int) -> None:
        self._write_fence(reservation, fence_ms)

    def _release(self, reservation: Reservation, final_fence_ms: int) -> None:
        if not self.namespace.client.connected:  # don't hold up shutdown: the fence stays where it is, which is safe
            raise LeaseUnavailable("not connected to ZooKeeper; the claim ends with the session")
        history_data, history_stat = self._read(self.namespace.node("history", reservation.worker_id))
        ended = self._now_ms()
        history = [
            h if h.get("lease_id") != reservation.lease_id else {**h, "ended_ms": ended, "fence_ms": final_fence_ms}
            for h in history_data or []
        ]
        self._write_fence(reservation, final_fence_ms, also_history=(history, history_stat), then_delete=True)

    def holders(self, worker_id: int) -> list[Holder]:
        return self.namespace.holders(worker_id)

    def fence_of(self, worker_id: int) -> int | None:
        return self.namespace.fence(worker_id)

    def close(self, high_water_ms: int | None = None) -> None:
        try:
            super().close(high_water_ms)
        finally:
            if self._client is not None:
                self._client.stop()
                self._client.close()

    def describe(self) -> dict[str, Any]:
        session = self._client.client_id if self._client is not None and self._client.connected else None
        return {
            **super().describe(),
            "backend": "zookeeper",
            "hosts": self.hosts,
            "namespace": self.namespace_path,
            "session_id": f"{session[0]:016x}" if session else None,
            "clock_skew_ms": self.skew_ms,
        }

    # -- internals --------------------------------------------------------------------------------

    def _write_fence(
        self,
        reservation: Reservation,
        fence_ms: int,
        also_history: tuple[list[dict[str, Any]], ZnodeStat | None] | None = None,
        then_delete: bool = False,
    ) -> None:
        """Write the fence in one multi-op that checks the claim is ours; raise :class:`LeaseLost` if it is not."""
        namespace = self.namespace
        client = namespace.client
        lease_path = namespace.node("leases", reservation.worker_id)
        fence_path = namespace.node("fences", reservation.worker_id)
        for attempt in range(2):
            transaction = client.transaction()
            transaction.check(lease_path, 1)
            transaction.set_data(
                fence_path, _json({"fence_ms": fence_ms, "lease_id": reservation.lease_id}), self._fence_version
            )
            if also_history is not None:
                _write(transaction, namespace.node("history", reservation.worker_id), *also_history)
            if then_delete:
                transaction.delete(lease_path, 1)
            try:
                results = transaction.commit_async().get(timeout=self.connect_timeout_s)  # never hang renewal
            except SessionExpiredError:
                raise LeaseLost("the ZooKeeper session expired") from None
            if not any(isinstance(r, Exception) for r in results):
                self._fence_version = results[1].version
                return
            if attempt == 0 and isinstance(results[1], BadVersionError) and self._adopt_fence_version(reservation):
                continue  # our own earlier write landed although its reply was lost; retry on its version
            raise LeaseLost(f"worker {reservation.worker_id} is no longer ours: {_first_error(results)!r}")

    def _adopt_fence_version(self, reservation: Reservation) -> bool:
        data, stat = self._read(self.namespace.node("fences", reservation.worker_id))
        if data is None or stat is None or data.get("lease_id") != reservation.lease_id:
            return False
        self._fence_version = stat.version
        return True

    def _read(self, path: str) -> tuple[Any, ZnodeStat | None]:
        try:
            data, stat = self.namespace.client.get_async(path).get(timeout=self.connect_timeout_s)
        except NoNodeError:
            return None, None
        return json.loads(data), stat


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _write(transaction: Any, path: str, value: Any, stat: ZnodeStat | None) -> None:
    """Add to ``transaction`` a create (no node yet) or a set conditional on the version read."""
    if stat is None:
        transaction.create(path, _json(value))
    else:
        transaction.set_data(path, _json(value), stat.version)


def _first_error(results: list[Any]) -> Exception | None:
    return next((r for r in results if isinstance(r, Exception) and type(r).__name__ != "RolledBackError"), None)
