"""How long one ``GET /id?count=4096`` holds the event loop while its IDs are formatted (issue 12, item 11).

In-process: the app on aiohttp's TestServer over a LocalLease in a temporary state directory, and a client on the
same event loop. A ticker task measures the longest gap between two of its turns during each of ``ROUNDS``
requests for ``count=4096`` in a row, per form, and reports the median over the requests; minting is part of every
gap. Also the cost of :func:`idgen.format_id` per ID and form.

Run ``python bench/bench_format.py``; compare forms and versions rather than absolute figures (the gap includes
minting, and the client's reading of the response). To measure another version of idgen, put its source first on
``PYTHONPATH``.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time

import aiohttp
from aiohttp.test_utils import TestServer

import idgen
from idgen import DEFAULT_LAYOUT, FORMS, Generator, format_id
from idgen.app import make_app
from idgen.leases.local import LocalLease

ROUNDS = 50
COUNT = 4096


def per_id_ns(form: str) -> float:
    values = [random.randrange(1 << 62, 1 << 63) for _ in range(COUNT)]
    best = float("inf")
    for _ in range(20):
        start = time.perf_counter()
        for value in values:
            format_id(value, form)
        best = min(best, time.perf_counter() - start)
    return best / COUNT * 1e9


async def longest_gaps(generator: Generator) -> dict[str, float]:
    """Per form, the median over ``ROUNDS`` requests of the longest gap between the ticker's turns during each one
    (the median, because the machine is shared: a single preemption would make the maximum meaningless)."""
    gaps: dict[str, float] = {}
    async with TestServer(make_app(generator)) as server, aiohttp.ClientSession(server.make_url("")) as session:
        for form in FORMS:
            longest = 0.0
            done = asyncio.Event()

            async def tick(done: asyncio.Event = done) -> None:
                nonlocal longest
                last = time.perf_counter()
                while not done.is_set():
                    await asyncio.sleep(0)
                    now = time.perf_counter()
                    longest, last = max(longest, now - last), now

            ticker = asyncio.create_task(tick())
            per_request = []
            for _ in range(ROUNDS):
                longest = 0.0
                async with session.get(f"/id?count={COUNT}&format={form}") as response:
                    body = await response.read()  # not parsed: the client's own work would add to the gap
                    assert response.status == 200 and body.count(b",") == COUNT - 1
                per_request.append(longest)
            done.set()
            await ticker
            gaps[form] = statistics.median(per_request)
    return gaps


def main() -> None:
    print(f"idgen from {idgen.__file__}")
    with tempfile.TemporaryDirectory() as state:
        generator = Generator(lease=LocalLease(DEFAULT_LAYOUT, state))
        try:
            gaps = asyncio.run(longest_gaps(generator))
        finally:
            generator.close()
    print(f"{'form':<8} {'format_id per ID':>17} {'loop held at most, count=' + str(COUNT):>32}")
    for form in FORMS:
        print(f"{form:<8} {per_id_ns(form):>14.0f} ns {gaps[form] * 1e3:>29.2f} ms")


if __name__ == "__main__":
    main()
