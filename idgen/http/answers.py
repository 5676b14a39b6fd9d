"""The bodies and headers of ``GET /id`` answers: ``{"id"}``, ``{"ids"}``, one ID per line, or runs
(:mod:`idgen.runs`). Every answer says ``Cache-Control: no-store``: IDs must never be replayed.

More than ``FORMAT_SLICE`` IDs are formatted a slice at a time, the event loop getting a turn in between
(:func:`formatted`), so formatting never holds the loop for longer than one time unit of the layout.
"""

from __future__ import annotations

import asyncio

from multidict import CIMultiDict

from idgen.encoding import format_ids
from idgen.http.negotiation import JSON_TYPE, IdRequest
from idgen.runs import RUNS_TYPE, runs_body

FORMAT_SLICE = 512  # IDs formatted per turn of the event loop: about 0.3 ms in base32 or base58 (bench/bench_format.py)
NO_STORE = "no-store"
ID_HEADERS = CIMultiDict({"Content-Type": JSON_TYPE, "Cache-Control": NO_STORE})
RUNS_HEADERS = CIMultiDict({"Content-Type": RUNS_TYPE, "Cache-Control": NO_STORE})
TEXT_HEADERS = CIMultiDict({"Content-Type": "text/plain; charset=utf-8", "Cache-Control": NO_STORE})


async def id_answer(ids: list[int], asked: IdRequest) -> tuple[bytes, CIMultiDict[str]]:
    """The body and headers that answer ``asked`` with ``ids``."""
    if asked.runs:
        return runs_body(ids), RUNS_HEADERS
    if asked.as_text:
        return await formatted(ids, asked.form, b"", b"\n", b"\n"), TEXT_HEADERS
    # Every form is made of ASCII letters and digits only, so no JSON escaping is needed.
    if asked.single:
        return await formatted(ids, asked.form, b'{"id":"', b"", b'"}'), ID_HEADERS
    return await formatted(ids, asked.form, b'{"ids":["', b'","', b'"]}'), ID_HEADERS


async def formatted(ids: list[int], form: str, head: bytes, separator: bytes, tail: bytes) -> bytes:
    """``head``, ``ids`` in ``form`` separated by ``separator``, ``tail``: an answer's body. More than
    ``FORMAT_SLICE`` IDs are formatted a slice at a time, with a turn of the event loop before each slice (the first
    one too: minting came just before), and each slice's strings are encoded and dropped at once. 4096 IDs in base58
    take about 2.5 ms to format, longer than the one time unit the loop may be held (see the module docstring)."""
    between = separator.decode()
    if len(ids) <= FORMAT_SLICE:
        return head + between.join(format_ids(ids, form)).encode() + tail
    slices: list[bytes] = []
    for start in range(0, len(ids), FORMAT_SLICE):
        await asyncio.sleep(0)
        slices.append(between.join(format_ids(ids[start : start + FORMAT_SLICE], form)).encode())
    return head + separator.join(slices) + tail
