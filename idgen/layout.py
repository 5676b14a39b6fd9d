"""Bit layouts: how a 63-bit ID splits into time, node fields and sequence.

A :class:`Layout` is an ordered list of fields, most significant first, plus a time unit and an epoch.
Exactly one field is ``time`` and one is ``sequence``; every other field is a *node field*. The node
fields together carry the leased **worker ID**: its bits are spread over the node fields in order,
most significant first (Twitter's 5-bit ``datacenter_id`` and 5-bit ``worker_id`` are one 10-bit worker ID).

Invariants, checked at construction:

- the field widths add up to at most 63, so every ID is a non-negative signed 64-bit integer; a layout of ``n < 63``
  bits has IDs below ``2**n`` (``js53``'s fit a JavaScript Number). A 64-bit layout (Discord's) is accepted with
  ``time`` first; its top time bit must stay 0, which caps :attr:`Layout.max_tick` (Discord's IDs reach that bit in
  2084);
- the epoch is not in the future and the time unit is a positive whole number of milliseconds;
- :meth:`Layout.compose` refuses values that do not fit their field, so an ID never wraps.

A layout also has a one-line **spec string** (:meth:`Layout.spec_string`, read by :func:`get_layout`): its fields,
most significant first, as ``name:bits``, then ``;epoch=`` and, unless it is 1 ms, ``;unit=``::

    time:41,worker_id:10,sequence:12;epoch=2025-01-01;unit=1ms

The epoch is a UTC date, a UTC time ``2025-01-01T12:00:00.000Z`` (seconds or milliseconds) or Unix milliseconds; the
unit is a whole number of milliseconds, ``10ms``. Spaces around the separators are ignored; anything else is refused.
A custom layout's name is its canonical spec string, and a spec describing a preset is that preset.
"""

from __future__ import annotations

import keyword
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from idgen.encoding import check_id, parse_id
from idgen.errors import InvalidInput

ID_BITS = 63
RESERVED_NAMES = frozenset({"id", "layout", "timestamp_ms", "worker", "node"})


@dataclass(frozen=True)
class Layout:
    """A validated bit layout. Build one directly or take a preset from :data:`PRESETS`."""

    name: str
    fields: tuple[tuple[str, int], ...]
    epoch_ms: int
    unit_ms: int = 1
    shifts: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple((str(n), int(b)) for n, b in self.fields))
        names = [name for name, _ in self.fields]
        problems = []
        if names.count("time") != 1 or names.count("sequence") != 1:
            problems.append("needs exactly one 'time' and one 'sequence' field")
        if len(set(names)) != len(names):
            problems.append("field names repeat")
        problems += [f"field {n!r} is not an identifier" for n in names if not n.isidentifier() or keyword.iskeyword(n)]
        problems += [f"field name {n!r} is reserved for decode output" for n in names if n in RESERVED_NAMES]
        problems += [f"field {n!r} has {b} bits; each needs at least 1" for n, b in self.fields if b < 1]
        total = sum(bits for _, bits in self.fields)
        if total > ID_BITS + 1:
            problems.append(f"fields add up to {total} bits, more than {ID_BITS} (or 64 with 'time' first)")
        elif total == ID_BITS + 1 and names[0] != "time":
            problems.append("a 64-bit layout must put 'time' first, so its top bit can stay 0")
        if self.unit_ms < 1:
            problems.append(f"time unit {self.unit_ms} ms is not a positive number of milliseconds")
        if self.epoch_ms < 0 or self.epoch_ms > time.time_ns() // 1_000_000:
            problems.append(f"epoch {self.epoch_ms} ms is not between 1970 and now")
        if problems:
            raise InvalidInput(f"invalid layout {self.name!r}: " + "; ".join(problems))
        shifts, shift = {}, total
        for name, bits in self.fields:
            shift -= bits
            shifts[name] = shift
        object.__setattr__(self, "shifts", shifts)

    # -- field geometry ---------------------------------------------------------------------------

    def bits(self, name: str) -> int:
        return dict(self.fields)[name]

    @cached_property
    def bits_total(self) -> int:
        """The widths of all fields added up: every ID of the layout is below ``2 ** bits_total``."""
        return sum(bits for _, bits in self.fields)

    @cached_property
    def node_fields(self) -> tuple[tuple[str, int], ...]:
        """The node fields, most significant first; together they hold the worker ID."""
        return tuple((n, b) for n, b in self.fields if n not in ("time", "sequence"))

    @cached_property
    def worker_capacity(self) -> int:
        """How many distinct worker IDs this layout has: ``2 ** (sum of node field bits)``."""
        return 1 << sum(bits for _, bits in self.node_fields)

    @cached_property
    def sequence_capacity(self) -> int:
        """IDs one worker can mint per time unit."""
        return 1 << self.bits("sequence")

    @cached_property
    def max_tick(self) -> int:
        """The last tick the time field holds, keeping the ID below 2**63 (one bit less in a 64-bit layout)."""
        return (1 << min(self.bits("time"), ID_BITS - self.shifts["time"])) - 1

    @cached_property
    def expires_ms(self) -> int:
        """Unix ms of the last time unit the time bits can hold. Minting after it is refused."""
        return self.tick_ms(self.max_tick)

    def tick_ms(self, tick: int) -> int:
        """Unix ms at which time unit ``tick`` starts."""
        return self.epoch_ms + tick * self.unit_ms

    def tick_of(self, unix_ms: int) -> int:
        """The time unit containing ``unix_ms`` (negative before the epoch)."""
        return (unix_ms - self.epoch_ms) // self.unit_ms

    # -- composing and splitting IDs --------------------------------------------------------------

    def node_bits(self, worker_id: int) -> int:
        """The node fields of ``worker_id``, already shifted into place, ready to OR into an ID."""
        if not 0 <= worker_id < self.worker_capacity:
            raise InvalidInput(
                f"worker ID {worker_id} does not fit layout {self.name!r} (0 to {self.worker_capacity - 1})"
            )
        bits, rest = 0, worker_id
        for name, width in reversed(self.node_fields):
            bits |= (rest & ((1 << width) - 1)) << self.shifts[name]
            rest >>= width
        return bits

    def compose(self, tick: int, worker_id: int, sequence: int) -> int:
        """The ID for (tick, worker ID, sequence); refuses any value that does not fit its field."""
        if not 0 <= tick <= self.max_tick:
            raise InvalidInput(f"time unit {tick} does not fit {self.bits('time')} bits of layout {self.name!r}")
        if not 0 <= sequence < self.sequence_capacity:
            raise InvalidInput(f"sequence {sequence} does not fit layout {self.name!r}")
        return tick << self.shifts["time"] | self.node_bits(worker_id) | sequence << self.shifts["sequence"]

    def split(self, id_: int) -> dict[str, int]:
        """Every field of ``id_`` by name, plus ``worker``: the node fields read as one worker ID."""
        check_id(id_)
        if id_ >> self.bits_total:
            raise InvalidInput(f"ID {id_} has more than the {self.bits_total} bits of layout {self.name!r}")
        values = {name: (id_ >> self.shifts[name]) & ((1 << bits) - 1) for name, bits in self.fields}
        worker = 0
        for name, bits in self.node_fields:
            worker = worker << bits | values[name]
        values["worker"] = worker
        return values

    def decode(self, id_: int) -> dict[str, Any]:
        """What an ID says, as a JSON-ready dict: the shape of ``idgen decode --json``."""
        values = self.split(id_)
        timestamp_ms = self.tick_ms(values.pop("time"))
        return {
            "id": str(id_),
            "layout": self.name,
            "timestamp_ms": timestamp_ms,
            "time": iso_ms(timestamp_ms),
            **values,
        }

    # -- description and persistence --------------------------------------------------------------

    def spec(self) -> dict[str, Any]:
        """A JSON-ready description that :meth:`from_spec` turns back into an equal layout."""
        return {
            "name": self.name,
            "fields": [list(f) for f in self.fields],
            "epoch_ms": self.epoch_ms,
            "unit_ms": self.unit_ms,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Layout:
        try:
            return cls(
                spec["name"], tuple(tuple(f) for f in spec["fields"]), int(spec["epoch_ms"]), int(spec["unit_ms"])
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # int(1e999) overflows
            if isinstance(exc, InvalidInput):
                raise
            raise InvalidInput(f"not a layout spec: {spec!r}") from None

    def spec_string(self) -> str:
        """The canonical one-line spec (see the module docstring) that :func:`get_layout` reads back."""
        return _spec_string(self.fields, self.epoch_ms, self.unit_ms)

    def describe(self) -> dict[str, Any]:
        """The spec plus what follows from it, for ``idgen layouts`` and ``GET /info``."""
        return {
            **self.spec(),
            "spec_string": self.spec_string(),
            "bits": " | ".join(f"{bits} {name}" for name, bits in self.fields),
            "epoch": iso_ms(self.epoch_ms),
            "workers": self.worker_capacity,
            "ids_per_unit": self.sequence_capacity,
            "expires": iso_ms(self.expires_ms),
        }

    def summary(self) -> str:
        """One line naming the layout and everything that makes IDs of two layouts incompatible."""
        bits = " | ".join(f"{bits} {name}" for name, bits in self.fields)
        return f"{self.name!r} ({bits}; epoch {iso_ms(self.epoch_ms)}; unit {self.unit_ms} ms)"

    def __str__(self) -> str:
        return self.name


def iso_ms(unix_ms: int) -> str:
    """ISO 8601 UTC with milliseconds and ``Z``: ``2016-04-30T11:18:25.796Z``."""
    moment = datetime.fromtimestamp(unix_ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{unix_ms % 1000:03d}Z"


PRESETS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        # 2025-01-01T00:00:00Z; 41 bits of ms last until 2094.
        Layout("idgen", (("time", 41), ("worker_id", 10), ("sequence", 12)), epoch_ms=1735689600000),
        Layout(
            "twitter", (("time", 41), ("datacenter_id", 5), ("worker_id", 5), ("sequence", 12)), epoch_ms=1288834974657
        ),
        Layout(
            "discord", (("time", 42), ("worker_id", 5), ("process_id", 5), ("sequence", 12)), epoch_ms=1420070400000
        ),
        # 2014-09-01T00:00:00Z, in units of 10 ms.
        Layout("sonyflake", (("time", 39), ("sequence", 8), ("machine_id", 16)), epoch_ms=1409529600000, unit_ms=10),
        Layout("instagram", (("time", 41), ("shard_id", 13), ("sequence", 10)), epoch_ms=1314220021721),
        # IDs below 2**53, exact as JavaScript Numbers: 39 bits of 10 ms from 2025-01-01 last until 2199; 64 workers;
        # 256 IDs per 10 ms, 25,600 per second, per worker.
        Layout("js53", (("time", 39), ("worker_id", 6), ("sequence", 8)), epoch_ms=1735689600000, unit_ms=10),
    )
}
DEFAULT_LAYOUT = PRESETS["idgen"]


SPEC_EXAMPLE = "time:41,worker_id:10,sequence:12;epoch=2025-01-01;unit=1ms"
_FIELD = re.compile(r"(\w+):([0-9]{1,3})")
_EPOCH = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{3})?Z)?")
_UNIT = re.compile(r"([1-9][0-9]{0,9})ms")
_DAY_MS = 86_400_000
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def get_layout(layout: Layout | str) -> Layout:
    """A layout given as itself, as a preset name or as a spec string."""
    if isinstance(layout, Layout):
        return layout
    if isinstance(layout, str) and ":" in layout:
        return parse_spec_string(layout)
    try:
        return PRESETS[layout]
    except (KeyError, TypeError):
        raise InvalidInput(
            f"unknown layout {layout!r}; presets are {', '.join(PRESETS)}, or a spec like {SPEC_EXAMPLE}"
        ) from None


def parse_spec_string(text: str) -> Layout:
    """The layout a spec string describes: a preset if it describes one, else a layout named by its canonical spec.
    Strict: anything but the grammar (see the module docstring) is :class:`InvalidInput` saying what is wrong."""

    def bad(why: str) -> InvalidInput:
        return InvalidInput(f"layout spec {text!r}: {why} (a spec looks like {SPEC_EXAMPLE})")

    field_part, *setting_parts = text.split(";")
    fields = []
    for item in field_part.split(","):
        match = _FIELD.fullmatch(item.strip())
        if not match:
            raise bad(f"{item.strip()!r} is not name:bits")
        fields.append((match[1], int(match[2])))
    settings: dict[str, str] = {}
    for part in setting_parts:
        key, equals, value = (p.strip() for p in part.partition("="))
        if not equals or key not in ("epoch", "unit"):
            raise bad(f"{part.strip()!r} is not epoch=... or unit=...")
        if key in settings:
            raise bad(f"{key} is given twice")
        settings[key] = value
    if "epoch" not in settings:
        raise bad("epoch=YYYY-MM-DD is required")
    epoch_ms = _epoch_ms(settings["epoch"])
    if epoch_ms is None:
        raise bad(f"{settings['epoch']!r} is not a date (YYYY-MM-DD, YYYY-MM-DDTHH:MM:SS[.mmm]Z or Unix ms)")
    unit = _UNIT.fullmatch(settings.get("unit", "1ms"))
    if not unit:
        raise bad(f"{settings['unit']!r} is not a unit like 10ms (a positive whole number of milliseconds)")
    geometry = (tuple(fields), epoch_ms, int(unit[1]))
    for preset in PRESETS.values():
        if (preset.fields, preset.epoch_ms, preset.unit_ms) == geometry:
            return preset
    return Layout(_spec_string(*geometry), *geometry)


def _spec_string(fields: tuple[tuple[str, int], ...], epoch_ms: int, unit_ms: int) -> str:
    epoch = iso_ms(epoch_ms)[:10] if epoch_ms % _DAY_MS == 0 else iso_ms(epoch_ms)
    unit = "" if unit_ms == 1 else f";unit={unit_ms}ms"
    return ",".join(f"{name}:{bits}" for name, bits in fields) + f";epoch={epoch}{unit}"


def _epoch_ms(text: str) -> int | None:
    """Unix ms of ``YYYY-MM-DD``, ``YYYY-MM-DDTHH:MM:SS[.mmm]Z`` (UTC) or a Unix ms integer; ``None`` if none."""
    if re.fullmatch(r"[0-9]{1,16}", text):
        return int(text)
    match = _EPOCH.fullmatch(text)
    if not match:
        return None
    form = "%Y-%m-%d" + ("T%H:%M:%S" if match[1] else "") + (".%f" if match[2] else "") + ("Z" if match[1] else "")
    try:
        moment = datetime.strptime(text, form).replace(tzinfo=UTC)
    except ValueError:  # a month 13, a February 30
        return None
    return (moment - _UNIX_EPOCH) // timedelta(milliseconds=1)


def decode(id_: int | str, layout: Layout | str = DEFAULT_LAYOUT, form: str | None = None) -> dict[str, Any]:
    """Decode an ID given as an int or in any string form; the same fields as ``idgen decode --json``."""
    layout = get_layout(layout)
    return layout.decode(id_ if isinstance(id_, int) else parse_id(id_, form, bits=layout.bits_total))
