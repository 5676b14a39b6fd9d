"""The ZooKeeper lease backend: worker IDs for many hosts, fenced in ZooKeeper, recycled, traceable.

Znodes of a namespace ``NS`` (an absolute, canonical path: :func:`namespace_path`), every one created with a digest
ACL: only the holder of the credentials may read, write or delete them. :class:`ZkLease` refuses to run without
credentials unless told ``insecure=True``, and checks ACLs by allow-list: it refuses a node it relies on that any
identity but its own user may change (:meth:`Namespace.foreign_writers`).

- ``NS/layout``: the layout spec, written once; a worker with another layout refuses to start.
- ``NS/leases/<w>``: the claim on worker ID ``w``, an *ephemeral* node holding the holder's identity.
  It vanishes when the holder's session ends, so churned pods never exhaust the IDs (Leaf #84).
- ``NS/fences/<w>``: persistent ``{"fence_ms", "lease_id"}``. Every write is a multi-op that also checks
  the claim, and is conditional on the fence's version, so only the current holder can move it.
- ``NS/history/<w>``: persistent list of the last ``history_size`` holders, for tracing IDs to nodes.
- ``NS/clock``: a scratch node written to read ZooKeeper's own time (its mtime) for the skew check.

Every record is parsed strictly: a worker ID whose fence or history is torn, not JSON or wrongly typed is
*quarantined* (never claimed, reported), never taken for "never used". Every ZooKeeper request goes through
:meth:`Namespace.wait`, with a time bound (``connect_timeout_s``): a timeout, or any kazoo error its caller does not
handle by name, is :class:`LeaseUnavailable`, so no kazoo exception leaves this module. Stopping the client at
``close()`` is kazoo's own, and may wait up to about 2/3 of the session timeout on a frozen server.

Session states (kazoo) map onto the lease states: SUSPENDED keeps minting up to the reserved fence and
extends nothing; LOST stops minting at once and acquires afresh; CONNECTED after SUSPENDED resumes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from kazoo.client import KazooClient, KazooState, TransactionRequest
from kazoo.exceptions import (
    AuthFailedError,
    BadVersionError,
    KazooException,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.hosts import collect_hosts
from kazoo.interfaces import IAsyncResult
from kazoo.protocol.serialization import Connect
from kazoo.protocol.states import ZnodeStat
from kazoo.security import ACL, Permissions, make_digest_acl

from idgen.errors import InvalidInput, LayoutMismatch, LeaseLost, LeaseUnavailable, UnreadableRecord
from idgen.layout import Layout
from idgen.leases.base import Census, Lease, Reservation
from idgen.leases.credentials import CredentialSource
from idgen.leases.records import WORKER_ID, load_record, parse_fence, parse_history, parse_holder
from idgen.leases.tracing import Holder, remember

log = logging.getLogger("idgen.lease")

ZK_AUTH_ENV = "IDGEN_ZK_AUTH"
ZK_AUTH_FILE_ENV = "IDGEN_ZK_AUTH_FILE"
ZK_INSECURE_ENV = "IDGEN_ZK_INSECURE_NO_AUTH"
ZK_INSECURE_FLAG = "--zk-insecure-no-auth"
DEFAULT_NAMESPACE = "/idgen"
NAMESPACE_MAX_CHARS = 1000
# What ZooKeeper refuses in a path (its PathUtils.validatePath), per UTF-16 unit of its Java strings: NUL, the C0 and
# C1 controls, DEL, U+D800-U+F8FF and U+FFF0-U+FFFF; so also every character beyond U+FFFF (a surrogate pair).
_REFUSED_IN_PATHS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\uf8ff\ufff0-\U0010ffff]")
DEFAULT_SESSION_TIMEOUT_S = 10.0
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_MAX_SKEW_MS = 1_000
CLAIM_SAMPLE = 8  # used worker IDs whose fences a claim reads first, in one round trip: DESIGN.md, the claim path
T = TypeVar("T")
Handled = tuple[type[KazooException], ...]  # the kazoo errors a caller of Namespace.call handles itself
_RETRY = {"max_tries": -1, "delay": 0.1, "backoff": 1.5, "max_delay": 0.5}  # kazoo's default backoff grows to an hour
HANDSHAKE_TIMEOUT_S = 1.0  # the longest a server may leave a connection's handshake unanswered: _bound_handshakes


def zk_hosts(text: str) -> str:
    """``text`` if kazoo can connect to it: ``host[:port][,host[:port]...]``, with no chroot (the namespace is the
    path); else :class:`InvalidInput`."""
    try:
        _, chroot = collect_hosts(text)
    except ValueError as exc:
        raise InvalidInput(f"ZooKeeper hosts {text[:80]!r} are not host:port[,host:port...]: {exc}") from None
    if chroot:
        raise InvalidInput(f"ZooKeeper hosts {text[:80]!r} name a path ({chroot[:80]}): give it as the namespace")
    return text


def namespace_path(text: str) -> str:
    """``text`` if it names a namespace: an absolute, canonical ZooKeeper path of one or more segments (no empty,
    ``.`` or ``..`` segment, no trailing ``/``, no character ZooKeeper refuses, not under the reserved ``/zookeeper``,
    at most ``NAMESPACE_MAX_CHARS``); else :class:`InvalidInput`. Every way in (options, variables, the Python API)
    goes through here before ZooKeeper is touched."""
    problem = _namespace_problem(text)
    if problem:
        raise InvalidInput(f"ZooKeeper namespace {text[:80]!r} {problem}: give an absolute path like /idgen or /ids/a")
    return text


def _namespace_problem(text: str) -> str | None:
    if not text.startswith("/"):
        return "is not an absolute path"
    if len(text) > NAMESPACE_MAX_CHARS:
        return f"is longer than {NAMESPACE_MAX_CHARS} characters"
    if text == "/":
        return "is the root, which is not idgen's to take"
    segments = text[1:].split("/")
    if "" in segments:
        return "has an empty segment (// or a trailing /)"
    if "." in segments or ".." in segments:
        return "has a . or .. segment"
    if _REFUSED_IN_PATHS.search(text):
        return "has a character ZooKeeper refuses in paths"
    if segments[0] == "zookeeper":
        return "is under /zookeeper, which ZooKeeper reserves"
    return None


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


def _explain(exc: KazooException, request: str) -> str:
    """A one-line reason for a ZooKeeper error in answer to ``request`` (``"get /idgen/layout"``), naming the fix
    where there is one."""
    if isinstance(exc, NoAuthError | AuthFailedError):
        path = request.partition(" ")[2]
        return (
            f"ZooKeeper refused access{f' to {path}' if path else ''}: wrong or missing credentials (set"
            f" {ZK_AUTH_ENV}=user:password or {ZK_AUTH_FILE_ENV}=FILE), or the node belongs to another ZooKeeper user"
        )
    detail = " ".join(str(exc).split())
    return f"ZooKeeper failed {request}: {type(exc).__name__}{f' {detail}' if detail else ''}"


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
    _bound_handshakes(client)
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


def _bound_handshakes(client: KazooClient) -> None:
    """Give a server ``HANDSHAKE_TIMEOUT_S`` to answer ``client``'s first handshake, then try again, waiting twice as
    long after each handshake left unanswered, up to kazoo's own wait; an answer resets it.

    kazoo (like ZooKeeper's Java client) waits ``session_timeout / len(hosts)`` for a server to answer a
    connection's handshake. A ZooKeeper 3.8 server that accepts a connection while it starts may never answer it
    (ZOOKEEPER-5051), and neither does a frozen one; with one host, that single wait outlasted the session, so a
    restart of ZooKeeper shorter than the fence window cost the worker ID. The doubling still reaches a server that is
    slow to answer (a new session is a quorum write). Only the handshake's wait changes (kazoo's ``_invoke`` serves
    the handshake and the authentication packet alone; the latter keeps kazoo's wait): the session and its read
    time-out (2/3 of it) stay kazoo's, and a handshake left unanswered is retried sooner. kazoo's private
    ``_invoke``: tests/test_zookeeper_lease.py fails if a kazoo release changes it."""
    connection = client._connection
    invoke = connection._invoke
    wait_s = HANDSHAKE_TIMEOUT_S

    def invoke_bounded(timeout: float, request: Any, xid: int | None = None) -> Any:
        nonlocal wait_s
        if not isinstance(request, Connect):
            return invoke(timeout, request, xid)
        try:
            answer = invoke(min(timeout, wait_s), request, xid)
        except client.handler.timeout_exception:
            wait_s = min(wait_s * 2, timeout)
            raise
        wait_s = HANDSHAKE_TIMEOUT_S
        return answer

    connection._invoke = invoke_bounded


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


_CONTAINERS = ("clock", "leases", "fences", "history")  # the namespace's nodes with children, and the clock
_WRITE_PERMS = Permissions.WRITE | Permissions.CREATE | Permissions.DELETE | Permissions.ADMIN


class Namespace:
    """The znodes of one namespace: the layout check, the ACL check and read-only views. Used by the lease and the
    CLI. Every call returns within ``timeout_s`` or raises :class:`LeaseUnavailable`."""

    def __init__(
        self, client: KazooClient, path: str = DEFAULT_NAMESPACE, *, timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    ) -> None:
        self.client = client
        self.path = namespace_path(path)
        self.timeout_s = timeout_s
        self._layout: Layout | None = None

    def node(self, kind: str, worker_id: int | str | None = None) -> str:
        return f"{self.path}/{kind}" + ("" if worker_id is None else f"/{worker_id}")

    def call(self, operation: str, path: str, *args: Any, handled: Handled = (), **kwargs: Any) -> Any:
        """``client.<operation>(path, *args, **kwargs)``'s answer: see :meth:`wait`."""
        pending = getattr(self.client, f"{operation}_async")(path, *args, **kwargs)
        return self.wait(pending, f"{operation} {path}", handled)

    def commit(self, transaction: TransactionRequest, handled: Handled = ()) -> list[Any]:
        """A transaction's results (an exception in place of each operation that failed): see :meth:`wait`."""
        request = f"a transaction on {transaction.operations[0].path}"
        return self.wait(transaction.commit_async(), request, handled)  # type: ignore[no-any-return]

    def wait(self, pending: IAsyncResult, request: str, handled: Handled = ()) -> Any:
        """The answer to a kazoo request sent as ``pending`` (``request`` says what it was), within ``timeout_s``.

        The errors the caller handles, ``handled``, are raised as kazoo's; any other kazoo error, or no answer in time,
        is a :class:`LeaseUnavailable` saying why in one line. So no kazoo exception leaves this module."""
        try:
            return pending.get(timeout=self.timeout_s)
        except KazooTimeoutError:
            raise LeaseUnavailable(f"ZooKeeper did not answer {request} within {self.timeout_s:g} s") from None
        except KazooException as exc:
            if isinstance(exc, handled):
                raise
            raise LeaseUnavailable(_explain(exc, request)) from None

    def bind_layout(self, layout: Layout) -> None:
        """Store ``layout`` as the namespace's layout, or check that it is the one already stored. A namespace set up
        already (its layout and every container there) costs one round trip: its children and its layout, read
        together; else the containers are made, then the layout (safe when many workers do it at once)."""
        children = self.client.get_children_async(self.path)
        stored = self.client.get_async(self.node("layout"))
        try:
            present = set(self.wait(children, f"get_children {self.path}", handled=(NoNodeError,)))
            data: bytes | None = bytes(self.wait(stored, f"get {self.node('layout')}", handled=(NoNodeError,))[0])
        except NoNodeError:
            present, data = set(), None
        if data is None or not present >= set(_CONTAINERS):
            data = self._set_up(layout)
        if data is not None and (found := self._parse_layout(data)) != layout:
            raise LayoutMismatch(
                f"ZooKeeper namespace {self.path} belongs to layout {found.summary()}, not {layout.summary()}"
            )
        self._layout = layout

    def _set_up(self, layout: Layout) -> bytes | None:
        """Make the containers, then store ``layout``; the layout stored already instead, if there is one."""
        for kind in _CONTAINERS:
            self.call("ensure_path", self.node(kind))
        try:
            self.call(
                "create",
                self.node("layout"),
                json.dumps(layout.spec()).encode(),
                makepath=True,
                handled=(NodeExistsError,),
            )
        except NodeExistsError:
            data, _ = self.call("get", self.node("layout"))
            return bytes(data)
        return None

    def layout(self) -> Layout:
        if self._layout is None:
            try:
                data, _ = self.call("get", self.node("layout"), handled=(NoNodeError,))
            except NoNodeError:
                raise InvalidInput(
                    f"ZooKeeper namespace {self.path} has no idgen layout (nothing was ever minted there)"
                ) from None
            self._layout = self._parse_layout(bytes(data))
        return self._layout

    def _parse_layout(self, data: bytes) -> Layout:
        what = f"the layout record {self.node('layout')}"
        try:
            return Layout.from_spec(load_record(data, what))
        except InvalidInput:
            raise UnreadableRecord(f"{what} is unreadable: not a layout spec") from None

    def containers(self) -> list[str]:
        """The nodes every worker relies on: the namespace itself, ``layout``, ``clock``, ``leases``, ``fences`` and
        ``history``. Creating or deleting a child takes CREATE or DELETE on its container."""
        return [self.path, self.node("layout"), *(self.node(kind) for kind in _CONTAINERS)]

    def worker_nodes(self, worker_id: int) -> list[str]:
        """The nodes of one worker ID: its claim, fence and history."""
        return [self.node(kind, worker_id) for kind in ("leases", "fences", "history")]

    def foreign_writers(self, paths: Sequence[str], auth: str) -> list[tuple[str, ACL]]:
        """Each existing node of ``paths`` whose ACL lets an identity other than ``auth``'s digest user write, create,
        delete or change the ACL, with the first such entry. An allow-list: whatever the scheme (world, ip, digest,
        auth, sasl, x509...), only idgen's own user may hold more than READ. The ACLs are read in one round trip."""
        mine = digest_acl(auth).id
        pending = [(path, self.client.get_acls_async(path)) for path in paths]
        found = []
        for path, acls in pending:
            try:
                acl, _ = self.wait(acls, f"get_acls {path}", handled=(NoNodeError,))
            except NoNodeError:
                continue
            foreign = [entry for entry in acl if entry.perms & _WRITE_PERMS and entry.id != mine]
            if foreign:
                found.append((path, foreign[0]))
        return found

    def secure(self, auth: str) -> list[str]:
        """Replace, on every node of the namespace (the containers and all their children), each ACL entry that lets
        another identity than ``auth``'s user change the node with idgen's own (everything, for that user only);
        read-only entries stay. The paths changed."""
        paths = self.containers()
        for kind in ("leases", "fences", "history"):
            paths += [self.node(kind, child) for child in self._children(kind, strict=False)]
        mine = digest_acl(auth)
        changed = []
        for path, _ in self.foreign_writers(paths, auth):
            acl, stat = self.call("get_acls", path)
            kept = [entry for entry in acl if not entry.perms & _WRITE_PERMS and entry.id != mine.id]
            self.call("set_acls", path, [*kept, mine], stat.aversion)
            changed.append(path)
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

    def scan_fences(self) -> tuple[dict[int, int], dict[int, str]]:
        """The fence of every worker ID that has one, and why each unreadable fence cannot be read."""
        return self.read_fences(self.worker_ids("fences"))

    def read_fences(self, worker_ids: Sequence[int]) -> tuple[dict[int, int], dict[int, str]]:
        """The fences of ``worker_ids`` that exist, and why each unreadable one cannot be read: one request per worker
        ID, all sent before any answer is awaited (one round trip)."""
        pending = [(w, self.node("fences", w)) for w in worker_ids]
        sent = [(w, path, self.client.get_async(path)) for w, path in pending]
        fences, unreadable = {}, {}
        for worker_id, path, answer in sent:
            try:
                data, _ = self.wait(answer, f"get {path}", handled=(NoNodeError,))
            except NoNodeError:
                continue
            try:
                fences[worker_id] = parse_fence(bytes(data), f"the fence {path}")["fence_ms"]
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
        return self.listings([kind])[0]

    def listings(self, kinds: Sequence[str]) -> list[list[int]]:
        """:meth:`worker_ids` of each of ``kinds``, all listed in one round trip."""
        capacity = self.layout().worker_capacity
        sent = [self.client.get_children_async(self.node(kind)) for kind in kinds]
        listed = [self._children(kind, strict=True, sent=answer) for kind, answer in zip(kinds, sent, strict=True)]
        return [[int(c) for c in children if int(c) < capacity] for children in listed]

    def _children(self, kind: str, strict: bool, sent: IAsyncResult | None = None) -> list[str]:
        """The children of ``kind`` (only the ones that look like a worker ID if ``strict``), from the request
        ``sent`` if one is under way."""
        path = self.node(kind)
        try:
            children: list[str] = self.wait(
                sent if sent is not None else self.client.get_children_async(path),
                f"get_children {path}",
                (NoNodeError,),
            )
        except NoNodeError:
            return []
        return [c for c in children if WORKER_ID.fullmatch(c)] if strict else children

    def _get(self, path: str) -> bytes | None:
        try:
            data, _ = self.call("get", path, handled=(NoNodeError,))
        except NoNodeError:
            return None
        return bytes(data)


def _fence_gone(worker_id: int) -> str:
    return f"worker {worker_id} has a history of holders but no fence (deleted?)"


_PERMISSION_LETTERS = (
    ("c", Permissions.CREATE),
    ("d", Permissions.DELETE),
    ("r", Permissions.READ),
    ("w", Permissions.WRITE),
    ("a", Permissions.ADMIN),
)


def _acl_text(entry: ACL) -> str:
    """An ACL entry as ZooKeeper's own CLI writes it: ``ip:0.0.0.0/0:cdrwa``."""
    letters = "".join(letter for letter, bit in _PERMISSION_LETTERS if entry.perms & bit)
    return f"{entry.id.scheme}:{entry.id.id}:{letters}"


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
        self.hosts = zk_hosts(hosts)
        self.namespace_path = namespace_path(namespace)
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
        self._strays: set[int] = set()  # worker IDs this session may hold a claim on, unused: see _drop_strays

    # -- connection and clock check -----------------------------------------------------------------

    @property
    def namespace(self) -> Namespace:
        if self._ns is None:
            client = connect(self.hosts, self.auth, self.session_timeout_s, self.connect_timeout_s)
            try:
                namespace = Namespace(client, self.namespace_path, timeout_s=self.connect_timeout_s)
                namespace.bind_layout(self.layout)
                self._refuse_foreign_writers(namespace, namespace.containers())  # as they are once all exist
            except BaseException:
                client.stop()
                client.close()
                raise
            client.add_listener(self._on_session_state)
            self._client, self._ns = client, namespace
        return self._ns

    def _refuse_foreign_writers(self, namespace: Namespace, paths: list[str]) -> None:
        """:class:`LeaseUnavailable` if any of ``paths`` lets another identity than idgen's user change it (nothing
        to check without credentials: the operator opted out of access control)."""
        if self.auth is None:
            return
        found = namespace.foreign_writers(paths, self.auth)
        if found:
            path, entry = found[0]
            more = f" (and {len(found) - 1} more nodes)" if len(found) > 1 else ""
            raise LeaseUnavailable(
                f"ZooKeeper node {path}{more} has the ACL entry {_acl_text(entry)}: an identity other than idgen's user"
                f" {self.auth.partition(':')[0]!r} may change it, and could delete claims and fences. Give it idgen's"
                f" ACL with: idgen zk-secure --namespace {namespace.path} --zk {self.hosts}"
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
        stat = namespace.call("set", namespace.node("clock"), b"")  # created by bind_layout
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
        session_id = self._session_id()
        self._drop_strays(session_id)
        live, fenced = (set(listed) for listed in namespace.listings(["leases", "fences"]))
        usable = [w for w in range(self.layout.worker_capacity) if w not in live and w not in self.quarantined]
        for worker_id in self._candidates(usable, fenced):
            claimed = self._claim(worker_id, holder, session_id)
            if claimed:
                return claimed
        quarantined = f" ({len(self.quarantined)} of them quarantined: unreadable records)" if self.quarantined else ""
        raise self._none_claimable(
            f"all {self.layout.worker_capacity} worker IDs of layout {self.layout.name!r} in ZooKeeper namespace"
            f" {namespace.path} are held by live workers{quarantined}"
        )

    def _candidates(self, usable: Sequence[int], fenced: set[int]) -> Iterator[int]:
        """The worker IDs of ``usable`` (free and not quarantined when listed) in the order to try to claim them, read
        lazily: a claim that succeeds reads no further (DESIGN.md, *the claim path and its cost*).

        First the never-used ones (no fence listed), in random order, so starters spread instead of colliding. Then
        the used ones in random batches of ``CLAIM_SAMPLE``, doubling: the fences of a batch are read in one round
        trip (an unreadable one quarantines its worker ID), and the batch is tried in :meth:`_claim_order` (oldest
        fence first; for a switch, only fences below its bound). So the first try is the oldest of a random sample,
        the newest fence of the sample is tried last, and a switch reads batches until one qualifies or none is
        left: at most ``log2(capacity / CLAIM_SAMPLE) + 1`` rounds."""
        never_used = [w for w in usable if w not in fenced]
        used = [w for w in usable if w in fenced]
        random.shuffle(never_used)
        random.shuffle(used)
        yield from never_used
        batch_size = CLAIM_SAMPLE
        while used:
            batch, used = used[:batch_size], used[batch_size:]
            fences, unreadable = self.namespace.read_fences(batch)
            for worker_id, why in unreadable.items():
                self._quarantine(worker_id, why)
            yield from self._claim_order([w for w in batch if w not in unreadable], fences)
            batch_size *= 2

    def _claim(self, worker_id: int, holder: Holder, session_id: int) -> Reservation | None:
        """Create the claim on ``worker_id``, check the ACLs of its nodes, and write its first fence and history;
        ``None`` if it is taken, or if its records cannot be read (then it is quarantined and the claim dropped).

        From the create until it returns a reservation or drops the claim, this session may own a claim it does not
        hold: a create whose reply was lost (it landed or not), or any failure after it. So the worker ID is a stray
        all along (:meth:`_drop_strays`), and stays one if this raises."""
        namespace = self.namespace
        lease_path = namespace.node("leases", worker_id)
        me = replace(holder, worker_id=worker_id, lease_id=f"{session_id:016x}-{uuid.uuid4().hex[:8]}")
        self._strays.add(worker_id)
        try:
            namespace.call("create", lease_path, _json(me.to_json()), ephemeral=True, handled=(NodeExistsError,))
        except NodeExistsError:  # another worker's; or this session's, if a create of it was ever answered twice
            self._drop_claim(worker_id, session_id)
            return None
        self._refuse_foreign_writers(namespace, namespace.worker_nodes(worker_id))
        fence_path, history_path = namespace.node("fences", worker_id), namespace.node("history", worker_id)
        sent = [namespace.client.get_async(path) for path in (fence_path, history_path)]  # one round trip
        try:
            fence_data, fence_stat = self._read(fence_path, parse_fence, sent[0])
            history_data, history_stat = self._read(history_path, parse_history, sent[1])
            if fence_data is None and history_data:
                raise UnreadableRecord(_fence_gone(worker_id))
        except UnreadableRecord as exc:
            self._quarantine(worker_id, str(exc))
            self._drop_claim(worker_id)
            return None
        found = fence_data["fence_ms"] if fence_data else None
        if found is not None and self._fence_below_ms is not None and found >= self._fence_below_ms:
            self._drop_claim(worker_id)  # a switch's bound: its fence rose since it was listed or sampled
            return None
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
        results = namespace.commit(transaction)
        if any(isinstance(r, Exception) for r in results):
            self._drop_claim(worker_id)  # someone raced us on the records; leave this worker ID alone
            return None
        self._strays.discard(worker_id)
        self._fence_version = results[2].version if isinstance(results[2], ZnodeStat) else 0
        return Reservation(worker_id, after, fence, me.lease_id, found)

    def _extend(self, reservation: Reservation, fence_ms: int) -> None:
        try:
            self._write_fence(reservation, fence_ms)
        except LeaseLost:
            self._strays.add(reservation.worker_id)  # minting stops first; the next acquisition drops the claim
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

    def _session_id(self) -> int:
        """This client's ZooKeeper session, or :class:`LeaseUnavailable` while it has none (reconnecting)."""
        client_id = self.namespace.client.client_id
        if client_id is None:
            raise LeaseUnavailable(f"no ZooKeeper session with {self.hosts} (reconnecting)")
        return int(client_id[0])

    def _drop_strays(self, session_id: int) -> None:
        """Delete the claims of this session that it does not hold: of a lease lost while the session lived, of a
        create whose reply was lost, of a claim that failed half-way. Their ``ephemeralOwner`` is this session, so
        otherwise they would look held by a live worker until the session ends. None was ever given a reservation,
        or else its minting has stopped (LOST), so whoever claims the worker ID next starts above its fence."""
        for worker_id in sorted(self._strays):
            self._drop_claim(worker_id, session_id)

    def _drop_claim(self, worker_id: int, session_id: int | None = None) -> None:
        """Delete the claim on ``worker_id`` if it is still this session's (``session_id``; ``None``: known to be);
        then it is no stray. :class:`LeaseUnavailable` leaves it one, for the next acquisition."""
        path = self.namespace.node("leases", worker_id)
        stat = self.namespace.call("exists", path)
        if stat is not None and (session_id is None or stat.ephemeralOwner == session_id):
            with contextlib.suppress(NoNodeError, BadVersionError):
                self.namespace.call("delete", path, stat.version, handled=(NoNodeError, BadVersionError))
        self._strays.discard(worker_id)

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
                results = namespace.commit(transaction, handled=(SessionExpiredError,))  # never hang renewal
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

    def _read(
        self, path: str, parse: Callable[[bytes, str], T], sent: IAsyncResult | None = None
    ) -> tuple[T | None, ZnodeStat | None]:
        """The record at ``path`` parsed by ``parse`` (:class:`UnreadableRecord` if it does not parse), and its stat;
        from the request ``sent`` if one is under way."""
        namespace = self.namespace
        try:
            data, stat = namespace.wait(
                sent if sent is not None else namespace.client.get_async(path), f"get {path}", (NoNodeError,)
            )
        except NoNodeError:
            return None, None
        return parse(bytes(data), path), stat

    def census(self) -> Census:
        """One ``get_children`` of the claims (``NS/leases``), on this lease's connection; none is opened for it."""
        namespace = self._ns
        if namespace is None or not namespace.client.connected:
            raise LeaseUnavailable("not connected to ZooKeeper")
        held = set(namespace.worker_ids("leases"))  # Namespace.call: any kazoo error is a LeaseUnavailable
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
