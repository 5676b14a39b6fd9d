"""``idgen.app.make_app``, kept where deployments import it from: the service is :mod:`idgen.http.service`."""

from idgen.http.service import make_app

__all__ = ["make_app"]
