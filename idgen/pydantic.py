"""``Id``: a pydantic (v2) type for idgen IDs.

Validates an int or any string form (decimal, hex, base32, base58; see :mod:`idgen.encoding`) to an ``int``; dumps
to JSON as a decimal string, so JavaScript clients never round it to a double; documents itself in JSON schema as a
``string`` with a pattern. Junk (a bad string, an int outside ``[0, 2**63)``, a bool, a float) is a
``ValidationError`` naming the field.
"""

from __future__ import annotations

from typing import Annotated

from idgen.encoding import to_id
from idgen.errors import missing_extra

try:
    from pydantic import PlainSerializer, PlainValidator, WithJsonSchema
except ImportError as exc:
    raise missing_extra("idgen.pydantic", "pydantic", "pydantic") from exc

__all__ = ["ID_PATTERN", "Id"]

#: Every string form an ID may take (JSON schema ``pattern``): decimal, 0x-hex, Crockford base32, base58.
ID_PATTERN = r"^([0-9]{1,19}|0[xX][0-9a-fA-F]{16}|[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{13}|[1-9A-HJ-NP-Za-km-z]{11})$"

Id = Annotated[
    int,
    PlainValidator(to_id),  # InvalidInput is a ValueError: pydantic reports it as a ValidationError
    PlainSerializer(str, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": ID_PATTERN,
            "description": "A 63-bit idgen ID: decimal in JSON output; decimal, 0x-hex, base32 or base58 in input.",
            "examples": ["175928847299117063"],
        }
    ),
]
