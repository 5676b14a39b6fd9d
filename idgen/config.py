"""Options and the ``IDGEN_*`` environment, mapped to a layout, a lease, a generator or a client.

One mapping for every entry point: the ``idgen`` command (where an option wins over its variable), ``idgen serve`` and
the process default (:mod:`idgen.default`, which reads the variables only). Option ``--foo-bar`` has the variable
``IDGEN_FOO_BAR``; an empty variable counts as unset, but for a path (``IDGEN_STATE_DIR``). A bad value is an
:class:`~idgen.errors.InvalidInput` whose one-line message starts with the variable's name.

ZooKeeper (kazoo) and the HTTP client (aiohttp, urllib3) are imported only when the settings ask for them, so a process
default on the local lease loads neither.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from idgen.errors import InvalidInput
from idgen.generator import Generator
from idgen.layout import DEFAULT_LAYOUT, Layout, get_layout
from idgen.leases.base import Lease
from idgen.leases.local import LocalLease, parse_state_dir, parse_worker_ids

if TYPE_CHECKING:
    from idgen.leases.etcd import EtcdNamespace
    from idgen.leases.zookeeper import Namespace

ENV_PREFIX = "IDGEN_"
# The largest --max-count: 65,536 IDs make a response of about 1.4 MB in JSON and take a worker's whole sequence
# for 16 ms in the default layout (4,096 per ms), and 2.6 s in sonyflake's; callers wanting more ask again.
MAX_COUNT_LIMIT = 65536
CENSUS_INTERVAL_S = 10.0  # how often, at most, a server counts its namespace again for the gauges (idgen.http.metrics)
IDLE_TIMEOUT_S = 20.0  # a keep-alive connection without a request (idgen.http.connections); above aiohttp's pool's 15 s


def bounded(convert: Callable[[str], Any], what: str, low: float, high: float) -> Callable[[str], Any]:
    """A converter: ``convert(text)`` if it lies in ``[low, high]``, else :class:`InvalidInput` naming ``what``.
    Only ASCII digits count: no other script's digits, no ``_`` separators."""

    def parse(text: str) -> Any:
        try:
            if not text.isascii() or "_" in text:  # int() and float() read '\u0663' as 3 and '1_0' as 10
                raise ValueError(text)
            value = convert(text)
        except ValueError:
            raise InvalidInput(f"{text!r} is not {what}") from None
        if not low <= value <= high:
            raise InvalidInput(f"{text!r} is not {what} ({low:g} to {high:g})")
        return value

    return parse


positive_int = bounded(int, "a positive whole number", 1, math.inf)
port = bounded(int, "a port number", 0, 65535)
positive_float = bounded(float, "a positive number", 1e-3, 1e6)


def flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise InvalidInput(f"{text!r} is not true or false")


def zk_hosts(text: str) -> str:
    """ZooKeeper hosts, checked as the lease checks them (:func:`idgen.leases.zookeeper.zk_hosts`)."""
    from idgen.leases import zookeeper

    return zookeeper.zk_hosts(text.strip())


def namespace(text: str) -> str:
    """A ZooKeeper namespace path, checked where every namespace is (:func:`idgen.leases.zookeeper.namespace_path`)."""
    from idgen.leases.zookeeper import namespace_path

    return namespace_path(text.strip())


def urls(text: str) -> tuple[str, ...]:
    """Comma-separated server URLs, checked as :class:`~idgen.client.Client` checks them."""
    from idgen.client.options import check_urls

    return tuple(check_urls([url for url in text.split(",") if url.strip()]))


# Each option's converter (text -> value; InvalidInput if bad) and its value when neither option nor variable is set.
OPTIONS: dict[str, tuple[Callable[[str], Any], Any]] = {
    "layout": (get_layout, None),
    "zk": (zk_hosts, None),
    "namespace": (namespace, None),
    "zk_session_timeout": (positive_float, None),
    "etcd": (str.strip, None),
    "etcd_ttl": (bounded(float, "a number of seconds", 2, 3600), None),
    "state_dir": (parse_state_dir, None),
    "worker_ids": (parse_worker_ids, None),
    "url": (urls, None),
    "host": (str.strip, "127.0.0.1"),
    "port": (port, 8080),
    "processes": (positive_int, 1),
    "max_count": (bounded(int, "a positive whole number", 1, MAX_COUNT_LIMIT), 4096),
    "access_log": (flag, False),
    "uvloop": (flag, True),
    "max_connections": (positive_int, None),  # None: idgen.http.connections.max_connections_for()
    "max_lead": (bounded(float, "a number of seconds", 0, 3600), None),
    "census_interval": (bounded(float, "a number of seconds", 1, 3600), CENSUS_INTERVAL_S),
    # at least the request-head deadline (idgen.http.connections.HEAD_TIMEOUT_S): aiohttp's idle timer starts when a
    # connection opens, so a shorter one would cut a head short without the head_timeout log line
    "idle_timeout": (bounded(float, "a number of seconds", 5, 3600), IDLE_TIMEOUT_S),
}


def option_name(option: str) -> str:
    """``state_dir`` -> ``--state-dir``."""
    return "--" + option.replace("_", "-")


def env_name(option: str) -> str:
    """``state_dir`` -> ``IDGEN_STATE_DIR``."""
    return ENV_PREFIX + option.upper()


# Options whose variable, set but empty, is refused rather than unset: an empty path means no directory at all.
EMPTY_REFUSED = frozenset({"state_dir"})


def from_env(option: str, environ: Mapping[str, str] | None = None) -> Any:
    """``option``'s value from its variable, converted; its default when the variable is unset or empty (but for
    :data:`EMPTY_REFUSED`)."""
    text = (os.environ if environ is None else environ).get(env_name(option))
    convert, default = OPTIONS[option]
    if text is None or (not text.strip() and option not in EMPTY_REFUSED):
        return default
    try:
        return convert(text)
    except ValueError as exc:  # InvalidInput is one
        raise InvalidInput(f"{env_name(option)}: {' '.join(str(exc).split())}") from None


@dataclass(frozen=True)
class Settings:
    """Where IDs come from: running servers (``url``), else a ZooKeeper lease (``zk``) or an etcd lease (``etcd``),
    else a local lease.

    Invariant: at most one of them is configured; lease settings with ``url``, or ``worker_ids`` with ``zk`` or
    ``etcd``, are refused, so a setting is never silently ignored."""

    layout: Layout | None = None
    zk: str | None = None
    namespace: str | None = None
    zk_insecure_no_auth: bool = False
    zk_session_timeout: float | None = None
    etcd: str | None = None
    etcd_insecure_no_auth: bool = False
    etcd_ttl: float | None = None
    state_dir: str | None = None
    worker_ids: range | None = None
    url: tuple[str, ...] | None = None
    max_lead: float | None = None  # seconds; None: the generator's default

    def __post_init__(self) -> None:
        if self.zk and self.worker_ids:
            raise InvalidInput(
                "--worker-ids (IDGEN_WORKER_IDS) is for the local lease; with --zk, ZooKeeper hands out the worker"
                " IDs: leave it unset"
            )
        if self.etcd and self.zk:
            raise InvalidInput("--etcd (IDGEN_ETCD) and --zk (IDGEN_ZK) both name a coordinator: keep one")
        if self.etcd and self.worker_ids:
            raise InvalidInput(
                "--worker-ids (IDGEN_WORKER_IDS) is for the local lease; with --etcd, etcd hands out the worker IDs:"
                " leave it unset"
            )
        if self.url:
            lease_settings = [
                f.name for f in fields(self) if f.name != "url" and getattr(self, f.name) not in (None, False)
            ]
            if lease_settings:
                raise InvalidInput(
                    f"--url ({env_name('url')}) names servers, which lease and lay out the IDs themselves: leave"
                    f" {', '.join(f'{option_name(n)} ({env_name(n)})' for n in lease_settings)} unset"
                )

    @classmethod
    def of(cls, options: object) -> Settings:
        """The settings among ``options`` (an ``argparse.Namespace``); one it has no option for comes from its
        variable, as for the process default (so every command checks every variable it uses)."""
        values: dict[str, Any] = {
            f.name: getattr(options, f.name) if hasattr(options, f.name) else from_env(f.name)
            for f in fields(cls)
            if hasattr(options, f.name) or f.name in OPTIONS
        }
        return cls(**values)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings of the ``IDGEN_*`` variables. ZooKeeper without credentials takes ``--zk-insecure-no-auth``
        on a command line as well as ``IDGEN_ZK_INSECURE_NO_AUTH=1``: an environment alone never opts out."""
        return cls(**{f.name: from_env(f.name, environ) for f in fields(cls) if f.name in OPTIONS})


def layout_for(settings: Settings) -> Layout:
    """The layout asked for; else, with ZooKeeper, the layout the namespace already has; else the default."""
    if settings.layout:
        return settings.layout
    if settings.zk or settings.etcd:
        with namespace_of(settings) as namespace, contextlib.suppress(InvalidInput):  # a new namespace has none yet
            return namespace.layout()
    return DEFAULT_LAYOUT


def lease_for(settings: Settings, address: str | None = None) -> Lease:
    """The lease the settings ask for: ZooKeeper with ``zk``, etcd with ``etcd``, else local. ``address``: how others
    reach this process, recorded with the claim."""
    layout = layout_for(settings)
    if settings.etcd:
        from idgen.leases import etcd

        tls = etcd.EtcdTls.from_env()
        auth = etcd.required_credentials(settings.etcd_insecure_no_auth)
        return etcd.EtcdLease(
            layout,
            settings.etcd,
            settings.namespace or etcd.DEFAULT_NAMESPACE,
            auth=auth,
            insecure=auth is None,
            tls=tls,
            address=address,
            ttl_s=settings.etcd_ttl or etcd.DEFAULT_TTL_S,
        )
    if settings.zk:
        from idgen.leases.zookeeper import DEFAULT_NAMESPACE, DEFAULT_SESSION_TIMEOUT_S, ZkLease, required_credentials

        auth = required_credentials(settings.zk_insecure_no_auth)
        return ZkLease(
            layout,
            settings.zk,
            settings.namespace or DEFAULT_NAMESPACE,
            auth=auth,
            insecure=auth is None,
            address=address,
            session_timeout_s=settings.zk_session_timeout or DEFAULT_SESSION_TIMEOUT_S,
        )
    return LocalLease(layout, state_dir=settings.state_dir, worker_ids=settings.worker_ids, address=address)


def generator_for(settings: Settings, address: str | None = None, **options: Any) -> Generator:
    """A generator under :func:`lease_for`'s lease, riding clock steps by up to ``max_lead``; ``options`` go to
    :class:`~idgen.generator.Generator`. Refused with ``url``: a lease of its own beside those servers' would hand
    out their IDs again."""
    if settings.url:
        raise InvalidInput(f"{env_name('url')} names servers to take IDs from: unset it to lease worker IDs here")
    if settings.max_lead is not None:
        options.setdefault("max_lead_ms", round(settings.max_lead * 1000))
    lease = lease_for(settings, address)
    return Generator(lease.layout, lease, **options)


@contextlib.contextmanager
def namespace_of(settings: Settings, auth: str | None = None) -> Iterator[Namespace | EtcdNamespace]:
    """The ZooKeeper (or etcd) namespace of the settings, connected with ``auth`` or the credentials in the
    environment."""
    if settings.etcd:
        from idgen.leases import etcd

        tls = etcd.EtcdTls.from_env()
        client = etcd.EtcdClient(
            settings.etcd, auth or etcd.required_credentials(settings.etcd_insecure_no_auth), tls=tls
        )
        try:
            yield etcd.EtcdNamespace(client, settings.namespace or etcd.DEFAULT_NAMESPACE)
        finally:
            client.close()
        return
    from idgen.leases.zookeeper import DEFAULT_NAMESPACE, Namespace, connected, required_credentials

    if not settings.zk:
        raise InvalidInput(f"ZooKeeper hosts are required: --zk HOSTS or {env_name('zk')}=HOSTS")
    with connected(settings.zk, auth or required_credentials(settings.zk_insecure_no_auth)) as client:
        yield Namespace(client, settings.namespace or DEFAULT_NAMESPACE)
