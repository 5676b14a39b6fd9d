"""Realistic idgen users for locust: mostly single IDs, some batches, some decodes.

Every ID received is recorded: each locust process appends one JSON line per response to
``$IDGEN_LOADTEST_OUT/ids-<pid>.jsonl``: ``{"user", "ids", "status", "ms"}``. ``loadtest/check.py`` turns
those files into the verdict (duplicates, order, errors, latency).

Hosts: ``$IDGEN_LOADTEST_HOSTS`` (comma-separated base URLs); each user sticks to one, round-robin, so
the per-user order check sees one server's IDs in the order that server minted them.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from pathlib import Path
from typing import Any, ClassVar, TextIO

from locust import FastHttpUser, events, task

HOSTS = [h for h in os.environ.get("IDGEN_LOADTEST_HOSTS", "http://127.0.0.1:8080").split(",") if h]
OUT = Path(os.environ.get("IDGEN_LOADTEST_OUT", "loadtest/results"))
_next_user = itertools.count()
_log: TextIO | None = None


@events.test_start.add_listener
def _open_log(**_: Any) -> None:
    global _log
    OUT.mkdir(parents=True, exist_ok=True)
    _log = open(OUT / f"ids-{os.getpid()}.jsonl", "a")  # noqa: SIM115 (closed at test_stop)


@events.test_stop.add_listener
def _close_log(**_: Any) -> None:
    if _log is not None:
        _log.close()


class IdgenUser(FastHttpUser):
    """One client service calling idgen: 80% single IDs, 10% batches of 100, 10% decodes."""

    host = HOSTS[0]
    recent: ClassVar[list[str]] = []

    def on_start(self) -> None:
        self.number = next(_next_user)
        self.client.base_url = HOSTS[self.number % len(HOSTS)]

    def _record(self, ids: list[str], status: int, started: float) -> None:
        if _log is not None:
            line = {
                "user": f"{os.getpid()}-{self.number}",
                "ids": ids,
                "status": status,
                "ms": (time.perf_counter() - started) * 1000,
            }
            _log.write(json.dumps(line) + "\n")

    def _get_ids(self, path: str, name: str) -> None:
        started = time.perf_counter()
        with self.client.get(path, name=name, catch_response=True) as response:
            ids: list[str] = []
            if response.status_code == 200:
                body = response.json()
                ids = body["ids"] if "ids" in body else [body["id"]]
                response.success()
            elif response.status_code == 503 and response.headers.get("Retry-After"):
                response.success()  # a documented refusal, counted by status in the check
            else:
                response.failure(f"unexpected {response.status_code}")
            self._record(ids, response.status_code, started)
            if ids:
                IdgenUser.recent = [*IdgenUser.recent[-99:], ids[-1]]

    @task(8)
    def one_id(self) -> None:
        self._get_ids("/id", "GET /id")

    @task(1)
    def batch(self) -> None:
        self._get_ids("/id?count=100", "GET /id?count=100")

    @task(1)
    def decode(self) -> None:
        if not IdgenUser.recent:
            return
        started = time.perf_counter()
        with self.client.get(
            f"/decode/{random.choice(IdgenUser.recent)}", name="GET /decode/{id}", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"unexpected {response.status_code}")
            self._record([], response.status_code, started)
