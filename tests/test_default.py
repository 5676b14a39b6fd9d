"""``idgen.next_id()`` / ``idgen.next_ids(n)``: one ID source per process, made on first use from ``IDGEN_*``.

Real leases (a local state directory, the session ZooKeeper), a real server for ``IDGEN_URL``, real forks and real
interpreters exiting.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from forks import Child
from serverproc import ServerProcess
from zkharness import TEST_CREDENTIALS

import idgen
from idgen import Generator, InvalidInput, decode
from idgen.client import Client
from idgen.default import source_from_env
from idgen.errors import NoLease
from idgen.leases.local import LocalLease
from idgen.leases.zookeeper import ZK_AUTH_ENV, ZkLease

PER_PROCESS = 5000


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A clean ``IDGEN_*`` environment with a private state directory; the default is forgotten after each test."""
    for name in [name for name in os.environ if name.startswith("IDGEN_")]:
        monkeypatch.delenv(name)
    state = tmp_path / "state"
    monkeypatch.setenv("IDGEN_STATE_DIR", str(state))
    yield state
    idgen.reset_default()


def test_next_id_mints_from_one_generator_made_on_first_use(environment: Path) -> None:
    ids = [idgen.next_id() for _ in range(1000)] + idgen.next_ids(1000)
    assert ids == sorted(set(ids)) and len(ids) == 2000
    source = idgen.default_generator()
    assert source is idgen.default_generator()
    assert isinstance(source, Generator) and isinstance(source.lease, LocalLease)
    assert source.lease.state_dir == environment  # IDGEN_STATE_DIR, as `idgen serve` reads it
    assert {decode(i)["worker"] for i in ids} == {source.worker_id}


@pytest.mark.parametrize(("value", "max_lead_ms"), [(None, 15_000), ("0", 0), ("2.5", 2_500)])
def test_idgen_max_lead_sets_how_far_ids_may_run_ahead_of_the_clock(
    monkeypatch: pytest.MonkeyPatch, value: str | None, max_lead_ms: int
) -> None:
    if value is not None:
        monkeypatch.setenv("IDGEN_MAX_LEAD", value)
    source = idgen.default_generator()
    assert isinstance(source, Generator) and source.max_lead_ms == max_lead_ms


def test_threads_racing_first_use_make_one_generator() -> None:
    start = threading.Barrier(8)
    seen: list[object] = []

    def first_use() -> None:
        start.wait()
        seen.append(idgen.default_generator())

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 8 and len({id(s) for s in seen}) == 1


def test_reset_default_closes_it_and_the_next_use_makes_a_new_one() -> None:
    first = idgen.default_generator()
    last = idgen.next_id()
    idgen.reset_default()
    with pytest.raises(NoLease, match="closed"):
        first.next_id()
    assert idgen.default_generator() is not first
    assert idgen.next_id() > last


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("IDGEN_LAYOUT", "no-such-layout"),
        ("IDGEN_WORKER_IDS", "seven"),
        ("IDGEN_URL", "ftp://127.0.0.1:8080"),
        ("IDGEN_ZK_SESSION_TIMEOUT", "soon"),
        ("IDGEN_MAX_LEAD", "a while"),
    ],
)
def test_a_bad_variable_is_invalid_input_that_names_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    if variable == "IDGEN_ZK_SESSION_TIMEOUT":
        monkeypatch.setenv("IDGEN_ZK", "127.0.0.1:1")
        monkeypatch.delenv("IDGEN_STATE_DIR")
    monkeypatch.setenv(variable, value)
    with pytest.raises(InvalidInput, match=variable) as raised:
        idgen.next_id()
    assert "\n" not in str(raised.value)


def test_url_and_lease_variables_together_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDGEN_URL", "http://127.0.0.1:8080")
    with pytest.raises(InvalidInput, match="IDGEN_STATE_DIR"):
        idgen.next_id()


def test_with_idgen_url_it_is_a_client_of_the_servers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with (
        ServerProcess("--state-dir", str(tmp_path / "a")) as first,
        ServerProcess("--state-dir", str(tmp_path / "a")) as second,
    ):
        first.started(), second.started()
        monkeypatch.delenv("IDGEN_STATE_DIR")
        monkeypatch.setenv("IDGEN_URL", f"http://127.0.0.1:{first.port}, http://127.0.0.1:{second.port}")
        ids = idgen.next_ids(1000)
        assert isinstance(idgen.default_generator(), Client)
        assert len(set(ids)) == 1000
        assert [s.url for s in idgen.default_generator().status()] == [  # type: ignore[union-attr]
            f"http://127.0.0.1:{first.port}",
            f"http://127.0.0.1:{second.port}",
        ]


@pytest.fixture
def one_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server named in ``IDGEN_URL`` (with ``--max-count 100``: smaller than the client's batch grows to)."""
    with ServerProcess("--state-dir", str(tmp_path / "ids"), "--max-count", "100") as server:
        server.started()
        monkeypatch.delenv("IDGEN_STATE_DIR")
        monkeypatch.setenv("IDGEN_URL", f"http://127.0.0.1:{server.port}")
        yield server


def test_the_client_default_keeps_within_the_servers_max_count(one_server: ServerProcess) -> None:
    """Before: the batch, sized from demand, outgrew the server's ``--max-count`` and every request was refused
    (AllServersFailed after 250 IDs). The client learns the limit from the server's ``/info``."""
    ids = [idgen.next_id() for _ in range(3000)] + idgen.next_ids(3000)
    assert len(set(ids)) == 6000
    source = idgen.default_generator()
    assert isinstance(source, Client) and source.status()[0].last_error is None


def test_client_options_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, one_server: ServerProcess) -> None:
    monkeypatch.setenv("IDGEN_CLIENT_TIMEOUT", "0.5")
    monkeypatch.setenv("IDGEN_CLIENT_RETRIES", "0")
    monkeypatch.setenv("IDGEN_CLIENT_BATCH", "10")
    monkeypatch.setenv("IDGEN_CLIENT_LOW_WATER", "0")
    monkeypatch.setenv("IDGEN_CLIENT_PROBE_INTERVAL", "off")
    monkeypatch.setenv("IDGEN_CLIENT_MAX_AGE", "none")
    idgen.next_id()
    source = idgen.default_generator()
    assert isinstance(source, Client)
    assert source.max_wait == 1.0  # one server, one pass of 0.5 s, plus one probe's 0.5 s
    assert source.status()[0].buffered == 9  # a batch of 10, no refill before it runs out
    monkeypatch.setenv("IDGEN_CLIENT_MAX_WAIT", "7.5")
    idgen.reset_default()
    assert idgen.default_generator().max_wait == 7.5  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("IDGEN_CLIENT_TIMEOUT", "0"),
        ("IDGEN_CLIENT_TIMEOUT", "soon"),
        ("IDGEN_CLIENT_TIMEOUT", "inf"),
        ("IDGEN_CLIENT_TIMEOUT", "1e3"),
        ("IDGEN_CLIENT_BATCH", "1.5"),
        ("IDGEN_CLIENT_BATCH", "0"),
        ("IDGEN_CLIENT_BATCH", "٣"),  # an Arabic-Indic 3: int() would take it
        ("IDGEN_CLIENT_RETRIES", "-1"),
        ("IDGEN_CLIENT_BACKOFF", "nan"),
        ("IDGEN_CLIENT_PROBE_INTERVAL", "0"),
        ("IDGEN_CLIENT_MAX_AGE", "never"),
    ],
)
def test_a_bad_client_option_is_invalid_input_that_names_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.delenv("IDGEN_STATE_DIR")
    monkeypatch.setenv("IDGEN_URL", "http://127.0.0.1:1")
    monkeypatch.setenv(variable, value)
    with pytest.raises(InvalidInput, match=f"^{variable}: ") as raised:
        idgen.next_id()
    assert "\n" not in str(raised.value)


def test_client_options_without_servers_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDGEN_CLIENT_TIMEOUT", "1")
    with pytest.raises(InvalidInput, match="IDGEN_CLIENT_TIMEOUT: client options, for servers named in IDGEN_URL"):
        idgen.next_id()


def test_source_from_env_is_what_the_default_is_made_of(one_server: ServerProcess) -> None:
    """The function ``idgen mint`` calls: a new source each time, configured as the process default."""
    source = source_from_env({"IDGEN_URL": f"http://127.0.0.1:{one_server.port}", "IDGEN_CLIENT_MAX_WAIT": "4"})
    try:
        assert isinstance(source, Client) and source.max_wait == 4.0 and len(set(source.next_ids(300))) == 300
    finally:
        source.close()


def test_with_idgen_zk_it_leases_from_zookeeper(
    monkeypatch: pytest.MonkeyPatch, zk_hosts: str, zk_namespace: str
) -> None:
    monkeypatch.setenv("IDGEN_ZK", zk_hosts)
    monkeypatch.setenv("IDGEN_NAMESPACE", zk_namespace)
    monkeypatch.delenv("IDGEN_STATE_DIR")
    with pytest.raises(InvalidInput, match=ZK_AUTH_ENV):  # credentials as `idgen serve` requires them
        idgen.next_id()
    monkeypatch.setenv("IDGEN_ZK_INSECURE_NO_AUTH", "1")  # half of serve's opt-out: an environment alone never opts out
    with pytest.raises(InvalidInput, match=ZK_AUTH_ENV):
        idgen.next_id()
    monkeypatch.setenv(ZK_AUTH_ENV, TEST_CREDENTIALS)
    ids = idgen.next_ids(100)
    source = idgen.default_generator()
    assert isinstance(source, Generator) and isinstance(source.lease, ZkLease)
    assert {decode(i)["worker"] for i in ids} == {source.worker_id}


HOLD = "import idgen, sys; idgen.next_id(); print('held', flush=True); sys.stdin.read()"


def test_no_free_worker_id_is_unavailable_and_the_next_call_tries_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default is made on first use, inside a request: a worker ID it cannot lease is a refusal the app answers
    with 503 + Retry-After (``Unavailable``), like every other, and nothing failed is kept."""
    monkeypatch.setenv("IDGEN_WORKER_IDS", "0")
    holder = subprocess.Popen([sys.executable, "-c", HOLD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(idgen.Unavailable, match="worker IDs 0-0") as refused:
            idgen.next_id()
        assert refused.value.retry_after > 0
    finally:
        holder.communicate(timeout=30)  # its stdin closes, it exits and releases worker ID 0
    assert decode(idgen.next_id())["worker"] == 0


def _minted_by_parent_and_child() -> tuple[list[int], list[int]]:
    """Fork; both processes take ``PER_PROCESS`` IDs from the default at once: (the parent's, the child's)."""
    child = Child(os.fork, lambda report: report(idgen.next_ids(PER_PROCESS)))
    try:
        parent = idgen.next_ids(PER_PROCESS)
        return parent, child.next()
    finally:
        child.close()


def test_parent_and_forked_child_never_share_an_id() -> None:
    before = idgen.next_ids(PER_PROCESS)  # the child inherits a live tick
    parent, from_child = _minted_by_parent_and_child()
    assert not set(before + parent) & set(from_child)
    assert len({decode(i)["worker"] for i in from_child} | {decode(before[0])["worker"]}) == 2


def test_a_client_default_used_before_a_fork_shares_no_id_with_the_child(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With IDGEN_URL the default is a Client with a full buffer at the fork; the child starts with an empty one."""
    with ServerProcess("--state-dir", str(tmp_path / "ids")) as server:
        server.started()
        monkeypatch.delenv("IDGEN_STATE_DIR")
        monkeypatch.setenv("IDGEN_URL", f"http://127.0.0.1:{server.port}")
        before = idgen.next_ids(10)  # the buffer holds more than these at the fork
        parent, from_child = _minted_by_parent_and_child()
        assert len(set(before + parent + from_child)) == len(before + parent + from_child)


def _mint_in_pool(_: int) -> list[int]:
    return idgen.next_ids(PER_PROCESS)


def test_multiprocessing_fork_children_never_share_an_id() -> None:
    parent = idgen.next_ids(PER_PROCESS)
    with multiprocessing.get_context("fork").Pool(3) as pool:
        batches = pool.map(_mint_in_pool, range(3), chunksize=1)
    parent += idgen.next_ids(PER_PROCESS)
    everything = parent + [i for batch in batches for i in batch]
    assert len(set(everything)) == len(everything)
    workers = {decode(batch[0])["worker"] for batch in batches}
    assert len(workers) == 3 and decode(parent[0])["worker"] not in workers


def _mint_and_report(queue: Any) -> None:
    queue.put(idgen.next_ids(1000)[-1])


def test_a_multiprocessing_child_closes_its_generator_as_it_exits(environment: Path) -> None:
    """multiprocessing's children end with os._exit, which skips atexit: the default closes through multiprocessing's
    own finalizers there, so the child's fence comes down to its last ID's time unit too."""
    parent_last = idgen.next_id()  # the default exists before the fork
    context = multiprocessing.get_context("fork")
    queue = context.SimpleQueue()
    child = context.Process(target=_mint_and_report, args=(queue,))
    child.start()
    last = queue.get()
    child.join(30)
    assert child.exitcode == 0
    worker = decode(last)["worker"]
    assert worker != decode(parent_last)["worker"]
    record = json.loads((environment / f"worker-{worker:05d}.json").read_text())
    assert record["fence_ms"] == decode(last)["timestamp_ms"]


MULTIPROCESSING_CHILD = """\
import multiprocessing, sys

import idgen


def mint(queue):
    queue.put(idgen.next_ids(1000)[-1])


if __name__ == "__main__":
    method, parent_first = sys.argv[1], sys.argv[2] == "parent-first"
    if parent_first:
        idgen.next_id()
    context = multiprocessing.get_context(method)
    queue = context.SimpleQueue()
    child = context.Process(target=mint, args=(queue,))
    child.start()
    last = queue.get()
    child.join(30)
    print(child.exitcode, last)
"""


@pytest.mark.parametrize(
    ("method", "parent_first"),
    [("fork", False), ("forkserver", False), ("forkserver", True), ("spawn", False)],
    ids=lambda value: {True: "parent-first", False: "parent-never"}.get(value, value),
)
def test_every_multiprocessing_child_closes_the_default_it_made_as_it_exits(
    environment: Path, tmp_path: Path, method: str, parent_first: bool
) -> None:
    """In a fresh interpreter, so that nothing this test process did before decides what the child inherits. fork
    and forkserver children end with os._exit (no atexit): the default they made closes through multiprocessing's
    finalizers, whether or not the parent ever used its own."""
    script = tmp_path / "mp_child.py"  # a file, so that forkserver and spawn children can import ``mint``
    script.write_text(MULTIPROCESSING_CHILD)
    mode = "parent-first" if parent_first else "parent-never"
    result = subprocess.run([sys.executable, str(script), method, mode], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    exitcode, last = map(int, result.stdout.split())
    assert exitcode == 0
    worker = decode(last)["worker"]
    record = json.loads((environment / f"worker-{worker:05d}.json").read_text())
    assert record["fence_ms"] == decode(last)["timestamp_ms"]


MINT_AND_EXIT = "import idgen; ids = idgen.next_ids(1000); print(ids[0], ids[-1])"


def test_exit_brings_the_fence_down_so_the_next_process_mints_at_once(environment: Path) -> None:
    """One worker ID (IDGEN_WORKER_IDS=0), so the second process takes the one the first held. The first's exit
    brought its fence down to its last ID's time unit: without that the fence stays up to 1.5 lease windows (7.5 s)
    ahead, and the second process waits that long before it mints."""
    env = {**os.environ, "IDGEN_WORKER_IDS": "0"}

    def run() -> tuple[int, int]:
        result = subprocess.run([sys.executable, "-c", MINT_AND_EXIT], env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        first, last = map(int, result.stdout.split())
        return first, last

    _, first_last = run()
    record = json.loads((environment / "worker-00000.json").read_text())
    assert record["fence_ms"] == decode(first_last)["timestamp_ms"]
    second_first, _ = run()
    assert second_first > first_last
    assert decode(first_last)["worker"] == decode(second_first)["worker"] == 0
