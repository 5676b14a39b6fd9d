"""The ZooKeeper lease backend: worker IDs for many hosts, fenced in ZooKeeper, recycled, traceable.

Znodes of a namespace ``NS``, every one created with a digest ACL: only the holder of the credentials may read,
write or delete them (:class:`ZkLease` refuses to run without credentials unless told ``insecure=True``, and
refuses a namespace whose nodes anyone may write):

- ``NS/layout``: the layout spec, written once; a worker with another layout refuses to start.
- ``NS/leases/<w>``: the claim on worker ID ``w``, an *ephemeral* node holding the holder's identity.
  It vanishes when the holder's session ends, so churned pods never exhaust the IDs (Leaf #84).
- ``NS/fences/<w>``: persistent ``{"fence_ms", "lease_id"}``. Every write is a multi-op that also checks
  the claim, and is conditional on the fence's version, so only the current holder can move it.
- ``NS/history/<w>``: persistent list of the last ``history_size`` holders, for tracing IDs to nodes.
- ``NS/clock``: a scratch node written to read ZooKeeper's own time (its mtime) for the skew check.

Every record is parsed strictly: a worker ID whose fence or history is torn, not JSON or wrongly typed is
*quarantined* (never claimed, reported), never taken for "never used". Every ZooKeeper request has a time bound
(``connect_timeout_s``); a timeout is :class:`LeaseUnavailable`. Stopping the client at ``close()`` is kazoo's own,
and may wait up to about 2/3 of the session timeout on a frozen server.

Session states (kazoo) map onto the lease states: SUSPENDED keeps minting up to the reserved fence and
extends nothing; LOST stops minting at once and acquires afresh; CONNECTED after SUSPENDED resumes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, TypeVar

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
from kazoo.security import ACL, Permissions, make_digest_acl

from idgen.errors import InvalidInput, LayoutMismatch, LeaseUnavailable, UnreadableRecord
from idgen.layout import Layout
from idgen.leases.base import Census, Holder, Lease, LeaseLost, Reservation, remember
from idgen.leases.credentials import CredentialSource
from idgen.leases.records import WORKER_ID, load_record, parse_fence, parse_history, parse_holder

log = logging.getLogger("idgen.lease")

ZK_AUTH_ENV = "IDGEN_ZK_AUTH"
ZK_AUTH_FILE_ENV = "IDGEN_ZK_AUTH_FILE"
ZK_INSECURE_ENV = "IDGEN_ZK_INSECURE_NO_AUTH"
ZK_INSECURE_FLAG = "--zk-insecure-no-auth"
DEFAULT_NAMESPACE = "/idgen"
DEFAULT_SESSION_TIMEOUT_S = 10.0
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_MAX_SKEW_MS = 1_000
T = TypeVar("T")
_RETRY = {"max_tries": -1, "delay": 0.1, "backoff": 1.5, "max_delay": 0.5}  # kazoo's default backoff grows to an hour


ZK_CREDENTIALS = CredentialSource("ZooKeeper", ZK_AUTH_ENV, ZK_AUTH_FILE_ENV, ZK_INSECURE_ENV, ZK_INSECURE_FLAG)


def credentials_from_env() -> str | None:
    """``user:password`` from ``$IDGEN_ZK_AUTH`` or the file named by ``$IDGEN_ZK_AUTH_FILE`` (never from argv)."""
    return ZK_CREDENTIALS.from_env()


def required_credentials(insecure_flag: bool) -> str | None:
    """The credentials from the environment; ``None`` only when the operator opted out of access control with both
    ``--zk-insecure-no-auth`` and ``IDGEN_ZK_INSECURE_NO_AUTH=1``. Otherwise no credentials is :class:`InvalidInput`:
    without them every node is world-writable, and anyone who reaches ZooKeeper can delete a claim or a fence."""
    return ZK_CREDENTIALS.required(insecure_flag)


def digest_acl(auth: str) -> ACL:
    """The one ACL entry of every node idgen creates with ``auth``: everything, for that user only."""
    user, _, password = auth.partition(":")
    return make_digest_acl(user, password, all=True)


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
    client = KazooClient(
        hosts=hosts,
        timeout=session_timeout_s,
        connection_retry=_RETRY,
        auth_data=[("digest", auth)] if auth else None,
        default_acl=[digest_acl(auth)] if auth else None,
    )
    detail = ""
    try:
        client.start_async().wait(connect_timeout_s)
    except (KazooException, OSError) as exc:
        detail = f" ({exc})"
    if client.connected:
        return client
    # kazoo's stop() waits up to 10 s for a server that accepted the connection but never answered (frozen): not here
    threading.Thread(target=_discard, args=(client,), name="idgen-zk-discard", daemon=True).start()
    raise LeaseUnavailable(f"cannot reach ZooKeeper at {hosts} within {connect_timeout_s:g} s{detail}")


def _discard(client: KazooClient) -> None:
    client.stop()
    client.close()


@contextlib.contextmanager
def connected(hosts: str, auth: str | None = None) -> Iterator[KazooClient]:
    """A client for a short job (the CLI, a test); stopped and closed on exit."""
    client = connect(hosts, auth)
    try:
        yield client
    finally:
        client.stop()
        client.close()


_WRITE_PERMS = Permissions.WRITE | Permissions.CREATE | Permissions.DELETE | Permissions.ADMIN


class Namespace:
    """The znodes of one namespace: the layout check, the ACL check and read-only views. Used by the lease and the
    CLI. Every call returns within ``timeout_s`` or raises :class:`LeaseUnavailable`."""

    def __init__(
        self, client: KazooClient, path: str = DEFAULT_NAMESPACE, *, timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    ) -> None:
        if not path.startswith("/") or (path.endswith("/") and path != "/"):
            raise InvalidInput(f"ZooKeeper namespace {path!r} must be an absolute path like /idgen")
        self.client = client
        self.path = path.rstrip("/") or ""
        self.timeout_s = timeout_s
        self._layout: Layout | None = None

    def node(self, kind: str, worker_id: int | str | None = None) -> str:
        return f"{self.path}/{kind}" + ("" if worker_id is None else f"/{worker_id}")

    def call(self, operation: str, *args: Any, **kwargs: Any) -> Any:
        """``client.<operation>(*args, **kwargs)``, answered within ``timeout_s``; else :class:`LeaseUnavailable`."""
        return self.wait(getattr(self.client, f"{operation}_async")(*args, **kwargs), operation)

    def wait(self, pending: Any, operation: str = "commit") -> Any:
        """The result of a kazoo async call (or a transaction's ``commit_async()``) within ``timeout_s``."""
        try:
            return pending.get(timeout=self.timeout_s)
        except KazooTimeoutError:
            raise LeaseUnavailable(
                f"ZooKeeper did not answer {operation} in {self.path or '/'} within {self.timeout_s:g} s"
            ) from None

    def bind_layout(self, layout: Layout) -> None:
        """Store ``layout`` as the namespace's layout, or check that it is the one already stored."""
        for kind in ("leases", "fences", "history", "clock"):
            self.call("ensure_path", self.node(kind))  # safe when many workers create them at once
        try:
            self.call("create", self.node("layout"), json.dumps(layout.spec()).encode(), makepath=True)
        except NodeExistsError:
            stored = self.layout()
            if stored != layout:
                raise LayoutMismatch(
                    f"ZooKeeper namespace {self.path} belongs to layout {stored.summary()}, not {layout.summary()}"
                ) from None
        self._layout = layout

    def layout(self) -> Layout:
        if self._layout is None:
            try:
                data, _ = self.call("get", self.node("layout"))
            except NoNodeError:
                raise InvalidInput(
                    f"ZooKeeper namespace {self.path} has no idgen layout (nothing was ever minted there)"
                ) from None
            what = f"the layout record {self.node('layout')}"
            try:
                self._layout = Layout.from_spec(load_record(data, what))
            except InvalidInput:
                raise UnreadableRecord(f"{what} is unreadable: not a layout spec") from None
        return self._layout

    def world_writable(self) -> list[str]:
        """The namespace's nodes (itself, layout, clock, leases, fences, history and their children) whose ACL lets
        anyone (``world:anyone``) write, create, delete or change the ACL."""
        paths = [self.path or "/", *(self.node(k) for k in ("layout", "clock", "leases", "fences", "history"))]
        for kind in ("leases", "fences", "history"):
            paths += [self.node(kind, child) for child in self._children(kind, strict=False)]
        pending = [(path, self.client.get_acls_async(path)) for path in paths]
        open_paths = []
        for path, acls in pending:
            try:
                acl, _ = self.wait(acls, "get_acls")
            except NoNodeError:
                continue
            if any(_is_world(entry) and entry.perms & _WRITE_PERMS for entry in acl):
                open_paths.append(path)
        return open_paths

    def secure(self, auth: str) -> list[str]:
        """Give every world-writable node of the namespace the ACL idgen gives its nodes (``auth``'s user only,
        other non-world entries kept); the paths changed."""
        changed = self.world_writable()
        for path in changed:
            acl, stat = self.call("get_acls", path)
            kept = [entry for entry in acl if not _is_world(entry)]
            mine = digest_acl(auth)
            self.call("set_acls", path, [*kept, *([] if mine in kept else [mine])], stat.aversion)
        return changed

    def live_leases(self) -> dict[int, Holder]:
        leases = {}
        for worker_id in self.worker_ids("leases"):
            data = self._get(self.node("leases", worker_id))
            if data is not None:
                with contextlib.suppress(UnreadableRecord):  # a claim is held whatever it says
                    what = f"the claim {self.node('leases', worker_id)}"
                    leases[worker_id] = parse_holder(load_record(data, what), what)
        return leases

    def claimed(self) -> set[int]:
        """The worker IDs with a live claim, whatever the claims say."""
        return set(self.worker_ids("leases"))

    def scan_fences(self) -> tuple[dict[int, int], dict[int, str]]:
        """The fence of every worker ID that has one, and why each unreadable fence cannot be read."""
        fences, unreadable = {}, {}
        for worker_id in self.worker_ids("fences"):
            path = self.node("fences", worker_id)
            data = self._get(path)
            try:
                if data is not None:
                    fences[worker_id] = parse_fence(data, f"the fence {path}")["fence_ms"]
            except UnreadableRecord as exc:
                unreadable[worker_id] = str(exc)
        return fences, unreadable

    def fences(self) -> dict[int, int]:
        return self.scan_fences()[0]

    def holders(self, worker_id: int) -> list[Holder]:
        path = self.node("history", worker_id)
        data = self._get(path)
        return [] if data is None else parse_history(data, f"the history of worker {worker_id} ({path})")

    def fence(self, worker_id: int) -> int | None:
        """The fence of ``worker_id`` as of now: ``sync`` first, since this client's server may lag the leader."""
        path = self.node("fences", worker_id)
        self.call("sync", path)
        data = self._get(path)
        return None if data is None else parse_fence(data, f"the fence {path}")["fence_ms"]

    def describe(self) -> dict[str, Any]:
        """Everything ``idgen leases`` shows: live leases, fences, the history of every used worker ID, and the
        worker IDs whose records cannot be read (never claimed)."""
        fences, quarantined = self.scan_fences()
        history = {}
        for worker_id in sorted({*fences, *self.worker_ids("history")} - set(quarantined)):
            try:
                holders = self.holders(worker_id)
                if holders and worker_id not in fences:
                    raise UnreadableRecord(_fence_gone(worker_id))
            except UnreadableRecord as exc:
                quarantined[worker_id] = str(exc)
            else:
                history[str(worker_id)] = [h.to_json() for h in holders]
        return {
            "namespace": self.path,
            "layout": self.layout().spec(),
            "leases": {str(w): h.to_json() for w, h in sorted(self.live_leases().items())},
            "fences": {str(w): f for w, f in sorted(fences.items())},
            "history": history,
            "quarantined": {str(w): why for w, why in sorted(quarantined.items())},
        }

    def worker_ids(self, kind: str) -> list[int]:
        """The children of ``kind`` that name a worker ID of the layout (``[0-9]+``, canonical, in range); any other
        name (``"²"``, ``"-1"``, ``"007"``, ``"99999"``) is ignored."""
        capacity = self.layout().worker_capacity
        return [int(c) for c in self._children(kind, strict=True) if int(c) < capacity]

    def _children(self, kind: str, strict: bool) -> list[str]:
        try:
            children: list[str] = self.call("get_children", self.node(kind))
        except NoNodeError:
            return []
        return [c for c in children if WORKER_ID.fullmatch(c)] if strict else children

    def _get(self, path: str) -> bytes | None:
        try:
            data, _ = self.call("get", path)
        except NoNodeError:
            return None
        return bytes(data)


def _fence_gone(worker_id: int) -> str:
    return f"worker {worker_id} has a history of holders but no fence (deleted?)"


def _is_world(entry: ACL) -> bool:
    return bool(entry.id.scheme == "world" and entry.id.id == "anyone")


class ZkLease(Lease):
    """A worker ID leased from the ZooKeeper ensemble at ``hosts`` under ``namespace``.

    ``auth`` (``user:password``) is required: every node is then the user's alone, and a namespace whose nodes anyone
    may write is refused. ``insecure=True`` instead runs without access control (anyone who reaches ZooKeeper can
    delete a claim or a fence, and duplicates follow); it is logged and shown as :attr:`insecure`.
    ``connect_timeout_s`` bounds connecting and every ZooKeeper call.
    """

    def __init__(
        self,
        layout: Layout,
        hosts: str,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        auth: str | None = None,
        insecure: bool = False,
        session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
        **options: Any,
    ) -> None:
        if auth is None and not insecure:
            raise InvalidInput(
                "ZkLease needs ZooKeeper credentials, auth='user:password', or insecure=True to run without access"
                " control"
            )
        super().__init__(layout, **options)
        self.hosts = hosts
        self.namespace_path = namespace
        self.auth = auth
        self.insecure = auth is None
        self.session_timeout_s = session_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_skew_ms = max_skew_ms
        if self.insecure:
            log.warning(
                "ZooKeeper without credentials: anyone who can reach %s can delete claims and fences, and duplicate"
                " IDs follow",
                hosts,
                extra={"event": "zk_insecure", "hosts": hosts, "namespace": namespace},
            )

    def _init_runtime(self) -> None:
        super()._init_runtime()
        self.skew_ms: float | None = None
        # A forked child must not touch its copy of the parent's client: its socket is the parent's session.
        self._client: KazooClient | None = None
        self._ns: Namespace | None = None
        self._fence_version = -1
        self._lost_worker_id: int | None = None  # lost while the session lived: drop its claim before acquiring anew

    # -- connection and clock check -----------------------------------------------------------------

    @property
    def namespace(self) -> Namespace:
        if self._ns is None:
            client = connect(self.hosts, self.auth, self.session_timeout_s, self.connect_timeout_s)
            try:
                namespace = Namespace(client, self.namespace_path, timeout_s=self.connect_timeout_s)
                if self.auth is not None:
                    self._refuse_world_writable(namespace)
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

    def _refuse_world_writable(self, namespace: Namespace) -> None:
        open_paths = namespace.world_writable()
        if open_paths:
            raise LeaseUnavailable(
                f"ZooKeeper namespace {namespace.path} has {len(open_paths)} world-writable nodes (such as"
                f" {open_paths[0]}): anyone could delete its claims and fences. Restrict them to these credentials"
                f" with: idgen zk-secure --namespace {namespace.path} --zk {self.hosts}"
            )

    def _on_session_state(self, state: str) -> None:
        """kazoo's listener; it runs on kazoo's thread and must not block."""
        if state == KazooState.SUSPENDED:
            self._suspend()
        elif state == KazooState.LOST:
            self._lose("the ZooKeeper session expired")
        else:
            self._resume()

    def _clock_problem(self) -> str | None:
        """Compare the local clock with ZooKeeper's: the mtime of a node written just now.

        ZooKeeper stamped the mtime at some instant of the round trip, timed on the monotonic clock (a step of the
        wall clock cannot widen it). The local wall clock at that instant lay in ``[before, before + rtt]``, and,
        reading back from the end, in ``[after - rtt, after]``; the check passes only if every skew in both brackets
        is within ``max_skew_ms``. So a slow write (a wide bracket) or a wall-clock step during the write (brackets
        apart) fails closed; a round trip longer than the allowance itself is "cannot tell".
        """
        namespace = self.namespace
        started = time.monotonic()
        before = self._now_ms()
        try:
            stat = namespace.call("set", namespace.node("clock"), b"")  # created by bind_layout
        except KazooException as exc:
            raise LeaseUnavailable(explain(exc)) from None
        after = self._now_ms()
        rtt = (time.monotonic() - started) * 1000
        self.skew_ms = after - rtt / 2 - stat.mtime
        if rtt > self.max_skew_ms:
            return (
                f"ZooKeeper took {rtt:.0f} ms to answer the clock check, longer than the {self.max_skew_ms} ms skew"
                " allowed, so the skew cannot be told; not leasing or extending until it can"
            )
        bounds = (before - stat.mtime, before + rtt - stat.mtime, after - rtt - stat.mtime, after - stat.mtime)
        worst = max(bounds, key=abs)
        if abs(worst) > self.max_skew_ms:
            return (
                f"local clock differs from ZooKeeper's by {worst:+.0f} ms, more than the {self.max_skew_ms} ms"
                " allowed; not leasing or extending until it is back in bounds"
            )
        return None

    # -- storage operations -------------------------------------------------------------------------

    def _acquire(self, holder: Holder) -> Reservation:
        namespace = self.namespace
        try:
            session_id = namespace.client.client_id[0]
            self._drop_lost_claim(session_id)
            live = namespace.claimed()
            fences, unreadable = namespace.scan_fences()
            for worker_id, why in unreadable.items():
                self._quarantine(worker_id, why)
            usable = [w for w in range(self.layout.worker_capacity) if w not in live and w not in self.quarantined]
            for worker_id in self._claim_order(usable, fences):
                claimed = self._claim(worker_id, holder, session_id)
                if claimed:
                    return claimed
        except KazooException as exc:
            raise LeaseUnavailable(explain(exc)) from None
        quarantined = f" ({len(self.quarantined)} of them quarantined: unreadable records)" if self.quarantined else ""
        raise self._none_claimable(
            f"all {self.layout.worker_capacity} worker IDs of layout {self.layout.name!r} in ZooKeeper namespace"
            f" {namespace.path} are held by live workers{quarantined}"
        )

    def _claim(self, worker_id: int, holder: Holder, session_id: int) -> Reservation | None:
        """Create the claim on ``worker_id`` and write its first fence and history; ``None`` if it is taken, or if
        its records cannot be read (then it is quarantined and the claim dropped)."""
        namespace = self.namespace
        lease_path = namespace.node("leases", worker_id)
        me = replace(holder, worker_id=worker_id, lease_id=f"{session_id:016x}-{uuid.uuid4().hex[:8]}")
        try:
            namespace.call("create", lease_path, _json(me.to_json()), ephemeral=True)
        except NodeExistsError:
            owner = namespace.call("exists", lease_path)
            if owner is None or owner.ephemeralOwner != session_id:
                return None  # held by another live worker
            # ours: an earlier create landed but its reply was lost to a connection blip
        try:
            fence_data, fence_stat = self._read(namespace.node("fences", worker_id), parse_fence)
            history_data, history_stat = self._read(namespace.node("history", worker_id), parse_history)
            if fence_data is None and history_data:
                raise UnreadableRecord(_fence_gone(worker_id))
        except UnreadableRecord as exc:
            self._quarantine(worker_id, str(exc))
            namespace.call("delete", lease_path)
            return None
        found = fence_data["fence_ms"] if fence_data else None
        after = self._claim_after(found)
        me = replace(me, after_ms=after)
        fence = self._first_fence(after)
        history = remember(history_data or [], me, self.history_size, found)
        transaction = namespace.client.transaction()
        transaction.check(lease_path, 0)
        transaction.set_data(lease_path, _json(me.to_json()), 0)
        _write(
            transaction, namespace.node("fences", worker_id), {"fence_ms": fence, "lease_id": me.lease_id}, fence_stat
        )
        _write(transaction, namespace.node("history", worker_id), [h.to_json() for h in history], history_stat)
        results = namespace.wait(transaction.commit_async())
        if any(isinstance(r, Exception) for r in results):
            namespace.call("delete", lease_path)  # someone raced us on the records; leave this worker ID alone
            return None
        self._fence_version = results[2].version if isinstance(results[2], ZnodeStat) else 0
        return Reservation(worker_id, after, fence, me.lease_id, found)

    def _extend(self, reservation: Reservation, fence_ms: int) -> None:
        try:
            self._write_fence(reservation, fence_ms)
        except LeaseLost:
            self._lost_worker_id = reservation.worker_id  # minting stops first; the next acquisition drops the claim
            raise

    def _release(self, reservation: Reservation, final_fence_ms: int) -> None:
        if not self.namespace.client.connected:  # don't hold up shutdown: the fence stays where it is, which is safe
            raise LeaseUnavailable("not connected to ZooKeeper; the claim ends with the session")
        history_path = self.namespace.node("history", reservation.worker_id)
        history_data, history_stat = self._read(history_path, parse_history)
        ended = self._now_ms()
        history = [
            h if h.lease_id != reservation.lease_id else replace(h, ended_ms=ended, fence_ms=final_fence_ms)
            for h in history_data or []
        ]
        self._write_fence(
            reservation, final_fence_ms, also_history=([h.to_json() for h in history], history_stat), then_delete=True
        )

    def holders(self, worker_id: int) -> list[Holder]:
        return self.namespace.holders(worker_id)

    def fence_of(self, worker_id: int) -> int | None:
        return self.namespace.fence(worker_id)

    def close(self, high_water_ms: int | None = None) -> None:
        try:
            super().close(high_water_ms)
        finally:
            if self._client is not None and os.getpid() == self._owner_pid:  # a forked copy's client is the parent's
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

    def _drop_lost_claim(self, session_id: int) -> None:
        """Delete the claim of a lease lost while the session lived, if it is still this session's."""
        worker_id, self._lost_worker_id = self._lost_worker_id, None
        if worker_id is None:
            return
        path = self.namespace.node("leases", worker_id)
        stat = self.namespace.call("exists", path)
        if stat is not None and stat.ephemeralOwner == session_id:
            with contextlib.suppress(NoNodeError, BadVersionError):
                self.namespace.call("delete", path, stat.version)

    def _write_fence(
        self,
        reservation: Reservation,
        fence_ms: int,
        also_history: tuple[list[dict[str, Any]], ZnodeStat | None] | None = None,
        then_delete: bool = False,
    ) -> None:
        """Write the fence in one multi-op that checks the claim is ours; raise :class:`LeaseLost` if it is not."""
        namespace = self.namespace
        lease_path = namespace.node("leases", reservation.worker_id)
        fence_path = namespace.node("fences", reservation.worker_id)
        for attempt in range(2):
            transaction = namespace.client.transaction()
            transaction.check(lease_path, 1)
            transaction.set_data(
                fence_path, _json({"fence_ms": fence_ms, "lease_id": reservation.lease_id}), self._fence_version
            )
            if also_history is not None:
                _write(transaction, namespace.node("history", reservation.worker_id), *also_history)
            if then_delete:
                transaction.delete(lease_path, 1)
            try:
                results = namespace.wait(transaction.commit_async())  # never hang renewal
            except SessionExpiredError:
                raise LeaseLost("the ZooKeeper session expired") from None
            if not any(isinstance(r, Exception) for r in results):
                self._fence_version = results[1].version
                return
            if attempt == 0 and isinstance(results[1], BadVersionError) and self._adopt_fence_version(reservation):
                continue  # our own earlier write landed although its reply was lost; retry on its version
            raise LeaseLost(f"worker {reservation.worker_id} is no longer ours: {_first_error(results)!r}")

    def _adopt_fence_version(self, reservation: Reservation) -> bool:
        try:
            data, stat = self._read(self.namespace.node("fences", reservation.worker_id), parse_fence)
        except UnreadableRecord:
            return False
        if data is None or stat is None or data.get("lease_id") != reservation.lease_id:
            return False
        self._fence_version = stat.version
        return True

    def _read(self, path: str, parse: Callable[[bytes, str], T]) -> tuple[T | None, ZnodeStat | None]:
        """The record at ``path`` parsed by ``parse`` (:class:`UnreadableRecord` if it does not parse), and its stat."""
        try:
            data, stat = self.namespace.call("get", path)
        except NoNodeError:
            return None, None
        return parse(bytes(data), path), stat

    def census(self) -> Census:
        """One ``get_children`` of the claims (``NS/leases``), on this lease's connection; none is opened for it."""
        namespace = self._ns
        if namespace is None or not namespace.client.connected:
            raise LeaseUnavailable("not connected to ZooKeeper")
        try:
            held = set(namespace.worker_ids("leases"))
        except KazooException as exc:
            raise LeaseUnavailable(explain(exc)) from None
        return self._census_of(range(self.layout.worker_capacity), held)


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
