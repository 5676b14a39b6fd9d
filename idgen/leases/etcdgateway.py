"""A client of etcd's JSON gateway (``/v3/...``, etcd 3.4+) over urllib3, and how idgen connects to etcd: the
credentials (from the environment only) and TLS files.

Why not a library: ``etcd3gw`` (the same gateway) has no user/password option and no token renewal, and no time bound
per call across endpoints; the gRPC ``etcd-sdk-python`` refuses credentials without TLS; ``etcd3`` is unmaintained
(docs/DESIGN.md, section 10). Every call here is bounded, fails over across endpoints, and renews an expired token.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import urllib3

from idgen.errors import InvalidInput, LeaseUnavailable
from idgen.leases.credentials import CredentialSource

DEFAULT_TIMEOUT_S = 5.0

ETCD_CREDENTIALS = CredentialSource(
    "etcd", "IDGEN_ETCD_AUTH", "IDGEN_ETCD_AUTH_FILE", "IDGEN_ETCD_INSECURE_NO_AUTH", "--etcd-insecure-no-auth"
)
ETCD_CA_ENV = "IDGEN_ETCD_CA"
ETCD_CERT_ENV = "IDGEN_ETCD_CERT"
ETCD_KEY_ENV = "IDGEN_ETCD_KEY"
UNAUTHENTICATED = 16  # gRPC status of an expired or unknown auth token: authenticate again and retry


@dataclass(frozen=True)
class EtcdTls:
    """TLS to etcd: ``ca`` verifies the servers; ``cert`` and ``key`` are a client certificate for mutual TLS
    (``--client-cert-auth``). It does not name the user: etcd's JSON gateway refuses a certificate with a CommonName
    (it would ignore it), so the certificate must have none, and the user comes from the credentials."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @classmethod
    def from_env(cls) -> EtcdTls | None:
        ca, cert, key = (os.environ.get(name) or None for name in (ETCD_CA_ENV, ETCD_CERT_ENV, ETCD_KEY_ENV))
        if (cert is None) != (key is None):
            raise InvalidInput(f"a client certificate needs both {ETCD_CERT_ENV} and {ETCD_KEY_ENV}")
        return None if ca is None and cert is None else cls(ca, cert, key)


def required_credentials(insecure_flag: bool) -> str | None:
    """``user:password`` from the environment; ``None`` only with the double opt-out (``--etcd-insecure-no-auth`` and
    ``IDGEN_ETCD_INSECURE_NO_AUTH=1``); otherwise :class:`InvalidInput`."""
    return ETCD_CREDENTIALS.required(insecure_flag)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: str) -> str:
    """The ``range_end`` of a prefix range: the prefix with its last byte incremented."""
    raw = prefix.encode()
    return base64.b64encode(raw[:-1] + bytes([raw[-1] + 1])).decode()


class EtcdError(LeaseUnavailable):
    """etcd refused a request; ``code`` is its gRPC status code, ``reason`` etcd's own words. Its message is
    :func:`explain`'s."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(explain(code, reason))
        self.grpc_code = code
        self.reason = reason


def explain(code: int, reason: str) -> str:
    """A one-line reason for an etcd refusal, naming the fix where there is one."""
    message = " ".join(reason.split())
    if code in (3, 7, UNAUTHENTICATED) and ("user name" in message or "permission" in message or "auth" in message):
        return (
            f"etcd refused access ({message}: set {ETCD_CREDENTIALS.auth_env}=user:password or"
            f" {ETCD_CREDENTIALS.auth_file_env}=FILE for a user whose role may read and write the namespace)"
        )
    return f"etcd error: {message}"


class EtcdClient:
    """A client of etcd's JSON gateway (``/v3/...``, etcd 3.4+) over urllib3.

    Every call is answered within ``timeout_s`` or raises :class:`LeaseUnavailable`; an endpoint that does not
    answer is left for the next one. With ``auth`` it authenticates and sends the token with each request, and an
    expired token is renewed once per call. etcd's refusals raise :class:`EtcdError`. Thread-safe.
    """

    def __init__(
        self,
        endpoints: str,
        auth: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        tls: EtcdTls | None = None,
    ) -> None:
        self.endpoints = [e.strip().rstrip("/") for e in endpoints.split(",") if e.strip()]
        if not self.endpoints or not all(e.startswith(("http://", "https://")) for e in self.endpoints):
            raise InvalidInput(f"etcd endpoints {endpoints!r} must be URLs like http://host:2379[,http://host:2379...]")
        self.auth = auth
        self.timeout_s = timeout_s
        tls = tls or EtcdTls()
        self._pool = urllib3.PoolManager(
            ca_certs=tls.ca, cert_file=tls.cert, key_file=tls.key, retries=False, maxsize=8
        )
        self._token: str | None = None
        self._preferred = 0

    def call(
        self, path: str, body: dict[str, Any], *, timeout_s: float | None = None, dated: bool = False
    ) -> dict[str, Any]:
        """POST ``body`` to ``path`` and return the JSON answer, renewing the auth token once if it expired."""
        if self.auth is not None and self._token is None:
            self.authenticate()
        try:
            return self._post(path, body, timeout_s, dated=dated)
        except EtcdError as exc:
            if exc.grpc_code != UNAUTHENTICATED or self.auth is None or "invalid auth token" not in exc.reason:
                raise
            self.authenticate()  # tokens expire (simple tokens after --auth-token-ttl idle seconds; JWTs by age)
            return self._post(path, body, timeout_s, dated=dated)

    def authenticate(self) -> None:
        user, _, password = (self.auth or "").partition(":")
        try:
            answer = self._post("/v3/auth/authenticate", {"name": user, "password": password}, None, token=False)
        except EtcdError as exc:
            if "authentication is not enabled" in exc.reason:
                raise LeaseUnavailable(
                    f"etcd at {','.join(self.endpoints)} has authentication disabled: anyone who reaches it could"
                    " delete claims and fences. Enable it (etcdctl auth enable) with a user whose role may read and"
                    " write the namespace"
                ) from None
            raise
        self._token = answer["token"]

    def _post(
        self, path: str, body: dict[str, Any], timeout_s: float | None, *, token: bool = True, dated: bool = False
    ) -> dict[str, Any]:
        """POST to one endpoint after another until one answers, within the deadline. ``dated``: answer the Date
        header as ``{"date": ...}``."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if token and self._token is not None:
            headers["Authorization"] = self._token
        problems = []
        count = len(self.endpoints)
        for step in range(count):
            index = (self._preferred + step) % count
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                response = self._pool.request(
                    "POST",
                    self.endpoints[index] + path,
                    body=data,
                    headers=headers,
                    timeout=urllib3.Timeout(total=max(remaining / (count - step), 0.05)),
                    preload_content=True,
                )
            except urllib3.exceptions.HTTPError as exc:
                problems.append(f"{self.endpoints[index]}: {type(exc).__name__}")
                continue
            try:
                answer = json.loads(response.data)
            except ValueError:
                text = " ".join(response.data[:200].decode(errors="replace").split())
                problems.append(f"{self.endpoints[index]}: HTTP {response.status} {text}".rstrip())
                continue
            if response.status != 200:
                code, message = answer.get("code", 2), answer.get("message") or answer.get("error", "")
                if code in (4, 14) or "leader" in message or "timed out" in message:  # this member cannot serve now
                    problems.append(f"{self.endpoints[index]}: {message}")
                    continue
                raise EtcdError(code, message)
            self._preferred = index
            if dated:
                return {"date": response.headers.get("Date")}
            result = answer.get("result", answer)  # a streaming call (keepalive) wraps its first answer
            return result if isinstance(result, dict) else {}
        raise LeaseUnavailable(
            f"no etcd endpoint answered {path} within {timeout_s or self.timeout_s:g} s"
            f" ({'; '.join(problems) or 'timeout'})"
        )

    # -- the calls idgen makes ----------------------------------------------------------------------

    def range(self, key: str, *, prefix: bool = False, keys_only: bool = False) -> list[dict[str, Any]]:
        """The key-values at ``key`` (or under the prefix), linearizable."""
        answer = self.call("/v3/kv/range", range_request(key, prefix=prefix, keys_only=keys_only))
        kvs: list[dict[str, Any]] = answer.get("kvs", [])
        return kvs

    def txn(
        self, compare: list[dict[str, Any]], success: list[dict[str, Any]], failure: list[dict[str, Any]] | None = None
    ) -> tuple[bool, list[dict[str, Any]], int]:
        """Run a transaction: ``(succeeded, responses of the branch taken, revision)``."""
        answer = self.call("/v3/kv/txn", {"compare": compare, "success": success, "failure": failure or []})
        return bool(answer.get("succeeded")), answer.get("responses", []), int(answer["header"]["revision"])

    def date(self, key: str) -> str | None:
        """The ``Date`` header of the answer to a read of ``key``: the answering member's clock, in whole seconds."""
        return self.call("/v3/kv/range", range_request(key, keys_only=True), dated=True).get("date")

    def put(self, key: str, value: bytes, lease: str | None = None) -> None:
        self.call("/v3/kv/put", {"key": b64(key), "value": base64.b64encode(value).decode(), "lease": lease or "0"})

    def delete(self, key: str, *, prefix: bool = False) -> int:
        body = {"key": b64(key), **({"range_end": prefix_end(key)} if prefix else {})}
        return int(self.call("/v3/kv/deleterange", body).get("deleted", 0))

    def grant(self, ttl_s: float) -> tuple[str, int]:
        answer = self.call("/v3/lease/grant", {"TTL": max(1, round(ttl_s))})
        return answer["ID"], int(answer["TTL"])

    def keepalive(self, lease: str, timeout_s: float) -> int:
        """The TTL granted again, in s; 0 if the etcd lease has expired (or was revoked)."""
        return int(self.call("/v3/lease/keepalive", {"ID": lease}, timeout_s=timeout_s).get("TTL", 0))

    def revoke(self, lease: str) -> None:
        try:
            self.call("/v3/lease/revoke", {"ID": lease})
        except EtcdError as exc:
            if "requested lease not found" not in exc.reason:
                raise

    def close(self) -> None:
        self._pool.clear()


def range_request(key: str, *, prefix: bool = False, keys_only: bool = False) -> dict[str, Any]:
    request: dict[str, Any] = {"key": b64(key)}
    if prefix:
        request["range_end"] = prefix_end(key)
    if keys_only:
        request["keys_only"] = True
    return request
