"""Telling, on a hot path, whether this is still the process that made an object, or a process forked from it.

A fork copies every object, so a copy of a generator's current tick would hand the parent's IDs out again in the
child. Python's ``os.register_at_fork`` hooks do not cover every fork: uWSGI forks in C and runs them only with
``py-call-osafterfork``. So the check reads memory that the kernel clears in every child, however it forked.

:func:`process_marker` returns a one-byte buffer: ``marker[0]`` is 1 in the process that made it and 0 in any process
forked from it (a page marked ``MADV_WIPEONFORK``, Linux 4.14 and later). Reading it costs about 30 ns, against about
180 ns for ``os.getpid()``. Where that is not available it falls back to comparing pids, which is as exact but slower.

:class:`ProcessLock` is a lock for work a process does once after a fork: a lock copied from the parent may have been
held by a thread that does not exist in the child, so each process gets one of its own.

Descriptors a process locks through (:func:`hold`) are closed in every process forked from it
(:func:`close_inherited`): at once by an at-fork hook after ``os.fork``, and, after a fork made in C, by the first
call into idgen that locks or adopts. A ``flock`` belongs to the open file description, which the child's copy of
the descriptor shares; closing the copy leaves the parent's lock alone, and the lock then ends when the parent lets
go of it. The parent always lets go with ``LOCK_UN``, which releases it for every copy, so a child that never calls
idgen (forked in C) holds a copy of the descriptor, never the lock, unless the parent dies without letting go.
"""

from __future__ import annotations

import mmap
import os
import sys
import threading
from typing import Protocol

_MADV_WIPEONFORK = getattr(mmap, "MADV_WIPEONFORK", 18 if sys.platform.startswith("linux") else None)


class ProcessMarker(Protocol):
    def __getitem__(self, index: int, /) -> int:
        """``[0]``: 1 in the process that made the marker, 0 in every process forked from it."""


class _PidMarker:
    """The fallback: the same answer from a pid comparison."""

    def __init__(self) -> None:
        self._pid = os.getpid()

    def __getitem__(self, index: int, /) -> int:
        return int(os.getpid() == self._pid)


def process_marker() -> ProcessMarker:
    """A new marker for the calling process (one page of memory while it lives)."""
    if _MADV_WIPEONFORK is not None:
        page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            page.madvise(_MADV_WIPEONFORK)
        except OSError:  # a kernel older than 4.14
            page.close()
        else:
            page[0] = 1
            return page
    return _PidMarker()


class ProcessLock:
    """``lock()``: the calling process's own lock, made on its first call there; every thread of a process gets the
    same one (``dict.setdefault`` is atomic), and no process ever gets one a fork copied, held or not."""

    def __init__(self) -> None:
        self._locks: dict[int, threading.Lock] = {}  # pid -> that process's lock

    def __call__(self) -> threading.Lock:
        return self._locks.setdefault(os.getpid(), threading.Lock())


_held: dict[int, tuple[int, int, int]] = {}  # descriptor -> (pid of the process that opened it, st_dev, st_ino)
_closing_inherited = ProcessLock()


def hold(fd: int) -> int:
    """Track ``fd``, a descriptor this process takes locks through, so that forked children close their copies;
    returns ``fd``. Call it before locking: a lock taken on a copy the fork made untracked would be shared."""
    status = os.fstat(fd)
    _held[fd] = (os.getpid(), status.st_dev, status.st_ino)
    return fd


def close_held(fd: int) -> None:
    """Stop tracking ``fd`` and close it."""
    _held.pop(fd, None)
    os.close(fd)


def close_inherited() -> None:
    """Close this process's copies of the descriptors a parent held (:func:`hold`); cheap when there are none.

    A copy is closed only if it still refers to the file it did at the fork: a child that closed every descriptor
    (a daemon) may have opened another file under the same number since."""
    pid = os.getpid()
    if all(owner == pid for owner, _, _ in list(_held.values())):  # list(): one step, as another thread may add
        return
    with _closing_inherited():
        for fd, (owner, device, inode) in list(_held.items()):
            if owner == pid or _held.get(fd) != (owner, device, inode):
                continue
            del _held[fd]
            try:
                status = os.fstat(fd)
            except OSError:  # closed already
                continue
            if (status.st_dev, status.st_ino) == (device, inode):
                os.close(fd)


os.register_at_fork(after_in_child=close_inherited)
