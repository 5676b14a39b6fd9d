"""The sans-IO core both clients share: :class:`IdBuffer`, the prefetch buffer, its refill policy and failover, and
the bookkeeping of every server. No I/O and no locking: a refill round or a probe is a generator of
:class:`Request` s and pauses (:data:`Steps`) that a refiller drives (a thread in :mod:`idgen.client.sync`, a task
in :mod:`idgen.client.aio`, plain calls in tests/test_client_core.py), and callers serialise access (a lock, or the
loop). Answers are read and checked by :mod:`idgen.client.answers`.

**Fast path.** Batches stay runs: the buffer is a queue of chunks (:class:`Chunk`), each a ``range`` of consecutive
IDs. ``next_id()`` takes from the head chunk's ``range`` iterator with no lock (``next()`` on it is atomic under the
GIL, as in :mod:`idgen.generator`); only when the head runs out, is too old or a refill is due does it take the
lock (:meth:`IdBuffer.take_one`). ``next_ids(n)`` slices whole chunks (:meth:`IdBuffer.take`). The head is cut where
the level reaches ``low_water`` (:meth:`IdBuffer._promote`), so the call that crosses it takes the slow path and
wakes the refiller. By default (``batch=None``) the batch sizes itself from demand (:meth:`IdBuffer.plan`): it
starts at ``MIN_BATCH`` and doubles (up to ``MAX_BATCH``, and never above a server's ``--max-count``) while refill
rounds come less than ``GROW_S`` apart, halves when they come further apart than ``SHRINK_S`` or a quarter of
``max_age``, and ``low_water`` stays two batches: CosId's "safe distance".

**Age.** IDs fetched more than ``max_age`` seconds ago (monotonic clock) are dropped, never handed out
(:meth:`IdBuffer.expire`; ``expired`` in :class:`ServerStatus`): old IDs sort far behind fresh ones.

**Failover.** A refill round (:meth:`IdBuffer.plan`) asks the server that answered last, then the ones after it in
the list (wrapping around), at most ``retries + 1`` passes with ``backoff`` (doubling) between passes; each
attempt ends ``timeout`` seconds after it began. After a failed round, background refills (no caller waiting)
pause ``RETRY_COOLDOWN_S``; a caller waits at most ``max_wait``, then gets :class:`~idgen.errors.AllServersFailed`.

Invariants:

- **No ID is handed out twice.** Each ID enters the buffer once and leaves it once: ``next()`` on a range iterator,
  atomic under the GIL, or with no ``await`` between the check and the take (the asyncio client). It enters once
  because of the floors (:class:`~idgen.client.answers.Floors`): an answer holding an ID at or below its worker
  ID's floor is dropped whole, counted in ``replays``. Per server, ``fetched == handed_out + buffered + discarded``
  (:meth:`IdBuffer.status`; ``handed_out`` is derived, so a ``next_id`` racing with a refusal may be counted as
  discarded; a dropped replay never counts as fetched). Uniqueness *across* servers is the servers' own promise:
  they must share one ID space (one ZooKeeper namespace, or one local state directory).
- **No ID is handed out after the server that minted it said it cannot vouch for it.** A 503 from server S, to a
  refill or to the readiness probe (``GET /readyz``), drops every ID buffered from S at once (``discarded``,
  :meth:`IdBuffer.failed`), before any further ID is handed out (a lock-free ``next_id`` already under way in
  another thread may still take one). IDs ``next_ids`` took before it waited for more are dropped too if their
  server refused meanwhile (:meth:`IdBuffer.still_good`). The probe goes to each server that has IDs in the buffer
  and has not answered for ``probe_interval`` seconds, so an idle buffer learns of a refusal within
  ``probe_interval + timeout``; IDs handed out before the client heard of the refusal are not recalled.
  ``probe_interval=None`` leaves only refills to tell.
- Why a lost lease is handled by this rule and no other: IDs minted under a lease before it was lost are still
  unique (docs/DESIGN.md, section 2: every later holder of that worker ID mints strictly above the fence those IDs
  lie under). Dropping them is about the server's promise to vouch for what it handed over, not about uniqueness.
  For the same reason a server that stops or cannot be reached keeps its buffered IDs: it did not refuse.
- Order: IDs of one server come out strictly increasing (except across the server's switch of worker IDs, after a
  clock step back beyond its ``--max-lead``: docs/DESIGN.md section 3a); IDs of different servers are not ordered.
- **Fork.** A forked child's client starts from :meth:`IdBuffer.fresh`: an empty buffer and zero counts. What the
  child inherited (the parent's buffer, refiller, lock, connections) goes to :data:`inherited` and is never used.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import operator
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit

from idgen.client.answers import (
    ANSWER_SLACK_BYTES,
    Answer,
    Failed,
    Floors,
    Refused,
    Replayed,
    ServerInfo,
    answer_limit_bytes,
    ids_answer,
    info_answer,
    readiness_answer,
)
from idgen.client.options import check_option, check_urls
from idgen.encoding import format_ids
from idgen.errors import AllServersFailed, ClientClosed, ClientError

MIN_BATCH = 256  # an adaptive batch starts here and never goes below
MAX_BATCH = 4096  # nor above: the servers' default --max-count
GROW_S = 0.25  # refill rounds closer than this double an adaptive batch
SHRINK_S = 2.0  # rounds further apart than this (or a quarter of max_age) halve it
LOW_STEP = 256  # below low_water, the head holds at most this many IDs (see IdBuffer._promote)
RETRY_COOLDOWN_S = 1.0  # after a failed round, background refills (no caller waiting) pause this long

# What forked children took over from their parents (refillers; buffers, sessions and tasks): kept for the life of
# the process and never used. Dropping them would let the collector finalise them, which takes locks a parent's
# thread may have held at the fork (urllib3 drains its pools under one) and closes the parent's connections in the
# child.
inherited: list[object] = []


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


class Server:
    """One server: its counts, what its ``/info`` said (layout, ``--max-count``), and its floors."""

    __slots__ = (
        "checked_at",
        "discarded",
        "expired",
        "fetched",
        "floors",
        "index",
        "info",
        "last_error",
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
        self.info: ServerInfo | None = None  # from its /info, asked before its first /id
        self.floors = Floors()

    def learn(self, info: ServerInfo) -> None:
        self.info = info
        self.floors.read_with(info.layout)

    def forget(self) -> None:
        """Its ``/info`` is to be asked again (its ``--max-count`` changed); the floors stay."""
        self.info = None


class Chunk:
    """A run of consecutive IDs from one server, usable until ``expires`` (monotonic). ``ids`` iterates ``run``:
    ``next()`` on a ``range`` iterator is atomic under the GIL, so the head chunk is taken from without a lock."""

    __slots__ = ("expires", "ids", "run", "server")

    def __init__(self, server: Server, run: range, expires: float) -> None:
        self.server, self.run, self.expires = server, run, expires
        self.ids = iter(run)

    def left(self) -> int:
        return operator.length_hint(self.ids)


class Taken(NamedTuple):
    """IDs taken from one chunk, and what decides whether they may still be handed out after a wait."""

    server: Server
    refusals: int  # the server's refusals when they were taken: one more since, and they are dropped
    expires: float  # monotonic
    ids: list[int]


@dataclass(frozen=True)
class Request:
    """What the buffer asks a refiller to send: ``GET path`` to ``server``, its answer read whole (headers and body)
    by ``deadline`` (monotonic, ``timeout_s`` after its attempt began) and no longer than ``limit_bytes``, else
    :class:`~idgen.client.answers.Failed`."""

    server: Server
    path: str
    deadline: float
    limit_bytes: int
    timeout_s: float

    def seconds_left(self, now: float) -> float:
        """The time left to ``deadline``; :class:`~idgen.client.answers.Failed` if none is."""
        remaining = self.deadline - now
        if remaining <= 0:
            raise Failed(f"no answer within {self.timeout_s:g} s")
        return remaining


# The buffer's work for a refiller (sans-IO): it yields a request to send or seconds to pause, and is sent back the
# answer (None after a pause); a failure to send or read is thrown into it as :class:`Failed` (:func:`advance`).
Steps = Generator["Request | float", "Answer | None", None]


def advance(steps: Steps, outcome: Answer | Failed | None) -> Request | float | None:
    """Hand ``steps`` the outcome of their last request (its answer, or the failure to get one; None at the start
    and after a pause), and return what they ask next: a request to send, seconds to pause, or None once they end."""
    try:
        return steps.throw(outcome) if isinstance(outcome, Failed) else steps.send(outcome)
    except StopIteration:
        return None


class Wait(NamedTuple):
    """A caller waiting for ``n`` IDs until ``deadline`` (monotonic), since ``rounds`` refill rounds had failed."""

    n: int
    rounds: int
    deadline: float


_NOTHING = Chunk(Server(-1, "http://nothing"), range(0), -math.inf)  # the head of an empty buffer


class IdBuffer:
    """The buffer, the refill policy and the checks of every answer, shared by both clients, with no I/O (see the
    module docstring). ``clock``: the monotonic clock the buffer reads where no ``now`` is given (a refill round's
    times, :meth:`status`); the clients' own reads of the head's expiry use ``time.monotonic`` too."""

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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.urls = check_urls(urls)
        self.given = (batch, low_water, max_age)  # as given, for :meth:`fresh`
        self.clock = clock
        self.adaptive = batch is None
        self.batch: int = MIN_BATCH if batch is None else check_option("batch", batch)
        self.batch_cap = MAX_BATCH  # an adaptive batch's ceiling: lowered to the smallest --max-count /info gave
        self.fixed_low_water: int | None = check_option("low_water", low_water)
        self.low_water = self._low_water()
        self.max_age: float = math.inf if max_age is None else check_option("max_age", max_age)
        self.last_fill = -math.inf  # monotonic time the last refill round started
        self.timeout: float = check_option("timeout", timeout)
        self.retries: int = check_option("retries", retries)
        self.backoff: float = check_option("backoff", backoff)
        self.probe_interval: float | None = check_option("probe_interval", probe_interval)
        backoffs = sum(self.backoff * 2**p for p in range(self.retries))
        round_s = (self.retries + 1) * len(self.urls) * self.timeout + backoffs
        # a caller may arrive while a probe (one request) is under way, then waits for one whole round
        self.max_wait: float = round_s + self.timeout if max_wait is None else check_option("max_wait", max_wait)
        self.servers = [Server(i, url) for i, url in enumerate(self.urls)]
        self.head = _NOTHING  # the chunk IDs are taken from, lock-free
        self.chunks: deque[Chunk] = deque()  # the chunks after it
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

    def fresh(self) -> IdBuffer:
        """A new buffer with the same settings: empty, zero counts (the state of a forked child's client). A client
        closed before the fork stays closed."""
        batch, low_water, max_age = self.given
        buffer = IdBuffer(
            self.urls,
            batch,
            low_water,
            self.timeout,
            self.retries,
            self.backoff,
            self.probe_interval,
            self.max_wait,
            max_age,
            self.clock,
        )
        buffer.closed = self.closed
        return buffer

    def _low_water(self) -> int:
        if self.fixed_low_water is not None:
            return self.fixed_low_water
        return 2 * self.batch if self.adaptive else self.batch // 2

    @property
    def level(self) -> int:
        """IDs in the buffer (expired ones included until :meth:`expire` drops them)."""
        return self.head.left() + self.queued

    def buffered(self, server: Server) -> int:
        return server.queued + (self.head.left() if self.head.server is server else 0)

    # -- taking IDs ----------------------------------------------------------------------------------

    def take(self, n: int, now: float) -> list[Taken]:
        """Up to ``n`` IDs, removed from the buffer, as parts (one per chunk); fewer only if it runs out (a lock-free
        ``next_id`` may take IDs while a caller holds the lock)."""
        self.expire(now)
        parts: list[Taken] = []
        while True:
            head = self.head
            ids = list(itertools.islice(head.ids, n))
            if ids:
                parts.append(Taken(head.server, head.server.refusals, head.expires, ids))
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

    def top_up(self, parts: list[Taken], n: int, now: float) -> list[Taken]:
        """After a wait: of ``parts`` (taken before it), those :meth:`still_good`, and more taken now towards ``n``
        IDs in all."""
        parts = self.still_good(parts, now)
        return parts + self.take(n - count_ids(parts), now)

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
            self.chunks.appendleft(Chunk(chunk.server, chunk.run[cut:], chunk.expires))
            self.queued += size - cut
            chunk = Chunk(chunk.server, chunk.run[:cut], chunk.expires)
            size = cut
        chunk.server.queued -= size
        self.head = chunk
        return True

    def _drop(self, server: Server, n: int, expired: bool = False) -> None:
        server.discarded += n
        if expired:
            server.expired += n

    def still_good(self, parts: list[Taken], now: float) -> list[Taken]:
        """Of the parts a caller took before it waited, those it may still hand out; the others (their server
        refused since, or they grew too old) count as discarded."""
        good = []
        for part in parts:
            if part.server.refusals == part.refusals and now < part.expires:
                good.append(part)
            else:
                self._drop(part.server, len(part.ids), expired=now >= part.expires)
        return good

    # -- what the refiller does next -------------------------------------------------------------------

    def next_step(self, now: float) -> tuple[Steps | None, float | None]:
        """The refiller's next work: the steps of a refill round or of a probe, to drive now (:data:`Steps`); or
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

    def _fill(self, now: float) -> Steps:
        """One refill round (:meth:`plan`): the first server whose attempt succeeds fills the buffer."""
        attempts = self.plan(now)  # first: it sizes an adaptive batch for this round
        batch = self.batch
        for pause, server in attempts:
            if pause:
                yield pause
            if self.closed:
                return
            try:
                runs = yield from self._attempt(server, batch)
            except (Refused, Failed) as failure:
                self.failed(server, failure, self.clock())
                continue
            self.accepted(server, runs, self.clock())
            return
        self.round_failed(self.clock())

    def _attempt(self, server: Server, batch: int) -> Generator[Request | float, Answer | None, list[range]]:
        """One attempt on ``server``, all of it by one deadline ``timeout`` from now: its ``/info`` if not known yet
        (layout and ``--max-count``), then ``/id`` for ``batch`` IDs or its ``--max-count`` if fewer. An answer
        holding an ID at or below its worker ID's floor is a replay (:meth:`Floors.raise_to`). A 400
        ``invalid_count`` (its ``--max-count`` went down since) asks ``/info`` again, once."""
        deadline = self.clock() + self.timeout
        for last_try in (False, True):
            info = server.info
            if info is None:
                answer = yield Request(server, "/info", deadline, ANSWER_SLACK_BYTES, self.timeout)
                assert answer is not None
                info = info_answer(*answer)
                server.learn(info)
                self.batch_cap = min(self.batch_cap, info.max_count)
            count = min(batch, info.max_count)
            answer = yield Request(server, f"/id?count={count}", deadline, answer_limit_bytes(count), self.timeout)
            assert answer is not None
            try:
                runs = ids_answer(*answer, count)
            except Failed as failure:
                if failure.code != "invalid_count" or last_try:
                    raise
                server.forget()
                continue
            server.floors.raise_to(runs)
            return runs
        raise AssertionError("unreachable")

    def _probe(self, server: Server, now: float) -> Steps:
        """``GET /readyz``: a 503 drops the server's buffered IDs (:meth:`failed`)."""
        try:
            answer = yield Request(server, "/readyz", now + self.timeout, ANSWER_SLACK_BYTES, self.timeout)
            assert answer is not None
            readiness_answer(*answer)
        except (Refused, Failed) as failure:
            self.failed(server, failure, self.clock())
        else:
            self.ready(server, self.clock())

    def plan(self, now: float) -> list[tuple[float, Server]]:
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

    def accepted(self, server: Server, runs: list[range], now: float) -> None:
        expires = now + self.max_age
        for run in runs:
            self.chunks.append(Chunk(server, run, expires))
            self.queued += len(run)
            server.queued += len(run)
            server.fetched += len(run)
        server.last_error, server.checked_at = None, now
        self.preferred = server.index
        self.retry_at = 0.0

    def failed(self, server: Server, failure: Refused | Failed, now: float) -> None:
        """Record ``failure``; a refusal also drops every ID buffered from ``server``."""
        server.last_error, server.checked_at = str(failure), now
        if isinstance(failure, Replayed):
            server.replays += 1
        if isinstance(failure, Refused):
            server.refusals += 1
            self.retry_after = min(self.retry_after or math.inf, failure.retry_after)
            self._discard_head(server)
            if server.queued:
                self.chunks = deque(c for c in self.chunks if c.server is not server)
                self.queued -= server.queued
                self._drop(server, server.queued)
                server.queued = 0

    def ready(self, server: Server, now: float) -> None:
        server.last_error, server.checked_at = None, now

    def round_failed(self, now: float) -> None:
        self.last_round = {s.url: s.last_error or "no answer" for s in self.servers}
        self.failed_rounds += 1
        self.asked = False  # callers waiting now get this failure; only a new caller starts another round
        self.retry_at = now + RETRY_COOLDOWN_S

    # -- callers waiting for IDs -----------------------------------------------------------------------

    @contextlib.contextmanager
    def waiting(self, n: int, now: float) -> Iterator[Wait]:
        """A caller waits for ``n`` IDs, at most ``max_wait`` from ``now``: its demand counts while it waits, and a
        refill round starts for it even during a cooldown (:meth:`next_step`). Pass the :class:`Wait` to
        :meth:`wait_left`."""
        self.demand += n
        self.asked = True
        try:
            yield Wait(n, self.failed_rounds, now + self.max_wait)
        finally:
            self.demand -= n

    def wait_left(self, wait: Wait, now: float) -> float | None:
        """None once the buffer holds ``wait.n`` IDs; else how long the caller may still wait for them. Raises
        :class:`~idgen.errors.AllServersFailed` once a round failed since the wait began (that round's failures) or
        its time ran out (each server's last failure); :class:`~idgen.errors.ClientClosed` once closed."""
        if self.level >= wait.n:
            return None
        self.check_open()
        if self.failed_rounds != wait.rounds:
            raise self._failure(f"no idgen server handed over {wait.n} ID(s)", wait.rounds)
        remaining = wait.deadline - now
        if remaining <= 0:
            raise self._failure(f"no idgen server handed over {wait.n} ID(s) within {self.max_wait:g} s", wait.rounds)
        return remaining

    def _failure(self, what: str, rounds: int) -> AllServersFailed:
        """The error for a caller that began waiting when ``rounds`` rounds had failed: that of the round that failed
        since, or (time ran out) each server's last failure."""
        if self.failed_rounds != rounds:
            failures = dict(self.last_round)
        else:
            failures = {s.url: s.last_error or "no answer yet" for s in self.servers}
        listed = "; ".join(f"{url}: {text}" for url, text in failures.items())
        return AllServersFailed(f"{what}: {listed}", failures, self.retry_after or 1.0)

    # -- the end ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Closed: no ID is handed out any more, the head's left ones count as discarded."""
        self.closed = True
        self._discard_head(self.head.server)

    def _discard_head(self, server: Server) -> None:
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
        self.expire(self.clock())
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


def count_ids(parts: list[Taken]) -> int:
    """How many IDs ``parts`` hold."""
    return sum(len(part.ids) for part in parts)


def ids_of(parts: list[Taken], form: str | None) -> list[int] | list[str]:
    """The IDs of ``parts`` in the order taken: ints, or strings in ``form``."""
    ids = parts[0].ids if len(parts) == 1 else [i for part in parts for i in part.ids]
    return ids if form is None else format_ids(ids, form)  # checked on arrival (ids_answer)
