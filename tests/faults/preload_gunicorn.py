"""gunicorn configuration of scenario 10a: once the master listens, it logs the port as ``idgen serve`` does (a
JSON ``listening`` event on stderr), so :class:`~faultkit.IdgenServer` can run gunicorn like a server of its own."""

from __future__ import annotations

import json
import sys
from typing import Any


def when_ready(server: Any) -> None:
    port = server.LISTENERS[0].getsockname()[1]
    print(json.dumps({"event": "listening", "port": port}), file=sys.stderr, flush=True)
