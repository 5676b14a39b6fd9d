"""How wrk's pacing moves the p99 it reports, at one rate: why ``bench_http.py`` paces with wrk's finest delay.

    python bench/bench_pacing.py [--rounds 3] [--seconds 6] [--markdown]

The bare handler and ``idgen serve`` (one process each, both running throughout) are loaded at one rate, half of
idgen's peak measured first. Each wrk connection waits 0 (a closed loop), 1, 2, 4 or 8 ms after every answer, and a
short probe sets how many connections give the rate (``bench_http.paced``): the longer the wait, the more
connections. Each round goes through every wait, the two servers in turn, so that the VM's drift spreads evenly.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time

from bench_http import baseline_server, idgen_server, paced, print_table, require_tools, wrk

WAITS_MS = (0, 1, 2, 4, 8)
SERVERS = ("bare", "idgen")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds < 1:
        parser.error("--rounds and --seconds must be at least 1")
    require_tools("bench_pacing")

    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    state_dir = tempfile.mkdtemp(prefix="idgen-bench-")
    try:
        with baseline_server() as bare, idgen_server(state_dir, 1) as idgen:
            rate = wrk(idgen.url + "/id", args.seconds)["rps"] / 2
            for round_number in range(1, args.rounds + 1):
                for wait_ms in WAITS_MS:
                    for name, server in zip(SERVERS, (bare, idgen), strict=True):
                        result = paced(server.url + "/id", rate, args.seconds, wait_ms)
                        results.setdefault((name, wait_ms), []).append(result)
                print(f"round {round_number}/{args.rounds} done", file=sys.stderr)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)

    def cells(name: str, wait_ms: int) -> tuple[str, str, str]:
        runs = results[(name, wait_ms)]

        def med(key: str) -> float:
            return statistics.median(r[key] for r in runs)

        return f"{med('connections'):.0f}", f"{med('rps'):,.0f}", f"{med('p50_ms'):.2f} / {med('p99_ms'):.2f}"

    rows = [
        (f"{wait_ms} ms" if wait_ms else "none (closed loop)", *cells("bare", wait_ms), *cells("idgen", wait_ms))
        for wait_ms in WAITS_MS
    ]
    header = ("wait after each answer", "bare: connections", "requests/s", "p50 / p99 ms")
    header += ("idgen: connections", "requests/s", "p50 / p99 ms")
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.rounds} rounds x {args.seconds} s, medians; "
        f"aimed at {rate:,.0f} requests/s (half of idgen's peak); wrk -t2"
    )
    print_table(header, rows, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
