"""What etcd's password authentication costs a fleet's cold start, by bcrypt cost.

Every idgen process on etcd authenticates once at start (``POST /v3/auth/authenticate``) and again when its token
expires. etcd checks the password with bcrypt, whose cost is etcd's ``--bcrypt-cost`` (10 by default) when the user's
password was set. For each cost this starts a one-member etcd with authentication on (tests/etcdharness.py), then
times authentications from 1 and from 2 threads (the machine has 2 cores), and says what 1,024 workers starting at
once would take of etcd's CPU.

Run ``python bench/etcd_auth.py [--count 40]``. Baseline: cost 4, the lowest, in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the etcd harness
from etcdharness import TEST_CREDENTIALS, EtcdServer

FLEET = 1024


def authenticate(url: str) -> None:
    name, _, password = TEST_CREDENTIALS.partition(":")
    body = json.dumps({"name": name, "password": password}).encode()
    request = urllib.request.Request(f"{url}/v3/auth/authenticate", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert "token" in json.loads(answer.read())


def rate(url: str, count: int, threads: int) -> float:
    """Authentications a second, ``count`` of them from ``threads`` threads."""
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda _: authenticate(url), range(count)))
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=40, help="authentications per measurement")
    args = parser.parse_args()
    print(f"{'bcrypt cost':>11} {'1 thread /s':>12} {'2 threads /s':>13} {f'{FLEET} workers':>13} {'vs cost 4':>10}")
    baseline = None
    for cost in (4, 10):
        server = EtcdServer(extra_args=[f"--bcrypt-cost={cost}"]).start()
        try:
            url = server.endpoints.split(",")[0]
            authenticate(url)  # warm up
            one, two = rate(url, args.count, 1), rate(url, args.count, 2)
        finally:
            server.stop()
        baseline = baseline or two
        print(f"{cost:>11} {one:12.1f} {two:13.1f} {FLEET / two:12.1f}s {baseline / two:9.1f}x")


if __name__ == "__main__":
    main()
