"""Garbage collections inside ``idgen serve`` while wrk loads ``GET /id``: how many, of which generation, how long.

    python bench/gc_under_load.py [--seconds 10] [--markdown]

The server runs with a ``gc.callbacks`` hook that records each collection (generation, start on the monotonic
clock, CPU time of the collecting thread) and writes them out when the server exits. Only collections that start
while wrk runs are counted: once saturated (64 connections), once paced at half of that peak as in
``bench_http.py`` (its window includes the 2 s probe that sets the connections). Start-up (imports, lease, app)
collects a few dozen times before the first request; those are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_http import paced, print_table, require_tools, running, wrk

RECORDER = """
import atexit, gc, json, os, sys, time
collections, started = [], []
def record(phase, info):
    if phase == "start":
        started[:] = [time.monotonic(), time.thread_time()]
    else:
        collections.append((info["generation"], started[0], time.thread_time() - started[1]))
def write_out():
    with open(os.environ["IDGEN_GC_LOG"], "w") as out:
        json.dump(collections, out)
gc.callbacks.append(record)
atexit.register(write_out)
from idgen.cli import main
sys.exit(main(sys.argv[1:]))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    if args.seconds < 1:
        parser.error("--seconds must be at least 1")
    require_tools("gc_under_load")

    with tempfile.TemporaryDirectory(prefix="idgen-gc-") as scratch:
        log = Path(scratch) / "collections.json"
        windows: dict[str, tuple[float, float, float]] = {}  # load -> (start, end, requests/s)
        os.environ["IDGEN_GC_LOG"] = str(log)
        command = [sys.executable, "-c", RECORDER, "serve", "--host", "127.0.0.1", "--port", "{port}"]

        def load(name: str, run: Callable[[], dict[str, float]]) -> float:
            start = time.monotonic()
            rps = run()["rps"]
            windows[name] = (start, time.monotonic(), rps)
            return rps

        with running([*command, "--state-dir", scratch], "/readyz") as server:
            url = server.url + "/id"
            peak = load("saturated", lambda: wrk(url, args.seconds))
            load("paced at half the peak", lambda: paced(url, peak / 2, args.seconds))
        collections = json.loads(log.read_text())  # written when the server exited

    rows = []
    for name, (start, end, rps) in windows.items():
        for generation in (0, 1, 2):
            pauses = [cpu * 1000 for gen, at, cpu in collections if gen == generation and start <= at <= end]
            rows.append(
                (
                    f"{name} ({rps:,.0f} requests/s)",
                    str(generation),
                    str(len(pauses)),
                    f"{statistics.median(pauses):.2f} / {max(pauses):.2f}" if pauses else "-",
                )
            )
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; Python {sys.version.split()[0]}; {args.seconds} s each"
    )
    print_table(("load (wrk)", "generation", "collections", "CPU ms each, median / max"), rows, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
