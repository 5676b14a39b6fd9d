"""Steady load for the fault-injection suite, and the verdict on what it received.

:class:`LoadClient` runs a few threads that call ``GET /id`` (every ``batch_every``-th call ``GET /id?count=N``)
on the current targets, round robin, at a modest fixed total rate, and records every answer as a :class:`Record`:
when it was sent and answered, which thread and server, the status (0 when no HTTP answer came: refused, reset,
timed out), the error code, ``Retry-After`` and the IDs.

:func:`check` turns the records into a :class:`Report`: IDs checked, duplicates, IDs out of order within one worker
ID as seen by one client thread (each thread sends one request at a time, so what it receives from one worker ID
must strictly increase), errors by status and code, 503s without a valid ``Retry-After``, errors the scenario does
not allow, and the recovery time. :func:`render` prints reports as one Markdown table.
"""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from idgen import DEFAULT_LAYOUT, Layout


@dataclass(frozen=True)
class Target:
    """A server the load client calls: ``name`` labels its records."""

    name: str
    host: str
    port: int


@dataclass(frozen=True)
class Record:
    """One request and its outcome. ``status`` 0 means no HTTP answer; ``code`` then names the failure."""

    sent: float  # time.monotonic() when the request was sent
    done: float  # time.monotonic() when the answer (or the failure) came
    thread: int
    server: str
    status: int
    code: str  # the error's code from the JSON body, or the exception's class name; "" for 200
    retry_after: str | None
    ids: tuple[int, ...]

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def kind(self) -> str:
        """How the report counts this record, for example ``200``, ``503 fence_reached``, ``no answer (Timeout)``."""
        if self.status == 200:
            return "200"
        if self.status == 0:
            return f"no answer ({self.code})"
        return f"{self.status} {self.code}".strip()


class LoadClient:
    """``threads`` threads sharing ``rate`` requests per second over the targets (changeable while running)."""

    def __init__(
        self,
        targets: Iterable[Target] = (),
        *,
        threads: int = 2,
        rate: float = 300.0,
        batch_every: int = 10,
        batch_size: int = 5,
        timeout: float = 15.0,
    ) -> None:
        self.threads = threads
        self.interval = threads / rate
        self.batch_every = batch_every
        self.batch_size = batch_size
        self.timeout = timeout
        self._targets: list[Target] = list(targets)
        self._records: list[Record] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    # -- control ------------------------------------------------------------------------------------

    def start(self) -> LoadClient:
        for number in range(self.threads):
            worker = threading.Thread(target=self._run, args=(number,), name=f"load-{number}", daemon=True)
            self._workers.append(worker)
            worker.start()
        return self

    def stop(self) -> list[Record]:
        """Stop sending (requests in flight finish or time out) and return every record."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        for worker in self._workers:
            worker.join(self.timeout + 5)
        return self.records

    def add(self, target: Target) -> None:
        with self._changed:
            self._targets = [t for t in self._targets if t.name != target.name] + [target]
            self._changed.notify_all()

    def remove(self, name: str) -> None:
        with self._changed:
            self._targets = [t for t in self._targets if t.name != name]

    def request(self, target: Target, path: str = "/id") -> Record:
        """One request from the calling thread (as thread -1), recorded and checked like the load's own."""
        connections: dict[str, http.client.HTTPConnection] = {}
        try:
            record = self._request(-1, connections, target, path)
        finally:
            for connection in connections.values():
                connection.close()
        with self._changed:
            self._records.append(record)
            self._changed.notify_all()
        return record

    @property
    def records(self) -> list[Record]:
        with self._changed:
            return list(self._records)

    def wait_for(
        self, predicate: Callable[[Record], bool], count: int = 1, since: float | None = None, timeout: float = 30.0
    ) -> None:
        """Wait until ``count`` records answered after ``since`` (monotonic; default now) satisfy ``predicate``.
        Woken by each new record, which alone is examined: no polling, and no rescanning."""
        since = time.monotonic() if since is None else since
        deadline = time.monotonic() + timeout
        matched, index = 0, 0
        with self._changed:
            while True:
                for record in self._records[index:]:
                    if record.done >= since and predicate(record):
                        matched += 1
                index = len(self._records)
                if matched >= count:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    kinds = Counter(f"{r.server}: {r.kind}" for r in self._records[-100:])
                    raise AssertionError(
                        f"waited {timeout} s for {count} matching answers, saw {matched}; last answers: {dict(kinds)}"
                    )
                self._changed.wait(remaining)

    def wait_ok(self, server: str, count: int = 50, since: float | None = None, timeout: float = 30.0) -> None:
        """Wait until ``server`` has answered ``count`` requests with 200 after ``since`` (default now)."""
        self.wait_for(lambda r: r.server == server and r.ok, count, since, timeout)

    # -- the threads --------------------------------------------------------------------------------

    def _run(self, number: int) -> None:
        connections: dict[str, http.client.HTTPConnection] = {}
        calls = itertools.count()
        due = time.monotonic()
        try:
            while not self._stop.is_set():
                with self._changed:
                    self._changed.wait_for(lambda: self._targets or self._stop.is_set())
                    targets = list(self._targets)
                if self._stop.is_set():
                    break
                call = next(calls)
                target = targets[call % len(targets)]
                path = f"/id?count={self.batch_size}" if call % self.batch_every == self.batch_every - 1 else "/id"
                record = self._request(number, connections, target, path)
                with self._changed:
                    self._records.append(record)
                    self._changed.notify_all()
                for name in [n for n in connections if all(t.name != n for t in targets)]:
                    connections.pop(name).close()
                now = time.monotonic()
                due = max(due + self.interval, now - self.interval)  # never burst to catch up after a stall
                self._stop.wait(max(0.0, due - now))  # pacing, not synchronisation
        finally:
            for connection in connections.values():
                connection.close()

    def _request(
        self, number: int, connections: dict[str, http.client.HTTPConnection], target: Target, path: str
    ) -> Record:
        connection = connections.get(target.name)
        if connection is None:
            connection = connections[target.name] = http.client.HTTPConnection(
                target.host, target.port, timeout=self.timeout
            )
        sent = time.monotonic()
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            connections.pop(target.name).close()
            return Record(sent, time.monotonic(), number, target.name, 0, type(exc).__name__, None, ())
        done = time.monotonic()
        retry_after = response.getheader("Retry-After")
        try:
            data = json.loads(body)
        except ValueError:
            data = {}
        if response.status == 200:
            ids = tuple(int(i) for i in (data["ids"] if "ids" in data else [data["id"]]))
            return Record(sent, done, number, target.name, 200, "", retry_after, ids)
        code = data.get("error", {}).get("code", "") if isinstance(data, dict) else ""
        return Record(sent, done, number, target.name, response.status, code, retry_after, ())


# -- the verdict ------------------------------------------------------------------------------------------


@dataclass
class Report:
    """What one scenario's load saw. ``unexpected`` are errors the scenario does not allow."""

    scenario: str
    ids: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    without_retry_after: int = 0
    unexpected: list[Record] = field(default_factory=list)
    recovery_s: float | None = None
    recovery_from: str = ""
    notes: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Every broken promise: duplicates, disorder, 503s without Retry-After, errors not allowed, no IDs."""
        found = []
        if not self.ids:
            found.append("no IDs were received")
        if self.duplicates:
            found.append(f"{self.duplicates} duplicate IDs")
        if self.out_of_order:
            found.append(f"{self.out_of_order} IDs out of order within a worker ID")
        if self.without_retry_after:
            found.append(f"{self.without_retry_after} 503s without a valid Retry-After")
        if self.unexpected:
            kinds = Counter(f"{r.server}: {r.kind}" for r in self.unexpected)
            found.append(f"{len(self.unexpected)} errors the scenario does not allow: {dict(kinds)}")
        return found

    def assert_ok(self) -> None:
        problems = self.problems()
        assert not problems, f"{self.scenario}: " + "; ".join(problems)

    @property
    def recovery(self) -> str:
        if self.recovery_s is not None:
            return f"{self.recovery_s:.2f} s" + (f" {self.recovery_from}" if self.recovery_from else "")
        if self.recovery_from:
            return "not recovered"
        return "no outage" if not self.errors else "-"


def check(
    records: Sequence[Record],
    scenario: str,
    *,
    allow: Callable[[Record], bool] | None = None,
    recovery_since: float | None = None,
    recovery_servers: Iterable[str] | None = None,
    recovery_from: str = "",
    layout: Layout = DEFAULT_LAYOUT,
) -> Report:
    """The report on ``records``. ``allow`` says which errors the scenario permits (none by default; a 503 must
    also carry ``Retry-After``). With ``recovery_since`` (monotonic), the recovery time is measured from then to
    steady 200s from ``recovery_servers`` (all servers by default): see :func:`recovery_time`."""
    report = Report(scenario, recovery_from=recovery_from if recovery_since is not None else "")
    seen: set[int] = set()
    last: dict[tuple[int, int], int] = {}
    for record in sorted(records, key=lambda r: (r.thread, r.sent)):
        if not record.ok:
            report.errors[record.kind] += 1
            if record.status == 503 and not _valid_retry_after(record.retry_after):
                report.without_retry_after += 1
            if allow is None or not allow(record):
                report.unexpected.append(record)
            continue
        for id_ in record.ids:
            report.ids += 1
            if id_ in seen:
                report.duplicates += 1
            seen.add(id_)
            key = (record.thread, layout.split(id_)["worker"])
            if key in last and id_ <= last[key]:
                report.out_of_order += 1
            last[key] = id_
    if recovery_since is not None:
        report.recovery_s = recovery_time(records, recovery_since, recovery_servers)
    return report


def recovery_time(records: Sequence[Record], since: float, servers: Iterable[str] | None = None) -> float | None:
    """Seconds from ``since`` to the first 200 after which ``servers`` answered only 200s (to the end of the
    records); ``None`` if that never happened. With no error after ``since``, simply the first 200 after it."""
    wanted = set(servers) if servers is not None else None
    after = sorted((r for r in records if r.done >= since and (wanted is None or r.server in wanted)), key=_done)
    last_error = max((i for i, r in enumerate(after) if not r.ok), default=-1)
    steady = next((r for r in after[last_error + 1 :] if r.ok), None)
    return None if steady is None else steady.done - since


def _done(record: Record) -> float:
    return record.done


def _valid_retry_after(value: str | None) -> bool:
    return value is not None and value.isdigit() and int(value) >= 1


def ids_of(records: Iterable[Record], server: str | None = None, since: float | None = None) -> list[int]:
    """Every ID in ``records`` (of ``server``, answered after ``since``), in the order received."""
    return [
        id_
        for r in sorted(records, key=_done)
        if r.ok and (server is None or r.server == server) and (since is None or r.done >= since)
        for id_ in r.ids
    ]


def timestamps_ms(ids: Iterable[int], layout: Layout = DEFAULT_LAYOUT) -> list[int]:
    """The Unix ms timestamp of each ID's tick."""
    return [layout.tick_ms(layout.split(id_)["time"]) for id_ in ids]


def render(reports: Sequence[Report]) -> str:
    """The results table, in Markdown."""
    lines = [
        "| scenario | IDs checked | duplicates | out of order | errors by status | recovery |",
        "|---|---:|---:|---:|---|---|",
    ]
    for report in reports:
        errors = ", ".join(f"{kind}: {n}" for kind, n in sorted(report.errors.items())) or "none"
        if report.without_retry_after:
            errors += f" ({report.without_retry_after} without Retry-After)"
        lines.append(
            f"| {report.scenario} | {report.ids:,} | {report.duplicates} | {report.out_of_order} | {errors}"
            f" | {report.recovery} |"
        )
    notes = [f"- {report.scenario}: {note}" for report in reports for note in report.notes]
    return "\n".join(lines + (["", *notes] if notes else []))
