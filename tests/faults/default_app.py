"""A WSGI app that mints with ``idgen.next_id()``, the process default, for gunicorn ``--preload`` (scenario 10e).

Its first use, at import in gunicorn's master, makes the process's generator from ``IDGEN_*`` (the local lease in
``IDGEN_STATE_DIR``) and mints one ID, so every worker forks with a live tick. The routes are :mod:`wsgi_ids`'s.
"""

from __future__ import annotations

from wsgi_ids import serving

import idgen

PRELOADED_ID = idgen.next_id()
application = serving(idgen.next_id, idgen.next_ids, PRELOADED_ID)
