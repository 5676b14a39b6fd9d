"""The local lease backend: worker IDs for the processes of one host, with no other service.

Files in the state directory:

- ``layout.json``: the layout this directory belongs to; a generator with another layout is refused.
- ``worker-NNNNN.lock``: the claim, an exclusive ``flock`` on that file. The OS drops it when the holder exits.
- ``worker-NNNNN.json``: the fence, the lease ID of the holder that wrote it, and the bounded holder history,
  replaced atomically (write, fsync, rename, fsync the directory) so a crash leaves either the old record or the
  new one, never a torn one.

Every claim and every record write runs under a ``flock`` on the directory itself, and a write first checks that
the claim is still this lease's: the lock file at the path is the very file it locked (a lock file removed, by a
tmp cleaner or by hand, lets another process lock a new file of that name), and the record still carries its lease
ID. A holder that fails that check has lost the worker ID (:class:`~idgen.errors.LeaseLost`): it never extends
its fence again, so a new holder, which starts above that fence, never meets its IDs. The renewal thread writes
every half window, so a lost claim is noticed within that.

Each write also touches the lock file, so that cleaners that remove old, untouched files pass it by.

A new holder takes the free worker ID that was never used, else the one whose fence is oldest (``_claim_order``).
A worker ID whose record cannot be read is never taken (``quarantined``).

The directory is private (DESIGN.md section 8): 0700, every file in it 0600 whatever the umask; a directory or file
of another user, or a directory group or others may write, is :class:`~idgen.errors.InsecureState`. Every file is
read with a bound (:func:`~idgen.files.read_bounded`).

Forks: a ``flock`` belongs to the open file description, which a forked child shares through its copy of the
descriptor. So every lock is released with ``LOCK_UN`` (never by ``close`` alone), which frees it for every copy, and
every descriptor locked through is tracked (:func:`idgen.forking.hold`) so that a child closes its copies: no lock
stays held by a child that does not own it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import re
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Self

from idgen import forking
from idgen.errors import InsecureState, InvalidInput, LayoutMismatch, LeaseLost, LeaseUnavailable, UnreadableRecord
from idgen.layout import Layout
from idgen.leases.base import Census, Lease, Reservation
from idgen.leases.records import MAX_RECORD_BYTES, load_record, parse_worker_record, read_record_file
from idgen.leases.tracing import Holder, remember

DIRECTORY_LOCK_TIMEOUT_S = 5.0
_RECORD_NAME = re.compile(r"worker-([0-9]{5})\.json", re.ASCII)
_LOCK_NAME = re.compile(r"worker-([0-9]{5})\.lock", re.ASCII)
STATE_DIR_ENV = "IDGEN_STATE_DIR"


def default_state_dir() -> Path:
    """``$IDGEN_STATE_DIR``, else ``$XDG_STATE_HOME/idgen``, else ``~/.local/state/idgen``. A blank
    ``$IDGEN_STATE_DIR`` is :class:`InvalidInput`: it names no directory, and is refused as ``--state-dir ''`` is."""
    if STATE_DIR_ENV in os.environ:
        return _state_dir(os.environ[STATE_DIR_ENV], STATE_DIR_ENV)
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "idgen"


def parse_state_dir(text: str) -> str:
    """A state directory from an option or a variable; blank is :class:`InvalidInput` (see :func:`_state_dir`)."""
    return os.fspath(_state_dir(text))


def _state_dir(given: str | os.PathLike[str], source: str | None = None) -> Path:
    """``given`` as a state directory; blank is :class:`InvalidInput` (``Path("")`` would be the working directory),
    its message led by ``source`` if given."""
    if not os.fspath(given).strip():
        where = f"{source}: " if source else ""
        raise InvalidInput(
            f"{where}an empty path is not a directory; this one is empty: name a directory, or leave it unset for the"
            " default"
        )
    return Path(given)


def parse_worker_ids(text: str) -> range:
    """``"A-B"`` (inclusive) or ``"N"`` as a range of worker IDs."""
    matched = re.fullmatch(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?", text)  # ASCII digits only: int() reads others
    if matched is None:
        raise InvalidInput(f"worker IDs {text!r} are not of the form A-B (for example 0-511)")
    first, last = int(matched[1]), int(matched[2] or matched[1])
    if not 0 <= first <= last:
        raise InvalidInput(f"worker IDs {text!r} must satisfy 0 <= A <= B")
    return range(first, last + 1)


class LocalLease(Lease):
    """Leases worker IDs from ``worker_ids`` (default: the layout's whole range) through file locks in ``state_dir``."""

    def __init__(
        self,
        layout: Layout,
        state_dir: str | os.PathLike[str] | None = None,
        worker_ids: range | None = None,
        **options: Any,
    ) -> None:
        super().__init__(layout, **options)
        self.state_dir = _state_dir(state_dir, "state_dir") if state_dir is not None else default_state_dir()
        self.worker_ids = worker_ids if worker_ids is not None else range(layout.worker_capacity)
        if not self.worker_ids or self.worker_ids[0] < 0 or self.worker_ids[-1] >= layout.worker_capacity:
            raise InvalidInput(
                f"worker IDs {_span(self.worker_ids)} do not fit layout {layout.name!r}"
                f" (0-{layout.worker_capacity - 1})"
            )

    def _init_runtime(self) -> None:
        super()._init_runtime()
        self._claim_fd: int | None = None
        self._claim_file: tuple[int, int] | None = None  # (device, inode) of the lock file locked
        self._holders: list[Holder] = []

    def forked(self) -> Self:
        # Closes this process's copies of every descriptor the parent locks through, this lease's claim among them (a
        # fork made in C ran no at-fork hook to do it): the parent's locks stay the parent's.
        forking.close_inherited()
        clone = super().forked()
        self._claim_fd = None  # this copy is the parent's lease: it must never close a descriptor reused since
        return clone

    # -- storage operations -------------------------------------------------------------------------

    def _acquire(self, holder: Holder) -> Reservation:
        forking.close_inherited()  # a process forked in C: the parent's locks are not for it to hold
        _make_private_dir(self.state_dir)
        unreadable: dict[int, str] = {}  # worker ID -> why: quarantined, logged only if another is claimed
        with self._directory_locked():
            self._check_layout()
            for worker_id in self._candidates(unreadable):
                try:
                    fd = _open_lock_file(self._path(worker_id, "lock"))
                except UnreadableRecord as exc:
                    unreadable[worker_id] = str(exc)
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    record, holders = self._read(worker_id)
                except BlockingIOError:
                    forking.close_held(fd)
                    continue
                except BaseException as exc:
                    _unlock_and_close(fd)
                    if not isinstance(exc, UnreadableRecord):
                        raise
                    unreadable[worker_id] = str(exc)
                    continue
                found = record.get("fence_ms")
                after = self._claim_after(found)
                fence = self._first_fence(after)
                me = replace(holder, worker_id=worker_id, lease_id=uuid.uuid4().hex, after_ms=after)
                self._holders = remember(holders, me, self.history_size, found)
                self._claim_fd, self._claim_file = fd, _identity(os.fstat(fd))
                try:
                    self._write(worker_id, fence, me.lease_id)
                except OSError as exc:  # a full or failing disk: let the worker ID go, or every retry strands one
                    self._drop_claim()
                    raise LeaseUnavailable(
                        f"cannot write the record of worker {worker_id} in {self.state_dir}: {exc}"
                    ) from None
                for unread, why in unreadable.items():
                    self._quarantine(unread, why)  # logged: the process serves without them
                return Reservation(worker_id, after, fence, me.lease_id, found)
        # Not logged one by one: the error says why, in one line (the CLI's promise), and /info lists them.
        self.quarantined = {**self.quarantined, **unreadable}
        raise self._none_claimable(
            f"all {len(self.worker_ids)} worker IDs {_span(self.worker_ids)} in {self.state_dir}"
            f" are held by running processes{_quarantined(self.quarantined)}"
        )

    def _extend(self, reservation: Reservation, fence_ms: int) -> None:
        with self._directory_locked():
            self._check_claim(reservation)
            self._write(reservation.worker_id, fence_ms, reservation.lease_id)

    def _release(self, reservation: Reservation, final_fence_ms: int) -> None:
        try:
            with self._directory_locked():
                self._check_claim(reservation)
                ended = self._now_ms()
                self._holders = [
                    replace(h, ended_ms=ended, fence_ms=final_fence_ms) if h.lease_id == reservation.lease_id else h
                    for h in self._holders
                ]
                self._write(reservation.worker_id, final_fence_ms, reservation.lease_id)
        finally:
            self._drop_claim()

    def holders(self, worker_id: int) -> list[Holder]:
        return self._read(worker_id)[1]

    def fence_of(self, worker_id: int) -> int | None:
        return self._read(worker_id)[0].get("fence_ms")

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "backend": "local",
            "state_dir": str(self.state_dir),
            "worker_ids": _span(self.worker_ids),
        }

    # -- files ------------------------------------------------------------------------------------

    def _path(self, worker_id: int, kind: str) -> Path:
        return self.state_dir / f"worker-{worker_id:05d}.{kind}"

    @contextlib.contextmanager
    def _directory_locked(self) -> Iterator[None]:
        """Hold the state directory's ``flock``: claims and record writes of every process are serialised by it.
        Bounded: a holder stopped while it holds the lock costs others a :class:`LeaseUnavailable`, never a hang.
        Released by ``LOCK_UN``, so a process forked meanwhile, whose copy of the descriptor shares the lock, does
        not keep it (:func:`_unlock_and_close`)."""
        fd = forking.hold(os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        try:
            deadline = time.monotonic() + DIRECTORY_LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LeaseUnavailable(
                            f"state directory {self.state_dir} stayed locked by another process for"
                            f" {DIRECTORY_LOCK_TIMEOUT_S:g} s"
                        ) from None
                    time.sleep(0.005)
            yield
        finally:
            _unlock_and_close(fd)

    def _check_claim(self, reservation: Reservation) -> None:
        """Raise :class:`LeaseLost` (and let the worker ID go) unless the claim is still ours; under the directory
        lock, so no other process can claim the worker ID between this check and the write that follows."""
        worker_id = reservation.worker_id
        lock_path = self._path(worker_id, "lock")
        why = None
        try:
            if self._claim_fd is None or _identity(os.stat(lock_path)) != self._claim_file:
                why = f"its lock file {lock_path} was replaced"
            elif self._read(worker_id)[0].get("lease_id") != reservation.lease_id:
                why = f"its record {self._path(worker_id, 'json')} names another holder"
            else:
                os.utime(lock_path)  # fresh, for cleaners that remove old files
        except FileNotFoundError:
            why = f"its lock file {lock_path} was removed"
        except UnreadableRecord as exc:
            why = str(exc)
        if why is not None:
            self._drop_claim()
            raise LeaseLost(f"worker {worker_id} is no longer ours: {why}")

    def _drop_claim(self) -> None:
        if self._claim_fd is not None and os.getpid() == self._owner_pid:
            _unlock_and_close(self._claim_fd)
        self._claim_fd = None

    def _read(self, worker_id: int) -> tuple[dict[str, Any], list[Holder]]:
        """The record of ``worker_id`` (``{}`` and no holders if it has none), or :class:`UnreadableRecord`."""
        path = self._path(worker_id, "json")
        try:
            data = read_record_file(path, f"the record {path}", functools.partial(_check_private_file, path))
        except FileNotFoundError:
            return {}, []
        return parse_worker_record(data, f"the record {path}")

    def _write(self, worker_id: int, fence_ms: int, lease_id: str) -> None:
        while True:
            record = {
                "worker_id": worker_id,
                "fence_ms": fence_ms,
                "lease_id": lease_id,
                "holders": [h.to_json() for h in self._holders],
            }
            text = json.dumps(record, indent=1)
            if len(text.encode()) <= MAX_RECORD_BYTES or len(self._holders) == 1:
                break
            self._holders = self._holders[1:]  # a record too long to be read back would quarantine the worker ID
        _write_durably(self._path(worker_id, "json"), text)

    def _candidates(self, unreadable: dict[int, str]) -> Iterator[int]:
        """Free-looking worker IDs in the order to try (:meth:`_claim_order`). Worker IDs quarantined before, or whose
        records are unreadable now (added to ``unreadable``), are never tried."""
        fences: dict[int, int] = {}
        for path in self.state_dir.iterdir():
            name = _RECORD_NAME.fullmatch(path.name)
            worker_id = int(name.group(1)) if name else -1
            if worker_id not in self.worker_ids:
                continue
            try:
                fences[worker_id] = self._read(worker_id)[0]["fence_ms"]
            except UnreadableRecord as exc:
                unreadable[worker_id] = str(exc)
        free = [w for w in self.worker_ids if w not in self.quarantined and w not in unreadable]
        yield from self._claim_order(free, fences)

    def _check_layout(self) -> None:
        path = self.state_dir / "layout.json"
        what = f"the layout file {path}"
        try:
            data = read_record_file(path, what, functools.partial(_check_private_file, path))
        except FileNotFoundError:
            _write_durably(path, json.dumps(self.layout.spec()))
            return
        try:
            stored = Layout.from_spec(load_record(data, what))
        except UnreadableRecord:
            raise
        except (InvalidInput, TypeError, ValueError, KeyError) as exc:
            raise UnreadableRecord(f"{what} is unreadable: not a layout spec ({exc})") from None
        if stored != self.layout:
            raise LayoutMismatch(
                f"state directory {self.state_dir} belongs to layout {stored.summary()}, not {self.layout.summary()}"
            )

    def census(self) -> Census:
        """One listing of the state directory, and a non-blocking ``flock`` probe of each lock file in range (no
        record is read), under the directory lock: a claim, which locks under it too, never meets a probe."""
        held: set[int] = set()
        if self.state_dir.is_dir():
            with self._directory_locked(), os.scandir(self.state_dir) as entries:
                for entry in entries:
                    name = _LOCK_NAME.fullmatch(entry.name)
                    if name and int(name.group(1)) in self.worker_ids and _locked(entry.path):
                        held.add(int(name.group(1)))
        return self._census_of(self.worker_ids, held)


def _locked(path: str) -> bool:
    """Whether another open file (another process, or this one's claim) holds the ``flock`` of ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # drops the probe's lock, if it got one
    return False


def _write_durably(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that after a crash it holds either the old or the new content. The file is
    0600 whatever the umask: a new file (``mkstemp``: exclusive, 0600 at most, then exactly) renamed over the old."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with open(fd, "w") as f:
            os.fchmod(fd, _FILE_MODE)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. a full disk: leave no partial file behind
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _identity(status: os.stat_result) -> tuple[int, int]:
    return status.st_dev, status.st_ino


def _quarantined(quarantined: dict[int, str]) -> str:
    """`` or quarantined (...)``, the first reasons in full, for the error that no worker ID is claimable."""
    if not quarantined:
        return ""
    shown = "; ".join(f"worker {w}: {why}" for w, why in sorted(quarantined.items())[:3])
    more = f"; and {len(quarantined) - 3} more" if len(quarantined) > 3 else ""
    return f" or quarantined ({len(quarantined)}: {shown}{more})"


# -- private state: the directory 0700 and every file in it 0600, whatever the umask ----------------------------

_DIR_MODE = 0o700
_FILE_MODE = 0o600


def _make_private_dir(path: Path) -> None:
    """Create ``path`` as this user's private state directory, or make sure it is one: owned by this user and writable
    by no one else (else :class:`InsecureState`, naming the fix); any other bits are set to exactly 0700.

    Another user who could write it could rewrite a fence (and have IDs minted twice); one who could only read it
    could still ``flock`` it and stall every claim and renewal."""
    for missing in reversed([p for p in (path, *path.parents) if not p.exists()]):
        with contextlib.suppress(FileExistsError):  # made meanwhile: what it is, is checked below
            missing.mkdir(mode=_DIR_MODE)  # parents too, as XDG asks of $XDG_STATE_HOME
    status = os.stat(path)
    if not stat.S_ISDIR(status.st_mode):  # e.g. /dev/null
        raise InvalidInput(f"state directory {path} is not a directory")
    _check_owner(status, f"state directory {path}", path)
    if status.st_mode & 0o022:
        raise InsecureState(
            f"state directory {path} is writable by group or others (mode {stat.S_IMODE(status.st_mode):04o}),"
            f" so another user may have changed its records: check them, then chmod 700 {path}"
        )
    if stat.S_IMODE(status.st_mode) != _DIR_MODE:
        os.chmod(path, _DIR_MODE)


def _check_owner(status: os.stat_result, what: str, path: Path) -> None:
    euid = os.geteuid()
    if status.st_uid != euid:
        raise InsecureState(
            f"{what} belongs to another user (uid {status.st_uid}), not to this one (uid {euid}): use a state"
            f" directory of this user's, or chown {euid} {path}"
        )


def _check_private_file(path: Path, fd: int, status: os.stat_result) -> None:
    """The file ``path`` of the state directory, open as ``fd``: this user's (else :class:`InsecureState`), and made
    0600.
    Wider bits are tightened, not refused: the directory, checked private, is what keeps others out; the file's own
    mode only matters to a descriptor or hard link made before, which tightening cuts off."""
    _check_owner(status, f"the file {path}", path)
    if stat.S_IMODE(status.st_mode) != _FILE_MODE:
        os.fchmod(fd, _FILE_MODE)


def _open_lock_file(path: Path) -> int:
    """A lock file of the state directory, opened (created 0600 if need be) and tracked (:func:`forking.hold`). One
    that is a symbolic link or not a regular file is :class:`UnreadableRecord`: its worker ID is quarantined."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = forking.hold(os.open(path, flags, _FILE_MODE))
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise UnreadableRecord(f"the lock file {path} is unreadable: a symbolic link") from None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise UnreadableRecord(f"the lock file {path} is unreadable: not a regular file")
        _check_private_file(path, fd, status)
    except BaseException:
        forking.close_held(fd)
        raise
    return fd


def _unlock_and_close(fd: int) -> None:
    """Drop ``fd``'s ``flock`` with ``LOCK_UN``, then close it. A ``flock`` belongs to the open file description, which
    a process forked while it was held shares through its copy of ``fd``: closing ``fd`` alone would leave the lock
    held for as long as that copy is open. ``LOCK_UN`` releases it for every copy."""
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        forking.close_held(fd)


def _span(worker_ids: range) -> str:
    return f"{worker_ids[0]}-{worker_ids[-1]}" if worker_ids else "(empty)"
