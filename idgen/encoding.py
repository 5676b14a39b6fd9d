"""String forms of a 63-bit ID, each with a strict parser.

Forms (``FORMS``):

- ``decimal``: ``"175928847299117063"``, the default and what JSON carries.
- ``hex``: ``"0x0271065ac1020007"``, lower case, always 16 digits after ``0x``.
- ``base32``: Crockford base32, always 13 characters, so string order equals integer order.
- ``base58``: Bitcoin alphabet, always 11 characters (left-padded with ``1``, its zero digit).

Invariants: ``parse(format(i, f), f) == i`` for every form and every ``0 <= i < 2**63``; every parser
rejects anything that :func:`format_id` would not produce (up to ASCII letter case for hex and base32; any
non-ASCII character is refused, so no Unicode case mapping can sneak in: U+017F, long s, upper-cases to ``S``); and
hex, base32 and base58 are fixed-width in alphabets listed in ASCII order, so they sort like the integers.

Auto-detection (``form=None``) goes by shape: all digits mean decimal, ``0x`` hex, 13 characters base32
and 11 characters base58. A base32 or base58 string made only of digits reads as decimal; pass ``form``.

The encoders are table-driven: two digits per lookup (32**2 and 58**2 entries), about 0.6 µs per base32 or
base58 ID, a fifth of a digit-by-digit loop; the HTTP service formats thousands per request.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import base58

from idgen.errors import InvalidInput

MAX_ID = (1 << 63) - 1
FORMS = ("decimal", "hex", "base32", "base58")

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_VALUE = {c: i for i, c in enumerate(_CROCKFORD)}
_CROCKFORD_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]  # 10 bits -> 2 digits
_BASE32_WIDTH = 13  # 13 * 5 = 65 bits >= 63
_DECIMAL = re.compile(r"[0-9]{1,19}")
_HEX = re.compile(r"0x[0-9a-f]{16}")
_BITCOIN = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"  # the base58 package's alphabet
_BITCOIN_PAIRS = [a + b for a in _BITCOIN for b in _BITCOIN]  # a value below 58**2 -> 2 digits
_BASE58_WIDTH = 11  # 58 ** 11 > 2 ** 63
_BASE58 = re.compile(r"[1-9A-HJ-NP-Za-km-z]{11}")


def _hex(value: int) -> str:
    return f"0x{value:016x}"


def _base32(value: int, digits: str = _CROCKFORD, pairs: list[str] = _CROCKFORD_PAIRS) -> str:
    return (
        digits[value >> 60]
        + pairs[(value >> 50) & 1023]
        + pairs[(value >> 40) & 1023]
        + pairs[(value >> 30) & 1023]
        + pairs[(value >> 20) & 1023]
        + pairs[(value >> 10) & 1023]
        + pairs[value & 1023]
    )


def _base58(value: int, digits: str = _BITCOIN, pairs: list[str] = _BITCOIN_PAIRS) -> str:
    value, e = divmod(value, 3364)
    value, d = divmod(value, 3364)
    value, c = divmod(value, 3364)
    value, b = divmod(value, 3364)
    value, a = divmod(value, 3364)  # what is left is below 58 ** 11 / 58 ** 10
    return digits[value] + pairs[a] + pairs[b] + pairs[c] + pairs[d] + pairs[e]


_ENCODERS: dict[str, Callable[[int], str]] = {"decimal": str, "hex": _hex, "base32": _base32, "base58": _base58}


def check_id(value: int) -> int:
    """Return ``value`` if it is a valid ID (an int in ``[0, 2**63)``), else raise :class:`InvalidInput`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"an ID must be an integer, not {type(value).__name__}")
    if not 0 <= value <= MAX_ID:
        raise InvalidInput(f"{value} is not a 63-bit ID (0 to {MAX_ID})")
    return value


def to_id(value: object) -> int:
    """An ID given as an int or in any string form (detected by shape); :class:`InvalidInput` for anything else,
    bools and floats included. What the framework integrations accept on assignment."""
    if isinstance(value, str):
        return parse_id(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return check_id(value)
    raise InvalidInput(f"an ID must be an integer or a string, not {type(value).__name__}")


def format_id(value: int, form: str = "decimal") -> str:
    """The string form ``form`` of ID ``value``."""
    check_id(value)
    return _encoder(form)(value)


def format_ids(values: list[int], form: str) -> list[str]:
    """The string forms ``form`` of ``values``, which must be valid IDs (unchecked: IDs from a generator, or checked
    on arrival), the same as :func:`format_id`'s."""
    return list(map(_encoder(form), values))


def _encoder(form: str) -> Callable[[int], str]:
    encoder = _ENCODERS.get(form)
    if encoder is None:
        raise InvalidInput(f"unknown ID format {form!r}; expected one of {', '.join(FORMS)}")
    return encoder


def detect_form(text: str) -> str:
    """The form a string is written in, by its shape (see the module docstring)."""
    if text.isascii() and text.isdigit():
        return "decimal"
    if text[:2].lower() == "0x":
        return "hex"
    if len(text) == _BASE32_WIDTH:
        return "base32"
    if len(text) == _BASE58_WIDTH:
        return "base58"
    raise InvalidInput(
        f"{_shown(text)} is not an ID: expected decimal digits, 0x and 16 hex digits,"
        f" {_BASE32_WIDTH} base32 or {_BASE58_WIDTH} base58 characters"
    )


def parse_id(text: str, form: str | None = None) -> int:
    """Parse an ID written in ``form`` (detected when ``None``); raise :class:`InvalidInput` on anything else."""
    if not isinstance(text, str):
        raise InvalidInput(f"an ID string must be str, not {type(text).__name__}")
    if not text.isascii():
        raise InvalidInput(f"{_shown(text)} is not an ID: IDs are written in ASCII letters and digits only")
    form = form or detect_form(text)
    if form == "decimal":
        if not _DECIMAL.fullmatch(text):
            raise InvalidInput(f"{_shown(text)} is not a decimal ID (1 to 19 digits)")
        value = int(text)
    elif form == "hex":
        if not _HEX.fullmatch(text.lower()):
            raise InvalidInput(f"{_shown(text)} is not a hex ID (0x and 16 hex digits)")
        value = int(text[2:], 16)
    elif form == "base32":
        value = _parse_base32(text)
    elif form == "base58":
        if not _BASE58.fullmatch(text):
            raise InvalidInput(f"{_shown(text)} is not a base58 ID (exactly {_BASE58_WIDTH} base58 characters)")
        value = base58.b58decode_int(text)
    else:
        raise InvalidInput(f"unknown ID format {form!r}; expected one of {', '.join(FORMS)}")
    return check_id(value)


def _parse_base32(text: str) -> int:
    if len(text) != _BASE32_WIDTH:
        raise InvalidInput(f"{_shown(text)} is not a base32 ID (exactly {_BASE32_WIDTH} Crockford characters)")
    value = 0
    for char in text.upper():
        digit = _CROCKFORD_VALUE.get(char)
        if digit is None:
            raise InvalidInput(f"{_shown(text)} is not a base32 ID ({char!r} is not a Crockford digit)")
        value = value * 32 + digit
    return value


def _shown(text: str) -> str:
    """``text`` quoted and cut short, safe to put in a one-line error message."""
    return repr(text if len(text) <= 40 else text[:40] + "...")
