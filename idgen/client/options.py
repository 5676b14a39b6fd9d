"""The options of :class:`~idgen.client.Client` and :class:`~idgen.client.AsyncClient`: their defaults and checks,
shared with the process default (``IDGEN_URL``: :func:`idgen.config.urls`; ``IDGEN_CLIENT_*``:
:func:`idgen.default.client_options`). Every check raises :class:`~idgen.errors.InvalidInput` saying what is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from idgen.encoding import FORMS
from idgen.errors import InvalidInput, whole_number

DEFAULT_TIMEOUT_S = 2.0
DEFAULT_RETRIES = 1
DEFAULT_BACKOFF_S = 0.1
DEFAULT_PROBE_INTERVAL_S = 1.0
DEFAULT_MAX_AGE_S = 5.0

# The options of Client and AsyncClient after the URLs: (kind, least value, whether None is allowed). Kinds: whole
# numbers, or seconds (a finite int or float).
CLIENT_OPTIONS: dict[str, tuple[type, int, bool]] = {
    "batch": (int, 1, True),
    "low_water": (int, 0, True),
    "timeout": (float, 1, False),
    "retries": (int, 0, False),
    "backoff": (float, 0, False),
    "probe_interval": (float, 1, True),
    "max_wait": (float, 1, True),
    "max_age": (float, 1, True),
}


def check_urls(urls: str | Sequence[str]) -> list[str]:
    """The server URLs, normalised (no trailing slash): at least one, each http(s) with a host and no query, none
    twice."""
    listed = [urls] if isinstance(urls, str) else list(urls)
    if not listed:
        raise InvalidInput("give at least one server URL, such as http://127.0.0.1:8080")
    clean = []
    for url in listed:
        if not isinstance(url, str):
            raise InvalidInput(f"a server URL must be a string, not {type(url).__name__}")
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise InvalidInput(f"{url!r} is not a server URL like http://host:8080 (http or https, no query)")
        try:
            parts.port  # noqa: B018 -- raises ValueError for a bad port
        except ValueError:
            raise InvalidInput(f"{url!r} has a bad port") from None
        clean.append(f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}")
    duplicates = {u for u in clean if clean.count(u) > 1}
    if duplicates:
        raise InvalidInput(f"server URLs listed twice: {', '.join(sorted(duplicates))}")
    return clean


def check_option(name: str, value: Any) -> Any:
    """``value`` checked as option ``name`` of :data:`CLIENT_OPTIONS` (seconds as a float, above 0 unless the least
    value is 0)."""
    kind, least, optional = CLIENT_OPTIONS[name]
    if value is None and optional:
        return None
    if kind is int:
        return whole_number(name, value, least)
    return _check_seconds(name, value, zero=least == 0)


def _check_seconds(name: str, value: Any, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{name} must be a number of seconds, not {value!r}")
    if value < 0 or (value == 0 and not zero):
        raise InvalidInput(f"{name} must be {'at least 0' if zero else 'above 0'} seconds, not {value!r}")
    return float(value)


def check_form(form: str | None) -> None:
    """``form`` is None (ints) or one of :data:`idgen.encoding.FORMS`."""
    if form is not None and form not in FORMS:
        raise InvalidInput(f"form must be None (ints) or one of {', '.join(FORMS)}, not {form!r}")
