"""The ``idgen`` command line: mint, decode, layouts, leases, zk-secure, serve (on a local, ZooKeeper or etcd lease).

Every option can also be set through an environment variable (``IDGEN_`` + the option name in upper case,
for example ``IDGEN_STATE_DIR``); a command-line option wins, and a variable a command has no option for is still read
and checked. ``mint`` and ``decode`` take their ID source as the process default does
(:func:`idgen.default.source_from_env`): the servers of ``--url``/``IDGEN_URL``, else a ZooKeeper or local lease;
``serve``, ``leases`` and ``zk-secure`` refuse ``IDGEN_URL`` rather than ignore it. Errors are one line on stderr:
exit 2 for bad input, 1 when idgen cannot serve (no lease, clock behind the fence, ...). Never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from idgen import config
from idgen.config import MAX_COUNT_LIMIT, OPTIONS, Settings, env_name
from idgen.default import source_from_env
from idgen.encoding import FORMS, format_id, parse_id
from idgen.errors import AmbiguousId, IdgenError, InvalidInput, LayoutMismatch, Unavailable
from idgen.generator import DEFAULT_MAX_LEAD_MS
from idgen.layout import DEFAULT_LAYOUT, PRESETS, SPEC_EXAMPLE, iso_ms
from idgen.leases.etcd import DEFAULT_TTL_S, ETCD_CA_ENV, ETCD_CERT_ENV, ETCD_CREDENTIALS, ETCD_KEY_ENV
from idgen.leases.tracing import trace
from idgen.leases.zookeeper import (
    DEFAULT_NAMESPACE,
    DEFAULT_SESSION_TIMEOUT_S,
    ZK_AUTH_ENV,
    ZK_AUTH_FILE_ENV,
    ZK_INSECURE_ENV,
    ZK_INSECURE_FLAG,
    Namespace,
    credentials_from_env,
)
from idgen.version import __version__

EXIT_UNAVAILABLE = 1
EXIT_USAGE = 2
MINT_CHUNK = 4096
DECODE_TIMEOUT_S = 5.0  # per server asked by `idgen decode` with --url
DECODE_MAX_BYTES = 1 << 20  # a decode answer is a few hundred bytes; a larger one is not a server of ours


class _StoreOnce(argparse._StoreAction):
    """An option with a value, refused when given twice: ``mint -n 3 -n 5`` would silently take the last."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        given: set[str] = namespace.__dict__.setdefault("_given", set())
        if self.dest in given:
            parser.error(f"{'/'.join(self.option_strings)} is given twice")
        given.add(self.dest)
        super().__call__(parser, namespace, values, option_string)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2, and no option given twice. An option left
    unset on the command line takes its ``IDGEN_*`` variable's value (:func:`idgen.config.from_env`); a bad variable
    is a one-line error naming it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, rest = super().parse_known_args(args, namespace)
        for action in self._actions:
            if action.dest in OPTIONS and getattr(parsed, action.dest, None) is None:
                try:
                    setattr(parsed, action.dest, config.from_env(action.dest))
                except InvalidInput as exc:
                    self.error(str(exc))
        return parsed, rest

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _type(option: str) -> Callable[[str], Any]:
    """The argparse type of ``option``: its converter in :data:`idgen.config.OPTIONS`."""
    return _argument(OPTIONS[option][0])


def _argument(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """``convert`` as an argparse type: its :class:`InvalidInput` becomes argparse's one-line error."""

    def parse(text: str) -> Any:
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _add_layout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--layout",
        type=_type("layout"),
        metavar="NAME|SPEC",
        help=f"bit layout: a preset ({', '.join(PRESETS)}) or a spec (see idgen layouts) (env IDGEN_LAYOUT;"
        f" default: the ZooKeeper namespace's layout with --zk, else {DEFAULT_LAYOUT.name})",
    )


def _add_zookeeper(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--zk",
        type=_type("zk"),
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
        type=_type("namespace"),
        metavar="PATH",
        help=f"ZooKeeper namespace path, or etcd key prefix (env IDGEN_NAMESPACE; default {DEFAULT_NAMESPACE})",
    )
    parser.add_argument(
        "--etcd",
        type=_type("etcd"),
        metavar="URL[,URL...]",
        help="etcd client URLs, e.g. https://etcd-0:2379 (env IDGEN_ETCD); credentials are required and come only from"
        f" the environment: {ETCD_CREDENTIALS.auth_env}=user:password or {ETCD_CREDENTIALS.auth_file_env}=FILE;"
        f" {ETCD_CA_ENV} verifies the servers, {ETCD_CERT_ENV} + {ETCD_KEY_ENV} is a client certificate for mutual TLS",
    )
    parser.add_argument(
        ETCD_CREDENTIALS.insecure_flag,
        action="store_true",
        help=f"with {ETCD_CREDENTIALS.insecure_env}=1 as well, use etcd without credentials: anyone who reaches it can"
        " delete claims and fences, and duplicate IDs follow (never in production)",
    )


def _add_servers(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--url",
        type=_type("url"),
        metavar="URL[,URL...]",
        help=f"running idgen servers to {what}, comma-separated (env IDGEN_URL); the process default"
        " (idgen.next_id) uses the same variable. Lease and layout settings are refused with it",
    )


def _add_local_lease(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=_type("state_dir"),
        metavar="DIR",
        help="local lease state directory (env IDGEN_STATE_DIR; default ~/.local/state/idgen)",
    )
    parser.add_argument(
        "--worker-ids",
        type=_type("worker_ids"),
        metavar="A-B",
        help="local worker ID range, inclusive (env IDGEN_WORKER_IDS; default the layout's whole range); refused"
        " with --zk",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="idgen", description="Globally unique, time-ordered 63-bit IDs.")
    parser.add_argument("--version", action="version", version=f"idgen {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    mint = commands.add_parser("mint", help="print new IDs, one per line")
    mint.add_argument(
        "-n", "--count", type=_argument(config.positive_int), default=1, metavar="N", help="how many IDs (default 1)"
    )
    mint.add_argument("--format", choices=FORMS, default="decimal", help="string form (default decimal)")
    _add_servers(mint, "take the IDs from (they lease the worker IDs)")
    _add_layout(mint)
    _add_local_lease(mint)
    _add_zookeeper(mint)
    mint.set_defaults(run=_mint)

    decode = commands.add_parser("decode", help="show what an ID says: time, node fields, sequence")
    decode.add_argument("id", help="an ID in any string form: decimal, 0x-hex, base32 or base58")
    decode.add_argument("--format", choices=FORMS, default=None, help="the ID's string form (default: detect)")
    decode.add_argument("--json", action="store_true", help="print one JSON object")
    _add_servers(decode, "ask (GET /decode/ID: their layout, and the lease holder that minted the ID)")
    _add_layout(decode)
    _add_zookeeper(decode)
    decode.set_defaults(run=_decode)

    layouts = commands.add_parser("layouts", help="list the layout presets")
    layouts.add_argument("--json", action="store_true", help="print JSON")
    layouts.set_defaults(run=_layouts)

    leases = commands.add_parser("leases", help="list a ZooKeeper namespace's live leases, fences and history")
    leases.add_argument("--json", action="store_true", help="print JSON")
    _add_zookeeper(leases)
    leases.set_defaults(run=_leases)

    secure = commands.add_parser(
        "zk-secure",
        help="give a ZooKeeper namespace's nodes that others may change the ACL of the credentials in the environment",
    )
    _add_zookeeper(secure)
    secure.set_defaults(run=_zk_secure)

    serve = commands.add_parser("serve", help="run the HTTP service (GET /id, /decode/{id}, /readyz, /metrics, ...)")
    serve.add_argument(
        "--host", type=_type("host"), help=f"address to listen on (env IDGEN_HOST; default {_default('host')})"
    )
    serve.add_argument(
        "--port",
        type=_type("port"),
        help="TCP port; 0 picks a free one, shown in the 'listening' log event"
        f" (env IDGEN_PORT; default {_default('port')})",
    )
    serve.add_argument(
        "--processes",
        type=_type("processes"),
        metavar="N",
        help="worker processes sharing the port (SO_REUSEPORT), each with its own worker ID"
        f" (env IDGEN_PROCESSES; default {_default('processes')})",
    )
    serve.add_argument(
        "--max-count",
        type=_type("max_count"),
        metavar="N",
        help=f"largest ?count= of GET /id, at most {MAX_COUNT_LIMIT}"
        f" (env IDGEN_MAX_COUNT; default {_default('max_count')})",
    )
    serve.add_argument(
        "--max-connections",
        type=_type("max_connections"),
        metavar="N",
        help="connections open at once per process; beyond it the longest-waiting connection without a request is"
        " closed (env IDGEN_MAX_CONNECTIONS; default: 1024, or fewer to leave 160 and a quarter of the open-files"
        " limit free)",
    )
    serve.add_argument(
        "--idle-timeout",
        type=_type("idle_timeout"),
        metavar="SECONDS",
        help="a keep-alive connection without a request is closed after this long; keep it above the idle time of"
        f" the clients' and proxies' pools (env IDGEN_IDLE_TIMEOUT; default {_default('idle_timeout'):g})",
    )
    serve.add_argument(
        "--access-log",
        nargs="?",
        const=True,
        type=_type("access_log"),
        metavar="BOOL",
        help="log one JSON line per request; --access-log alone means true (env IDGEN_ACCESS_LOG; default false)",
    )
    serve.add_argument(
        "--uvloop",
        nargs="?",
        const=True,
        type=_type("uvloop"),
        metavar="BOOL",
        help="run on uvloop's event loop where it is installed (a dependency on Linux and macOS); false: the standard"
        " asyncio loop (env IDGEN_UVLOOP; default true)",
    )
    serve.add_argument(
        "--zk-session-timeout",
        type=_type("zk_session_timeout"),
        metavar="SECONDS",
        help="ZooKeeper session timeout asked for; the lease is lost after this long without ZooKeeper"
        f" (env IDGEN_ZK_SESSION_TIMEOUT; default {DEFAULT_SESSION_TIMEOUT_S:g})",
    )
    serve.add_argument(
        "--max-lead",
        type=_type("max_lead"),
        metavar="SECONDS",
        help="how far ahead of a clock that stepped back IDs may run, inside the reserved fence, instead of refusing;"
        " further behind, the server switches to a worker ID whose fence is below the clock; 0 refuses at once and"
        f" never switches (env IDGEN_MAX_LEAD; default {DEFAULT_MAX_LEAD_MS / 1000:g})",
    )
    serve.add_argument(
        "--census-interval",
        type=_type("census_interval"),
        metavar="SECONDS",
        help="how often the namespace gauges (idgen_namespace_worker_ids) are counted again, at most, while"
        f" /metrics is scraped (env IDGEN_CENSUS_INTERVAL; default {_default('census_interval'):g})",
    )
    _add_layout(serve)
    _add_local_lease(serve)
    serve.add_argument(
        "--etcd-ttl",
        type=_type("etcd_ttl"),
        metavar="SECONDS",
        help="TTL of the etcd lease the claim is bound to; the claim is lost after this long without etcd"
        f" (env IDGEN_ETCD_TTL; default {DEFAULT_TTL_S:g})",
    )
    _add_zookeeper(serve)
    serve.set_defaults(run=_serve)
    return parser


def _default(option: str) -> Any:
    return OPTIONS[option][1]


def _mint(args: argparse.Namespace) -> None:
    """IDs from the source the process default would use (:func:`idgen.default.source_from_env`): the servers of
    ``--url``/``IDGEN_URL``, else a lease of this process's own."""
    with source_from_env(settings=Settings.of(args)) as source:
        remaining = args.count
        while remaining:
            batch = source.next_ids(min(remaining, MINT_CHUNK))
            sys.stdout.write("\n".join(format_id(i, args.format) for i in batch) + "\n")
            remaining -= len(batch)


def _decode(args: argparse.Namespace) -> None:
    """The ID is read in its layout's width where the layout is known here (``parse_id``'s ``bits``)."""
    settings = Settings.of(args)
    if settings.url:
        try:
            path = f"/decode/{parse_id(args.id, args.format)}"
        except AmbiguousId:  # which reading is an ID depends on the servers' layout: theirs to say
            path = f"/decode/{urllib.parse.quote(args.id, safe='')}"
        _print(_ask_servers(settings.url, path), args.json)
        return
    if not settings.zk and not settings.etcd:
        layout = settings.layout or DEFAULT_LAYOUT
        _print(layout.decode(parse_id(args.id, args.format, bits=layout.bits_total)), args.json)
        return
    with contextlib.suppress(AmbiguousId):  # which reading is an ID depends on the namespace's layout, read below
        parse_id(args.id, args.format)  # a string that is no ID is refused before ZooKeeper or etcd is asked
    with config.namespace_of(settings) as namespace:
        layout = namespace.layout()
        if settings.layout and settings.layout != layout:
            raise LayoutMismatch(
                f"namespace {namespace.path} uses layout {layout.summary()}, not {settings.layout.summary()}"
            )
        fields = layout.decode(parse_id(args.id, args.format, bits=layout.bits_total))
        fence_ms = namespace.fence(fields["worker"])  # the fence first, then the history (see trace)
        traced = trace(namespace.holders(fields["worker"]), fields["timestamp_ms"], fence_ms)
    _print({**fields, **traced.to_json()}, args.json)


def _ask_servers(urls: Sequence[str], path: str) -> dict[str, Any]:
    """The JSON object of the first server in ``urls`` that answers ``GET path``; a 4xx is the caller's fault
    (:class:`InvalidInput` with the server's message), no answer at all is :class:`Unavailable`."""
    failures = []
    for url in urls:
        try:
            with urllib.request.urlopen(url + path, timeout=DECODE_TIMEOUT_S) as response:
                answer = json.loads(response.read(DECODE_MAX_BYTES))
            if isinstance(answer, dict):
                return answer
            failures.append(f"{url}: not a JSON object")
        except urllib.error.HTTPError as exc:
            if 400 <= exc.code < 500:
                raise InvalidInput(f"{url}: {_error_message(exc)}") from None
            failures.append(f"{url}: HTTP {exc.code}")
        except (OSError, ValueError) as exc:
            failures.append(f"{url}: {getattr(exc, 'reason', exc)}")
    raise Unavailable(f"no idgen server answered GET {path}: {'; '.join(failures)}")


def _error_message(exc: urllib.error.HTTPError) -> str:
    """The message of an idgen error body (``{"error": {"code", "message"}}``), else the HTTP status."""
    try:
        return str(json.loads(exc.read(DECODE_MAX_BYTES))["error"]["message"])
    except (OSError, ValueError, TypeError, KeyError):
        return f"HTTP {exc.code}"


def _refuse_servers(command: str, why: str) -> None:
    """``IDGEN_URL`` names servers to take IDs from; a command that takes none would ignore it: refuse instead."""
    if config.from_env("url"):
        raise InvalidInput(f"{env_name('url')} is set, but idgen {command} {why}: unset it")


def _serve(args: argparse.Namespace) -> None:
    from idgen.http.server import serve  # imports aiohttp; the other commands do without it

    _refuse_servers("serve", "leases worker IDs of its own")
    code = serve(args)
    if code:
        raise SystemExit(code)


def _leases(args: argparse.Namespace) -> None:
    _refuse_servers("leases", "reads a ZooKeeper namespace (a server shows its lease at GET /info)")
    with config.namespace_of(Settings.of(args)) as namespace:
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
    print("\nhistory: each holder minted only timestamps in (after, fence]; oldest first")
    print(f"{'worker':>6}  {'after':<24}  {'fence':<24}  holder")
    for worker, holders in described["history"].items():
        for h in holders:
            fence = iso_ms(h["fence_ms"]) if h["fence_ms"] is not None else "(still holding)"
            ended = f", ended {iso_ms(h['ended_ms'])}" if h["ended_ms"] is not None else ""
            print(
                f"{worker:>6}  {iso_ms(h['after_ms']):<24}  {fence:<24}  {h['host']} pid {h['pid']}"
                f" since {iso_ms(h['started_ms'])}{ended}"
            )


def _zk_secure(args: argparse.Namespace) -> None:
    _refuse_servers("zk-secure", "secures a ZooKeeper namespace")
    auth = credentials_from_env()
    if auth is None:
        raise InvalidInput(f"zk-secure needs the credentials to secure with: set {ZK_AUTH_ENV} or {ZK_AUTH_FILE_ENV}")
    if args.etcd:
        raise InvalidInput(
            "zk-secure is for ZooKeeper; etcd's access is its users' roles (etcdctl role grant-permission)"
        )
    with config.namespace_of(Settings.of(args), auth) as namespace:
        assert isinstance(namespace, Namespace)  # with --zk, never etcd's
        changed = namespace.secure(auth)
    print(f"secured {len(changed)} nodes of {namespace.path}")


def _layouts(args: argparse.Namespace) -> None:
    described = [layout.describe() for layout in PRESETS.values()]
    if args.json:
        print(json.dumps(described, indent=2))
        return
    for d in described:
        print(f"{d['name']:<10} {d['bits']:<48} epoch {d['epoch']}  unit {d['unit_ms']} ms  runs out {d['expires']}")
    print(f"\n{_SPEC_HELP}")


_SPEC_HELP = f"""\
--layout and IDGEN_LAYOUT take a preset name or a layout spec: the fields, most significant first, as name:bits,
then ;epoch= (a UTC date YYYY-MM-DD, a time YYYY-MM-DDTHH:MM:SS[.mmm]Z, or Unix ms) and ;unit= (default 1ms):
  {SPEC_EXAMPLE}
One field is time and one is sequence; the others together hold the worker ID. The fields add up to at most 63 bits
(64 with time first); a layout of n bits has IDs below 2**n. `idgen layouts --json` shows each preset's spec.
js53: IDs below 2**53, exact as JavaScript Numbers, for APIs that must send numbers. It pays with 64 workers (not
1024) and 256 IDs per 10 ms per worker (25,600/s, not 4,096,000/s), and orders IDs only to 10 ms.\
"""


def _print(fields: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(fields))
    else:
        width = max(map(len, fields))
        shown = {key: json.dumps(v) if isinstance(v, dict | list) or v is None else v for key, v in fields.items()}
        print("\n".join(f"{key:<{width}}  {value}" for key, value in shown.items()))


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
