"""idgen's error answer, the one shape of every 4xx and 5xx: from the handlers (:mod:`idgen.http.service`) and
from below the application (:mod:`idgen.http.connections`)."""

from __future__ import annotations

import math

from aiohttp import web


def error_response(status: int, code: str, message: str, retry_after: float | None = None) -> web.Response:
    """idgen's error answer: ``{"error": {"code", "message"}}``, never cached; with ``Retry-After`` (whole seconds,
    at least 1) if given."""
    response = web.json_response({"error": {"code": code, "message": message}}, status=status)
    response.headers["Cache-Control"] = "no-store"
    if retry_after is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return response
