"""The threaded client, :class:`Client`: the buffer (:class:`~idgen.client.buffer.IdBuffer`) behind a lock, refilled
by a daemon thread (:class:`_Refiller`) that sends the buffer's requests with urllib3.

**Deadlines.** ``timeout`` is the total deadline of one attempt on one server, from connecting to the last byte of
the body; urllib3's per-operation timeouts alone would let a server that trickles a byte every few seconds hold a
request forever. So every socket read and send is bounded by the time left to the request's deadline
(:class:`_DeadlineSocket`, in the pools :func:`_deadline_pool` makes).
"""

from __future__ import annotations

import io
import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any, overload
from urllib.parse import urlsplit

import urllib3

from idgen.client.answers import REQUEST_HEADERS, Answer, Failed, check_length, describe, too_large
from idgen.client.buffer import (
    IdBuffer,
    Request,
    ServerStatus,
    Steps,
    advance,
    count_ids,
    ids_of,
    inherited,
)
from idgen.client.options import (
    DEFAULT_BACKOFF_S,
    DEFAULT_MAX_AGE_S,
    DEFAULT_PROBE_INTERVAL_S,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    check_form,
)
from idgen.encoding import format_id
from idgen.errors import whole_number
from idgen.forking import process_marker

_getpid = os.getpid
_monotonic = time.monotonic
_TIMEOUTS = (TimeoutError, urllib3.exceptions.TimeoutError)  # what a timed-out request raises (in its chain)


class Client:
    """A thread-safe client of one or more idgen servers, with a prefetch buffer refilled by a daemon thread.

    ``urls``: one base URL or several (``http://host:8080``, a path prefix allowed). ``batch``: IDs per request
    (each server is asked for at most its ``--max-count``, read from its ``/info``; default None: sized from
    demand, up to 4096, see :mod:`idgen.client.buffer`). ``low_water``: refill below this many buffered IDs (default
    ``batch // 2``, or two batches when sized from demand; 0 fetches only when a caller needs IDs). ``timeout``:
    the total deadline, in seconds, of one attempt on one server, whole answer included (see "Deadlines" in
    :mod:`idgen.client.sync`). ``retries``: extra passes over all servers in a refill round. ``probe_interval``: see
    :mod:`idgen.client.buffer`. ``max_wait``: the longest a call waits (default: one round's worst case,
    ``(retries + 1) * len(urls) * timeout`` plus the backoffs, plus one ``timeout``: :attr:`max_wait`). ``max_age``:
    seconds a fetched ID may stay buffered (default 5; None: no limit). The buffer starts filling at once. The
    process default (``IDGEN_URL``) takes these options from ``IDGEN_CLIENT_*``
    (:func:`idgen.default.client_options`).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        batch: int | None = None,
        low_water: int | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF_S,
        probe_interval: float | None = DEFAULT_PROBE_INTERVAL_S,
        max_wait: float | None = None,
        max_age: float | None = DEFAULT_MAX_AGE_S,
    ) -> None:
        buffer = IdBuffer(urls, batch, low_water, timeout, retries, backoff, probe_interval, max_wait, max_age)
        self._refiller = _Refiller(buffer)
        self._start(self._refiller)

    @property
    def max_wait(self) -> float:
        """The longest ``next_id``/``next_ids`` waits before raising :class:`~idgen.errors.AllServersFailed`."""
        return self._refiller.buffer.max_wait

    @overload
    def next_id(self, form: None = None) -> int: ...
    @overload
    def next_id(self, form: str) -> str: ...
    def next_id(self, form: str | None = None) -> int | str:
        """One ID: an int, or a string in ``form``. The fast path takes it from the head chunk with no lock."""
        if form is not None:
            check_form(form)
        refiller = self._refiller
        if not refiller.marker[0]:  # :meth:`_live`, inlined: this is the hot path
            refiller = self._after_fork(refiller)
        head = refiller.buffer.head
        value = next(head.ids, None) if _monotonic() < head.expires else None
        if value is None:
            buffer = refiller.buffer
            with refiller.lock:
                buffer.check_open()
                while (value := buffer.take_one(_monotonic())) is None:
                    refiller.wait_for(1)
                if buffer.level < buffer.low_water:
                    refiller.wake.notify()
        return value if form is None else format_id(value, form)

    @overload
    def next_ids(self, n: int, form: None = None) -> list[int]: ...
    @overload
    def next_ids(self, n: int, form: str) -> list[str]: ...
    def next_ids(self, n: int, form: str | None = None) -> list[int] | list[str]:
        """``n`` IDs (ints, or strings in ``form``), taken from the buffer at once; waits until it holds ``n``. What
        was taken before a wait is dropped if its server refused meanwhile or it grew too old
        (:meth:`~idgen.client.buffer.IdBuffer.top_up`)."""
        whole_number("n", n, 0)
        check_form(form)
        if n == 0:
            return []
        refiller = self._live()
        buffer = refiller.buffer
        with refiller.lock:
            buffer.check_open()
            parts = buffer.take(n, _monotonic())
            while (have := count_ids(parts)) < n:
                refiller.wait_for(n - have)
                parts = buffer.top_up(parts, n, _monotonic())
            if buffer.level < buffer.low_water:
                refiller.wake.notify()
        return ids_of(parts, form)

    def status(self) -> list[ServerStatus]:
        """A snapshot of every server's counts, in the order given."""
        refiller = self._live()
        with refiller.lock:
            return refiller.buffer.status()

    def close(self) -> None:
        """Stop the refill thread and close connections; waiting and later calls raise
        :class:`~idgen.errors.ClientClosed`."""
        self._live().shutdown()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- after a fork -------------------------------------------------------------------------------------

    def _start(self, refiller: _Refiller) -> None:
        # The thread holds the refiller, not the client: a client dropped without close() is collected, and this
        # stops its thread then.
        self._finalizer = weakref.finalize(self, refiller.shutdown)
        self._finalizer.atexit = False  # the thread is a daemon: exiting must not wait for a request in flight
        refiller.thread.start()

    def _live(self) -> _Refiller:
        """This process's refiller: the one made here, or after a fork a fresh one (see :mod:`idgen.client`)."""
        refiller = self._refiller
        if refiller.pid != _getpid():
            refiller = self._after_fork(refiller)
        return refiller

    def _after_fork(self, parents: _Refiller) -> _Refiller:
        """Replace the refiller this process inherited with a fresh one, and start it. Threads of the child may race
        here: ``dict.setdefault`` (atomic) picks one fresh refiller for all of them, made without any inherited lock."""
        fresh = _Refiller(parents.buffer.fresh())
        chosen = parents.successors.setdefault(fresh.pid, fresh)
        if chosen is fresh:
            inherited.append(parents)
            self._finalizer.detach()  # its shutdown would join a thread that does not exist here
            self._start(fresh)
            self._refiller = fresh
        return chosen


class _Refiller:
    """The sync client's refill thread and what it shares with callers: the lock, its two conditions, the pools.
    All of it belongs to the process ``pid`` that made it; ``successors`` maps a forked child's pid to the refiller
    that replaces this one there (:meth:`Client._after_fork`)."""

    def __init__(self, buffer: IdBuffer) -> None:
        self.buffer = buffer
        self.pid = os.getpid()
        self.marker = process_marker()  # the hot path's fork check: as exact as the pid's, and cheaper
        self.successors: dict[int, _Refiller] = {}
        self.lock = threading.Lock()
        self.ids_ready = threading.Condition(self.lock)  # callers wait on it
        self.wake = threading.Condition(self.lock)  # the thread waits on it
        self.stop = threading.Event()
        self.deadline = [math.inf]  # of the request under way (one at a time: this refiller's thread sends them all)
        self.pools = [_deadline_pool(url, self.deadline) for url in buffer.urls]
        self.thread = threading.Thread(target=self.run, name="idgen-client-refill", daemon=True)

    def wait_for(self, n: int) -> None:
        """Lock held: wait until the buffer holds ``n`` IDs; raise if a round fails meanwhile or time runs out
        (:meth:`~idgen.client.buffer.IdBuffer.wait_left`)."""
        buffer = self.buffer
        with buffer.waiting(n, time.monotonic()) as wait:
            self.wake.notify()
            while (remaining := buffer.wait_left(wait, time.monotonic())) is not None:
                self.ids_ready.wait(remaining)

    def shutdown(self) -> None:
        """Stop the thread and close the pools; it may be called more than once. In a forked child it does nothing:
        none of it may be touched there (the client's finalizer, inherited, may still call it)."""
        if self.pid != _getpid():
            return
        with self.lock:
            self.buffer.close()
            self.wake.notify_all()
            self.ids_ready.notify_all()
        self.stop.set()
        if threading.current_thread() is not self.thread and self.thread.ident is not None:
            self.thread.join(self.buffer.timeout + 1)
        for pool in self.pools:
            pool.close()

    def run(self) -> None:
        buffer = self.buffer
        try:
            while True:
                with self.lock:
                    while True:
                        if buffer.closed:
                            return
                        steps, delay = buffer.next_step(time.monotonic())
                        if steps is not None:
                            break
                        self.wake.wait(delay)
                self.drive(steps)
        except BaseException as exc:  # a bug: tell every caller rather than leave them waiting
            with self.lock:
                buffer.crash = exc
                self.ids_ready.notify_all()
            raise

    def drive(self, steps: Steps) -> None:
        """Do what the buffer's ``steps`` ask (send a request, pause), handing each outcome back under the lock; wake
        the callers when they end."""
        outcome: Answer | Failed | None = None
        while True:
            with self.lock:
                step = advance(steps, outcome)
                if step is None:
                    self.ids_ready.notify_all()
                    return
            outcome = None
            if isinstance(step, Request):
                try:
                    outcome = self.get(step)
                except Failed as exc:
                    outcome = exc
            elif self.stop.wait(step):
                return

    def get(self, request: Request) -> Answer:
        """``GET`` the request's path: its answer, read whole by its deadline and within its byte bound. The
        deadline holds for every read and send on the socket (:class:`_DeadlineSocket`): a server that trickles
        its answer, headers or body, a byte at a time is cut off at it."""
        remaining = request.seconds_left(_monotonic())
        self.deadline[0] = request.deadline
        pool = self.pools[request.server.index]
        response = None
        try:
            response = pool.urlopen(
                "GET",
                request.server.path + request.path,
                redirect=False,
                preload_content=False,
                decode_content=False,
                timeout=urllib3.Timeout(connect=remaining, read=remaining),
            )
            check_length(response.headers, request.limit_bytes)
            body = response.read(request.limit_bytes + 1)
            if len(body) > request.limit_bytes:
                raise too_large(request.limit_bytes)
            return Answer(response.status, response.headers, body)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Failed(describe(exc, request.timeout_s, _TIMEOUTS)) from None
        finally:
            if response is not None:
                if not response.closed:
                    response.close()  # cut off: the connection cannot carry another request
                response.release_conn()


# -- urllib3 with a deadline on every socket operation -------------------------------------------------------------


class _DeadlineReader(io.RawIOBase):
    """Reads a socket through ``raw`` (its own unbuffered file, which keeps it open until closed), each read
    bounded by the time left to ``deadline[0]`` (monotonic): a per-operation socket timeout alone would let a byte
    every few seconds hold a request forever."""

    def __init__(self, raw: io.RawIOBase, sock: socket.socket, deadline: list[float]) -> None:
        self._raw, self._sock, self._deadline = raw, sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self._sock.settimeout(_time_left(self._deadline))
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineSocket:
    """A connected socket (plain or TLS) whose reads (through :meth:`makefile`, as http.client reads headers and
    body) and sends end by ``deadline[0]``; everything else goes to the socket itself."""

    def __init__(self, sock: socket.socket, deadline: list[float]) -> None:
        self._sock, self._deadline = sock, deadline

    def makefile(self, mode: str = "r", *args: Any, **kwargs: Any) -> io.BufferedReader:
        assert mode == "rb", mode  # http.client reads answers in binary only
        raw = self._sock.makefile("rb", buffering=0)
        return io.BufferedReader(_DeadlineReader(raw, self._sock, self._deadline))

    def sendall(self, data: bytes, *flags: int) -> None:
        self._sock.settimeout(_time_left(self._deadline))
        self._sock.sendall(data, *flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _time_left(deadline: list[float]) -> float:
    left = deadline[0] - _monotonic()
    if left <= 0:
        raise TimeoutError("the request's deadline passed")
    return left


class _DeadlineConnection(urllib3.connection.HTTPConnection):
    def __init__(self, *args: Any, deadline: list[float], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()
        self.sock = _DeadlineSocket(self.sock, self._deadline)


class _DeadlineTLSConnection(_DeadlineConnection, urllib3.connection.HTTPSConnection):
    """The same over TLS: ``_DeadlineConnection.connect`` runs HTTPS's connect (next in the MRO), then wraps."""


class _DeadlinePool(urllib3.HTTPConnectionPool):
    ConnectionCls = _DeadlineConnection


class _DeadlineTLSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _DeadlineTLSConnection


def _deadline_pool(url: str, deadline: list[float]) -> urllib3.HTTPConnectionPool:
    """A pool of one connection to ``url``'s server whose every socket operation ends by ``deadline[0]``."""
    parts = urlsplit(url)
    cls = _DeadlineTLSPool if parts.scheme == "https" else _DeadlinePool
    return cls(str(parts.hostname), parts.port, maxsize=1, retries=False, headers=REQUEST_HEADERS, deadline=deadline)
