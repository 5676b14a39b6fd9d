"""Fault injection into a real kazoo client of a real ZooKeeper server: the chosen call fails, the others go through.

``Injector.client_class()`` is a :class:`KazooClient` subclass (install it where idgen makes its clients, e.g.
``monkeypatch.setattr(idgen.leases.zookeeper, "KazooClient", injector.client_class())``). Every request idgen can send
(``create``, ``get``, ..., and a transaction's ``commit``) is recorded in :attr:`Injector.calls`; a request matching a
planned :class:`Fault` answers with the fault's error instead of the server's. With ``after=True`` the real request
is sent first and its answer dropped: the server did the work, the client never hears of it (a reply lost to a
connection blip or a time-out).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient, TransactionRequest
from kazoo.interfaces import IAsyncResult

#: The requests idgen makes, by the name of their ``*_async`` method (``commit``: a transaction's).
METHODS = ("create", "get", "set", "delete", "exists", "get_children", "ensure_path", "sync", "get_acls", "set_acls")


@dataclass
class Fault:
    """The ``nth`` request (1-based, counted among those matching ``method`` and ``path``) answers ``error()``.
    ``method`` ``None`` matches every request; ``path``, when given, must occur in the request's path."""

    error: Callable[[], BaseException]
    method: str | None = None
    nth: int = 1
    path: str | None = None
    after: bool = False
    seen: int = 0

    def matches(self, method: str, path: str | None) -> bool:
        if (self.method is not None and method != self.method) or (self.path and self.path not in (path or "")):
            return False
        self.seen += 1
        return self.seen == self.nth


class Injector:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self.faults: list[Fault] = []
        self.fired: list[tuple[str, str | None, str]] = []

    def fail(self, error: Callable[[], BaseException], method: str | None = None, **options: Any) -> Fault:
        self.faults.append(Fault(error, method, **options))
        return self.faults[-1]

    def client_class(self) -> type[KazooClient]:
        injector = self

        class Transaction(TransactionRequest):  # type: ignore[misc]
            def commit_async(self) -> IAsyncResult:
                path = getattr(self.operations[0], "path", None) if self.operations else None
                return injector.through(self.client, "commit", path, super().commit_async)

        class FaultyKazooClient(KazooClient):  # type: ignore[misc]
            def transaction(self) -> TransactionRequest:
                return Transaction(self)

        for method in METHODS:
            setattr(FaultyKazooClient, f"{method}_async", _wrapped(injector, method))
        return FaultyKazooClient

    def through(self, client: KazooClient, method: str, path: str | None, send: Callable[[], IAsyncResult]) -> Any:
        """Send the request, or answer with a due fault's error (after sending it, for an ``after`` fault)."""
        self.calls.append((method, path))
        fault = next((f for f in self.faults if f.matches(method, path)), None)
        if fault is None:
            return send()
        error = fault.error()
        self.fired.append((method, path, type(error).__name__))
        failed = client.handler.async_result()
        if fault.after:
            send().rawlink(lambda _: failed.set_exception(error))  # the server's answer arrives, and is lost
        else:
            failed.set_exception(error)
        return failed


def _wrapped(injector: Injector, method: str) -> Callable[..., Any]:
    real = getattr(KazooClient, f"{method}_async")

    def call(self: KazooClient, *args: Any, **kwargs: Any) -> Any:
        path = args[0] if args and isinstance(args[0], str) else kwargs.get("path")
        return injector.through(self, method, path, lambda: real(self, *args, **kwargs))

    return call
