"""The asyncio client, :class:`AsyncClient`: the buffer (:class:`~idgen.client.buffer.IdBuffer`) used from one event
loop, refilled by a task (:class:`_AsyncRefiller`) that sends the buffer's requests with aiohttp. A request's
deadline is aiohttp's total timeout: the time left to it when the request starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Sequence
from typing import overload

import aiohttp

from idgen.client.answers import REQUEST_HEADERS, Answer, Failed, check_length, describe, too_large
from idgen.client.buffer import (
    IdBuffer,
    Request,
    ServerStatus,
    Steps,
    advance,
    count_ids,
    ids_of,
    inherited,
)
from idgen.client.options import (
    DEFAULT_BACKOFF_S,
    DEFAULT_MAX_AGE_S,
    DEFAULT_PROBE_INTERVAL_S,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    check_form,
)
from idgen.encoding import format_id
from idgen.errors import whole_number
from idgen.forking import process_marker

_monotonic = time.monotonic
_TIMEOUTS = (TimeoutError, aiohttp.ServerTimeoutError)  # what a timed-out request raises (in its chain)


class AsyncClient:
    """The asyncio twin of :class:`~idgen.client.Client`, with the same arguments; use it from one event loop.

    The refill task and the aiohttp session start at the first call (or ``async with``); ``await close()`` ends
    them. Methods are coroutines: ``await client.next_id()``, ``await client.next_ids(n, form="base32")``.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        batch: int | None = None,
        low_water: int | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF_S,
        probe_interval: float | None = DEFAULT_PROBE_INTERVAL_S,
        max_wait: float | None = None,
        max_age: float | None = DEFAULT_MAX_AGE_S,
    ) -> None:
        buffer = IdBuffer(urls, batch, low_water, timeout, retries, backoff, probe_interval, max_wait, max_age)
        self._refiller = _AsyncRefiller(buffer)

    @property
    def max_wait(self) -> float:
        """The longest ``next_id``/``next_ids`` waits before raising :class:`~idgen.errors.AllServersFailed`."""
        return self._refiller.buffer.max_wait

    @overload
    async def next_id(self, form: None = None) -> int: ...
    @overload
    async def next_id(self, form: str) -> str: ...
    async def next_id(self, form: str | None = None) -> int | str:
        """One ID: an int, or a string in ``form``. The fast path takes it from the head chunk."""
        if form is not None:
            check_form(form)
        refiller = self._refiller
        if not refiller.marker[0]:  # :meth:`_live`'s check, by the marker: this is the hot path
            refiller = self._live()
        head = refiller.buffer.head
        value = next(head.ids, None) if _monotonic() < head.expires else None
        if value is None:
            buffer = refiller.buffer
            buffer.check_open()
            while (value := buffer.take_one(_monotonic())) is None:
                await refiller.wait_for(1)
            await refiller.turn()
        return value if form is None else format_id(value, form)

    @overload
    async def next_ids(self, n: int, form: None = None) -> list[int]: ...
    @overload
    async def next_ids(self, n: int, form: str) -> list[str]: ...
    async def next_ids(self, n: int, form: str | None = None) -> list[int] | list[str]:
        """``n`` IDs (ints, or strings in ``form``), taken from the buffer at once; waits until it holds ``n``. What
        was taken before a wait is dropped if its server refused meanwhile or it grew too old
        (:meth:`~idgen.client.buffer.IdBuffer.top_up`)."""
        whole_number("n", n, 0)
        check_form(form)
        if n == 0:
            return []
        refiller = self._live()
        buffer = refiller.buffer
        buffer.check_open()
        parts = buffer.take(n, _monotonic())
        while (have := count_ids(parts)) < n:
            await refiller.wait_for(n - have)
            parts = buffer.top_up(parts, n, _monotonic())
        await refiller.turn()
        return ids_of(parts, form)

    def status(self) -> list[ServerStatus]:
        """A snapshot of every server's counts, in the order given."""
        return self._live().buffer.status()

    async def start(self) -> None:
        """Start the refill task (the first call does it too)."""
        self._live().start()

    async def close(self) -> None:
        """Stop the refill task and close the session; waiting and later calls raise
        :class:`~idgen.errors.ClientClosed`."""
        await self._live().close()

    async def __aenter__(self) -> AsyncClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _live(self) -> _AsyncRefiller:
        """This process's refiller: the one made here, or after a fork a fresh one whose task and session come at
        the first call; the inherited one is kept and never used (see :mod:`idgen.client`). No ``await``: atomic on
        the loop."""
        refiller = self._refiller
        if refiller.pid != os.getpid():
            inherited.append(refiller)
            self._refiller = refiller = _AsyncRefiller(refiller.buffer.fresh())
        return refiller


class _AsyncRefiller:
    """The asyncio client's refill task and what it shares with callers: the conditions and the session, all of
    them belonging to the process ``pid`` that made it."""

    def __init__(self, buffer: IdBuffer) -> None:
        self.buffer = buffer
        self.pid = os.getpid()
        self.marker = process_marker()  # the hot path's fork check: as exact as the pid's, and cheaper
        self.ids_ready = asyncio.Condition()
        self.wake = asyncio.Event()
        self.session: aiohttp.ClientSession | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.buffer.check_open()
        if self.task is None:
            self.session = aiohttp.ClientSession(headers=REQUEST_HEADERS, auto_decompress=False)
            self.task = asyncio.create_task(self.run(), name="idgen-client-refill")

    async def close(self) -> None:
        buffer = self.buffer
        if buffer.closed:
            return
        buffer.close()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.notify()
        if self.session is not None:
            await self.session.close()

    async def wait_for(self, n: int) -> None:
        """Wait until the buffer holds ``n`` IDs; raise if a round fails meanwhile or time runs out
        (:meth:`~idgen.client.buffer.IdBuffer.wait_left`)."""
        buffer = self.buffer
        self.start()
        with buffer.waiting(n, time.monotonic()) as wait:
            self.wake.set()
            async with self.ids_ready:
                while (remaining := buffer.wait_left(wait, time.monotonic())) is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.ids_ready.wait(), remaining)

    async def turn(self) -> None:
        """After a take on the slow path: wake the refill task if the level is below ``low_water``, and give the loop
        a turn. The fast path never awaits, so without this a caller in a tight loop would starve the task: it could
        neither send a refill nor read the answer until the buffer ran dry."""
        if self.buffer.level < self.buffer.low_water:
            self.wake.set()
            await asyncio.sleep(0)

    async def notify(self) -> None:
        async with self.ids_ready:
            self.ids_ready.notify_all()

    async def run(self) -> None:
        buffer = self.buffer
        try:
            while not buffer.closed:
                steps, delay = buffer.next_step(time.monotonic())
                if steps is not None:
                    await self.drive(steps)
                else:
                    self.wake.clear()  # no await since next_step: nothing it missed can have happened
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), delay)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug: tell every caller rather than leave them waiting
            buffer.crash = exc
            await self.notify()
            raise

    async def drive(self, steps: Steps) -> None:
        """Do what the buffer's ``steps`` ask (send a request, pause), handing each outcome back; wake the callers
        when they end."""
        outcome: Answer | Failed | None = None
        while (step := advance(steps, outcome)) is not None:
            outcome = None
            if isinstance(step, Request):
                try:
                    outcome = await self.get(step)
                except Failed as exc:
                    outcome = exc
            else:
                await asyncio.sleep(step)
        await self.notify()

    async def get(self, request: Request) -> Answer:
        """``GET`` the request's path: its answer, read whole by its deadline and within its byte bound."""
        assert self.session is not None
        remaining = request.seconds_left(_monotonic())
        try:
            async with self.session.get(
                request.server.url + request.path,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=remaining),
            ) as response:
                check_length(response.headers, request.limit_bytes)
                body = bytearray()
                while chunk := await response.content.read(request.limit_bytes + 1 - len(body)):
                    body += chunk
                    if len(body) > request.limit_bytes:
                        raise too_large(request.limit_bytes)
                return Answer(response.status, response.headers, bytes(body))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise Failed(describe(exc, request.timeout_s, _TIMEOUTS)) from None
