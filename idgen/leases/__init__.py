"""Worker-ID leases: the interface (:mod:`.base`) and one backend per module (:mod:`.local`, :mod:`.zookeeper`)."""

from idgen.leases.base import Holder, Lease, LeaseState, LeaseStatus, Reservation
from idgen.leases.local import LocalLease

__all__ = ["Holder", "Lease", "LeaseState", "LeaseStatus", "LocalLease", "Reservation"]
