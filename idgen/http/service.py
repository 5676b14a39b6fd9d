"""The HTTP service: an aiohttp application over one :class:`~idgen.generator.Generator` (:func:`make_app`).

Routes (all GET; the OpenAPI document in :mod:`idgen.http.openapi` describes each one):

- ``/id``: ``{"id": "..."}``; with ``?count=N`` ``{"ids": [...]}``, strictly increasing; ``?format=`` picks the
  string form; ``Accept: text/plain`` gives one ID per line. IDs are always strings in JSON. With ``?count=N``,
  an ``Accept`` naming ``application/vnd.idgen.runs+json`` gets the compact runs form (:mod:`idgen.runs`).
- ``/decode/{id}``: what an ID says (the shape of ``idgen decode --json``) plus ``node``, the lease holder that
  minted it, from the lease history (:mod:`idgen.http.tracing`); when that is null, ``node_reason`` says why no
  recorded holder minted it, or ``node_error`` why the history could not be read. ``?format=`` names the ID's string
  form (without it, a string that reads in two forms that both fit the layout is a 400 ``ambiguous_id``);
  ``?layout=`` decodes in another layout (a preset or a spec).
- ``/healthz``, ``/readyz``, ``/info``, ``/metrics`` (Prometheus, :mod:`idgen.http.metrics`), ``/openapi.json``,
  and ``/``, the ID inspector page (:mod:`idgen.http.inspector`).

``GET /id``, by name: the route's handler is :meth:`Service.get_id_quick`, which answers the common request (one
ID as JSON) from :attr:`Generator.next_id <idgen.generator.Generator.next_id>` itself; every other request goes
through :meth:`Service._endpoint`'s wrapper to :meth:`Service.get_id`, which reads the request
(:func:`~idgen.http.negotiation.id_request`), mints (:meth:`Service.mint`, ``Generator.batch``,
:meth:`Service._mint_chunk`, ``Generator.next_ids``), formats (:func:`~idgen.http.answers.id_answer`) and, for a
batch, sends within the ID budget (:mod:`idgen.http.budget`).

Invariants:

- every error is ``{"error": {"code", "message"}}`` (:func:`~idgen.http.responses.error_response`): 400 bad
  parameters (each an :class:`~idgen.errors.InvalidInput` with its code; a parameter given twice included), 404
  unknown route, 405 wrong method (with ``Allow``), 503 with an integer ``Retry-After`` of at least 1 for every
  :class:`~idgen.errors.Unavailable`. A 500 is only the last resort of :meth:`Service._endpoint` for a bug; no input
  is meant to reach it. What aiohttp answers itself is made JSON too (:mod:`idgen.http.connections`);
- every answer says ``Cache-Control: no-store``: IDs must never be replayed, and every other answer describes live
  state (``/decode``'s ``node`` changes as holders come and go) or is small enough not to be worth a cache;
- memory for batches is bounded by design (:mod:`idgen.http.budget`). A batch of at most ``FORMAT_SLICE`` IDs is
  minted, formatted and handed to the connection within one turn of the event loop, so what it holds is bounded by
  the connection cap;
- the event loop never blocks for longer than one time unit of the layout: the generator is told not to sleep on
  rollbacks (:meth:`Generator.stop_sleeping_on_rollbacks <idgen.generator.Generator.stop_sleeping_on_rollbacks>`),
  so a clock behind the last tick used raises :class:`~idgen.errors.ClockBehind` at once and the service *awaits*
  rollbacks of up to ``rollback_tolerance_ms``; batches larger than one tick's sequence are minted in chunks of at
  most one tick's IDs, so each chunk waits for at most one tick; they are formatted ``FORMAT_SLICE`` IDs at a time,
  the loop getting a turn in between (:func:`~idgen.http.answers.formatted`); multiprocess metric files are read on
  a thread pool;
- ``/metrics``, ``/healthz`` and ``/readyz`` never wait on the lease's coordinator (:mod:`idgen.http.tracing`, and
  the census of :class:`~idgen.http.metrics.CensusGauges` runs on a thread).

Errors are handled by wrapping each handler (:meth:`Service._endpoint`) and by a catch-all route for unknown paths
and methods, not by an aiohttp middleware: a middleware costs every request two more coroutine layers. The one
exception is :meth:`Service.get_id_quick`, for the request idgen exists for: on that path every step counts
(docs/BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from time import perf_counter

from aiohttp import hdrs, web
from aiohttp.web_urldispatcher import AbstractResource
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST

from idgen.config import CENSUS_INTERVAL_S
from idgen.errors import ClockBehind, InvalidInput, Unavailable
from idgen.generator import DEFAULT_ROLLBACK_TOLERANCE_MS, Generator
from idgen.http import inspector
from idgen.http.answers import FORMAT_SLICE, ID_HEADERS, NO_STORE, id_answer
from idgen.http.budget import BUDGET_WAIT_S, ID_BUDGET, IdBudget, send
from idgen.http.metrics import ID_LATENCY_SAMPLE, CensusGauges, GeneratorCounters, Metrics
from idgen.http.negotiation import JSON_TYPE, IdRequest, decode_request, id_request, shown
from idgen.http.openapi import document
from idgen.http.responses import error_response
from idgen.http.tracing import DEFAULT_TRACE_TIMEOUT_S, TraceLookups
from idgen.layout import iso_ms
from idgen.leases.base import Lease, LeaseState
from idgen.version import __version__

log = logging.getLogger("idgen.http")

DEFAULT_MAX_COUNT = 4096
WATCH_INTERVAL_S = 0.5  # readiness log events, lease gauges and batched counters are refreshed this often
_UNMATCHED = "(unmatched)"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Service:
    """The handlers and what they share: the generator, the limits and the metrics.

    Request counts and latencies are tallied in plain numbers on the hot path (:class:`~idgen.http.metrics.RouteTally`);
    they, and the generator's own counters (IDs minted, overflow waits, clock rollbacks), are added to the Prometheus
    metrics by :meth:`refresh` (every ``WATCH_INTERVAL_S`` and before each ``/metrics``), so with several processes
    another process's counts can be up to that much behind.
    """

    def __init__(
        self,
        generator: Generator,
        *,
        max_count: int,
        rollback_tolerance_ms: int,
        multiprocess_dir: str | None,
        trace_timeout_s: float,
        census_interval_s: float,
    ) -> None:
        if max_count < 1:
            raise ValueError(f"max_count must be at least 1, not {max_count}")
        self.generator = generator
        self.layout = generator.layout
        self.max_count = max_count
        self.tolerance_ms = rollback_tolerance_ms
        self.chunk = self.layout.sequence_capacity
        self.metrics = Metrics(multiprocess_dir)
        self.budget = IdBudget(max(ID_BUDGET, max_count), BUDGET_WAIT_S)
        self.openapi = json.dumps(document(max_count=max_count, layout=self.layout, version=__version__)).encode()
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="idgen-metrics-io")
        self._counters = GeneratorCounters(self.metrics, generator, rollback_tolerance_ms)
        self._census = CensusGauges(self.metrics, self._executor, census_interval_s)
        self._traces = TraceLookups(lambda: self.lease, trace_timeout_s)
        self._was_ready: bool | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._fallback_resource: AbstractResource | None = None

    @property
    def lease(self) -> Lease:
        """The generator's lease, read each time: in a forked child the generator adopts a lease of its own."""
        return self.generator.lease

    # -- GET /id ----------------------------------------------------------------------------------

    def _get_id_route(self) -> Handler:
        """``GET /id``'s route handler: :meth:`get_id_quick`, made as a closure here. The closure keeps what it reads
        on every request (the tally, ``Generator.next_id``, the wrapped :meth:`get_id`) in cell variables rather than
        attributes of ``self``, and answers the common request without :meth:`_endpoint`'s extra coroutine layer:
        on this path every step counts (docs/BENCHMARKS.md)."""
        get_id = self._endpoint("/id", self.get_id)
        tally = self.metrics.tally("/id")
        next_id = self.generator.next_id
        accept_header = hdrs.ACCEPT

        async def get_id_quick(request: web.Request) -> web.StreamResponse:
            """One ID as JSON (the target exactly ``/id``, no ``text/`` in ``Accept``) straight from
            ``Generator.next_id``. It is counted exactly, but only one such request in ``ID_LATENCY_SAMPLE`` is
            timed, its latency standing for that many: timing every one cost about 4% of the request's CPU, and
            this path never waits, so its latency hardly varies. Every other request, and any refusal from the
            generator, goes to the wrapped :meth:`get_id`, which waits a short rollback out or answers it."""
            if request.raw_path == "/id":
                accept = request.headers.get(accept_header)
                if accept is None or "text/" not in accept:
                    timed = not (tally.quick_ok + 1) % ID_LATENCY_SAMPLE
                    start = perf_counter() if timed else 0.0
                    try:
                        response = web.Response(body=b'{"id":"%d"}' % next_id(), headers=ID_HEADERS)
                    except Unavailable:
                        pass
                    else:
                        tally.quick_ok += 1
                        if timed:
                            tally.observe(perf_counter() - start, ID_LATENCY_SAMPLE)
                        return response
            return await get_id(request)

        return get_id_quick

    async def get_id(self, request: web.Request) -> web.StreamResponse:
        """Any ``GET /id``: read what it asks for, mint and answer. A batch of more than ``FORMAT_SLICE`` IDs holds
        its share of the ID budget until its answer is sent."""
        asked = id_request(request.query, request.headers.getall(hdrs.ACCEPT, []), self.max_count)
        if asked.n <= FORMAT_SLICE:  # minted, formatted and handed over in one turn of the event loop: no budget needed
            body, headers = await self._mint_answer(asked)
            return web.Response(body=body, headers=headers)
        async with self.budget.hold(asked.n):
            body, headers = await self._mint_answer(asked)
            return await send(request, body, headers)

    async def _mint_answer(self, asked: IdRequest) -> tuple[bytes, CIMultiDict[str]]:
        """The body and headers of ``asked.n`` new IDs."""
        return await id_answer(await self.mint(asked.n), asked)

    async def mint(self, n: int) -> list[int]:
        """``n`` strictly increasing IDs; raises :class:`Unavailable` (nothing is returned then)."""
        if n <= self.chunk:
            return await self._mint_chunk(n)
        batch = self.generator.batch(n)  # in order across a switch of worker IDs too: it restarts then
        for size in batch.chunk_sizes(self.chunk):
            batch.add(await self._mint_chunk(size))
            await asyncio.sleep(0)  # let other requests in between ticks' worth of IDs
        return batch.ids

    async def _mint_chunk(self, n: int) -> list[int]:
        """At most one tick's IDs from the generator, awaiting a clock rollback of up to ``tolerance_ms``."""
        generator = self.generator
        waited_ms = 0.0
        while True:
            try:
                return generator.next_ids(n) if n > 1 else [generator.next_id()]
            except ClockBehind as exc:
                self._counters.carry(exc.behind_ms)
                if exc.behind_ms > self.tolerance_ms or waited_ms > self.tolerance_ms:
                    raise
                waited_ms += exc.behind_ms
                await asyncio.sleep(exc.retry_after)

    # -- the other handlers -----------------------------------------------------------------------

    async def decode_id(self, request: web.Request) -> web.Response:
        layout, fields = decode_request(request.match_info["id"], request.query, self.layout)
        if layout == self.layout:
            fields.update(await self._traces.node_of(fields["worker"], fields["timestamp_ms"]))
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
        return web.Response(body=self.openapi, content_type=JSON_TYPE)

    async def fallback(self, request: web.Request) -> web.Response:
        """Every path and method no route takes: 405 (with ``Allow``) if another method would do, else 404."""
        allowed: set[str] = set()
        for resource in request.app.router.resources():
            if resource is not self._fallback_resource:
                allowed |= (await resource.resolve(request))[1]
        path = shown(request.path)
        if not allowed:
            return error_response(404, "not_found", f"no such route: {path}")
        message = f"{shown(request.method)} is not allowed on {path}; use GET"
        response = error_response(405, "method_not_allowed", message)
        response.headers["Allow"] = ",".join(sorted(allowed))
        return response

    # -- errors and accounting ---------------------------------------------------------------------

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
            except InvalidInput as exc:
                response = error_response(400, exc.code, str(exc))
            except web.HTTPException as exc:
                response = error_response(exc.status, "http_error", exc.reason)
            except Exception:
                log.exception(
                    "unexpected error on %s %s", request.method, request.path, extra={"event": "internal_error"}
                )
                response = error_response(500, "internal_error", "unexpected error; see the server log")
            response.headers.setdefault(hdrs.CACHE_CONTROL, NO_STORE)
            tally.add(response.status, perf_counter() - start)
            return response

        return endpoint

    # -- state ------------------------------------------------------------------------------------

    def refresh(self) -> tuple[bool, str | None]:
        """Readiness now, after bringing the metrics up to date; each change of readiness is logged."""
        ready, reason = self.generator.readiness(self.tolerance_ms)
        self._update_gauges(ready)
        self._flush_counters()
        self._log_readiness(ready, reason)
        return ready, reason

    def _update_gauges(self, ready: bool) -> None:
        """Set the gauges of the lease, the clock and readiness, and the namespace's from the last census."""
        metrics, lease = self.metrics, self.lease
        status = lease.status()
        for state in LeaseState:
            metrics.lease_state.labels(state.value).set(1 if state is status.state else 0)
        reservation = status.reservation
        metrics.worker_id.set(reservation.worker_id if reservation else -1)
        metrics.fence_headroom.set((reservation.fence_ms - time.time() * 1000) / 1000 if reservation else 0)
        metrics.clock_lead.set(self.generator.lead_ms / 1000)
        metrics.ready.set(1 if ready else 0)
        metrics.zk_insecure.set(1 if lease.insecure else 0)
        metrics.quarantined.set(len(lease.quarantined))
        metrics.time_bits_remaining.set(max(0.0, (self.layout.expires_ms - time.time() * 1000) / 1000))
        self._census.refresh(lease, reservation.worker_id if reservation else None)

    def _flush_counters(self) -> None:
        """Add the tallies of requests, latencies and refusals, and the generator's counters, to the metrics."""
        self.metrics.flush()
        self._counters.carry()

    def _log_readiness(self, ready: bool, reason: str | None) -> None:
        """Log ``ready`` or ``not_ready`` if readiness changed since the last call."""
        if ready == self._was_ready:
            return
        if ready:
            log.info("ready", extra={"event": "ready", "worker_id": self.generator.worker_id})
        else:
            log.warning("not ready: %s", reason, extra={"event": "not_ready", "reason": reason})
        self._was_ready = ready

    async def _watch(self) -> None:
        while True:
            self.refresh()
            await asyncio.sleep(WATCH_INTERVAL_S)

    async def _start(self, _app: web.Application) -> None:
        self._watcher = asyncio.create_task(self._watch(), name="idgen-readiness")

    async def _stop(self, _app: web.Application) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        self.refresh()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._traces.shutdown()

    def install(self, app: web.Application) -> None:
        """Route every path of ``app`` to its handler, and start and stop the readiness watch with it."""
        app.router.add_get("/id", self._get_id_route(), allow_head=False)  # HEAD /id would mint
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


def make_app(
    generator: Generator,
    *,
    max_count: int = DEFAULT_MAX_COUNT,
    rollback_tolerance_ms: int = DEFAULT_ROLLBACK_TOLERANCE_MS,
    multiprocess_dir: str | None = None,
    trace_timeout_s: float = DEFAULT_TRACE_TIMEOUT_S,
    census_interval_s: float = CENSUS_INTERVAL_S,
) -> web.Application:
    """The aiohttp application serving ``generator``.

    It takes over rollback waits: the generator stops sleeping on rollbacks
    (:meth:`~idgen.generator.Generator.stop_sleeping_on_rollbacks`) and the app awaits rollbacks of up to
    ``rollback_tolerance_ms``; further behind is a 503. ``multiprocess_dir`` turns on prometheus-client's
    multiprocess mode (see :class:`~idgen.http.metrics.Metrics`); the namespace gauges are counted again at most
    every ``census_interval_s``. The caller closes the generator.
    """
    generator.stop_sleeping_on_rollbacks()
    service = Service(
        generator,
        max_count=max_count,
        rollback_tolerance_ms=rollback_tolerance_ms,
        multiprocess_dir=multiprocess_dir,
        trace_timeout_s=trace_timeout_s,
        census_interval_s=census_interval_s,
    )
    app = web.Application()
    app[SERVICE] = service
    service.install(app)
    return app
