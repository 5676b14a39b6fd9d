"""The WSGI app of the gunicorn ``--preload`` scenarios: it serves IDs from whatever mints them in the app module.

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

from idgen.errors import Unavailable

Respond = Callable[[str, list[tuple[str, str]]], Any]
WsgiApp = Callable[[dict[str, Any], Respond], Iterable[bytes]]


def serving(next_id: Callable[[], int], next_ids: Callable[[int], list[int]], preloaded_id: int) -> WsgiApp:
    """The app: IDs from ``next_id`` and ``next_ids``; ``preloaded_id`` is the one minted at import."""

    def application(environ: dict[str, Any], start_response: Respond) -> Iterable[bytes]:
        path, query = environ.get("PATH_INFO", ""), parse_qs(environ.get("QUERY_STRING", ""))
        try:
            if path == "/id" and "count" in query:
                body: dict[str, Any] = {"ids": [str(i) for i in next_ids(int(query["count"][0]))]}
            elif path == "/id":
                body = {"id": str(next_id())}
            elif path == "/readyz":
                body = {"ready": True}
            elif path == "/info":
                body = {"pid": os.getpid(), "preloaded_id": str(preloaded_id)}
            else:
                return _answer(start_response, "404 Not Found", {"error": {"code": "not_found", "message": path}})
        except Unavailable as exc:
            error = {"error": {"code": exc.code, "message": str(exc)}}
            retry_after = [("Retry-After", str(max(1, math.ceil(exc.retry_after))))]
            return _answer(start_response, "503 Service Unavailable", error, retry_after)
        return _answer(start_response, "200 OK", body)

    return application


def _answer(
    start_response: Respond, status: str, body: dict[str, Any], headers: list[tuple[str, str]] | None = None
) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *(headers or [])])
    return [data]
