"""Client benchmark: the HTTP clients against the embedded generator, in one run, against one ``idgen serve``.

Measures, interleaved over ``--rounds`` rounds of ``--seconds`` each (the median round is reported):

- embedded ``Generator.next_id()`` (a LocalLease in a temporary state directory), the reference;
- the raw batch endpoint ``GET /id?count=4096`` over one keep-alive connection (urllib3), in JSON and in the
  compact runs form (``Accept: application/vnd.idgen.runs+json``), in IDs/s: request plus body read, no parsing;
- ``Client.next_id()`` and ``Client.next_ids(1000)``, with the client's defaults;
- ``AsyncClient.next_id()`` and ``AsyncClient.next_ids(1000)``, with the client's defaults.

Targets (issue 14): ``Client.next_id()`` >= 0.5x embedded; ``Client.next_ids(1000)`` >= 2M IDs/s; the asyncio
client within 20% of the sync one (each of next_id and next_ids(1000)). Ratios are medians over rounds of the two
figures measured in the same round, so drift between rounds (other load on a shared VM) cancels.

    python bench/bench_client.py [--seconds 3] [--rounds 3] [--markdown]

Server, client and benchmark loop share the machine's cores (2 on the reference VM).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import urllib3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the server-process helpers
from serverproc import ServerProcess
from timing import CALLS_PER_READ, per_batch, per_call

from idgen import DEFAULT_LAYOUT, Generator
from idgen.client import AsyncClient, Client
from idgen.leases.local import LocalLease
from idgen.runs import RUNS_TYPE

BATCH = 4096


def ids_per_second(run: Callable[[float], tuple[int, int, float]], seconds: float) -> float:
    """IDs/s of one of :mod:`timing`'s loops run for about ``seconds``."""
    ids, _, elapsed = run(seconds)
    return ids / elapsed


def raw_endpoint(pool: urllib3.HTTPConnectionPool, accept: str, seconds: float) -> float:
    headers = {"Accept": accept}
    ids = 0
    start = time.perf_counter()
    while True:
        for _ in range(20):
            response = pool.request("GET", f"/id?count={BATCH}", headers=headers)
            assert response.status == 200, response.data
            ids += BATCH
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return ids / elapsed


async def async_rates(client: AsyncClient, seconds: float) -> tuple[float, float]:
    """IDs/s of ``await next_id()`` and of ``await next_ids(1000)``."""
    await client.next_id()  # started, first batch in
    calls = 0
    start = time.perf_counter()
    while True:
        for _ in itertools.repeat(None, CALLS_PER_READ):
            await client.next_id()
        calls += CALLS_PER_READ
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    one = calls / elapsed
    ids = 0
    start = time.perf_counter()
    while True:
        for _ in range(100):
            ids += len(await client.next_ids(1000))
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return one, ids / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    rates: dict[str, list[float]] = {}

    def record(name: str, rate: float) -> None:
        rates.setdefault(name, []).append(rate)
        print(f"  {name:<34} {rate / 1e6:6.2f} M IDs/s", file=sys.stderr)

    with (
        tempfile.TemporaryDirectory() as server_state,
        tempfile.TemporaryDirectory() as embedded_state,
        ServerProcess("--state-dir", server_state) as server,
        Generator(DEFAULT_LAYOUT, LocalLease(DEFAULT_LAYOUT, state_dir=embedded_state)) as generator,
    ):
        url = f"http://127.0.0.1:{server.port}"
        pool = urllib3.HTTPConnectionPool("127.0.0.1", server.port, maxsize=1, retries=False)
        for round_no in range(args.rounds):
            print(f"round {round_no + 1}/{args.rounds}", file=sys.stderr)
            record("embedded Generator.next_id()", ids_per_second(per_call(generator.next_id), args.seconds))
            record("GET /id?count=4096, JSON", raw_endpoint(pool, "application/json", args.seconds))
            record("GET /id?count=4096, runs", raw_endpoint(pool, RUNS_TYPE, args.seconds))
            with Client(url) as client:  # a fresh client each round: its batch sizes itself again
                client.next_id()
                record("Client.next_id()", ids_per_second(per_call(client.next_id), args.seconds))
                record("Client.next_ids(1000)", ids_per_second(per_batch(client.next_ids, 1000), args.seconds))

            async def run_async() -> tuple[float, float]:
                async with AsyncClient(url) as client:
                    return await async_rates(client, args.seconds)

            one, many = asyncio.run(run_async())
            record("AsyncClient.next_id()", one)
            record("AsyncClient.next_ids(1000)", many)
        pool.close()

    median = {name: statistics.median(values) for name, values in rates.items()}
    embedded = median["embedded Generator.next_id()"]

    def ratio(a: str, b: str) -> float:
        """The median over rounds of a / b measured in the same round: drift between rounds cancels."""
        return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))

    checks = [
        ("Client.next_id() >= 0.5x embedded", ratio("Client.next_id()", "embedded Generator.next_id()"), 0.5, "x"),
        ("Client.next_ids(1000) >= 2M IDs/s", median["Client.next_ids(1000)"] / 1e6, 2.0, "M/s"),
        ("AsyncClient.next_id() >= 0.8x sync", ratio("AsyncClient.next_id()", "Client.next_id()"), 0.8, "x"),
        (
            "AsyncClient.next_ids(1000) >= 0.8x sync",
            ratio("AsyncClient.next_ids(1000)", "Client.next_ids(1000)"),
            0.8,
            "x",
        ),
    ]
    if args.markdown:
        print("| What | IDs/s (median of rounds) | vs embedded |\n|---|---:|---:|")
        for name, rate in median.items():
            print(f"| {name} | {rate / 1e6:.2f} M | {rate / embedded:.2f}x |")
        print("\n| Target | Measured | Met |\n|---|---:|:---:|")
        for what, value, target, unit in checks:
            print(f"| {what} | {value:.2f}{unit} | {'yes' if value >= target else 'no'} |")
    else:
        for name, rate in median.items():
            print(f"{name:<34} {rate / 1e6:6.2f} M IDs/s  {rate / embedded:5.2f}x embedded")
        for what, value, target, unit in checks:
            print(f"{what:<42} {value:6.2f}{unit}  {'met' if value >= target else 'NOT met'}")


if __name__ == "__main__":
    main()
