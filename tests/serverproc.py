"""``idgen serve`` as a real child process, for the tests, the fault suite and the soak.

:class:`ServerProcess` starts it on a free port (``--port 0``; the port comes from the ``listening`` log event),
collects its stderr (JSON lines) into :attr:`ServerProcess.events` as they arrive, calls it over HTTP and
stops it. It imports nothing from pytest.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def serve_command(port: int | str, *options: str, host: str = "127.0.0.1") -> list[str]:
    """The command line of ``idgen serve`` on ``host:port`` with ``options``, run by this interpreter."""
    return [sys.executable, "-m", "idgen.cli", "serve", "--host", host, "--port", str(port), *options]


def wait_until(
    probe: Callable[[], T | None], timeout: float = 30.0, what: str = "a condition", interval: float = 0.02
) -> T:
    """Poll ``probe`` until it returns something truthy, and return that; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def wait_http_ok(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Poll ``url`` until it answers 200; fail at once if ``proc`` (the server) exits first."""

    def answered() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    wait_until(answered, timeout, f"{url} to answer 200", interval=0.05)


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class ServerProcess:
    """One ``idgen serve`` child. ``netns`` runs it in that network namespace (``ip netns exec`` execs, so
    :attr:`proc` is the server itself); ``env`` is added to its environment; ``command`` replaces the command
    line before ``args`` (e.g. ``cmd/idgen-serve``)."""

    def __init__(
        self,
        *args: str,
        name: str = "idgen",
        host: str = "127.0.0.1",
        command: list[str] | None = None,
        env: Mapping[str, str] | None = None,
        netns: str | None = None,
    ) -> None:
        self.name, self.host, self.port = name, host, 0
        command = command or serve_command(0, host=host)
        if netns is not None:
            command = ["ip", "netns", "exec", netns, *command]
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [*command, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            cwd=REPO,
        )
        self.pid = self.proc.pid
        self.events: list[dict[str, Any]] = []
        self._eof = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=f"log-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"not_json": line.decode(errors="replace").rstrip()}
            with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        self.proc.stderr.close()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def event(self, name: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        """The first log event ``name`` with ``fields``; waits for it, and fails if the process exits first."""

        def found() -> dict[str, Any] | None:
            return next((e for e in self.events if e.get("event") == name and fields.items() <= e.items()), None)

        with self._changed:
            self._changed.wait_for(lambda: found() is not None or self._eof, timeout=timeout)
            event = found()
        if event is None:
            raise AssertionError(
                f"{self.name}: no {name!r} event {fields or ''}; exit code {self.proc.poll()}; log:\n{self.log}"
            )
        return event

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(json.dumps(e) for e in self.events[-40:])

    def started(self, timeout: float = 30.0) -> ServerProcess:
        """Wait until it listens; ``self``."""
        self.port = self.event("listening", timeout)["port"]
        return self

    def get(
        self, path: str, headers: dict[str, str] | None = None, method: str = "GET", timeout: float = 15.0
    ) -> Reply:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            connection.request(method, path, headers=headers or {})
            response = connection.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            connection.close()

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``signum`` (SIGTERM: a clean stop that releases the lease) and wait for the exit code."""
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def close(self) -> None:
        """Stop it if it still runs: SIGCONT (in case it is frozen), SIGTERM (a supervisor stops its workers
        too), SIGKILL if that does not do."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)

    def __enter__(self) -> ServerProcess:
        try:
            return self.started()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
