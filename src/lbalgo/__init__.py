"""lbalgo: load-balancing scheduling algorithms for Python proxies, gateways and clients.

Everything public is importable from here; see ``docs/`` for the guide and API reference.
"""

from lbalgo.backend import MAX_BACKENDS, MAX_WEIGHT, Backend, BackendGroup
from lbalgo.errors import InvalidBackendError, InvalidGroupError, LbalgoError, NoBackendAvailable
from lbalgo.scheduler import BackendStats, Lease, Scheduler

__all__ = [
    "MAX_BACKENDS",
    "MAX_WEIGHT",
    "Backend",
    "BackendGroup",
    "BackendStats",
    "InvalidBackendError",
    "InvalidGroupError",
    "LbalgoError",
    "Lease",
    "NoBackendAvailable",
    "Scheduler",
]

__version__ = "0.1.0.dev0"
