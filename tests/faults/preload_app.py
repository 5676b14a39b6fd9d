"""A WSGI app that embeds one :class:`idgen.Generator`, made at import time, for gunicorn ``--preload`` (scenario 10a).

gunicorn imports this module in its master, then forks the workers: each starts with a copy of the generator, its
current tick and its lease. The generator mints one ID here, so the copy holds a live tick. Each worker must still
mint only under a worker ID of its own. The local lease's state directory comes from ``IDGEN_STATE_DIR``. The routes
are :mod:`wsgi_ids`'s.
"""

from __future__ import annotations

from wsgi_ids import serving

from idgen import Generator

GENERATOR = Generator()
PRELOADED_ID = GENERATOR.next_id()
application = serving(GENERATOR.next_id, GENERATOR.next_ids, PRELOADED_ID)
