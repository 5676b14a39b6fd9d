"""The process's default ID source, behind ``idgen.next_id()`` and ``idgen.next_ids(n)``.

It is made on first use from the ``IDGEN_*`` environment, read as ``idgen serve`` reads it
(:meth:`idgen.config.Settings.from_env`): a :class:`~idgen.generator.Generator` under a local lease by default, under a
ZooKeeper lease with ``IDGEN_ZK`` (credentials from ``IDGEN_ZK_AUTH`` or ``IDGEN_ZK_AUTH_FILE``, always), an etcd lease
with ``IDGEN_ETCD`` (credentials from ``IDGEN_ETCD_AUTH`` or ``IDGEN_ETCD_AUTH_FILE``, TTL ``IDGEN_ETCD_TTL``), or a
:class:`~idgen.client.Client` of the running servers listed, comma-separated, in ``IDGEN_URL``, with its options from
``IDGEN_CLIENT_TIMEOUT``, ``IDGEN_CLIENT_BATCH``, ... (:func:`client_options`). :func:`source_from_env` makes that
source; ``idgen mint`` takes its IDs from it too. A bad variable raises
:class:`~idgen.errors.InvalidInput` naming it, on the first use and on every use after it until it is fixed. No worker
ID to lease (all held, ZooKeeper unreachable) raises :class:`~idgen.errors.LeaseUnavailable`, an
:class:`~idgen.errors.Unavailable`; nothing is kept then, and the next use tries again.

Invariants:

- one source per process: threads racing the first use make one, under a lock made in the calling process (a lock
  another thread held when the process forked stays held in the child);
- a forked child (``os.fork``, multiprocessing's fork context, gunicorn ``--preload``, uWSGI) keeps the parent's
  source, which adopts in the child: a generator leases a worker ID of its own on its first use there, a client starts
  with an empty buffer. Parent and children never hand out the same ID;
- the source is closed as its process exits: at interpreter exit (``atexit``), and in a multiprocessing child, which
  ends with ``os._exit``, by multiprocessing's finalizers (registered where the source is made, and in every
  multiprocessing child that inherits one). A generator releases its lease with the fence brought down to the last
  tick it used, so the next holder of its worker ID mints at once. A process killed by a signal or ending with
  ``os._exit`` otherwise (a multiprocessing pool's workers when the pool is terminated, a Celery/billiard pool
  process) skips that: its worker ID is freed all the same, but its fence stays up to 1.5 lease windows (7.5 s by
  default) ahead of the clock, so the next holder starts above it, riding ahead of its clock (DESIGN.md section 3a).
"""

from __future__ import annotations

import atexit
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from idgen.errors import InvalidInput
from idgen.forking import ProcessLock

if TYPE_CHECKING:
    from idgen.client import Client
    from idgen.config import Settings
    from idgen.generator import Generator

CLIENT_ENV_PREFIX = "IDGEN_CLIENT_"  # IDGEN_CLIENT_TIMEOUT sets the Client's ``timeout``, and so on
_NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?", re.ASCII)
_NONE = ("none", "off")  # what an option that may be None (no limit, no probe) takes for it

_source: Generator | Client | None = None
_making = ProcessLock()  # under which a process makes (or forgets) its source
_at_exit_registered = False  # atexit and the after-fork hook, once per process tree (a fork inherits both)
_finalizing_pid = 0  # the process whose multiprocessing finalizers close the source


def default_generator() -> Generator | Client:
    """The process's default source of IDs, made on first use from the ``IDGEN_*`` environment."""
    global _source, _at_exit_registered
    source = _source
    if source is not None:
        return source
    with _making():
        if _source is None:
            _source = source_from_env()
            _close_as_this_process_exits()
            if not _at_exit_registered:
                from multiprocessing import util

                atexit.register(_close_at_exit)
                util.register_after_fork(_close_at_exit, _close_in_multiprocessing_child)
                _at_exit_registered = True
        return _source


def source_from_env(environ: Mapping[str, str] | None = None, settings: Settings | None = None) -> Generator | Client:
    """A new ID source as the ``IDGEN_*`` environment (``environ``, default ``os.environ``) configures it: a
    :class:`~idgen.client.Client` of the ``IDGEN_URL`` servers with :func:`client_options`, else a generator under a
    lease (:func:`idgen.config.generator_for`). ``settings``: the settings to use instead of the environment's (a
    command line's); the client options still come from the environment. ``IDGEN_CLIENT_*`` without servers is
    refused, never ignored."""
    from idgen.config import Settings, env_name, generator_for

    settings = Settings.from_env(environ) if settings is None else settings
    options = client_options(environ)
    if settings.url:
        from idgen.client import Client

        return Client(settings.url, **options)
    if options:
        names = ", ".join(CLIENT_ENV_PREFIX + name.upper() for name in options)
        raise InvalidInput(f"{names}: client options, for servers named in {env_name('url')}; it is unset")
    return generator_for(settings)


def client_options(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The :class:`~idgen.client.Client` options set in the environment: ``IDGEN_CLIENT_<OPTION>`` for each of
    :data:`~idgen.client.options.CLIENT_OPTIONS` (``TIMEOUT``, ``BATCH``, ``LOW_WATER``, ``RETRIES``, ``BACKOFF``,
    ``PROBE_INTERVAL``, ``MAX_WAIT``, ``MAX_AGE``). A number in ASCII digits (seconds may have a fraction); ``none``
    or ``off`` where the option may be None. Unset or empty: the client's default. A bad value is
    :class:`InvalidInput`, one line starting with the variable's name."""
    from idgen.client.options import CLIENT_OPTIONS, check_option

    environ = os.environ if environ is None else environ
    options: dict[str, Any] = {}
    for name, (kind, _, optional) in CLIENT_OPTIONS.items():
        variable = CLIENT_ENV_PREFIX + name.upper()
        text = environ.get(variable, "").strip()
        if not text:
            continue
        try:
            if optional and text.lower() in _NONE:
                options[name] = None
            elif _NUMBER.fullmatch(text) and (kind is float or "." not in text):
                options[name] = check_option(name, kind(text))
            else:
                what = "a whole number" if kind is int else "a number of seconds"
                raise InvalidInput(f"{text!r} is not {what}{' or none' if optional else ''}")
        except InvalidInput as exc:
            raise InvalidInput(f"{variable}: {exc}") from None
    return options


def made_default() -> Generator | Client | None:
    """The process's default source if it has one (made here, or inherited through a fork), else None; never makes
    one."""
    return _source


def next_id() -> int:
    """The next ID from the process's default source (see :func:`default_generator`)."""
    return (_source or default_generator()).next_id()


def next_ids(n: int) -> list[int]:
    """``n`` IDs from the process's default source, strictly increasing (from servers: increasing per server)."""
    return (_source or default_generator()).next_ids(n)


def reset_default() -> None:
    """Close the default source and forget it; the next use makes a new one from the environment as it is then.
    For tests, and for a process that changes its ``IDGEN_*`` variables. A thread still holding the old source gets
    :class:`~idgen.errors.NoLease` (or ``ClientClosed``) from it."""
    global _source
    with _making():
        source, _source = _source, None
    if source is not None:
        source.close()


def _close_as_this_process_exits() -> None:
    """Close the source at multiprocessing's exit of this process (once per process): a multiprocessing child ends
    with ``os._exit``, which skips ``atexit``, after running the finalizers of exit priority 0 and up."""
    global _finalizing_pid
    if _finalizing_pid != os.getpid():
        from multiprocessing import util

        util.Finalize(None, _close_at_exit, exitpriority=0)
        _finalizing_pid = os.getpid()


def _close_in_multiprocessing_child(_: object) -> None:
    """multiprocessing's after-fork hook, in a child forked with the parent's source: close it as the child exits."""
    _close_as_this_process_exits()


def _close_at_exit() -> None:
    source = _source
    if source is not None:
        source.close()
