"""Clients of the idgen HTTP API: :class:`Client` (threads, urllib3) and :class:`AsyncClient` (asyncio, aiohttp).

Both keep a **prefetch buffer** fed by ``GET /id?count=batch`` and refilled in the background (a thread, or a task)
whenever fewer than ``low_water`` IDs are left: Baidu uid-generator's ring buffer, across the network. ``next_id()``
and ``next_ids(n)`` return ints; with ``form="decimal" | "hex" | "base32" | "base58"`` they return strings in that
form (:func:`idgen.format_id`, the same forms as the server's ``?format=``). Batches come in the compact runs form
(:mod:`idgen.runs`; JSON from a server that predates it) and stay runs in the buffer. IDs fetched more than
``max_age`` seconds ago (default 5 s) are dropped, never handed out; ``max_age=None`` keeps them.

Several server URLs give **failover**: a refill asks the server that answered last, then the ones after it in the
list (wrapping around). **Deadlines**: ``timeout`` is the total deadline of one *attempt* on one server: connecting,
sending, the headers and the whole body, and the ``GET /info`` a server's first attempt begins with, all end by
``timeout`` seconds after the attempt began, however slowly the server trickles its bytes. A failed attempt moves on
to the next server at once, so a slow server costs one ``timeout`` per pass. A refill round makes at most ``retries +
1`` passes over the servers, with ``backoff`` (doubling) between passes; a call waits at most :attr:`Client.max_wait`
(by default one whole round, plus one probe it may find under way) and then raises :class:`AllServersFailed`, which
names each server's last failure.

The package, one concern per module:

- :mod:`idgen.client.buffer`: :class:`~idgen.client.buffer.IdBuffer`, the sans-IO core both clients share (the
  buffer, refill decisions, batch sizing, failover, probes, waiting callers) and its invariants: no ID handed out
  twice, none after its server refused.
- :mod:`idgen.client.answers`: what a server says, read and checked (``/info``, ``/id`` in either form, ``/readyz``,
  byte bounds, Retry-After, the per-server-and-worker floors against replays).
- :mod:`idgen.client.sync`: :class:`Client`, its refill thread, urllib3 with a deadline on every socket operation.
- :mod:`idgen.client.aio`: :class:`AsyncClient`, its refill task, aiohttp.
- :mod:`idgen.client.options`: the options' defaults and checks (also read by ``IDGEN_URL`` and ``IDGEN_CLIENT_*``).

The path of a call, by name: ``Client.next_id`` takes from the head chunk (lock-free), else ``IdBuffer.take_one``
under the lock; on an empty buffer ``_Refiller.wait_for`` (``IdBuffer.waiting``, ``IdBuffer.wait_left``) wakes the
refill thread, whose ``_Refiller.run`` asks ``IdBuffer.next_step`` for work: ``IdBuffer._fill``, a round over
``IdBuffer.plan``, one ``IdBuffer._attempt`` per server, yielding :class:`~idgen.client.buffer.Request` s that
``_Refiller.drive`` sends by ``_Refiller.get`` and hands back (``advance``). The answers are checked by
``answers.info_answer``, ``answers.ids_answer`` and ``Floors.raise_to``, and land in the buffer by
``IdBuffer.accepted`` (or ``IdBuffer.failed``, then ``IdBuffer.round_failed``).

**Fork.** A client used in a forked child (gunicorn ``--preload``, uWSGI, Celery's prefork pool, multiprocessing's
``fork``) starts afresh there: an empty buffer, zero counts, its own refill thread (or task), lock and connections,
made at its first call in the child. The parent's buffer went to the parent alone, so the child never hands out an
ID the parent may hand out. The child knows it is one by a changed :func:`os.getpid`, checked on every call: that
holds for forks made in C that run none of Python's at-fork hooks too (uWSGI's default). It never touches what it
inherited: the refill thread does not exist in the child, a lock another thread held at the fork stays held
forever, and the connections are the parent's sockets. ``next_id``'s fast path asks the same question of a
:func:`idgen.forking.process_marker` instead (about 30 ns against 180-230 ns for ``os.getpid()``, and as exact:
the kernel clears it in every child, however it forked), before it touches the buffer.

With ``idgen serve --processes N`` one URL reaches N workers with their own leases: a 503 from any of them drops
every ID from that URL (conservative), and a probe sees one of them only; their IDs interleave, each worker ID
above its own floor.
"""

from idgen.client.aio import AsyncClient
from idgen.client.answers import answer_limit_bytes, retry_after_s
from idgen.client.buffer import MAX_BATCH, MIN_BATCH, ServerStatus
from idgen.client.options import CLIENT_OPTIONS, check_option, check_urls
from idgen.client.sync import Client
from idgen.errors import AllServersFailed, ClientClosed, ClientError

__all__ = [
    "CLIENT_OPTIONS",
    "MAX_BATCH",
    "MIN_BATCH",
    "AllServersFailed",
    "AsyncClient",
    "Client",
    "ClientClosed",
    "ClientError",
    "ServerStatus",
    "answer_limit_bytes",
    "check_option",
    "check_urls",
    "retry_after_s",
]
