"""The installed package's version, for ``idgen.__version__``, the client's User-Agent and ``GET /info``."""

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "idgen-service"  # the name pip knows it by ("idgen" on the index is another package)

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
