"""What a request asks for (idgen.http.negotiation), driven by plain calls: no server, no request object, as h11's
test_state.py drives its state machine. The same behaviour is held end to end over HTTP by tests/test_http.py."""

from __future__ import annotations

import pytest
from multidict import MultiDict

from idgen.errors import (
    AmbiguousId,
    InvalidCount,
    InvalidFormat,
    InvalidId,
    InvalidInput,
    InvalidLayout,
    RepeatedParameter,
)
from idgen.http.negotiation import (
    IdRequest,
    accepts_runs,
    decode_request,
    id_request,
    parse_count,
    parse_form,
    prefers_text,
    quality,
    shown,
    single,
)
from idgen.layout import DEFAULT_LAYOUT, get_layout
from idgen.runs import RUNS_TYPE

LAYOUT = get_layout(DEFAULT_LAYOUT)
AN_ID = (1 << 40) | (5 << 12) | 7  # worker 5, sequence 7 in the default layout


def query(*pairs: tuple[str, str]) -> MultiDict[str]:
    return MultiDict(pairs)


@pytest.mark.parametrize(
    ("accept", "text"),
    [
        ("text/plain", True),
        ("TEXT/Plain", True),
        ("application/json", False),
        ("text/plain, application/json", False),  # a tie in quality and specificity: JSON
        ("text/plain;q=0.5, application/json", False),
        ("text/plain, application/json;q=0.5", True),
        ("text/*, application/json;q=0.5", True),
        ("text/*, application/json", False),  # equal quality: the more specific one wins
        ("text/plain, application/*", True),
        ("text/plain, */*", True),
        ("*/*", False),
        ("text/plain;q=0", False),
        ("text/plain;q=0, */*", False),
        ("text/plain;q=banana", False),  # a malformed quality is 0
        ("text/html", False),
        ("", False),
    ],
)
def test_prefers_text_ranks_by_quality_then_specificity(accept: str, text: bool) -> None:
    assert prefers_text(accept) is text


@pytest.mark.parametrize(
    ("param", "value"),
    [("q=0.5", 0.5), (" Q = 1", 1.0), ("q=0", 0.0), ("q=abc", 0.0), ("q=2", 0.0), ("q=-1", 0.0), ("q=nan", 0.0)],
)
def test_quality_reads_q_and_makes_anything_malformed_or_out_of_range_zero(param: str, value: float) -> None:
    assert quality(param) == value


def test_quality_is_none_for_other_parameters() -> None:
    assert quality("charset=utf-8") is None


@pytest.mark.parametrize(
    ("accept", "runs"),
    [
        (RUNS_TYPE, True),
        (f"application/json, {RUNS_TYPE};q=0.5", True),
        (RUNS_TYPE.upper(), True),
        (f"{RUNS_TYPE};q=0", False),
        (f"{RUNS_TYPE};q=x", False),
        ("application/json", False),
        ("*/*", False),  # runs must be named
    ],
)
def test_accepts_runs_only_when_named_with_a_quality_above_zero(accept: str, runs: bool) -> None:
    assert accepts_runs(accept) is runs


@pytest.mark.parametrize(("text", "count"), [("1", 1), ("10", 10), ("007", 7)])
def test_parse_count_takes_whole_numbers_within_bounds(text: str, count: int) -> None:
    assert parse_count(text, 10) == count


@pytest.mark.parametrize("text", ["0", "11", "-1", "1e3", " 5", "+5", "5.0", "", "9" * 30, "-" + "9" * 30, "٣"])
def test_parse_count_refuses_anything_else_with_invalid_count(text: str) -> None:
    with pytest.raises(InvalidCount) as caught:
        parse_count(text, 10)
    assert caught.value.code == "invalid_count" and isinstance(caught.value, InvalidInput)
    assert shown(text) in str(caught.value)


def test_parse_form_takes_the_forms_and_refuses_others() -> None:
    assert parse_form("base58") == "base58"
    with pytest.raises(InvalidFormat, match="not one of decimal, hex, base32, base58"):
        parse_form("Base58")


def test_shown_quotes_and_cuts_long_input() -> None:
    assert shown("abc") == "'abc'"
    assert shown("x" * 100) == repr("x" * 40 + "...")


def test_single_refuses_a_repeated_parameter() -> None:
    assert single(query(), "count") is None
    assert single(query(("count", "2")), "count") == "2"
    with pytest.raises(RepeatedParameter, match="count is given 2 times"):
        single(query(("count", "2"), ("count", "x")), "count")


def test_id_request_without_parameters_is_one_decimal_json_id() -> None:
    assert id_request(query(), [], 10) == IdRequest(n=1, single=True, form="decimal", as_text=False, runs=False)


def test_id_request_reads_count_format_and_accept() -> None:
    asked = id_request(query(("count", "3"), ("format", "hex")), ["text/plain"], 10)
    assert asked == IdRequest(n=3, single=False, form="hex", as_text=True, runs=False)


def test_id_request_gives_runs_only_to_a_count() -> None:
    assert id_request(query(("count", "3")), [RUNS_TYPE], 10).runs
    assert not id_request(query(), [RUNS_TYPE], 10).runs


def test_id_request_refuses_runs_in_another_form() -> None:
    with pytest.raises(InvalidFormat, match="decimal IDs only"):
        id_request(query(("count", "3"), ("format", "base32")), [RUNS_TYPE], 10)


def test_id_request_checks_repeats_before_values() -> None:
    """Which parameter's error comes first is part of the answer: a repeat, then count, then format."""
    with pytest.raises(RepeatedParameter):
        id_request(query(("count", "x"), ("format", "a"), ("format", "b")), [], 10)
    with pytest.raises(InvalidCount):
        id_request(query(("count", "x"), ("format", "nope")), [], 10)


def test_decode_request_decodes_in_this_layout_by_default() -> None:
    layout, fields = decode_request(str(AN_ID), query(("format", "decimal")), LAYOUT)
    assert layout == LAYOUT
    assert (fields["worker"], fields["sequence"], fields["id"]) == (5, 7, str(AN_ID))


def test_decode_request_takes_a_layout_by_preset() -> None:
    layout, fields = decode_request("175928847299117063", query(("layout", "discord")), LAYOUT)
    assert layout.name == "discord" and fields["time"] == "2016-04-30T11:18:25.796Z"


@pytest.mark.parametrize(
    ("id_text", "pairs", "error", "code"),
    [
        ("1", [("layout", "no-such-layout")], InvalidLayout, "invalid_layout"),
        ("not an id", [], InvalidId, "invalid_id"),
        ("1", [("format", "hex"), ("format", "hex")], RepeatedParameter, "repeated_parameter"),
        ("1", [("layout", "idgen"), ("layout", "discord")], RepeatedParameter, "repeated_parameter"),
        ("1", [("format", "octal")], InvalidFormat, "invalid_format"),
        ("0737185780000", [], AmbiguousId, "ambiguous_id"),  # base32 and decimal both
    ],
)
def test_decode_request_refuses_with_a_code(
    id_text: str, pairs: list[tuple[str, str]], error: type[InvalidInput], code: str
) -> None:
    with pytest.raises(error) as caught:
        decode_request(id_text, query(*pairs), LAYOUT)
    assert caught.value.code == code


def test_decode_request_reads_the_form_given() -> None:
    _, fields = decode_request("0737185780000", query(("format", "base32")), LAYOUT)
    assert fields["id"] != "737185780000"
