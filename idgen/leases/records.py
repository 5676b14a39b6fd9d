"""Reading lease records strictly: every backend's fences and histories, parsed or refused.

A record that does not parse exactly as idgen writes it (torn, not JSON, a field missing or of the wrong type) raises
:class:`~idgen.errors.UnreadableRecord`. It is never read as "never used": a worker ID whose fence cannot be read may
have minted up to any time, so the backends quarantine it instead (``Lease.quarantined``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

from idgen.errors import InsecureState, InvalidInput, UnreadableRecord
from idgen.files import read_bounded
from idgen.leases.tracing import Holder

MAX_RECORD_BYTES = 1 << 20  # ZooKeeper's own limit on a node's data (jute.maxbuffer): no record of idgen's is larger
MAX_UNIX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: every time a record holds is at most this
WORKER_ID = re.compile(r"0|[1-9][0-9]*", re.ASCII)
"""A worker ID as it appears in a znode or file name: canonical ASCII decimal (``"²"`` passes ``str.isdigit``)."""

_HOLDER_TYPES: dict[str, tuple[type, ...]] = {
    "worker_id": (int,),
    "lease_id": (str,),
    "host": (str,),
    "pid": (int,),
    "address": (str, type(None)),
    "started_ms": (int,),
    "after_ms": (int,),
    "ended_ms": (int, type(None)),
    "fence_ms": (int, type(None)),
}


def read_record_file(
    path: str | os.PathLike[str], what: str, check: Callable[[int, os.stat_result], None] | None = None
) -> bytes:
    """The bytes of a record file, read with a bound (:func:`~idgen.files.read_bounded`); one that is not a regular
    file or is too long to be idgen's is :class:`UnreadableRecord`. ``FileNotFoundError`` and ``InsecureState`` (from
    ``check``) pass through."""
    try:
        return read_bounded(path, MAX_RECORD_BYTES, what, check)
    except InsecureState:
        raise
    except InvalidInput as exc:
        raise UnreadableRecord(f"{what} is unreadable: {str(exc).removeprefix(what + ' is ')}") from None


def load_record(data: bytes | str, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:  # also UnicodeDecodeError
        raise UnreadableRecord(f"{what} is unreadable: not JSON ({len(data)} bytes)") from None


def _typed(value: Any, types: tuple[type, ...]) -> bool:
    """``value`` is of ``types``, a bool is no int, and an int is a Unix time in ms idgen could have written."""
    if isinstance(value, bool) or not isinstance(value, types):
        return False
    return not isinstance(value, int) or -1 <= value <= MAX_UNIX_MS


def _fence_record(record: Any, what: str, lease_id_types: tuple[type, ...] = (str,)) -> dict[str, Any]:
    if not (
        isinstance(record, dict)
        and _typed(record.get("fence_ms"), (int,))
        and record["fence_ms"] >= 0
        and _typed(record.get("lease_id"), lease_id_types)
    ):
        raise UnreadableRecord(f"{what} is unreadable: not a fence record")
    return record


def parse_fence(data: bytes | str, what: str) -> dict[str, Any]:
    """A fence record ``{"fence_ms": int >= 0, "lease_id": str, ...}``, or :class:`UnreadableRecord`."""
    return _fence_record(load_record(data, what), what)


def parse_holder(record: Any, what: str) -> Holder:
    """One holder (a claim, or an entry of a history), every field of its type, or :class:`UnreadableRecord`."""
    if not (isinstance(record, dict) and all(_typed(record.get(k), t) for k, t in _HOLDER_TYPES.items())):
        raise UnreadableRecord(f"{what} is unreadable: not a holder record")
    return Holder.from_json(record)


def parse_holders(record: Any, what: str) -> list[Holder]:
    if not isinstance(record, list):
        raise UnreadableRecord(f"{what} is unreadable: not a list of holders")
    return [parse_holder(h, what) for h in record]


def parse_history(data: bytes | str, what: str) -> list[Holder]:
    """A history: a JSON list of holders, oldest first."""
    return parse_holders(load_record(data, what), what)


def parse_worker_record(data: bytes | str, what: str) -> tuple[dict[str, Any], list[Holder]]:
    """A local lease's record, a fence record with the history in it: ``(fence record, holders)``. Records written
    before idgen kept the lease ID in them have none."""
    record = _fence_record(load_record(data, what), what, (str, type(None)))
    return record, parse_holders(record.get("holders"), what)
