"""Scale benchmark of the ZooKeeper claim path (issue 22): N workers starting at once against a real 3-node ensemble.

For each N it starts N generators together (threads of one process, one ZooKeeper session each, as N servers would
have) in a fresh namespace of the ``idgen`` layout (1,024 worker IDs), and prints:

- requests per worker: ZooKeeper requests the workers' clients sent until all served (pings excluded; counted where
  kazoo queues every request, ``KazooClient._call``), divided by N;
- collisions: claims that found their worker ID taken (a create of ``leases/<id>`` answered ``NodeExistsError``);
- time to all-serving: from the start until the last worker returned its first ID;
- steady requests/s per worker: requests (pings excluded) over a quiet window after all served, and the packets
  every ensemble member received in it (pings included, from ``srvr``), per worker and second.

``--rolling`` adds the second scenario: a rolling restart, each worker closed and a new one started in its place in
turn, with the requests and time per restart.

Run ``python bench/bench_scale.py --sizes 8,32,128,256 --rolling --markdown``. Needs Debian's ``zookeeper``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError
from kazoo.protocol.serialization import Create, Transaction

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the ZooKeeper harness
from zkharness import TEST_CREDENTIALS, ZkEnsemble, four_letter_word

from idgen import Generator
from idgen.layout import DEFAULT_LAYOUT
from idgen.leases.zookeeper import ZkLease


class RequestTally:
    """Counts every request kazoo queues (``KazooClient._call``: pings do not pass there) and every claim that
    collided, process-wide. Measurement only: each request still goes to the real ensemble."""

    def __init__(self) -> None:
        self.requests = 0
        self.collisions = 0
        self.by_type: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._original: Callable[..., Any] = KazooClient._call

    def install(self) -> None:
        tally, original = self, self._original

        def counted_call(client: KazooClient, request: Any, async_object: Any) -> Any:
            with tally._lock:
                tally.requests += 1
                tally.by_type[type(request).__name__] += 1
            claims = _claim_paths(request)
            if claims:
                async_object.rawlink(lambda result: tally._count_collision(result, claims))
            return original(client, request, async_object)

        KazooClient._call = counted_call  # type: ignore[method-assign]

    def _count_collision(self, result: Any, claims: list[int]) -> None:
        """A plain create fails with ``NodeExistsError``; a transaction answers a list with one result per op."""
        if not result.successful():
            failed = int(isinstance(result.exception, NodeExistsError))
        elif isinstance(result.value, list):
            failed = sum(isinstance(result.value[i], NodeExistsError) for i in claims)
        else:
            failed = 0
        with self._lock:
            self.collisions += failed

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.requests, self.collisions


def _claim_paths(request: Any) -> list[int]:
    """Indexes of the creates of a claim (``.../leases/<id>``) in ``request`` (0 for a plain create)."""
    if isinstance(request, Create):
        return [0] if "/leases/" in request.path else []
    if isinstance(request, Transaction):
        return [i for i, op in enumerate(request.operations) if isinstance(op, Create) and "/leases/" in op.path]
    return []


@dataclass
class Round:
    n: int
    requests_per_worker: float
    collisions: int
    all_serving_s: float
    steady_requests_per_worker_s: float
    steady_packets_per_worker_s: float


@dataclass
class Rolling:
    n: int
    requests_per_restart: float
    median_restart_s: float
    max_restart_s: float
    total_s: float


def _received(ensemble: ZkEnsemble) -> int:
    """Packets received by every member, from ``srvr``."""
    total = 0
    for server in ensemble.servers:
        for line in (four_letter_word(server.client_port, "srvr") or "").splitlines():
            if line.startswith("Received:"):
                total += int(line.split(":")[1])
    return total


def _start(hosts: str, namespace: str) -> Generator:
    lease = ZkLease(DEFAULT_LAYOUT, hosts, namespace, auth=TEST_CREDENTIALS)
    generator = Generator(DEFAULT_LAYOUT, lease)
    generator.next_id()
    return generator


@contextmanager
def _closing(generators: list[Generator]) -> Iterator[list[Generator]]:
    try:
        yield generators
    finally:
        threads = [threading.Thread(target=g.close) for g in generators]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def cold_start(ensemble: ZkEnsemble, tally: RequestTally, n: int, steady_s: float) -> tuple[Round, list[Generator]]:
    namespace = f"/scale-{n}-{uuid.uuid4().hex[:8]}"
    _start(ensemble.hosts, namespace).close()  # the namespace and its layout exist, as after a first deployment
    generators: list[Generator] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(n + 1)

    def worker() -> None:
        barrier.wait()
        try:
            generators.append(_start(ensemble.hosts, namespace))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    requests_before, collisions_before = tally.snapshot()
    barrier.wait()
    started = time.monotonic()
    for t in threads:
        t.join()
    all_serving_s = time.monotonic() - started
    requests, collisions = tally.snapshot()
    if errors:
        for g in generators:
            g.close()
        raise RuntimeError(f"{len(errors)} of {n} workers failed to start: {errors[0]!r}")
    if len({g.worker_id for g in generators}) != n:
        raise RuntimeError("two workers hold one worker ID")
    steady_requests, _ = tally.snapshot()
    packets = _received(ensemble)
    time.sleep(steady_s)  # a quiet window: renewals and pings only
    steady_requests = tally.snapshot()[0] - steady_requests
    packets = _received(ensemble) - packets
    return (
        Round(
            n,
            (requests - requests_before) / n,
            collisions - collisions_before,
            all_serving_s,
            steady_requests / n / steady_s,
            packets / n / steady_s,
        ),
        generators,
    )


def rolling_restart(ensemble: ZkEnsemble, tally: RequestTally, generators: list[Generator]) -> Rolling:
    namespace = generators[0].lease.namespace_path  # type: ignore[attr-defined]
    durations: list[float] = []
    requests_before, _ = tally.snapshot()
    started = time.monotonic()
    for i, generator in enumerate(generators):
        generator.close()
        begun = time.monotonic()
        generators[i] = _start(ensemble.hosts, namespace)
        durations.append(time.monotonic() - begun)
    total_s = time.monotonic() - started
    requests = tally.snapshot()[0] - requests_before
    return Rolling(len(generators), requests / len(generators), statistics.median(durations), max(durations), total_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8,32,128,256", help="comma-separated worker counts")
    parser.add_argument("--steady", type=float, default=10.0, help="seconds of the quiet window")
    parser.add_argument("--rolling", action="store_true", help="also restart every worker in turn")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    tally = RequestTally()
    tally.install()
    rounds: list[Round] = []
    rollings: list[Rolling] = []
    with ZkEnsemble(3) as ensemble:
        for n in sizes:
            result, generators = cold_start(ensemble, tally, n, args.steady)
            with _closing(generators):
                rounds.append(result)
                print(result, file=sys.stderr, flush=True)
                if args.rolling:
                    rollings.append(rolling_restart(ensemble, tally, generators))
                    print(rollings[-1], file=sys.stderr, flush=True)
    print(
        "| N | requests per worker | collisions | all serving after | steady requests/s per worker | "
        "steady packets/s per worker (pings included) |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rounds:
        print(
            f"| {r.n} | {r.requests_per_worker:.1f} | {r.collisions} | {r.all_serving_s:.2f} s | "
            f"{r.steady_requests_per_worker_s:.2f} | {r.steady_packets_per_worker_s:.2f} |"
        )
    if rollings:
        print()
        print("| N | requests per restart | median restart | slowest restart | whole rolling restart |")
        print("|---:|---:|---:|---:|---:|")
        for r in rollings:
            print(
                f"| {r.n} | {r.requests_per_restart:.1f} | {r.median_restart_s:.3f} s | {r.max_restart_s:.3f} s | "
                f"{r.total_s:.1f} s |"
            )


if __name__ == "__main__":
    main()
