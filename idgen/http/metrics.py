"""The service's Prometheus metrics, and what keeps them current without slowing a request down.

- :class:`Metrics`: every metric, in one registry (or merged over processes in multiprocess mode);
- :class:`RouteTally`: one route's requests and latencies, tallied in plain numbers on the hot path and added in bulk;
- :class:`GeneratorCounters`: the generator's own counters carried into the metrics;
- :class:`CensusGauges`: the namespace gauges, from a census of the lease taken on a thread.

The service (:class:`idgen.http.service.Service`) flushes all of them every ``WATCH_INTERVAL_S`` and before each
``/metrics``.
"""

from __future__ import annotations

import logging
import math
import time
from bisect import bisect_left
from concurrent.futures import Executor
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.multiprocess import MultiProcessCollector

from idgen.generator import Generator
from idgen.leases.base import Census, Lease

log = logging.getLogger("idgen.http")

# The generator's counters carried into the metrics, each under the same attribute name on Metrics.
GENERATOR_COUNTERS = ("minted", "overflow_waits", "clock_rollbacks", "clock_rides", "worker_switches")
ID_LATENCY_SAMPLE = 16  # GET /id's quick path times one request in this many (Service.get_id_quick)
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

_PER_PROCESS: dict[str, Any] = {"multiprocess_mode": "liveall"}  # gauges: one series per live process (pid label)
_PER_SERVER: dict[str, Any] = {"multiprocess_mode": "livemostrecent"}  # gauges of what all processes share: one series


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
            "idgen_zk_insecure",
            "1 if the lease's coordinator (ZooKeeper or etcd) is used without credentials; named before etcd came.",
            registry=registry,
            **_PER_PROCESS,
        )
        self.quarantined = Gauge(
            "idgen_quarantined_worker_ids",
            "Worker IDs never claimed because their records cannot be read.",
            registry=registry,
            **_PER_PROCESS,
        )
        self.namespace_worker_ids = Gauge(
            "idgen_namespace_worker_ids",
            "Worker IDs of the lease's namespace (ZooKeeper namespace, state directory's range) by state: held by a"
            " live holder, free, or quarantined (as this server found them). From a census taken at most every"
            " --census-interval seconds.",
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
            MultiProcessCollector(self.exposition, path=multiprocess_dir)  # type: ignore[no-untyped-call]
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


class GeneratorCounters:
    """Carries the generator's counters (``GENERATOR_COUNTERS``) into the metrics of the same names, and logs each
    new clock rollback. Used from the event loop's thread only."""

    def __init__(self, metrics: Metrics, generator: Generator, tolerance_ms: int) -> None:
        self.metrics, self.generator, self.tolerance_ms = metrics, generator, tolerance_ms
        self._seen = {name: getattr(generator, name) for name in GENERATOR_COUNTERS}

    def carry(self, behind_ms: float | None = None) -> None:
        """Add what each counter gained since the last call; ``behind_ms`` is logged with a new rollback."""
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


class CensusGauges:
    """The namespace gauges (``idgen_namespace_worker_ids``, ``idgen_namespace_worker_id_capacity``), from the last
    census of the lease (:meth:`Lease.census`). A census is taken on a thread of ``executor`` when a refresh finds
    the last one ``interval_s`` old, and at once when this process's own worker ID changes; :meth:`refresh` never
    waits for it, so a slow coordinator delays only the census, never ``/metrics`` or the loop."""

    def __init__(self, metrics: Metrics, executor: Executor, interval_s: float) -> None:
        self.metrics, self.executor, self.interval_s = metrics, executor, interval_s
        self._census: Census | None = None  # the last census taken
        self._due = 0.0  # time.monotonic() when the next census is taken
        self._worker_id: int | None = None  # this process's worker ID when the census was last due
        self._running = False

    def refresh(self, lease: Lease, worker_id: int | None) -> None:
        """Set the gauges from the last census, and start the next one if it is due."""
        metrics, census = self.metrics, self._census
        if census is not None:
            metrics.namespace_capacity.set(census.capacity)
            for state in ("held", "free", "quarantined"):
                metrics.namespace_worker_ids.labels(state).set(getattr(census, state))
        if worker_id != self._worker_id:
            self._worker_id, self._due = worker_id, 0.0
        if self._running or time.monotonic() < self._due:
            return
        self._running, self._due = True, time.monotonic() + self.interval_s
        try:
            self.executor.submit(self._take, lease)
        except RuntimeError:  # shutting down
            self._running = False

    def _take(self, lease: Lease) -> None:
        """On a thread of ``executor``: the lease's census, kept for :meth:`refresh`."""
        try:
            self._census = lease.census()
        except Exception as exc:  # kept from the last census; the lease's own gauges and logs tell the outage
            log.debug("census failed: %s", exc, extra={"event": "census_failed"})
        finally:
            self._running = False
