"""What a server says is checked, not trusted: the answers of ``GET /info``, ``GET /id`` and ``GET /readyz``, read
into values or into the failures an attempt ends with (:class:`Refused`, :class:`Failed`, :class:`Replayed`). No
I/O: the refillers (:mod:`idgen.client.sync`, :mod:`idgen.client.aio`) read the bytes, the buffer
(:mod:`idgen.client.buffer`) calls these on them.

- **/info** gives a server's layout and ``--max-count`` (:func:`info_answer`); requests never ask for more than that
  ``--max-count``.
- **Byte bounds.** An answer is read with a byte bound (:func:`answer_limit_bytes`: ``BYTES_PER_ID`` per ID asked
  for, plus ``ANSWER_SLACK_BYTES``, which is the bound of ``/info`` and ``/readyz`` too): a larger one fails the
  attempt (:func:`check_length` on its Content-Length before the body is read, :func:`too_large` while reading it),
  and the connection is dropped unread.
- **/id** is read in the runs form (:mod:`idgen.runs`) or, from a server that predates it, JSON; either must hold
  exactly the count asked for of strictly increasing 63-bit IDs (:func:`ids_answer`).
- **Retry-After.** A 503 is a refusal (:class:`Refused`); its ``Retry-After``, delay-seconds or an HTTP-date, is
  clamped to 1..3600 s (1 s if unreadable: ``inf``, ``nan``) by :func:`retry_after_s`.
- **Floors** (:class:`Floors`): per server and worker ID (the node fields of the ID, read with the layout the
  server's ``/info`` gave), the highest ID accepted. An answer holding any ID at or below its worker ID's floor (a
  replay, by the server or by a cache or proxy before it, or anything older) is dropped whole (:class:`Replayed`),
  and the attempt fails over like any failure. Every ID accepted is thus above every ID of its worker ID accepted
  from that server before, so no two are equal; the client needs no memory of the IDs themselves, one integer per
  worker ID. A server never trips a floor itself: IDs of one worker ID grow strictly across its holders
  (docs/DESIGN.md, section 2) and across a server's switch of worker IDs (each has its own floor), and each
  answer's IDs are strictly increasing (checked here).

**Assumptions** the floors rest on: a URL keeps the layout its ``/info`` gave while the client lives (a server
redeployed behind it with another layout has its answers judged by the old one: at worst they are refused, never
handed out twice); and IDs of one worker ID never go down, which holds while the servers behind the URL share one
ID space.
"""

from __future__ import annotations

import email.utils
import errno
import itertools
import json
import re
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

from idgen.encoding import DECIMAL_DIGITS, MAX_ID
from idgen.errors import InvalidInput
from idgen.layout import Layout, get_layout
from idgen.runs import RUNS_TYPE, parse_runs, runs_body
from idgen.version import __version__

DEFAULT_RETRY_AFTER_S = 1.0  # a refusal's wait when its Retry-After is missing or unreadable
MAX_RETRY_AFTER_S = 3600.0  # the longest wait a Retry-After may ask for (a server's longest, layout expired)
BYTES_PER_ID = 64  # an /id answer may take this many bytes per ID asked for (26 at most in either form) ...
ANSWER_SLACK_BYTES = 64 << 10  # ... plus this, which is also the bound of every other answer (/info, /readyz)

# What every request asks for. identity: an answer is read with a byte bound, which a compressed body would escape
# once decompressed.
REQUEST_HEADERS = {
    "Accept": f"{RUNS_TYPE}, application/json;q=0.5",
    "Accept-Encoding": "identity",
    "User-Agent": f"idgen-client/{__version__}",
}

_DELAY_SECONDS = re.compile(r"\s*([0-9]{1,30}(?:\.[0-9]{0,30})?)\s*")  # ASCII digits only, unlike float()


class Refused(Exception):
    """A 503: the server cannot vouch for IDs now; ``retry_after`` is the wait it asked for, clamped."""

    def __init__(self, text: str, retry_after: float) -> None:
        super().__init__(text)
        self.retry_after = retry_after


class Failed(Exception):
    """Any other failure: unreachable, timed out, an unexpected status or a malformed answer. ``code``: the error
    code of an HTTP error answer, if it had one."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.code = code


class Replayed(Failed):
    """An answer that holds an ID at or below the floor of its worker ID: the server (or a cache before it) sent
    IDs already seen, or older ones."""


class Answer(NamedTuple):
    """An answer as read off the wire: whole, by its deadline and within its byte bound."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class ServerInfo(NamedTuple):
    """What a server's ``GET /info`` said: the layout its IDs are read with, and its ``--max-count``."""

    layout: Layout
    max_count: int


class Floors:
    """Per worker ID, the highest ID accepted from one server; the worker ID of an ID is read with the layout given
    to :meth:`read_with` (its server's ``/info``). Floors only go up."""

    __slots__ = ("highest", "layout", "node_mask")

    def __init__(self) -> None:
        self.highest: dict[int, int] = {}  # worker ID -> the highest ID of it accepted
        self.layout: Layout | None = None
        self.node_mask = 0  # the bits of the layout's node fields

    def read_with(self, layout: Layout) -> None:
        self.layout, self.node_mask = layout, layout.node_bits(layout.worker_capacity - 1)

    def raise_to(self, runs: list[range]) -> None:
        """Raise the floors to the IDs of an answer, all of which must lie above the floor of their worker ID (else
        :class:`Replayed`, and no floor moves). A run of consecutive integers whose node bits cannot differ (none
        lies below its first and last IDs' highest differing bit: the usual case, one tick of one worker ID) is
        checked at its first ID; any other run ID by ID (a batch holds at most ``--max-count`` IDs)."""
        layout = self.layout
        assert layout is not None
        tops: dict[int, int] = {}
        for run in runs:
            first, last = run[0], run[-1]
            one_worker = not self.node_mask & ((1 << (first ^ last).bit_length()) - 1)
            for low, high in [(first, last)] if one_worker else [(i, i) for i in run]:
                try:
                    worker = layout.split(low)["worker"]
                except InvalidInput as exc:
                    raise Failed(f"malformed answer: {exc}") from None
                floor = self.highest.get(worker, -1)
                if low <= floor:
                    raise Replayed(
                        f"replayed answer: ID {low} of worker ID {worker} is at or below {floor}, the highest this"
                        " server handed over before"
                    )
                tops[worker] = high  # runs are strictly increasing: the last is the highest
        self.highest.update(tops)


def ids_answer(status: int, headers: Mapping[str, str], body: bytes, count: int) -> list[range]:
    """The IDs of a ``GET /id?count=count`` answer, as runs; raises :class:`Refused` or :class:`Failed`. The runs
    form is asked for; a server that predates it answers JSON."""
    if status != 200:
        raise http_failure(status, headers, body)
    if headers.get("Content-Type", "").startswith(RUNS_TYPE):
        try:
            return parse_runs(body, count)
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested past the decoder's depth
            raise Failed(f"malformed answer: {exc}") from None
    try:
        texts = _json(body)["ids"]
    except (ValueError, KeyError, TypeError):
        raise Failed('malformed answer: not {"ids": [...]}') from None
    if not (isinstance(texts, list) and len(texts) == count and all(_is_decimal(t) for t in texts)):
        raise Failed(f"malformed answer: expected {count} decimal ID strings")
    ids = list(map(int, texts))
    if ids[-1] > MAX_ID or any(a >= b for a, b in itertools.pairwise(ids)):
        raise Failed("malformed answer: the IDs are not strictly increasing 63-bit integers")
    return parse_runs(runs_body(ids), count)


def info_answer(status: int, headers: Mapping[str, str], body: bytes) -> ServerInfo:
    """The layout and ``--max-count`` a ``GET /info`` answer gives; :class:`Failed` if it gives neither."""
    if status != 200:
        raise http_failure(status, headers, body, "GET /info: ")
    try:
        info = _json(body)
        layout, max_count = get_layout(info["layout"]["spec_string"]), info["max_count"]
    except (ValueError, KeyError, TypeError):  # InvalidInput is a ValueError
        raise Failed("malformed /info: no layout spec_string and max_count") from None
    if isinstance(max_count, bool) or not isinstance(max_count, int) or max_count < 1:
        raise Failed(f"malformed /info: max_count {max_count!r}")
    return ServerInfo(layout, max_count)


def readiness_answer(status: int, headers: Mapping[str, str], body: bytes) -> None:
    """Nothing if a ``GET /readyz`` answer says ready; else :class:`Refused` (503) or :class:`Failed`."""
    if status != 200:
        raise http_failure(status, headers, body)


def _json(body: bytes) -> Any:
    """``json.loads``; JSON nested past the decoder's depth is a :class:`ValueError` like any malformed JSON, not the
    :class:`RecursionError` that would end the refill loop."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("JSON nested too deep") from None


def _is_decimal(text: Any) -> bool:
    return isinstance(text, str) and DECIMAL_DIGITS.fullmatch(text) is not None


def answer_limit_bytes(count: int) -> int:
    """The most bytes an answer to ``GET /id?count=count`` may take: more is no idgen server's."""
    return ANSWER_SLACK_BYTES + BYTES_PER_ID * count


def check_length(headers: Mapping[str, str], limit_bytes: int) -> None:
    """Fail at once an answer whose Content-Length says it is over the bound."""
    length = headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limit_bytes:
        raise too_large(limit_bytes)


def too_large(limit_bytes: int) -> Failed:
    return Failed(f"answer larger than {limit_bytes:,} bytes, more than any idgen server sends for it")


def retry_after_s(text: str | None, now_unix_s: float) -> float:
    """The seconds a ``Retry-After`` asks to wait: delay-seconds or an HTTP-date (RFC 9110), clamped to
    ``1..MAX_RETRY_AFTER_S``; ``DEFAULT_RETRY_AFTER_S`` when missing or unreadable (``inf``, ``nan``, words)."""
    if text is None:
        return DEFAULT_RETRY_AFTER_S
    if delay := _DELAY_SECONDS.fullmatch(text):
        seconds = float(delay[1])
    else:
        try:
            seconds = email.utils.parsedate_to_datetime(text).timestamp() - now_unix_s
        except (ValueError, TypeError, IndexError, OverflowError):
            return DEFAULT_RETRY_AFTER_S
    return min(MAX_RETRY_AFTER_S, max(1.0, seconds))


def http_failure(status: int, headers: Mapping[str, str], body: bytes, what: str = "") -> Refused | Failed:
    """The failure an answer other than 200 stands for: a 503 is :class:`Refused`, anything else :class:`Failed`
    (with the error code of its JSON body, if any)."""
    code = None
    try:
        error = _json(body)["error"]
        code, said = str(error["code"]), f" {error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        said = f": {' '.join(body[:200].decode(errors='replace').split())}" if body else ""
    text = f"{what}HTTP {status}{said}"
    if status != 503:
        return Failed(text, code)
    retry_after = retry_after_s(headers.get("Retry-After"), time.time())
    return Refused(f"{text} (Retry-After {retry_after:g} s)", retry_after)


def describe(exc: BaseException, timeout_s: float, timeouts: tuple[type[BaseException], ...]) -> str:
    """A short account of a transport failure: refused, timed out (an exception of ``timeouts`` in its chain, the
    transport's), or the OS's words."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for link in chain:
        if isinstance(link, ConnectionRefusedError) or getattr(link, "errno", None) == errno.ECONNREFUSED:
            return "connection refused"
    for link in chain:
        if isinstance(link, timeouts):
            return f"no answer within {timeout_s:g} s"
    for link in chain:
        if isinstance(link, OSError) and link.strerror:
            return f"connection failed: {link.strerror}"
    return f"connection failed: {' '.join(str(exc).split())[:200] or type(exc).__name__}"
