"""HTTP benchmark for ``idgen serve``, in one run on one machine, with wrk (Debian's) as the load generator.

Measures, interleaved over ``--rounds`` rounds:

- ``GET /id`` on one process, against a bare aiohttp handler that returns a constant JSON body of the same size
  (same aiohttp, access log off in both) on the standard asyncio loop, while ``idgen serve`` runs on its default,
  uvloop: target >= 1.0x (issue 22). Two ways:
  - *paired*, the figure the target is checked on: both servers pinned together to CPU 0 and loaded at the same
    moment, each by its own wrk pinned to CPU 1, for ``--slices`` slices per round; the ratio is requests per
    CPU-second of ``idgen serve`` over the bare server's, slice by slice. Whatever slows the VM slows both alike,
    and a single process is bounded by one core, so this is its throughput ratio with the VM's drift cancelled.
    Paired the same way, in the same round: ``idgen serve`` against the bare handler on uvloop (the second
    baseline), and ``idgen serve --uvloop false`` against the bare handler on asyncio (the loop's A/B);
  - *sequential*: each server alone on both cores with one wrk (drift of +-10% between runs on this VM, so only
    indicative);
- ``GET /id`` with ``--processes 2`` against one process: target >= 1.4x. Both servers run at once and are loaded in
  turn, one-two-two-one, ``--seconds / 2`` each, so that a linear drift cancels. The bare handler's own scaling (two
  processes sharing the port with ``SO_REUSEPORT`` against one) is measured the same way, as the reference: on
  2 cores shared with wrk, nothing scales to 2x;
- ``GET /id?count=4096`` on one process, in IDs/s: target >= 2M;
- p99 latency of ``GET /id`` at half of the single-process peak: target <= 2 ms. Each wrk connection waits
  ``PACE_MS`` after every answer (a Lua ``delay()``), and a short probe sets the number of connections that gives
  the rate. The bare handler is paced at the same rate, as the reference. Why the finest pacing: at one rate, the
  p99 grows with the number of connections that wrk paces, for the bare handler as much as for idgen
  (``bench_pacing.py``).

    python bench/bench_http.py [--seconds 10] [--rounds 3] [--slices 8] [--markdown]

wrk shares the 2 cores with the server (about 12-15 us of CPU per request), so every figure is "server + wrk on
the same 2 cores". Locust is not used here: it tops out near 9k requests/s per process on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the server-process helpers
from serverproc import serve_command, wait_http_ok, wait_until

CONNECTIONS = 64
PIN_CPU0 = ("taskset", "-c", "0")
THREADS = 2
SAMPLE_BODY = b'{"id":"249776164925612032"}'  # what GET /id returns, byte for byte in length
PACED_LUA = """
local delay_ms = tonumber(os.getenv("WRK_DELAY_MS"))
function delay() return delay_ms end
"""
PACE_MS = 1  # the paced runs' wait between an answer and the next request: wrk's finest delay()


EVENT_LOOPS = ("asyncio", "uvloop")  # modules with a new_event_loop() for the bare servers


def handler_server(handler: str, setup: str = "", event_loop: str = "asyncio") -> str:
    """Python source of a bare aiohttp server with one route, ``GET /id`` running ``handler`` (the body of
    ``async def handler(request)``, one statement per line); ``setup`` runs first. Same aiohttp settings as the
    baseline's, on ``event_loop``'s loop (one of ``EVENT_LOOPS``; asyncio's is what ``run_app`` makes by default).
    Arguments: the port, then a state directory (for a ``Generator``)."""
    if event_loop not in EVENT_LOOPS:
        raise ValueError(f"event_loop must be one of {EVENT_LOOPS}, not {event_loop!r}")
    body = "".join(f"    {line}\n" for line in handler.splitlines())
    return f"""import sys
import {event_loop}
from aiohttp import hdrs, web
{setup}
async def handler(request):
{body}app = web.Application()
app.router.add_get("/id", handler)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=lambda _: print("up", flush=True),
            reuse_port=True, loop={event_loop}.new_event_loop())
"""


MINT_SETUP = "from idgen import Generator\nnext_id = Generator(state_dir=sys.argv[2]).next_id"
BASELINE_SERVERS = {
    loop: handler_server(
        'return web.Response(body=BODY, content_type="application/json")', f"BODY = {SAMPLE_BODY!r}", loop
    )
    for loop in EVENT_LOOPS
}
# The floor for any handler that mints: the bare handler, its body made from Generator.next_id() (local lease).
MINTING_BASELINE_SERVER = handler_server(
    """return web.Response(body=b'{"id":"%d"}' % next_id(), content_type="application/json")""", MINT_SETUP
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Served:
    url: str  # the base URL
    pid: int


@contextmanager
def running(command: list[str], ready_path: str | None, copies: int = 1) -> Iterator[Served]:
    """Start ``copies`` of ``command`` with ``{port}`` replaced by one free port, which they share with
    ``SO_REUSEPORT``. Each is waited for: until ``ready_path`` answers 200, or, with ``ready_path`` None, until it
    prints a line (the bare servers do once listening: with several on one port, a URL cannot tell them apart).
    ``pid`` is the first copy's."""
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(copies):
            proc = subprocess.Popen(
                [part.replace("{port}", str(port)) for part in command],
                stdout=subprocess.DEVNULL if ready_path else subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            procs.append(proc)
            if ready_path:
                wait_http_ok(base + ready_path, proc)
            elif not (select.select([proc.stdout], [], [], 30)[0] and proc.stdout.readline()):
                raise RuntimeError(f"{command[:4]} did not start listening")
        yield Served(base, procs[0].pid)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def idgen_server(state_dir: str, processes: int, pin: tuple[str, ...] = (), *, uvloop: bool = True) -> Iterator[Served]:
    """``idgen serve`` (on uvloop, its default, unless ``uvloop`` is False: ``--uvloop false``), yielded once each
    of its ``processes`` has answered (they share the port)."""
    options = ["--state-dir", state_dir, "--processes", str(processes), "--uvloop", str(uvloop).lower()]
    command = [*pin, *serve_command("{port}", *options)]
    with running(command, "/readyz") as served:
        answered: set[int] = set()

        def all_answered() -> bool:
            with urllib.request.urlopen(served.url + "/info", timeout=2) as reply:
                answered.add(json.load(reply)["pid"])
            return len(answered) == processes

        wait_until(all_answered, what=f"all {processes} processes of idgen serve to answer")
        yield served


def baseline_server(
    pin: tuple[str, ...] = (), processes: int = 1, event_loop: str = "asyncio"
) -> AbstractContextManager[Served]:
    """The bare handler with the constant body, on ``event_loop``'s loop."""
    return running([*pin, sys.executable, "-c", BASELINE_SERVERS[event_loop], "{port}"], None, processes)


def handler_server_process(source: str, state_dir: str, pin: tuple[str, ...] = ()) -> AbstractContextManager[Served]:
    """A server from :func:`handler_server` source."""
    return running([*pin, sys.executable, "-c", source, "{port}", state_dir], None)


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


def paced(url: str, rate: float, seconds: int, delay_ms: int = PACE_MS) -> dict[str, float]:
    """wrk at about ``rate`` requests/s, each connection waiting ``delay_ms`` after every answer (0: not at all, a
    closed loop). A 2 s probe sets how many connections that takes; the result also holds ``connections``."""
    connections = max(THREADS, round(rate * (delay_ms + 0.5) / 1000))
    probe = wrk(url, 2, connections, delay_ms or None)
    connections = max(THREADS, round(connections * rate / probe["rps"]))
    return {**wrk(url, seconds, connections, delay_ms or None), "connections": connections}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def paired(
    candidate: AbstractContextManager[Served], slices: int, seconds: int, bare_event_loop: str = "asyncio"
) -> list[float]:
    """One round of the paired single-process measurement: per slice, ``candidate``'s requests per CPU-second over
    the bare server's (on ``bare_event_loop``), both pinned to CPU 0 and loaded at once by a wrk each on CPU 1. The
    first slice warms up."""
    with baseline_server(PIN_CPU0, event_loop=bare_event_loop) as bare, candidate as idgen:
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


def require_tools(program: str) -> None:
    """Exit with one line unless wrk, taskset and 2 CPUs (for the paired measurement) are there."""
    if not shutil.which("wrk"):
        sys.exit(f"{program}: wrk is missing: apt-get install wrk")
    if not shutil.which("taskset") or (os.cpu_count() or 1) < 2:
        sys.exit(f"{program}: the paired measurement needs taskset and 2 CPUs")


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]], markdown: bool) -> None:
    """``rows`` under ``header``, as a Markdown table or as aligned columns."""
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
        for row in (header, *rows):
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slices", type=int, default=8, help="paired slices per round (each --seconds // 5 long)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    if args.slices < 2 or args.rounds < 1 or args.seconds < 1:
        parser.error("--slices must be at least 2 (for quartiles), --rounds and --seconds at least 1")
    require_tools("bench_http")

    runs: dict[str, list[dict[str, float]]] = {}
    paired_rounds: list[list[float]] = []  # idgen serve (uvloop) against the bare handler on asyncio: the target
    uvloop_rounds: list[list[float]] = []  # idgen serve (uvloop) against the bare handler on uvloop
    asyncio_rounds: list[list[float]] = []  # idgen serve --uvloop false against the bare handler on asyncio
    floor_rounds: list[list[float]] = []
    scaling: dict[str, list[float]] = {}  # per round: two processes' requests/s over one's
    state_dir = tempfile.mkdtemp(prefix="idgen-bench-")
    try:
        for round_number in range(1, args.rounds + 1):
            slice_s = max(1, args.seconds // 5)
            paired_rounds.append(paired(idgen_server(state_dir, 1, PIN_CPU0), args.slices, slice_s))
            uvloop_rounds.append(paired(idgen_server(state_dir, 1, PIN_CPU0), args.slices, slice_s, "uvloop"))
            asyncio_rounds.append(paired(idgen_server(state_dir, 1, PIN_CPU0, uvloop=False), args.slices, slice_s))
            floor_rounds.append(
                paired(
                    handler_server_process(MINTING_BASELINE_SERVER, state_dir + "-floor", PIN_CPU0),
                    args.slices,
                    slice_s,
                )
            )
            with (
                baseline_server() as bare_one,
                baseline_server(processes=2) as bare_two,
                idgen_server(state_dir, 1) as one,
                idgen_server(state_dir, 2) as two,
            ):
                served = {"baseline": bare_one, "bare_two": bare_two, "one": one, "two": two}
                for single, double in (("one", "two"), ("baseline", "bare_two")):  # one-two-two-one: drift cancels
                    for name in (single, double, double, single):
                        runs.setdefault(name, []).append(wrk(served[name].url + "/id", max(1, args.seconds // 2)))
                    scaling.setdefault(double, []).append(
                        sum(r["rps"] for r in runs[double][-2:]) / sum(r["rps"] for r in runs[single][-2:])
                    )
                runs.setdefault("batch", []).append(wrk(one.url + "/id?count=4096", args.seconds, connections=8))
                half_peak = statistics.mean(r["rps"] for r in runs["one"][-2:]) / 2  # this round's
                for name, server in (("paced", one), ("bare_paced", bare_one)):
                    result = paced(server.url + "/id", half_peak, args.seconds)
                    runs.setdefault(name, []).append({**result, "target_rps": half_peak})
            print(f"round {round_number}/{args.rounds} done", file=sys.stderr)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
        shutil.rmtree(state_dir + "-floor", ignore_errors=True)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    baseline, one, two = med("baseline", "rps"), med("one", "rps"), med("two", "rps")
    idgen_scaling, bare_scaling = statistics.median(scaling["two"]), statistics.median(scaling["bare_two"])

    def per_round(ratios: list[float]) -> str:
        return ", ".join(f"{ratio:.2f}" for ratio in ratios)

    batch_ids = med("batch", "rps") * 4096
    paced_p99 = med("paced", "p99_ms")

    def paced_cells(name: str) -> tuple[str, str, str, str]:
        """Requests/s (with the share of half the peak that it is), IDs/s, p50 / p99, and each round's p99."""
        share = statistics.median(r["rps"] / r["target_rps"] for r in runs[name])
        return (
            f"{med(name, 'rps'):,.0f} ({share:.0%} of the aim; {med(name, 'connections'):.0f} connections)",
            f"{med(name, 'rps'):,.0f}" if name == "paced" else "-",
            f"{med(name, 'p50_ms'):.2f} / {med(name, 'p99_ms'):.2f}",
            "p99 per round: " + ", ".join(f"{r['p99_ms']:.2f}" for r in runs[name]),
        )

    def summary(rounds: list[list[float]]) -> tuple[float, str]:
        """Median over all slices, and a cell with it, the quartiles and each round's median."""
        slices = [ratio for round_ratios in rounds for ratio in round_ratios]
        q1, _, q3 = statistics.quantiles(slices, n=4)
        per_round = ", ".join(f"{statistics.median(r):.2f}" for r in rounds)
        median = statistics.median(slices)
        return median, f"**{median:.3f}x** baseline (quartiles {q1:.2f}-{q3:.2f}; rounds {per_round})"

    paired_ratio, paired_cell = summary(paired_rounds)
    _, uvloop_cell = summary(uvloop_rounds)
    _, asyncio_cell = summary(asyncio_rounds)
    _, floor_cell = summary(floor_rounds)
    rows = [
        (
            "bare aiohttp handler, same body, asyncio loop (baseline)",
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
            f"GET /id, 1 process (uvloop), paired on one core ({args.rounds} x {args.slices} slices)",
            "-",
            "-",
            "-",
            paired_cell,
            "MET" if paired_ratio >= 1.0 else "MISSED (>= 1.0x)",
        ),
        ("second baseline: GET /id (uvloop), paired with the bare handler on uvloop", "-", "-", "-", uvloop_cell, ""),
        ("before: GET /id with --uvloop false (asyncio), paired", "-", "-", "-", asyncio_cell, ""),
        ("floor: bare handler minting with Generator.next_id(), paired", "-", "-", "-", floor_cell, ""),
        (
            "GET /id, --processes 2 (loaded in turn with 1 process)",
            f"{two:,.0f}",
            f"{two:,.0f}",
            f"{med('two', 'p50_ms'):.2f} / {med('two', 'p99_ms'):.2f}",
            f"**{idgen_scaling:.2f}x** 1 process (rounds {per_round(scaling['two'])})",
            "MET" if idgen_scaling >= 1.4 else "MISSED (>= 1.4x)",
        ),
        (
            "reference: bare handler, 2 processes on one port",
            f"{med('bare_two', 'rps'):,.0f}",
            "-",
            f"{med('bare_two', 'p50_ms'):.2f} / {med('bare_two', 'p99_ms'):.2f}",
            f"{bare_scaling:.2f}x 1 bare process (rounds {per_round(scaling['bare_two'])})",
            "",
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
            f"GET /id paced at half the peak (each connection waits {PACE_MS} ms)",
            *paced_cells("paced"),
            "MET" if paced_p99 <= 2.0 else "MISSED (p99 <= 2 ms)",
        ),
        ("reference: bare handler paced at the same rate", *paced_cells("bare_paced"), ""),
    ]
    header = ("scenario (wrk, 2 threads)", "requests/s", "IDs/s", "p50 / p99 ms", "ratio", "target")
    errors = sum(r["non_2xx"] for rs in runs.values() for r in rs)
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; Python {sys.version.split()[0]}; "
        f"{os.cpu_count()} CPUs; {args.rounds} rounds x {args.seconds} s, medians; non-2xx responses: {errors:.0f}"
    )
    print_table(header, rows, args.markdown)
    raw = {"paired": paired_rounds, "paired_uvloop": uvloop_rounds, "paired_asyncio": asyncio_rounds}
    print(json.dumps({**runs, **raw, "floor": floor_rounds, "scaling": scaling}), file=sys.stderr)
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
