"""One process of scenario 12b: threads mint from a :class:`~idgen.Generator` on a local lease with a short window, so
its renewal thread writes a record (under the state directory's ``flock``) every 100 ms, while the main thread forks
children that live on, as a pool's idle processes do, and never call idgen.

``fork_storm.py STATE FORK FORKS AFTER_S``: FORK is ``os.fork`` or ``C fork`` (libc's, no at-fork hooks). Prints
``{"forked": N}`` once the forks are done, then mints ``AFTER_S`` seconds more and prints its figures as one JSON line.
The children sleep until killed with the process group (the test starts this script in a session of its own).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import threading
import time
from collections import Counter

from idgen import DEFAULT_LAYOUT, Generator
from idgen.errors import Unavailable
from idgen.leases.local import LocalLease

WINDOW_MS = 200
THREADS = 3
BATCH = 64
PAUSE_S = 0.001  # between a thread's batches: about 150,000 IDs/s in all, leaving the machine to the rest
FORK_SPACING_S = 0.002


def main() -> None:
    state, kind, forks, after_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    fork = os.fork if kind == "os.fork" else ctypes.PyDLL(None).fork
    gen = Generator(lease=LocalLease(DEFAULT_LAYOUT, state, window_ms=WINDOW_MS))
    stop = threading.Event()
    minted = [0] * THREADS
    out_of_order = [0] * THREADS  # a thread's IDs from one generator strictly increase: a repeat would break that
    refused: Counter[str] = Counter()
    refused_at: list[float] = []  # seconds since the start
    started = time.monotonic()

    def mint(thread: int) -> None:
        last = 0
        while not stop.is_set():
            try:
                ids = gen.next_ids(BATCH)
            except Unavailable as exc:
                refused[exc.code] += 1
                refused_at.append(time.monotonic() - started)
                stop.wait(min(exc.retry_after, 0.01))
                continue
            minted[thread] += len(ids)
            out_of_order[thread] += ids[0] <= last
            last = ids[-1]
            stop.wait(PAUSE_S)

    threads = [threading.Thread(target=mint, args=(thread,)) for thread in range(THREADS)]
    for thread in threads:
        thread.start()
    for _ in range(forks):
        if fork() == 0:
            time.sleep(3600)  # a pool process with nothing to do yet; killed with the process group
            os._exit(0)
        time.sleep(FORK_SPACING_S)
    forked_s = time.monotonic() - started
    print(json.dumps({"forked": forks}), flush=True)
    time.sleep(after_s)
    stop.set()
    for thread in threads:
        thread.join()
    print(
        json.dumps(
            {
                "ids": sum(minted),
                "out_of_order": sum(out_of_order),
                "refused": dict(refused),
                "refused_after_forks": sum(at > forked_s for at in refused_at),
                "last_refusal_s": round(max(refused_at), 2) if refused_at else None,
                "forked_s": round(forked_s, 2),
                "renewal_failures": gen.lease.renewal_failures,
                "state": gen.lease.status().state.value,
                "reason": gen.lease.status().reason,
            }
        ),
        flush=True,
    )
    gen.close()


if __name__ == "__main__":
    main()
