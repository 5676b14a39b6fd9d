"""The local lease with real processes: distinct worker IDs, OS-freed locks, fences across crashes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from holder import HolderProcess

from idgen import DEFAULT_LAYOUT, PRESETS, Generator, decode
from idgen.errors import InvalidInput, LayoutMismatch, LeaseUnavailable
from idgen.leases.local import LocalLease, parse_worker_ids


def local_holder(spawn_holder, state_dir: Path, worker_ids: str = "0-1023", window_ms: int = 1_000) -> HolderProcess:
    first, last = parse_worker_ids(worker_ids)[0], parse_worker_ids(worker_ids)[-1]
    return spawn_holder(
        DEFAULT_LAYOUT, state_dir=str(state_dir), worker_ids=[first, last + 1], options={"window_ms": window_ms}
    )


def test_processes_on_one_host_get_distinct_worker_ids(tmp_path: Path, spawn_holder) -> None:
    started = [local_holder(spawn_holder, tmp_path) for _ in range(6)]  # racing for the same never-used IDs
    assert len({h.ready().worker_id for h in started}) == 6


def test_a_crashed_holders_lock_is_freed_and_the_next_holder_mints_above_its_fence(
    tmp_path: Path, spawn_holder
) -> None:
    crashed = local_holder(spawn_holder, tmp_path, "7-7").ready()
    with pytest.raises(LeaseUnavailable, match=r"all 1 worker IDs 7-7 .* are held by running processes"):
        LocalLease(DEFAULT_LAYOUT, tmp_path, range(7, 8)).start(lambda _: None)
    crashed.kill()
    old_fence = json.loads((tmp_path / "worker-00007.json").read_text())["fence_ms"]
    assert old_fence > decode(crashed.first_id)["timestamp_ms"]  # the crash left a fence ahead of its IDs
    with Generator(lease=LocalLease(DEFAULT_LAYOUT, tmp_path, range(7, 8), window_ms=1_000)) as successor:
        assert successor.worker_id == 7
        assert decode(successor.next_id())["timestamp_ms"] > old_fence


def test_exhausted_range_refuses_and_prefers_never_used_then_oldest_fence(tmp_path: Path, spawn_holder) -> None:
    first, second = (local_holder(spawn_holder, tmp_path, "0-2").ready() for _ in range(2))
    assert [first.worker_id, second.worker_id] == [0, 1]  # never-used IDs first, lowest first
    first.stop()  # worker 0 released first: its fence is the oldest
    second.stop()
    assert local_holder(spawn_holder, tmp_path, "0-2").ready().worker_id == 2  # never used beats both released
    with Generator(lease=LocalLease(DEFAULT_LAYOUT, tmp_path, range(0, 2))) as gen:
        assert gen.worker_id == 0  # the older fence of the two


def test_a_state_directory_belongs_to_one_layout(tmp_path: Path) -> None:
    with Generator(lease=LocalLease(DEFAULT_LAYOUT, tmp_path)) as gen:
        gen.next_id()
    with pytest.raises(LayoutMismatch, match=r"belongs to layout 'idgen' \(41 time .*not 'twitter' \(41 time"):
        Generator("twitter", LocalLease(PRESETS["twitter"], tmp_path))


def test_history_traces_an_id_to_its_holder_after_the_worker_id_was_reused(tmp_path: Path) -> None:
    ids = []
    for _ in range(3):
        with Generator(lease=LocalLease(DEFAULT_LAYOUT, tmp_path, range(4, 5))) as gen:
            ids.append(gen.next_id())
            lease_id = gen.lease.status().reservation.lease_id
    lease = LocalLease(DEFAULT_LAYOUT, tmp_path, range(4, 5))
    traced = [lease.trace(4, decode(i)["timestamp_ms"]).holder for i in ids]
    assert len({t.lease_id for t in traced}) == 3
    assert traced[-1].lease_id == lease_id
    assert {(t.host, t.pid) for t in traced} == {(os.uname().nodename, os.getpid())}
    assert all(t.ended_ms is not None for t in traced)


@pytest.mark.parametrize(("text", "expected"), [("0-1023", range(0, 1024)), ("5", range(5, 6)), ("3-3", range(3, 4))])
def test_worker_id_ranges_parse(text: str, expected: range) -> None:
    assert parse_worker_ids(text) == expected


@pytest.mark.parametrize("text", ["", "a-b", "5-3", "-1", "1-", "1-2-3"])
def test_bad_worker_id_ranges_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_worker_ids(text)


def test_worker_ids_must_fit_the_layout(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="do not fit layout 'idgen'"):
        LocalLease(DEFAULT_LAYOUT, tmp_path, range(1000, 1025))
