"""What a request asks for: its query parameters parsed and its ``Accept`` header weighed. Pure functions of their
arguments (no aiohttp request, no I/O), so each is tested with plain calls (tests/test_negotiation.py).

Every malformed parameter raises an :class:`~idgen.errors.InvalidInput` whose ``code`` the service answers with
(400): ``repeated_parameter``, ``invalid_count``, ``invalid_format``, ``invalid_layout``, ``invalid_id`` or
``ambiguous_id``. Quoted input is cut to 40 characters (:func:`shown`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from multidict import MultiMapping

from idgen.encoding import FORMS, parse_id
from idgen.errors import (
    AmbiguousId,
    InvalidCount,
    InvalidFormat,
    InvalidId,
    InvalidInput,
    InvalidLayout,
    RepeatedParameter,
)
from idgen.layout import Layout, get_layout
from idgen.runs import RUNS_TYPE

JSON_TYPE = "application/json"
Query = MultiMapping[str]  # a query string's parameters, each name with all its values (aiohttp's request.query)
_DIGITS = re.compile(r"-?[0-9]+")


@dataclass(frozen=True, slots=True)
class IdRequest:
    """What a ``GET /id`` asks for: ``n`` IDs in ``form``; ``single`` (no ``count``) answers ``{"id"}`` rather than
    ``{"ids"}``; ``as_text`` one per line; ``runs`` the compact runs form (decimal only)."""

    n: int
    single: bool
    form: str
    as_text: bool
    runs: bool


def id_request(query: Query, accept_headers: Sequence[str], max_count: int) -> IdRequest:
    """The ``GET /id`` that ``query`` and the ``Accept`` headers (in order) ask for. ``text/`` must appear in the
    first ``Accept`` header for a text answer, and only a ``count`` request gets runs."""
    accept = accept_headers[0] if accept_headers else None
    as_text = accept is not None and "text/" in accept and prefers_text(",".join(accept_headers))
    count_text, form_text = single(query, "count"), single(query, "format")
    count = None if count_text is None else parse_count(count_text, max_count)
    form = "decimal" if form_text is None else parse_form(form_text)
    runs = count is not None and accept is not None and accepts_runs(",".join(accept_headers))
    if runs and form != "decimal":
        raise InvalidFormat(f"the runs form ({RUNS_TYPE}) carries decimal IDs only")
    return IdRequest(n=count or 1, single=count is None, form=form, as_text=as_text, runs=runs)


def decode_request(id_text: str, query: Query, default: Layout) -> tuple[Layout, dict[str, Any]]:
    """The layout ``GET /decode/{id}`` decodes in (``?layout=``, else ``default``) and the fields of ``id_text`` read
    in ``?format=`` (without it, in the one form it reads in). Either given twice is :class:`RepeatedParameter`."""
    form = single(query, "format")
    if form is not None:
        form = parse_form(form)
    named = single(query, "layout")
    try:
        layout = get_layout(default if named is None else named)
    except InvalidInput as exc:
        raise InvalidLayout(str(exc)) from None
    try:
        return layout, layout.decode(parse_id(id_text, form, bits=layout.bits_total))  # fits the layout?
    except AmbiguousId:
        raise
    except InvalidInput as exc:
        raise InvalidId(str(exc)) from None


def single(query: Query, name: str) -> str | None:
    """The query parameter ``name``, None if absent; :class:`RepeatedParameter` if it is given more than once."""
    values = query.getall(name, [])
    if len(values) > 1:
        raise RepeatedParameter(f"{name} is given {len(values)} times; give it once")
    return values[0] if values else None


def parse_count(text: str, max_count: int) -> int:
    """``text`` as a count from 1 to ``max_count``: decimal digits only (no sign but ``-``, no spaces)."""
    if not _DIGITS.fullmatch(text):
        raise InvalidCount(f"count {shown(text)} is not a whole number")
    value = int(text) if len(text) <= 20 else (-math.inf if text[0] == "-" else math.inf)
    if not 1 <= value <= max_count:
        raise InvalidCount(f"count must be between 1 and {max_count}, not {shown(text)}")
    return int(value)


def parse_form(text: str) -> str:
    """``text`` if it names a string form (:data:`~idgen.encoding.FORMS`)."""
    if text not in FORMS:
        raise InvalidFormat(f"format {shown(text)} is not one of {', '.join(FORMS)}")
    return text


def accepts_runs(accept: str) -> bool:
    """Whether ``Accept`` names the runs form with a quality above 0."""
    for part in accept.split(","):
        media, *params = part.split(";")
        if media.strip().lower() == RUNS_TYPE:
            return all(quality(p) != 0.0 for p in params)
    return False


def quality(param: str) -> float | None:
    """The value of a ``q=`` parameter (0 when malformed or out of range), None for any other parameter."""
    key, _, value = param.partition("=")
    if key.strip().lower() != "q":
        return None
    try:
        given = float(value)
    except ValueError:
        return 0.0
    return given if 0.0 <= given <= 1.0 else 0.0  # also NaN


def prefers_text(accept: str) -> bool:
    """Whether ``Accept`` ranks ``text/plain`` above ``application/json``: by quality, then by how specifically
    each is named (``text/plain`` > ``text/*`` > ``*/*``). A tie, or neither, means JSON."""
    best = {"text": (-1, 0.0), "json": (-1, 0.0)}  # (specificity, quality) of the most specific matching range
    for part in accept.split(","):
        media, *params = part.split(";")
        media = media.strip().lower()
        weight = 1.0
        for param in params:
            given = quality(param)
            if given is not None:
                weight = given
        for kind, full, family in (("text", "text/plain", "text/*"), ("json", JSON_TYPE, "application/*")):
            specificity = 2 if media == full else 1 if media == family else 0 if media == "*/*" else -1
            if specificity > best[kind][0]:
                best[kind] = (specificity, weight)
    (text_specificity, text_quality), (json_specificity, json_quality) = best["text"], best["json"]
    if text_specificity < 0 or text_quality <= 0:
        return False
    if json_specificity < 0 or json_quality <= 0:
        return True
    return text_quality > json_quality or (text_quality == json_quality and text_specificity > json_specificity)


def shown(text: str) -> str:
    """``text`` quoted for an error message, cut to 40 characters."""
    return repr(text if len(text) <= 40 else text[:40] + "...")
