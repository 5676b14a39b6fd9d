"""idgen.pydantic.Id: an int or a string in the one form it reads in, a decimal string out in JSON, ValidationError
for junk and for a string that reads in two forms; IdForm pins the form both ways."""

from __future__ import annotations

import json
import re
from typing import Annotated

import pydantic
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from idgen.encoding import FORMS, MAX_ID, format_id, read_id
from idgen.pydantic import Id, IdForm

ids = st.integers(min_value=0, max_value=MAX_ID)
adapter: pydantic.TypeAdapter[int] = pydantic.TypeAdapter(Id)


class Order(pydantic.BaseModel):
    id: Id
    parent: Id | None = None


def matches(schema: dict, text: str) -> bool:
    """Whether ``text`` is valid under a JSON schema of Id's shape (a ``pattern``, or ``oneOf`` patterns)."""
    if "pattern" in schema:
        return re.fullmatch(schema["pattern"], text) is not None
    return sum(re.fullmatch(branch["pattern"], text) is not None for branch in schema["oneOf"]) == 1


small_ids = st.one_of(ids, st.integers(0, 10**13))


@given(small_ids, st.sampled_from(FORMS))
@example(255826949459410944, "base32")  # 0737185780000: decimal reads it as 737185780000
def test_every_string_form_validates_to_the_int_or_is_refused_and_json_round_trips(value: int, form: str) -> None:
    text = format_id(value, form)
    if len(read_id(text)) == 1:
        assert adapter.validate_python(text) == value
    else:
        with pytest.raises(pydantic.ValidationError, match="ambiguous"):
            adapter.validate_python(text)
    assert matches(adapter.json_schema(), text) == (len(read_id(text)) == 1)
    assert adapter.validate_python(value) == value
    dumped = adapter.dump_json(value)
    assert dumped == f'"{value}"'.encode()
    assert adapter.validate_json(str(value)) == value  # a JSON number is accepted too
    pinned: pydantic.TypeAdapter[int] = pydantic.TypeAdapter(Annotated[int, IdForm(form)])
    assert pinned.dump_json(value) == f'"{text}"'.encode()
    assert pinned.validate_json(pinned.dump_json(value)) == value  # its own output always reads back
    assert pinned.validate_python(text) == value and matches(pinned.json_schema(), text)


def test_a_pinned_form_reads_that_form_only() -> None:
    base32: pydantic.TypeAdapter[int] = pydantic.TypeAdapter(Annotated[int, IdForm("base32")])
    assert base32.validate_python("0737185780000") == 255826949459410944
    with pytest.raises(pydantic.ValidationError, match="not a base32 ID"):
        base32.validate_python("175928847299117063")
    with pytest.raises(ValueError, match="unknown ID format 'octal'"):
        IdForm("octal")


def test_a_model_dumps_ints_in_python_and_decimal_strings_in_json() -> None:
    order = Order(id="0x0271065ac1020007", parent=7)
    assert order.id == 0x0271065AC1020007
    assert order.model_dump() == {"id": 0x0271065AC1020007, "parent": 7}
    assert json.loads(order.model_dump_json()) == {"id": str(0x0271065AC1020007), "parent": "7"}
    assert Order.model_validate_json(order.model_dump_json()) == order


def test_the_json_schema_says_string_in_both_modes() -> None:
    for mode in ("validation", "serialization"):
        schema = Order.model_json_schema(mode=mode)  # type: ignore[arg-type]
        assert schema["properties"]["id"]["type"] == "string"
        assert "description" in schema["properties"]["id"]
    assert not matches(adapter.json_schema(), "not an id")


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "junk",
        "0x123",
        "0737185780000",  # ambiguous: base32 for one ID, decimal for another
        " 123",
        "\uff11\uff12\uff13",
        "-1",
        str(2**63),
        -1,
        2**63,
        True,
        False,
        1.0,
        1.5,
        None,
        [],
        b"123",
    ],
    ids=repr,
)
def test_junk_is_a_validation_error_naming_the_field(junk: object) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        Order(id=junk)
    [error] = caught.value.errors()
    assert error["loc"] == ("id",)
    assert "ID" in error["msg"]
