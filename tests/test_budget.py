"""The ID budget of big answers (idgen/http/budget.py), driven on an event loop without a server."""

from __future__ import annotations

import asyncio

import pytest

from idgen.http.budget import IdBudget


async def _hold(budget: IdBudget, n: int, held: asyncio.Event, release: asyncio.Event) -> None:
    async with budget.hold(n):
        held.set()
        await release.wait()


def test_a_wait_that_ends_as_its_turn_comes_neither_breaks_the_releaser_nor_leaks_the_budget() -> None:
    """A batch's wait ends (its timeout cancels it) and, before it has run again, the holder ahead releases: the
    release granted the cancelled wait's turn (InvalidStateError: a 500 for the releasing request), the waiter then
    failed to remove its entry (ValueError: a 500 for it too), and its share was never given back, so the budget
    shrank for good. Seen in CI: 2 x 500 internal_error among 48 parallel count=65536."""

    async def scenario() -> int:
        budget = IdBudget(10, wait_s=60)
        first_held, release_first = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(_hold(budget, 10, first_held, release_first))
        await first_held.wait()
        waiting = asyncio.create_task(_hold(budget, 5, asyncio.Event(), asyncio.Event()))
        await asyncio.sleep(0)  # queued behind the first
        release_first.set()  # the first's release runs in this turn of the loop...
        waiting.cancel()  # ...and so does the waiter's timeout: its turn is cancelled at once, its code runs after
        await first  # the release must not raise
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return budget.free

    assert asyncio.run(scenario()) == 10
