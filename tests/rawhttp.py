"""Small real HTTP/1.1 servers on loopback ports that answer as no idgen server would: a cache that replays one
answer, a proxy that trickles it a byte at a time, a 300 MB answer, a 503 with a nonsensical ``Retry-After``.

Each is written byte by byte on asyncio streams, its event loop in a thread of its own, and stands for a cache, a
proxy or a broken server in front of idgen; a client under test talks to it over real sockets, as to any server.
Shared by ``tests/test_client.py`` and the fault scenarios 15a-15c. It imports nothing from pytest.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from serverproc import ServerProcess

RUNS = "application/vnd.idgen.runs+json"
Route = Callable[["RawServer", asyncio.StreamWriter, str], Coroutine[Any, Any, None]]


def http_response(status: int, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class RawServer:
    """A small HTTP/1.1 server on a loopback port (HTTPS with ``tls``), its event loop in a thread of its own.
    ``routes`` maps a path to a coroutine that writes the whole answer, byte by byte if it likes; other paths answer
    404. ``sent`` holds, per route that records it, the bytes it managed to send before the client hung up;
    ``requests`` every request target, in order."""

    def __init__(self, routes: dict[str, Route], tls: ssl.SSLContext | None = None) -> None:
        self.routes = routes
        self.sent: list[int] = []
        self.requests: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def listen() -> asyncio.base_events.Server:
            return await asyncio.start_server(self.serve, "127.0.0.1", 0, ssl=tls)

        self.server = asyncio.run_coroutine_threadsafe(listen(), self.loop).result(10)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: one request after another on the connection
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ")[1].decode()
                self.requests.append(target)
                route = self.routes.get(target.split("?")[0])
                if route is None:
                    writer.write(http_response(404, {}, b""))
                else:
                    await route(self, writer, target)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            serving = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in serving:
                task.cancel()
            await asyncio.gather(*serving, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def replaying(response: bytes) -> Route:
    """A route that answers every request with the same recorded bytes: a cache that keeps what it once saw."""

    async def route(server: RawServer, writer: asyncio.StreamWriter, target: str) -> None:
        writer.write(response)

    return route


def recorded(server: ServerProcess, path: str) -> bytes:
    """One real answer of ``server`` to ``GET path`` (runs form asked for, as the client asks), as raw bytes."""
    reply = server.get(path, {"Accept": RUNS})
    assert reply.status == 200
    return http_response(200, {"Content-Type": reply.headers["Content-Type"]}, reply.body)


def caching_proxy(upstream: ServerProcess) -> Route:
    """A route that forwards a request to ``upstream`` the first time its path and query are seen and replays that
    answer ever after: a cache that ignores that ``/id`` answers are not to be stored."""
    cache: dict[str, bytes] = {}

    async def route(server: RawServer, writer: asyncio.StreamWriter, target: str) -> None:
        if target not in cache:
            reply = await asyncio.to_thread(upstream.get, target, {"Accept": RUNS})
            cache[target] = http_response(reply.status, {"Content-Type": reply.headers["Content-Type"]}, reply.body)
        writer.write(cache[target])

    return route


def forwarding(upstream: ServerProcess | list[ServerProcess]) -> Route:
    """A route that forwards each request to ``upstream`` on a connection of its own: a proxy without keep-alive
    upstream, so that the requests spread over the processes of a ``--processes`` server. Given a list, it forwards
    to the list's last server at the time: a test appends one to switch the proxy over (a redeploy behind it)."""
    upstreams = upstream if isinstance(upstream, list) else [upstream]

    async def route(server: RawServer, writer: asyncio.StreamWriter, target: str) -> None:
        reply = await asyncio.to_thread(upstreams[-1].get, target, {"Accept": RUNS})
        writer.write(http_response(reply.status, {"Content-Type": reply.headers["Content-Type"]}, reply.body))

    return route


def trickling(response: bytes, pause_s: float, head_too: bool = False) -> Route:
    """A route that sends ``response`` one byte every ``pause_s`` (the headers at once unless ``head_too``), and
    records in ``sent`` how many bytes it trickled before the client hung up (so it held the request for about
    that many times ``pause_s``)."""

    async def route(server: RawServer, writer: asyncio.StreamWriter, target: str) -> None:
        split = 0 if head_too else response.index(b"\r\n\r\n") + 4
        writer.write(response[:split])
        sent = 0
        try:
            for i in range(split, len(response)):
                await writer.drain()
                if writer.transport.is_closing():
                    break
                await asyncio.sleep(pause_s)
                writer.write(response[i : i + 1])
                sent += 1
        finally:
            server.sent.append(sent)

    return route


def flooding(total_bytes: int, with_length: bool) -> Route:
    """A route that answers 200 with a body of ``total_bytes`` (declared in Content-Length or not), and records in
    ``sent`` how many went out before the client hung up."""

    async def route(server: RawServer, writer: asyncio.StreamWriter, target: str) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: {RUNS}\r\n"
        head += f"Content-Length: {total_bytes}\r\n\r\n" if with_length else "Connection: close\r\n\r\n"
        writer.write(head.encode())
        block, sent = b" " * (1 << 20), 0
        try:
            while sent < total_bytes:
                writer.write(block)
                await writer.drain()
                sent += len(block)
        except ConnectionError:
            pass
        finally:
            server.sent.append(sent)

    return route


def refusing(retry_after: str) -> Route:
    body = json.dumps({"error": {"code": "clock_behind", "message": "clock is behind"}}).encode()

    async def route(server: RawServer, writer: asyncio.StreamWriter, target: str) -> None:
        writer.write(http_response(503, {"Content-Type": "application/json", "Retry-After": retry_after}, body))

    return route
