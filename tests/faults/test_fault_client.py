"""``idgen.client`` (both clients) against what may stand between it and idgen: a cache, a slow proxy, a broken server.

Real ``idgen serve`` processes and small real HTTP servers (``tests/rawhttp.py``) on loopback ports; nothing mocked.

Scenario 15a: a cache in front of the first of two servers replays every answer it once had; the clients ask for a
batch of 100 (``IDGEN_CLIENT_BATCH=100``), so every request after the first is answered from the cache. Before
issue 20 the client handed the replayed IDs out again. Now it keeps a floor per server and worker ID and drops a
replayed answer.

Scenario 15b: the first of two servers trickles its answer, a byte every 50 ms, each byte well within any socket
timeout. Before, the sync client's request stayed with it for as long as it trickled, past the call's ``max_wait``;
now each attempt ends by one deadline, ``timeout`` after it began, and the next server answers.

Scenario 15c: the first of two servers answers ``/id?count=100`` with 300 MB. Before, the client read it all into
memory; now it reads at most a bound derived from the count, then hangs up.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faultkit import IdgenServer
from loadclient import Report
from rawhttp import RUNS, RawServer, Route, caching_proxy, flooding, http_response, trickling
from serverproc import wait_until

from idgen import decode
from idgen.client import AsyncClient, Client

IDS_PER_CLIENT = 600
TRICKLE_PAUSE_S = 0.05
TRICKLE_PADDING_BYTES = 400  # whitespace in the JSON: the whole answer takes about 20 s to trickle
TIMEOUT_S = 2.0
FLOOD_BYTES = 300 << 20


@pytest.fixture
def servers(tmp_path: Path, spawn_server: Callable[..., IdgenServer]) -> tuple[IdgenServer, IdgenServer]:
    """Two idgen servers of one ID space (a local state directory)."""
    state = str(tmp_path / "state")
    first, second = spawn_server("first", "--state-dir", state), spawn_server("second", "--state-dir", state)
    first.wait_ready(), second.wait_ready()
    return first, second


@pytest.fixture
def raw_server() -> Iterator[Callable[[dict[str, Route]], RawServer]]:
    made: list[RawServer] = []

    def make(routes: dict[str, Route]) -> RawServer:
        made.append(RawServer(routes))
        return made[-1]

    yield make
    for server in made:
        server.close()


def url(server: IdgenServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def draw(kind: str, urls: list[str], n: int, **options: Any) -> tuple[list[int], Counter[str], float | None]:
    """``n`` calls of ``next_id`` on a new client of ``kind``: the IDs, the failures by type, and the seconds from
    the first call to the first ID."""
    ids: list[int] = []
    errors: Counter[str] = Counter()
    first_s: list[float] = []

    def one(began: float, call: Callable[[], Any]) -> None:
        try:
            ids.append(call())
        except Exception as exc:  # the scenario's figures: every failure counted, by type
            errors[type(exc).__name__] += 1
        else:
            if not first_s:
                first_s.append(time.monotonic() - began)

    if kind == "Client":
        with Client(urls, **options) as client:
            began = time.monotonic()
            for _ in range(n):
                one(began, client.next_id)
    else:

        async def run() -> None:
            async with AsyncClient(urls, **options) as client:
                began = time.monotonic()
                for _ in range(n):
                    try:
                        ids.append(await client.next_id())
                    except Exception as exc:
                        errors[type(exc).__name__] += 1
                    else:
                        if len(ids) == 1:
                            first_s.append(time.monotonic() - began)

        asyncio.run(run())
    return ids, errors, first_s[0] if first_s else None


def test_a_cache_replaying_answers_makes_no_duplicate(
    servers: tuple[IdgenServer, IdgenServer],
    raw_server: Callable[..., RawServer],
    fault_results: list[Report],
) -> None:
    first, second = servers
    cache = caching_proxy(first)
    proxy = raw_server({"/id": cache, "/info": cache, "/readyz": cache})
    report = Report("15a. a cache before the first of two servers replays its answers; 600 next_id per client")
    for kind in ("Client", "AsyncClient"):
        ids, errors, _ = draw(kind, [proxy.url, url(second)], IDS_PER_CLIENT, batch=100)
        report.ids += len(ids)
        report.duplicates += len(ids) - len(set(ids))
        report.errors.update(errors)
        fresh = {decode(i)["worker"] for i in ids}
        report.notes.append(f"{kind}: {len(ids) - len(set(ids))} duplicates in {len(ids)} IDs, workers {sorted(fresh)}")
    fault_results.append(report)
    assert not report.errors
    report.assert_ok()


def test_a_trickling_server_costs_one_timeout_then_the_next_answers(
    servers: tuple[IdgenServer, IdgenServer],
    raw_server: Callable[..., RawServer],
    fault_results: list[Report],
) -> None:
    first, second = servers
    reply = first.get("/id?count=100", {"Accept": RUNS})
    padded = b"{" + b" " * TRICKLE_PADDING_BYTES + reply.body[1:]
    answer = http_response(200, {"Content-Type": RUNS}, padded)
    info = http_response(200, {"Content-Type": "application/json"}, first.get("/info").body)
    trickler = raw_server({"/id": trickling(answer, TRICKLE_PAUSE_S), "/info": trickling(info, TRICKLE_PAUSE_S)})
    report = Report(f"15b. the first of two servers trickles its answer (a byte per 50 ms); timeout={TIMEOUT_S:g}")
    firsts = []
    for kind in ("Client", "AsyncClient"):
        options = {"batch": 100, "timeout": TIMEOUT_S, "probe_interval": None}
        ids, errors, first_s = draw(kind, [trickler.url, url(second)], 1, **options)
        report.ids += len(ids)
        report.errors.update(errors)
        firsts.append(first_s)
        shown = "no ID" if first_s is None else f"its first ID after {first_s:.2f} s"
        report.notes.append(f"{kind}: {shown}; errors {dict(errors) or 'none'}")
    wait_until(lambda: len(trickler.sent) >= 2, what="the trickling server to see both clients leave")
    held = [sent * TRICKLE_PAUSE_S for sent in trickler.sent]
    report.notes.append(f"the trickling server held the requests for about {', '.join(f'{s:.1f}' for s in held)} s")
    known = [s for s in firsts if s is not None]
    report.recovery_s, report.recovery_from = (max(known), "to the slower client's first ID") if known else (None, "")
    fault_results.append(report)
    report.assert_ok()
    assert not report.errors and len(known) == 2


RSS_CHILD = """
import resource, sys
from idgen.client import Client
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with Client(sys.argv[1:], batch=100, probe_interval=None) as client:
    ids = client.next_ids(10)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before // 1024, after // 1024, len(set(ids)))
"""


def test_a_huge_answer_is_cut_off_at_a_bound(
    servers: tuple[IdgenServer, IdgenServer],
    raw_server: Callable[..., RawServer],
    fault_results: list[Report],
) -> None:
    first, second = servers
    info = http_response(200, {"Content-Type": "application/json"}, first.get("/info").body)

    async def info_route(server: RawServer, writer: asyncio.StreamWriter, target: str) -> None:
        writer.write(info)

    flood = raw_server({"/id": flooding(FLOOD_BYTES, with_length=False), "/info": info_route})
    child = subprocess.run(
        [sys.executable, "-c", RSS_CHILD, flood.url, url(second)], capture_output=True, text=True, timeout=120
    )
    report = Report("15c. the first of two servers answers /id?count=100 with 300 MB")
    assert child.returncode == 0, child.stderr
    before_mb, after_mb, distinct = map(int, child.stdout.split())
    report.ids = distinct
    report.notes.append(
        f"the client's peak RSS {before_mb} MB before its first call, {after_mb} MB after it; the server sent"
        f" {sum(flood.sent) / (1 << 20):.0f} MB before the client hung up"
    )
    fault_results.append(report)
    report.assert_ok()
    assert distinct == 10 and after_mb - before_mb < 100
