"""The load test, end to end, on loopback: a 3-node ZooKeeper ensemble, N idgen servers, locust headless,
then the verdict from ``loadtest/check.py``. It stops everything it started, and exits 1 on a duplicate.

    python loadtest/run.py                          # defaults finish in about a minute
    python loadtest/run.py --duration 600 --servers 4 --users 200

Writes to ``--out`` (default ``loadtest/results/<time>``): the ID logs, locust's HTML report and CSV stats,
each server's log. Latencies here are locust's, measured at the client. Locust tops out near 9k requests/s
per process on 2 cores, so use ``bench/bench_http.py`` (wrk) for peak throughput.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the ZooKeeper harness and server helpers
sys.path.insert(0, str(Path(__file__).resolve().parent))

from check import render, summarize
from serverproc import serve_command, wait_http_ok
from zkharness import TEST_CREDENTIALS, ZkEnsemble, free_port

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=45, help="seconds of load (default %(default)s)")
    parser.add_argument("--servers", type=int, default=2, help="idgen servers (default %(default)s)")
    parser.add_argument("--users", type=int, default=40, help="locust users (default %(default)s)")
    parser.add_argument("--spawn-rate", type=float, default=20.0)
    parser.add_argument("--locust-processes", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "results" / time.strftime("%Y%m%d-%H%M%S"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    servers: list[subprocess.Popen[bytes]] = []
    with ZkEnsemble(3) as ensemble:
        namespace = f"/loadtest-{uuid.uuid4().hex[:8]}"
        try:
            urls = []
            for number in range(args.servers):
                port = free_port()
                log = open(args.out / f"server-{number}.log", "wb")  # noqa: SIM115 (the child owns it)
                servers.append(
                    subprocess.Popen(
                        serve_command(port, "--zk", ensemble.hosts, "--namespace", namespace),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env={**os.environ, "IDGEN_ZK_AUTH": TEST_CREDENTIALS},  # ZooKeeper's nodes are idgen's alone
                    )
                )
                urls.append(f"http://127.0.0.1:{port}")
            for url, proc in zip(urls, servers, strict=True):
                wait_http_ok(f"{url}/readyz", proc)
            print(f"ZooKeeper ensemble {ensemble.hosts}; idgen servers {', '.join(urls)}; {args.duration} s of load")
            locust = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "locust",
                    "-f",
                    str(HERE / "locustfile.py"),
                    "--headless",
                    "--only-summary",
                    "-u",
                    str(args.users),
                    "-r",
                    str(args.spawn_rate),
                    "-t",
                    f"{args.duration}s",
                    "--processes",
                    str(args.locust_processes),
                    "--html",
                    str(args.out / "report.html"),
                    "--csv",
                    str(args.out / "locust"),
                ],
                env={**os.environ, "IDGEN_LOADTEST_HOSTS": ",".join(urls), "IDGEN_LOADTEST_OUT": str(args.out)},
                check=False,
            )
        finally:
            for proc in servers:
                proc.send_signal(signal.SIGTERM)
            for proc in servers:
                proc.wait(timeout=30)
    summary = summarize(args.out)
    print(render(summary))
    print(f"locust exit code {locust.returncode}; report {args.out / 'report.html'}")
    return 1 if summary["duplicates"] or summary["out_of_order"] or not summary["ids"] else 0


if __name__ == "__main__":
    sys.exit(main())
