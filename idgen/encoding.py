"""String forms of a 63-bit ID, each with a strict parser.

Forms (``FORMS``):

- ``decimal``: ``"175928847299117063"``, the default and what JSON carries.
- ``hex``: ``"0x0271065ac1020007"``, lower case, always 16 digits after ``0x``.
- ``base32``: Crockford base32, always 13 characters, so string order equals integer order.
- ``base58``: Bitcoin alphabet, always 11 characters (left-padded with ``1``, its zero digit).

Invariants: ``parse(format(i, f), f) == i`` for every form and every ``0 <= i < 2**63``; every parser
rejects anything that :func:`format_id` would not produce (up to ASCII letter case for hex and base32, and leading
zeros in decimal; any non-ASCII character is refused, so no Unicode case mapping or digit can sneak in: U+017F, long
s, upper-cases to ``S``, and ``'٣'`` is a digit to ``int``); hex, base32 and base58 are fixed-width in alphabets
listed in ASCII order, so they sort like the integers; :data:`FORM_PATTERNS` match exactly what each parser accepts.

Without a form (``form=None``) a string is read in every form whose parser accepts it, and it must read in exactly
one. Two readings are :class:`~idgen.errors.AmbiguousId`, never a guess: 13 digits starting with 0 to 7 are both
decimal and base32, and 11 digits from 1 to 9 both decimal and base58 (a few all-digit base32 and base58 IDs are
minted; ``0737185780000`` is base32 for 255826949459410944 and decimal for 737185780000). ``0x`` hex, and base32 and
base58 strings with a letter, are never ambiguous; nor is decimal of another length.

The encoders are table-driven: two digits per lookup (32**2 and 58**2 entries), about 0.6 µs per base32 or
base58 ID, a fifth of a digit-by-digit loop; the HTTP service formats thousands per request.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable

import base58

from idgen.errors import AmbiguousId, InvalidInput

MAX_ID = (1 << 63) - 1
FORMS = ("decimal", "hex", "base32", "base58")

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_VALUE = {c: i for i, c in enumerate(_CROCKFORD)}
_CROCKFORD_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]  # 10 bits -> 2 digits
_BASE32_WIDTH = 13  # 13 * 5 = 65 bits >= 63
DECIMAL_DIGITS = re.compile(r"[0-9]{1,19}")  # a decimal ID: ASCII digits, at most 19
_HEX = re.compile(r"0x[0-9a-f]{16}")
_BITCOIN = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"  # the base58 package's alphabet
_BITCOIN_PAIRS = [a + b for a in _BITCOIN for b in _BITCOIN]  # a value below 58**2 -> 2 digits
_BASE58_WIDTH = 11  # 58 ** 11 > 2 ** 63
_BASE58 = re.compile(r"[1-9A-HJ-NP-Za-km-z]{11}")
_NUMBER = re.compile(r"[0-9]{1,4000}")  # CPython's int() refuses more than 4300 digits


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


def to_id(value: object, form: str | None = None) -> int:
    """An ID given as an int or as a string in ``form`` (``None``: in the one form it reads in, see :func:`parse_id`);
    :class:`InvalidInput` for anything else, bools and floats included. What the framework integrations accept."""
    if isinstance(value, str):
        return parse_id(value, form)
    if isinstance(value, int) and not isinstance(value, bool):
        return check_id(value)
    raise InvalidInput(f"an ID must be an integer or a string, not {type(value).__name__}")


def check_form(form: str | None) -> str | None:
    """``form`` if it is one of ``FORMS`` or ``None`` (any form), else :class:`InvalidInput`: for a field's ``form``."""
    if form is not None:
        _encoder(form)
    return form


def parse_ascii_int(text: str, what: str) -> int:
    """A non-negative whole number written in ASCII digits (``"007"`` is 7), else :class:`InvalidInput` naming
    ``what``. ``int()`` would also take ``"٣"`` and other Unicode digits, ``"1_000"``, signs and spaces."""
    if not isinstance(text, str) or not _NUMBER.fullmatch(text):
        raise InvalidInput(f"{what} {_shown(str(text))} is not a whole number (ASCII digits 0-9)")
    return int(text)


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


def parse_id(text: str, form: str | None = None, *, bits: int = 63) -> int:
    """Parse an ID written in ``form``; with ``form=None`` in the one form it reads in (see the module docstring).
    :class:`InvalidInput` on anything else, :class:`AmbiguousId` for a string that reads in two forms.

    ``bits`` is the width of the layout the ID belongs to, where the caller knows it: a reading of ``bits`` or more
    is no ID of that layout, so it does not make a string ambiguous (an early ``js53`` ID's 13 decimal digits read as
    base32 from ``2**60``). Whether the ID read fits the layout is the caller's to check (:meth:`Layout.decode`)."""
    if not isinstance(text, str):
        raise InvalidInput(f"an ID string must be str, not {type(text).__name__}")
    if form is not None:
        return _parse_in(text, form)
    readings = read_id(text)
    if len(readings) > 1:
        fitting = {f: value for f, value in readings.items() if not value >> bits}
        if not fitting:
            raise InvalidInput(f"{_shown(text)} is no ID of {bits} bits: it reads as {_listed(readings)}")
        readings = fitting
    if len(readings) == 1:
        return next(iter(readings.values()))
    if readings:
        forms = " or ".join(readings)
        raise AmbiguousId(
            f"{_shown(text)} is an ambiguous ID: it reads as {_listed(readings)}; give its form, {forms}", readings
        )
    return _parse_in(text, _form_by_shape(text))  # raises, saying why in the form it looks most like


def _listed(readings: dict[str, int]) -> str:
    return " and ".join(f"{form} {value}" for form, value in readings.items())


def read_id(text: str) -> dict[str, int]:
    """Every form ``text`` is a valid ID in, with the ID it reads as there (in ``FORMS`` order; empty for junk)."""
    readings = {}
    for form in FORMS:
        with contextlib.suppress(InvalidInput):
            readings[form] = _parse_in(text, form)
    return readings


def _form_by_shape(text: str) -> str:
    """The form a string that is no ID looks most like, to say what is wrong with it."""
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


def _parse_in(text: str, form: str) -> int:
    if not text.isascii():
        raise InvalidInput(f"{_shown(text)} is not an ID: IDs are written in ASCII letters and digits only")
    if form == "decimal":
        if not DECIMAL_DIGITS.fullmatch(text):
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


def _at_most(digits: str, top: str) -> str:
    """A regular expression for the strings of ``len(top)`` characters of ``digits`` (listed in ascending order) that
    are at most ``top``: ``top`` itself, or its first ``i`` characters, a smaller one, then any."""
    branches = [top]
    for i, char in enumerate(top):
        smaller = digits[: digits.index(char)]
        if smaller:
            rest = len(top) - i - 1
            tail = f"[{_ranges(digits)}]" + (f"{{{rest}}}" if rest > 1 else "") if rest else ""
            branches.append(top[:i] + f"[{_ranges(smaller)}]" + tail)
    return "|".join(branches)


def _ranges(chars: str, fold_case: bool = False) -> str:
    """A character class body for ``chars`` (ASCII letters and digits), consecutive runs written as ranges."""
    if fold_case:
        chars = chars.lower() + chars.upper()
    codes = sorted(set(map(ord, chars)))
    runs: list[list[int]] = []
    for code in codes:
        if runs and code == runs[-1][1] + 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    return "".join(chr(a) if a == b else chr(a) + chr(b) if b == a + 1 else f"{chr(a)}-{chr(b)}" for a, b in runs)


#: What each form's parser accepts, exactly, as an anchored regular expression (Python's and ECMA-262's, for JSON
#: schema ``pattern``): ``re.fullmatch`` agrees with :func:`parse_id` with that form on every ASCII string.
FORM_PATTERNS: dict[str, str] = {
    "decimal": f"^(?:[0-9]{{1,18}}|{_at_most(_CROCKFORD[:10], str(MAX_ID))})$",
    "hex": f"^0[xX][0-7][{_ranges('0123456789abcdef', fold_case=True)}]{{15}}$",
    "base32": f"^[0-7][{_ranges(_CROCKFORD, fold_case=True)}]{{12}}$",
    "base58": f"^(?:{_at_most(_BITCOIN, _base58(MAX_ID))})$",
}


def _shown(text: str) -> str:
    """``text`` quoted and cut short, safe to put in a one-line error message."""
    return repr(text if len(text) <= 40 else text[:40] + "...")
