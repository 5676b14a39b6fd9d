"""The local lease with real processes: distinct worker IDs, OS-freed locks, fences across crashes."""

from __future__ import annotations

import json
import os
import pwd
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from holder import HolderProcess
from test_cli import idgen

from idgen import DEFAULT_LAYOUT, PRESETS, Generator, decode
from idgen.errors import InsecureState, InvalidInput, LayoutMismatch, LeaseUnavailable
from idgen.leases.credentials import MAX_CREDENTIALS_BYTES
from idgen.leases.local import LocalLease, parse_worker_ids
from idgen.leases.records import MAX_RECORD_BYTES


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


# -- private state: 0700 and 0600 whatever the umask; another user's or a loose directory refused ----------------


def _modes(state: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in [state, *state.iterdir()]}


def test_state_is_private_whatever_the_umask(tmp_path: Path) -> None:
    state = tmp_path / "a" / "state"
    result = subprocess.run(
        f"umask 000 && exec {sys.executable} -m idgen.cli mint -n 3 --state-dir {state}",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    modes = _modes(state)
    assert modes.pop("state") == 0o700 and stat.S_IMODE(state.parent.stat().st_mode) == 0o700  # a parent made too
    assert set(modes) == {"layout.json", "worker-00000.json", "worker-00000.lock"}  # no temp file left over
    assert set(modes.values()) == {0o600}, modes


def test_a_state_directory_readable_by_others_is_made_private(tmp_path: Path) -> None:
    """As an older idgen left it under umask 022: the directory 0755, its files 0644."""
    state = tmp_path / "state"
    with Generator(lease=LocalLease(DEFAULT_LAYOUT, state, range(0, 1))) as gen:
        gen.next_id()
    for path in [state, *state.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    with Generator(lease=LocalLease(DEFAULT_LAYOUT, state, range(0, 1))) as gen:
        gen.next_id()
    assert set(_modes(state).values()) == {0o700, 0o600}


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_a_state_directory_others_may_write_is_refused_in_one_line_naming_the_fix(tmp_path: Path, mode: int) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(mode)
    result = idgen("mint", state_dir=state)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"idgen: error: state directory {state} is writable by group or others (mode {mode:04o}), so another user"
        f" may have changed its records: check them, then chmod 700 {state}\n"
    )
    with pytest.raises(InsecureState, match="chmod 700"):
        Generator(lease=LocalLease(DEFAULT_LAYOUT, state))
    assert list(state.iterdir()) == []


def test_a_state_directory_or_a_file_of_another_user_is_refused(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody").pw_uid
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, nobody, -1)
    result = idgen("mint", state_dir=state)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert f"state directory {state} belongs to another user (uid {nobody})" in result.stderr
    assert f"chown {os.geteuid()} {state}" in result.stderr

    os.chown(state, os.geteuid(), -1)
    assert idgen("mint", "--worker-ids", "0-1", state_dir=state).returncode == 0
    record = state / "worker-00000.json"
    os.chown(record, nobody, -1)  # inside a private directory only root can do this; refused all the same
    result = idgen("mint", "--worker-ids", "0-1", state_dir=state)
    assert result.returncode == 2
    assert result.stderr == (
        f"idgen: error: the file {record} belongs to another user (uid {nobody}), not to this one"
        f" (uid {os.geteuid()}): use a state directory of this user's, or chown {os.geteuid()} {record}\n"
    )


ATTACK = """
import fcntl, os, sys
state = sys.argv[1]
def attempt(name, action):
    try:
        action()
        print(name, "done")
    except OSError as exc:
        print(name, "refused", exc.strerror)
def overwrite():
    with open(os.path.join(state, "worker-00000.json"), "w") as f:
        f.write('{"fence_ms": 0, "lease_id": "mine", "holders": []}')
def lock():
    fcntl.flock(os.open(state, os.O_RDONLY), fcntl.LOCK_EX | fcntl.LOCK_NB)
attempt("overwrite", overwrite)
attempt("delete", lambda: os.unlink(os.path.join(state, "layout.json")))
attempt("lock", lock)
"""


@pytest.fixture
def shared_parent() -> Iterator[Path]:
    """A directory other users can traverse (pytest's own temp directories are 0700), as a home directory is."""
    parent = Path(tempfile.mkdtemp(prefix="idgen-shared-"))
    parent.chmod(0o755)
    yield parent
    shutil.rmtree(parent)


def test_another_local_user_can_neither_change_nor_lock_the_state(shared_parent: Path) -> None:
    """The state made under umask 000, attacked by a real process of the unprivileged user ``nobody``."""
    state = shared_parent / "state"
    made = subprocess.run(
        f"umask 000 && exec {sys.executable} -m idgen.cli mint --state-dir {state}", shell=True, timeout=60
    )
    assert made.returncode == 0
    attack = subprocess.run(
        ["/usr/bin/python3", "-c", ATTACK, str(state)], user="nobody", capture_output=True, text=True, timeout=30
    )
    assert attack.stdout.splitlines() == [
        "overwrite refused Permission denied",
        "delete refused Permission denied",
        "lock refused Permission denied",
    ], attack.stderr


# -- every file read with a bound; FIFOs and devices refused at once --------------------------------------------


def _fifo(path: Path) -> Path:
    os.mkfifo(path, 0o600)
    return path


@pytest.mark.parametrize("kind", ["fifo", "device", "too long"])
def test_a_record_that_is_no_record_file_is_quarantined_at_once(tmp_path: Path, kind: str) -> None:
    """A FIFO with no writer (reading it would wait for ever), /dev/zero (endless), a file beyond the bound."""
    record = tmp_path / "worker-00000.json"
    if kind == "fifo":
        _fifo(record)
    elif kind == "device":
        record.symlink_to("/dev/zero")
    else:
        record.write_text('{"fence_ms": 1, "lease_id": "x", "holders": []}' + " " * MAX_RECORD_BYTES)
    result = idgen("mint", "--worker-ids", "0-1", state_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert decode(result.stdout.strip())["worker_id"] == 1
    reason = "not a regular file" if kind != "too long" else f"longer than {MAX_RECORD_BYTES:,} bytes"
    assert f"worker ID 0 quarantined: the record {record} is unreadable: {reason}" in result.stderr


@pytest.mark.parametrize(("kind", "reason"), [("fifo", "not a regular file"), ("link", "a symbolic link")])
def test_a_lock_file_that_is_no_file_is_quarantined(tmp_path: Path, kind: str, reason: str) -> None:
    lock = tmp_path / "worker-00000.lock"
    _fifo(lock) if kind == "fifo" else lock.symlink_to("/dev/zero")
    result = idgen("mint", "--worker-ids", "0-1", state_dir=tmp_path)
    assert result.returncode == 0 and decode(result.stdout.strip())["worker_id"] == 1, result.stderr
    assert f"worker ID 0 quarantined: the lock file {lock} is unreadable: {reason}" in result.stderr


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_layout_file_that_is_no_file_is_one_line(tmp_path: Path, kind: str) -> None:
    layout = tmp_path / "layout.json"
    _fifo(layout) if kind == "fifo" else layout.symlink_to("/dev/zero")
    result = idgen("mint", state_dir=tmp_path)
    assert (result.returncode, result.stderr) == (
        1,
        f"idgen: error: the layout file {layout} is unreadable: not a regular file\n",
    )


@pytest.mark.parametrize("kind", ["/dev/zero", "fifo", "too long"])
def test_a_credentials_file_is_read_with_a_bound(tmp_path: Path, kind: str) -> None:
    path = {"/dev/zero": Path("/dev/zero"), "fifo": tmp_path / "fifo", "too long": tmp_path / "long"}[kind]
    if kind == "fifo":
        _fifo(path)
    elif kind == "too long":
        path.write_text("user:" + "p" * MAX_CREDENTIALS_BYTES)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDGEN_")}
    result = subprocess.run(
        [sys.executable, "-m", "idgen.cli", "leases", "--zk", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "IDGEN_ZK_AUTH_FILE": str(path)},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)),  # unbounded, it took 1.85 GB
    )
    reason = "is not a regular file" if kind != "too long" else f"is longer than {MAX_CREDENTIALS_BYTES:,} bytes"
    assert (result.returncode, result.stderr) == (
        2,
        f"idgen: error: the ZooKeeper credentials file {path} (IDGEN_ZK_AUTH_FILE) {reason}\n",
    )


def test_a_record_never_grows_beyond_what_can_be_read_back(tmp_path: Path) -> None:
    """A history long enough to pass the bound is trimmed, oldest first, rather than written unreadable."""
    address = "x" * 20_000
    for _ in range(60):  # 60 holders of about 20 kB each: 1.2 MB
        with Generator(lease=LocalLease(DEFAULT_LAYOUT, tmp_path, range(0, 1), address=address, history_size=100)):
            pass
    size = (tmp_path / "worker-00000.json").stat().st_size
    holders = LocalLease(DEFAULT_LAYOUT, tmp_path, range(0, 1)).holders(0)
    assert size <= MAX_RECORD_BYTES and 40 <= len(holders) < 60


# -- the state directory named: never blank, always a directory -------------------------------------------------


def test_a_blank_state_directory_is_refused_from_the_option_the_variable_and_python(tmp_path: Path) -> None:
    for args, env in [(["--state-dir", ""], {}), ([], {"IDGEN_STATE_DIR": ""}), ([], {"IDGEN_STATE_DIR": " "})]:
        result = subprocess.run(
            [sys.executable, "-m", "idgen.cli", "mint", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env={**os.environ, **env},
        )
        assert result.returncode == 2 and result.stderr.count("\n") == 1, (args, env, result.stderr)
        assert "is empty: name a directory, or leave it unset for the default" in result.stderr
        assert list(tmp_path.iterdir()) == []  # nothing written to the working directory
    with pytest.raises(InvalidInput, match="is empty"):
        LocalLease(DEFAULT_LAYOUT, "")


def test_a_state_directory_that_is_not_a_directory_is_invalid_input() -> None:
    result = idgen("mint", env={"IDGEN_STATE_DIR": "/dev/null"})
    assert (result.returncode, result.stderr) == (2, "idgen: error: state directory /dev/null is not a directory\n")
    with pytest.raises(InvalidInput, match="state directory /dev/null is not a directory"):
        Generator(lease=LocalLease(DEFAULT_LAYOUT, "/dev/null"))


def test_corrupt_state_that_leaves_nothing_to_claim_is_one_line(tmp_path: Path) -> None:
    assert idgen("mint", "--worker-ids", "0-0", state_dir=tmp_path).returncode == 0
    record = tmp_path / "worker-00000.json"
    record.write_text('{"fence_ms": "soon"')
    result = idgen("mint", "--worker-ids", "0-0", state_dir=tmp_path)
    assert (result.returncode, result.stderr) == (
        1,
        f"idgen: error: all 1 worker IDs 0-0 in {tmp_path} are held by running processes or quarantined"
        f" (1: worker 0: the record {record} is unreadable: not JSON (19 bytes))\n",
    )
