"""The HTTP service: an aiohttp application over one :class:`~idgen.generator.Generator`.

Routes (all GET; the OpenAPI document in :mod:`idgen.openapi` describes each one):

- ``/id``: ``{"id": "..."}``; with ``?count=N`` ``{"ids": [...]}``, strictly increasing; ``?format=`` picks the
  string form; ``Accept: text/plain`` gives one ID per line. IDs are always strings in JSON. With ``?count=N``,
  an ``Accept`` naming ``application/vnd.idgen.runs+json`` gets the compact runs form (:mod:`idgen.runs`).
- ``/decode/{id}``: what an ID says (the shape of ``idgen decode --json``) plus ``node``, the lease holder that
  minted it, from the lease history; when that is null, ``node_reason`` says why no recorded holder minted it, or
  ``node_error`` why the history could not be read. ``?format=`` names the ID's string form (without it, a string
  that reads in two forms is a 400 ``ambiguous_id``); ``?layout=`` decodes in another layout (a preset or a spec).
- ``/healthz``, ``/readyz``, ``/info``, ``/metrics`` (Prometheus), ``/openapi.json``.

Invariants:

- every error is ``{"error": {"code", "message"}}``: 400 bad parameters (a parameter given twice included), 404
  unknown route, 405 wrong method (with ``Allow``), 503 with an integer ``Retry-After`` of at least 1 for every
  :class:`~idgen.errors.Unavailable`. A 500 is only the last resort of :meth:`Service._endpoint` for a bug; no input
  is meant to reach it. What aiohttp answers itself is made JSON too (:mod:`idgen.connections`);
- every answer says ``Cache-Control: no-store``: IDs must never be replayed, and every other answer describes live
  state (``/decode``'s ``node`` changes as holders come and go) or is small enough not to be worth a cache;
- memory for batches is bounded by design: a batch of more than ``FORMAT_SLICE`` IDs holds its share of ``ID_BUDGET``
  (:class:`IdBudget`) from before it is minted until the client has taken all but the last 64 KiB of its answer
  (``SEND_TIMEOUT_S`` at most, else the connection is closed); beyond the budget, requests wait their turn for up to
  ``BUDGET_WAIT_S``, then get 503 ``busy``. A batch of at most ``FORMAT_SLICE`` IDs is minted, formatted and handed
  to the connection within one turn of the event loop, so what it holds is bounded by the connection cap;
- the event loop never blocks for longer than one time unit of the layout: the generator's own rollback tolerance
  is set to 0, so a clock behind the last tick used raises :class:`~idgen.errors.ClockBehind` at once and the app
  *awaits* rollbacks of up to ``rollback_tolerance_ms``; batches larger than one tick's sequence are minted in
  chunks of at most one tick's IDs, so each chunk waits for at most one tick; they are formatted ``FORMAT_SLICE``
  IDs at a time, the loop getting a turn in between (:func:`_formatted`); multiprocess metric files are read on a
  thread pool;
- ``/metrics``, ``/healthz`` and ``/readyz`` never wait on the lease's coordinator: lease history lookups (files or
  ZooKeeper) for ``/decode`` run on threads of their own, at most ``TRACE_LOOKUPS`` at once, each awaited for at
  most ``trace_timeout_s``; beyond that many, ``/decode`` answers at once with ``node`` null and ``node_error``,
  so a coordinator outage queues nothing.

Errors are handled by wrapping each handler (:meth:`Service._endpoint`) and by a catch-all route for unknown paths
and methods, not by an aiohttp middleware: a middleware costs every request two more coroutine layers. The one
exception is ``GET /id`` for a single JSON ID, the request idgen exists for: :meth:`Service._id_endpoint` answers it
before the wrapper, because on that path every step counts (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from time import perf_counter
from typing import Any

from aiohttp import hdrs, web
from aiohttp.web_urldispatcher import AbstractResource
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.multiprocess import MultiProcessCollector

from idgen import inspector
from idgen.connections import error_response
from idgen.encoding import FORMS, format_ids, parse_id
from idgen.errors import AmbiguousId, Busy, ClockBehind, InvalidInput, Unavailable
from idgen.generator import Generator
from idgen.layout import get_layout, iso_ms
from idgen.leases.base import Census, Lease, LeaseState
from idgen.openapi import document
from idgen.runs import RUNS_TYPE, runs_body
from idgen.version import __version__

log = logging.getLogger("idgen.http")

DEFAULT_MAX_COUNT = 4096
DEFAULT_ROLLBACK_TOLERANCE_MS = 5
DEFAULT_TRACE_TIMEOUT_S = 2.0
TRACE_LOOKUPS = 4  # lease history lookups at once, each on its own thread; /decode answers further ones at once
WATCH_INTERVAL_S = 0.5  # readiness log events, lease gauges and batched counters are refreshed this often
# The generator's counters carried into the metrics, each under the same attribute name on Metrics.
GENERATOR_COUNTERS = ("minted", "overflow_waits", "clock_rollbacks", "clock_rides", "worker_switches")
FORMAT_SLICE = 512  # IDs formatted per turn of the event loop: about 0.3 ms in base32 or base58 (bench/bench_format.py)
# IDs of batches being minted, formatted and sent at once, in a process: four of the largest (--max-count 65536).
# About 90 bytes each while held (the ints, the encoded answer, the connection's copy): 24 MB (docs/DEPLOY.md).
ID_BUDGET = 262_144
# A batch waits this long for its share of the budget, then gets 503 busy: below idgen's client timeout (2 s), so that
# a client gets an answer it can act on, not a timeout.
BUDGET_WAIT_S = 1.0
SEND_TIMEOUT_S = 10.0  # a client has this long to take a batch's answer, else its connection is closed
ID_LATENCY_SAMPLE = 16  # GET /id's fast path times one request in this many (Service._id_endpoint)
CENSUS_INTERVAL_S = 10.0  # the lease's census (the namespace gauges) is taken this often, on a thread (Service.refresh)
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

_JSON = "application/json"
_NO_STORE = "no-store"
_ID_HEADERS = CIMultiDict({"Content-Type": _JSON, "Cache-Control": "no-store"})
_RUNS_HEADERS = CIMultiDict({"Content-Type": RUNS_TYPE, "Cache-Control": "no-store"})
_TEXT_HEADERS = CIMultiDict({"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"})
_DIGITS = re.compile(r"-?[0-9]+")
_UNMATCHED = "(unmatched)"
_PER_PROCESS: dict[str, Any] = {"multiprocess_mode": "liveall"}  # gauges: one series per live process (pid label)
_PER_SERVER: dict[str, Any] = {"multiprocess_mode": "livemostrecent"}  # gauges of what all processes share: one series

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(Exception):
    """A request parameter is malformed; answered with 400 and ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Metrics:
    """The service's Prometheus metrics.

    With ``multiprocess_dir`` (prometheus-client's multiprocess mode, chosen by ``PROMETHEUS_MULTIPROC_DIR`` before
    ``prometheus_client`` is first imported) every process writes its values to files there and ``/metrics``
    merges all of them, so any process answers for the whole server. Gauges are per process (a ``pid`` label).
    """

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        if multiprocess_dir and not getattr(prometheus_values.ValueClass, "_multiprocess", False):
            raise RuntimeError(
                "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set, so its values are not shared"
            )
        self.registry = registry = CollectorRegistry()
        self.minted = Counter(
            "idgen_ids_minted", "IDs the generator handed out (all returned, unless a batch failed).", registry=registry
        )
        self.requests = Counter(
            "idgen_http_requests", "HTTP requests by route and status.", ["route", "status"], registry=registry
        )
        self.latency = Histogram(
            "idgen_http_request_duration_seconds",
            f"Time spent in the handler, by route. Single-ID GET /id requests are timed one in {ID_LATENCY_SAMPLE},"
            f" each standing for {ID_LATENCY_SAMPLE}.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.clock_rollbacks = Counter(
            "idgen_clock_rollbacks", "Times the clock was seen behind the last timestamp used.", registry=registry
        )
        self.overflow_waits = Counter(
            "idgen_overflow_waits",
            "Times a tick's sequence ran out and minting waited for the next.",
            registry=registry,
        )
        self.clock_rides = Counter(
            "idgen_clock_rides",
            "Times a clock step back was ridden through: IDs ran ahead of the clock, inside the reserved fence.",
            registry=registry,
        )
        self.worker_switches = Counter(
            "idgen_worker_id_switches",
            "Times the generator moved to another worker ID, its clock behind its fence by more than the max lead.",
            registry=registry,
        )
        self.clock_lead = Gauge(
            "idgen_clock_lead_seconds",
            "How far ahead of the clock IDs are stamped now: 0 unless riding a clock step.",
            registry=registry,
            **_PER_PROCESS,
        )
        self.lease_state = Gauge(
            "idgen_lease_state", "1 for the lease's current state.", ["state"], registry=registry, **_PER_PROCESS
        )
        self.worker_id = Gauge(
            "idgen_worker_id", "The leased worker ID, -1 if none.", registry=registry, **_PER_PROCESS
        )
        self.fence_headroom = Gauge(
            "idgen_fence_headroom_seconds",
            "How far the reserved fence is ahead of the clock (negative: past it; 0 without a lease).",
            registry=registry,
            **_PER_PROCESS,
        )
        self.ready = Gauge("idgen_ready", "1 while /readyz answers 200.", registry=registry, **_PER_PROCESS)
        self.zk_insecure = Gauge(
            "idgen_zk_insecure", "1 if ZooKeeper runs without credentials.", registry=registry, **_PER_PROCESS
        )
        self.quarantined = Gauge(
            "idgen_quarantined_worker_ids",
            "Worker IDs never claimed because their records cannot be read.",
            registry=registry,
            **_PER_PROCESS,
        )
        self.namespace_worker_ids = Gauge(
            "idgen_namespace_worker_ids",
            f"Worker IDs of the lease's namespace (ZooKeeper namespace, state directory's range) by state: held by a"
            f" live holder, free, or quarantined (as this server found them). From a census every"
            f" {CENSUS_INTERVAL_S:g} s.",
            ["state"],
            registry=registry,
            **_PER_SERVER,
        )
        self.namespace_capacity = Gauge(
            "idgen_namespace_worker_id_capacity",
            "Worker IDs the lease's namespace has in all.",
            registry=registry,
            **_PER_SERVER,
        )
        self.time_bits_remaining = Gauge(
            "idgen_time_bits_remaining_seconds",
            "Time left until the layout's time bits run out; after that no ID can be minted.",
            registry=registry,
            **_PER_SERVER,
        )
        self.refusals = Counter(
            "idgen_refusals", "Requests refused with 503, by reason (the error code).", ["reason"], registry=registry
        )
        self._refused: dict[str, int] = {}
        if multiprocess_dir:
            self.exposition = CollectorRegistry()
            MultiProcessCollector(self.exposition, path=multiprocess_dir)
        else:
            self.exposition = registry
        self.multiprocess = bool(multiprocess_dir)
        self._tallies: dict[str, RouteTally] = {}

    def tally(self, route: str) -> RouteTally:
        """The one :class:`RouteTally` of ``route``."""
        tally = self._tallies.get(route)
        if tally is None:
            tally = self._tallies[route] = RouteTally(self, route)
        return tally

    def flush(self) -> None:
        for tally in self._tallies.values():
            tally.flush()
        refused, self._refused = self._refused, {}
        for reason, count in refused.items():
            self.refusals.labels(reason).inc(count)

    def refused(self, reason: str) -> None:
        """One request refused with 503 for ``reason``; counted in plain numbers until :meth:`flush`."""
        self._refused[reason] = self._refused.get(reason, 0) + 1

    def render(self) -> bytes:
        return generate_latest(self.exposition)


class RouteTally:
    """One route's requests (by status) and latencies, tallied in plain numbers on the hot path and added to the
    Prometheus metrics in bulk by :meth:`flush`: ``Counter.inc`` and ``Histogram.observe`` take a lock each (and write
    a file in multiprocess mode), too much for every ``GET /id``. The bulk add of latencies uses the histogram child's
    bucket and sum values, which are private to prometheus-client; a version without them is detected here, and every
    latency then goes through ``observe`` instead. Used from the event loop's thread only.

    ``quick_ok`` is a plain count of 200s for a caller that counts its own requests (``GET /id``'s fast path); it only
    grows, and :meth:`flush` adds what it gained since the last flush.
    """

    __slots__ = ("buckets", "bulk", "histogram", "quick_flushed", "quick_ok", "requests", "route", "statuses", "sum")

    def __init__(self, metrics: Metrics, route: str) -> None:
        self.route = route
        self.requests = metrics.requests
        self.histogram = histogram = metrics.latency.labels(route)
        values, total = getattr(histogram, "_buckets", None), getattr(histogram, "_sum", None)
        self.bulk = (
            tuple(getattr(histogram, "_upper_bounds", ())) == (*LATENCY_BUCKETS, math.inf)
            and isinstance(values, list)
            and len(values) == len(LATENCY_BUCKETS) + 1
            and all(callable(getattr(v, "inc", None)) for v in (*values, total))
        )
        self.statuses: dict[int, int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0
        self.quick_ok = self.quick_flushed = 0

    def add(self, status: int, seconds: float) -> None:
        """One request answered with ``status`` after ``seconds``."""
        statuses = self.statuses
        statuses[status] = statuses.get(status, 0) + 1
        self.observe(seconds)

    def observe(self, seconds: float, weight: int = 1) -> None:
        """A latency of ``seconds``, standing for ``weight`` requests (one timed request of a sample)."""
        if self.bulk:
            self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += weight  # the first bucket with seconds <= le
            self.sum += seconds * weight
        else:
            for _ in range(weight):
                self.histogram.observe(seconds)

    def flush(self) -> None:
        statuses, self.statuses = self.statuses, {}
        quick, self.quick_flushed = self.quick_ok - self.quick_flushed, self.quick_ok
        if quick:
            statuses[200] = statuses.get(200, 0) + quick
        for status, count in statuses.items():
            self.requests.labels(self.route, str(status)).inc(count)
        if not self.bulk or not any(self.buckets):
            return
        buckets, self.buckets = self.buckets, [0] * len(self.buckets)
        total, self.sum = self.sum, 0.0
        self.histogram._sum.inc(total)
        for value, count in zip(self.histogram._buckets, buckets, strict=True):
            if count:
                value.inc(count)


class IdBudget:
    """At most ``capacity`` IDs held at once by the batches of a process (module docstring). A batch that does not
    fit waits its turn, first come first served, for at most ``wait_s``, then is refused with :class:`Busy`.
    Used from the event loop's thread only; a batch never asks for more than ``capacity``."""

    def __init__(self, capacity: int, wait_s: float) -> None:
        self.capacity, self.wait_s = capacity, wait_s
        self.free = capacity
        self._queue: deque[tuple[int, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
        await self._take(n)
        try:
            yield
        finally:
            self.free += n
            self._grant()

    async def _take(self, n: int) -> None:
        if not self._queue and self.free >= n:
            self.free -= n
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, turn)
        self._queue.append(entry)
        try:
            async with asyncio.timeout(self.wait_s):
                await turn
        except BaseException as exc:
            if turn.done() and not turn.cancelled():  # granted just as the wait ended: give it back
                self.free += n
            else:
                self._queue.remove(entry)
            self._grant()
            if isinstance(exc, TimeoutError):
                raise Busy(
                    f"{self.capacity} IDs are being formatted and sent already; retry shortly", retry_after=1
                ) from None
            raise

    def _grant(self) -> None:
        while self._queue and self._queue[0][0] <= self.free:
            n, turn = self._queue.popleft()
            self.free -= n
            turn.set_result(None)


class Service:
    """The handlers and what they share: the generator, the limits and the metrics.

    Request counts and latencies are tallied in plain numbers on the hot path (:class:`RouteTally`); they, and the
    generator's own counters (IDs minted, overflow waits, clock rollbacks), are added to the Prometheus metrics by
    :meth:`refresh` (every ``WATCH_INTERVAL_S`` and before each ``/metrics``), so with several processes another
    process's counts can be up to that much behind.
    """

    def __init__(
        self,
        generator: Generator,
        *,
        max_count: int,
        rollback_tolerance_ms: int,
        multiprocess_dir: str | None,
        trace_timeout_s: float,
    ) -> None:
        if max_count < 1:
            raise ValueError(f"max_count must be at least 1, not {max_count}")
        self.generator = generator
        self.layout = generator.layout
        self.max_count = max_count
        self.tolerance_ms = rollback_tolerance_ms
        self.chunk = self.layout.sequence_capacity
        self.trace_timeout_s = trace_timeout_s
        self.metrics = Metrics(multiprocess_dir)
        self.budget = IdBudget(max(ID_BUDGET, max_count), BUDGET_WAIT_S)
        self.openapi = json.dumps(document(max_count=max_count, layout=self.layout, version=__version__)).encode()
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="idgen-metrics-io")
        self._trace_executor = ThreadPoolExecutor(max_workers=TRACE_LOOKUPS, thread_name_prefix="idgen-trace")
        self._trace_slots = threading.BoundedSemaphore(TRACE_LOOKUPS)  # taken per lookup until its thread is done
        self._seen = {name: getattr(generator, name) for name in GENERATOR_COUNTERS}
        self._was_ready: bool | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._fallback_resource: AbstractResource | None = None
        self._census: Census | None = None  # the last census taken (Lease.census)
        self._census_due = 0.0  # time.monotonic() when the next census is taken
        self._census_worker_id: int | None = None  # this process's worker ID when the census was last due
        self._census_running = False

    @property
    def lease(self) -> Lease:
        """The generator's lease, read each time: in a forked child the generator adopts a lease of its own."""
        return self.generator.lease

    # -- minting ----------------------------------------------------------------------------------

    async def mint(self, n: int) -> list[int]:
        """``n`` strictly increasing IDs; raises :class:`Unavailable` (nothing is returned then)."""
        if n <= self.chunk:
            return await self._mint_chunk(n)
        while True:
            switches = self.generator.worker_switches
            ids: list[int] = []
            while len(ids) < n:
                ids += await self._mint_chunk(min(self.chunk, n - len(ids)))
                await asyncio.sleep(0)  # let other requests in between ticks' worth of IDs
            if self.generator.worker_switches == switches:
                return ids
            # a switch of worker IDs came between two chunks, so ``ids`` is out of order: never return it

    async def _mint_chunk(self, n: int) -> list[int]:
        generator = self.generator
        waited_ms = 0.0
        while True:
            try:
                return generator.next_ids(n) if n > 1 else [generator.next_id()]
            except ClockBehind as exc:
                self._sync_counters(exc.behind_ms)
                if exc.behind_ms > self.tolerance_ms or waited_ms > self.tolerance_ms:
                    raise
                waited_ms += exc.behind_ms
                await asyncio.sleep(exc.retry_after)

    def _sync_counters(self, behind_ms: float | None = None) -> None:
        """Carry the generator's counters into the metrics; log each new clock rollback."""
        for name, seen in self._seen.items():
            value = getattr(self.generator, name)
            if value > seen:
                getattr(self.metrics, name).inc(value - seen)
                self._seen[name] = value
                if name == "clock_rollbacks":
                    log.warning(
                        "clock rollback: the clock is behind the last timestamp used",
                        extra={"event": "clock_rollback", "behind_ms": behind_ms, "tolerance_ms": self.tolerance_ms},
                    )

    # -- handlers ---------------------------------------------------------------------------------

    async def get_id(self, request: web.Request) -> web.StreamResponse:
        accept = request.headers.get(hdrs.ACCEPT)
        as_text = accept is not None and "text/" in accept and _prefers_text(",".join(request.headers.getall("Accept")))
        count_text, form_text = _single(request, "count"), _single(request, "format")
        count = None if count_text is None else _parse_count(count_text, self.max_count)
        form = "decimal" if form_text is None else _parse_form(form_text)
        runs = count is not None and accept is not None and _accepts_runs(",".join(request.headers.getall("Accept")))
        if runs and form != "decimal":
            raise BadRequest("invalid_format", f"the runs form ({RUNS_TYPE}) carries decimal IDs only")
        n = count or 1
        if n <= FORMAT_SLICE:  # minted, formatted and handed over in one turn of the event loop: no budget needed
            body, headers = await self._answer(n, count is None, form, as_text, runs)
            return web.Response(body=body, headers=headers)
        async with self.budget.hold(n):
            body, headers = await self._answer(n, False, form, as_text, runs)
            return await _send(request, body, headers)

    async def _answer(
        self, n: int, single: bool, form: str, as_text: bool, runs: bool
    ) -> tuple[bytes, CIMultiDict[str]]:
        """The body and headers of ``n`` new IDs: ``{"id"}`` if ``single``, else ``{"ids"}``, one per line, or runs."""
        ids = await self.mint(n)
        if runs:
            return runs_body(ids), _RUNS_HEADERS
        if as_text:
            return await _formatted(ids, form, b"", b"\n", b"\n"), _TEXT_HEADERS
        # Every form is made of ASCII letters and digits only, so no JSON escaping is needed.
        if single:
            return await _formatted(ids, form, b'{"id":"', b"", b'"}'), _ID_HEADERS
        return await _formatted(ids, form, b'{"ids":["', b'","', b'"]}'), _ID_HEADERS

    async def decode_id(self, request: web.Request) -> web.Response:
        form = _single(request, "format")
        if form is not None:
            form = _parse_form(form)
        try:
            layout = get_layout(request.query.get("layout", self.layout))
        except InvalidInput as exc:
            raise BadRequest("invalid_layout", str(exc)) from None
        try:
            fields: dict[str, Any] = layout.decode(parse_id(request.match_info["id"], form))  # fits the layout?
        except InvalidInput as exc:  # AmbiguousId's code is ambiguous_id
            raise BadRequest(exc.code if isinstance(exc, AmbiguousId) else "invalid_id", str(exc)) from None
        if layout == self.layout:
            fields.update(await self._trace(fields["worker"], fields["timestamp_ms"]))
        else:  # this server's lease history is of its own layout's worker IDs
            why = f"decoded in layout {layout.name}, not this server's ({self.layout.name}): not minted here"
            fields.update(node=None, node_reason={"code": "other_layout", "message": why})
        return web.json_response(fields)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        ready, reason = self.refresh()
        if ready:
            return web.json_response({"status": "ready"})
        return error_response(503, "not_ready", reason or "not ready", retry_after=1)

    async def info(self, request: web.Request) -> web.Response:
        ready, reason = self.generator.readiness(self.tolerance_ms)
        status = self.lease.status()
        fence_ms = status.reservation.fence_ms if status.reservation else None
        return web.json_response(
            {
                "version": __version__,
                "pid": os.getpid(),
                "ready": ready,
                "reason": reason,
                "worker_id": self.generator.worker_id,
                "fence_ms": fence_ms,
                "fence": iso_ms(fence_ms) if fence_ms is not None else None,
                "time_bits_run_out": iso_ms(self.layout.expires_ms),
                "layout": self.layout.describe(),
                "lease": self.lease.describe(),
                "max_count": self.max_count,
                "rollback_tolerance_ms": self.tolerance_ms,
                "max_lead_ms": self.generator.max_lead_ms,
                "clock_lead_ms": self.generator.lead_ms,
                "clock_lead_max_ms": self.generator.lead_max_ms,
                "clock_rollbacks": self.generator.clock_rollbacks,
                "clock_rides": self.generator.clock_rides,
                "worker_id_switches": self.generator.worker_switches,
                "overflow_waits": self.generator.overflow_waits,
            }
        )

    async def metrics_text(self, request: web.Request) -> web.Response:
        self.refresh()
        if self.metrics.multiprocess:  # reads every process's files
            body = await asyncio.get_running_loop().run_in_executor(self._executor, self.metrics.render)
        else:
            body = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi_json(self, request: web.Request) -> web.Response:
        return web.Response(body=self.openapi, content_type=_JSON)

    async def fallback(self, request: web.Request) -> web.Response:
        """Every path and method no route takes: 405 (with ``Allow``) if another method would do, else 404."""
        allowed: set[str] = set()
        for resource in request.app.router.resources():
            if resource is not self._fallback_resource:
                allowed |= (await resource.resolve(request))[1]
        path = _shown(request.path)
        if not allowed:
            return error_response(404, "not_found", f"no such route: {path}")
        message = f"{_shown(request.method)} is not allowed on {path}; use GET"
        response = error_response(405, "method_not_allowed", message)
        response.headers["Allow"] = ",".join(sorted(allowed))
        return response

    # -- errors and accounting ---------------------------------------------------------------------

    def _id_endpoint(self) -> Handler:
        """``GET /id``. The common request, one ID as JSON (the target exactly ``/id``, no ``text/`` in ``Accept``),
        is answered here, without :meth:`_endpoint`'s extra coroutine layer. It is counted exactly, but only one such
        request in ``ID_LATENCY_SAMPLE`` is timed, its latency standing for that many: timing every one cost about 4%
        of the request's CPU, and this path never waits, so its latency hardly varies (docs/BENCHMARKS.md). Every
        other request, and any refusal from the generator, goes to the wrapped :meth:`get_id`, which waits a short
        rollback out or answers it."""
        general = self._endpoint("/id", self.get_id)
        tally = self.metrics.tally("/id")
        next_id = self.generator.next_id
        accept_header = hdrs.ACCEPT

        async def id_endpoint(request: web.Request) -> web.StreamResponse:
            if request.raw_path == "/id":
                accept = request.headers.get(accept_header)
                if accept is None or "text/" not in accept:
                    timed = not (tally.quick_ok + 1) % ID_LATENCY_SAMPLE
                    start = perf_counter() if timed else 0.0
                    try:
                        response = web.Response(body=b'{"id":"%d"}' % next_id(), headers=_ID_HEADERS)
                    except Unavailable:
                        pass
                    else:
                        tally.quick_ok += 1
                        if timed:
                            tally.observe(perf_counter() - start, ID_LATENCY_SAMPLE)
                        return response
            return await general(request)

        return id_endpoint

    def _endpoint(self, route: str, handler: Handler) -> Handler:
        """``handler`` with errors turned into JSON responses, and its requests counted and timed as ``route``."""
        tally = self.metrics.tally(route)

        async def endpoint(request: web.Request) -> web.StreamResponse:
            start = perf_counter()
            try:
                response = await handler(request)
            except Unavailable as exc:
                response = error_response(503, exc.code, str(exc), retry_after=exc.retry_after)
                self.metrics.refused(exc.code)
            except BadRequest as exc:
                response = error_response(400, exc.code, str(exc))
            except InvalidInput as exc:
                response = error_response(400, exc.code, str(exc))
            except web.HTTPException as exc:
                response = error_response(exc.status, "http_error", exc.reason)
            except Exception:
                log.exception(
                    "unexpected error on %s %s", request.method, request.path, extra={"event": "internal_error"}
                )
                response = error_response(500, "internal_error", "unexpected error; see the server log")
            response.headers.setdefault(hdrs.CACHE_CONTROL, _NO_STORE)
            tally.add(response.status, perf_counter() - start)
            return response

        return endpoint

    # -- state ------------------------------------------------------------------------------------

    def refresh(self) -> tuple[bool, str | None]:
        """Readiness now. Also flushes the tallies into the metrics, updates the lease gauges and logs each change
        of readiness."""
        ready, reason = self.generator.readiness(self.tolerance_ms)
        status = self.lease.status()
        metrics = self.metrics
        for state in LeaseState:
            metrics.lease_state.labels(state.value).set(1 if state is status.state else 0)
        reservation = status.reservation
        metrics.worker_id.set(reservation.worker_id if reservation else -1)
        metrics.fence_headroom.set((reservation.fence_ms - time.time() * 1000) / 1000 if reservation else 0)
        metrics.clock_lead.set(self.generator.lead_ms / 1000)
        metrics.ready.set(1 if ready else 0)
        metrics.zk_insecure.set(1 if self.lease.insecure else 0)
        metrics.quarantined.set(len(self.lease.quarantined))
        self._refresh_census(reservation.worker_id if reservation else None)
        metrics.flush()
        self._sync_counters()
        if ready != self._was_ready:
            if ready:
                log.info("ready", extra={"event": "ready", "worker_id": self.generator.worker_id})
            else:
                log.warning("not ready: %s", reason, extra={"event": "not_ready", "reason": reason})
            self._was_ready = ready
        return ready, reason

    def _refresh_census(self, worker_id: int | None) -> None:
        """Set the namespace gauges from the last census, and start the next one on a thread if it is due (every
        ``CENSUS_INTERVAL_S``, and at once when this process's own worker ID changes). Never waits for it: a slow
        coordinator delays only the census, never ``/metrics`` or the loop."""
        metrics, census = self.metrics, self._census
        metrics.time_bits_remaining.set(max(0.0, (self.layout.expires_ms - time.time() * 1000) / 1000))
        if census is not None:
            metrics.namespace_capacity.set(census.capacity)
            for state in ("held", "free", "quarantined"):
                metrics.namespace_worker_ids.labels(state).set(getattr(census, state))
        if worker_id != self._census_worker_id:
            self._census_worker_id, self._census_due = worker_id, 0.0
        if self._census_running or time.monotonic() < self._census_due:
            return
        self._census_running, self._census_due = True, time.monotonic() + CENSUS_INTERVAL_S
        try:
            self._executor.submit(self._take_census, self.lease)
        except RuntimeError:  # shutting down
            self._census_running = False

    def _take_census(self, lease: Lease) -> None:
        """On a thread of ``_executor``: the lease's census, kept for :meth:`_refresh_census`."""
        try:
            self._census = lease.census()
        except Exception as exc:  # kept from the last census; the lease's own gauges and logs tell the outage
            log.debug("census failed: %s", exc, extra={"event": "census_failed"})
        finally:
            self._census_running = False

    async def _watch(self) -> None:
        while True:
            self.refresh()
            await asyncio.sleep(WATCH_INTERVAL_S)

    async def _trace(self, worker_id: int, unix_ms: int) -> dict[str, Any]:
        """The ``node`` fields of an ID, looked up off the event loop (:meth:`Traced.to_json`); if the lease history
        cannot be read, ``node`` is null and ``node_error`` says why. A lookup holds one of ``TRACE_LOOKUPS`` slots
        until its thread returns, even after this request gave up on it, so stuck lookups never pile up."""
        if not self._trace_slots.acquire(blocking=False):
            return {
                "node": None,
                "node_error": f"the lease history is busy: {TRACE_LOOKUPS} lookups are still waiting on it",
            }
        try:
            future = self._trace_executor.submit(self.lease.trace, worker_id, unix_ms)
        except BaseException:
            self._trace_slots.release()
            raise
        future.add_done_callback(lambda _: self._trace_slots.release())
        try:
            traced = await asyncio.wait_for(asyncio.wrap_future(future), self.trace_timeout_s)
        except TimeoutError:
            return {"node": None, "node_error": f"the lease history did not answer within {self.trace_timeout_s:g} s"}
        except Exception as exc:
            log.warning("lease history lookup failed: %s", exc, extra={"event": "trace_failed"})
            why = " ".join(str(exc).split()) or type(exc).__name__
            return {"node": None, "node_error": f"the lease history could not be read: {why}"}
        return traced.to_json()

    async def _start(self, _app: web.Application) -> None:
        self._watcher = asyncio.create_task(self._watch(), name="idgen-readiness")

    async def _stop(self, _app: web.Application) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        self.refresh()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._trace_executor.shutdown(wait=False, cancel_futures=True)

    def install(self, app: web.Application) -> None:
        app.router.add_get("/id", self._id_endpoint(), allow_head=False)  # HEAD /id would mint
        for path, handler in (
            ("/decode/{id}", self.decode_id),
            ("/healthz", self.healthz),
            ("/readyz", self.readyz),
            ("/info", self.info),
            ("/metrics", self.metrics_text),
            ("/openapi.json", self.openapi_json),
        ):
            app.router.add_get(path, self._endpoint(path, handler), allow_head=False)
        # GET /: the ID inspector page; before the catch-all, which would take it
        app.router.add_get("/", self._endpoint("/", inspector.serve), allow_head=False)
        fallback = app.router.add_route("*", "/{path:.*}", self._endpoint(_UNMATCHED, self.fallback))
        self._fallback_resource = fallback.resource
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)


SERVICE = web.AppKey("idgen_service", Service)


# -- parameters and errors --------------------------------------------------------------------------------------


async def _formatted(ids: list[int], form: str, head: bytes, separator: bytes, tail: bytes) -> bytes:
    """``head``, ``ids`` in ``form`` separated by ``separator``, ``tail``: an answer's body. More than
    ``FORMAT_SLICE`` IDs are formatted a slice at a time, with a turn of the event loop before each slice (the first
    one too: minting came just before), and each slice's strings are encoded and dropped at once. 4096 IDs in base58
    take about 2.5 ms to format, longer than the one time unit the loop may be held (module docstring)."""
    between = separator.decode()
    if len(ids) <= FORMAT_SLICE:
        return head + between.join(format_ids(ids, form)).encode() + tail
    slices: list[bytes] = []
    for start in range(0, len(ids), FORMAT_SLICE):
        await asyncio.sleep(0)
        slices.append(between.join(format_ids(ids[start : start + FORMAT_SLICE], form)).encode())
    return head + separator.join(slices) + tail


async def _send(request: web.Request, body: bytes, headers: CIMultiDict[str]) -> web.StreamResponse:
    """``body`` written to the client, returned once all but the connection's last 64 KiB are taken (aiohttp waits
    for the transport to drain past that). A client that takes longer than ``SEND_TIMEOUT_S`` is disconnected."""
    response = web.StreamResponse(headers=headers)
    response.content_length = len(body)
    try:
        async with asyncio.timeout(SEND_TIMEOUT_S):
            await response.prepare(request)
            await response.write(body)
    except TimeoutError:
        log.warning(
            "a client took more than %g s to read %d bytes: disconnected",
            SEND_TIMEOUT_S,
            len(body),
            extra={"event": "send_timeout", "remote": request.remote},
        )
        if request.transport is not None:
            request.transport.abort()
    return response


def _single(request: web.Request, name: str) -> str | None:
    """The query parameter ``name``, None if absent; a 400 if it is given more than once, since which one counts
    would be a guess (``count=2&count=x``)."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise BadRequest("repeated_parameter", f"{name} is given {len(values)} times; give it once")
    return values[0] if values else None


def _parse_count(text: str, max_count: int) -> int:
    if not _DIGITS.fullmatch(text):
        raise BadRequest("invalid_count", f"count {_shown(text)} is not a whole number")
    value = int(text) if len(text) <= 20 else (-math.inf if text[0] == "-" else math.inf)
    if not 1 <= value <= max_count:
        raise BadRequest("invalid_count", f"count must be between 1 and {max_count}, not {_shown(text)}")
    return int(value)


def _parse_form(text: str) -> str:
    if text not in FORMS:
        raise BadRequest("invalid_format", f"format {_shown(text)} is not one of {', '.join(FORMS)}")
    return text


def _accepts_runs(accept: str) -> bool:
    """Whether ``Accept`` names the runs form with a quality above 0."""
    for part in accept.split(","):
        media, *params = part.split(";")
        if media.strip().lower() == RUNS_TYPE:
            return all(_quality(p) != 0.0 for p in params)
    return False


def _quality(param: str) -> float | None:
    """The value of a ``q=`` parameter (0 when malformed or out of range), None for any other parameter."""
    key, _, value = param.partition("=")
    if key.strip().lower() != "q":
        return None
    try:
        quality = float(value)
    except ValueError:
        return 0.0
    return quality if 0.0 <= quality <= 1.0 else 0.0  # also NaN


def _prefers_text(accept: str) -> bool:
    """Whether ``Accept`` ranks ``text/plain`` above ``application/json``: by quality, then by how specifically
    each is named (``text/plain`` > ``text/*`` > ``*/*``). A tie, or neither, means JSON."""
    best = {"text": (-1, 0.0), "json": (-1, 0.0)}  # (specificity, quality) of the most specific matching range
    for part in accept.split(","):
        media, *params = part.split(";")
        media = media.strip().lower()
        quality = 1.0
        for param in params:
            given = _quality(param)
            if given is not None:
                quality = given
        for kind, full, family in (("text", "text/plain", "text/*"), ("json", _JSON, "application/*")):
            specificity = 2 if media == full else 1 if media == family else 0 if media == "*/*" else -1
            if specificity > best[kind][0]:
                best[kind] = (specificity, quality)
    (text_specificity, text_quality), (json_specificity, json_quality) = best["text"], best["json"]
    if text_specificity < 0 or text_quality <= 0:
        return False
    if json_specificity < 0 or json_quality <= 0:
        return True
    return text_quality > json_quality or (text_quality == json_quality and text_specificity > json_specificity)


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


# -- the application --------------------------------------------------------------------------------


def make_app(
    generator: Generator,
    *,
    max_count: int = DEFAULT_MAX_COUNT,
    rollback_tolerance_ms: int = DEFAULT_ROLLBACK_TOLERANCE_MS,
    multiprocess_dir: str | None = None,
    trace_timeout_s: float = DEFAULT_TRACE_TIMEOUT_S,
) -> web.Application:
    """The aiohttp application serving ``generator``.

    It takes over rollback waits: the generator's own tolerance is set to 0 (so it never sleeps on a rollback)
    and the app awaits rollbacks of up to ``rollback_tolerance_ms``; further behind is a 503. ``multiprocess_dir``
    turns on prometheus-client's multiprocess mode (see :class:`Metrics`). The caller closes the generator.
    """
    generator.rollback_tolerance_ns = 0
    service = Service(
        generator,
        max_count=max_count,
        rollback_tolerance_ms=rollback_tolerance_ms,
        multiprocess_dir=multiprocess_dir,
        trace_timeout_s=trace_timeout_s,
    )
    app = web.Application()
    app[SERVICE] = service
    service.install(app)
    return app
