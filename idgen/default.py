"""The process's default ID source, behind ``idgen.next_id()`` and ``idgen.next_ids(n)``.

It is made on first use from the ``IDGEN_*`` environment, read as ``idgen serve`` reads it
(:meth:`idgen.config.Settings.from_env`): a :class:`~idgen.generator.Generator` under a local lease by default, under a
ZooKeeper lease with ``IDGEN_ZK`` (credentials from ``IDGEN_ZK_AUTH`` or ``IDGEN_ZK_AUTH_FILE``, always), or a
:class:`~idgen.client.Client` of the running servers listed, comma-separated, in ``IDGEN_URL``. A bad variable raises
:class:`~idgen.errors.InvalidInput` naming it, on the first use and on every use after it until it is fixed.

Invariants:

- one source per process: threads racing the first use make one, under a lock made in the calling process (a lock
  another thread held when the process forked stays held in the child);
- a forked child (``os.fork``, multiprocessing's fork context, gunicorn ``--preload``, uWSGI) keeps the parent's
  source, which adopts in the child: a generator leases a worker ID of its own on its first use there, a client starts
  with an empty buffer. Parent and children never hand out the same ID;
- at interpreter exit (``atexit``, or multiprocessing's finalizers in its children, which end with ``os._exit``) the
  source is closed: a generator releases its lease with the fence brought down to the last tick it used, so the next
  holder of its worker ID mints at once. A process killed by a signal or ending with ``os._exit`` otherwise (a
  multiprocessing pool's workers when the pool is terminated) skips that: its worker ID is freed all the same, but the
  next holder waits for the clock to pass the fence (at most 1.5 lease windows, 7.5 s by default).
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from idgen.client import Client
    from idgen.generator import Generator

_source: Generator | Client | None = None
_locks: dict[int, threading.Lock] = {}  # pid -> the lock under which that process makes its source
_closing_registered = False  # the close at exit, once per process tree


def default_generator() -> Generator | Client:
    """The process's default source of IDs, made on first use from the ``IDGEN_*`` environment."""
    global _source, _closing_registered
    source = _source
    if source is not None:
        return source
    with _locks.setdefault(os.getpid(), threading.Lock()):  # setdefault is atomic: one lock per process
        if _source is None:
            from idgen.config import Settings, source_for

            _source = source_for(Settings.from_env())
            if not _closing_registered:
                atexit.register(_close_at_exit)
                # multiprocessing's children end with os._exit, which skips atexit but runs its finalizers
                from multiprocessing import util

                util.register_after_fork(_close_at_exit, _close_at_child_exit)
                _closing_registered = True
        return _source


def next_id() -> int:
    """The next ID from the process's default source (see :func:`default_generator`)."""
    return (_source or default_generator()).next_id()


def next_ids(n: int) -> list[int]:
    """``n`` IDs from the process's default source, strictly increasing (from servers: increasing per server)."""
    return (_source or default_generator()).next_ids(n)


def reset_default() -> None:
    """Close the default source and forget it; the next use makes a new one from the environment as it is then.
    For tests, and for a process that changes its ``IDGEN_*`` variables. A thread still holding the old source gets
    :class:`~idgen.errors.NoLease` (or ``ClientClosed``) from it."""
    global _source
    with _locks.setdefault(os.getpid(), threading.Lock()):
        source, _source = _source, None
    if source is not None:
        source.close()


def _close_at_child_exit(_: object) -> None:
    """In a multiprocessing child, as it starts: close the default as the child exits."""
    from multiprocessing import util

    util.Finalize(None, _close_at_exit, exitpriority=0)


def _close_at_exit() -> None:
    source = _source
    if source is not None:
        source.close()
