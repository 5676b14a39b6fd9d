"""Waiting for a condition in tests: poll it with a deadline, never a bare sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from idgen.errors import LeaseUnavailable, Unavailable


def eventually(check: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    """``check()``'s first truthy result within ``timeout`` seconds, else ``None``. A refusal (``Unavailable``,
    ``LeaseUnavailable``) counts as "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (Unavailable, LeaseUnavailable):
            pass
        if time.monotonic() > deadline:
            return None
        time.sleep(interval)


def poll(check: Callable[[], Any], what: str = "condition", timeout: float = 15.0) -> Any:
    """``check()``'s first truthy result; fails the test after ``timeout`` seconds, naming ``what``."""
    result = eventually(check, timeout)
    assert result, f"timed out after {timeout:g} s waiting for {what}"
    return result
