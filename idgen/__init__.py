"""idgen: 64-bit, roughly time-ordered, globally unique IDs, minted locally under a fenced worker-ID lease."""

from idgen.default import default_generator, next_id, next_ids, reset_default
from idgen.encoding import FORMS, format_id, parse_id
from idgen.errors import IdgenError, InvalidInput, Unavailable
from idgen.generator import Generator
from idgen.layout import DEFAULT_LAYOUT, PRESETS, Layout, decode, get_layout
from idgen.version import __version__

__all__ = [
    "DEFAULT_LAYOUT",
    "FORMS",
    "PRESETS",
    "Generator",
    "IdgenError",
    "InvalidInput",
    "Layout",
    "Unavailable",
    "__version__",
    "decode",
    "default_generator",
    "format_id",
    "get_layout",
    "next_id",
    "next_ids",
    "parse_id",
    "reset_default",
]
