"""The two processes of scenario 10b, run by the test: ``close_race.py race STATE OUT`` and
``close_race.py succeed STATE OUT``, both on the local lease in ``STATE`` restricted to worker ID :data:`WORKER_ID`.

``race`` leases it, prints ``holding``, and on a ``close`` line from stdin starts :data:`THREADS` threads that mint
as fast as they can; once each has minted, the main thread calls ``Generator.close()``. Each thread mints until it is
refused. ``succeed`` tries to lease the worker ID (printing ``waiting`` after its first refusal) every millisecond
until it gets it, then mints for :data:`SUCCESSOR_MINT_S`. Each writes its IDs, one list per thread, as JSON to OUT.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from idgen import DEFAULT_LAYOUT, Generator
from idgen.errors import LeaseUnavailable, Unavailable
from idgen.leases.local import LocalLease

WORKER_ID = 5
THREADS = 4
MINTED_BEFORE_CLOSE = 1_000  # by each thread
SUCCESSOR_MINT_S = 0.05
DEADLINE_S = 20.0


def _generator(state: Path) -> Generator:
    return Generator(DEFAULT_LAYOUT, LocalLease(DEFAULT_LAYOUT, state, range(WORKER_ID, WORKER_ID + 1)))


def race(state: Path) -> list[list[int]]:
    generator = _generator(state)
    print("holding", flush=True)
    assert sys.stdin.readline().strip() == "close"
    minted: list[list[int]] = [[] for _ in range(THREADS)]
    started = [threading.Event() for _ in range(THREADS)]

    def mint(ids: list[int], started: threading.Event) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            try:
                ids.append(generator.next_id())
            except Unavailable:
                return
            if len(ids) == MINTED_BEFORE_CLOSE:
                started.set()

    threads = [threading.Thread(target=mint, args=(minted[n], started[n])) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for event in started:
        assert event.wait(DEADLINE_S), "a minting thread never got going"
    generator.close()
    for thread in threads:
        thread.join()
    return minted


def succeed(state: Path) -> list[list[int]]:
    deadline = time.monotonic() + DEADLINE_S
    refused = False
    while True:
        try:
            generator = _generator(state)
            break
        except LeaseUnavailable:
            if not refused:
                print("waiting", flush=True)
                refused = True
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)  # polling the claim, with a deadline
    ids: list[int] = []
    stop = time.monotonic() + SUCCESSOR_MINT_S
    with generator:
        while time.monotonic() < stop:
            ids.append(generator.next_id())
    return [ids]


if __name__ == "__main__":
    role, state, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    minted = {"race": race, "succeed": succeed}[role](state)
    out.write_text(json.dumps(minted))
