"""How many ID strings a reader without a form gets wrong, or refuses (issue 20, item 1).

For each layout, 200,000 IDs at random times in the layout's first year: those of a quiet worker 0 (one ID per time
unit, so worker and sequence are 0) and, for ``idgen``, those of any worker and sequence. Each is formatted in every
form and read back with ``parse_id(text)``, no form given: "misread" is another ID, "refused" an
``InvalidInput`` (since the fix, ``AmbiguousId``: the string is valid in two forms); "in layout" counts the refusals
when the layout is known, as decoding knows it (``parse_id(text, bits=layout.bits_total)``).

Run ``python bench/string_forms.py``. To measure another version of idgen, put its source first on ``PYTHONPATH``
(``git archive <commit> idgen | tar -x -C /tmp/old && PYTHONPATH=/tmp/old python bench/string_forms.py``).
"""

from __future__ import annotations

import random

from idgen import PRESETS, format_id, parse_id
from idgen.encoding import FORMS
from idgen.errors import InvalidInput

SAMPLE = 200_000
YEAR_MS = 365 * 86_400_000


def sample(layout_name: str, quiet: bool, rng: random.Random) -> list[int]:
    layout = PRESETS[layout_name]
    ids = []
    for _ in range(SAMPLE):
        tick = layout.tick_of(layout.epoch_ms + rng.randrange(YEAR_MS))
        worker = 0 if quiet else rng.randrange(layout.worker_capacity)
        ids.append(layout.compose(tick, worker, 0 if quiet else rng.randrange(layout.sequence_capacity)))
    return ids


def main() -> None:
    rng = random.Random(20)
    cases = [("idgen", True), ("idgen", False), ("js53", True), ("sonyflake", True)]
    print(f"{'layout':10} {'IDs':18} {'form':8} {'misread':>8} {'refused':>8} {'in layout':>9}")
    for layout_name, quiet in cases:
        ids = sample(layout_name, quiet, rng)
        bits = PRESETS[layout_name].bits_total
        for form in FORMS:
            misread = refused = refused_in_layout = 0
            for value in ids:
                text = format_id(value, form)
                try:
                    misread += parse_id(text) != value
                except InvalidInput:
                    refused += 1
                try:
                    misread += parse_id(text, bits=bits) != value
                except InvalidInput:
                    refused_in_layout += 1
            who = "quiet worker 0" if quiet else "any worker, seq"
            print(f"{layout_name:10} {who:18} {form:8} {misread:8} {refused:8} {refused_in_layout:9}")


if __name__ == "__main__":
    main()
