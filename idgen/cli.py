"""The ``idgen`` command line: mint, decode, layouts.

Every option can also be set through an environment variable (``IDGEN_`` + the option name in upper case,
for example ``IDGEN_STATE_DIR``); a command-line option wins. Errors are one line on stderr:
exit 2 for bad input, 1 when idgen cannot serve (no lease, clock behind the fence, ...). Never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from idgen.encoding import FORMS, format_id, parse_id
from idgen.errors import IdgenError, InvalidInput, LayoutMismatch
from idgen.generator import Generator
from idgen.layout import DEFAULT_LAYOUT, PRESETS, get_layout
from idgen.leases.local import LocalLease, parse_worker_ids

EXIT_UNAVAILABLE = 1
EXIT_USAGE = 2
MINT_CHUNK = 4096


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get(f"IDGEN_{name.upper()}", default)


def _add_layout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--layout",
        default=_env("layout", DEFAULT_LAYOUT.name),
        metavar="NAME",
        help=f"bit layout preset: {', '.join(PRESETS)} (env IDGEN_LAYOUT; default %(default)s)",
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
        help="local worker ID range, inclusive (env IDGEN_WORKER_IDS; default the layout's whole range)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="idgen", description="Globally unique, time-ordered 63-bit IDs.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    mint = commands.add_parser("mint", help="print new IDs, one per line")
    mint.add_argument("-n", "--count", type=_positive_int, default=1, metavar="N", help="how many IDs (default 1)")
    mint.add_argument("--format", choices=FORMS, default="decimal", help="string form (default decimal)")
    _add_layout(mint)
    _add_local_lease(mint)
    mint.set_defaults(run=_mint)

    decode = commands.add_parser("decode", help="show what an ID says: time, node fields, sequence")
    decode.add_argument("id", help="an ID in any string form: decimal, 0x-hex, base32 or base58")
    decode.add_argument("--format", choices=FORMS, default=None, help="the ID's string form (default: detect)")
    decode.add_argument("--json", action="store_true", help="print one JSON object")
    _add_layout(decode)
    decode.set_defaults(run=_decode)

    layouts = commands.add_parser("layouts", help="list the layout presets")
    layouts.add_argument("--json", action="store_true", help="print JSON")
    layouts.set_defaults(run=_layouts)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def _local_lease(args: argparse.Namespace) -> LocalLease:
    worker_ids = parse_worker_ids(args.worker_ids) if args.worker_ids else None
    return LocalLease(get_layout(args.layout), state_dir=args.state_dir, worker_ids=worker_ids)


def _mint(args: argparse.Namespace) -> None:
    layout = get_layout(args.layout)
    with Generator(layout, _local_lease(args)) as gen:
        remaining = args.count
        while remaining:
            batch = gen.next_ids(min(remaining, MINT_CHUNK))
            sys.stdout.write("\n".join(format_id(i, args.format) for i in batch) + "\n")
            remaining -= len(batch)


def _decode(args: argparse.Namespace) -> None:
    fields = get_layout(args.layout).decode(parse_id(args.id, args.format))
    _print(fields, args.json)


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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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


def _fail(code: int, exc: BaseException) -> int:
    message = " ".join(str(exc).split()) or type(exc).__name__
    print(f"idgen: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
