"""Running the HTTP service: ``idgen serve``.

One process (the default) binds the port, leases a worker ID, serves :func:`idgen.http.service.make_app` and on
SIGTERM or SIGINT stops accepting, finishes the requests in flight (at most ``SHUTDOWN_TIMEOUT_S``), closes the
generator (which releases the lease) and exits 0.

With ``processes`` > 1 a supervisor forks that many workers before any thread or event loop exists. Each binds the
same port with ``SO_REUSEPORT`` (the kernel spreads connections over them) and holds its own lease, hence its own
worker ID. The supervisor holds the port (bound, not listening) so that ``port 0`` means one free port for all,
forwards SIGTERM/SIGINT to the workers and exits 0 when every worker exited 0. If a worker dies on its own, the
others are stopped and the supervisor exits 1, so that whatever runs it can restart the whole server. If the
supervisor is killed, the kernel sends its workers SIGTERM (Linux), so none is left orphaned. Metrics use
prometheus-client's multiprocess mode in a private directory, so ``/metrics`` from any worker covers all of them.

Logs are JSON lines on stderr (python-json-logger), one per event, with ``event`` naming it: ``listening``,
``lease_acquired``, ``lease_lost``, ``fence_extended`` (debug), ``clock_rollback``, ``not_ready``, ``ready``,
``stopping``, ``stopped``, ``access`` (only with the access log on), ...

Every wait here is bounded: a worker that is not done ``HARD_STOP_S`` after the signal exits 1 on its own, and the
supervisor kills any worker still alive by then.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web, web_response
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from pythonjsonlogger.json import JsonFormatter

from idgen.config import Settings, generator_for
from idgen.errors import IdgenError, InvalidInput, LayoutMismatch
from idgen.http.connections import Runner, Tally, log_accept_errors, max_connections_for

log = logging.getLogger("idgen.server")

SHUTDOWN_TIMEOUT_S = 10.0  # in-flight requests get this long after SIGTERM
HARD_STOP_S = 25.0  # after SIGTERM, a worker exits no later than this, whatever it is waiting for
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
_PR_SET_PDEATHSIG = 1
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
SERVER_HEADER = "idgen"  # every response's Server header: no version for anyone matching servers to known bugs


# -- logging ----------------------------------------------------------------------------------------


def configure_logging(access_log: bool = False, stream: Any = None) -> None:
    """JSON lines on ``stream`` (stderr) for idgen, aiohttp and kazoo; the access log only if asked for."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{levelname}{name}{process}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger", "process": "pid"},
            timestamp="time",
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("kazoo").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.INFO if access_log else logging.WARNING)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _UnparseableRequest) for f in server_log.filters):
        server_log.addFilter(_UnparseableRequest())
    # cli.main's one-shot stderr handler would print every idgen event a second time, in another format
    for name in ("idgen", "kazoo"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("idgen").setLevel(logging.INFO)


class _UnparseableRequest(logging.Filter):
    """aiohttp logs a request it cannot parse (bad method, bytes in the path, a line too long, a broken body) at ERROR
    with a traceback. That is the client's error: it becomes a ``bad_http_request`` warning, at most one every
    ``LOG_INTERVAL_S`` with a count, so that a flood of garbage cannot flood the log."""

    def __init__(self) -> None:
        super().__init__()
        self.tally = Tally("bad_http_request", "unparseable requests")

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (HttpProcessingError, RequestPayloadError)):
            self.tally.add(" ".join(str(exc).split())[:200])
            return False
        return True


class JsonAccessLogger(AbstractAccessLogger):
    """One ``access`` event per request, with its fields as JSON keys."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s",
            request.method,
            request.path_qs,
            response.status,
            extra={
                "event": "access",
                "method": request.method,
                "path": request.path_qs,
                "status": response.status,
                "bytes": _body_bytes(request, response),
                "duration_ms": round(time * 1000, 3),
                "remote": request.remote,
            },
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def _body_bytes(request: web.BaseRequest, response: web.StreamResponse) -> int:
    """The bytes of the answer's body (the access log's ``bytes``, as Apache's ``%B``): never the header bytes, which
    aiohttp's ``body_length`` counts too, and 0 for HEAD. Every idgen answer has a ``Content-Length``."""
    return 0 if request.method == "HEAD" else response.content_length or 0


# -- entry point ------------------------------------------------------------------------------------


def serve(options: argparse.Namespace) -> int:
    """Run the server until SIGTERM/SIGINT; the exit code: 0 after a clean stop, 1 if it could not serve
    (no worker ID, port taken, ...), 2 for bad options. Start-up failures are logged as one ``start_failed`` event.

    ``options`` has ``host``, ``port``, ``processes``, ``max_count``, ``max_connections`` (None: the default of
    :func:`idgen.http.connections.max_connections_for`), ``access_log``, ``zk_session_timeout`` and the lease settings
    (:meth:`idgen.config.Settings.of`).
    """
    configure_logging(options.access_log)
    try:
        max_connections = max_connections_for(options.max_connections)
    except InvalidInput as exc:
        return _log_failure(EXIT_USAGE, exc)
    options = argparse.Namespace(**{**vars(options), "max_connections": max_connections})
    # Until the event loop handles them, stop signals wait: a SIGTERM during start-up then stops the server
    # cleanly (lease released) instead of killing it half-started.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        if options.processes > 1:
            return _supervise(options, {signal.Signals(s) for s in previous_mask})
        sock = _bind(options.host, options.port, reuse_port=False)
        return _serve_worker(options, sock, multiprocess_dir=None)
    except (InvalidInput, LayoutMismatch) as exc:
        return _log_failure(EXIT_USAGE, exc)
    except (IdgenError, OSError) as exc:
        return _log_failure(EXIT_FAILED, exc)
    except Exception as exc:  # a fault of a library or of ours: still one JSON line, with the traceback in it
        log.exception("server failed: %s", exc, extra={"event": "start_failed"})
        return EXIT_FAILED
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)


def _bind(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not listening yet). ``OSError`` if that fails."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _advertised(host: str, port: int) -> str:
    """``host:port`` that other machines can use: the host name when bound to every interface."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- one worker -------------------------------------------------------------------------------------


def _serve_worker(options: argparse.Namespace, sock: socket.socket, multiprocess_dir: str | None) -> int:
    """Lease, serve on ``sock`` until told to stop, release. Exceptions at start-up propagate to the caller."""
    # Imported here, not at the top: prometheus_client must be first imported after the supervisor set
    # PROMETHEUS_MULTIPROC_DIR, and idgen.http.metrics imports it.
    from idgen.http.service import make_app

    port = sock.getsockname()[1]
    try:
        settings = Settings.of(options)
        generator = generator_for(settings, address=_advertised(options.host, port), rollback_tolerance_ms=0)
    except BaseException:
        sock.close()
        raise
    deadline = _Deadline()
    try:
        app = make_app(
            generator,
            max_count=options.max_count,
            multiprocess_dir=multiprocess_dir,
            census_interval_s=options.census_interval,
        )
        with asyncio.Runner(loop_factory=event_loop_factory(options.uvloop)) as runner:
            runner.run(_run(app, sock, options, deadline, generator.worker_id))
    finally:
        deadline.start()
        generator.close()  # releases the lease, its fence brought down to the last tick used
        log.info("stopped", extra={"event": "stopped"})
        deadline.cancel()
    return EXIT_OK


def event_loop_factory(use_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's ``new_event_loop`` if ``use_uvloop`` and uvloop is installed (it serves ``GET /id`` 10-20% faster,
    docs/BENCHMARKS.md), else None: asyncio's default loop."""
    if not use_uvloop:
        return None
    try:
        import uvloop
    except ImportError:  # a platform uvloop does not build on
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


class _Deadline:
    """Once started, ends the process with exit code 1 unless cancelled within ``HARD_STOP_S``."""

    def __init__(self) -> None:
        self._timer: threading.Timer | None = None

    def start(self) -> None:
        if self._timer is None:
            self._timer = threading.Timer(HARD_STOP_S, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    @staticmethod
    def _expire() -> None:
        log.error("shutdown did not finish in %g s; exiting", HARD_STOP_S, extra={"event": "shutdown_timeout"})
        logging.shutdown()
        os._exit(EXIT_FAILED)


async def _run(
    app: web.Application, sock: socket.socket, options: argparse.Namespace, deadline: _Deadline, worker_id: int | None
) -> None:
    # aiohttp gives every response that has none a Server header naming Python, aiohttp and their versions, its own
    # error pages (an unparseable request) included, and has no setting for it: its default is replaced.
    web_response.SERVER_SOFTWARE = SERVER_HEADER  # type: ignore[attr-defined]  # not in its __all__
    loop = asyncio.get_running_loop()
    log_accept_errors(loop)
    runner = Runner(
        app,
        max_connections=options.max_connections,
        idle_timeout_s=options.idle_timeout,
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        access_log=logging.getLogger("aiohttp.access") if options.access_log else None,
        access_log_class=JsonAccessLogger,
    )
    await runner.setup()
    stop = asyncio.Event()
    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    try:
        await runner.serve(sock)
        port = sock.getsockname()[1]
        log.info(
            "listening on port %d",
            port,
            extra={
                "event": "listening",
                "port": port,
                "worker_id": worker_id,
                "max_connections": options.max_connections,
                "event_loop": type(loop).__module__.split(".")[0],  # "uvloop" or "asyncio"
            },
        )
        await stop.wait()
        deadline.start()
        log.info("stopping: no new connections, finishing requests in flight", extra={"event": "stopping"})
    finally:
        await runner.cleanup()  # closes the listener, waits for handlers (bounded), closes idle keep-alives


# -- several workers --------------------------------------------------------------------------------


def _supervise(options: argparse.Namespace, mask: set[signal.Signals]) -> int:
    """Fork the workers and wait for them; ``mask`` is the signal mask to give them (plus the stop signals)."""
    holder = _bind(options.host, options.port, reuse_port=True)  # keeps the port ours, and fixes port 0
    options = argparse.Namespace(**{**vars(options), "port": holder.getsockname()[1]})
    metrics_dir = tempfile.mkdtemp(prefix="idgen-metrics-")
    previous_env = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = metrics_dir  # before any worker imports prometheus_client
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})  # so that sigtimedwait sees workers exit
    workers: dict[int, int | None] = {}  # pid -> exit code once it exited
    supervisor = os.getpid()
    try:
        for _ in range(options.processes):
            pid = os.fork()
            if pid == 0:
                _worker_process(options, metrics_dir, mask, supervisor)  # never returns
            workers[pid] = None
        log.info(
            "supervising %d workers on port %d",
            len(workers),
            options.port,
            extra={"event": "supervising", "port": options.port, "workers": list(workers), "metrics_dir": metrics_dir},
        )
        return _wait_for_workers(workers)
    finally:
        for pid, code in workers.items():
            if code is None:  # only if the supervisor itself failed
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        holder.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        if previous_env is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous_env


def _worker_process(options: argparse.Namespace, metrics_dir: str, mask: set[signal.Signals], supervisor: int) -> None:
    """The body of a forked worker: serve, then leave with ``os._exit`` (never back into the supervisor's stack)."""
    code = EXIT_FAILED
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, {*mask, *_STOP_SIGNALS})  # stop signals wait for the event loop
        _stop_with_parent(supervisor)
        sock = _bind(options.host, options.port, reuse_port=True)
        code = _serve_worker(options, sock, multiprocess_dir=metrics_dir)
    except (InvalidInput, LayoutMismatch) as exc:
        code = _log_failure(EXIT_USAGE, exc)
    except (IdgenError, OSError) as exc:
        code = _log_failure(EXIT_FAILED, exc)
    except BaseException as exc:
        log.exception("server failed: %s", exc, extra={"event": "start_failed"})
    finally:
        logging.shutdown()
        os._exit(code)


def _stop_with_parent(supervisor: int) -> None:
    """Have the kernel send this worker SIGTERM when the supervisor dies, even by SIGKILL (Linux ``prctl``), so that
    no orphan keeps serving and holding a lease. Elsewhere, or if it fails, workers outlive a killed supervisor."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != supervisor:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _log_failure(code: int, exc: BaseException) -> int:
    log.error("%s", " ".join(str(exc).split()) or type(exc).__name__, extra={"event": "start_failed"})
    return code


def _wait_for_workers(workers: dict[int, int | None]) -> int:
    """Forward stop signals, reap workers; 0 only if all exited 0 after being told to stop."""
    from prometheus_client import multiprocess  # the environment variable is set by now

    stopping_since: float | None = None
    failed = False
    while any(code is None for code in workers.values()):
        received = signal.sigtimedwait({*_STOP_SIGNALS, signal.SIGCHLD}, 0.5)
        for pid, code in _reap():
            if pid not in workers:
                continue
            workers[pid] = code
            multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
            if stopping_since is None or code != 0:
                failed = True
                log.error("worker %d exited with %d", pid, code, extra={"event": "worker_exited", "code": code})
        stop = received is not None and received.si_signo in _STOP_SIGNALS
        if stopping_since is None and (stop or failed):
            stopping_since = time.monotonic()
            log.info("stopping %d workers", len(workers), extra={"event": "stopping"})
            _signal_workers(workers, signal.SIGTERM)
        if stopping_since is not None and time.monotonic() - stopping_since > HARD_STOP_S + 5:
            log.error("workers did not stop in time; killing them", extra={"event": "shutdown_timeout"})
            _signal_workers(workers, signal.SIGKILL)
            failed = True
            stopping_since = time.monotonic()  # and give the kill a moment to be reaped
    log.info("stopped", extra={"event": "stopped", "codes": list(workers.values())})
    return EXIT_FAILED if failed else EXIT_OK


def _reap() -> list[tuple[int, int]]:
    """Every child that has exited: ``(pid, exit code)``, a signal ``N`` giving ``-N``."""
    reaped: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.append((pid, os.waitstatus_to_exitcode(status)))


def _signal_workers(workers: dict[int, int | None], signum: signal.Signals) -> None:
    for pid, code in workers.items():
        if code is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
