"""The etcd lease backend: worker IDs for many hosts, fenced in etcd, recycled, traceable.

Keys of a namespace ``NS`` (a key prefix like ``/idgen``; with credentials, the etcd user's role should grant
readwrite on that prefix only):

- ``NS/layout``: the layout spec, written once (create-if-absent); a worker with another layout refuses to start.
- ``NS/leases/<w>``: the claim on worker ID ``w``, holding the holder's identity. It is created only if absent
  (a transaction comparing its ``create_revision`` with 0) and is bound to the holder's *etcd lease*, which plays
  the part of ZooKeeper's session: it is kept alive every third of ``ttl_s`` and its keys vanish when it expires.
- ``NS/fences/<w>``: ``{"fence_ms", "lease_id"}``. Every write is a transaction that compares the claim's
  ``create_revision`` (the claim is still this holder's) and the fence's ``mod_revision`` (nobody wrote it since).
- ``NS/history/<w>``: the last ``history_size`` holders, for tracing IDs to nodes.

Every record is parsed strictly (:mod:`.records`): a worker ID whose fence or history cannot be read is quarantined.

Cold start costs O(1) requests however many worker IDs there are: one transaction reads every fence and every claim
(two prefix ranges at one revision), then a claim takes two transactions (create the claim and read the worker ID's
fence and history; write the first fence and history). A claim that loses a race learns the current claims from the
same transaction and tries a random one among the next best candidates, spreading starters apart.

The etcd lease: a keepalive thread renews it. A keepalive that fails suspends the lease (mint up to the reserved
fence, extend nothing); once no keepalive has succeeded for ``ttl_s`` minus a margin, counted from the moment the
last successful one was *sent* (the server's expiry is later than that), the lease is lost: minting stops before
etcd can expire the claim and another holder take it. A keepalive answered with no TTL (expired) loses it at once.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import threading
import time
import uuid
from dataclasses import replace
from email.utils import parsedate_to_datetime
from typing import Any

from idgen.errors import InvalidInput, LayoutMismatch, LeaseLost, LeaseUnavailable, UnreadableRecord
from idgen.layout import Layout
from idgen.leases.base import Census, Lease, Reservation
from idgen.leases.etcdgateway import (
    DEFAULT_TIMEOUT_S,
    ETCD_CA_ENV,
    ETCD_CERT_ENV,
    ETCD_CREDENTIALS,
    ETCD_KEY_ENV,
    EtcdClient,
    EtcdError,
    EtcdTls,
    b64,
    range_request,
    required_credentials,
    unb64,
)
from idgen.leases.records import WORKER_ID, load_record, parse_fence, parse_history, parse_holder
from idgen.leases.tracing import Holder, remember

__all__ = [  # what the CLI, the config and the tests take from here: the backend and how to connect to it
    "DEFAULT_NAMESPACE",
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_TTL_S",
    "ETCD_CA_ENV",
    "ETCD_CERT_ENV",
    "ETCD_CREDENTIALS",
    "ETCD_KEY_ENV",
    "EtcdClient",
    "EtcdError",
    "EtcdLease",
    "EtcdNamespace",
    "EtcdTls",
    "required_credentials",
]

log = logging.getLogger("idgen.lease")

DEFAULT_NAMESPACE = "/idgen"
DEFAULT_TTL_S = 10.0
DEFAULT_MAX_SKEW_MS = 1_000


def _range_op(key: str, **options: bool) -> dict[str, Any]:
    return {"request_range": range_request(key, **options)}


def _put_op(key: str, value: Any, lease: str | None = None) -> dict[str, Any]:
    encoded = base64.b64encode(_json(value)).decode()
    return {"request_put": {"key": b64(key), "value": encoded, **({"lease": lease} if lease else {})}}


def _delete_op(key: str) -> dict[str, Any]:
    return {"request_delete_range": {"key": b64(key)}}


def _compare(key: str, target: str, revision: int) -> dict[str, Any]:
    field = {"CREATE": "create_revision", "MOD": "mod_revision"}[target]
    return {"key": b64(key), "target": target, "result": "EQUAL", field: str(revision)}


def _kvs(response: dict[str, Any]) -> list[dict[str, Any]]:
    kvs: list[dict[str, Any]] = response.get("response_range", {}).get("kvs", [])
    return kvs


def _one(response: dict[str, Any]) -> dict[str, Any] | None:
    kvs = _kvs(response)
    return kvs[0] if kvs else None


def _value(kv: dict[str, Any]) -> bytes:
    return unb64(kv.get("value", ""))


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _fence_gone(worker_id: int) -> str:
    return f"worker {worker_id} has a history of holders but no fence (deleted?)"


class EtcdNamespace:
    """The keys of one namespace: the layout binding and read-only views, for the lease and the CLI."""

    def __init__(self, client: EtcdClient, path: str = DEFAULT_NAMESPACE) -> None:
        if not path.startswith("/") or path.endswith("/"):
            raise InvalidInput(f"etcd namespace {path!r} must be an absolute path like /idgen")
        self.client = client
        self.path = path
        self._layout: Layout | None = None

    def key(self, kind: str, worker_id: int | None = None) -> str:
        return f"{self.path}/{kind}" + ("" if worker_id is None else f"/{worker_id}")

    def prefix(self, kind: str) -> str:
        return f"{self.path}/{kind}/"

    def bind_layout(self, layout: Layout) -> None:
        """Store ``layout`` as the namespace's layout (create-if-absent), or check it is the one stored."""
        key = self.key("layout")
        created, responses, _ = self.client.txn(
            [_compare(key, "CREATE", 0)], [_put_op(key, layout.spec())], [_range_op(key)]
        )
        if not created:
            stored = self._parse_layout(responses[0])
            if stored != layout:
                raise LayoutMismatch(
                    f"etcd namespace {self.path} belongs to layout {stored.summary()}, not {layout.summary()}"
                )
        self._layout = layout

    def layout(self) -> Layout:
        if self._layout is None:
            _, responses, _ = self.client.txn([], [_range_op(self.key("layout"))])
            self._layout = self._parse_layout(responses[0])
        return self._layout

    def _parse_layout(self, response: dict[str, Any]) -> Layout:
        kv = _one(response)
        if kv is None:
            raise InvalidInput(f"etcd namespace {self.path} has no idgen layout (nothing was ever minted there)")
        what = f"the layout record {self.key('layout')}"
        try:
            return Layout.from_spec(load_record(_value(kv), what))
        except InvalidInput:
            raise UnreadableRecord(f"{what} is unreadable: not a layout spec") from None

    def worker_id_of(self, kv: dict[str, Any], kind: str) -> int | None:
        """The worker ID a key of ``kind`` names (canonical decimal, in range), else ``None``."""
        name = unb64(kv["key"]).decode(errors="replace")[len(self.prefix(kind)) :]
        if not WORKER_ID.fullmatch(name) or int(name) >= self.layout().worker_capacity:
            return None
        return int(name)

    def ids_of(self, response: dict[str, Any], kind: str) -> set[int]:
        return {w for kv in _kvs(response) if (w := self.worker_id_of(kv, kind)) is not None}

    def parse_fences(self, response: dict[str, Any]) -> tuple[dict[int, tuple[int, int]], dict[int, str]]:
        """From a range over the fences: ``{worker ID: (fence_ms, mod_revision)}`` and why unreadable ones are."""
        fences, unreadable = {}, {}
        for kv in _kvs(response):
            worker_id = self.worker_id_of(kv, "fences")
            if worker_id is None:
                continue
            try:
                fence = parse_fence(_value(kv), f"the fence {self.key('fences', worker_id)}")
            except UnreadableRecord as exc:
                unreadable[worker_id] = str(exc)
            else:
                fences[worker_id] = (fence["fence_ms"], int(kv["mod_revision"]))
        return fences, unreadable

    def scan(self) -> tuple[dict[int, tuple[int, int]], dict[int, str], set[int]]:
        """Every fence (parsed), the unreadable ones, and the claimed worker IDs, at one revision: one request."""
        _, responses, _ = self.client.txn(
            [],
            [
                _range_op(self.prefix("fences"), prefix=True),
                _range_op(self.prefix("leases"), prefix=True, keys_only=True),
            ],
        )
        fences, unreadable = self.parse_fences(responses[0])
        return fences, unreadable, self.ids_of(responses[1], "leases")

    def claimed(self) -> set[int]:
        return self.ids_of(
            {"response_range": {"kvs": self.client.range(self.prefix("leases"), prefix=True, keys_only=True)}}, "leases"
        )

    def fence(self, worker_id: int) -> int | None:
        kvs = self.client.range(self.key("fences", worker_id))
        return (
            None if not kvs else parse_fence(_value(kvs[0]), f"the fence {self.key('fences', worker_id)}")["fence_ms"]
        )

    def holders(self, worker_id: int) -> list[Holder]:
        kvs = self.client.range(self.key("history", worker_id))
        what = f"the history of worker {worker_id} ({self.key('history', worker_id)})"
        return [] if not kvs else parse_history(_value(kvs[0]), what)

    def describe(self) -> dict[str, Any]:
        """Everything ``idgen leases`` shows: live leases, fences, histories and unreadable worker IDs. Three
        requests: the fences and claims at one revision, then every history in one prefix range."""
        _, responses, _ = self.client.txn(
            [],
            [
                _range_op(self.prefix("fences"), prefix=True),
                _range_op(self.prefix("leases"), prefix=True),
                _range_op(self.prefix("history"), prefix=True),
            ],
        )
        fences, quarantined = self.parse_fences(responses[0])
        leases: dict[str, dict[str, Any] | None] = {}
        for kv in _kvs(responses[1]):
            worker_id = self.worker_id_of(kv, "leases")
            if worker_id is not None:
                what = f"the claim {self.key('leases', worker_id)}"
                try:
                    leases[str(worker_id)] = parse_holder(load_record(_value(kv), what), what).to_json()
                except UnreadableRecord:
                    leases[str(worker_id)] = None
        history = {}
        for kv in _kvs(responses[2]):
            worker_id = self.worker_id_of(kv, "history")
            if worker_id is None or worker_id in quarantined:
                continue
            try:
                holders = parse_history(_value(kv), f"the history of worker {worker_id}")
                if holders and worker_id not in fences:
                    raise UnreadableRecord(_fence_gone(worker_id))
            except UnreadableRecord as exc:
                quarantined[worker_id] = str(exc)
            else:
                history[str(worker_id)] = [h.to_json() for h in holders]
        return {
            "namespace": self.path,
            "layout": self.layout().spec(),
            "leases": dict(sorted(leases.items(), key=lambda item: int(item[0]))),
            "fences": {str(w): f for w, (f, _) in sorted(fences.items())},
            "history": dict(sorted(history.items(), key=lambda item: int(item[0]))),
            "quarantined": {str(w): why for w, why in sorted(quarantined.items())},
        }


class EtcdLease(Lease):
    """A worker ID leased from the etcd cluster at ``endpoints`` (URLs, comma-separated) under ``namespace``.

    ``auth`` (``user:password``) is required; ``insecure=True`` instead runs
    without access control (anyone who reaches etcd can delete a claim or a fence). ``ttl_s`` is the etcd lease's
    TTL: a holder that stops renewing loses its claim after it. ``timeout_s`` bounds every etcd call.
    """

    def __init__(
        self,
        layout: Layout,
        endpoints: str,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        auth: str | None = None,
        insecure: bool = False,
        tls: EtcdTls | None = None,
        ttl_s: float = DEFAULT_TTL_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
        **options: Any,
    ) -> None:
        if auth is None and not insecure:
            raise InvalidInput(
                "EtcdLease needs etcd credentials, auth='user:password', or insecure=True to run without access control"
            )
        if ttl_s < 2:
            raise InvalidInput(f"etcd lease TTL {ttl_s:g} s is too short (at least 2 s)")
        super().__init__(layout, **options)
        self.endpoints = endpoints
        self.namespace_path = namespace
        self.auth = auth
        self.tls = tls
        self.insecure = auth is None
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.max_skew_ms = max_skew_ms
        EtcdNamespace(EtcdClient(endpoints, auth, tls=tls), namespace)  # validates both now, not at start
        if self.insecure:
            log.warning(
                "etcd without credentials: anyone who can reach %s can delete claims and fences, and duplicate IDs"
                " follow",
                endpoints,
                extra={"event": "etcd_insecure", "endpoints": endpoints, "namespace": namespace},
            )

    def _init_runtime(self) -> None:
        super()._init_runtime()
        self.skew_ms: float | None = None
        # A forked child shares nothing with the parent's run: not its connections, nor its etcd lease.
        self._ns: EtcdNamespace | None = None
        self._etcd_lease: str | None = None
        self._expires_at = 0.0  # monotonic s: the etcd lease lives at least until then (last keepalive sent + TTL)
        self._stale_lease: str | None = None  # given up on: revoked before acquiring anew
        self._keepalive_thread: threading.Thread | None = None
        self._keepalive_failing = False
        self._claim_revision = 0
        self._fence_revision = 0

    @property
    def margin_s(self) -> float:
        """How long before the etcd lease can expire the holder stops minting if keepalives keep failing."""
        return min(1.0, self.ttl_s / 4)

    @property
    def namespace(self) -> EtcdNamespace:
        if self._ns is None:
            namespace = EtcdNamespace(
                EtcdClient(self.endpoints, self.auth, timeout_s=self.timeout_s, tls=self.tls), self.namespace_path
            )
            namespace.bind_layout(self.layout)
            self._ns = namespace
        return self._ns

    # -- the etcd lease (the session) ---------------------------------------------------------------

    def _session(self) -> str:
        """The live etcd lease claims are bound to; granted (and kept alive from then on) if there is none."""
        client = self.namespace.client
        if self._stale_lease is not None:
            stale, self._stale_lease = self._stale_lease, None
            try:  # frees any claim still bound to it now rather than after its TTL
                client.revoke(stale)
            except LeaseUnavailable as exc:
                log.warning("could not revoke etcd lease %s: %s", stale, exc, extra={"event": "etcd_revoke_failed"})
        if self._etcd_lease is None:
            sent = time.monotonic()
            lease, ttl = client.grant(self.ttl_s)
            self._expires_at, self._etcd_lease, self._keepalive_failing = sent + ttl, lease, False
            if self._keepalive_thread is None:
                self._keepalive_thread = threading.Thread(target=self._keep_alive, name="idgen-etcd", daemon=True)
                self._keepalive_thread.start()
        return self._etcd_lease

    def _keep_alive(self) -> None:
        """Renew the etcd lease every third of its TTL; suspend on a failure, lose it before it can expire."""
        while not self._closing.is_set():
            lease, namespace = self._etcd_lease, self._ns
            if lease is None or namespace is None:
                self._closing.wait(self.ttl_s / 3)
                continue
            sent = time.monotonic()
            try:
                ttl = namespace.client.keepalive(lease, timeout_s=max(self._expires_at - self.margin_s - sent, 0.05))
            except LeaseUnavailable as exc:
                ttl = -1
                why = str(exc)
            if lease != self._etcd_lease:
                continue  # given up meanwhile
            if ttl > 0:
                self._expires_at = sent + ttl
                if self._keepalive_failing:
                    self._keepalive_failing = False
                    self._resume()
                self._closing.wait(ttl / 3)
                continue
            if ttl == 0:
                self._drop_session("the etcd lease expired")
                continue
            if time.monotonic() >= self._expires_at - self.margin_s:
                self._drop_session(
                    f"no etcd keepalive succeeded within the lease's TTL less {self.margin_s:g} s ({why})"
                )
                continue
            if not self._keepalive_failing:
                self._keepalive_failing = True
                self._suspend()
            self._closing.wait(min(0.2, max(self._expires_at - self.margin_s - time.monotonic(), 0.0)))

    def _drop_session(self, why: str) -> None:
        """Give up the etcd lease: minting stops first, then it is revoked (if etcd answers) and a new one granted."""
        self._stale_lease, self._etcd_lease = self._etcd_lease, None
        self._lose(why)

    # -- clock check --------------------------------------------------------------------------------

    def _clock_problem(self) -> str | None:
        """Compare the local clock with the ``Date`` header of an etcd member's answer (etcd keeps no time of its own
        in its data). ``Date`` has whole seconds: the member's clock at answering was in ``[D, D + 1 s)``, the local
        one in ``[before, after]``; only a difference that exceeds ``max_skew_ms`` at every point of both brackets
        fails, so this catches a clock off by more than ``max_skew_ms`` plus at most one second."""
        namespace = self.namespace
        started = time.monotonic()
        before = self._now_ms()
        header = namespace.client.date(namespace.key("layout"))
        after = self._now_ms()
        rtt = (time.monotonic() - started) * 1000
        try:
            server_ms = parsedate_to_datetime(header or "").timestamp() * 1000
        except (TypeError, ValueError):
            return "etcd's answer carried no Date header to check the local clock against"
        self.skew_ms = (before + after) / 2 - (server_ms + 500)
        if rtt > self.max_skew_ms:
            return (
                f"etcd took {rtt:.0f} ms to answer the clock check, longer than the {self.max_skew_ms} ms skew"
                " allowed, so the skew cannot be told; not leasing or extending until it can"
            )
        low, high = before - (server_ms + 1000), after - server_ms
        if low > self.max_skew_ms or high < -self.max_skew_ms:
            worst = low if low > self.max_skew_ms else high
            return (
                f"local clock differs from etcd's by {worst:+.0f} ms or more, beyond the {self.max_skew_ms} ms"
                " allowed; not leasing or extending until it is back in bounds"
            )
        return None

    # -- storage operations -------------------------------------------------------------------------

    def _acquire(self, holder: Holder) -> Reservation:
        namespace = self.namespace
        lease = self._session()
        fences, unreadable, live = namespace.scan()
        for worker_id, why in unreadable.items():
            self._quarantine(worker_id, why)
        usable = [w for w in range(self.layout.worker_capacity) if w not in live and w not in self.quarantined]
        order = self._claim_order(usable, {w: f for w, (f, _) in fences.items()})
        collisions = 0
        while order:
            # the best candidate first; after a collision, a random one among the next 2, 4, 8... best, so that
            # workers starting together spread out instead of colliding on every candidate in turn
            worker_id = order.pop(random.randrange(min(2**collisions, len(order))))
            claimed = self._claim(worker_id, holder, lease)
            if isinstance(claimed, Reservation):
                return claimed
            if claimed is not None:
                collisions += 1
                order = [w for w in order if w not in claimed]
        quarantined = f" ({len(self.quarantined)} of them quarantined: unreadable records)" if self.quarantined else ""
        raise self._none_claimable(
            f"all {self.layout.worker_capacity} worker IDs of layout {self.layout.name!r} in etcd namespace"
            f" {namespace.path} are held by live workers{quarantined}"
        )

    def _claim(self, worker_id: int, holder: Holder, lease: str) -> Reservation | set[int] | None:
        """Claim ``worker_id`` and write its first fence and history. If another holder has it, the worker IDs
        claimed now; ``None`` if its records cannot be read (it is quarantined) or they changed under the claim."""
        namespace = self.namespace
        claim_key, fence_key, history_key = (namespace.key(k, worker_id) for k in ("leases", "fences", "history"))
        me = replace(holder, worker_id=worker_id, lease_id=f"{int(lease):016x}-{uuid.uuid4().hex[:8]}")
        created, responses, revision = namespace.client.txn(
            [_compare(claim_key, "CREATE", 0)],
            [_put_op(claim_key, me.to_json(), lease), _range_op(fence_key), _range_op(history_key)],
            [_range_op(claim_key), _range_op(namespace.prefix("leases"), prefix=True, keys_only=True)],
        )
        if not created:
            mine = _one(responses[0])
            if mine is not None and mine.get("lease") == lease:  # an earlier try landed but its answer was lost
                self._delete_claim(claim_key, int(mine["create_revision"]))
                return None
            return namespace.ids_of(responses[1], "leases")
        fence_kv, history_kv = _one(responses[1]), _one(responses[2])
        try:
            found_fence = None if fence_kv is None else parse_fence(_value(fence_kv), f"the fence {fence_key}")
            history = [] if history_kv is None else parse_history(_value(history_kv), f"the history {history_key}")
            if found_fence is None and history:
                raise UnreadableRecord(_fence_gone(worker_id))
        except UnreadableRecord as exc:
            self._quarantine(worker_id, str(exc))
            self._delete_claim(claim_key, revision)
            return None
        found = None if found_fence is None else found_fence["fence_ms"]
        after = self._claim_after(found)
        me = replace(me, after_ms=after)
        fence = self._first_fence(after)
        written, _, written_at = namespace.client.txn(
            [
                _compare(claim_key, "CREATE", revision),
                _compare(fence_key, "MOD", 0 if fence_kv is None else int(fence_kv["mod_revision"])),
                _compare(history_key, "MOD", 0 if history_kv is None else int(history_kv["mod_revision"])),
            ],
            [
                _put_op(claim_key, me.to_json(), lease),
                _put_op(fence_key, {"fence_ms": fence, "lease_id": me.lease_id}),
                _put_op(history_key, [h.to_json() for h in remember(history, me, self.history_size, found)]),
            ],
        )
        if not written or lease != self._etcd_lease:
            # someone raced us on the records, or the keepalive thread gave up on the etcd lease meanwhile (a claim
            # bound to it would live only until it expires): leave this worker ID alone
            self._delete_claim(claim_key, revision)
            return None
        self._claim_revision, self._fence_revision = revision, written_at
        return Reservation(worker_id, after, fence, me.lease_id, found)

    def _delete_claim(self, claim_key: str, revision: int) -> None:
        self.namespace.client.txn([_compare(claim_key, "CREATE", revision)], [_delete_op(claim_key)])

    def _extend(self, reservation: Reservation, fence_ms: int) -> None:
        try:
            self._write_fence(reservation, fence_ms)
        except LeaseLost:
            self._stale_lease, self._etcd_lease = self._etcd_lease, None  # revoked, with the claim, before the next
            raise

    def _release(self, reservation: Reservation, final_fence_ms: int) -> None:
        namespace = self.namespace
        history_key = namespace.key("history", reservation.worker_id)
        kvs = namespace.client.range(history_key)
        history = [] if not kvs else parse_history(_value(kvs[0]), f"the history {history_key}")
        ended = self._now_ms()
        history = [
            h if h.lease_id != reservation.lease_id else replace(h, ended_ms=ended, fence_ms=final_fence_ms)
            for h in history
        ]
        also = (history_key, [h.to_json() for h in history], int(kvs[0]["mod_revision"]) if kvs else 0)
        self._write_fence(reservation, final_fence_ms, also_history=also, then_delete=True)

    def _write_fence(
        self,
        reservation: Reservation,
        fence_ms: int,
        also_history: tuple[str, list[dict[str, Any]], int] | None = None,
        then_delete: bool = False,
    ) -> None:
        """Write the fence in one transaction that checks the claim is ours; raise :class:`LeaseLost` if it is not."""
        namespace = self.namespace
        claim_key = namespace.key("leases", reservation.worker_id)
        fence_key = namespace.key("fences", reservation.worker_id)
        for attempt in range(2):
            compare = [
                _compare(claim_key, "CREATE", self._claim_revision),
                _compare(fence_key, "MOD", self._fence_revision),
            ]
            success = [_put_op(fence_key, {"fence_ms": fence_ms, "lease_id": reservation.lease_id})]
            if also_history is not None:
                key, value, revision = also_history
                compare.append(_compare(key, "MOD", revision))
                success.append(_put_op(key, value))
            if then_delete:
                success.append(_delete_op(claim_key))
            written, responses, revision = namespace.client.txn(
                compare, success, [_range_op(claim_key, keys_only=True), _range_op(fence_key)]
            )
            if written:
                self._fence_revision = revision
                return
            claim, fence = _one(responses[0]), _one(responses[1])
            ours = claim is not None and int(claim["create_revision"]) == self._claim_revision
            if attempt == 0 and ours and fence is not None and self._adopt(fence, reservation):
                continue  # our own earlier write landed although its answer was lost; retry on its revision
            why = "its claim is gone or another's" if not ours else "its fence or history was changed by another"
            raise LeaseLost(f"worker {reservation.worker_id} is no longer ours: {why}")

    def _adopt(self, fence: dict[str, Any], reservation: Reservation) -> bool:
        try:
            record = parse_fence(_value(fence), "the fence")
        except UnreadableRecord:
            return False
        if record.get("lease_id") != reservation.lease_id:
            return False
        self._fence_revision = int(fence["mod_revision"])
        return True

    def holders(self, worker_id: int) -> list[Holder]:
        return self.namespace.holders(worker_id)

    def fence_of(self, worker_id: int) -> int | None:
        return self.namespace.fence(worker_id)

    def census(self) -> Census:
        """One prefix range over the claims (keys only), on this lease's connection."""
        namespace = self._ns
        if namespace is None:
            raise LeaseUnavailable("not connected to etcd")
        held = namespace.claimed()
        return self._census_of(range(self.layout.worker_capacity), held)

    def close(self, high_water_ms: int | None = None) -> None:
        try:
            super().close(high_water_ms)
        finally:
            if os.getpid() == self._owner_pid and self._ns is not None:  # a forked copy's session is the parent's
                lease, self._etcd_lease = self._etcd_lease, None
                if self._keepalive_thread is not None:
                    self._keepalive_thread.join(timeout=self.timeout_s)
                if lease is not None:
                    try:
                        self._ns.client.revoke(lease)
                    except LeaseUnavailable as exc:  # its keys go when its TTL runs out
                        log.warning("etcd lease revoke failed: %s", exc, extra={"event": "etcd_revoke_failed"})
                self._ns.client.close()

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "backend": "etcd",
            "endpoints": self.endpoints,
            "namespace": self.namespace_path,
            "etcd_lease": self._etcd_lease,
            "ttl_s": self.ttl_s,
            "clock_skew_ms": self.skew_ms,
        }
