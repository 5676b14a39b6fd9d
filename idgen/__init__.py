"""idgen: 64-bit, roughly time-ordered, globally unique IDs, minted locally under a fenced worker-ID lease."""

from importlib.metadata import PackageNotFoundError, version

from idgen.encoding import FORMS, format_id, parse_id
from idgen.errors import IdgenError, InvalidInput, Unavailable
from idgen.generator import Generator
from idgen.layout import DEFAULT_LAYOUT, PRESETS, Layout, decode, get_layout

try:
    __version__ = version("idgen")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "DEFAULT_LAYOUT",
    "FORMS",
    "PRESETS",
    "Generator",
    "IdgenError",
    "InvalidInput",
    "Layout",
    "Unavailable",
    "decode",
    "format_id",
    "get_layout",
    "parse_id",
]
