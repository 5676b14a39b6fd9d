"""HTTP connections: what one client may hold of a server, and the answers given below the application.

aiohttp's ``RequestHandler`` is one connection; :class:`Connection` adds what idgen enforces on every connection:

- **a head deadline**: a request's head (request line and headers) must be complete ``HEAD_TIMEOUT_S`` after the
  connection opened, or after the first byte of a later request, else the connection is closed (Go's
  ``ReadHeaderTimeout``, Apache's ``mod_reqtimeout``). aiohttp has no deadline of its own: its keep-alive timer,
  which bytes received do not reset, closes a connection whose head is not whole only after the idle bound;
- **a head size bound**: a connection that sends more than ``MAX_HEAD_BYTES`` while it has no request being
  handled (a head that never ends, or a body after the answer) is closed;
- **an idle bound**: a keep-alive connection without a request is closed after ``idle_timeout_s``
  (``IDLE_TIMEOUT_S`` by default; aiohttp's own ``keepalive_timeout``);
- **a cap**: at most ``max_connections`` connections are open at once in a process (:class:`ConnectionCap`). One
  more closes the oldest connection on which no request head has come whole yet (slow, silent or just opened), else
  the one idle longest, so slow clients cannot lock quick ones out nor push out the pooled connections of clients
  that sent requests; when every connection is busy with a request, the new one is closed at once;
- **JSON answers** for what aiohttp answers itself in text/plain: requests its parser refuses (bytes outside ASCII
  in the target, unknown methods, lines or headers beyond the limits), targets no route can match (``CONNECT``,
  ``OPTIONS *``) and a refused ``Expect``.

Connections that are closed this way, and accept errors (``EMFILE`` and the like, :func:`log_accept_errors`), are
logged at most once every ``LOG_INTERVAL_S``, with a count, never once per connection.

Invariant: with ``max_connections`` at most the descriptor limit minus ``FD_RESERVE`` (checked by
:func:`max_connections_for`), client connections can never take the descriptors the lease, the logs and the metrics
need, even in a burst of accepts (``ACCEPT_BURST``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
import socket
import time
from collections.abc import Coroutine
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod
from aiohttp.web_protocol import RequestHandler

from idgen.config import IDLE_TIMEOUT_S
from idgen.errors import InvalidInput
from idgen.http.responses import error_response

log = logging.getLogger("idgen.http")

HEAD_TIMEOUT_S = 5.0  # from a connection's opening, or a request's first byte, to the end of its head
# The most bytes a request head may take (nginx allows about 40 KiB, Node and h11 16 KiB). aiohttp bounds only each
# line (8,190 bytes) and the number of headers (128): about 1 MiB a head, and 1,000 connections sending heads that
# never end took the server to 759 MB.
MAX_HEAD_BYTES = 32 * 1024
DEFAULT_MAX_CONNECTIONS = 1024
# How many connections asyncio accepts in one turn of the event loop (it takes the listen backlog for it). A
# connection reaches the cap (connection_made) two turns after its accept, and one closed to make room frees its
# descriptor a turn later, so at the cap about three bursts' worth of descriptors more are open: measured under 400
# slowloris connections with 256 files, a cap of 96 and bursts of 16, at most 147 sockets (51 over the cap).
# asyncio's default burst, 128, would need 400 descriptors more.
ACCEPT_BURST = 16
# The kernel's queue of connections not accepted yet, set after asyncio listened with ACCEPT_BURST: they hold no
# descriptor of ours. A queue of 16 made 13 of 300 connections in a row wait 1 s for a SYN to be resent.
LISTEN_BACKLOG = 512
# Descriptors never given to client connections: the lease, logs, metrics and lease history lookups (64), and the
# bursts in flight.
FD_RESERVE = 64 + 6 * ACCEPT_BURST
LOG_INTERVAL_S = 5.0
_ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's message for EMFILE, ENFILE, ENOBUFS, ENOMEM
_ECHOED = re.compile(r":?\s*(?:b'|b\"|bytearray\().*", re.DOTALL)  # where aiohttp's messages start quoting the request


# -- limits -----------------------------------------------------------------------------------------------------


def descriptor_limit() -> int:
    """This process's soft limit of open files (``RLIMIT_NOFILE``); unlimited counts as very large."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 30 if soft == resource.RLIM_INFINITY else soft


def max_connections_for(asked: int | None, limit: int | None = None) -> int:
    """The connection cap: ``asked``, or by default ``DEFAULT_MAX_CONNECTIONS`` or fewer, so that ``FD_RESERVE`` and
    a quarter of the descriptor limit ``limit`` stay free. :class:`InvalidInput` if ``asked`` would leave fewer than
    ``FD_RESERVE``, or if the limit leaves room for no connection."""
    limit = descriptor_limit() if limit is None else limit
    room = limit - FD_RESERVE
    if room < 1:
        raise InvalidInput(
            f"the limit of open files is {limit}: at least {FD_RESERVE + 1} are needed to serve; raise it (ulimit -n)"
        )
    if asked is None:
        return max(1, min(DEFAULT_MAX_CONNECTIONS, room, limit * 3 // 4))
    if asked > room:
        raise InvalidInput(
            f"--max-connections {asked} would leave fewer than {FD_RESERVE} of this process's {limit} file"
            f" descriptors (ulimit -n) for the lease, logs, metrics and bursts of accepted connections: give at most"
            f" {room}, or raise the limit"
        )
    return asked


class Tally:
    """Counts occurrences of one event and logs it at most once every ``LOG_INTERVAL_S``, with the count since the
    last line: a flood of them makes a few lines, not one per occurrence. Occurrences not logged yet are logged
    when the interval ends (on the running event loop; without one, with the next line)."""

    def __init__(self, event: str, message: str) -> None:
        self.event, self.message = event, message
        self.count = 0
        self.detail = ""
        self._next_log = 0.0
        self._flush: asyncio.TimerHandle | None = None

    def add(self, detail: str = "") -> None:
        self.count += 1
        self.detail = detail
        now = time.monotonic()
        if now >= self._next_log:
            self._log()
        elif self._flush is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._flush = loop.call_later(self._next_log - now, self._log)

    def _log(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if not self.count:
            return
        log.warning(
            "%s: %d in the last %g s%s",
            self.message,
            self.count,
            LOG_INTERVAL_S,
            f" ({self.detail})" if self.detail else "",
            extra={"event": self.event, "count": self.count},
        )
        self.count = 0
        self._next_log = time.monotonic() + LOG_INTERVAL_S


def log_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Have ``loop`` log failed accepts (out of descriptors or memory) as an ``accept_failed`` :class:`Tally`.
    asyncio logs each one with a traceback, and Python 3.11 retries up to its backlog (128) times a turn, each
    failure logged: about 6,000 lines a second with descriptors exhausted. Other errors go to the usual handler."""
    tally = Tally("accept_failed", "accepting a connection failed")
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == _ACCEPT_FAILED:
            tally.add(str(context.get("exception") or ""))
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


class ConnectionCap:
    """The connections open in one process, the one waiting longest for a request head first (:meth:`active` moves a
    connection to the end), and what closes them early."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.open: dict[Connection, None] = {}
        self.evicted = Tally("connection_limit", f"at the limit of {max_connections} connections, closed a waiting one")
        self.refused = Tally("connection_limit", f"at the limit of {max_connections} busy connections, refused one")
        self.oversized = Tally("head_too_large", f"closed connections sending over {MAX_HEAD_BYTES} bytes of head")
        self.slow = Tally("head_timeout", f"closed connections whose request head took over {HEAD_TIMEOUT_S:g} s")

    def opened(self, connection: Connection) -> None:
        self.open[connection] = None
        if len(self.open) <= self.max_connections:
            return
        # a connection that never sent a whole head first (slow, silent or just opened), else the longest idle one
        victim = next((c for c in self.open if c.untried), None) or next(
            (c for c in self.open if c.waiting_for_head), None
        )
        if victim is None:
            self.refused.add()
            victim = connection
        else:
            self.evicted.add()
        del self.open[victim]  # now: its descriptor is only freed a turn later, and it must not be chosen again
        victim.force_close()

    def active(self, connection: Connection) -> None:
        """``connection`` just received a complete request head: its wait for the next one starts now."""
        if self.open.pop(connection, False) is None:
            self.open[connection] = None

    def closed(self, connection: Connection) -> None:
        self.open.pop(connection, None)


# -- one connection ----------------------------------------------------------------------------------------------


class Connection(RequestHandler):
    """One client connection: aiohttp's handler with the head bounds, the cap and JSON errors (module docstring).
    aiohttp has no hook for these, so this reads private attributes of its ``RequestHandler`` (``_request_count``,
    ``_request_in_progress``, ``_waiter``, ``_loop``) the way aiohttp's own keep-alive timer reads them; the head
    and cap tests in tests/test_http.py and tests/faults/test_fault_boundary.py fail if they change meaning."""

    def __init__(self, manager: ConnectionServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._cap = manager.cap
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_of = 0  # requests parsed when the head timer was armed: the next one must come in time
        self._head_bytes = 0  # bytes received since the last whole head, while no request was being handled

    @property
    def waiting_for_head(self) -> bool:
        """Idle, or part way through a request head; not handling a request."""
        return self._waiter is not None and not self._waiter.done()

    @property
    def untried(self) -> bool:
        """No request head has come whole on this connection yet."""
        return self._request_count == 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()
        self._cap.opened(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cap.closed(self)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        parsed = self._request_count
        if not self._request_in_progress:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._request_count != parsed:
            self._head_bytes = 0
            self._cap.active(self)
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
        elif self._head_bytes > MAX_HEAD_BYTES and self.transport is not None:
            self._cap.oversized.add()
            self.force_close()
        elif data and self._head_timer is None:
            self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._head_of = self._request_count
        self._head_timer = self._loop.call_later(HEAD_TIMEOUT_S, self._head_expired)

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._request_count == self._head_of and not self._request_in_progress and self.transport is not None:
            self._cap.slow.add()
            self.force_close()

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse (400) or to a fault (500), as idgen's JSON error."""
        super().handle_error(request, status, exc, message)  # logs; raises ConnectionError if an answer went out
        if status == HTTPStatus.INTERNAL_SERVER_ERROR:
            response = error_response(status, "internal_error", "unexpected error; see the server log")
        elif isinstance(exc, BadHttpMethod) or status == HTTPStatus.BAD_REQUEST:
            response = error_response(status, "bad_request", f"unparseable request: {_summary(exc, message)}")
        else:
            response = error_response(status, _code(status), _summary(exc, message))
        response.force_close()
        return response

    def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> Coroutine[Any, Any, tuple[web.StreamResponse, bool]]:
        """aiohttp's own answers (no route could take the target, a bad ``Expect``) made idgen's JSON errors. A plain
        function returning aiohttp's coroutine, not a coroutine of its own: one coroutine layer less on every answer
        (docs/BENCHMARKS.md, issue 22's event loop)."""
        if isinstance(resp, web.HTTPException):
            target = " ".join(f"{request.method} {request.raw_path}".split())[:80]
            answer = error_response(resp.status, _code(resp.status), f"{target!r}: {resp.text or resp.reason}")
            if "Allow" in resp.headers:
                answer.headers["Allow"] = resp.headers["Allow"]
            resp = answer
        return super().finish_response(request, resp, start_time)


def _code(status: int) -> str:
    """``404`` -> ``not_found``."""
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "http_error"


def _summary(exc: BaseException | None, message: str | None) -> str:
    """aiohttp's message for a refused request, on one line and without the request bytes it quotes."""
    text = str(getattr(exc, "message", None) or message or exc or "")
    text = " ".join(_ECHOED.sub("", text.split("\n\n")[0]).split())
    return text[:200] or "malformed request"


# -- the server ----------------------------------------------------------------------------------------------------


class ConnectionServer(web.Server):
    """aiohttp's server (the protocol factory), making :class:`Connection` s under one :class:`ConnectionCap` with
    the arguments aiohttp gave it (its private ``_loop`` and ``_kwargs``)."""

    def __init__(self, handler: Any, *, cap: ConnectionCap, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.cap = cap

    def __call__(self) -> Connection:
        return Connection(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """``web.AppRunner`` whose connections are :class:`Connection` s, at most ``max_connections`` at once, closed
    after ``idle_timeout_s`` idle."""

    def __init__(
        self, app: web.Application, *, max_connections: int, idle_timeout_s: float = IDLE_TIMEOUT_S, **kwargs: Any
    ) -> None:
        # auto_decompress off: idgen reads no request body, and aiohttp decompressing one it drains after the answer
        # logged a client's bad gzip body as an "Unhandled exception" with three tracebacks
        super().__init__(app, keepalive_timeout=idle_timeout_s, auto_decompress=False, **kwargs)
        self.cap = ConnectionCap(max_connections)

    async def serve(self, sock: socket.socket) -> None:
        """Accept connections on ``sock`` (bound): at most ``ACCEPT_BURST`` a turn, what ``FD_RESERVE`` covers, with
        ``LISTEN_BACKLOG`` waiting in the kernel."""
        await web.SockSite(self, sock, backlog=ACCEPT_BURST).start()
        sock.listen(LISTEN_BACKLOG)  # a listening socket takes a new backlog; asyncio's accept loop keeps its own

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # runs the app's start-up and freezes it
        return ConnectionServer(
            made.request_handler,
            cap=self.cap,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **made._kwargs,
        )
