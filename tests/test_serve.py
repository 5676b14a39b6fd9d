"""``idgen serve`` as a process: configuration, start-up failures, readiness, SIGTERM, several processes, ZooKeeper."""

from __future__ import annotations

import itertools
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from polling import poll
from serverproc import REPO, Reply, serve_command, wait_until
from serverproc import ServerProcess as Server
from test_http import assert_error
from zkharness import TEST_CREDENTIALS, ZkServer

from idgen import decode
from idgen.leases.zookeeper import connect


def record(state_dir: Path, worker_id: int) -> dict[str, Any]:
    """The local lease's record of ``worker_id``: its fence and holder history."""
    return json.loads((state_dir / f"worker-{worker_id:05d}.json").read_text())


def ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def increasing(values: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


# -- configuration and start-up ----------------------------------------------------------------------------


def test_the_entry_point_takes_its_configuration_from_the_environment(tmp_path: Path) -> None:
    env = {
        "IDGEN_HOST": "127.0.0.1",
        "IDGEN_PORT": "0",
        "IDGEN_STATE_DIR": str(tmp_path),
        "IDGEN_WORKER_IDS": "7-8",
        "IDGEN_LAYOUT": "twitter",
        "IDGEN_MAX_COUNT": "10",
        "IDGEN_ACCESS_LOG": "true",
        "IDGEN_MAX_LEAD": "0.25",
    }
    with Server(command=[sys.executable, str(REPO / "cmd" / "idgen-serve")], env=env) as server:
        info = server.get("/info").json()
        assert (info["worker_id"], info["layout"]["name"], info["max_count"]) == (7, "twitter", 10)
        assert (info["max_lead_ms"], info["clock_lead_ms"], info["clock_rides"], info["worker_id_switches"]) == (
            250,
            0,
            0,
            0,
        )
        assert decode(server.get("/id").json()["id"], "twitter")["worker"] == 7
        assert_error(server.get("/id?count=11"), 400, "invalid_count")
        access = server.event("access", path="/id?count=11")
        assert (access["method"], access["status"], access["pid"]) == ("GET", 400, server.pid)
        assert access["duration_ms"] >= 0
        assert server.stop() == 0
    for event in server.events:  # every line on stderr is one JSON object with a level and an event
        assert "not_json" not in event, event
        assert event["level"] in ("DEBUG", "INFO", "WARNING", "ERROR") and event.get("event"), event
    assert [e["event"] for e in server.events if e["event"] in ("lease_acquired", "listening", "stopped")] == [
        "lease_acquired",
        "listening",
        "stopped",
    ]


def test_the_access_log_counts_the_bytes_of_each_answer_body(tmp_path: Path) -> None:
    """``bytes`` counted the status line and headers too (aiohttp's ``body_length``): 27 bytes of ``/id`` were 150."""
    requests = [
        ("GET", "/id"),
        ("GET", "/id?count=5&format=hex"),
        ("GET", "/id?count=2000"),
        ("GET", "/id?count=0"),
        ("GET", "/decode/12345"),
        ("GET", "/metrics"),
        ("GET", "/nope"),
        ("POST", "/id"),
        ("HEAD", "/id"),
    ]
    with Server("--state-dir", str(tmp_path), "--access-log", "--max-count", "4096") as server:
        replies = {(method, path): server.get(path, method=method) for method, path in requests}
        for method, path in requests:
            access = server.event("access", method=method, path=path, timeout=10)
            assert access["bytes"] == len(replies[method, path].body), (method, path)
    assert [r.status for r in replies.values()] == [200, 200, 200, 400, 200, 200, 404, 405, 405]
    assert len(replies["GET", "/id?count=2000"].body) > 30_000


def test_no_access_log_by_default(tmp_path: Path) -> None:
    with Server("--state-dir", str(tmp_path)) as server:
        assert server.get("/id").status == 200
        assert server.stop() == 0
    assert not [e for e in server.events if e.get("event") == "access"]


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the listening TCP sockets on ``port``, from ``/proc/net/tcp`` and ``tcp6``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


@pytest.mark.parametrize(("setting", "loop"), [(None, "uvloop"), ("false", "asyncio"), ("true", "uvloop")])
def test_the_server_runs_on_uvloop_unless_told_not_to(tmp_path: Path, setting: str | None, loop: str) -> None:
    """uvloop serves GET /id faster (issue 22); IDGEN_UVLOOP=false keeps the standard loop, for whoever needs it."""
    env = {"IDGEN_UVLOOP": setting} if setting else {}
    with Server("--state-dir", str(tmp_path), env=env) as server:
        assert server.get("/id").status == 200
        assert server.event("listening")["event_loop"] == loop


def test_by_default_the_server_listens_on_loopback_only(tmp_path: Path) -> None:
    """It bound every interface (0.0.0.0): any host that could route to this one could mint IDs and read /info."""
    command = [sys.executable, "-m", "idgen.cli", "serve", "--port", "0"]
    with Server("--state-dir", str(tmp_path), command=command, env={"IDGEN_HOST": ""}) as server:
        assert server.get("/healthz").status == 200
        assert listening_addresses(server.port) == {"0100007F"}  # 127.0.0.1, in the kernel's byte order


PRLIMIT_256 = ["prlimit", "--nofile=256:256", "--"]


def test_the_connection_cap_leaves_descriptors_free_and_a_larger_one_is_refused(tmp_path: Path) -> None:
    with Server("--state-dir", str(tmp_path), command=[*PRLIMIT_256, *serve_command(0)]) as server:
        assert server.event("listening")["max_connections"] == 96  # 256 less 64 for the lease and logs, 96 for bursts
    most = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 160  # the server inherits this process's limit
    with Server("--state-dir", str(tmp_path), "--max-connections", str(most)) as server:
        assert server.event("listening")["max_connections"] == most
    refused = subprocess.run(
        [*PRLIMIT_256, *serve_command(0), "--state-dir", str(tmp_path), "--max-connections", "200"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    (line,) = refused.stderr.splitlines()
    event = json.loads(line)
    assert event["event"] == "start_failed"
    assert "--max-connections 200" in event["message"] and "at most 96" in event["message"], event["message"]


def test_start_fails_cleanly_when_no_worker_id_is_free(tmp_path: Path) -> None:
    with Server("--state-dir", str(tmp_path), "--worker-ids", "5-5"):
        late = Server("--state-dir", str(tmp_path), "--worker-ids", "5-5")
        try:
            assert late.proc.wait(30) == 1
            failure = late.event("start_failed")
        finally:
            late.close()
    assert failure["level"] == "ERROR" and "held by running processes" in failure["message"]
    assert all("not_json" not in e for e in late.events)  # one JSON line, no traceback


def test_bad_options_exit_2_without_a_traceback(tmp_path: Path) -> None:
    for args, env in [
        (["--port", "99999"], {}),
        (["--processes", "0"], {}),
        (["--zk-session-timeout", "nan"], {}),
        ([], {"IDGEN_MAX_COUNT": "lots"}),
        ([], {"IDGEN_ACCESS_LOG": "maybe"}),
        (["--worker-ids", "9-3", "--state-dir", str(tmp_path)], {}),
        (["--layout", "nope", "--state-dir", str(tmp_path)], {}),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "idgen.cli", "serve", "--host", "127.0.0.1", "--port", "0", *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, **env},
        )
        assert result.returncode == 2, (args, env, result.stderr)
        assert "Traceback" not in result.stderr and result.stderr.strip(), (args, result.stderr)


def test_a_count_limit_beyond_65536_and_worker_ids_with_zookeeper_are_refused_in_one_line(tmp_path: Path) -> None:
    """``--max-count`` had no upper bound, and ``--worker-ids`` was silently ignored with ``--zk``."""
    for args, env, words in [
        (["--max-count", "65537"], {}, "'65537' is not a positive whole number (1 to 65536)"),
        ([], {"IDGEN_MAX_COUNT": "100000000"}, "'100000000' is not a positive whole number (1 to 65536)"),
        (["--zk", "127.0.0.1:1", "--worker-ids", "0-3"], {}, "--worker-ids (IDGEN_WORKER_IDS) is for the local"),
        (["--zk", "127.0.0.1:1"], {"IDGEN_WORKER_IDS": "0-3"}, "--worker-ids (IDGEN_WORKER_IDS) is for the local"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "idgen.cli", "serve", "--host", "127.0.0.1", "--port", "0", *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "IDGEN_STATE_DIR": str(tmp_path), **env},
        )
        assert result.returncode == 2, (args, env, result.stderr)
        assert result.stderr.count("\n") == 1 and words in result.stderr, (args, env, result.stderr)


# -- not ready --------------------------------------------------------------------------------------------


def test_not_ready_while_the_clock_is_far_behind_the_fence_left_for_the_only_worker_id(tmp_path: Path) -> None:
    fence_ms = int(time.time() * 1000) + 3_600_000  # a previous holder reserved up to an hour from now
    (tmp_path / "worker-00000.json").write_text(json.dumps({"worker_id": 0, "fence_ms": fence_ms, "holders": []}))
    with Server("--state-dir", str(tmp_path), "--worker-ids", "0-0") as server:
        assert server.get("/healthz").json() == {"status": "ok"}
        ready = server.get("/readyz")
        error = assert_error(ready, 503, "not_ready")
        assert "behind the last timestamp used or reserved, more than the 15000 ms" in error["message"]
        assert ready.headers["Retry-After"] == "1"

        def refused_with_the_failed_switch() -> Any:
            minted = server.get("/id?count=3")  # the first refusal starts a switch; with no other worker ID it fails
            error = assert_error(minted, 503, "clock_behind")
            return error if "no free worker ID has a fence below" in error["message"] else None

        poll(refused_with_the_failed_switch, "the failed switch")
        assert server.get("/id").headers["Retry-After"] == "5"  # a worker ID may free up: not an hour
        info = server.get("/info").json()
        assert (info["ready"], info["worker_id"]) == (False, 0) and "behind" in info["reason"]
        assert server.get("/decode/123").status == 200  # decoding needs no lease
        assert "idgen_ready 0.0" in server.get("/metrics").body.decode()
        assert "behind the last timestamp used" in server.event("not_ready")["reason"]
        assert server.stop() == 0
    assert record(tmp_path, 0)["fence_ms"] >= fence_ms  # nothing minted, and the fence never comes down


# -- SIGTERM -------------------------------------------------------------------------------------------------


def test_sigterm_releases_the_lease_and_the_next_process_takes_the_worker_id(tmp_path: Path) -> None:
    with Server("--state-dir", str(tmp_path)) as first:
        ids = [int(i) for i in first.get("/id?count=10").json()["ids"]]
        worker = first.get("/info").json()["worker_id"]
        began = time.monotonic()
        assert first.stop(signal.SIGTERM) == 0
        assert time.monotonic() - began < 15
    events = [e["event"] for e in first.events]
    assert events.index("stopping") < events.index("lease_released") < events.index("stopped")
    released = record(tmp_path, worker)
    [holder] = [h for h in released["holders"] if h["pid"] == first.pid]
    assert holder["ended_ms"] is not None
    assert released["fence_ms"] == decode(ids[-1])["timestamp_ms"]  # brought down to the last tick used

    with Server("--state-dir", str(tmp_path), "--worker-ids", f"{worker}-{worker}") as second:
        assert second.get("/info").json()["worker_id"] == worker
        assert int(second.get("/id").json()["id"]) > ids[-1]


def test_sigterm_lets_a_batch_in_flight_finish(tmp_path: Path) -> None:
    """Sonyflake mints 256 IDs per 10 ms, so 16384 take 0.64 s: long enough to stop the server meanwhile."""
    with Server("--state-dir", str(tmp_path), "--layout", "sonyflake", "--max-count", "16384") as server:
        replies: list[Reply] = []
        batch = threading.Thread(target=lambda: replies.append(server.get("/id?count=16384")))
        batch.start()
        # Served between the batch's ticks, so the event loop is not held by it; overflow waits show it is running.
        wait_until(lambda: server.get("/info").json()["overflow_waits"] > 0, what="the batch to start")
        metrics = server.get("/metrics").body.decode()
        assert "idgen_overflow_waits_total 0.0" not in metrics
        assert server.stop(signal.SIGTERM) == 0
        batch.join(30)
    [reply] = replies
    assert reply.status == 200
    ids = [int(i) for i in reply.json()["ids"]]
    assert len(ids) == 16384 and increasing(ids)
    assert len({decode(i, "sonyflake")["timestamp_ms"] for i in ids}) >= 64


# -- several processes ---------------------------------------------------------------------------------------


def test_two_processes_share_the_port_with_their_own_worker_ids(tmp_path: Path) -> None:
    with Server("--state-dir", str(tmp_path), "--processes", "2") as server:
        listening = _worker_pids(server, 2)
        assert all(e["port"] == server.port for e in server.events if e.get("event") == "listening")
        seen: dict[int, int] = {}

        def both_seen() -> bool:
            info = server.get("/info").json()
            seen[info["pid"]] = info["worker_id"]
            return len(seen) == 2

        wait_until(both_seen, what="both processes to answer")
        assert sorted(seen) == sorted(listening)
        assert len(set(seen.values())) == 2
        assert all(ppid(pid) == server.pid for pid in seen)

        ids = [int(server.get("/id").json()["id"]) for _ in range(40)]
        assert len(set(ids)) == 40
        assert {decode(i)["worker"] for i in ids} <= set(seen.values())

        # Either process answers for both; a process adds its counts to the shared files every 0.5 s.
        def all_counted() -> str | None:
            text = server.get("/metrics").body.decode()
            return text if "idgen_ids_minted_total 40.0" in text else None

        metrics = wait_until(all_counted, what="both processes' counts in /metrics")
        assert 'idgen_http_requests_total{route="/id",status="200"} 40.0' in metrics
        for pid, worker in seen.items():
            assert f'idgen_worker_id{{pid="{pid}"}} {float(worker)}' in metrics

        assert server.stop(signal.SIGINT) == 0  # forwarded to the workers
    for pid, worker in seen.items():
        [holder] = [h for h in record(tmp_path, worker)["holders"] if h["pid"] == pid]
        assert holder["ended_ms"] is not None
    assert [e.get("codes") for e in server.events if e.get("pid") == server.pid and e["event"] == "stopped"] == [[0, 0]]
    assert not Path(server.event("supervising")["metrics_dir"]).exists()


def _worker_pids(server: Server, n: int) -> list[int]:
    def pids() -> list[int] | None:
        found = [e["pid"] for e in server.events if e.get("event") == "listening"]
        return found if len(found) >= n else None

    return wait_until(pids, what=f"{n} workers listening")


def test_workers_stop_and_release_their_leases_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    with Server("--state-dir", str(tmp_path), "--processes", "2") as server:
        _worker_pids(server, 2)
        workers = {e["pid"]: e["worker_id"] for e in server.events if e.get("event") == "listening"}
        server.proc.kill()
        server.proc.wait(10)

        def released() -> bool:
            holders = [h for w in workers.values() for h in record(tmp_path, w)["holders"] if h["pid"] in workers]
            return len(holders) == 2 and all(h["ended_ms"] is not None for h in holders)

        wait_until(released, what="the orphaned workers to stop and release their leases")
        wait_until(lambda: not any(_running(pid) for pid in workers), what="the workers to exit")
    shutil.rmtree(server.event("supervising")["metrics_dir"])  # a killed supervisor cannot clean up


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_worker_that_cannot_start_stops_the_others(tmp_path: Path) -> None:
    server = Server("--state-dir", str(tmp_path), "--processes", "2", "--worker-ids", "3-3")
    try:
        assert server.proc.wait(30) == 1
    finally:
        server.close()
    assert server.event("start_failed")["level"] == "ERROR"
    assert record(tmp_path, 3)["holders"][-1]["ended_ms"] is not None  # the one that started released its lease


# -- ZooKeeper -----------------------------------------------------------------------------------------------


def test_decode_on_zookeeper_names_this_process_like_the_cli(zk_hosts: str, zk_namespace: str) -> None:
    with Server("--zk", zk_hosts, "--namespace", zk_namespace) as server:
        info = server.get("/info").json()
        assert (info["lease"]["backend"], info["lease"]["namespace"]) == ("zookeeper", zk_namespace)
        assert info["lease"]["session_id"]
        id_ = server.get("/id?format=base32").json()["id"]
        reply = server.get(f"/decode/{id_}")
        assert reply.status == 200
        body = reply.json()
        node = body["node"]
        assert (node["host"], node["pid"], node["address"], node["worker_id"]) == (
            os.uname().nodename,
            server.pid,
            f"127.0.0.1:{server.port}",
            info["worker_id"],
        )
        cli = subprocess.run(
            [sys.executable, "-m", "idgen.cli", "decode", id_, "--zk", zk_hosts, "--namespace", zk_namespace, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout) == body


def test_readiness_follows_the_zookeeper_session(fresh_zk: ZkServer) -> None:
    """Freeze the server past its session timeout: the session expires, the lease is lost and readiness is 503
    until a worker ID can be leased again (the test holds all the others meanwhile), then 200."""
    namespace = "/expiry"
    with Server("--zk", fresh_zk.hosts, "--namespace", namespace, "--zk-session-timeout", "2") as server:
        info = server.get("/info").json()
        worker, old_lease = info["worker_id"], info["lease"]["lease_id"]
        client = connect(fresh_zk.hosts, TEST_CREDENTIALS, connect_timeout_s=15)
        try:
            claim = json.dumps({"host": "test", "pid": 0, "lease_id": "held-by-the-test"}).encode()
            spare = (worker + 1) % 1024
            others = [w for w in range(1024) if w != worker]
            creates = [client.create_async(f"{namespace}/leases/{w}", claim, ephemeral=True) for w in others]
            for create in creates:
                create.get(timeout=15)
            server.proc.send_signal(signal.SIGSTOP)
            try:
                wait_until(
                    lambda: client.exists(f"{namespace}/leases/{worker}") is None,
                    timeout=30,
                    what="the frozen server's session to expire",
                )
                client.create(f"{namespace}/leases/{worker}", claim, ephemeral=True)
            finally:
                server.proc.send_signal(signal.SIGCONT)

            not_ready = wait_until(lambda: _if_status(server.get("/readyz"), 503), what="readiness to drop")
            assert "lease lost" in assert_error(not_ready, 503, "not_ready")["message"]
            minted = server.get("/id")
            assert_error(minted, 503, "no_lease")
            assert int(minted.headers["Retry-After"]) >= 1
            assert server.event("lease_lost")["level"] == "ERROR"
            assert server.event("not_ready")
            assert server.get("/readyz").status == 503  # still: every worker ID is taken

            client.delete(f"{namespace}/leases/{spare}")
            wait_until(lambda: server.get("/readyz").status == 200, timeout=30, what="a new lease")
        finally:
            client.stop()
            client.close()
        info = server.get("/info").json()
        assert info["worker_id"] == spare and info["lease"]["lease_id"] != old_lease
        node = server.get(f"/decode/{server.get('/id').json()['id']}").json()["node"]
        assert (node["pid"], node["worker_id"], node["lease_id"]) == (server.pid, spare, info["lease"]["lease_id"])
        assert server.stop() == 0


def _if_status(reply: Reply, status: int) -> Reply | None:
    return reply if reply.status == status else None


def test_sigterm_exits_promptly_even_with_zookeeper_gone(fresh_zk: ZkServer) -> None:
    with Server("--zk", fresh_zk.hosts, "--namespace", "/gone", "--zk-session-timeout", "4") as server:
        assert server.get("/id").status == 200
        fresh_zk.kill()
        server.event("lease_suspended")
        began = time.monotonic()
        assert server.stop(signal.SIGTERM) == 0  # the release is skipped; the fence stays, which is safe
        assert time.monotonic() - began < 10
    assert "lease_release_failed" in [e.get("event") for e in server.events]
