"""The public contract every scheduler keeps: the :class:`Scheduler` protocol, the
:class:`Lease` a connection is held by, :class:`BackendStats`, and the type aliases.

Nothing here chooses a backend: the shared machinery is in ``lbalgo._base``, each algorithm
in its own module (``swrr``, ``wlc``, ``source_ip_hash``), slow start in ``_slowstart``,
passive health in ``_passive``, the counts in ``_counter``. Which guarantees rest on the GIL,
and how the design would hold on free-threaded CPython, is written down in
``docs/concurrency.md``.

Across processes (see ``docs/fleet.md``): ``SourceIPHash`` places a client the same way in
every process and on every host; rotation state, health marks, slow-start ramps, passive
health and, unless ``WeightedLeastConnections`` is given a shared ledger such as
``RedisLedger``, open-connection counts are per process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, TypeAlias, runtime_checkable

from lbalgo._accel import compiled
from lbalgo._lease import PyLease
from lbalgo._slowstart import RAMP_STEPS
from lbalgo.backend import Backend, BackendGroup

__all__ = [
    "RAMP_STEPS",
    "BackendStats",
    "Client",
    "Clock",
    "Exclude",
    "Lease",
    "Scheduler",
]

_hotpath = compiled("_hotpath")
# the Lease's core: mypy checks the pure one, whose behaviour the C one has
if TYPE_CHECKING or _hotpath is None:  # noqa: SIM108 -- a ternary is no base class to mypy
    _LeaseCore = PyLease
else:
    _LeaseCore = _hotpath.Lease

Client: TypeAlias = str | IPv4Address | IPv6Address | None
"""What ``pick`` accepts as the client: a source address (or, for sticky sessions, a key)."""

Exclude: TypeAlias = Iterable[str | Backend]
"""Backends already tried for this request, by key (a ``Backend`` stands for its key)."""

Clock: TypeAlias = Callable[[], float]
"""A time source in seconds (``time.monotonic`` by default; injected in tests)."""


@dataclass(frozen=True, slots=True)
class BackendStats:
    """What an operator checks when traffic looks unbalanced, for one backend.

    ``picks`` counts every pick since the backend joined this scheduler; ``open_connections``
    the picks not yet released; ``failures`` every failure reported through ``Lease.fail()``
    (or ``release(..., failed=True)``); ``up`` the health checker's mark; ``available``
    whether it can take a new request now (up, weight above 0, not suspended by passive
    health); ``effective_weight`` its weight now, in the backend's own weight units: its
    ``weight`` (an ``int``) when it serves at full weight, 0 when not available, and while
    slow start ramps it up the exact fraction ``weight * k / RAMP_STEPS`` (a ``float``, ``k``
    from 1 to :data:`RAMP_STEPS`; 1/32 of the weight at first, so a weight-1 backend shows
    0.03125, 0.0625, ... 1).

    ``stats()`` builds one per backend in O(n), under the scheduler's lock, so the figures
    of one call are consistent with each other.

    >>> from lbalgo import Backend, BackendGroup, SmoothWeightedRoundRobin
    >>> sched = SmoothWeightedRoundRobin(BackendGroup([Backend("10.0.0.1", 80, 2)]))
    >>> lease = sched.connection()
    >>> s = sched.stats()["10.0.0.1:80"]
    >>> s.picks, s.open_connections, s.up, s.available, s.effective_weight
    (1, 1, True, True, 2)
    """

    backend: Backend
    picks: int
    open_connections: int
    failures: int
    up: bool
    available: bool
    effective_weight: float


@runtime_checkable
class Scheduler(Protocol):
    """The interface shared by every scheduler (and by wrappers such as ``StickySessions``).

    Proxies program against this protocol so that the algorithm is a configuration choice;
    each member's meaning is documented in the API reference (``docs/api.md``) and on
    each algorithm. It is checkable at run time (member names only, O(1)), which is how
    ``StickySessions`` and ``attempts`` validate what they get.

    >>> from lbalgo import Backend, BackendGroup, SourceIPHash, StickySessions
    >>> sched = SourceIPHash(BackendGroup([Backend("10.0.0.1", 80)]))
    >>> isinstance(sched, Scheduler), isinstance(StickySessions(sched), Scheduler)
    (True, True)
    >>> isinstance(object(), Scheduler)
    False
    """

    @property
    def group(self) -> BackendGroup: ...

    def pick(self, client: Client = None, *, exclude: Exclude = ()) -> Backend: ...

    def release(self, backend: Backend, *, failed: bool = False) -> None: ...

    def connection(self, client: Client = None, *, exclude: Exclude = ()) -> Lease: ...

    def mark_down(self, key: str) -> None: ...

    def mark_up(self, key: str) -> None: ...

    def is_up(self, key: str) -> bool: ...

    def open_connections(self, key: str) -> int: ...

    def stats(self) -> Mapping[str, BackendStats]: ...

    def update(self, group: BackendGroup) -> None: ...



class Lease(_LeaseCore):
    """One picked backend for one request or connection, released exactly once.

    ``release()`` ends it normally (a second call does nothing); ``fail()`` reports a connect
    error or timeout to passive health, then releases; ``released`` says whether it has
    ended; ``backend`` is the backend it holds. As a context manager (``with`` or ``async
    with``) it is released on exit, also when the block raises; a lease may also be kept past
    a block and released by hand later, for streamed responses.

    Exactly once without a lock: the first release takes the lease's one token in a single
    step under the GIL (a C call), and only that release counts, lock-free, on the token's
    counts, unless the scheduler must hear of it (passive health, a ledger, bounded loads):
    then the scheduler counts it. O(1). The core is C where the accelerator is built
    (``lbalgo._hotpath.Lease``), else :class:`lbalgo._lease.PyLease`: the same behaviour.

    >>> from lbalgo import Backend, BackendGroup, SmoothWeightedRoundRobin
    >>> sched = SmoothWeightedRoundRobin(BackendGroup([Backend("10.0.0.1", 80)]))
    >>> with sched.connection() as lease:
    ...     sched.open_connections(lease.backend.key)
    1
    >>> sched.open_connections("10.0.0.1:80"), lease.released
    (0, True)
    """

    __slots__ = ()

    if TYPE_CHECKING:  # what the core provides (in C or in _lease.py), for the API reference

        @property
        def released(self) -> bool:
            """Whether the lease has ended (released or failed)."""

        def release(self) -> None:
            """End the lease normally (idempotent). O(1)."""

        def fail(self) -> None:
            """Report a failure of this backend to passive health, then release (idempotent)."""

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "open"
        return f"<Lease {self.backend.key} {state}>"
