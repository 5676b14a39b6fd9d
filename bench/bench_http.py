"""HTTP benchmark for ``idgen serve``, in one run on one machine, with wrk (Debian's) as the load generator.

Measures, interleaved over ``--rounds`` rounds:

- ``GET /id`` on one process, against a bare aiohttp handler that returns a constant JSON body of the same size
  (same aiohttp, same event loop policy, access log off in both): target >= 0.9x. Two ways:
  - *paired*, the figure the target is checked on: both servers pinned together to CPU 0 and loaded at the same
    moment, each by its own wrk pinned to CPU 1, for ``--slices`` slices per round; the ratio is requests per
    CPU-second of ``idgen serve`` over the bare server's, slice by slice. Whatever slows the VM slows both alike,
    and a single process is bounded by one core, so this is its throughput ratio with the VM's drift cancelled;
  - *sequential*: each server alone on both cores with one wrk, one after the other (drift of +-10% between runs
    on this VM, so only indicative);
- ``GET /id`` with ``--processes 2`` against one process: target >= 1.4x;
- ``GET /id?count=4096`` on one process, in IDs/s: target >= 2M;
- p99 latency of ``GET /id`` at half of the single-process peak, paced by a wrk Lua ``delay()``: target <= 2 ms.

    python bench/bench_http.py [--seconds 10] [--rounds 3] [--slices 8] [--markdown]

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
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the server-process helpers
from serverproc import serve_command, wait_http_ok

CONNECTIONS = 64
PIN_CPU0 = ("taskset", "-c", "0")
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
# The floor for any handler that mints: the bare handler, its body made from Generator.next_id() (local lease).
MINTING_BASELINE_SERVER = """
import sys
from aiohttp import web
from idgen import Generator
next_id = Generator(state_dir=sys.argv[2]).next_id
async def handler(request):
    return web.Response(body=b'{"id":"%d"}' % next_id(), content_type="application/json")
app = web.Application()
app.router.add_get("/id", handler)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Served:
    url: str  # the base URL
    pid: int


@contextmanager
def running(command: list[str], ready_path: str) -> Iterator[Served]:
    """Start ``command`` with ``{port}`` replaced by a free port; yield it once ``ready_path`` answers 200."""
    port = free_port()
    proc = subprocess.Popen(
        [part.replace("{port}", str(port)) for part in command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(base + ready_path, proc)
        yield Served(base, proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def idgen_server(state_dir: str, processes: int, pin: tuple[str, ...] = ()) -> AbstractContextManager[Served]:
    return running([*pin, *serve_command("{port}", "--state-dir", state_dir, "--processes", str(processes))], "/readyz")


def baseline_server(pin: tuple[str, ...] = ()) -> AbstractContextManager[Served]:
    return running([*pin, sys.executable, "-c", BASELINE_SERVER, "{port}", SAMPLE_BODY.decode()], "/id")


def minting_baseline_server(state_dir: str, pin: tuple[str, ...] = ()) -> AbstractContextManager[Served]:
    return running([*pin, sys.executable, "-c", MINTING_BASELINE_SERVER, "{port}", state_dir], "/id")


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def paired(candidate: AbstractContextManager[Served], slices: int, seconds: int) -> list[float]:
    """One round of the paired single-process measurement: per slice, ``candidate``'s requests per CPU-second over
    the bare server's, both pinned to CPU 0 and loaded at once by a wrk each on CPU 1. The first slice warms up."""
    with baseline_server(PIN_CPU0) as bare, candidate as idgen:
        pids = [bare.pid, idgen.pid]  # taskset execs the server: same pid
        ratios = []
        for slice_number in range(slices + 1):
            before = [cpu_seconds(pid) for pid in pids]
            loads = [
                subprocess.Popen(
                    ["taskset", "-c", "1", "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", server.url + "/id"],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for server in (bare, idgen)
            ]
            outputs = [load.communicate(timeout=seconds + 60)[0] for load in loads]
            used = [cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
            if any("Non-2xx" in out for out in outputs):
                raise RuntimeError("a paired run got errors:\n" + "\n".join(outputs))
            done = [int(re.search(r"(\d+) requests in", out).group(1)) for out in outputs]
            if slice_number:
                ratios.append((done[1] / used[1]) / (done[0] / used[0]))
        return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slices", type=int, default=8, help="paired slices per round (each --seconds // 5 long)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    if args.slices < 2 or args.rounds < 1 or args.seconds < 1:
        parser.error("--slices must be at least 2 (for quartiles), --rounds and --seconds at least 1")
    if not shutil.which("wrk"):
        sys.exit("bench_http: wrk is missing: apt-get install wrk")
    if not shutil.which("taskset") or (os.cpu_count() or 1) < 2:
        sys.exit("bench_http: the paired measurement needs taskset and 2 CPUs")

    runs: dict[str, list[dict[str, float]]] = {}
    paired_rounds: list[list[float]] = []
    floor_rounds: list[list[float]] = []
    state_dir = tempfile.mkdtemp(prefix="idgen-bench-")
    try:
        for round_number in range(1, args.rounds + 1):
            slice_s = max(1, args.seconds // 5)
            paired_rounds.append(paired(idgen_server(state_dir, 1, PIN_CPU0), args.slices, slice_s))
            floor_rounds.append(paired(minting_baseline_server(state_dir + "-floor", PIN_CPU0), args.slices, slice_s))
            with baseline_server() as bare:
                runs.setdefault("baseline", []).append(wrk(bare.url + "/id", args.seconds))
            with idgen_server(state_dir, 1) as idgen:
                one = wrk(idgen.url + "/id", args.seconds)
                runs.setdefault("one", []).append(one)
                runs.setdefault("batch", []).append(wrk(idgen.url + "/id?count=4096", args.seconds, connections=8))
                # Half of this round's single-process peak: c connections, each waiting 2 ms between requests.
                target = one["rps"] / 2
                connections = max(1, round(target * (2 + one["p50_ms"] / 4) / 1000))
                paced = wrk(idgen.url + "/id", args.seconds, connections=connections, delay_ms=2)
                runs.setdefault("paced", []).append({**paced, "target_rps": target, "connections": connections})
            with idgen_server(state_dir, 2) as idgen:
                runs.setdefault("two", []).append(wrk(idgen.url + "/id", args.seconds))
            print(f"round {round_number}/{args.rounds} done", file=sys.stderr)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
        shutil.rmtree(state_dir + "-floor", ignore_errors=True)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    baseline, one, two = med("baseline", "rps"), med("one", "rps"), med("two", "rps")
    batch_ids = med("batch", "rps") * 4096
    paced_p99, paced_rps = med("paced", "p99_ms"), med("paced", "rps")

    def summary(rounds: list[list[float]]) -> tuple[float, str]:
        """Median over all slices, and a cell with it, the quartiles and each round's median."""
        slices = [ratio for round_ratios in rounds for ratio in round_ratios]
        q1, _, q3 = statistics.quantiles(slices, n=4)
        per_round = ", ".join(f"{statistics.median(r):.2f}" for r in rounds)
        median = statistics.median(slices)
        return median, f"**{median:.2f}x** baseline (quartiles {q1:.2f}-{q3:.2f}; rounds {per_round})"

    paired_ratio, paired_cell = summary(paired_rounds)
    _, floor_cell = summary(floor_rounds)
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
            "GET /id, 1 process (sequential, indicative)",
            f"{one:,.0f}",
            f"{one:,.0f}",
            f"{med('one', 'p50_ms'):.2f} / {med('one', 'p99_ms'):.2f}",
            f"{one / baseline:.2f}x baseline",
            "",
        ),
        (
            f"GET /id, 1 process, paired on one core ({args.rounds} x {args.slices} slices)",
            "-",
            "-",
            "-",
            paired_cell,
            "MET" if paired_ratio >= 0.9 else "MISSED (>= 0.9x)",
        ),
        ("floor: bare handler minting with Generator.next_id(), paired", "-", "-", "-", floor_cell, ""),
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
    print(json.dumps({**runs, "paired": paired_rounds, "floor": floor_rounds}), file=sys.stderr)
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
