"""Scenario 13: the HTTP boundary under hostile clients, against real ``idgen serve`` processes.

- 13a. Slow clients (slowloris) against a server limited to 256 open files: 400 connections that each send half a
  request head and then a header line a second, reopened when closed, while steady load runs. A normal request is
  answered within 15 s, ``/readyz`` stays 200, the attack's connections are closed within the head deadline, an
  idle keep-alive connection is closed after the idle bound, and the log stays short.
- 13b. Big answers: 48 parallel ``GET /id?count=65536`` on a server with ``--max-count 65536``. Its peak RSS stays
  within 128 MiB of its idle RSS; every answer is whole, or a 503 ``busy`` with ``Retry-After``.
"""

from __future__ import annotations

import http.client
import json
import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median

from faultkit import IdgenServer
from loadclient import LoadClient, Record, Report, check
from serverproc import serve_command

PRLIMIT_256 = ["prlimit", "--nofile=256:256", "--"]
MiB = 1 << 20


class Slowloris:
    """``connections`` connections to ``host:port``, each sent half a request head, then one header line a second;
    every second, closed ones are reopened. Records how long the server let each connection live."""

    def __init__(self, host: str, port: int, connections: int) -> None:
        self.address, self.connections = (host, port), connections
        self.lifetimes_s: list[float] = []
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slowloris", daemon=True)

    def start(self) -> Slowloris:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        born: dict[socket.socket, float] = {}
        try:
            while not self._stop.is_set():
                while len(born) < self.connections:
                    sock = socket.socket()
                    sock.setblocking(False)
                    sock.connect_ex(self.address)
                    selector.register(sock, selectors.EVENT_READ)
                    born[sock] = time.monotonic()
                    self.opened += 1
                    self._send(sock, b"GET /id HTTP/1.1\r\nHost: idgen\r\n")
                deadline = time.monotonic() + 1
                while (left := deadline - time.monotonic()) > 0:
                    for key, _ in selector.select(left):  # readable: the server closed it (or answered)
                        self._close(key.fileobj, selector, born)  # type: ignore[arg-type]
                for sock in list(born):
                    if not self._send(sock, b"X-Slow: %d\r\n" % self.opened):
                        self._close(sock, selector, born)
        finally:
            for sock in list(born):
                selector.unregister(sock)
                sock.close()
            selector.close()

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> bool:
        try:
            sock.send(data)
        except BlockingIOError:
            return True  # still connecting
        except OSError:
            return False
        return True

    def _close(self, sock: socket.socket, selector: selectors.BaseSelector, born: dict[socket.socket, float]) -> None:
        self.lifetimes_s.append(time.monotonic() - born.pop(sock))
        selector.unregister(sock)
        sock.close()


IDLE_S = 10.0  # --idle-timeout of the server (20 s by default), above the 5 s head deadline the attack runs into


def test_slow_clients_cannot_starve_a_server_limited_to_256_files(
    tmp_path: Path,
    spawn_server: Callable[..., IdgenServer],
    start_load: Callable[..., LoadClient],
    fault_results: list[Report],
) -> None:
    server = spawn_server(
        "s", "--state-dir", str(tmp_path), "--idle-timeout", f"{IDLE_S:g}", command=[*PRLIMIT_256, *serve_command(0)]
    )
    target = server.wait_ready()
    idle = http.client.HTTPConnection(target.host, target.port, timeout=5)
    idle.request("GET", "/healthz")
    assert idle.getresponse().read()  # a keep-alive connection, now idle
    idle_since = time.monotonic()
    load = start_load(target, rate=100)
    lines_before = len(server.events)
    attack = Slowloris(target.host, target.port, 400).start()
    probes: list[tuple[float, int]] = []  # (seconds to answer GET /id on a new connection, /readyz status)
    not_ready = resets = 0
    started = time.monotonic()
    try:
        while time.monotonic() - started < IDLE_S + 5:
            sent = time.monotonic()
            status = 0  # no answer within 15 s
            while status == 0 and time.monotonic() - sent < 15:
                try:
                    status = server.get("/id", timeout=15).status
                except OSError:  # reset before any answer, as a GET may be under a flood of new connections: retry
                    resets += 1
            probes.append((time.monotonic() - sent, status))
            not_ready += not server.ready()
            time.sleep(0.5)
    finally:
        attack.stop()
    records = load.stop()
    idle_closed = idle_connection_closed(idle)
    lines = len(server.events) - lines_before

    # At the connection cap the server may close the load's idle keep-alive connection (the longest idle goes when
    # no connection is waiting for a head): a request sent on it just then gets no answer, as HTTP allows; a client
    # resends it on a new connection. Nothing else may fail.
    report = check(
        records,
        "13a. 400 slowloris connections, 256 files (RLIMIT_NOFILE)",
        allow=lambda r: r.status == 0 and r.code == "RemoteDisconnected",
    )
    slowest = max(s for s, _ in probes)
    report.notes += [
        f"{len(probes)} probes on new connections: all {sorted({st for _, st in probes})}, slowest {slowest:.2f} s"
        f" ({resets} connections reset before an answer and retried)",
        f"/readyz not 200 (or no answer in 2 s) {not_ready} times; {lines} log lines in"
        f" {time.monotonic() - started:.0f} s",
        f"the attack opened {attack.opened} connections; the server closed {len(attack.lifetimes_s)}, half within"
        f" {median(attack.lifetimes_s or [0]):.1f} s of the connect call (queueing in the listen backlog included)",
        f"an idle keep-alive connection closed after {IDLE_S:g} s (--idle-timeout): {idle_closed}"
        f" (checked {time.monotonic() - idle_since:.0f} s after its answer)",
    ]
    fault_results.append(report)
    report.assert_ok()
    assert {status for _, status in probes} == {200} and slowest < 15
    assert not_ready == 0
    assert lines < 300, server.log
    assert len(attack.lifetimes_s) > 400  # every connection of the attack was closed, and its replacement too
    assert {e.get("event") for e in server.events} & {"head_timeout", "connection_limit"}  # closed by the server
    assert idle_closed
    assert not [e for e in server.events if e.get("level") == "ERROR" or "exc_info" in e or "not_json" in e]
    assert not [e for e in server.events if e.get("event") == "accept_failed"]  # the cap left descriptors free


def idle_connection_closed(connection: http.client.HTTPConnection) -> bool:
    """Whether the server closed ``connection``'s socket: readable with nothing to read."""
    sock = connection.sock
    assert sock is not None
    sock.settimeout(0)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        connection.close()


def rss_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (the peak) of ``pid``, in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}


def test_big_answers_in_parallel_stay_within_the_memory_budget(
    tmp_path: Path, spawn_server: Callable[..., IdgenServer], fault_results: list[Report]
) -> None:
    server = spawn_server("s", "--state-dir", str(tmp_path), "--max-count", "65536")
    target = server.wait_ready()
    assert server.get("/id").status == 200
    idle = rss_kib(server.pid)["VmRSS"]

    def big(number: int) -> Record:
        sent = time.monotonic()
        connection = http.client.HTTPConnection(target.host, target.port, timeout=60)
        try:
            connection.request("GET", "/id?count=65536")
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        done = time.monotonic()
        if response.status != 200:
            code = json.loads(body)["error"]["code"]
            return Record(sent, done, number, "s", response.status, code, response.getheader("Retry-After"), ())
        ids = tuple(int(i) for i in json.loads(body)["ids"])
        return Record(sent, done, number, "s", 200, "", None, ids)

    with ThreadPoolExecutor(48) as pool:
        records = list(pool.map(big, range(48)))
    peak = rss_kib(server.pid)["VmHWM"]

    report = check(records, "13b. 48 parallel count=65536 (--max-count 65536)", allow=lambda r: r.code == "busy")
    report.notes.append(
        f"RSS idle {idle / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB (+{(peak - idle) / 1024:.0f} MiB);"
        f" {sum(r.ok for r in records)} of 48 answered whole"
    )
    fault_results.append(report)
    report.assert_ok()
    assert all(len(r.ids) == 65536 for r in records if r.ok)
    assert peak - idle < 128 * 1024
