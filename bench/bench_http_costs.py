"""Where the CPU of ``GET /id`` goes: handler variants from the bare handler up to ``idgen serve``, each paired with
the bare handler on one core as in ``bench_http.py`` (requests per CPU-second over the bare handler's).

    python bench/bench_http_costs.py [--pairs 5] [--slices 3] [--seconds 2] [--markdown]

Each variant gets ``--pairs`` fresh server pairs, interleaved variant by variant so that all share the VM's drift.
A pair's figure is the median of its slices (after one warm-up slice); a variant's is the median of its pairs'.
Every variant server holds a ``Generator`` (local lease), used or not, so that only the handler differs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from contextlib import AbstractContextManager

from bench_http import (
    MINT_SETUP,
    MINTING_BASELINE_SERVER,
    PIN_CPU0,
    SAMPLE_BODY,
    Served,
    handler_server,
    handler_server_process,
    idgen_server,
    paired,
    print_table,
    require_tools,
)

CONSTANT = f"{MINT_SETUP}\nimport time\nnow = time.time_ns\nBODY = {SAMPLE_BODY!r}\nID = {int(SAMPLE_BODY[7:-2])}"
RESPOND_CONSTANT = 'return web.Response(body=BODY, content_type="application/json")'
RESPOND_MINTED = """return web.Response(body=b'{"id":"%d"}' % next_id(), content_type="application/json")"""
FAIL = "raise web.HTTPBadRequest()"
IDGEN = ""  # stands for idgen serve itself

VARIANTS: dict[str, str] = {
    "a clock read (`time.time_ns()`), constant body": handler_server(f"now()\n{RESPOND_CONSTANT}", CONSTANT),
    "`Generator.next_id()`, constant body": handler_server(f"next_id()\n{RESPOND_CONSTANT}", CONSTANT),
    "a constant int formatted into the body": handler_server(
        """return web.Response(body=b'{"id":"%d"}' % ID, content_type="application/json")""", CONSTANT
    ),
    "the floor: `next_id()` formatted into the body": MINTING_BASELINE_SERVER,
    "the floor + the request-target check (`request.raw_path`)": handler_server(
        f'if request.raw_path != "/id":\n    {FAIL}\n{RESPOND_MINTED}', CONSTANT
    ),
    "the floor + the `Accept` check": handler_server(
        f'if "text/" in request.headers.get(hdrs.ACCEPT, ""):\n    {FAIL}\n{RESPOND_MINTED}', CONSTANT
    ),
    "`idgen serve`": IDGEN,
}


def candidate(source: str, state_dir: str) -> AbstractContextManager[Served]:
    if source == IDGEN:
        return idgen_server(state_dir, 1, PIN_CPU0)
    return handler_server_process(source, state_dir, PIN_CPU0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--slices", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=2, help="per slice")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.slices < 1 or args.seconds < 1:
        parser.error("--pairs, --slices and --seconds must be at least 1")
    require_tools("bench_http_costs")

    figures: dict[str, list[float]] = {name: [] for name in VARIANTS}
    state_dir = tempfile.mkdtemp(prefix="idgen-bench-costs-")
    try:
        for pair in range(1, args.pairs + 1):
            for name, source in VARIANTS.items():
                figures[name].append(statistics.median(paired(candidate(source, state_dir), args.slices, args.seconds)))
            print(f"pairs {pair}/{args.pairs} done", file=sys.stderr)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)

    rows = [
        (name, f"{statistics.median(values):.3f}", ", ".join(f"{v:.3f}" for v in values))
        for name, values in figures.items()
    ]
    header = ("handler, paired with the bare handler", "ratio (median of pairs)", "each pair")
    print_table(header, rows, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
