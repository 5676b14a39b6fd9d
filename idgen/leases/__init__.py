"""Worker-ID leases: the interface (:mod:`.base`), who minted an ID (:mod:`.tracing`) and one backend per module
(:mod:`.local`, :mod:`.zookeeper`)."""

from idgen.leases.base import Lease, LeaseState, LeaseStatus, Reservation
from idgen.leases.local import LocalLease
from idgen.leases.tracing import Holder

__all__ = ["Holder", "Lease", "LeaseState", "LeaseStatus", "LocalLease", "Reservation"]
