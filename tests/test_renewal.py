"""Renewal under a fault that persists: back-off instead of a storm of writes and log lines.

Every ``FenceReached`` wakes the renewal thread. While its step keeps failing (a full disk, a clock ZooKeeper calls
untrusted), those wake-ups must not turn into a write per request: the lease backs off with jitter, and the same
warning is logged once, not once per attempt.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from polling import eventually
from zkharness import TEST_CREDENTIALS

from idgen import DEFAULT_LAYOUT, Generator
from idgen.clock import ManualClock
from idgen.errors import LeaseUnavailable, Unavailable
from idgen.leases.base import Lease
from idgen.leases.local import LocalLease
from idgen.leases.zookeeper import ZkLease, connected

HAMMER_S = 2.0
MAX_ATTEMPTS = 12  # a back-off from 0.1 s doubling to 1 s makes about 5 attempts in 2 s; a storm makes thousands


def hammer(gen: Generator, seconds: float = HAMMER_S) -> int:
    """Ask for IDs as fast as possible for ``seconds``; each refusal wakes the renewal thread. Returns refusals."""
    refusals = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            gen.next_id()
        except Unavailable:
            refusals += 1
    return refusals


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real, tiny filesystem (tmpfs) for the state directory, which the test can fill up."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mount)], capture_output=True
    ).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(directory: Path) -> None:
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_a_write_that_keeps_failing_is_retried_with_back_off_and_logged_once(
    full_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    with Generator(lease=LocalLease(DEFAULT_LAYOUT, full_disk, clock=clock, window_ms=1_000), clock=clock) as gen:
        gen.next_id()
        fill(full_disk)
        clock.advance(10_000)  # past the fence: every call refuses and wakes the renewal thread
        with caplog.at_level(logging.WARNING, logger="idgen.lease"):
            refusals = hammer(gen)
        attempts = gen.lease.renewal_failures
        (full_disk / "filler").unlink()
        recovered = eventually(gen.next_id, timeout=5.0)
    assert refusals > 1_000  # the generator kept asking
    assert 1 <= attempts <= MAX_ATTEMPTS, f"{attempts} failed writes in {HAMMER_S} s"
    failures = [r for r in caplog.records if getattr(r, "event", None) == "lease_step_failed"]
    assert len(failures) == 1, [r.getMessage() for r in failures]
    assert "No space left on device" in failures[0].getMessage()
    assert recovered, "the lease did not extend the fence once the disk had room again"


def test_a_clock_zookeeper_calls_untrusted_is_not_checked_once_per_request(zk_hosts: str, zk_namespace: str) -> None:
    clock = ManualClock()
    lease: Lease = ZkLease(DEFAULT_LAYOUT, zk_hosts, zk_namespace, auth=TEST_CREDENTIALS, clock=clock, window_ms=1_000)
    with Generator(lease=lease, clock=clock) as gen, connected(zk_hosts, TEST_CREDENTIALS) as client:
        gen.next_id()
        clock_node = f"{zk_namespace}/clock"
        before = client.get(clock_node)[1].version
        clock.advance(9_000)  # 9 s ahead of ZooKeeper: past the fence, and untrusted
        hammer(gen)
        checks = client.get(clock_node)[1].version - before  # every check writes the clock node once
    assert 1 <= checks <= MAX_ATTEMPTS, f"{checks} clock checks written to ZooKeeper in {HAMMER_S} s"


def test_a_claim_whose_first_write_fails_on_a_full_disk_leaves_no_lock_behind(full_disk: Path) -> None:
    """A claim locks the worker ID's file, then writes its first fence. If that write fails, the lock must go too, or
    every retry (the renewal thread's, a generator's switch of worker IDs) strands one more worker ID until exit."""
    options: dict[str, Any] = {"worker_ids": range(3, 4), "window_ms": 1_000}
    with Generator(lease=LocalLease(DEFAULT_LAYOUT, full_disk, **options)) as first:  # the layout file, a record
        first.next_id()
    fill(full_disk)
    with pytest.raises(LeaseUnavailable, match="No space left on device"):
        Generator(lease=LocalLease(DEFAULT_LAYOUT, full_disk, **options))
    (full_disk / "filler").unlink()
    with Generator(lease=LocalLease(DEFAULT_LAYOUT, full_disk, **options)) as after:  # worker 3 is free again
        assert after.worker_id == 3 and after.next_id()


class _LostDuringTheClockCheck(LocalLease):
    """A lease whose claim is lost on another thread (kazoo's, etcd's keepalive) while its renewal step checks the
    clock, once ``lose_on_check`` is set: the race the step must not paper over."""

    lose_on_check = False

    def _clock_problem(self) -> str | None:
        if self.lose_on_check:
            self._lose("the session expired")
        return None


def test_a_claim_lost_during_a_renewal_step_keeps_its_reason_and_is_not_extended(tmp_path: Path) -> None:
    """The step wrote the clock check's answer (None) over the loss's reason: the lease read LOST with no reason, and
    the step went on as if it had succeeded. Driven by hand, as ``start`` does but without the renewal thread."""
    lease = _LostDuringTheClockCheck(DEFAULT_LAYOUT, state_dir=tmp_path)
    published: list[Any] = []
    lease._listener = published.append
    lease._hand_over(lease._acquire_checked())
    try:
        lease.lose_on_check = True
        assert lease._step() == 0.0  # lost meanwhile: straight back to acquiring, no extension
        status = lease.status()
        assert (status.state.name, status.reason) == ("LOST", "lease lost: the session expired"), status
        assert published[-1] is None
    finally:
        lease.close()
