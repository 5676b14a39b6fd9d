"""``Id``: a pydantic (v2) type for idgen IDs, and ``IdForm``, the metadata that pins its string form.

``Id`` validates an int, or a string in the one form it reads in (decimal, hex, base32, base58; see
:mod:`idgen.encoding`), to an ``int``, and dumps to JSON as a decimal string, so JavaScript clients never round it to a
double. A string that reads in two forms (``0737185780000``: base32, or decimal for another ID) is refused:
``Annotated[int, IdForm("base32")]`` reads strings in that form only, and dumps in it too, so its JSON always reads
back. JSON schema: a ``string`` whose ``pattern`` is exactly what is read. Junk (a bad or ambiguous string, an int
outside ``[0, 2**63)``, a bool, a float) is a ``ValidationError`` naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from idgen.encoding import FORM_PATTERNS, FORMS, check_form, format_id, to_id
from idgen.errors import missing_extra

try:
    from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
    from pydantic.json_schema import JsonSchemaValue
    from pydantic_core import CoreSchema, core_schema
except ImportError as exc:
    raise missing_extra("idgen.pydantic", "pydantic", "pydantic") from exc

__all__ = ["Id", "IdForm"]


@dataclass(frozen=True)
class IdForm:
    """``Annotated[int, IdForm(form)]``: an ID read from an int or a string in ``form`` (``None``: the one form a
    string reads in) and dumped to JSON as a string in ``form`` (``None``: decimal)."""

    form: str | None = None

    def __post_init__(self) -> None:
        check_form(self.form)

    def validate(self, value: Any) -> int:
        return to_id(value, self.form)  # InvalidInput is a ValueError: pydantic reports it as a ValidationError

    def dump(self, value: int) -> str:
        return format_id(value, self.form or "decimal")

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(
            self.validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                self.dump, return_schema=core_schema.str_schema(), when_used="json"
            ),
        )

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        readings: dict[str, Any]
        if self.form is None:
            readings = {"oneOf": [{"title": form, "pattern": FORM_PATTERNS[form]} for form in FORMS]}
            described = "decimal in JSON output; decimal, 0x-hex, base32 or base58 in input (one that reads in two"
            described += " forms is refused)"
        else:
            readings = {"pattern": FORM_PATTERNS[self.form]}
            described = f"{self.form} in JSON output and input"
        example = format_id(175928847299117063, self.form or "decimal")
        return {"type": "string", **readings, "description": f"A 63-bit idgen ID: {described}.", "examples": [example]}


Id = Annotated[int, IdForm()]
