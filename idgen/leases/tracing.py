"""Who minted an ID: the history of a worker ID's holders and the windows they could mint in.

A backend keeps, per worker ID, the history of its holders (:class:`Holder`), bounded to ``history_size``: each
could mint only timestamps in its window ``(after_ms, fence_ms]``, and windows are disjoint (DESIGN.md section 2),
so the holder whose window contains an ID's timestamp is the one that minted it, and an ID in no window was minted by
no recorded holder (:func:`trace`). :meth:`Lease.trace <idgen.leases.base.Lease.trace>` answers from a backend's
records, ``idgen decode --zk`` from ZooKeeper's directly; the backends keep the history with :func:`remember`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from idgen.layout import iso_ms


@dataclass(frozen=True)
class Holder:
    """One holder of a worker ID, as kept in its history. It minted only timestamps ``t`` with
    ``after_ms < t <= fence_ms``. ``fence_ms`` is ``None`` while it holds the worker ID (the current fence bounds
    it then), and in records written before idgen kept it; it is set once, at release (the final fence) or, after
    a crash, by its successor (the fence it read), and never changes after."""

    worker_id: int
    lease_id: str
    host: str
    pid: int
    address: str | None
    started_ms: int
    after_ms: int
    ended_ms: int | None = None
    fence_ms: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Holder:
        fields: dict[str, Any] = {k: data.get(k) for k in cls.__dataclass_fields__}
        return cls(**fields)


@dataclass(frozen=True)
class Traced:
    """Who minted an ID: ``holder``, or ``None`` and why no recorded holder did. ``code`` is one of
    ``before_history`` (at or below the oldest retained holder's ``after_ms``), ``future`` (above the current
    fence: not minted yet), ``outside_windows`` (between two holders' windows) or ``no_history``."""

    holder: Holder | None
    code: str | None = None
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``node`` fields of ``/decode`` and ``idgen decode``: ``node``, plus ``node_reason`` when it is null."""
        if self.holder is not None:
            return {"node": self.holder.to_json()}
        return {"node": None, "node_reason": {"code": self.code, "message": self.message}}


def windows(holders: Sequence[Holder], fence_ms: int | None) -> list[tuple[Holder, float]]:
    """Each retained holder (oldest first) with the end of its window: its recorded ``fence_ms``; without one
    (records of older versions), the next holder's ``after_ms``, which was that fence; for the last holder, the
    current fence ``fence_ms``, or no end at all if that is unknown. Every end is at or above what its holder
    minted, so a window never leaves out an ID its holder minted."""
    ends: list[float] = [h.after_ms for h in holders[1:]] + [math.inf if fence_ms is None else fence_ms]
    return [(h, end if h.fence_ms is None else h.fence_ms) for h, end in zip(holders, ends, strict=True)]


def settled_ms(holders: Sequence[Holder]) -> int:
    """Up to which timestamp ``trace`` gives the same answer for ever: later holders start above it."""
    last = holders[-1] if holders else None
    if last is None:
        return -1
    return last.after_ms if last.fence_ms is None else last.fence_ms


def trace(holders: Sequence[Holder], unix_ms: int, fence_ms: int | None) -> Traced:
    """Who minted an ID stamped ``unix_ms`` (the start of its tick), from the retained history of its worker ID
    (oldest first) and the worker ID's current durable fence ``fence_ms`` (``None``: unknown).

    The holder whose window (:func:`windows`) contains ``unix_ms``; windows are disjoint (DESIGN.md section 2),
    so there is at most one. Sound when ``fence_ms`` was read after the ID was minted and the history after that.
    """
    if not holders:
        return Traced(None, "no_history", "no holder of this worker ID is recorded")
    bounded = windows(holders, fence_ms)
    for holder, end in reversed(bounded):
        if holder.after_ms < unix_ms <= end:
            return Traced(holder)
    worker, when = holders[0].worker_id, iso_ms(unix_ms)
    first = holders[0].after_ms
    if unix_ms <= first:
        return Traced(
            None,
            "before_history",
            f"stamped {when}, before the oldest retained holder of worker {worker} could mint (after {iso_ms(first)});"
            " earlier holders, if any, are no longer recorded",
        )
    top = max(bounded[-1][1], -math.inf if fence_ms is None else fence_ms)
    if unix_ms > top:
        return Traced(
            None,
            "future",
            f"stamped {when}, above the current fence of worker {worker} ({iso_ms(int(top))}): no holder has minted"
            " it yet",
        )
    before = max(end for holder, end in bounded if end < unix_ms)
    after = min((holder.after_ms for holder, _ in bounded if holder.after_ms >= unix_ms), default=top)
    return Traced(
        None,
        "outside_windows",
        f"stamped {when}, when no recorded holder of worker {worker} could mint: one window ended at"
        f" {iso_ms(int(before))}, the next began after {iso_ms(int(after))}",
    )


def remember(holders: list[Holder], holder: Holder, size: int, fence_ms: int | None) -> list[Holder]:
    """``holders`` plus ``holder`` (replacing an entry of the same lease), keeping the newest ``size``.
    ``fence_ms`` is the fence ``holder`` found: it ends the window of the previous holder if that one did not
    record its own (it crashed or lost its claim)."""
    kept = [h for h in holders if h.lease_id != holder.lease_id]
    if kept and fence_ms is not None and kept[-1].fence_ms is None:
        kept[-1] = replace(kept[-1], fence_ms=fence_ms)
    return [*kept, holder][-size:]


class Histories:
    """The histories :meth:`Lease.trace <idgen.leases.base.Lease.trace>` has read, by worker ID, for answers that
    cannot change: at or below :func:`settled_ms` of a history, a fresh read would give the same answer, since every
    later holder starts above it. Keeps the ``size`` worker IDs read last. Thread-safe."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._histories: dict[int, list[Holder]] = {}
        self._lock = threading.Lock()

    def settled(self, worker_id: int, unix_ms: int) -> list[Holder] | None:
        with self._lock:
            holders = self._histories.get(worker_id)
        return holders if holders is not None and unix_ms <= settled_ms(holders) else None

    def keep(self, worker_id: int, holders: list[Holder]) -> None:
        with self._lock:
            self._histories.pop(worker_id, None)
            self._histories[worker_id] = holders
            while len(self._histories) > self._size:
                del self._histories[next(iter(self._histories))]
