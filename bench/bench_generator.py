"""Benchmark of the embedded generator (issue 2, "Speed"), measured in one run on one machine.

Measures, interleaved over several rounds of a fixed duration each, and reports the median and the best:

1. ``time.time_ns()`` alone: the floor of any time-based generator;
2. ``Generator.next_id()`` (``idgen`` layout, a LocalLease in a temporary state directory);
3. the locked baseline: :class:`LockedBaseline`, a plain 41/10/12 snowflake that takes a ``threading.Lock`` per call;
4. the PyPI peers ``snowflake-id`` (returns ``None`` on overflow: only non-None values count) and
   ``sonyflake-turbo`` with one machine ID (its layout allows 256 IDs per 10 ms);
5. ``Generator.next_ids(4096)``;
6. 4 threads sharing one generator, 500k ``next_id()`` each, checked for duplicates and per-thread order: on the
   ``idgen`` layout, and on the ``instagram`` layout (1,024 IDs per ms) where the sequence overflows every ms.

Run ``python bench/bench_generator.py --markdown`` (needs the ``bench`` extra). Exits 1 if any duplicate or
out-of-order ID is found. The machine is shared, so compare the paired ratios rather than absolute figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import itertools
import operator
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

import snowflake
import sonyflake_turbo
from timing import per_batch, per_call

from idgen import Generator, Layout, get_layout
from idgen.leases.local import LocalLease

LAYOUT = get_layout("idgen")
LIMIT = LAYOUT.sequence_capacity * 1000 // LAYOUT.unit_ms  # 4,096 per ms = 4.096M IDs/s
SONYFLAKE_LIMIT = 256 * 100  # 8-bit sequence per 10 ms unit, per machine ID
BATCH_N = 4_096
THREADS = 4
IDS_PER_THREAD = 500_000
TARGET_NEXT_ID = 0.90  # of LIMIT
TARGET_VS_BASELINE = 1.8
TARGET_NEXT_IDS = 0.95  # of LIMIT


class LockedBaseline:
    """The locked baseline: a plain 41/10/12 snowflake, one ``threading.Lock`` and one ``time.time_ns()`` per call."""

    def __init__(self, worker_id: int, epoch_ms: int) -> None:
        self._lock = threading.Lock()
        self._node = worker_id << 12
        self._epoch_ms = epoch_ms
        self._last_ms = -1
        self._seq = 0

    def next_id(self) -> int:
        with self._lock:
            now_ms = time.time_ns() // 1_000_000
            if now_ms < self._last_ms:
                raise RuntimeError(f"clock moved back {self._last_ms - now_ms} ms")
            if now_ms == self._last_ms:
                self._seq = (self._seq + 1) & 0xFFF
                if self._seq == 0:  # 4,096 IDs in this ms already: wait for the next one
                    while now_ms <= self._last_ms:
                        now_ms = time.time_ns() // 1_000_000
            else:
                self._seq = 0
            self._last_ms = now_ms
            return (now_ms - self._epoch_ms) << 22 | self._node | self._seq


# -- measuring ------------------------------------------------------------------------------------


@dataclass
class Candidate:
    name: str
    run: Callable[[float], tuple[int, int, float]]  # seconds -> (IDs, Nones, elapsed s)
    limit: int | None  # its layout's own limit, IDs/s
    note: str = ""
    rates: list[float] = field(default_factory=list)
    nones: list[float] = field(default_factory=list)  # share of calls that returned None
    overflows: Callable[[], int] | None = None  # the generator's overflow_waits counter, if it has one
    waits: list[int] = field(default_factory=list)  # overflow waits per run

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    @property
    def best(self) -> float:
        return max(self.rates)


@dataclass
class ThreadResult:
    rate: float
    overflow_waits: int
    duplicates: int
    out_of_order: int


def threaded(next_id: Callable[[], int], overflows: Callable[[], int]) -> ThreadResult:
    """``THREADS`` threads share ``next_id``, ``IDS_PER_THREAD`` each; then check uniqueness and per-thread order."""
    results: list[list[int]] = [[] for _ in range(THREADS)]
    barrier = threading.Barrier(THREADS + 1)

    def work(i: int) -> None:
        barrier.wait()
        results[i] = [next_id() for _ in itertools.repeat(None, IDS_PER_THREAD)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    waits_before = overflows()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    total = sum(len(ids) for ids in results)
    out_of_order = sum(sum(map(operator.ge, ids, ids[1:])) for ids in results)
    duplicates = total - len(set(itertools.chain.from_iterable(results)))
    return ThreadResult(total / elapsed, overflows() - waits_before, duplicates, out_of_order)


@contextmanager
def local_generator(layout: Layout) -> Iterator[Generator]:
    with (
        tempfile.TemporaryDirectory(prefix="idgen-bench-") as state_dir,
        Generator(layout, LocalLease(layout, state_dir=state_dir)) as gen,
    ):
        yield gen


# -- reporting ------------------------------------------------------------------------------------


def fmt_rate(rate: float) -> str:
    return f"{rate / 1e6:.2f}M" if rate >= 1e6 else f"{rate / 1e3:.1f}k"


def pct(rate: float, limit: int | None) -> str:
    return f"{100 * rate / limit:.1f}%" if limit else "-"


def table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows])


def pkg(name: str) -> str:
    try:
        return f"{name} {version(name)}"
    except PackageNotFoundError:
        return f"{name} (not installed)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of one measurement (default 2)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--markdown", action="store_true", help="also print the results as markdown for docs")
    args = parser.parse_args()

    load_before = os.getloadavg()
    started = dt.datetime.now(dt.UTC)
    with local_generator(LAYOUT) as gen, local_generator(get_layout("instagram")) as gen_overflow:
        baseline = LockedBaseline(worker_id=1, epoch_ms=LAYOUT.epoch_ms)
        peer = snowflake.SnowflakeGenerator(1, epoch=LAYOUT.epoch_ms)
        sony = sonyflake_turbo.SonyFlake(1)
        floor = Candidate("time.time_ns() alone (floor)", per_call(time.time_ns), None, "C; no ID")

        def gen_waits() -> int:
            return gen.overflow_waits

        next_id = Candidate("idgen next_id()", per_call(gen.next_id), LIMIT, "", overflows=gen_waits)
        locked = Candidate("locked baseline (Lock per call)", per_call(baseline.next_id), LIMIT, "pure Python")
        peer_c = Candidate("snowflake-id 1 instance", per_call(peer.__next__), LIMIT, "pure, no lock, None on overflow")
        sony_c = Candidate(
            "sonyflake-turbo 1 machine ID", per_call(sony.__next__), SONYFLAKE_LIMIT, "C; limit 256 per 10 ms"
        )
        batch = Candidate(
            f"idgen next_ids({BATCH_N})", per_batch(gen.next_ids, BATCH_N), LIMIT, "", overflows=gen_waits
        )
        candidates = [floor, next_id, locked, peer_c, sony_c, batch]
        for r in range(args.rounds):
            order = candidates[r % len(candidates) :] + candidates[: r % len(candidates)]  # rotate the order
            for c in order:
                gc.collect()
                waits = c.overflows() if c.overflows else 0
                ids, nones, elapsed = c.run(args.seconds)
                c.waits.append((c.overflows() - waits) if c.overflows else 0)
                c.rates.append(ids / elapsed)
                c.nones.append(nones / (ids + nones))
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{c.name} {fmt_rate(c.rates[-1])}" for c in order))

        thread_runs: dict[str, list[ThreadResult]] = {}
        scenarios: list[tuple[str, Callable[[], int], Callable[[], int]]] = [
            ("idgen next_id(), idgen layout (4,096/ms)", gen.next_id, gen_waits),
            (
                "idgen next_id(), instagram layout (1,024/ms: overflow forced)",
                gen_overflow.next_id,
                lambda: gen_overflow.overflow_waits,
            ),
            ("locked baseline (no overflow counter)", LockedBaseline(2, LAYOUT.epoch_ms).next_id, lambda: 0),
        ]
        for r in range(args.rounds):
            for name, fn, overflows in scenarios[r % 3 :] + scenarios[: r % 3]:
                gc.collect()
                thread_runs.setdefault(name, []).append(threaded(fn, overflows))
            print(f"threads round {r + 1}/{args.rounds} done")
    load_after = os.getloadavg()

    paired = [a / b for a, b in zip(next_id.rates, locked.rates, strict=True)]
    header = ["generator", "median IDs/s", "best IDs/s", "ns/ID (median)", "% of own limit (median)", "vs locked"]
    header += ["notes"]
    rows = []
    for c in candidates:
        note = c.note
        if c is peer_c:
            note += f": {100 * statistics.median(c.nones):.1f}% of calls returned None (not counted)"
        if c.overflows:
            note += ("; " if note else "") + f"{statistics.median(c.waits):.0f} overflow waits per run (median)"
        rows.append(
            [
                c.name,
                fmt_rate(c.median),
                fmt_rate(c.best),
                f"{1e9 / c.median:.0f}",
                pct(c.median, c.limit) + (f" of {fmt_rate(c.limit)}/s" if c.limit else ""),
                f"{c.median / locked.median:.2f}x",
                note,
            ]
        )
    thread_header = ["4 threads x 500k IDs", "median IDs/s", "best IDs/s", "overflow waits (median)", "duplicates"]
    thread_header += ["out of order (per thread)"]
    thread_rows = []
    for name, runs in thread_runs.items():
        waits = str(int(statistics.median(t.overflow_waits for t in runs))) if "locked" not in name else "-"
        thread_rows.append(
            [
                name,
                fmt_rate(statistics.median(t.rate for t in runs)),
                fmt_rate(max(t.rate for t in runs)),
                waits,
                str(sum(t.duplicates for t in runs)),
                str(sum(t.out_of_order for t in runs)),
            ]
        )
    duplicates = sum(t.duplicates + t.out_of_order for runs in thread_runs.values() for t in runs)

    vs_locked = next_id.median / locked.median
    checks = [
        (f"next_id() >= {TARGET_NEXT_ID:.0%} of the limit", next_id.median / LIMIT >= TARGET_NEXT_ID),
        (f"next_id() >= {TARGET_VS_BASELINE}x the locked baseline", vs_locked >= TARGET_VS_BASELINE),
        (f"next_ids({BATCH_N}) >= {TARGET_NEXT_IDS:.0%} of the limit", batch.median / LIMIT >= TARGET_NEXT_IDS),
        ("4 threads: no duplicate, every thread strictly increasing", duplicates == 0),
    ]
    summary = [
        f"Ratios (medians): next_id / locked baseline = {next_id.median / locked.median:.2f}x"
        f" (paired per round: median {statistics.median(paired):.2f}x, range {min(paired):.2f}-{max(paired):.2f}x);"
        f" next_id / snowflake-id = {next_id.median / peer_c.median:.2f}x;"
        f" next_id / time_ns floor = {next_id.median / floor.median:.2f};"
        f" next_ids({BATCH_N}) / next_id = {batch.median / next_id.median:.2f}x.",
        "Targets (on medians): "
        + "; ".join(f"{name}: {'MET' if ok else 'MISSED'}" for name, ok in checks)
        + f" (best of {args.rounds}: next_id {pct(next_id.best, LIMIT)}, next_ids {pct(batch.best, LIMIT)}).",
    ]
    env = (
        f"{started:%Y-%m-%d %H:%M} UTC; Python {platform.python_version()} ({platform.python_implementation()}),"
        f" {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs; {pkg('snowflake-id')},"
        f" {pkg('sonyflake-turbo')}; {args.rounds} rounds x {args.seconds:g} s, interleaved;"
        f" load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    print()
    print(env)
    print(table(header, rows, markdown=False))
    print()
    print(table(thread_header, thread_rows, markdown=False))
    print()
    print("\n".join(summary))
    if args.markdown:
        print("\n--- markdown ---\n")
        print(f"Run: {env}.\n")
        print(table(header, rows, markdown=True))
        print()
        print(table(thread_header, thread_rows, markdown=True))
        print()
        print("\n".join(f"- {line}" for line in summary))
    if duplicates:
        print(f"FAIL: {duplicates} duplicate or out-of-order IDs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
