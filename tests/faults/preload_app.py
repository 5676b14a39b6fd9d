"""A WSGI app that embeds one :class:`idgen.Generator`, made at import time, for gunicorn ``--preload`` (scenario 10a).

gunicorn imports this module in its master, then forks the workers: each starts with a copy of the generator, its
current tick and its lease. The generator mints one ID here, so the copy holds a live tick. Each worker must still
mint only under a worker ID of its own. The local lease's state directory comes from ``IDGEN_STATE_DIR``.

Routes, shaped like ``idgen serve``'s so :class:`~loadclient.LoadClient` and :class:`~faultkit.IdgenServer` read
them: ``GET /id`` (``{"id": "..."}``), ``GET /id?count=N`` (``{"ids": [...]}``), ``GET /readyz``, and ``GET /info``
(this process's pid and the ID minted at import). A refusal is a 503 with ``Retry-After``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from idgen import Generator
from idgen.errors import Unavailable

GENERATOR = Generator()
PRELOADED_ID = GENERATOR.next_id()

Respond = Callable[[str, list[tuple[str, str]]], Any]


def application(environ: dict[str, Any], start_response: Respond) -> Iterable[bytes]:
    path, query = environ.get("PATH_INFO", ""), parse_qs(environ.get("QUERY_STRING", ""))
    try:
        if path == "/id" and "count" in query:
            body: dict[str, Any] = {"ids": [str(i) for i in GENERATOR.next_ids(int(query["count"][0]))]}
        elif path == "/id":
            body = {"id": str(GENERATOR.next_id())}
        elif path == "/readyz":
            body = {"ready": True}
        elif path == "/info":
            body = {"pid": os.getpid(), "preloaded_id": str(PRELOADED_ID)}
        else:
            return _answer(start_response, "404 Not Found", {"error": {"code": "not_found", "message": path}})
    except Unavailable as exc:
        error = {"error": {"code": exc.code, "message": str(exc)}}
        retry_after = [("Retry-After", str(max(1, math.ceil(exc.retry_after))))]
        return _answer(start_response, "503 Service Unavailable", error, retry_after)
    return _answer(start_response, "200 OK", body)


def _answer(
    start_response: Respond, status: str, body: dict[str, Any], headers: list[tuple[str, str]] | None = None
) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *(headers or [])])
    return [data]
