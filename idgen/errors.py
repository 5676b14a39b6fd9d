"""Every error idgen raises, in one place, so callers can catch by meaning.

Two families matter to callers:

- :class:`Unavailable`: idgen cannot *prove* that an ID would be unique right now (no worker ID can be leased, the
  clock is behind, the fence is reached...). Nothing was minted. It is temporary and carries ``retry_after``
  (seconds); the HTTP app turns it into 503 + Retry-After.
- :class:`InvalidInput` (a ``ValueError``): the caller asked for something malformed. HTTP 400, CLI exit 2.
"""

from __future__ import annotations


class IdgenError(Exception):
    """Base class of every idgen error. ``code`` is a stable machine-readable name."""

    code = "idgen_error"


class InvalidInput(IdgenError, ValueError):
    """Malformed input: a bad layout, an ID that does not parse or does not fit, a bad count."""

    code = "invalid_input"


class InsecureState(InvalidInput):
    """A state directory, or a file in it, that another user owns or may write: refused, since that user could
    rewrite a fence or hold a lock. The message names the fix (``chmod``, ``chown``)."""

    code = "insecure_state"


class RepeatedParameter(InvalidInput):
    """An HTTP query parameter given more than once: which one counts would be a guess (``count=2&count=x``)."""

    code = "repeated_parameter"


class InvalidCount(InvalidInput):
    """A ``count`` that is not a whole number from 1 to the server's maximum."""

    code = "invalid_count"


class InvalidFormat(InvalidInput):
    """A ``format`` that names no string form, or one the answer cannot carry (runs are decimal only)."""

    code = "invalid_format"


class InvalidLayout(InvalidInput):
    """A ``layout`` that is neither a preset nor a valid spec."""

    code = "invalid_layout"


class InvalidId(InvalidInput):
    """An ID string that does not parse in its form, or does not fit the layout."""

    code = "invalid_id"


class LayoutMismatch(IdgenError):
    """A state directory or ZooKeeper namespace already belongs to another layout."""

    code = "layout_mismatch"


class Unavailable(IdgenError):
    """Minting is refused because uniqueness cannot be proven now; retry after ``retry_after`` seconds."""

    code = "unavailable"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = max(retry_after, 0.001)


class ClientError(IdgenError):
    """A client-side failure other than the servers' (closed client, internal fault): :mod:`idgen.client`."""

    code = "client_error"


class ClientClosed(ClientError):
    """The client was closed."""

    code = "client_closed"


class AllServersFailed(Unavailable, ClientError):
    """No server handed over IDs in time. ``failures`` maps each server URL to its last failure; ``retry_after`` is
    the shortest ``Retry-After`` any server sent (1 s if none did)."""

    code = "all_servers_failed"

    def __init__(self, message: str, failures: dict[str, str], retry_after: float) -> None:
        super().__init__(message, retry_after)
        self.failures = failures


class LeaseUnavailable(Unavailable):
    """No worker ID can be leased (all taken, or the coordination service is unreachable). Raised by a lease's
    ``start()``, so by ``Generator()``, and by the first ``next_id()`` of a process that makes or adopts its generator
    then (the process default, a forked child): an :class:`Unavailable`, so a caller's refusal path covers it."""

    code = "lease_unavailable"


class UnreadableRecord(LeaseUnavailable):
    """A lease record (a file or a znode) that does not hold what idgen writes there: torn, not JSON, or wrongly
    typed. Its worker ID may have minted anything, so it is never claimed."""

    code = "unreadable_record"


class ClockUntrusted(LeaseUnavailable):
    """The local clock disagrees with the coordinator's by more than the bound; no worker ID is claimed."""

    code = "clock_untrusted"


class LeaseLost(IdgenError):
    """Raised by a lease backend when the claim is provably gone (another holder, or an expired session); the lease
    stops minting at once (``Lease._lose``) and claims afresh."""

    code = "lease_lost"


class NoLease(Unavailable):
    """The generator holds no lease (not yet acquired, lost, or released)."""

    code = "no_lease"


class FenceReached(Unavailable):
    """The clock has passed the fence the lease reserved; an extension has not landed yet."""

    code = "fence_reached"


class ClockBehind(Unavailable):
    """The clock is behind the last timestamp used (or a previous holder's fence) by more than IDs may run ahead of
    it (``max_lead_ms``, or the rollback tolerance without riding)."""

    code = "clock_behind"

    def __init__(
        self, behind_ms: float, what: str, until: str = "it catches up", retry_after: float | None = None
    ) -> None:
        super().__init__(
            f"clock is {behind_ms:.1f} ms behind {what}; refusing to mint until {until}",
            retry_after=behind_ms / 1000 if retry_after is None else retry_after,
        )
        self.behind_ms = behind_ms


class Busy(Unavailable):
    """The server is formatting and sending as many IDs as its memory budget allows; nothing was minted."""

    code = "busy"


class TimeExhausted(Unavailable):
    """The layout's time bits have run out (or the clock is before its epoch). Needs a new layout, not a retry."""

    code = "time_exhausted"

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after=3600.0)


def missing_extra(integration: str, package: str, extra: str) -> ImportError:
    """The error an optional integration raises on import when its framework is not installed."""
    return ImportError(
        f"{integration} needs {package}, which is not installed: install the extra idgen-service[{extra}]"
        f" (from a checkout: pip install '.[{extra}]')"
    )


class AmbiguousId(InvalidInput):
    """An ID string that reads as a valid ID in more than one string form (an all-digit base32 or base58 string is a
    decimal number too): refused rather than guessed. ``readings`` maps each form to the ID the string reads as; the
    caller chooses by giving the form."""

    code = "ambiguous_id"

    def __init__(self, message: str, readings: dict[str, int]) -> None:
        super().__init__(message)
        self.readings = readings


def whole_number(name: str, value: object, minimum: int, unit: str = "") -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum``; else :class:`InvalidInput` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        units = f" {unit}" if unit else ""
        raise InvalidInput(f"{name} must be a whole number{units}, at least {minimum}, not {value!r}")
    return value
