"""A generator used before ``fork()``: parent and child never hand out the same ID, on every way Python apps fork.

Real forks, real leases: ``os.fork()`` (gunicorn, Celery), a fork made in C that skips Python's at-fork hooks
(uWSGI's default, reproduced with libc's ``fork()``), and multiprocessing's fork context. The child takes its own
lease on first use; the parent keeps its worker ID and goes on minting.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from forks import FORKS, Child

from idgen import DEFAULT_LAYOUT, Generator, decode
from idgen.leases.base import Lease
from idgen.leases.local import LocalLease
from idgen.leases.zookeeper import ZkLease

PER_SIDE = 20_000
WINDOW_MS = 20_000
_LIBC_FORK = ctypes.PyDLL(None).fork  # PyDLL keeps the GIL across the call, as a C extension forking would


def _python_fork() -> int:
    return os.fork()


def _c_fork() -> int:
    """A fork made in C, as uWSGI makes it: no ``os.register_at_fork`` hook runs in either process.

    CPython itself needs those hooks in a child of a process with threads: a fork that lands while another thread is
    inside the GIL's handoff leaves the child unable to start threads (uWSGI's ``py-call-osafterfork`` exists for
    that). The leases here renew rarely (``WINDOW_MS``), so the parent's other threads are idle at the fork, as a
    uWSGI master's are when it forks its workers."""
    return _LIBC_FORK()


@pytest.fixture(params=["local", "zookeeper"])
def make_lease(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Lease]:
    if request.param == "local":
        return lambda: LocalLease(DEFAULT_LAYOUT, tmp_path, window_ms=WINDOW_MS)
    hosts = request.getfixturevalue("zk_hosts")
    namespace = request.getfixturevalue("zk_namespace")
    return lambda: ZkLease(DEFAULT_LAYOUT, hosts, namespace, auth="idgen:fork-test", window_ms=WINDOW_MS)


@pytest.fixture
def gen(make_lease: Callable[[], Lease]) -> Iterator[Generator]:
    with Generator(lease=make_lease()) as generator:
        yield generator


def _child_mints(gen: Generator, out: int, mint: Callable[[Generator], list[int]]) -> None:
    """In the child: mint, write the IDs as decimal lines to ``out``, exit without running the parent's cleanup."""
    code = 0
    try:
        ids = mint(gen)
        gen.close()
        os.write(out, ("\n".join(map(str, ids)) + "\n").encode())
    except BaseException as exc:  # report to the parent, whatever happens
        os.write(out, f"error {type(exc).__name__}: {exc}\n".encode())
        code = 1
    finally:
        os._exit(code)


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode()


def _mint_singles(gen: Generator) -> list[int]:
    return [gen.next_id() for _ in range(PER_SIDE)]


def _mint_batches(gen: Generator) -> list[int]:
    return [i for _ in range(PER_SIDE // 500) for i in gen.next_ids(500)]


def _fork_and_mint(
    gen: Generator, fork: Callable[[], int], mint: Callable[[Generator], list[int]]
) -> tuple[list[int], list[int]]:
    """Fork mid-tick (the snapshot holds unused IDs), then let parent and child mint at once."""
    gen.next_id()
    read, write = os.pipe()
    pid = fork()
    if pid == 0:
        os.close(read)
        _child_mints(gen, write, mint)
    os.close(write)
    parent_ids = mint(gen)
    text = _read_all(read)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, text
    return parent_ids, [int(line) for line in text.split()]


def _check_disjoint(gen: Generator, fork: Callable[[], int], mint: Callable[[Generator], list[int]]) -> None:
    worker_before = gen.worker_id
    parent_ids, child_ids = _fork_and_mint(gen, fork, mint)
    assert len(child_ids) == PER_SIDE
    assert not set(parent_ids) & set(child_ids)
    assert child_ids == sorted(set(child_ids))
    child_workers = {decode(i)["worker_id"] for i in child_ids}
    assert len(child_workers) == 1 and worker_before not in child_workers  # the child leased its own worker ID
    assert gen.worker_id == worker_before  # the parent is unaffected
    assert gen.next_id() > parent_ids[-1]


MINTS = {"next_id": _mint_singles, "next_ids": _mint_batches}


@pytest.mark.parametrize("mint", MINTS.values(), ids=MINTS.keys())
def test_parent_and_child_never_share_an_id(gen: Generator, mint: Callable[[Generator], list[int]]) -> None:
    _check_disjoint(gen, _python_fork, mint)


@pytest.mark.parametrize("mint", MINTS.values(), ids=MINTS.keys())
def test_a_fork_made_in_c_shares_nothing_either(tmp_path: Path, mint: Callable[[Generator], list[int]]) -> None:
    """On the local lease only: kazoo starts and stops threads of its own at any time, and a C fork during
    `threading`'s bookkeeping leaves the child's `threading` locked (CPython's hazard, see _c_fork)."""
    with Generator(lease=LocalLease(DEFAULT_LAYOUT, tmp_path, window_ms=WINDOW_MS)) as gen:
        _check_disjoint(gen, _c_fork, mint)


def test_a_fork_while_another_thread_holds_the_generators_lock(gen: Generator) -> None:
    """Only the forking thread exists in the child: a lock another thread held at the fork stays held there forever.
    The child must mint without it."""
    held, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with gen._lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    held.wait(10)
    try:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            _child_mints(gen, write, lambda g: [g.next_id() for _ in range(10)])
        os.close(write)
        text = _read_all(read)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        holder.join()
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert len(text.split()) == 10


def _mp_child(gen: Generator, queue: Any) -> None:
    queue.put(_mint_singles(gen))
    gen.close()


def test_multiprocessing_fork_context(gen: Generator) -> None:
    gen.next_id()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [context.Process(target=_mp_child, args=(gen, queue)) for _ in range(2)]
    for child in children:
        child.start()
    parent_ids = _mint_singles(gen)
    batches = [queue.get(timeout=60) for _ in children]
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    every = parent_ids + [i for batch in batches for i in batch]
    assert len(every) == len(set(every)) == 3 * PER_SIDE


def test_closing_in_the_child_leaves_the_parents_lease_alone(gen: Generator) -> None:
    gen.next_id()
    pid = os.fork()
    if pid == 0:
        gen.close()  # never used in the child: nothing of the parent's may be released
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    status_after = gen.lease.status()
    assert status_after.reservation is not None and status_after.reservation.worker_id == gen.worker_id
    assert gen.next_id()


def test_a_lease_closed_in_the_child_leaves_the_parents_claim_and_records_alone(gen: Generator) -> None:
    """A user's ``with lease:`` can unwind in a forked child: its copy of the parent's lease must not release the
    parent's claim, lower its fence or end its history entry."""
    gen.next_id()
    worker = gen.worker_id
    assert worker is not None
    fence_before = gen.lease.fence_of(worker)
    assert fence_before is not None
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            gen.lease.close(high_water_ms=0)  # the inherited lease object, closed directly
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    fence_after = gen.lease.fence_of(worker)
    assert fence_after is not None and fence_after >= fence_before
    assert gen.lease.holders(worker)[-1].ended_ms is None
    assert gen.lease.status().reservation is not None
    gen.lease.renew_soon()
    assert gen.next_id()


def test_a_child_reports_no_worker_id_until_it_leases_its_own(gen: Generator) -> None:
    """Before its first use, a child must not report the parent's worker ID or readiness as its own (``/info``,
    ``/readyz`` of a preloaded app)."""
    parent_worker = gen.worker_id
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)

        def report(gen: Generator) -> list[int]:
            before = [gen.worker_id, gen.readiness()[0]]
            gen.next_id()
            return [-1 if w is None else int(w) for w in before] + [gen.worker_id or -1, int(gen.readiness()[0])]

        _child_mints(gen, write, report)
    os.close(write)
    text = _read_all(read)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, text
    worker_before, ready_before, worker_after, ready_after = (int(v) for v in text.split())
    assert (worker_before, ready_before) == (-1, 0)
    assert worker_after not in (-1, parent_worker) and ready_after == 1


# -- no lock idgen takes survives in a child that does not own it --------------------------------------------------


def _living_child(fork: Callable[[], int], work: Callable[[], None] = lambda: None) -> Child:
    """A child forked with ``fork`` that runs ``work``, reports, and then lives until killed (:func:`_kill`)."""
    read, write = os.pipe()

    def live(report: Callable[[Any], None]) -> None:
        os.close(write)
        work()
        report("forked")
        os.read(read, 1)  # blocks: the test holds the other end open until it kills the child

    child = Child(fork, live)
    os.close(read)
    child.next()
    _living[child.pid] = write
    return child


_living: dict[int, int] = {}  # the pid of a living child -> the pipe end that keeps it waiting


def _kill(child: Child) -> None:
    os.kill(child.pid, signal.SIGKILL)
    os.close(_living.pop(child.pid))
    child.close()


@pytest.mark.parametrize("fork", FORKS.values(), ids=FORKS.keys())
def test_a_fork_while_the_directory_is_locked_leaves_the_lock_with_the_parent(
    tmp_path: Path, fork: Callable[[], int]
) -> None:
    """A fork that lands while the renewal thread writes a record (under the directory's ``flock``): before, the
    child's copy of the descriptor kept the lock after the parent closed its own, and every claim and renewal on the
    directory failed for as long as the child lived."""
    lease = LocalLease(DEFAULT_LAYOUT, tmp_path, window_ms=WINDOW_MS)
    with Generator(lease=lease) as gen:
        with lease._directory_locked():  # as the renewal thread holds it for each record write
            child = _living_child(fork)
        try:
            with Generator(lease=LocalLease(DEFAULT_LAYOUT, tmp_path, window_ms=WINDOW_MS)) as fresh:
                assert fresh.worker_id not in (None, gen.worker_id)
            lease._extend(lease.status().reservation, lease.status().reservation.fence_ms + 1)  # a renewal
        finally:
            _kill(child)


@pytest.mark.parametrize("fork", FORKS.values(), ids=FORKS.keys())
def test_a_claim_the_parent_lets_go_of_is_free_while_its_children_live(tmp_path: Path, fork: Callable[[], int]) -> None:
    gen = Generator(lease=LocalLease(DEFAULT_LAYOUT, tmp_path, range(0, 1), window_ms=WINDOW_MS))
    gen.next_id()
    child = _living_child(fork)  # never calls idgen, as a pool process that has no IDs to mint yet
    try:
        gen.close()
        with Generator(lease=LocalLease(DEFAULT_LAYOUT, tmp_path, range(0, 1), window_ms=WINDOW_MS)) as successor:
            assert successor.worker_id == 0
    finally:
        _kill(child)


@pytest.mark.parametrize("fork", FORKS.values(), ids=FORKS.keys())
def test_a_fork_during_a_switch_leaves_the_other_lease_with_the_parent(tmp_path: Path, fork: Callable[[], int]) -> None:
    """During a switch the parent holds two claims: the generator's lease and the one it switches to or from. The
    child adopts the generator (a claim of its own), and must keep neither: before, the other lease's lock stayed
    open in the child, and the worker ID stayed held after the parent released it, for as long as the child lived."""
    with Generator(lease=LocalLease(DEFAULT_LAYOUT, tmp_path, range(0, 3), window_ms=WINDOW_MS)) as gen:
        gen.next_id()
        other = LocalLease(DEFAULT_LAYOUT, tmp_path, range(0, 3), window_ms=WINDOW_MS)
        assert other.start(lambda _: None) is not None
        child = _living_child(fork, lambda: gen.next_id() and None)  # adopts: a worker ID of its own
        try:
            other.close()
            with Generator(lease=LocalLease(DEFAULT_LAYOUT, tmp_path, range(1, 2), window_ms=WINDOW_MS)) as next_:
                assert next_.worker_id == 1
        finally:
            _kill(child)


PARENT_DIES = """
import os, sys, time
from idgen import DEFAULT_LAYOUT, Generator
from idgen.leases.local import LocalLease
from forks import FORKS
gen = Generator(lease=LocalLease(DEFAULT_LAYOUT, sys.argv[1], range(0, 2), window_ms=20_000))
gen.next_id()
pid = FORKS[sys.argv[2]]()
if pid == 0:
    if sys.argv[3] == "mints":
        gen.next_id()
    os.write(1, f"child {gen.worker_id}\\n".encode())  # one write each: the two processes share the pipe
    os.close(1), os.close(2)  # done: the test reads on
    time.sleep(600)  # until the test kills it
    os._exit(0)
os.write(1, f"parent {pid}\\n".encode())
os._exit(0)  # dies holding worker 0: no close, no LOCK_UN
"""


@pytest.mark.parametrize(
    ("fork", "child"), [("os.fork", "idle"), ("C fork without at-fork hooks", "mints")], ids=["os.fork", "C fork"]
)
def test_a_parent_that_dies_holding_a_claim_leaves_it_to_no_child(tmp_path: Path, fork: str, child: str) -> None:
    """The parent dies without letting go of worker 0, while its child lives. After ``os.fork`` the at-fork hook
    closed the child's copy of the lock file at once; after a fork made in C, the child's first call into idgen did.
    Before, the child kept worker 0 held for as long as it lived."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_DIES, str(tmp_path), fork, child],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent,
        start_new_session=True,  # the child stays in the process group, killed with it at the end
    )
    try:
        out, err = parent.communicate(timeout=60)  # both have written and closed their ends; the parent has exited
        said = dict(line.split() for line in out.splitlines())
        assert said["child"] == ("1" if child == "mints" else "None"), err
        with Generator(lease=LocalLease(DEFAULT_LAYOUT, tmp_path, range(0, 1), window_ms=WINDOW_MS)) as successor:
            assert successor.worker_id == 0
        assert os.path.exists(f"/proc/{said['parent']}")  # the child still lives
    finally:
        with contextlib.suppress(ProcessLookupError):  # none left
            os.killpg(parent.pid, signal.SIGKILL)
        parent.wait(10)
