"""The HTTP service, one concern per module:

- :mod:`~idgen.http.server`: running ``idgen serve`` (processes, signals, logging);
- :mod:`~idgen.http.connections`: what one client may hold of a server (deadlines, the connection cap);
- :mod:`~idgen.http.service`: the :class:`~idgen.http.service.Service`, its routes and :func:`make_app`;
- :mod:`~idgen.http.negotiation`: what a request asks for (parameters, ``Accept``), as pure functions;
- :mod:`~idgen.http.answers`: the bodies and headers of ID answers;
- :mod:`~idgen.http.budget`: the memory bound of big answers;
- :mod:`~idgen.http.responses`: the error answer;
- :mod:`~idgen.http.metrics`: the Prometheus metrics and what keeps them current;
- :mod:`~idgen.http.tracing`: ``/decode``'s lease history lookups;
- :mod:`~idgen.http.openapi`, :mod:`~idgen.http.inspector`: the API document and the inspector page.

Data flows one way: server -> connections -> service -> the generator; nothing here is imported by the generator
or the leases.
"""
