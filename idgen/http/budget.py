"""The memory held by big answers is bounded: a batch of more than ``FORMAT_SLICE`` IDs
(:mod:`idgen.http.answers`) holds its share of ``ID_BUDGET`` (:class:`IdBudget`) from before it is minted until the
client has taken all but the last 64 KiB of its answer (:func:`send`, ``SEND_TIMEOUT_S`` at most, else the
connection is closed). Beyond the budget, requests wait their turn for up to ``BUDGET_WAIT_S``, then get 503 ``busy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator

from aiohttp import web
from multidict import CIMultiDict

from idgen.errors import Busy

log = logging.getLogger("idgen.http")

# IDs of batches being minted, formatted and sent at once, in a process: four of the largest (--max-count 65536).
# About 90 bytes each while held (the ints, the encoded answer, the connection's copy): 24 MB (docs/DEPLOY.md).
ID_BUDGET = 262_144
# A batch waits this long for its share of the budget, then gets 503 busy: below idgen's client timeout (2 s), so that
# a client gets an answer it can act on, not a timeout.
BUDGET_WAIT_S = 1.0
SEND_TIMEOUT_S = 10.0  # a client has this long to take a batch's answer, else its connection is closed


class IdBudget:
    """At most ``capacity`` IDs held at once by the batches of a process (see the module docstring). A batch that does
    not fit waits its turn, first come first served, for at most ``wait_s``, then is refused with :class:`Busy`.
    Used from the event loop's thread only; a batch never asks for more than ``capacity``."""

    def __init__(self, capacity: int, wait_s: float) -> None:
        self.capacity, self.wait_s = capacity, wait_s
        self.free = capacity
        self._queue: deque[tuple[int, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
        await self._take(n)
        try:
            yield
        finally:
            self.free += n
            self._grant()

    async def _take(self, n: int) -> None:
        if not self._queue and self.free >= n:
            self.free -= n
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, turn)
        self._queue.append(entry)
        try:
            async with asyncio.timeout(self.wait_s):
                await turn
        except BaseException as exc:
            if turn.done() and not turn.cancelled():  # granted just as the wait ended: give it back
                self.free += n
            elif entry in self._queue:  # a release may have dropped it already (see _grant)
                self._queue.remove(entry)
            self._grant()
            if isinstance(exc, TimeoutError):
                raise Busy(
                    f"{self.capacity} IDs are being formatted and sent already; retry shortly", retry_after=1
                ) from None
            raise

    def _grant(self) -> None:
        """Hand the freed budget to the waiters at the head of the queue, in order. A waiter whose wait has ended
        (its timeout cancelled the turn it awaits; its own code runs later) is dropped, never granted."""
        while self._queue and self._queue[0][0] <= self.free:
            n, turn = self._queue.popleft()
            if turn.done():
                continue
            self.free -= n
            turn.set_result(None)


async def send(request: web.Request, body: bytes, headers: CIMultiDict[str]) -> web.StreamResponse:
    """``body`` written to the client, returned once all but the connection's last 64 KiB are taken (aiohttp waits
    for the transport to drain past that). A client that takes longer than ``SEND_TIMEOUT_S`` is disconnected."""
    response = web.StreamResponse(headers=headers)
    response.content_length = len(body)
    try:
        async with asyncio.timeout(SEND_TIMEOUT_S):
            await response.prepare(request)
            await response.write(body)
    except TimeoutError:
        log.warning(
            "a client took more than %g s to read %d bytes: disconnected",
            SEND_TIMEOUT_S,
            len(body),
            extra={"event": "send_timeout", "remote": request.remote},
        )
        if request.transport is not None:
            request.transport.abort()
    return response
