"""``idgen.client`` against real ``idgen serve`` processes on loopback ports: ints and strings, the prefetch buffer,
failover, bounded failure, uniqueness under concurrency, and no ID handed out after its server refused.

Most tests run twice, with :class:`Client` and with :class:`AsyncClient`; the asyncio client is driven from the
test's thread through :class:`AsyncInThread`, its event loop running in a thread of its own.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import json
import math
import multiprocessing
import os
import random
import select
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kazoo.client import KazooClient
from prometheus_client.parser import text_string_to_metric_families
from rawhttp import (
    RUNS,
    RawServer,
    Route,
    caching_proxy,
    flooding,
    forwarding,
    http_response,
    recorded,
    refusing,
    replaying,
    trickling,
)
from serverproc import ServerProcess as Server
from serverproc import wait_until
from zkharness import TEST_CREDENTIALS

from idgen import FORMS, InvalidInput, Unavailable, decode, parse_id
from idgen.client import AllServersFailed, AsyncClient, Client, ClientClosed, ServerStatus
from idgen.leases.zookeeper import connect as zk_connect

T = TypeVar("T")


def url(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}"


def worker_of(server: Server) -> int:
    return server.get("/info").json()["worker_id"]


def workers(ids: list[int]) -> set[int]:
    return {decode(i)["worker"] for i in ids}


def id_requests(server: Server) -> int:
    """``GET /id`` requests the server answered with 200, from its own ``/metrics``."""
    for family in text_string_to_metric_families(server.get("/metrics").body.decode()):
        for sample in family.samples:
            if sample.name == "idgen_http_requests_total" and sample.labels == {"route": "/id", "status": "200"}:
                return int(sample.value)
    return 0


def increasing(values: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


def conserved(statuses: list[ServerStatus]) -> bool:
    return all(s.fetched == s.handed_out + s.buffered + s.discarded for s in statuses)


# -- clients of both kinds ---------------------------------------------------------------------------------------


class AsyncInThread:
    """An :class:`AsyncClient` called from test threads: every call runs on one event loop in its own thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, urls: list[str], **options: Any) -> None:
        self.loop = loop

        async def make() -> AsyncClient:
            client = AsyncClient(urls, **options)
            await client.start()
            return client

        self.client = self._run(make())
        self.max_wait = self.client.max_wait

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    def next_id(self, form: str | None = None) -> Any:
        return self._run(self.client.next_id(form))

    def next_ids(self, n: int, form: str | None = None) -> Any:
        return self._run(self.client.next_ids(n, form))

    def status(self) -> list[ServerStatus]:
        async def status() -> list[ServerStatus]:
            return self.client.status()

        return self._run(status())

    def close(self) -> None:
        self._run(self.client.close())


@pytest.fixture(params=["sync", "async"])
def connect(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """Makes clients of one kind (``Client`` or ``AsyncClient``); all are closed at the end."""
    made: list[Any] = []
    loop: asyncio.AbstractEventLoop | None = None
    thread: threading.Thread | None = None
    if request.param == "async":
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()

    def connect(urls: list[str], **options: Any) -> Any:
        made.append(Client(urls, **options) if loop is None else AsyncInThread(loop, urls, **options))
        return made[-1]

    yield connect
    for client in made:
        client.close()
    if loop is not None and thread is not None:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# -- servers -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One local ID space for every local server of this module: they get distinct worker IDs."""
    return tmp_path_factory.mktemp("ids")


@pytest.fixture(scope="module")
def first(state_dir: Path) -> Iterator[Server]:
    with Server("--state-dir", str(state_dir)) as server:
        yield server


@pytest.fixture(scope="module")
def second(state_dir: Path) -> Iterator[Server]:
    with Server("--state-dir", str(state_dir)) as server:
        yield server


@pytest.fixture(scope="module")
def unready(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that is up but refuses to mint: its only worker ID's fence is an hour ahead of the clock."""
    state = tmp_path_factory.mktemp("fenced")
    fence_ms = int(time.time() * 1000) + 3_600_000
    (state / "worker-00000.json").write_text(json.dumps({"worker_id": 0, "fence_ms": fence_ms, "holders": []}))
    with Server("--state-dir", str(state), "--worker-ids", "0-0") as server:
        assert server.get("/readyz").status == 503
        yield server


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A loopback port that refuses connections: bound (so nobody else takes it) but not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


# -- ints, strings, batches --------------------------------------------------------------------------------------


def test_ids_come_as_ints_or_as_strings_in_every_form(connect: Callable[..., Any], first: Server) -> None:
    client = connect([url(first)])
    one = client.next_id()
    assert type(one) is int and workers([one]) == {worker_of(first)}
    seen = [one]
    for form in FORMS:
        text = client.next_id(form)
        batch = client.next_ids(5, form)
        assert isinstance(text, str) and all(isinstance(t, str) for t in batch)
        seen += [parse_id(t, form) for t in [text, *batch]]
    assert increasing(seen)  # one server: strictly increasing, in every form
    assert client.next_ids(0) == []
    many = client.next_ids(1000)  # more than the buffer holds: several batches
    assert len(many) == 1000 and increasing(seen + many)
    assert conserved(client.status())


def test_bad_arguments_are_clear_errors(connect: Callable[..., Any], dead_url: str) -> None:
    for urls, options, words in [
        ([], {}, "at least one server URL"),
        (["ftp://127.0.0.1:1"], {}, "not a server URL"),
        (["http://127.0.0.1:1?x=1"], {}, "not a server URL"),
        (["http://127.0.0.1:99999"], {}, "bad port"),
        ([dead_url, dead_url + "/"], {}, "listed twice"),
        ([dead_url], {"batch": 0}, "batch must be"),
        ([dead_url], {"low_water": -1}, "low_water must be"),
        ([dead_url], {"timeout": 0}, "timeout must be above 0"),
        ([dead_url], {"timeout": float("nan")}, "timeout must be a number"),
        ([dead_url], {"retries": 1.5}, "retries must be"),
        ([dead_url], {"probe_interval": -1}, "probe_interval must be"),
    ]:
        with pytest.raises(InvalidInput, match=words):
            connect(urls, **options)
    client = connect([dead_url])
    for call, words in [
        (lambda: client.next_ids(-1), "n must be"),
        (lambda: client.next_ids(2.0), "n must be"),
        (lambda: client.next_ids(True), "n must be"),
        (lambda: client.next_id("octal"), "form must be None"),
        (lambda: client.next_ids(3, "HEX"), "form must be None"),
    ]:
        with pytest.raises(InvalidInput, match=words):
            call()


def test_a_batch_above_the_servers_max_count_is_asked_in_pieces_it_takes(
    connect: Callable[..., Any], first: Server
) -> None:
    client = connect([url(first)], batch=5000)  # the server's --max-count is 4096: it says so in /info
    ids = client.next_ids(6000)
    assert len(set(ids)) == 6000 and increasing(ids) and client.status()[0].last_error is None


def test_the_default_batch_keeps_within_a_smaller_max_count(connect: Callable[..., Any], state_dir: Path) -> None:
    """A batch sized from demand grows to 4,096 IDs; a server started with ``--max-count 100`` takes at most 100 per
    request, and the client learns so from its ``/info`` (before: AllServersFailed once the batch passed 100)."""
    with Server("--state-dir", str(state_dir), "--max-count", "100") as small:
        client = connect([url(small)], probe_interval=None)
        ids = [client.next_id() for _ in range(3000)] + client.next_ids(3000)
        assert len(set(ids)) == 6000 and client.status()[0].last_error is None


# -- the prefetch buffer -----------------------------------------------------------------------------------------


def test_the_buffer_is_refilled_in_the_background_before_it_runs_dry(
    connect: Callable[..., Any], first: Server
) -> None:
    before = id_requests(first)
    client = connect([url(first)], batch=100, low_water=40, probe_interval=None)

    def buffered(n: int) -> Callable[[], bool]:
        return lambda: client.status()[0].buffered == n

    # filled on start, before anyone asked: one request reached the server
    wait_until(buffered(100), what="the first batch")
    assert id_requests(first) == before + 1
    taken = client.next_ids(60)  # 40 left: not yet below the low-water mark
    assert id_requests(first) == before + 1
    taken += client.next_ids(1)  # 39 left: a refill starts in the background; this call did not wait for it
    wait_until(buffered(139), what="the background refill")
    assert id_requests(first) == before + 2
    status = client.status()[0]
    assert (status.fetched, status.handed_out, status.discarded) == (200, 61, 0)
    rest = client.next_ids(139)  # all from the buffer: no call ever found it empty
    assert len(rest) == 139 and increasing(taken + rest)


def test_ids_older_than_max_age_are_dropped_never_handed_out(connect: Callable[..., Any], first: Server) -> None:
    client = connect([url(first)], batch=100, low_water=0, probe_interval=None, max_age=0.3)
    taken = [client.next_id()]
    fetched_by = time.monotonic()
    # the clock is the event here; nothing else is called meanwhile, so next_id() itself must see the age
    wait_until(lambda: time.monotonic() > fetched_by + 0.35, what="the other 99 IDs to grow too old")
    taken.append(client.next_id())  # from a new batch: none of the expired 99 (IDs of an older tick)
    status = client.status()[0]
    assert (status.fetched, status.handed_out, status.buffered, status.discarded) == (200, 2, 99, 99)
    assert taken[1] > taken[0] + 99 and decode(taken[1])["timestamp_ms"] >= decode(taken[0])["timestamp_ms"] + 300
    assert increasing(taken + client.next_ids(99))


def test_the_default_batch_grows_with_demand(connect: Callable[..., Any], first: Server) -> None:
    client = connect([url(first)], probe_interval=None)
    requests = id_requests(first)
    ids = [client.next_id() for _ in range(20_000)] + client.next_ids(30_000)
    assert increasing(ids)
    status = client.status()[0]
    # 256 IDs per request at the start; far more once the client sees the demand
    assert status.fetched / (id_requests(first) - requests) > 1024 and conserved([status])


# -- failover ----------------------------------------------------------------------------------------------------


def test_failover_when_the_first_url_is_a_closed_port(
    connect: Callable[..., Any], dead_url: str, first: Server
) -> None:
    client = connect([dead_url, url(first)], batch=50)
    ids = client.next_ids(300)
    assert len(set(ids)) == 300 and workers(ids) == {worker_of(first)}
    dead, alive = client.status()
    assert (dead.fetched, dead.last_error) == (0, "connection refused")
    assert alive.fetched >= 300 and alive.last_error is None


def test_failover_when_a_server_is_stopped_mid_use(connect: Callable[..., Any], state_dir: Path) -> None:
    with Server("--state-dir", str(state_dir)) as going, Server("--state-dir", str(state_dir)) as staying:
        going_worker, staying_worker = worker_of(going), worker_of(staying)
        client = connect([url(going), url(staying)], batch=50, low_water=10, probe_interval=None)
        early = client.next_ids(20)
        assert workers(early) == {going_worker}
        assert going.stop() == 0  # SIGTERM: a clean stop, not a refusal
        began = time.monotonic()
        late = client.next_ids(200)
        assert time.monotonic() - began < client.max_wait
        assert len(set(early + late)) == 220
        # the 30 IDs still buffered from the stopped server come first: it did not refuse, so they stay valid
        assert workers(late[:30]) == {going_worker} and workers(late[30:]) == {staying_worker}
        gone, alive = client.status()
        assert (gone.discarded, gone.refusals, gone.last_error) == (0, 0, "connection refused")
        assert conserved([gone, alive])


def test_a_server_that_refuses_is_skipped(connect: Callable[..., Any], unready: Server, first: Server) -> None:
    client = connect([url(unready), url(first)])
    assert workers(client.next_ids(10)) == {worker_of(first)}
    refusing = client.status()[0]
    assert refusing.refusals >= 1 and refusing.fetched == 0
    assert refusing.last_error is not None and refusing.last_error.startswith("HTTP 503 clock_behind: clock is")


# -- every server down -------------------------------------------------------------------------------------------


def test_every_server_down_is_one_clear_error(connect: Callable[..., Any], dead_url: str, unready: Server) -> None:
    client = connect([dead_url, url(unready)], timeout=1.0, retries=1)
    began = time.monotonic()
    with pytest.raises(AllServersFailed) as caught:
        client.next_id()
    assert time.monotonic() - began < client.max_wait
    error = caught.value
    assert isinstance(error, Unavailable)  # callers of idgen.Generator catch the same type
    assert error.failures[dead_url] == "connection refused"
    assert error.failures[url(unready)].startswith("HTTP 503 clock_behind:")
    # The refusing server's Retry-After: 1 s while it tries to switch worker IDs, 5 s once it found none free.
    assert error.retry_after in (1.0, 5.0)
    assert str(error).startswith("no idgen server handed over 1 ID(s): ")
    assert dead_url in str(error) and url(unready) in str(error)


def test_a_hung_server_costs_each_pass_one_timeout_and_no_more(connect: Callable[..., Any], state_dir: Path) -> None:
    with Server("--state-dir", str(state_dir)) as hung:
        hung.proc.send_signal(signal.SIGSTOP)  # accepts connections (the kernel does), never answers
        try:
            client = connect([url(hung)], timeout=0.5, retries=1, backoff=0.1)
            began = time.monotonic()
            with pytest.raises(AllServersFailed, match=r"no answer within 0\.5 s"):
                client.next_id()
            elapsed = time.monotonic() - began
            # The round began when the client was made: two passes of one 0.5 s timeout, 0.1 s apart. The caller
            # gives up at max_wait (1.6 s) at the latest, whatever the round is doing; 0.3 s is for a busy machine.
            assert client.max_wait == 1.6
            assert 0.5 <= elapsed <= client.max_wait + 0.3
        finally:
            hung.proc.send_signal(signal.SIGCONT)


def test_a_closed_client_says_so(connect: Callable[..., Any], first: Server) -> None:
    client = connect([url(first)])
    client.next_id()
    client.close()
    with pytest.raises(ClientClosed):
        client.next_id()


# -- uniqueness under concurrency ---------------------------------------------------------------------------------


def test_many_threads_draining_one_client_never_get_an_id_twice(first: Server, second: Server) -> None:
    with Client([url(first), url(second)], batch=64, low_water=16) as client:
        got: list[list[int]] = [[] for _ in range(8)]

        def drain(index: int) -> None:
            rng = random.Random(index)
            for _ in range(60):
                if rng.random() < 0.5:
                    got[index].append(client.next_id())
                else:
                    got[index] += client.next_ids(rng.randint(1, 200))

        threads = [threading.Thread(target=drain, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        ids = [i for part in got for i in part]
        assert len(ids) > 8 * 60 and len(set(ids)) == len(ids)
        assert all(increasing(part) for part in got)  # one server, and each thread's calls are in order
        status = client.status()
        assert conserved(status) and sum(s.handed_out for s in status) == len(ids)


def test_many_tasks_draining_one_async_client_never_get_an_id_twice(first: Server, second: Server) -> None:
    async def scenario() -> None:
        async with AsyncClient([url(first), url(second)], batch=64, low_water=16) as client:

            async def drain(index: int) -> list[int]:
                rng, mine = random.Random(index), []
                for _ in range(60):
                    if rng.random() < 0.5:
                        mine.append(await client.next_id())
                    else:
                        mine += await client.next_ids(rng.randint(1, 200))
                return mine

            got = await asyncio.gather(*(drain(i) for i in range(16)))
            ids = [i for part in got for i in part]
            assert len(ids) > 16 * 60 and len(set(ids)) == len(ids)
            status = client.status()
            assert conserved(status) and sum(s.handed_out for s in status) == len(ids)

    asyncio.run(scenario())


# -- no ID after its server refused --------------------------------------------------------------------------------


def make_unready(hosts: str, namespace: str, victim: int, spare: int) -> KazooClient:
    """Take the ZooKeeper lease of worker ID ``victim`` away from its server, and hold every other worker ID except
    ``spare``: the server finds its lease lost at its next fence extension and cannot lease another, so it answers
    503 until the returned client is stopped."""
    client = zk_connect(hosts, TEST_CREDENTIALS, connect_timeout_s=15)
    claim = json.dumps({"host": "test", "pid": 0, "lease_id": "held-by-the-test"}).encode()
    creates = [
        client.create_async(f"{namespace}/leases/{w}", claim, ephemeral=True)
        for w in range(1024)
        if w not in (victim, spare)
    ]
    for create in creates:
        create.get(timeout=15)
    steal = client.transaction()
    steal.delete(f"{namespace}/leases/{victim}")
    steal.create(f"{namespace}/leases/{victim}", claim, ephemeral=True)
    assert all(result is True or isinstance(result, str) for result in steal.commit()), "the claim was not taken"
    return client


def test_no_id_is_handed_out_after_its_server_refused(
    connect: Callable[..., Any], zk_hosts: str, zk_namespace: str
) -> None:
    zk = ["--zk", zk_hosts, "--namespace", zk_namespace]
    with Server(*zk) as losing, Server(*zk) as keeping:
        lost_worker, kept_worker = worker_of(losing), worker_of(keeping)
        urls = [url(losing), url(keeping)]
        probing = connect(urls, batch=100, low_water=0, probe_interval=0.2)  # only its probe can hear a 503
        fetching = connect(urls, batch=100, low_water=50, probe_interval=None)  # only its refills can
        for client in (probing, fetching):
            assert workers([client.next_id()]) == {lost_worker}
            assert client.status()[0].buffered == 99
        holder = make_unready(zk_hosts, zk_namespace, lost_worker, kept_worker)
        try:
            wait_until(lambda: losing.get("/readyz").status == 503, what="the server to lose its lease")
            # The probe hears the 503: all 99 buffered IDs from that server are dropped before any other goes out.
            wait_until(lambda: probing.status()[0].refusals, what="the probe to hear the refusal")
            assert (probing.status()[0].buffered, probing.status()[0].discarded) == (0, 99)
            assert workers(probing.next_ids(150)) == {kept_worker}

            # Until a refill asks the server, the client has not heard: those IDs may still go out (they are unique).
            assert workers(fetching.next_ids(50)) == {lost_worker}
            # 49 left, below the low-water mark: the refill asks the server first, hears 503, drops the 49.
            wait_until(lambda: fetching.status()[0].refusals, what="the refill to hear the refusal")
            assert fetching.status()[0].discarded == 49
            assert workers(fetching.next_ids(150)) == {kept_worker}
            for client in (probing, fetching):
                lost = client.status()[0]
                assert lost.handed_out == lost.fetched - lost.discarded and lost.last_error.startswith("HTTP 503")
                assert conserved(client.status())
        finally:
            holder.stop()
            holder.close()


# -- fork: the child never hands out an ID the parent may hand out ---------------------------------------------------


def c_fork() -> int:
    """fork(2) called from C, as uWSGI's master does: none of Python's at-fork hooks run in the child. ``PyDLL``, not
    ``CDLL``: it keeps the GIL held across the call, as the forking thread of a C server holds it; ``CDLL`` drops it,
    and a child forked while another thread had just taken it would hang in the interpreter before reaching idgen."""
    return int(ctypes.PyDLL(None).fork())


FORKS = ["os.fork", "C fork", "multiprocessing"]


def take_ids(client: Any, got: list[int] | None = None) -> list[int]:
    """What parent and child each do: single IDs (the buffer's first), then a batch larger than the whole buffer.
    They are added to ``got`` as they come, so that a caller that fails half-way still shows what it handed out."""
    got = [] if got is None else got
    for _ in range(30):
        got.append(client.next_id())
    got += client.next_ids(300)
    return got


async def take_ids_async(client: AsyncClient, got: list[int]) -> list[ServerStatus]:
    for _ in range(30):
        got.append(await client.next_id())
    got += await client.next_ids(300)
    status = client.status()
    await client.close()
    return status


def in_child(client: Any) -> dict[str, Any]:
    """The child's part: the IDs it got, its client's status, and the error it met if any; it closes the client (that
    must not wait for the parent's refill thread, which does not exist here). A child cannot use the parent's event
    loop thread, so an :class:`AsyncClient` runs on a loop of the child's own."""
    got: list[int] = []
    try:
        if isinstance(client, AsyncInThread):
            status = asyncio.run(take_ids_async(client.client, got))
        else:
            take_ids(client, got)
            status = client.status()
            client.close()
        return {"ids": got, "fetched": status[0].fetched, "handed_out": status[0].handed_out}
    except BaseException as exc:
        return {"ids": got, "error": repr(exc)}


class Child:
    """A child process made by ``how`` that runs ``job`` and sends back its JSON-able result through a pipe."""

    def __init__(self, how: str, job: Callable[[], Any]) -> None:
        self.how = how
        self.read_end, write_end = os.pipe()

        def run() -> None:
            os.close(self.read_end)
            with os.fdopen(write_end, "w") as out:
                out.write(json.dumps(job()))

        if how == "multiprocessing":
            self.proc = multiprocessing.get_context("fork").Process(target=run, daemon=True)
            self.proc.start()
            self.pid = self.proc.pid
        else:
            self.pid = os.fork() if how == "os.fork" else c_fork()
            if self.pid == 0:
                try:
                    run()
                finally:
                    os._exit(0)
        os.close(write_end)

    def result(self, timeout: float = 30.0) -> Any:
        """The child's result; fails if none came within ``timeout`` (the child hung) and kills it then."""
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                ready, _, _ = select.select([self.read_end], [], [], max(0.0, deadline - time.monotonic()))
                if not ready:
                    os.kill(self.pid, signal.SIGKILL)
                    raise AssertionError(f"the child ({self.how}) sent nothing within {timeout} s: it hung")
                chunk = os.read(self.read_end, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(self.read_end)
            if self.how == "multiprocessing":
                self.proc.join(10)
            else:
                os.waitpid(self.pid, 0)
        assert chunks, f"the child ({self.how}) exited without a result"
        return json.loads(b"".join(chunks))


@pytest.mark.parametrize("how", FORKS)
def test_after_a_fork_parent_and_child_never_hand_out_the_same_id(
    connect: Callable[..., Any], first: Server, how: str
) -> None:
    client = connect([url(first)], batch=100)
    before = client.next_ids(5)
    wait_until(lambda: client.status()[0].buffered == 95, what="a full buffer")
    child = Child(how, lambda: in_child(client))
    mine = take_ids(client)  # the parent goes on at once, while the child runs
    theirs = child.result()
    ids = theirs["ids"]
    assert not set(ids) & set(before + mine), f"{len(set(ids) & set(before + mine))} IDs went to both"
    assert "error" not in theirs, theirs["error"]
    assert len(ids) == len(mine) == 330 and increasing(ids)
    # The child started with an empty buffer and fetched its own IDs; the parent kept its buffer and its order.
    assert theirs["handed_out"] == 330 and theirs["fetched"] >= 330
    assert increasing(before + mine) and client.status()[0].handed_out == 335
    assert conserved(client.status())
    assert len(set(client.next_ids(300))) == 300  # and it keeps working


def test_a_fork_while_another_thread_holds_the_clients_lock(first: Server) -> None:
    """A fork at any moment: here while a thread of the parent is inside the client (it holds the client's lock,
    as ``next_ids`` does while it takes IDs). That thread does not exist in the child, so the lock stays taken
    there forever; the child must not need it."""
    with Client([url(first)], batch=100) as client:
        client.next_id()
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            with client._refiller.lock:
                held.set()
                release.wait()

        holder = threading.Thread(target=hold)
        holder.start()
        held.wait()
        try:
            child = Child("os.fork", lambda: in_child(client))
        finally:
            release.set()
            holder.join()
        mine = take_ids(client)
        theirs = child.result()
        assert not set(theirs["ids"]) & set(mine)
        assert "error" not in theirs, theirs["error"]
        assert len(theirs["ids"]) == 330


# -- answers no idgen server gives: replays, trickles, floods, bad Retry-After -----------------------------------------
# Real HTTP servers on loopback ports (tests/rawhttp.py), standing for a cache, a proxy or a broken server in front of
# idgen.


@pytest.fixture
def raw_server() -> Iterator[Callable[[dict[str, Route]], RawServer]]:
    made: list[RawServer] = []

    def make(routes: dict[str, Route]) -> RawServer:
        made.append(RawServer(routes))
        return made[-1]

    yield make
    for server in made:
        server.close()


def test_a_replayed_answer_is_dropped_never_handed_out_twice(
    connect: Callable[..., Any], raw_server: Callable[..., RawServer], first: Server, second: Server
) -> None:
    """A cache in front of a server replays one valid answer: its IDs are handed out once, the replays are dropped
    and counted, and the client fails over to a server that answers afresh."""
    cache = raw_server(
        {"/id": replaying(recorded(first, "/id?count=100")), "/info": replaying(recorded(first, "/info"))}
    )
    client = connect([cache.url, url(second)], batch=100, low_water=0, probe_interval=None)
    ids = client.next_ids(100) + client.next_ids(500)
    assert len(set(ids)) == 600, f"{600 - len(set(ids))} duplicates"
    replayer, healthy = client.status()
    assert replayer.fetched == 100 and replayer.replays >= 1 and conserved(client.status())
    assert replayer.last_error is not None and "replayed" in replayer.last_error
    assert workers(ids[100:]) == {worker_of(second)} and healthy.replays == 0


def test_a_replaying_server_alone_fails_rather_than_repeat_itself(
    connect: Callable[..., Any], raw_server: Callable[..., RawServer], first: Server
) -> None:
    cache = raw_server(
        {"/id": replaying(recorded(first, "/id?count=50")), "/info": replaying(recorded(first, "/info"))}
    )
    client = connect([cache.url], batch=50, low_water=0, probe_interval=None, retries=0)
    ids = client.next_ids(50)
    with pytest.raises(AllServersFailed, match="replayed"):
        client.next_ids(50)
    assert len(set(ids)) == 50 and client.status()[0].replays == 1


def test_a_cache_in_front_of_a_server_never_makes_a_duplicate(
    connect: Callable[..., Any], raw_server: Callable[..., RawServer], first: Server
) -> None:
    """The default client (a batch sized from demand) through a cache that stores every answer: the issue's 344
    duplicates in 600 IDs. Every ID handed out is distinct; each replay is dropped and counted. The cache answers
    again once a count is asked again: at the latest when the growing batch reaches its ceiling."""
    cache = caching_proxy(first)
    proxy = raw_server({"/id": cache, "/info": cache, "/readyz": cache})
    client = connect([proxy.url], retries=0)
    ids: list[int] = []
    while len(ids) < 600 or (client.status()[0].replays == 0 and len(ids) < 50_000):
        try:
            ids.append(client.next_id())
        except AllServersFailed as failure:
            assert "replayed" in str(failure)
    assert len(ids) == len(set(ids)) and ids
    status = client.status()[0]
    assert status.replays >= 1 and conserved([status])


def test_several_workers_behind_one_url_are_not_taken_for_replays(
    connect: Callable[..., Any], raw_server: Callable[..., RawServer], state_dir: Path
) -> None:
    """``--processes 2`` behind a proxy: one URL, two worker IDs whose answers interleave (a lower worker ID's IDs
    lie below a higher one's of the same tick). Floors are kept per worker ID: none is taken for a replay."""
    with Server("--state-dir", str(state_dir), "--processes", "2") as server:
        proxy = raw_server({path: forwarding(server) for path in ("/id", "/info", "/readyz")})
        client = connect([proxy.url], batch=16, low_water=0, probe_interval=None)
        ids: list[int] = []
        switches = 0
        while switches < 20 and len(ids) < 100_000:
            batch = client.next_ids(16)
            switches += bool(ids) and workers(ids[-1:]) != workers(batch[:1])
            ids += batch
        assert switches >= 20 and len(workers(ids)) == 2
        assert len(set(ids)) == len(ids) and client.status()[0].replays == 0


def test_a_server_redeployed_with_a_smaller_max_count_is_asked_again(
    connect: Callable[..., Any], raw_server: Callable[..., RawServer], state_dir: Path, first: Server
) -> None:
    """Behind one URL, the server is replaced by one with ``--max-count 100`` after the client read ``/info``: its
    400 ``invalid_count`` makes the client ask ``/info`` again, and it keeps within the new limit."""
    upstreams = [first]
    proxy = raw_server({path: forwarding(upstreams) for path in ("/id", "/info", "/readyz")})
    client = connect([proxy.url], batch=1000, low_water=0, probe_interval=None, retries=0)
    before = client.next_ids(1000)
    with Server("--state-dir", str(state_dir), "--max-count", "100") as small:
        upstreams.append(small)
        after = client.next_ids(1000)
        assert workers(after) == {worker_of(small)} and len(set(before + after)) == 2000
        assert client.status()[0].last_error is None
        assert sum(target.startswith("/info") for target in proxy.requests) == 2


@pytest.mark.parametrize("head_too", [False, True], ids=["body", "headers"])
def test_a_trickling_server_costs_one_timeout_then_the_next_server_answers(
    connect: Callable[..., Any], raw_server: Callable[..., RawServer], first: Server, second: Server, head_too: bool
) -> None:
    """A server (or proxy) that sends its answer a byte at a time, each byte well within the socket timeout: the
    whole attempt is bounded by ``timeout``, and the next server's IDs come within the call's ``max_wait``."""
    slow = trickling(recorded(first, "/id?count=100"), 0.05, head_too)
    info = trickling(recorded(first, "/info"), 0.05, head_too)
    trickler = raw_server({"/id": slow, "/info": info})
    client = connect([trickler.url, url(second)], batch=100, timeout=1.0, low_water=0, probe_interval=None)
    began = time.monotonic()
    ids = client.next_ids(10)
    assert workers(ids) == {worker_of(second)} and time.monotonic() - began < client.max_wait
    assert client.status()[0].last_error == "no answer within 1 s"
    # at one byte per 50 ms, the client hung up after about 1 s: nowhere near the whole answer
    wait_until(lambda: trickler.sent, what="the trickling server to notice the client left")
    assert trickler.sent[0] < 60


def test_the_sync_clients_deadline_holds_over_tls(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, first: Server, second: Server
) -> None:
    """HTTPS goes through another socket (``ssl.SSLSocket``) and another urllib3 connection class: a server that
    trickles over TLS is cut off at ``timeout`` as well, and one that answers at once serves. The certificate is a
    self-signed one the test makes, trusted through ``SSL_CERT_FILE``."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    info = replaying(recorded(first, "/info"))
    trickler = RawServer({"/id": trickling(recorded(first, "/id?count=100"), 0.05), "/info": info}, tls)
    cache = RawServer({"/id": replaying(recorded(second, "/id?count=100")), "/info": info}, tls)
    try:
        with Client([trickler.url, cache.url], batch=100, timeout=1.0, low_water=0, probe_interval=None) as client:
            assert workers(client.next_ids(100)) == {worker_of(second)}
            assert client.status()[0].last_error == "no answer within 1 s"
            with pytest.raises(AllServersFailed, match="replayed"):  # the TLS cache's second answer is its first
                client.next_ids(100)
    finally:
        trickler.close(), cache.close()


@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "until-close"])
def test_an_answer_too_large_for_the_batch_is_cut_off(
    connect: Callable[..., Any], raw_server: Callable[..., RawServer], first: Server, second: Server, with_length: bool
) -> None:
    """A 300 MB answer to ``/id?count=100``: the client reads at most a bound derived from the count, then hangs
    up, and takes its IDs from the next server."""
    flood = raw_server({"/id": flooding(300 << 20, with_length), "/info": replaying(recorded(first, "/info"))})
    client = connect([flood.url, url(second)], batch=100, low_water=0, probe_interval=None)
    assert workers(client.next_ids(10)) == {worker_of(second)}
    assert (client.status()[0].last_error or "").startswith("answer larger than")
    wait_until(lambda: flood.sent, what="the flooding server to notice the client left")
    assert flood.sent[0] < 64 << 20  # what the sockets' buffers took, at most; not 300 MB


NESTED = b"[" * 60_000  # deeper than Python's JSON decoder goes: it raises RecursionError, not ValueError


@pytest.mark.parametrize(
    ("path", "status", "content_type", "body"),
    [
        ("/id", 200, RUNS, b'{"runs":' + NESTED),
        ("/id", 200, "application/json", b'{"ids":' + NESTED),
        ("/id", 400, "application/json", b'{"error":' + NESTED),
        ("/info", 200, "application/json", b'{"layout":' + NESTED),
    ],
    ids=["runs", "json", "error", "info"],
)
def test_json_nested_too_deep_is_a_malformed_answer_not_a_crash(
    connect: Callable[..., Any],
    raw_server: Callable[..., RawServer],
    first: Server,
    second: Server,
    path: str,
    status: int,
    content_type: str,
    body: bytes,
) -> None:
    """Within the byte bound, an answer can still nest its JSON deeper than the decoder's recursion limit. That is a
    malformed answer from that server (the next one is asked), not a crash of the client's refill loop."""
    routes = {"/id": replaying(recorded(first, "/id?count=100")), "/info": replaying(recorded(first, "/info"))}
    routes[path] = replaying(http_response(status, {"Content-Type": content_type}, body))
    bomb = raw_server(routes)
    client = connect([bomb.url, url(second)], batch=100, low_water=0, probe_interval=None)
    assert workers(client.next_ids(10)) == {worker_of(second)}
    assert client.status()[0].last_error is not None


GARBAGE = {
    "not-http": b"garbage\r\n\r\n",
    "200-headers": b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n",
    "long-header": b"HTTP/1.1 200 OK\r\nX: " + b"y" * 100_000 + b"\r\n\r\n",
    "bad-chunks": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "bad-length": b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
}


@pytest.mark.parametrize("answer", GARBAGE.values(), ids=GARBAGE.keys())
def test_an_answer_that_is_not_http_fails_that_server_only(
    connect: Callable[..., Any], raw_server: Callable[..., RawServer], first: Server, second: Server, answer: bytes
) -> None:
    broken = raw_server({"/id": replaying(answer), "/info": replaying(recorded(first, "/info"))})
    client = connect([broken.url, url(second)], batch=100, low_water=0, probe_interval=None)
    assert workers(client.next_ids(10)) == {worker_of(second)}
    assert client.status()[0].last_error is not None


BAD_RETRY_AFTER = ["inf", "-inf", "nan", "-5", "1e308", "99999999999999999999", "soon", ""]


@pytest.mark.parametrize("retry_after", [*BAD_RETRY_AFTER, "date+30", "date-30", "7"])
def test_retry_after_is_clamped_to_a_finite_wait(
    connect: Callable[..., Any], raw_server: Callable[..., RawServer], first: Server, retry_after: str
) -> None:
    """Whatever a server says in Retry-After (delay-seconds or an HTTP-date, RFC 9110), the error's
    ``retry_after`` is a number of seconds from 1 to 3600, and the PYTHON.md recipe (``math.ceil``) works."""
    expected: tuple[float, float]
    if retry_after.startswith("date"):
        import email.utils

        offset = int(retry_after[4:])
        retry_after = email.utils.formatdate(time.time() + offset, usegmt=True)
        expected = (25.0, 31.0) if offset > 0 else (1.0, 1.0)
    elif retry_after == "7":
        expected = (7.0, 7.0)
    elif retry_after == "99999999999999999999":
        expected = (3600.0, 3600.0)
    else:
        expected = (1.0, 1.0)
    refuser = raw_server({"/id": refusing(retry_after), "/info": replaying(recorded(first, "/info"))})
    client = connect([refuser.url], retries=0, probe_interval=None)
    with pytest.raises(Unavailable) as caught:
        client.next_id()
    assert expected[0] <= caught.value.retry_after <= expected[1]
    assert 1 <= math.ceil(caught.value.retry_after) <= 3600
