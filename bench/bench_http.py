"""HTTP benchmark for ``idgen serve``, in one run on one machine, with wrk (Debian's) as the load generator.

Measures, interleaved over ``--rounds`` rounds:

- ``GET /id`` on one process, against a bare aiohttp handler that returns a constant JSON body of the same size
  (same aiohttp, same event loop policy, access log off in both): target >= 0.9x;
- ``GET /id`` with ``--processes 2`` against one process: target >= 1.4x;
- ``GET /id?count=4096`` on one process, in IDs/s: target >= 2M;
- p99 latency of ``GET /id`` at half of the single-process peak, paced by a wrk Lua ``delay()``: target <= 2 ms.

    python bench/bench_http.py [--seconds 10] [--rounds 3] [--markdown]

wrk shares the 2 cores with the server (about 12-15 us of CPU per request), so every figure is "server + wrk on
the same 2 cores". Locust is not used here: it tops out near 9k requests/s per process on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the server-process helpers
from serverproc import wait_http_ok

CONNECTIONS = 64
THREADS = 2
SAMPLE_BODY = b'{"id":"249776164925612032"}'  # what GET /id returns, byte for byte in length
PACED_LUA = """
local delay_ms = tonumber(os.getenv("WRK_DELAY_MS"))
function delay() return delay_ms end
"""
BASELINE_SERVER = """
import sys
from aiohttp import web
body = sys.argv[2].encode()
async def handler(request):
    return web.Response(body=body, content_type="application/json")
app = web.Application()
app.router.add_get("/id", handler)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(command: list[str], ready_path: str) -> Iterator[str]:
    """Start ``command`` with ``{port}`` replaced by a free port; yield its base URL once ``ready_path`` answers 200."""
    port = free_port()
    proc = subprocess.Popen(
        [part.replace("{port}", str(port)) for part in command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(base + ready_path, proc)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def idgen_server(state_dir: str, processes: int) -> AbstractContextManager[str]:
    return running(
        [
            sys.executable,
            "-m",
            "idgen.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--state-dir",
            state_dir,
            "--processes",
            str(processes),
        ],
        "/readyz",
    )


def baseline_server() -> AbstractContextManager[str]:
    return running([sys.executable, "-c", BASELINE_SERVER, "{port}", SAMPLE_BODY.decode()], "/id")


def wrk(url: str, seconds: int, connections: int = CONNECTIONS, delay_ms: int | None = None) -> dict[str, float]:
    """Run wrk; return requests/s and latency percentiles (ms)."""
    command = ["wrk", f"-t{THREADS}", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    env = dict(os.environ)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(PACED_LUA)
    if delay_ms is not None:
        command[1:1] = ["-s", script.name]
        env["WRK_DELAY_MS"] = str(delay_ms)
    try:
        out = subprocess.run(command, capture_output=True, text=True, env=env, check=True, timeout=seconds + 60).stdout
    finally:
        os.unlink(script.name)
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "99"):
        value, unit = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE).groups()
        result[f"p{pct}_ms"] = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx"] = float(errors.group(1)) if errors else 0.0
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        sys.exit("bench_http: wrk is missing: apt-get install wrk")

    runs: dict[str, list[dict[str, float]]] = {}
    state_dir = tempfile.mkdtemp(prefix="idgen-bench-")
    try:
        for round_number in range(1, args.rounds + 1):
            with baseline_server() as base:
                runs.setdefault("baseline", []).append(wrk(base + "/id", args.seconds))
            with idgen_server(state_dir, 1) as base:
                one = wrk(base + "/id", args.seconds)
                runs.setdefault("one", []).append(one)
                runs.setdefault("batch", []).append(wrk(base + "/id?count=4096", args.seconds, connections=8))
                # Half of this round's single-process peak: c connections, each waiting 2 ms between requests.
                target = one["rps"] / 2
                connections = max(1, round(target * (2 + one["p50_ms"] / 4) / 1000))
                paced = wrk(base + "/id", args.seconds, connections=connections, delay_ms=2)
                runs.setdefault("paced", []).append({**paced, "target_rps": target, "connections": connections})
            with idgen_server(state_dir, 2) as base:
                runs.setdefault("two", []).append(wrk(base + "/id", args.seconds))
            print(f"round {round_number}/{args.rounds} done", file=sys.stderr)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    baseline, one, two = med("baseline", "rps"), med("one", "rps"), med("two", "rps")
    batch_ids = med("batch", "rps") * 4096
    paced_p99, paced_rps = med("paced", "p99_ms"), med("paced", "rps")
    rows = [
        (
            "bare aiohttp handler, same body (baseline)",
            f"{baseline:,.0f}",
            "-",
            f"{med('baseline', 'p50_ms'):.2f} / {med('baseline', 'p99_ms'):.2f}",
            "1.00x",
            "",
        ),
        (
            "GET /id, 1 process",
            f"{one:,.0f}",
            f"{one:,.0f}",
            f"{med('one', 'p50_ms'):.2f} / {med('one', 'p99_ms'):.2f}",
            f"{one / baseline:.2f}x baseline",
            "MET" if one / baseline >= 0.9 else "MISSED (>= 0.9x)",
        ),
        (
            "GET /id, --processes 2",
            f"{two:,.0f}",
            f"{two:,.0f}",
            f"{med('two', 'p50_ms'):.2f} / {med('two', 'p99_ms'):.2f}",
            f"{two / one:.2f}x 1 process",
            "MET" if two / one >= 1.4 else "MISSED (>= 1.4x)",
        ),
        (
            "GET /id?count=4096, 1 process",
            f"{med('batch', 'rps'):,.0f}",
            f"{batch_ids:,.0f}",
            f"{med('batch', 'p50_ms'):.2f} / {med('batch', 'p99_ms'):.2f}",
            "-",
            "MET" if batch_ids >= 2e6 else "MISSED (>= 2M IDs/s)",
        ),
        (
            f"GET /id paced at ~half peak ({paced_rps:,.0f} req/s)",
            f"{paced_rps:,.0f}",
            f"{paced_rps:,.0f}",
            f"{med('paced', 'p50_ms'):.2f} / {paced_p99:.2f}",
            "-",
            "MET" if paced_p99 <= 2.0 else "MISSED (p99 <= 2 ms)",
        ),
    ]
    header = ("scenario (wrk, 2 threads)", "requests/s", "IDs/s", "p50 / p99 ms", "ratio", "target")
    errors = sum(r["non_2xx"] for rs in runs.values() for r in rs)
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; Python {sys.version.split()[0]}; "
        f"{os.cpu_count()} CPUs; {args.rounds} rounds x {args.seconds} s, medians; non-2xx responses: {errors:.0f}"
    )
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
        for row in (header, *rows):
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print(json.dumps(runs), file=sys.stderr)
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
