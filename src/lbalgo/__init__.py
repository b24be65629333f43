"""lbalgo: load-balancing scheduling algorithms for Python proxies, gateways and clients.

Everything public is importable from here; see ``docs/`` for the guide and API reference.
"""

from lbalgo.backend import (
    MAX_BACKENDS,
    MAX_HOST_LENGTH,
    MAX_NAME_LENGTH,
    MAX_WEIGHT,
    Backend,
    BackendGroup,
)
from lbalgo.errors import (
    HealthCheckFailed,
    InvalidBackendError,
    InvalidGroupError,
    InvalidOptionError,
    InvalidTypeError,
    LbalgoError,
    LedgerUnavailable,
    NoBackendAvailable,
    UnknownBackendError,
)
from lbalgo.health import HealthChecker, HealthStatus
from lbalgo.ledger import ConnectionLedger, IncrementalLedger
from lbalgo.local_ledger import LocalLedger
from lbalgo.nginx import Upstream, load_upstream
from lbalgo.redis_ledger import RedisLedger  # imports redis-py lazily
from lbalgo.retry import attempts
from lbalgo.scheduler import BackendStats, Lease, Scheduler
from lbalgo.source_ip_hash import SourceIPHash
from lbalgo.sticky import StickySessions
from lbalgo.swrr import SmoothWeightedRoundRobin
from lbalgo.wlc import WeightedLeastConnections

__all__ = [
    "MAX_BACKENDS",
    "MAX_HOST_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_WEIGHT",
    "Backend",
    "BackendGroup",
    "BackendStats",
    "ConnectionLedger",
    "HealthCheckFailed",
    "HealthChecker",
    "HealthStatus",
    "IncrementalLedger",
    "InvalidBackendError",
    "InvalidGroupError",
    "InvalidOptionError",
    "InvalidTypeError",
    "LbalgoError",
    "Lease",
    "LedgerUnavailable",
    "LocalLedger",
    "NoBackendAvailable",
    "RedisLedger",
    "Scheduler",
    "SmoothWeightedRoundRobin",
    "SourceIPHash",
    "StickySessions",
    "UnknownBackendError",
    "Upstream",
    "WeightedLeastConnections",
    "attempts",
    "load_upstream",
]

__version__ = "0.1.0.dev0"
