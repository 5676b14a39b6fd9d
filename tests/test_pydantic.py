"""idgen.pydantic.Id: an int or any string form in, a decimal string out in JSON, ValidationError for junk."""

from __future__ import annotations

import json
import re

import pydantic
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from idgen.encoding import FORMS, MAX_ID, format_id
from idgen.pydantic import Id

ids = st.integers(min_value=0, max_value=MAX_ID)
adapter: pydantic.TypeAdapter[int] = pydantic.TypeAdapter(Id)


class Order(pydantic.BaseModel):
    id: Id
    parent: Id | None = None


@given(ids, st.sampled_from(FORMS))
def test_every_string_form_validates_to_the_int_and_json_round_trips(value: int, form: str) -> None:
    text = format_id(value, form)
    assume(form == "decimal" or not text.isdigit())  # all digits read as decimal (idgen.encoding's detection)
    assert adapter.validate_python(text) == value
    assert adapter.validate_python(value) == value
    dumped = adapter.dump_json(value)
    assert dumped == f'"{value}"'.encode()
    assert adapter.validate_json(dumped) == value
    assert adapter.validate_json(str(value)) == value  # a JSON number is accepted too


@given(ids, st.sampled_from(FORMS))
def test_the_json_schema_pattern_admits_every_form(value: int, form: str) -> None:
    assert re.fullmatch(adapter.json_schema()["pattern"], format_id(value, form))


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
    assert not re.fullmatch(adapter.json_schema()["pattern"], "not an id")


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "junk",
        "0x123",
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
