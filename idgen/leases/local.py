"""The local lease backend: worker IDs for the processes of one host, with no other service.

Files in the state directory:

- ``layout.json``: the layout this directory belongs to; a generator with another layout is refused.
- ``worker-NNNN.lock``: the claim, an exclusive ``flock``. The OS drops it when the holder exits or crashes.
- ``worker-NNNN.json``: the fence and the bounded holder history, replaced atomically (write, fsync,
  rename, fsync the directory) so a crash leaves either the old record or the new one, never a torn one.

A new holder takes the free worker ID that was never used, else the one whose fence is oldest, so the
ID a process just released (or crashed with) is the last to be reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Self

from idgen.errors import InvalidInput, LayoutMismatch, LeaseUnavailable
from idgen.layout import Layout
from idgen.leases.base import Holder, Lease, Reservation, remember

STATE_DIR_ENV = "IDGEN_STATE_DIR"


def default_state_dir() -> Path:
    """``$IDGEN_STATE_DIR``, else ``$XDG_STATE_HOME/idgen``, else ``~/.local/state/idgen``."""
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV])
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "idgen"


def parse_worker_ids(text: str) -> range:
    """``"A-B"`` (inclusive) or ``"N"`` as a range of worker IDs."""
    low, sep, high = text.partition("-")
    try:
        first, last = int(low), int(high if sep else low)
    except ValueError:
        raise InvalidInput(f"worker IDs {text!r} are not of the form A-B (for example 0-511)") from None
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
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.worker_ids = worker_ids if worker_ids is not None else range(layout.worker_capacity)
        if not self.worker_ids or self.worker_ids[0] < 0 or self.worker_ids[-1] >= layout.worker_capacity:
            raise InvalidInput(
                f"worker IDs {_span(self.worker_ids)} do not fit layout {layout.name!r}"
                f" (0-{layout.worker_capacity - 1})"
            )

    def _init_runtime(self) -> None:
        super()._init_runtime()
        self._claim_fd: int | None = None
        self._holders: list[Holder] = []

    def forked(self) -> Self:
        clone = super().forked()
        if self._claim_fd is not None:
            # The child's copy of the descriptor shares the parent's flock: closing it here leaves the parent's claim
            # alone, and lets the worker ID go free once the parent lets go of it.
            os.close(self._claim_fd)
        return clone

    # -- storage operations -------------------------------------------------------------------------

    def _acquire(self, holder: Holder) -> Reservation:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._check_layout()
        for worker_id in self._candidates():
            fd = os.open(self._path(worker_id, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            record = self._read(worker_id)
            found = record.get("fence_ms")
            after = self._claim_after(found)
            fence = self._first_fence(after)
            me = replace(holder, worker_id=worker_id, lease_id=uuid.uuid4().hex, after_ms=after)
            holders = [Holder.from_json(h) for h in record.get("holders", [])]
            self._holders = remember(holders, me, self.history_size, found)
            self._write(worker_id, fence)
            self._claim_fd = fd
            return Reservation(worker_id, after, fence, me.lease_id, found)
        raise LeaseUnavailable(
            f"all {len(self.worker_ids)} worker IDs {_span(self.worker_ids)} in {self.state_dir}"
            " are held by running processes"
        )

    def _extend(self, reservation: Reservation, fence_ms: int) -> None:
        self._write(reservation.worker_id, fence_ms)  # the flock cannot be lost while this process lives

    def _release(self, reservation: Reservation, final_fence_ms: int) -> None:
        try:
            ended = self._now_ms()
            self._holders = [
                replace(h, ended_ms=ended, fence_ms=final_fence_ms) if h.lease_id == reservation.lease_id else h
                for h in self._holders
            ]
            self._write(reservation.worker_id, final_fence_ms)
        finally:
            if self._claim_fd is not None:
                os.close(self._claim_fd)  # closing the descriptor drops the flock
                self._claim_fd = None

    def holders(self, worker_id: int) -> list[Holder]:
        return [Holder.from_json(h) for h in self._read(worker_id).get("holders", [])]

    def fence_of(self, worker_id: int) -> int | None:
        return self._read(worker_id).get("fence_ms")

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

    def _read(self, worker_id: int) -> dict[str, Any]:
        try:
            return json.loads(self._path(worker_id, "json").read_text())
        except FileNotFoundError:
            return {}

    def _write(self, worker_id: int, fence_ms: int) -> None:
        record = {"worker_id": worker_id, "fence_ms": fence_ms, "holders": [h.to_json() for h in self._holders]}
        _write_durably(self._path(worker_id, "json"), json.dumps(record, indent=1))

    def _candidates(self) -> Iterator[int]:
        """Free-looking worker IDs in the order to try: never used first, then oldest fence first."""
        fences: dict[int, int] = {}
        for path in self.state_dir.glob("worker-*.json"):
            with contextlib.suppress(ValueError, KeyError, OSError):
                worker_id = int(path.name[7:12])
                if worker_id in self.worker_ids:
                    fences[worker_id] = json.loads(path.read_text())["fence_ms"]
        yield from (w for w in self.worker_ids if w not in fences)
        yield from sorted(fences, key=fences.__getitem__)

    def _check_layout(self) -> None:
        path = self.state_dir / "layout.json"
        with open(self.state_dir / "layout.lock", "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            if not path.exists():
                _write_durably(path, json.dumps(self.layout.spec()))
                return
            stored = json.loads(path.read_text())
        if stored != self.layout.spec():
            raise LayoutMismatch(
                f"state directory {self.state_dir} belongs to layout {Layout.from_spec(stored).summary()},"
                f" not {self.layout.summary()}"
            )


def _write_durably(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that after a crash it holds either the old or the new content."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _span(worker_ids: range) -> str:
    return f"{worker_ids[0]}-{worker_ids[-1]}" if worker_ids else "(empty)"
