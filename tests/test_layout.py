"""Bit layouts and string forms: presets decode real IDs, every form round-trips and sorts like the integer."""

from __future__ import annotations

import keyword
import re
import time

import base58
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from idgen import PRESETS, Layout, decode, format_id, get_layout, parse_id
from idgen.encoding import FORM_PATTERNS, FORMS, MAX_ID, format_ids, parse_ascii_int, read_id
from idgen.errors import AmbiguousId, InvalidInput
from idgen.layout import RESERVED_NAMES

ids = st.integers(min_value=0, max_value=MAX_ID)


def test_discord_worked_example_from_its_docs() -> None:
    fields = decode("175928847299117063", layout="discord")
    assert fields["time"] == "2016-04-30T11:18:25.796Z"
    assert fields["timestamp_ms"] == 1462015105796
    assert (fields["worker_id"], fields["process_id"], fields["sequence"]) == (1, 0, 7)


@pytest.mark.parametrize(
    ("name", "fields", "epoch_ms", "unit_ms"),
    [
        ("idgen", [("time", 41), ("worker_id", 10), ("sequence", 12)], 1735689600000, 1),
        ("twitter", [("time", 41), ("datacenter_id", 5), ("worker_id", 5), ("sequence", 12)], 1288834974657, 1),
        ("discord", [("time", 42), ("worker_id", 5), ("process_id", 5), ("sequence", 12)], 1420070400000, 1),
        ("sonyflake", [("time", 39), ("sequence", 8), ("machine_id", 16)], 1409529600000, 10),
        ("instagram", [("time", 41), ("shard_id", 13), ("sequence", 10)], 1314220021721, 1),
        ("js53", [("time", 39), ("worker_id", 6), ("sequence", 8)], 1735689600000, 10),
    ],
)
def test_presets_are_the_contract(name: str, fields: list[tuple[str, int]], epoch_ms: int, unit_ms: int) -> None:
    layout = PRESETS[name]
    assert list(layout.fields) == fields
    assert (layout.epoch_ms, layout.unit_ms) == (epoch_ms, unit_ms)


def test_twitter_fields_sit_where_twitter_puts_them() -> None:
    # Twitter: ms since its epoch << 22 | datacenter << 17 | worker << 12 | sequence.
    ms_since_epoch, datacenter, worker, sequence = 1_000_000_000, 3, 17, 42
    raw = ms_since_epoch << 22 | datacenter << 17 | worker << 12 | sequence
    fields = decode(raw, layout="twitter")
    assert fields["timestamp_ms"] == 1288834974657 + ms_since_epoch
    assert (fields["datacenter_id"], fields["worker_id"], fields["sequence"]) == (datacenter, worker, sequence)
    assert fields["worker"] == datacenter << 5 | worker


def test_sonyflake_time_is_in_10ms_units_and_machine_id_is_lowest() -> None:
    units, sequence, machine = 123_456_789, 200, 0xBEEF
    fields = decode(units << 24 | sequence << 16 | machine, layout="sonyflake")
    assert fields["timestamp_ms"] == 1409529600000 + units * 10
    assert (fields["sequence"], fields["machine_id"]) == (sequence, machine)


def test_instagram_layout_places_shard_above_sequence() -> None:
    fields = decode(5_000_000 << 23 | 1341 << 10 | 7, layout="instagram")
    assert (fields["timestamp_ms"], fields["shard_id"], fields["sequence"]) == (1314220021721 + 5_000_000, 1341, 7)


@pytest.mark.parametrize("layout", PRESETS.values(), ids=list(PRESETS))
@given(data=st.data())
def test_compose_and_split_round_trip(layout: Layout, data: st.DataObject) -> None:
    tick = data.draw(st.integers(0, layout.max_tick))
    worker = data.draw(st.integers(0, layout.worker_capacity - 1))
    sequence = data.draw(st.integers(0, layout.sequence_capacity - 1))
    id_ = layout.compose(tick, worker, sequence)
    assert 0 <= id_ <= MAX_ID
    parts = layout.split(id_)
    assert (parts["time"], parts["worker"], parts["sequence"]) == (tick, worker, sequence)


@pytest.mark.parametrize("layout", PRESETS.values(), ids=list(PRESETS))
def test_compose_refuses_values_that_do_not_fit(layout: Layout) -> None:
    with pytest.raises(InvalidInput, match="does not fit"):
        layout.compose(layout.max_tick + 1, 0, 0)
    with pytest.raises(InvalidInput, match="does not fit"):
        layout.compose(0, layout.worker_capacity, 0)
    with pytest.raises(InvalidInput, match="does not fit"):
        layout.compose(0, 0, layout.sequence_capacity)


def test_every_layout_reports_when_its_time_bits_run_out() -> None:
    assert PRESETS["idgen"].describe()["expires"].startswith("2094-")
    assert PRESETS["twitter"].describe()["expires"].startswith("2080-")
    assert PRESETS["discord"].describe()["expires"].startswith("2084-")  # the 64th bit stays 0
    assert PRESETS["instagram"].describe()["expires"].startswith("2046-")
    largest = PRESETS["discord"].compose(PRESETS["discord"].max_tick, 1023, 4095)
    assert largest == MAX_ID


@pytest.mark.parametrize(
    ("fields", "epoch_ms", "message"),
    [
        ((("time", 41), ("worker_id", 10), ("sequence", 14)), 0, "add up to 65 bits"),
        ((("worker_id", 10), ("time", 42), ("sequence", 12)), 0, "must put 'time' first"),
        ((("time", 41), ("worker_id", 22)), 0, "exactly one 'time' and one 'sequence'"),
        ((("time", 41), ("a", 5), ("a", 5), ("sequence", 12)), 0, "repeat"),
        ((("time", 41), ("node", 10), ("sequence", 12)), 0, "reserved"),
        ((("time", 41), ("worker_id", 0), ("sequence", 22)), 0, "at least 1"),
        ((("time", 41), ("worker_id", 10), ("sequence", 12)), int(time.time() * 1000) + 86_400_000, "epoch"),
    ],
)
def test_invalid_layouts_are_refused_with_a_clear_message(fields: tuple, epoch_ms: int, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        Layout("custom", fields, epoch_ms=epoch_ms)


def test_spec_round_trips() -> None:
    for layout in PRESETS.values():
        assert Layout.from_spec(layout.spec()) == layout


def all_digit_ids(form: str) -> st.SearchStrategy[int]:
    """IDs whose ``form`` string is all digits: the ones a reader could take for decimal."""
    width, digits = (13, "01234567") if form == "base32" else (11, "123456789")
    first = st.sampled_from(digits)
    return st.tuples(first, st.text("0123456789" if form == "base32" else digits, min_size=width - 1,
                                    max_size=width - 1)).map(lambda t: parse_id(t[0] + t[1], form))  # fmt: skip


# Random IDs, small ones (11 and 13 decimal digits), and IDs whose base32 or base58 string is all digits.
any_ids = st.one_of(ids, st.integers(0, 10**13), all_digit_ids("base32"), all_digit_ids("base58"))


@pytest.mark.parametrize("form", FORMS)
@given(value=any_ids)
@example(value=255826949459410944)  # 0737185780000 in base32, which decimal reads as 737185780000
def test_every_form_round_trips_and_without_a_form_never_reads_another_id(form: str, value: int) -> None:
    text = format_id(value, form)
    assert parse_id(text, form) == value
    try:
        assert parse_id(text) == value
    except AmbiguousId as refused:
        assert refused.readings[form] == value and len(refused.readings) == 2, refused.readings
        assert refused.code == "ambiguous_id" and "ambiguous" in str(refused)


def test_an_all_digit_base32_id_is_refused_without_a_form_and_read_with_one() -> None:
    with pytest.raises(AmbiguousId, match="decimal 737185780000 and base32 255826949459410944") as refused:
        parse_id("0737185780000")
    assert refused.value.readings == {"decimal": 737185780000, "base32": 255826949459410944}
    assert parse_id("0737185780000", "base32") == 255826949459410944
    assert parse_id("0737185780000", "decimal") == 737185780000
    assert read_id("12345678912") == {"decimal": 12345678912, "base58": parse_id("12345678912", "base58")}
    for unambiguous in ("8737185780000", "1234567891", "123456789123", "10345678912", "0x0271065ac1020007"):
        assert len(read_id(unambiguous)) == 1  # base32 past 63 bits; 10 and 12 digits; a 0 is no base58 digit


def test_a_reading_wider_than_the_layout_is_no_reading() -> None:
    """An early js53 ID is 13 decimal digits; as base32 the same string is at least 2**60 (its first digit is 1 to 7),
    which no js53 ID reaches: with the layout known, only the decimal reading is an ID of it."""
    js53 = get_layout("js53")
    early = "1234567890123"  # 2025-01-09: js53 IDs are 13 decimal digits from about day 7 to day 70
    with pytest.raises(AmbiguousId):
        parse_id(early)
    assert parse_id(early, bits=js53.bits_total) == 1234567890123
    assert decode(early, "js53")["id"] == "1234567890123"
    assert parse_id("23456789123", bits=js53.bits_total) == 23456789123  # base58: at least 58**10, about 2**58.6
    for both_fit in ("0000000000123", "11111111119"):  # small in both readings: still never a guess
        with pytest.raises(AmbiguousId):
            parse_id(both_fit, bits=js53.bits_total)
    with pytest.raises(AmbiguousId):
        decode("0737185780000")  # the default layout has 63 bits: both readings fit


id_texts = st.one_of(
    st.text("0123456789", min_size=1, max_size=20),
    st.text("0123456789abcdefxABCDEFXILOUZz", min_size=1, max_size=20),
    st.builds(lambda v, f: format_id(v, f), any_ids, st.sampled_from(FORMS)),
    st.builds(
        lambda v, f, c: format_id(v, f)[:-1] + c, any_ids, st.sampled_from(FORMS), st.characters(max_codepoint=127)
    ),
)


@pytest.mark.parametrize("form", FORMS)
@given(text=id_texts)
@example(text=str(MAX_ID)).via("the largest decimal")
@example(text=str(MAX_ID + 1)).via("one too many")
@example(text="NQm6nKp8qFC").via("the largest base58")
@example(text="NQm6nKp8qFD").via("one too many")
def test_each_forms_pattern_matches_exactly_what_its_parser_accepts(form: str, text: str) -> None:
    try:
        parse_id(text, form)
        parsed = True
    except InvalidInput:
        parsed = False
    assert (re.fullmatch(FORM_PATTERNS[form], text) is not None) == parsed, text


@pytest.mark.parametrize(
    "text", ["", "-1", "+1", " 1", "1 ", "1_000", "\u0663", "1\u0663", "\uff11", "\u00b2", "1.0", "1e3"]
)
def test_the_strict_ascii_int_parser_refuses_what_int_would_take(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"count .* is not a whole number"):
        parse_ascii_int(text, "count")


@pytest.mark.parametrize(
    "text",
    [
        "time:\u0664\u0661,worker_id:10,sequence:12;epoch=2025-01-01",  # Arabic-Indic 41 bits
        "time:41,worker_id:10,sequence:12;epoch=\u0662\u0660\u0662\u0665-01-01",
        "time:41,worker_id:10,sequence:12;epoch=\u0661\u0667\u0663\u0665\u0666\u0668\u0669\u0666\u0660\u0660\u0660\u0660\u0660",
        "time:41,worker_id:10,sequence:12;epoch=2025-01-01;unit=\u0661ms",
        "time:41,worker_id:\uff11\uff10,sequence:12;epoch=2025-01-01",  # fullwidth 10
    ],
)
def test_layout_specs_refuse_non_ascii_digits(text: str) -> None:
    with pytest.raises(InvalidInput, match="layout spec"):
        get_layout(text)


@pytest.mark.parametrize("form", [None, *FORMS])
def test_no_form_reads_non_ascii_digits(form: str | None) -> None:
    for digit in ("\u0663", "\uff13", "\u00b3", "\u09e9"):  # Arabic-Indic, fullwidth, superscript, Bengali 3
        for text in (digit, "1" * 10 + digit, "0" * 12 + digit, "0x" + "0" * 15 + digit):
            with pytest.raises(InvalidInput):
                parse_id(text, form)


def test_the_strict_ascii_int_parser_reads_ascii_digits() -> None:
    assert [parse_ascii_int(t, "n") for t in ("0", "7", "007", "4096", "9" * 30)] == [0, 7, 7, 4096, int("9" * 30)]


@pytest.mark.parametrize("form", ["hex", "base32", "base58"])
@given(a=ids, b=ids)
def test_fixed_width_forms_sort_like_the_integers(form: str, a: int, b: int) -> None:
    assert (format_id(a, form) < format_id(b, form)) == (a < b)


def crockford(value: int) -> str:
    """Crockford base32 the slow, obvious way: the oracle for the table-driven encoder."""
    digits = ""
    for _ in range(13):
        value, digit = divmod(value, 32)
        digits = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"[digit] + digits
    return digits


@given(values=st.lists(ids, max_size=50))
def test_the_fast_encoders_agree_with_the_reference_ones(values: list[int]) -> None:
    values += [0, 1, 57, 58, 3363, 3364, MAX_ID]
    assert format_ids(values, "base58") == [base58.b58encode_int(v).decode().rjust(11, "1") for v in values]
    assert format_ids(values, "base32") == [crockford(v) for v in values]
    assert format_ids(values, "hex") == [f"0x{v:016x}" for v in values]
    assert format_ids(values, "decimal") == [str(v) for v in values]
    for form in FORMS:
        assert [format_id(v, form) for v in values] == format_ids(values, form)


@pytest.mark.parametrize("form", [None, *FORMS])
@given(value=ids, data=st.data())
@example(value=MAX_ID, data=None)
def test_any_non_ascii_input_is_rejected(form: str | None, value: int, data: st.DataObject | None) -> None:
    """A valid ID with one character replaced by a non-ASCII one; ``None`` stands for the known tricks: U+017F (long
    s) upper-cases to ``S``, U+212A (Kelvin sign) lower-cases to ``k``, U+0131 (dotless i) upper-cases to ``I``."""
    text = format_id(value, form or "base32")
    if data is None:
        variants = [text[:-1] + "\u017f", text[:-1] + "\u212a", "0x" + "\u212a" * 16, text[:-1] + "\u0131"]
    else:
        at = data.draw(st.integers(0, len(text) - 1))
        variants = [text[:at] + data.draw(st.characters(min_codepoint=128)) + text[at + 1 :]]
    for variant in variants:
        with pytest.raises(InvalidInput):
            parse_id(variant, form)


def test_known_forms() -> None:
    assert format_id(175928847299117063, "hex") == "0x0271065ac1020007"
    assert format_id(0, "base32") == "0000000000000"
    assert format_id(MAX_ID, "base32") == "7ZZZZZZZZZZZZ"
    assert format_id(0, "base58") == "11111111111"
    assert format_id(57, "base58") == "1111111111z"


@pytest.mark.parametrize(
    ("text", "form"),
    [
        ("", None),
        ("abc", None),
        ("-5", None),
        ("1.5", None),
        (" 12", None),
        ("12 ", None),
        ("9223372036854775808", None),  # 2**63
        ("99999999999999999999", None),
        ("0x123", None),
        ("0x7fffffffffffffffff", None),
        ("0x8000000000000000", None),
        ("0xzzzzzzzzzzzzzzzz", None),
        ("8000000000000", None),  # base32 past 63 bits (read as decimal it is fine; forced below)
        ("UUUUUUUUUUUUU", None),  # U is not a Crockford digit
        ("0OIl111111111", "base58"),
        ("11111111111", "base32"),
        ("zzzzzzzzzzz", None),  # base58 above 2**63
        ("١٢٣", None),  # Arabic-Indic digits are digits to str.isdigit, not to us
        ("12", "octal"),
    ],
)
def test_parsers_are_strict(text: str, form: str | None) -> None:
    if text == "8000000000000":
        form = "base32"
    with pytest.raises(InvalidInput):
        parse_id(text, form)


def test_decode_fields_are_the_cli_json_fields() -> None:
    fields = decode(format_id(PRESETS["idgen"].compose(1000, 5, 9), "base32"))
    assert fields == {
        "id": str(PRESETS["idgen"].compose(1000, 5, 9)),
        "layout": "idgen",
        "timestamp_ms": 1735689601000,
        "time": "2025-01-01T00:00:01.000Z",
        "worker_id": 5,
        "sequence": 9,
        "worker": 5,
    }


# -- js53: IDs a JavaScript Number holds exactly -----------------------------------------------------------------

JS_MAX_SAFE_INTEGER = 2**53 - 1


@given(data=st.data())
def test_every_js53_id_is_a_safe_javascript_integer(data: st.DataObject) -> None:
    js53 = PRESETS["js53"]
    tick = data.draw(st.integers(0, js53.max_tick))
    worker = data.draw(st.integers(0, js53.worker_capacity - 1))
    sequence = data.draw(st.integers(0, js53.sequence_capacity - 1))
    assert js53.compose(tick, worker, sequence) <= JS_MAX_SAFE_INTEGER


def test_js53_uses_all_53_bits_and_says_what_it_trades() -> None:
    js53 = PRESETS["js53"]
    top = js53.compose(js53.max_tick, js53.worker_capacity - 1, js53.sequence_capacity - 1)
    assert top == JS_MAX_SAFE_INTEGER
    with pytest.raises(InvalidInput, match="does not fit"):
        js53.compose(js53.max_tick + 1, 0, 0)
    described = js53.describe()
    assert (described["workers"], described["ids_per_unit"], described["unit_ms"]) == (64, 256, 10)
    assert described["expires"].startswith("2199-")


# -- layout spec strings --------------------------------------------------------------------------------------

STARTED_MS = time.time_ns() // 1_000_000  # a fixed bound: hypothesis replays draws
names = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True).filter(
    lambda n: n not in ("time", "sequence") and not keyword.iskeyword(n) and n not in RESERVED_NAMES
)


@st.composite
def layouts(draw: st.DrawFn) -> Layout:
    """A valid layout: up to 3 node fields, in any order with time and sequence, 2 to 63 bits in all, an epoch between
    1970 and now, a unit of 1 ms to a day."""
    node = draw(st.lists(names, max_size=3, unique=True))
    order = draw(st.permutations(["time", "sequence", *node]))
    total = draw(st.integers(len(order), 63))
    cuts = sorted(
        draw(st.lists(st.integers(1, total - 1), min_size=len(order) - 1, max_size=len(order) - 1, unique=True))
    )
    widths = [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]
    epoch_ms = draw(st.integers(0, STARTED_MS))
    unit_ms = draw(st.sampled_from([1, 2, 10, 1000, 86_400_000]))
    return Layout("custom", tuple(zip(order, widths, strict=True)), epoch_ms=epoch_ms, unit_ms=unit_ms)


def geometry(layout: Layout) -> tuple:
    return layout.fields, layout.epoch_ms, layout.unit_ms


@given(layouts())
@example(PRESETS["sonyflake"])
def test_spec_strings_round_trip(layout: Layout) -> None:
    text = layout.spec_string()
    parsed = get_layout(text)
    assert geometry(parsed) == geometry(layout)
    assert parsed.spec_string() == text


@pytest.mark.parametrize("name", list(PRESETS))
def test_a_spec_that_describes_a_preset_is_that_preset(name: str) -> None:
    assert get_layout(PRESETS[name].spec_string()) is PRESETS[name]


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("time:41,shard:9,sequence:13;epoch=2025-01-01", "time:41,shard:9,sequence:13;epoch=2025-01-01"),
        (
            " time:41 , shard:9 , sequence:13 ; unit=1ms ; epoch=2025-01-01T00:00:00Z ",
            "time:41,shard:9,sequence:13;epoch=2025-01-01",
        ),
        (
            "time:40,shard:10,sequence:13;epoch=1735689600000;unit=100ms",
            "time:40,shard:10,sequence:13;epoch=2025-01-01;unit=100ms",
        ),
        (
            "time:41,shard:9,sequence:13;epoch=2025-01-01T12:30:00.250Z",
            "time:41,shard:9,sequence:13;epoch=2025-01-01T12:30:00.250Z",
        ),
    ],
)
def test_spec_strings_are_read_in_their_every_form(text: str, canonical: str) -> None:
    layout = get_layout(text)
    assert layout.spec_string() == canonical == layout.name
    assert decode(layout.compose(5, 3, 1), layout)["shard"] == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope", "unknown layout 'nope'; presets are idgen, .*, or a spec like time:41"),
        ("time:41,worker_id:10,sequence:12", "epoch=YYYY-MM-DD is required"),
        ("time:41,worker_id:10,sequence:12;epoch=2025-13-01", "'2025-13-01' is not a date"),
        ("time:41,worker_id:10,sequence:12;epoch=yesterday", "'yesterday' is not a date"),
        ("time:41,worker_id:10,sequence:12;epoch=2025-01-01;unit=10", "'10' is not a unit like 10ms"),
        ("time:41,worker_id:10,sequence:12;epoch=2025-01-01;unit=0ms", "'0ms' is not a unit like 10ms"),
        ("time:41,worker_id:10,sequence:12;epoch=2025-01-01;epoch=2024-01-01", "epoch is given twice"),
        ("time:41,worker_id:10,sequence:12;epoch=2025-01-01;bits=53", "'bits=53' is not epoch=... or unit=..."),
        ("time:41,worker_id,sequence:12;epoch=2025-01-01", "'worker_id' is not name:bits"),
        ("time:41,,sequence:12;epoch=2025-01-01", "'' is not name:bits"),
        ("time:41,worker_id:10,sequence:14;epoch=2025-01-01", "fields add up to 65 bits"),
        ("time:41,worker_id:10;epoch=2025-01-01", "exactly one 'time' and one 'sequence'"),
        ("time:41,class:10,sequence:12;epoch=2025-01-01", "field 'class' is not an identifier"),
        ("time:41,worker_id:10,sequence:12;epoch=2999-01-01", "is not between 1970 and now"),
    ],
)
def test_a_bad_spec_is_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as raised:
        get_layout(text)
    assert "\n" not in str(raised.value)
