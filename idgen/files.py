"""Reading the files idgen is pointed at (credentials, lease records, layouts): bounded, and never blocking.

:func:`read_bounded` is the one way idgen reads a file. Invariants: it reads at most ``max_bytes + 1`` bytes, so a
huge file or an endless one (``/dev/zero``) costs at most that much memory; it reads only regular files, and opens
without blocking, so a FIFO with no writer or a device is refused at once instead of hanging; a refusal is one
:class:`~idgen.errors.InvalidInput` line naming the file and the bound.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

from idgen.errors import InvalidInput


def read_bounded(
    path: str | os.PathLike[str],
    max_bytes: int,
    what: str,
    check: Callable[[int, os.stat_result], None] | None = None,
) -> bytes:
    """The content of the regular file ``path``, at most ``max_bytes`` long; ``what`` names it (and its path) in errors.

    ``check(fd, status)`` is called with the open file before anything is read, so the file checked is the file read.
    Raises :class:`InvalidInput` for a file that is not regular or is longer than ``max_bytes``; ``OSError``
    (``FileNotFoundError`` above all) passes through."""
    # O_NONBLOCK: opening a FIFO with no writer would otherwise wait for one; O_NOCTTY: a terminal never becomes ours.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise InvalidInput(f"{what} is not a regular file")
        if check is not None:
            check(fd, status)
        chunks: list[bytes] = []
        left = max_bytes + 1  # one byte more than allowed tells a file at the bound from one beyond it
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    if left <= 0:
        raise InvalidInput(f"{what} is longer than {max_bytes:,} bytes")
    return b"".join(chunks)
