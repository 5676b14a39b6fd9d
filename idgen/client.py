"""Clients of the idgen HTTP API: :class:`Client` (threads, urllib3) and :class:`AsyncClient` (asyncio, aiohttp).

Both keep a **prefetch buffer** fed by ``GET /id?count=batch`` and refilled in the background (a thread, or a task)
whenever fewer than ``low_water`` IDs are left: Baidu uid-generator's ring buffer, across the network. ``next_id()``
and ``next_ids(n)`` return ints; with ``form="decimal" | "hex" | "base32" | "base58"`` they return strings in that
form (:func:`idgen.format_id`, the same forms as the server's ``?format=``).

**Fast path.** Batches come in the compact runs form (:mod:`idgen.runs`; JSON from a server that predates it) and
stay runs: the buffer is a queue of chunks, each a ``range`` of consecutive IDs. ``next_id()`` takes from the head
chunk's ``range`` iterator with no lock (``next()`` on it is atomic under the GIL, as in :mod:`idgen.generator`);
only when the head runs out, is too old or a refill is due does it take the lock. ``next_ids(n)`` slices whole
chunks. The head is cut where the level reaches ``low_water``, so the call that crosses it takes the slow path and
wakes the refiller. By default (``batch=None``) the batch sizes itself from demand: it starts at ``MIN_BATCH`` and
doubles (up to ``MAX_BATCH``) while refill rounds come less than ``GROW_S`` apart, halves when they come further
apart than ``SHRINK_S`` or a quarter of ``max_age``, and ``low_water`` stays two batches: CosId's "safe distance".

**Age.** IDs fetched more than ``max_age`` seconds ago (monotonic clock, default 5 s) are dropped, never handed
out (``expired`` in :meth:`Client.status`): old IDs sort far behind fresh ones. ``max_age=None`` keeps them.

Several server URLs give **failover**: a refill asks the server that answered last, then the ones after it in the
list (wrapping around). **Deadlines**: ``timeout`` is the total deadline of one *attempt* on one server: connecting,
sending, the headers and the whole body, and the ``GET /info`` a server's first attempt begins with, all end by
``timeout`` seconds after the attempt began, however slowly the server trickles its bytes (the sync client bounds
every socket read and send by the time left, :class:`_DeadlineSocket`; the asyncio client gives aiohttp the time
left as its total). A failed attempt moves on to the next server at once, so a slow server costs one ``timeout``
per pass. A refill round makes at most ``retries + 1`` passes over the servers, with ``backoff`` (doubling) between
passes; a call waits at most :attr:`Client.max_wait` (by default one whole round, plus one probe it may find under
way) and then raises :class:`AllServersFailed`, which names each server's last failure.

**What a server says is checked, not trusted.** Before its first ``/id``, the client reads a server's ``/info``: its
layout and its ``--max-count``. Requests never ask for more than that ``--max-count`` (an adaptive batch stops
growing at the smallest one), and a 400 ``invalid_count`` (the server was redeployed with a smaller one) has it read
``/info`` again. An answer is read with a byte bound (``answer_limit_bytes``: 64 bytes per ID asked for, plus 64 KiB;
64 KiB for ``/info`` and ``/readyz``): a larger one fails the attempt and the connection is dropped unread. A 503's
``Retry-After``, delay-seconds or an HTTP-date, is clamped to 1..3600 s (1 s if unreadable: ``inf``, ``nan``).

Invariants:

- **No ID is handed out twice.** Each ID enters the buffer once and leaves it once: ``next()`` on a range iterator,
  atomic under the GIL, or with no ``await`` between the check and the take (:class:`AsyncClient`). It enters once
  because of the **floors**: per server and worker ID (the node fields of the ID, read with the layout the server's
  ``/info`` gave), the client keeps the highest ID it accepted; an answer holding any ID at or below its worker ID's
  floor (a replay, by the server or by a cache or proxy before it, or anything older) is dropped whole, counted in
  ``replays`` (:class:`ServerStatus`), and the attempt fails over like any failure. Every ID accepted is thus above
  every ID of its worker ID accepted from that server before, so no two are equal; the client needs no memory of
  the IDs themselves, one integer per worker ID. A server never trips a floor itself: IDs of one worker ID grow
  strictly across its holders (docs/DESIGN.md, section 2) and across a server's switch of worker IDs (each has its
  own floor), and each answer's IDs are strictly increasing (checked here). Per server, ``fetched == handed_out +
  buffered + discarded`` (:meth:`Client.status`; ``handed_out`` is derived, so a ``next_id`` racing with a refusal
  may be counted as discarded; a dropped replay never counts as fetched). Uniqueness *across* servers is the
  servers' own promise: they must share one ID space (one ZooKeeper namespace, or one local state directory).
- **No ID is handed out after the server that minted it said it cannot vouch for it.** A 503 from server S, to a
  refill or to the readiness probe (``GET /readyz``), drops every ID buffered from S at once (``discarded``), before
  any further ID is handed out (a lock-free ``next_id`` already under way in another thread may still take one).
  IDs ``next_ids`` took before it waited for more are dropped too if their server refused meanwhile. The probe
  goes to each server that has IDs in the buffer and has not answered for ``probe_interval`` seconds, so an idle
  buffer learns of a refusal within ``probe_interval + timeout``; IDs handed out before the client heard of the
  refusal are not recalled. ``probe_interval=None`` leaves only refills to tell.
- Why a lost lease is handled by this rule and no other: IDs minted under a lease before it was lost are still
  unique (docs/DESIGN.md, section 2: every later holder of that worker ID mints strictly above the fence those IDs
  lie under). Dropping them is about the server's promise to vouch for what it handed over, not about uniqueness.
  For the same reason a server that stops or cannot be reached keeps its buffered IDs: it did not refuse.
- Order: IDs of one server come out strictly increasing (except across the server's switch of worker IDs, after a
  clock step back beyond its ``--max-lead``: docs/DESIGN.md section 3a); IDs of different servers are not ordered.
- **Fork.** A client used in a forked child (gunicorn ``--preload``, uWSGI, Celery's prefork pool, multiprocessing's
  ``fork``) starts afresh there: an empty buffer, zero counts, its own refill thread (or task), lock and connections,
  made at its first call in the child. The parent's buffer went to the parent alone, so the child never hands out an
  ID the parent may hand out. The child knows it is one by a changed :func:`os.getpid`, checked on every call: that
  holds for forks made in C that run none of Python's at-fork hooks too (uWSGI's default). It never touches what it
  inherited: the refill thread does not exist in the child, a lock another thread held at the fork stays held
  forever, and the connections are the parent's sockets. ``next_id``'s fast path asks the same question of a
  :func:`idgen.forking.process_marker` instead (about 30 ns against 180-230 ns for ``os.getpid()``, and as exact:
  the kernel clears it in every child, however it forked), before it touches the buffer.

With ``idgen serve --processes N`` one URL reaches N workers with their own leases: a 503 from any of them drops
every ID from that URL (conservative), and a probe sees one of them only; their IDs interleave, each worker ID
above its own floor.

**Assumptions** the floors rest on: a URL keeps the layout its ``/info`` gave while the client lives (a server
redeployed behind it with another layout has its answers judged by the old one: at worst they are refused, never
handed out twice); and IDs of one worker ID never go down, which holds while the servers behind the URL share one
ID space.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import errno
import io
import itertools
import json
import math
import operator
import os
import re
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, overload
from urllib.parse import urlsplit

import aiohttp
import urllib3

from idgen.encoding import FORMS, MAX_ID, format_id, format_ids
from idgen.errors import IdgenError, InvalidInput, Unavailable
from idgen.forking import process_marker
from idgen.layout import Layout, get_layout
from idgen.runs import RUNS_TYPE, parse_runs, runs_body
from idgen.version import __version__

MIN_BATCH = 256  # an adaptive batch starts here and never goes below
MAX_BATCH = 4096  # nor above: the servers' default --max-count
GROW_S = 0.25  # refill rounds closer than this double an adaptive batch
SHRINK_S = 2.0  # rounds further apart than this (or a quarter of max_age) halve it
DEFAULT_MAX_AGE_S = 5.0
LOW_STEP = 256  # below low_water, the head holds at most this many IDs (see _Core._promote)
DEFAULT_TIMEOUT_S = 2.0
DEFAULT_RETRIES = 1
DEFAULT_BACKOFF_S = 0.1
DEFAULT_PROBE_INTERVAL_S = 1.0
RETRY_COOLDOWN_S = 1.0  # after a failed round, background refills (no caller waiting) pause this long
DEFAULT_RETRY_AFTER_S = 1.0  # a refusal's wait when its Retry-After is missing or unreadable
MAX_RETRY_AFTER_S = 3600.0  # the longest wait a Retry-After may ask for (a server's longest, layout expired)
BYTES_PER_ID = 64  # an /id answer may take this many bytes per ID asked for (26 at most in either form) ...
ANSWER_SLACK_BYTES = 64 << 10  # ... plus this, which is also the bound of every other answer (/info, /readyz)

_DECIMAL = re.compile(r"[0-9]{1,19}")
_DELAY_SECONDS = re.compile(r"\s*([0-9]{1,30}(?:\.[0-9]{0,30})?)\s*")  # ASCII digits only, unlike float()
# identity: an answer is read with a byte bound, which a compressed body would escape once decompressed
_HEADERS = {
    "Accept": f"{RUNS_TYPE}, application/json;q=0.5",
    "Accept-Encoding": "identity",
    "User-Agent": f"idgen-client/{__version__}",
}

# What forked children took over from their parents (refillers; cores, sessions and tasks): kept for the life of the
# process and never used. Dropping them would let the collector finalise them, which takes locks a parent's thread
# may have held at the fork (urllib3 drains its pools under one) and closes the parent's connections in the child.
_inherited: list[object] = []
_getpid = os.getpid
_monotonic = time.monotonic


class ClientError(IdgenError):
    """A client-side failure other than the servers' (closed client, internal fault)."""

    code = "client_error"


class ClientClosed(ClientError):
    """The client was closed."""

    code = "client_closed"


class AllServersFailed(Unavailable, ClientError):
    """No server handed over IDs in time. ``failures`` maps each server URL to its last failure; ``retry_after`` is
    the shortest ``Retry-After`` any server sent (1 s if none did)."""

    code = "all_servers_failed"

    def __init__(self, message: str, failures: dict[str, str], retry_after: float) -> None:
        super().__init__(message, retry_after)
        self.failures = failures


@dataclass(frozen=True)
class ServerStatus:
    """What the client knows of one server. ``fetched == handed_out + buffered + discarded`` always."""

    url: str
    buffered: int  # IDs from it in the buffer now
    fetched: int  # IDs it handed over, in total
    handed_out: int  # of those, returned by next_id/next_ids
    discarded: int  # of those, dropped: it refused (503) while they were buffered, they grew too old, or closed
    expired: int  # of the discarded, those dropped for being older than max_age
    refusals: int  # 503 answers seen
    last_error: str | None  # its last failure; None once it answered well again
    replays: int = 0  # answers dropped whole for holding an ID at or below its worker ID's floor (a replay)


# -- the shared state: buffer, servers, refill decisions (no I/O, no locking) -------------------------------------


class _Refused(Exception):
    """A 503: the server cannot vouch for IDs now."""

    def __init__(self, text: str, retry_after: float) -> None:
        super().__init__(text)
        self.retry_after = retry_after


class _Failed(Exception):
    """Any other failure: unreachable, timed out, an unexpected status or a malformed answer. ``code``: the error
    code of an HTTP error answer, if it had one."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.code = code


class _Replayed(_Failed):
    """An answer that holds an ID at or below the floor of its worker ID: the server (or a cache before it) sent
    IDs already seen, or older ones."""


class _Answer(NamedTuple):
    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class _Request:
    """What the core asks a refiller to send: ``GET path`` to ``server``, its answer read whole (headers and body)
    by ``deadline`` (monotonic) and no longer than ``limit_bytes``, else :class:`_Failed`."""

    server: _Server
    path: str
    deadline: float
    limit_bytes: int


# The core's work for a refiller (sans-IO): it yields a request to send or seconds to pause, and is sent back the
# answer (None after a pause); a failure to send or read is thrown into it as :class:`_Failed`.
_Steps = Generator["_Request | float", "_Answer | None", None]


class _Server:
    """One server: its counts, what its ``/info`` said (layout, ``--max-count``), and its floors."""

    __slots__ = (
        "checked_at",
        "discarded",
        "expired",
        "fetched",
        "floors",
        "index",
        "last_error",
        "layout",
        "max_count",
        "node_mask",
        "path",
        "queued",
        "refusals",
        "replays",
        "url",
    )

    def __init__(self, index: int, url: str) -> None:
        self.index, self.url, self.path = index, url, urlsplit(url).path
        self.queued = self.fetched = self.discarded = self.expired = self.refusals = 0  # queued: not in the head
        self.replays = 0
        self.last_error: str | None = None
        self.checked_at = -math.inf  # monotonic time of its last answer, or of the last probe sent to it
        self.layout: Layout | None = None  # from its /info, asked before its first /id
        self.node_mask = 0  # the bits of the layout's node fields
        self.max_count = MAX_COUNT_UNKNOWN
        self.floors: dict[int, int] = {}  # worker ID -> the highest ID of it this server handed over

    def learn(self, layout: Layout, max_count: int) -> None:
        self.layout, self.max_count = layout, max_count
        self.node_mask = layout.node_bits(layout.worker_capacity - 1)

    def forget(self) -> None:
        """Its ``/info`` is to be asked again (its ``--max-count`` changed); the floors stay."""
        self.layout, self.max_count = None, MAX_COUNT_UNKNOWN

    def raise_floors(self, runs: list[range]) -> None:
        """Raise the floors to the IDs of an answer, all of which must lie above the floor of their worker ID (else
        :class:`_Replayed`, and no floor moves). A run of consecutive integers whose node bits cannot differ (none
        lies below its first and last IDs' highest differing bit: the usual case, one tick of one worker ID) is
        checked at its first ID; any other run ID by ID (a batch holds at most ``--max-count`` IDs)."""
        layout = self.layout
        assert layout is not None
        tops: dict[int, int] = {}
        for run in runs:
            first, last = run[0], run[-1]
            one_worker = not self.node_mask & ((1 << (first ^ last).bit_length()) - 1)
            for low, high in [(first, last)] if one_worker else [(i, i) for i in run]:
                try:
                    worker = layout.split(low)["worker"]
                except InvalidInput as exc:
                    raise _Failed(f"malformed answer: {exc}") from None
                floor = self.floors.get(worker, -1)
                if low <= floor:
                    raise _Replayed(
                        f"replayed answer: ID {low} of worker ID {worker} is at or below {floor}, the highest this"
                        " server handed over before"
                    )
                tops[worker] = high  # runs are strictly increasing: the last is the highest
        self.floors.update(tops)


class _Chunk:
    """A run of consecutive IDs from one server, usable until ``expires`` (monotonic). ``ids`` iterates ``run``:
    ``next()`` on a ``range`` iterator is atomic under the GIL, so the head chunk is taken from without a lock."""

    __slots__ = ("expires", "ids", "run", "server")

    def __init__(self, server: _Server, run: range, expires: float) -> None:
        self.server, self.run, self.expires = server, run, expires
        self.ids = iter(run)

    def left(self) -> int:
        return operator.length_hint(self.ids)


MAX_COUNT_UNKNOWN = 1 << 62  # a server's --max-count before its /info said it

_Taken = tuple[_Server, int, float, list[int]]  # IDs taken from one chunk: server, its refusals then, expiry, IDs
_NOTHING = _Chunk(_Server(-1, "http://nothing"), range(0), -math.inf)  # the head of an empty buffer


class _Core:
    """The buffer, the refill policy and the checks of every answer, shared by both clients, with no I/O: a refill
    round or a probe is a generator of :class:`_Request` s and pauses (:data:`_Steps`) that the threaded or the
    asyncio refiller drives. Callers serialise access (a lock, or the loop)."""

    def __init__(
        self,
        urls: str | Sequence[str],
        batch: int | None,
        low_water: int | None,
        timeout: float,
        retries: int,
        backoff: float,
        probe_interval: float | None,
        max_wait: float | None,
        max_age: float | None,
    ) -> None:
        self.urls = check_urls(urls)
        self.given = (batch, low_water, max_age)  # as given, for :meth:`fresh`
        self.adaptive = batch is None
        self.batch = MIN_BATCH if batch is None else check_option("batch", batch)
        self.batch_cap = MAX_BATCH  # an adaptive batch's ceiling: lowered to the smallest --max-count /info gave
        self.fixed_low_water = check_option("low_water", low_water)
        self.low_water = self._low_water()
        self.max_age = math.inf if max_age is None else check_option("max_age", max_age)
        self.last_fill = -math.inf  # monotonic time the last refill round started
        self.timeout = check_option("timeout", timeout)
        self.retries = check_option("retries", retries)
        self.backoff = check_option("backoff", backoff)
        self.probe_interval = check_option("probe_interval", probe_interval)
        backoffs = sum(self.backoff * 2**p for p in range(self.retries))
        round_s = (self.retries + 1) * len(self.urls) * self.timeout + backoffs
        # a caller may arrive while a probe (one request) is under way, then waits for one whole round
        self.max_wait = round_s + self.timeout if max_wait is None else check_option("max_wait", max_wait)
        self.servers = [_Server(i, url) for i, url in enumerate(self.urls)]
        self.head = _NOTHING  # the chunk IDs are taken from, lock-free
        self.chunks: deque[_Chunk] = deque()  # the chunks after it
        self.queued = 0  # IDs in ``chunks``
        self.demand = 0  # IDs that waiting callers want
        self.preferred = 0  # the server that answered last
        self.asked = False  # a caller started waiting since the last failed round
        self.failed_rounds = 0
        self.last_round: dict[str, str] = {}  # each server's failure in the last failed round
        self.retry_after: float | None = None  # the shortest Retry-After of the round under way
        self.retry_at = 0.0  # background refills wait until then after a failed round
        self.closed = False
        self.crash: BaseException | None = None

    def fresh(self) -> _Core:
        """A new core with the same settings: empty buffer, zero counts (the state of a forked child's client). A
        client closed before the fork stays closed."""
        batch, low_water, max_age = self.given
        core = _Core(
            self.urls,
            batch,
            low_water,
            self.timeout,
            self.retries,
            self.backoff,
            self.probe_interval,
            self.max_wait,
            max_age,
        )
        core.closed = self.closed
        return core

    def _low_water(self) -> int:
        if self.fixed_low_water is not None:
            return self.fixed_low_water
        return 2 * self.batch if self.adaptive else self.batch // 2

    @property
    def level(self) -> int:
        """IDs in the buffer (expired ones included until :meth:`expire` drops them)."""
        return self.head.left() + self.queued

    def buffered(self, server: _Server) -> int:
        return server.queued + (self.head.left() if self.head.server is server else 0)

    # -- taking IDs ----------------------------------------------------------------------------------

    def take(self, n: int, now: float) -> list[_Taken]:
        """Up to ``n`` IDs, removed from the buffer, as parts (one per chunk); fewer only if it runs out (a lock-free
        ``next_id`` may take IDs while a caller holds the lock)."""
        self.expire(now)
        parts: list[_Taken] = []
        while True:
            head = self.head
            ids = list(itertools.islice(head.ids, n))
            if ids:
                parts.append((head.server, head.server.refusals, head.expires, ids))
                n -= len(ids)
            if not n or not self._promote():
                return parts

    def take_one(self, now: float) -> int | None:
        """The next ID, removed from the buffer; None if it is empty."""
        self.expire(now)
        while True:
            value = next(self.head.ids, None)
            if value is not None or not self._promote():
                return value

    def expire(self, now: float) -> None:
        """Drop the chunks fetched more than ``max_age`` ago (they expire in the order they came)."""
        head = self.head
        if head.expires <= now:
            self._drop(head.server, head.left(), expired=True)
            self.head = _NOTHING
        chunks = self.chunks
        while chunks and chunks[0].expires <= now:
            chunk = chunks.popleft()
            self.queued -= len(chunk.run)
            chunk.server.queued -= len(chunk.run)
            self._drop(chunk.server, len(chunk.run), expired=True)

    def _promote(self) -> bool:
        """Make the next chunk the head (the old one is used up); False if there is none. The head is cut where the
        level reaches ``low_water``: the call after it takes the slow path, which wakes the refiller. Below
        ``low_water`` heads are at most ``LOW_STEP`` IDs, so a caller in a tight loop passes by the slow path often
        while a refill is due (the asyncio client gives its loop a turn there, and the refill task needs several)."""
        if not self.chunks:
            self.head = _NOTHING
            return False
        chunk = self.chunks.popleft()
        size = len(chunk.run)
        self.queued -= size
        cut = size + self.queued - self.low_water
        if cut <= 0:
            cut = LOW_STEP
        if cut < size:
            self.chunks.appendleft(_Chunk(chunk.server, chunk.run[cut:], chunk.expires))
            self.queued += size - cut
            chunk = _Chunk(chunk.server, chunk.run[:cut], chunk.expires)
            size = cut
        chunk.server.queued -= size
        self.head = chunk
        return True

    def _drop(self, server: _Server, n: int, expired: bool = False) -> None:
        server.discarded += n
        if expired:
            server.expired += n

    def still_good(self, parts: list[_Taken], now: float) -> list[_Taken]:
        """Of the parts a caller took before it waited, those it may still hand out; the others (their server
        refused since, or they grew too old) count as discarded."""
        good = []
        for part in parts:
            server, refusals, expires, ids = part
            if server.refusals == refusals and now < expires:
                good.append(part)
            else:
                self._drop(server, len(ids), expired=now >= expires)
        return good

    # -- what the refiller does next -------------------------------------------------------------------

    def next_step(self, now: float) -> tuple[_Steps | None, float | None]:
        """The refiller's next work: the steps of a refill round or of a probe, to drive now (:data:`_Steps`); or
        None and how long to wait for (None: until woken)."""
        self.expire(now)
        level = self.level
        if (self.asked and self.demand > level) or (level < self.low_water and now >= self.retry_at):
            return self._fill(now), None
        delay = self.retry_at - now if level < self.low_water else None
        if self.probe_interval is not None:
            for server in self.servers:
                if self.buffered(server):
                    due = server.checked_at + self.probe_interval - now
                    if due <= 0:
                        return self._probe(server, now), None
                    delay = due if delay is None else min(delay, due)
        return None, delay

    def _fill(self, now: float) -> _Steps:
        """One refill round (:meth:`plan`): the first server whose attempt succeeds fills the buffer."""
        batch = self.batch
        for pause, server in self.plan(now):
            if pause:
                yield pause
            if self.closed:
                return
            try:
                runs = yield from self._attempt(server, batch)
            except (_Refused, _Failed) as failure:
                self.failed(server, failure, _monotonic())
                continue
            self.accepted(server, runs, _monotonic())
            return
        self.round_failed(_monotonic())

    def _attempt(self, server: _Server, batch: int) -> Generator[_Request | float, _Answer | None, list[range]]:
        """One attempt on ``server``, all of it by one deadline ``timeout`` from now: its ``/info`` if not known yet
        (layout and ``--max-count``), then ``/id`` for ``batch`` IDs or its ``--max-count`` if fewer. An answer
        holding an ID at or below its worker ID's floor is a replay (:meth:`_Server.raise_floors`). A 400
        ``invalid_count`` (its ``--max-count`` went down since) asks ``/info`` again, once."""
        deadline = _monotonic() + self.timeout
        for last_try in (False, True):
            if server.layout is None:
                info = yield _Request(server, "/info", deadline, ANSWER_SLACK_BYTES)
                assert info is not None
                server.learn(*_info_answer(*info))
                self.batch_cap = min(self.batch_cap, server.max_count)
            count = min(batch, server.max_count)
            answer = yield _Request(server, f"/id?count={count}", deadline, answer_limit_bytes(count))
            assert answer is not None
            try:
                runs = _ids_answer(*answer, count)
            except _Failed as failure:
                if failure.code != "invalid_count" or last_try:
                    raise
                server.forget()
                continue
            server.raise_floors(runs)
            return runs
        raise AssertionError("unreachable")

    def _probe(self, server: _Server, now: float) -> _Steps:
        """``GET /readyz``: a 503 drops the server's buffered IDs (:meth:`failed`)."""
        try:
            answer = yield _Request(server, "/readyz", now + self.timeout, ANSWER_SLACK_BYTES)
            assert answer is not None
            _readiness_answer(*answer)
        except (_Refused, _Failed) as failure:
            self.failed(server, failure, _monotonic())
        else:
            self.ready(server, _monotonic())

    def plan(self, now: float) -> list[tuple[float, _Server]]:
        """One refill round: ``(seconds to wait first, server to ask)``, preferred server first in every pass. An
        adaptive batch doubles when rounds come faster than ``GROW_S`` apart and halves when slower than a quarter
        of ``max_age`` (or ``SHRINK_S``), within ``MIN_BATCH..MAX_BATCH``; ``low_water`` stays two batches."""
        if self.adaptive:
            since = now - self.last_fill
            if since < GROW_S:
                self.batch = self.batch * 2
            elif since > min(SHRINK_S, self.max_age / 4):
                self.batch = self.batch // 2
            self.batch = max(min(MIN_BATCH, self.batch_cap), min(self.batch, self.batch_cap))
            self.low_water = self._low_water()
        self.last_fill = now
        self.retry_after = None
        order = self.servers[self.preferred :] + self.servers[: self.preferred]
        return [
            (self.backoff * 2 ** (p - 1) if p and i == 0 else 0.0, server)
            for p in range(self.retries + 1)
            for i, server in enumerate(order)
        ]

    # -- what servers said -----------------------------------------------------------------------------

    def accepted(self, server: _Server, runs: list[range], now: float) -> None:
        expires = now + self.max_age
        for run in runs:
            self.chunks.append(_Chunk(server, run, expires))
            self.queued += len(run)
            server.queued += len(run)
            server.fetched += len(run)
        server.last_error, server.checked_at = None, now
        self.preferred = server.index
        self.retry_at = 0.0

    def failed(self, server: _Server, failure: _Refused | _Failed, now: float) -> None:
        """Record ``failure``; a refusal also drops every ID buffered from ``server``."""
        server.last_error, server.checked_at = str(failure), now
        if isinstance(failure, _Replayed):
            server.replays += 1
        if isinstance(failure, _Refused):
            server.refusals += 1
            self.retry_after = min(self.retry_after or math.inf, failure.retry_after)
            self._discard_head(server)
            if server.queued:
                self.chunks = deque(c for c in self.chunks if c.server is not server)
                self.queued -= server.queued
                self._drop(server, server.queued)
                server.queued = 0

    def ready(self, server: _Server, now: float) -> None:
        server.last_error, server.checked_at = None, now

    def round_failed(self, now: float) -> None:
        self.last_round = {s.url: s.last_error or "no answer" for s in self.servers}
        self.failed_rounds += 1
        self.asked = False  # callers waiting now get this failure; only a new caller starts another round
        self.retry_at = now + RETRY_COOLDOWN_S

    def wait_started(self, n: int) -> int:
        """A caller waits for ``n`` IDs; the failed-round count to compare with (see :meth:`failure`)."""
        self.demand += n
        self.asked = True
        return self.failed_rounds

    # -- errors for callers ----------------------------------------------------------------------------

    def failure(self, what: str, rounds: int) -> AllServersFailed:
        """The error for a caller that began waiting when ``rounds`` rounds had failed: that of the round that failed
        since, or (time ran out) each server's last failure."""
        if self.failed_rounds != rounds:
            failures = dict(self.last_round)
        else:
            failures = {s.url: s.last_error or "no answer yet" for s in self.servers}
        listed = "; ".join(f"{url}: {text}" for url, text in failures.items())
        return AllServersFailed(f"{what}: {listed}", failures, self.retry_after or 1.0)

    def close(self) -> None:
        """Closed: no ID is handed out any more, the head's left ones count as discarded."""
        self.closed = True
        self._discard_head(self.head.server)

    def _discard_head(self, server: _Server) -> None:
        """If the head is ``server``'s: no ID is taken from it any more (the lock-free path checks ``expires``)."""
        head = self.head
        if head.server is server:
            head.expires = -math.inf
            self.head = _NOTHING
            self._drop(server, head.left())

    def check_open(self) -> None:
        if self.crash is not None:
            raise ClientError(f"the refill loop failed: {self.crash!r}") from self.crash
        if self.closed:
            raise ClientClosed("the idgen client is closed")

    def status(self) -> list[ServerStatus]:
        self.expire(time.monotonic())
        out = []
        for s in self.servers:
            buffered = self.buffered(s)
            handed_out = s.fetched - buffered - s.discarded
            out.append(
                ServerStatus(
                    s.url, buffered, s.fetched, handed_out, s.discarded, s.expired, s.refusals, s.last_error, s.replays
                )
            )
        return out


# -- answers and failures --------------------------------------------------------------------------------------


def _ids_answer(status: int, headers: Mapping[str, str], body: bytes, count: int) -> list[range]:
    """The IDs of a ``GET /id?count=count`` answer, as runs; raises :class:`_Refused` or :class:`_Failed`. The runs
    form is asked for; a server that predates it answers JSON."""
    if status != 200:
        raise _http_failure(status, headers, body)
    if headers.get("Content-Type", "").startswith(RUNS_TYPE):
        try:
            return parse_runs(body, count)
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested past the decoder's depth
            raise _Failed(f"malformed answer: {exc}") from None
    try:
        texts = _json(body)["ids"]
    except (ValueError, KeyError, TypeError):
        raise _Failed('malformed answer: not {"ids": [...]}') from None
    if not (isinstance(texts, list) and len(texts) == count and all(_is_decimal(t) for t in texts)):
        raise _Failed(f"malformed answer: expected {count} decimal ID strings")
    ids = list(map(int, texts))
    if ids[-1] > MAX_ID or any(a >= b for a, b in itertools.pairwise(ids)):
        raise _Failed("malformed answer: the IDs are not strictly increasing 63-bit integers")
    return parse_runs(runs_body(ids), count)


def _json(body: bytes) -> Any:
    """``json.loads``; JSON nested past the decoder's depth is a :class:`ValueError` like any malformed JSON, not the
    :class:`RecursionError` that would end the refill loop."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("JSON nested too deep") from None


def _readiness_answer(status: int, headers: Mapping[str, str], body: bytes) -> None:
    if status != 200:
        raise _http_failure(status, headers, body)


def _info_answer(status: int, headers: Mapping[str, str], body: bytes) -> tuple[Layout, int]:
    """The layout and ``--max-count`` a ``GET /info`` answer gives; :class:`_Failed` if it gives neither."""
    if status != 200:
        raise _http_failure(status, headers, body, "GET /info: ")
    try:
        info = _json(body)
        layout, max_count = get_layout(info["layout"]["spec_string"]), info["max_count"]
    except (ValueError, KeyError, TypeError):  # InvalidInput is a ValueError
        raise _Failed("malformed /info: no layout spec_string and max_count") from None
    if isinstance(max_count, bool) or not isinstance(max_count, int) or max_count < 1:
        raise _Failed(f"malformed /info: max_count {max_count!r}")
    return layout, max_count


def answer_limit_bytes(count: int) -> int:
    """The most bytes an answer to ``GET /id?count=count`` may take: more is no idgen server's."""
    return ANSWER_SLACK_BYTES + BYTES_PER_ID * count


def retry_after_s(text: str | None, now_unix_s: float) -> float:
    """The seconds a ``Retry-After`` asks to wait: delay-seconds or an HTTP-date (RFC 9110), clamped to
    ``1..MAX_RETRY_AFTER_S``; ``DEFAULT_RETRY_AFTER_S`` when missing or unreadable (``inf``, ``nan``, words)."""
    if text is None:
        return DEFAULT_RETRY_AFTER_S
    if delay := _DELAY_SECONDS.fullmatch(text):
        seconds = float(delay[1])
    else:
        try:
            seconds = email.utils.parsedate_to_datetime(text).timestamp() - now_unix_s
        except (ValueError, TypeError, IndexError, OverflowError):
            return DEFAULT_RETRY_AFTER_S
    if not math.isfinite(seconds):
        return DEFAULT_RETRY_AFTER_S
    return min(MAX_RETRY_AFTER_S, max(1.0, seconds))


def _is_decimal(text: Any) -> bool:
    return isinstance(text, str) and _DECIMAL.fullmatch(text) is not None


def _http_failure(status: int, headers: Mapping[str, str], body: bytes, what: str = "") -> _Refused | _Failed:
    code = None
    try:
        error = _json(body)["error"]
        code, said = str(error["code"]), f" {error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        said = f": {' '.join(body[:200].decode(errors='replace').split())}" if body else ""
    text = f"{what}HTTP {status}{said}"
    if status != 503:
        return _Failed(text, code)
    retry_after = retry_after_s(headers.get("Retry-After"), time.time())
    return _Refused(f"{text} (Retry-After {retry_after:g} s)", retry_after)


def _describe(exc: BaseException, timeout: float) -> str:
    """A short account of a transport failure: refused, timed out, or the OS's words."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for link in chain:
        if isinstance(link, ConnectionRefusedError) or getattr(link, "errno", None) == errno.ECONNREFUSED:
            return "connection refused"
    for link in chain:
        if isinstance(link, TimeoutError | urllib3.exceptions.TimeoutError | aiohttp.ServerTimeoutError):
            return f"no answer within {timeout:g} s"
    for link in chain:
        if isinstance(link, OSError) and link.strerror:
            return f"connection failed: {link.strerror}"
    return f"connection failed: {' '.join(str(exc).split())[:200] or type(exc).__name__}"


# -- argument checks ---------------------------------------------------------------------------------------------


def check_urls(urls: str | Sequence[str]) -> list[str]:
    listed = [urls] if isinstance(urls, str) else list(urls)
    if not listed:
        raise InvalidInput("give at least one server URL, such as http://127.0.0.1:8080")
    clean = []
    for url in listed:
        if not isinstance(url, str):
            raise InvalidInput(f"a server URL must be a string, not {type(url).__name__}")
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise InvalidInput(f"{url!r} is not a server URL like http://host:8080 (http or https, no query)")
        try:
            parts.port  # noqa: B018 -- raises ValueError for a bad port
        except ValueError:
            raise InvalidInput(f"{url!r} has a bad port") from None
        clean.append(f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}")
    duplicates = {u for u in clean if clean.count(u) > 1}
    if duplicates:
        raise InvalidInput(f"server URLs listed twice: {', '.join(sorted(duplicates))}")
    return clean


# The options of Client and AsyncClient after the URLs: (kind, least value, whether None is allowed). Kinds: whole
# numbers, or seconds (a finite int or float).
CLIENT_OPTIONS: dict[str, tuple[type, int, bool]] = {
    "batch": (int, 1, True),
    "low_water": (int, 0, True),
    "timeout": (float, 1, False),
    "retries": (int, 0, False),
    "backoff": (float, 0, False),
    "probe_interval": (float, 1, True),
    "max_wait": (float, 1, True),
    "max_age": (float, 1, True),
}


def check_option(name: str, value: Any) -> Any:
    """``value`` checked as option ``name`` of :data:`CLIENT_OPTIONS` (seconds as a float, above 0 unless the least
    value is 0); :class:`InvalidInput` saying what is wrong."""
    kind, least, optional = CLIENT_OPTIONS[name]
    if value is None and optional:
        return None
    if kind is int:
        return _check_int(name, value, least)
    return _check_seconds(name, value, zero=least == 0)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInput(f"{name} must be a whole number of at least {minimum}, not {value!r}")
    return value


def _check_seconds(name: str, value: Any, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{name} must be a number of seconds, not {value!r}")
    if value < 0 or (value == 0 and not zero):
        raise InvalidInput(f"{name} must be {'at least 0' if zero else 'above 0'} seconds, not {value!r}")
    return float(value)


def _check_form(form: str | None) -> None:
    if form is not None and form not in FORMS:
        raise InvalidInput(f"form must be None (ints) or one of {', '.join(FORMS)}, not {form!r}")


def _count(parts: list[_Taken]) -> int:
    return sum(len(part[3]) for part in parts)


def _joined(parts: list[_Taken]) -> list[int]:
    return parts[0][3] if len(parts) == 1 else [i for part in parts for i in part[3]]


def _render(ids: list[int], form: str | None) -> list[int] | list[str]:
    return ids if form is None else format_ids(ids, form)  # checked on arrival (_ids_answer)


# -- the threaded client ---------------------------------------------------------------------------------------


class Client:
    """A thread-safe client of one or more idgen servers, with a prefetch buffer refilled by a daemon thread.

    ``urls``: one base URL or several (``http://host:8080``, a path prefix allowed). ``batch``: IDs per request
    (each server is asked for at most its ``--max-count``, read from its ``/info``; default None: sized from
    demand, up to 4096, see the module docstring). ``low_water``: refill below this many buffered IDs (default
    ``batch // 2``, or two batches when sized from demand; 0 fetches only when a caller needs IDs). ``timeout``:
    the total deadline, in seconds, of one attempt on one server, whole answer included (see "Deadlines" in the
    module docstring). ``retries``: extra passes over all servers in a refill round. ``probe_interval``: see the
    module docstring. ``max_wait``: the longest a call waits (default: one round's worst case, ``(retries + 1) *
    len(urls) * timeout`` plus the backoffs, plus one ``timeout``: :attr:`max_wait`). ``max_age``: seconds a
    fetched ID may stay buffered (default 5; None: no limit). The buffer starts filling at once. The process
    default (``IDGEN_URL``) takes these options from ``IDGEN_CLIENT_*`` (:func:`idgen.default.client_options`).
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
        core = _Core(urls, batch, low_water, timeout, retries, backoff, probe_interval, max_wait, max_age)
        self._refiller = _Refiller(core)
        self._start(self._refiller)

    @property
    def max_wait(self) -> float:
        """The longest ``next_id``/``next_ids`` waits before raising :class:`AllServersFailed`."""
        return self._refiller.core.max_wait

    @overload
    def next_id(self, form: None = None) -> int: ...
    @overload
    def next_id(self, form: str) -> str: ...
    def next_id(self, form: str | None = None) -> int | str:
        """One ID: an int, or a string in ``form``. The fast path takes it from the head chunk with no lock."""
        if form is not None:
            _check_form(form)
        refiller = self._refiller
        if not refiller.marker[0]:  # :meth:`_live`, inlined: this is the hot path
            refiller = self._after_fork(refiller)
        head = refiller.core.head
        value = next(head.ids, None) if _monotonic() < head.expires else None
        if value is None:
            core = refiller.core
            with refiller.lock:
                core.check_open()
                while (value := core.take_one(_monotonic())) is None:
                    self._wait_for(refiller, 1)
                if core.level < core.low_water:
                    refiller.wake.notify()
        return value if form is None else format_id(value, form)

    @overload
    def next_ids(self, n: int, form: None = None) -> list[int]: ...
    @overload
    def next_ids(self, n: int, form: str) -> list[str]: ...
    def next_ids(self, n: int, form: str | None = None) -> list[int] | list[str]:
        """``n`` IDs (ints, or strings in ``form``), taken from the buffer at once; waits until it holds ``n``."""
        _check_int("n", n, 0)
        _check_form(form)
        if n == 0:
            return []
        refiller = self._live()
        core = refiller.core
        with refiller.lock:
            core.check_open()
            parts = core.take(n, _monotonic())
            if _count(parts) < n:
                parts = self._complete(refiller, parts, n)
            if core.level < core.low_water:
                refiller.wake.notify()
        return _render(_joined(parts), form)

    def status(self) -> list[ServerStatus]:
        """A snapshot of every server's counts, in the order given."""
        refiller = self._live()
        with refiller.lock:
            return refiller.core.status()

    def close(self) -> None:
        """Stop the refill thread and close connections; waiting and later calls raise :class:`ClientClosed`."""
        self._live().shutdown()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals (the lock is held where noted) -----------------------------------------------------------

    def _start(self, refiller: _Refiller) -> None:
        # The thread holds the refiller, not the client: a client dropped without close() is collected, and this
        # stops its thread then.
        self._finalizer = weakref.finalize(self, refiller.shutdown)
        self._finalizer.atexit = False  # the thread is a daemon: exiting must not wait for a request in flight
        refiller.thread.start()

    def _live(self) -> _Refiller:
        """This process's refiller: the one made here, or after a fork a fresh one (see the module docstring)."""
        refiller = self._refiller
        if refiller.pid != _getpid():
            refiller = self._after_fork(refiller)
        return refiller

    def _after_fork(self, inherited: _Refiller) -> _Refiller:
        """Replace the refiller this process inherited with a fresh one, and start it. Threads of the child may race
        here: ``dict.setdefault`` (atomic) picks one fresh refiller for all of them, made without any inherited lock."""
        fresh = _Refiller(inherited.core.fresh())
        chosen = inherited.successors.setdefault(fresh.pid, fresh)
        if chosen is fresh:
            _inherited.append(inherited)
            self._finalizer.detach()  # its shutdown would join a thread that does not exist here
            self._start(fresh)
            self._refiller = fresh
        return chosen

    def _complete(self, refiller: _Refiller, parts: list[_Taken], n: int) -> list[_Taken]:
        """Lock held: ``parts`` (taken from the buffer) made up to ``n`` IDs, waiting for refills; what was taken
        before a wait is dropped if its server refused meanwhile or it grew too old (:meth:`_Core.still_good`)."""
        core = refiller.core
        while (have := _count(parts)) < n:
            self._wait_for(refiller, n - have)
            now = _monotonic()
            parts = core.still_good(parts, now)
            parts += core.take(n - _count(parts), now)
        return parts

    def _wait_for(self, refiller: _Refiller, n: int) -> None:
        """Lock held: wait until the buffer holds ``n`` IDs; raise if a round fails meanwhile or time runs out."""
        core = refiller.core
        deadline = time.monotonic() + core.max_wait
        rounds = core.wait_started(n)
        refiller.wake.notify()
        try:
            while core.level < n:
                core.check_open()
                if core.failed_rounds != rounds:
                    raise core.failure(f"no idgen server handed over {n} ID(s)", rounds)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise core.failure(f"no idgen server handed over {n} ID(s) within {core.max_wait:g} s", rounds)
                refiller.ids_ready.wait(remaining)
        finally:
            core.demand -= n


class _Refiller:
    """The sync client's refill thread and what it shares with callers: the lock, its two conditions, the pools.
    All of it belongs to the process ``pid`` that made it; ``successors`` maps a forked child's pid to the refiller
    that replaces this one there (:meth:`Client._after_fork`)."""

    def __init__(self, core: _Core) -> None:
        self.core = core
        self.pid = os.getpid()
        self.marker = process_marker()  # the hot path's fork check: as exact as the pid's, and cheaper
        self.successors: dict[int, _Refiller] = {}
        self.lock = threading.Lock()
        self.ids_ready = threading.Condition(self.lock)  # callers wait on it
        self.wake = threading.Condition(self.lock)  # the thread waits on it
        self.stop = threading.Event()
        self.deadline = [math.inf]  # of the request under way (one at a time: this refiller's thread sends them all)
        self.pools = [_deadline_pool(url, self.deadline) for url in core.urls]
        self.thread = threading.Thread(target=self.run, name="idgen-client-refill", daemon=True)

    def shutdown(self) -> None:
        """Stop the thread and close the pools; it may be called more than once. In a forked child it does nothing:
        none of it may be touched there (the client's finalizer, inherited, may still call it)."""
        if self.pid != _getpid():
            return
        with self.lock:
            self.core.close()
            self.wake.notify_all()
            self.ids_ready.notify_all()
        self.stop.set()
        if threading.current_thread() is not self.thread and self.thread.ident is not None:
            self.thread.join(self.core.timeout + 1)
        for pool in self.pools:
            pool.close()

    def run(self) -> None:
        core = self.core
        try:
            while True:
                with self.lock:
                    while True:
                        if core.closed:
                            return
                        steps, delay = core.next_step(time.monotonic())
                        if steps is not None:
                            break
                        self.wake.wait(delay)
                self.drive(steps)
        except BaseException as exc:  # a bug: tell every caller rather than leave them waiting
            with self.lock:
                core.crash = exc
                self.ids_ready.notify_all()
            raise

    def drive(self, steps: _Steps) -> None:
        """Do what the core's ``steps`` ask (send a request, pause), handing each answer back under the lock; wake
        the callers when they end."""
        answer: _Answer | None = None
        failure: _Failed | None = None
        while True:
            with self.lock:
                try:
                    step = steps.send(answer) if failure is None else steps.throw(failure)
                except StopIteration:
                    self.ids_ready.notify_all()
                    return
            answer = failure = None
            if isinstance(step, _Request):
                try:
                    answer = self.get(step)
                except _Failed as exc:
                    failure = exc
            elif self.stop.wait(step):
                return

    def get(self, request: _Request) -> _Answer:
        """``GET`` the request's path: its answer, read whole by its deadline and within its byte bound. The
        deadline holds for every read and send on the socket (:class:`_DeadlineSocket`): a server that trickles
        its answer, headers or body, a byte at a time is cut off at it."""
        remaining = request.deadline - _monotonic()
        if remaining <= 0:
            raise _Failed(f"no answer within {self.core.timeout:g} s")
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
            _check_length(response.headers, request.limit_bytes)
            body = response.read(request.limit_bytes + 1)
            if len(body) > request.limit_bytes:
                raise _too_large(request.limit_bytes)
            return _Answer(response.status, response.headers, body)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _Failed(_describe(exc, self.core.timeout)) from None
        finally:
            if response is not None:
                if not response.closed:
                    response.close()  # cut off: the connection cannot carry another request
                response.release_conn()


# -- the sync transport: urllib3 with a deadline on every socket operation ------------------------------------------


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
        self.sock = _DeadlineSocket(self.sock, self._deadline)  # type: ignore[assignment]


class _DeadlineTLSConnection(urllib3.connection.HTTPSConnection):
    def __init__(self, *args: Any, deadline: list[float], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()
        self.sock = _DeadlineSocket(self.sock, self._deadline)  # type: ignore[assignment]


class _DeadlinePool(urllib3.HTTPConnectionPool):
    ConnectionCls = _DeadlineConnection


class _DeadlineTLSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _DeadlineTLSConnection


def _deadline_pool(url: str, deadline: list[float]) -> urllib3.HTTPConnectionPool:
    """A pool of one connection to ``url``'s server whose every socket operation ends by ``deadline[0]``."""
    parts = urlsplit(url)
    cls = _DeadlineTLSPool if parts.scheme == "https" else _DeadlinePool
    return cls(str(parts.hostname), parts.port, maxsize=1, retries=False, headers=_HEADERS, deadline=deadline)


def _check_length(headers: Mapping[str, str], limit_bytes: int) -> None:
    """Fail at once an answer whose Content-Length says it is over the bound."""
    length = headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limit_bytes:
        raise _too_large(limit_bytes)


def _too_large(limit_bytes: int) -> _Failed:
    return _Failed(f"answer larger than {limit_bytes:,} bytes, more than any idgen server sends for it")


# -- the asyncio client ----------------------------------------------------------------------------------------


class AsyncClient:
    """The asyncio twin of :class:`Client`, with the same arguments; use it from one event loop.

    The refill task and the aiohttp session start at the first call (or ``async with``); ``await close()`` ends
    them. Methods are coroutines: ``await client.next_id()``, ``await client.next_ids(n, form="base32")``.
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
        core = _Core(urls, batch, low_water, timeout, retries, backoff, probe_interval, max_wait, max_age)
        self._refiller = _AsyncRefiller(core)

    @property
    def max_wait(self) -> float:
        """The longest ``next_id``/``next_ids`` waits before raising :class:`AllServersFailed`."""
        return self._refiller.core.max_wait

    @overload
    async def next_id(self, form: None = None) -> int: ...
    @overload
    async def next_id(self, form: str) -> str: ...
    async def next_id(self, form: str | None = None) -> int | str:
        """One ID: an int, or a string in ``form``. The fast path takes it from the head chunk."""
        if form is not None:
            _check_form(form)
        refiller = self._refiller
        if not refiller.marker[0]:  # :meth:`_live`'s check, by the marker: this is the hot path
            refiller = self._live()
        head = refiller.core.head
        value = next(head.ids, None) if _monotonic() < head.expires else None
        if value is None:
            core = refiller.core
            core.check_open()
            while (value := core.take_one(_monotonic())) is None:
                await refiller.wait_for(1)
            await refiller.turn()
        return value if form is None else format_id(value, form)

    @overload
    async def next_ids(self, n: int, form: None = None) -> list[int]: ...
    @overload
    async def next_ids(self, n: int, form: str) -> list[str]: ...
    async def next_ids(self, n: int, form: str | None = None) -> list[int] | list[str]:
        """``n`` IDs (ints, or strings in ``form``), taken from the buffer at once; waits until it holds ``n``."""
        _check_int("n", n, 0)
        _check_form(form)
        if n == 0:
            return []
        refiller = self._live()
        core = refiller.core
        core.check_open()
        parts = core.take(n, _monotonic())
        while (have := _count(parts)) < n:
            await refiller.wait_for(n - have)
            now = _monotonic()
            parts = core.still_good(parts, now)
            parts += core.take(n - _count(parts), now)
        await refiller.turn()
        return _render(_joined(parts), form)

    def status(self) -> list[ServerStatus]:
        """A snapshot of every server's counts, in the order given."""
        return self._live().core.status()

    async def start(self) -> None:
        """Start the refill task (the first call does it too)."""
        self._live().start()

    async def close(self) -> None:
        """Stop the refill task and close the session; waiting and later calls raise :class:`ClientClosed`."""
        await self._live().close()

    async def __aenter__(self) -> AsyncClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _live(self) -> _AsyncRefiller:
        """This process's refiller: the one made here, or after a fork a fresh one whose task and session come at
        the first call; the inherited one is kept and never used (see the module docstring). No ``await``: atomic
        on the loop."""
        refiller = self._refiller
        if refiller.pid != os.getpid():
            _inherited.append(refiller)
            self._refiller = refiller = _AsyncRefiller(refiller.core.fresh())
        return refiller


class _AsyncRefiller:
    """The asyncio client's refill task and what it shares with callers: the conditions and the session, all of
    them belonging to the process ``pid`` that made it."""

    def __init__(self, core: _Core) -> None:
        self.core = core
        self.pid = os.getpid()
        self.marker = process_marker()  # the hot path's fork check: as exact as the pid's, and cheaper
        self.ids_ready = asyncio.Condition()
        self.wake = asyncio.Event()
        self.session: aiohttp.ClientSession | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.core.check_open()
        if self.task is None:
            self.session = aiohttp.ClientSession(headers=_HEADERS, auto_decompress=False)
            self.task = asyncio.create_task(self.run(), name="idgen-client-refill")

    async def close(self) -> None:
        core = self.core
        if core.closed:
            return
        core.close()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.notify()
        if self.session is not None:
            await self.session.close()

    async def wait_for(self, n: int) -> None:
        """Wait until the buffer holds ``n`` IDs; raise if a round fails meanwhile or time runs out."""
        core = self.core
        self.start()
        deadline = time.monotonic() + core.max_wait
        rounds = core.wait_started(n)
        self.wake.set()
        try:
            async with self.ids_ready:
                while core.level < n:
                    core.check_open()
                    if core.failed_rounds != rounds:
                        raise core.failure(f"no idgen server handed over {n} ID(s)", rounds)
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise core.failure(f"no idgen server handed over {n} ID(s) within {core.max_wait:g} s", rounds)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.ids_ready.wait(), remaining)
        finally:
            core.demand -= n

    async def turn(self) -> None:
        """After a take on the slow path: wake the refill task if the level is below ``low_water``, and give the loop
        a turn. The fast path never awaits, so without this a caller in a tight loop would starve the task: it could
        neither send a refill nor read the answer until the buffer ran dry."""
        if self.core.level < self.core.low_water:
            self.wake.set()
            await asyncio.sleep(0)

    async def notify(self) -> None:
        async with self.ids_ready:
            self.ids_ready.notify_all()

    async def run(self) -> None:
        core = self.core
        try:
            while not core.closed:
                steps, delay = core.next_step(time.monotonic())
                if steps is not None:
                    await self.drive(steps)
                else:
                    self.wake.clear()  # no await since next_step: nothing it missed can have happened
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), delay)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug: tell every caller rather than leave them waiting
            core.crash = exc
            await self.notify()
            raise

    async def drive(self, steps: _Steps) -> None:
        """Do what the core's ``steps`` ask (send a request, pause), handing each answer back; wake the callers when
        they end."""
        answer: _Answer | None = None
        failure: _Failed | None = None
        while True:
            try:
                step = steps.send(answer) if failure is None else steps.throw(failure)
            except StopIteration:
                await self.notify()
                return
            answer = failure = None
            if isinstance(step, _Request):
                try:
                    answer = await self.get(step)
                except _Failed as exc:
                    failure = exc
            else:
                await asyncio.sleep(step)

    async def get(self, request: _Request) -> _Answer:
        """``GET`` the request's path: its answer, read whole by its deadline and within its byte bound."""
        assert self.session is not None
        remaining = request.deadline - _monotonic()
        if remaining <= 0:
            raise _Failed(f"no answer within {self.core.timeout:g} s")
        try:
            async with self.session.get(
                request.server.url + request.path,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=remaining),
            ) as response:
                _check_length(response.headers, request.limit_bytes)
                body = bytearray()
                while chunk := await response.content.read(request.limit_bytes + 1 - len(body)):
                    body += chunk
                    if len(body) > request.limit_bytes:
                        raise _too_large(request.limit_bytes)
                return _Answer(response.status, response.headers, bytes(body))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _Failed(_describe(exc, self.core.timeout)) from None
