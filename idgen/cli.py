"""The ``idgen`` command line: mint, decode, layouts, leases, zk-secure, serve.

Every option can also be set through an environment variable (``IDGEN_`` + the option name in upper case,
for example ``IDGEN_STATE_DIR``); a command-line option wins. Errors are one line on stderr:
exit 2 for bad input, 1 when idgen cannot serve (no lease, clock behind the fence, ...). Never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from kazoo.exceptions import KazooException

from idgen.encoding import FORMS, format_id, parse_id
from idgen.errors import IdgenError, InvalidInput, LayoutMismatch
from idgen.generator import Generator
from idgen.layout import DEFAULT_LAYOUT, PRESETS, Layout, get_layout, iso_ms
from idgen.leases.base import Lease, trace
from idgen.leases.local import LocalLease, parse_worker_ids
from idgen.leases.zookeeper import (
    DEFAULT_NAMESPACE,
    DEFAULT_SESSION_TIMEOUT_S,
    ZK_AUTH_ENV,
    ZK_AUTH_FILE_ENV,
    ZK_INSECURE_ENV,
    ZK_INSECURE_FLAG,
    Namespace,
    ZkLease,
    connected,
    credentials_from_env,
    explain,
    required_credentials,
)

EXIT_UNAVAILABLE = 1
EXIT_USAGE = 2
MINT_CHUNK = 4096
# The largest --max-count: 65,536 IDs make a response of about 1.4 MB in JSON and take a worker's whole sequence
# for 16 ms in the default layout (4,096 per ms), and 2.6 s in sonyflake's; callers wanting more ask again.
MAX_COUNT_LIMIT = 65536


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get(f"IDGEN_{name.upper()}", default)


def _add_layout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--layout",
        default=_env("layout"),
        metavar="NAME",
        help=f"bit layout preset: {', '.join(PRESETS)} (env IDGEN_LAYOUT; default: the ZooKeeper namespace's"
        f" layout with --zk, else {DEFAULT_LAYOUT.name})",
    )


def _add_zookeeper(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument(
        "--zk",
        default=_env("zk"),
        required=required and not _env("zk"),
        metavar="HOSTS",
        help="ZooKeeper hosts, host:port[,host:port...] (env IDGEN_ZK); credentials are required and come only from"
        f" the environment: {ZK_AUTH_ENV}=user:password or {ZK_AUTH_FILE_ENV}=FILE",
    )
    parser.add_argument(
        ZK_INSECURE_FLAG,
        action="store_true",
        help=f"with {ZK_INSECURE_ENV}=1 as well, use ZooKeeper without credentials: anyone who reaches it can delete"
        " claims and fences, and duplicate IDs follow (never in production)",
    )
    parser.add_argument(
        "--namespace",
        default=_env("namespace", DEFAULT_NAMESPACE),
        metavar="PATH",
        help="ZooKeeper namespace path (env IDGEN_NAMESPACE; default %(default)s)",
    )


def _add_local_lease(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        default=_env("state_dir"),
        metavar="DIR",
        help="local lease state directory (env IDGEN_STATE_DIR; default ~/.local/state/idgen)",
    )
    parser.add_argument(
        "--worker-ids",
        default=_env("worker_ids"),
        metavar="A-B",
        help="local worker ID range, inclusive (env IDGEN_WORKER_IDS; default the layout's whole range); refused"
        " with --zk",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="idgen", description="Globally unique, time-ordered 63-bit IDs.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    mint = commands.add_parser("mint", help="print new IDs, one per line")
    mint.add_argument("-n", "--count", type=_positive_int, default=1, metavar="N", help="how many IDs (default 1)")
    mint.add_argument("--format", choices=FORMS, default="decimal", help="string form (default decimal)")
    _add_layout(mint)
    _add_local_lease(mint)
    _add_zookeeper(mint)
    mint.set_defaults(run=_mint)

    decode = commands.add_parser("decode", help="show what an ID says: time, node fields, sequence")
    decode.add_argument("id", help="an ID in any string form: decimal, 0x-hex, base32 or base58")
    decode.add_argument("--format", choices=FORMS, default=None, help="the ID's string form (default: detect)")
    decode.add_argument("--json", action="store_true", help="print one JSON object")
    _add_layout(decode)
    _add_zookeeper(decode)
    decode.set_defaults(run=_decode)

    layouts = commands.add_parser("layouts", help="list the layout presets")
    layouts.add_argument("--json", action="store_true", help="print JSON")
    layouts.set_defaults(run=_layouts)

    leases = commands.add_parser("leases", help="list a ZooKeeper namespace's live leases, fences and history")
    leases.add_argument("--json", action="store_true", help="print JSON")
    _add_zookeeper(leases, required=True)
    leases.set_defaults(run=_leases)

    secure = commands.add_parser(
        "zk-secure", help="restrict a ZooKeeper namespace's world-writable nodes to the credentials in the environment"
    )
    _add_zookeeper(secure, required=True)
    secure.set_defaults(run=_zk_secure)

    serve = commands.add_parser("serve", help="run the HTTP service (GET /id, /decode/{id}, /readyz, /metrics, ...)")
    serve.add_argument(
        "--host", default=_env("host", "0.0.0.0"), help="address to listen on (env IDGEN_HOST; default %(default)s)"
    )
    serve.add_argument(
        "--port",
        type=_port,
        default=_env("port", "8080"),
        help="TCP port; 0 picks a free one, shown in the 'listening' log event (env IDGEN_PORT; default %(default)s)",
    )
    serve.add_argument(
        "--processes",
        type=_positive_int,
        default=_env("processes", "1"),
        metavar="N",
        help="worker processes sharing the port (SO_REUSEPORT), each with its own worker ID"
        " (env IDGEN_PROCESSES; default %(default)s)",
    )
    serve.add_argument(
        "--max-count",
        type=_bounded(int, "a positive whole number", 1, MAX_COUNT_LIMIT),
        default=_env("max_count", "4096"),
        metavar="N",
        help=f"largest ?count= of GET /id, at most {MAX_COUNT_LIMIT} (env IDGEN_MAX_COUNT; default %(default)s)",
    )
    serve.add_argument(
        "--access-log",
        nargs="?",
        const=True,
        type=_flag,
        default=_env("access_log", "false"),
        metavar="BOOL",
        help="log one JSON line per request; --access-log alone means true (env IDGEN_ACCESS_LOG; default false)",
    )
    serve.add_argument(
        "--zk-session-timeout",
        type=_positive_float,
        default=_env("zk_session_timeout"),
        metavar="SECONDS",
        help="ZooKeeper session timeout asked for; the lease is lost after this long without ZooKeeper"
        f" (env IDGEN_ZK_SESSION_TIMEOUT; default {DEFAULT_SESSION_TIMEOUT_S:g})",
    )
    _add_layout(serve)
    _add_local_lease(serve)
    _add_zookeeper(serve)
    serve.set_defaults(run=_serve)
    return parser


def _bounded(convert: Callable[[str], Any], what: str, low: float, high: float) -> Callable[[str], Any]:
    """An argparse type: ``convert(text)`` if it lies in ``[low, high]``, else a one-line error naming ``what``."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} ({low:g} to {high:g})")
        return value

    return parse


_positive_int = _bounded(int, "a positive whole number", 1, math.inf)
_port = _bounded(int, "a port number", 0, 65535)
_positive_float = _bounded(float, "a positive number", 1e-3, 1e6)


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def lease_from_args(args: argparse.Namespace, address: str | None = None) -> Lease:
    """The lease the options ask for: ZooKeeper with ``--zk``, else local."""
    if args.zk and args.worker_ids:
        raise InvalidInput(
            "--worker-ids (IDGEN_WORKER_IDS) is for the local lease; with --zk, ZooKeeper hands out the worker IDs:"
            " leave it unset"
        )
    layout = _layout(args)
    if args.zk:
        session_timeout_s = getattr(args, "zk_session_timeout", None) or DEFAULT_SESSION_TIMEOUT_S
        auth = required_credentials(args.zk_insecure_no_auth)
        return ZkLease(
            layout,
            args.zk,
            args.namespace,
            auth=auth,
            insecure=auth is None,
            address=address,
            session_timeout_s=session_timeout_s,
        )
    worker_ids = parse_worker_ids(args.worker_ids) if args.worker_ids else None
    return LocalLease(layout, state_dir=args.state_dir, worker_ids=worker_ids, address=address)


def _layout(args: argparse.Namespace) -> Layout:
    """``--layout``; else, with ``--zk``, the layout the namespace already has; else the default."""
    if args.layout:
        return get_layout(args.layout)
    if args.zk:
        with _namespace(args) as namespace, contextlib.suppress(InvalidInput):  # a new namespace has none yet
            return namespace.layout()
    return DEFAULT_LAYOUT


@contextlib.contextmanager
def _namespace(args: argparse.Namespace, auth: str | None = None) -> Iterator[Namespace]:
    with connected(args.zk, auth or required_credentials(args.zk_insecure_no_auth)) as client:
        yield Namespace(client, args.namespace)


def _mint(args: argparse.Namespace) -> None:
    lease = lease_from_args(args)
    with Generator(lease.layout, lease) as gen:
        remaining = args.count
        while remaining:
            batch = gen.next_ids(min(remaining, MINT_CHUNK))
            sys.stdout.write("\n".join(format_id(i, args.format) for i in batch) + "\n")
            remaining -= len(batch)


def _decode(args: argparse.Namespace) -> None:
    id_ = parse_id(args.id, args.format)
    if not args.zk:
        _print(get_layout(args.layout or DEFAULT_LAYOUT).decode(id_), args.json)
        return
    with _namespace(args) as namespace:
        layout = namespace.layout()
        if args.layout and get_layout(args.layout) != layout:
            raise LayoutMismatch(f"namespace {namespace.path} uses layout {layout.summary()}, not {args.layout!r}")
        fields = layout.decode(id_)
        fence_ms = namespace.fence(fields["worker"])  # the fence first, then the history (see trace)
        traced = trace(namespace.holders(fields["worker"]), fields["timestamp_ms"], fence_ms)
    _print({**fields, **traced.to_json()}, args.json)


def _serve(args: argparse.Namespace) -> None:
    from idgen.server import serve  # imports aiohttp; the other commands do without it

    code = serve(args)
    if code:
        raise SystemExit(code)


def _leases(args: argparse.Namespace) -> None:
    with _namespace(args) as namespace:
        described = namespace.describe()
    if args.json:
        print(json.dumps(described, indent=2))
        return
    print(f"namespace {described['namespace']}  layout {described['layout']['name']}")
    print(f"{'worker':>6}  {'fence':<24}  holder")
    for worker, fence_ms in described["fences"].items():
        live = described["leases"].get(worker)
        holder = f"{live['host']} pid {live['pid']} since {iso_ms(live['started_ms'])}" if live else "(free)"
        print(f"{worker:>6}  {iso_ms(fence_ms):<24}  {holder}")
    for worker, why in described["quarantined"].items():
        print(f"{worker:>6}  QUARANTINED: {why}")


def _zk_secure(args: argparse.Namespace) -> None:
    auth = credentials_from_env()
    if auth is None:
        raise InvalidInput(f"zk-secure needs the credentials to secure with: set {ZK_AUTH_ENV} or {ZK_AUTH_FILE_ENV}")
    with _namespace(args, auth) as namespace:
        changed = namespace.secure(auth)
    print(f"secured {len(changed)} nodes of {namespace.path}")


def _layouts(args: argparse.Namespace) -> None:
    described = [layout.describe() for layout in PRESETS.values()]
    if args.json:
        print(json.dumps(described, indent=2))
        return
    for d in described:
        print(f"{d['name']:<10} {d['bits']:<48} epoch {d['epoch']}  unit {d['unit_ms']} ms  runs out {d['expires']}")


def _print(fields: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(fields))
    else:
        width = max(map(len, fields))
        print("\n".join(f"{key:<{width}}  {value}" for key, value in fields.items()))


def _log_to_stderr() -> None:
    """One-shot commands: idgen's warnings as ``idgen: warning: ...`` lines; kazoo's retry chatter is dropped
    because the command's own error line already says what failed."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("idgen: %(levelname)s: %(message)s"))
    logging.getLogger("idgen").addHandler(handler)
    logging.getLogger("idgen").setLevel(logging.WARNING)
    logging.getLogger("kazoo").addHandler(logging.NullHandler())
    logging.getLogger("kazoo").propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _log_to_stderr()
    run: Callable[[argparse.Namespace], None] = args.run
    try:
        run(args)
    except (InvalidInput, LayoutMismatch) as exc:
        return _fail(EXIT_USAGE, exc)
    except IdgenError as exc:
        return _fail(EXIT_UNAVAILABLE, exc)
    except KazooException as exc:  # decode/leases read ZooKeeper directly
        return _fail(EXIT_UNAVAILABLE, explain(exc))
    except OSError as exc:  # an unwritable state directory, a full disk: say so in one line
        if isinstance(exc, BrokenPipeError):  # `idgen mint -n 1000000 | head`
            sys.stderr.close()
            return 0
        return _fail(EXIT_UNAVAILABLE, exc)
    except KeyboardInterrupt:
        return 130
    return 0


def _fail(code: int, exc: BaseException | str) -> int:
    message = " ".join(str(exc).split()) or type(exc).__name__
    print(f"idgen: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
