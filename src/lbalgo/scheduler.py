"""The scheduler interface and the machinery every algorithm shares.

:class:`Scheduler` is the protocol proxies program against. :class:`BaseScheduler` implements
everything in it that is not the choice itself, once: health marks, open-connection counting,
leases, runtime updates that carry state over by backend key, slow start, passive health,
statistics and thread safety. An algorithm module subclasses it and supplies ``_choose`` (and,
if it keeps derived structures, ``_rebuild``), so it contains only its algorithm.

Concurrency model: every mutation runs under one re-entrant lock per scheduler. Pick counters
are ``itertools.count`` objects, whose ``next()`` is a single atomic C call under the GIL, so an
algorithm may count a pick on a lock-free fast path; releases are counted under the lock, and
the open count is their difference, which therefore never goes negative.

Across processes (see ``docs/fleet.md``): ``SourceIPHash`` places a client the same way in
every process and on every host; rotation state, health marks, slow-start ramps, passive
health and, unless ``WeightedLeastConnections`` is given a shared ledger such as
``RedisLedger``, open-connection counts are per process.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from types import TracebackType
from typing import Protocol, TypeAlias, runtime_checkable

from lbalgo.backend import Backend, BackendGroup
from lbalgo.errors import InvalidGroupError, NoBackendAvailable

__all__ = [
    "RAMP_STEPS",
    "BackendStats",
    "BaseScheduler",
    "Client",
    "Exclude",
    "Lease",
    "Scheduler",
]

RAMP_STEPS = 32
"""Steps of a slow-start ramp, and the fine scale of effective weights while one is on.

A ramping backend's effective weight is ``weight * k / RAMP_STEPS``, ``k`` going from 1 to
``RAMP_STEPS`` in equal steps of time, so every weight, 1 included, ramps through the same
32 steps from 1/32 of its weight. Schedulers compare such weights as integers in units of
``1 / RAMP_STEPS`` (a full weight ``w`` is ``w * RAMP_STEPS``): scaling every weight by the
same factor changes no ratio, so the choice stays exact. 32 keeps a step at about 1 s of the
shortest ramp the cloud product allows (30 s) and the fine weights small (at most 3200); a
power of two keeps ``k / RAMP_STEPS`` exact as a float. HAProxy scales weights the same way
(``BE_WEIGHT_SCALE = 16``) for the same reason.
"""

Client: TypeAlias = str | IPv4Address | IPv6Address | None
"""What ``pick`` accepts as the client: a source address (or, for sticky sessions, a key)."""

Exclude: TypeAlias = Iterable[str | Backend]
"""Backends already tried for this request, by key (a ``Backend`` stands for its key)."""

Clock: TypeAlias = Callable[[], float]


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
    each member's meaning is documented on :class:`BaseScheduler`, which every lbalgo
    scheduler extends. It is checkable at run time (member names only, O(1)), which is how
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


def _count_value(counter: itertools.count[int]) -> int:
    # itertools.count has no public "current value"; its repr is "count(N)" on every CPython
    # 3.11+ (unlike __reduce__, which 3.14 removes). Only the slow paths read it.
    return int(repr(counter)[6:-1])


class _Slot:
    """Runtime state of one backend key inside one scheduler (private, mutable)."""

    __slots__ = (
        "accessed",
        "backend",
        "checked",
        "fails",
        "failures",
        "key",
        "picks",
        "ramp_start",
        "released",
        "suspended_until",
        "up",
    )

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.key = backend.key
        self.picks = itertools.count()
        self.released = 0
        self.up = True
        self.failures = 0
        # passive health, nginx's fields: failures not yet cleared, the last failure's time
        # and the last check (a failure, or the first pick fail_timeout after the last
        # check); suspended_until: -inf, or the first instant it may be picked again
        self.fails = 0
        self.accessed = -math.inf
        self.checked = -math.inf
        self.suspended_until = -math.inf
        self.ramp_start: float | None = None

    @property
    def open(self) -> int:
        # releases first: lock-free fast paths count picks outside the lock, and picks only
        # grow, so a pick and its release landing between the two reads cannot make this -1
        released = self.released
        return _count_value(self.picks) - released

    def __repr__(self) -> str:
        return f"<_Slot {self.key} up={self.up} open={self.open}>"


class Lease:
    """One picked backend for one request or connection, released exactly once.

    ``release()`` ends it normally (a second call does nothing); ``fail()`` reports a connect
    error or timeout to passive health, then releases. As a context manager (``with`` or
    ``async with``) it is released on exit, also when the block raises; a lease may also be
    kept past a block and released by hand later, for streamed responses.

    >>> from lbalgo import Backend, BackendGroup, SmoothWeightedRoundRobin
    >>> sched = SmoothWeightedRoundRobin(BackendGroup([Backend("10.0.0.1", 80)]))
    >>> with sched.connection() as lease:
    ...     sched.open_connections(lease.backend.key)
    1
    >>> sched.open_connections("10.0.0.1:80")
    0
    """

    __slots__ = ("_done", "_scheduler", "_slot", "backend")

    def __init__(self, scheduler: BaseScheduler, slot: _Slot) -> None:
        self._scheduler = scheduler
        self._slot = slot
        self._done = False
        self.backend: Backend = slot.backend
        """The backend this lease holds a connection slot on."""

    @property
    def released(self) -> bool:
        """Whether the lease has ended (released or failed)."""
        return self._done

    def release(self) -> None:
        """End the lease normally (idempotent)."""
        self._scheduler._finish_lease(self, failed=False)

    def fail(self) -> None:
        """Report a failure of this backend to passive health, then release (idempotent)."""
        self._scheduler._finish_lease(self, failed=True)

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

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
        state = "released" if self._done else "open"
        return f"<Lease {self.backend.key} {state}>"


def _check_options(slow_start: float, max_fails: int, fail_timeout: float, clock: Clock) -> None:
    if (
        isinstance(slow_start, bool)
        or not isinstance(slow_start, (int, float))
        or not 0 <= slow_start < math.inf
    ):
        raise ValueError(f"slow_start must be a finite number of seconds >= 0, got {slow_start!r}")
    if type(max_fails) is not int or max_fails < 0:
        raise ValueError(f"max_fails must be an integer >= 0, got {max_fails!r}")
    if (
        isinstance(fail_timeout, bool)
        or not isinstance(fail_timeout, (int, float))
        or not 0 < fail_timeout < math.inf
    ):
        raise ValueError(
            f"fail_timeout must be a finite number of seconds > 0, got {fail_timeout!r}"
        )
    if not callable(clock):
        raise ValueError(f"clock must be a callable returning seconds, got {clock!r}")


def normalize_exclude(exclude: Exclude) -> frozenset[str]:
    """The keys in ``exclude`` as a frozenset (a ``Backend`` stands for its key).

    A lone string is refused: iterating it would exclude single characters.
    """
    if isinstance(exclude, (str, bytes)) or not isinstance(exclude, Iterable):
        raise TypeError(f"exclude must be a collection of backend keys, got {exclude!r}")
    keys = set()
    for item in exclude:
        if isinstance(item, Backend):
            keys.add(item.key)
        elif isinstance(item, str):
            keys.add(item)
        else:
            raise TypeError(f"exclude must hold backend keys (str), got {item!r}")
    return frozenset(keys)


class BaseScheduler(ABC):
    """Shared machinery behind every scheduler: see the module docstring.

    Subclasses implement :meth:`_choose` and may override :meth:`_rebuild` (called under the
    lock whenever membership, weights, health or ramps change) and :meth:`_on_release`.
    Keyword options:

    ``slow_start``: seconds over which a backend that joins by ``update``, returns by
    ``mark_up`` or passes its passive-health trial ramps linearly to its full weight (0
    disables it), in :data:`RAMP_STEPS` equal steps from ``1 / RAMP_STEPS`` of it, whatever
    the weight (``_fine_weight`` gives algorithms the effective weights on that fine integer
    scale).
    Never at construction, never while no other backend serves.
    ``max_fails`` / ``fail_timeout``: passive health with nginx's rule, exactly
    (``max_fails=0`` disables it): each failure counts and is a check; the first pick more
    than ``fail_timeout`` after the last check is a check too, and a success after a check
    clears the failures. ``max_fails`` uncleared failures suspend a backend until more than
    ``fail_timeout`` after the last one; then ONE trial request goes to it (a check); its
    success clears the failures, any failure suspends it again. The only backend of a group
    is never suspended (as in nginx). Picks while a failure awaits its check take the exact
    (non-replayed) path.
    ``clock``: the time source, injectable for tests.
    """

    def __init__(
        self,
        group: BackendGroup,
        *,
        slow_start: float = 0.0,
        max_fails: int = 0,
        fail_timeout: float = 10.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if not isinstance(group, BackendGroup):
            raise InvalidGroupError(f"group must be a BackendGroup, got {group!r}")
        _check_options(slow_start, max_fails, fail_timeout, clock)
        self._lock = threading.RLock()
        self._slow_start = float(slow_start)
        self._max_fails = max_fails
        self._fail_timeout = float(fail_timeout)
        self._clock = clock
        # Only timed features read the clock, so the common configuration never pays for it.
        self._timed = slow_start > 0 or max_fails > 0
        self._group = group
        self._slots: dict[str, _Slot] = {b.key: _Slot(b) for b in group}
        self._order: tuple[_Slot, ...] = tuple(self._slots.values())
        # Earliest clock value at which a ramp ends or a suspension lifts (inf: none pending).
        self._next_event = math.inf
        with self._lock:
            self._rebuild()

    # -- what subclasses provide -------------------------------------------------------------

    @abstractmethod
    def _choose(self, client: Client, exclude: frozenset[str], now: float) -> _Slot:
        """Choose an eligible slot for one pick (called under the lock). The base counts the
        pick afterwards. Raise :class:`NoBackendAvailable` when nothing is eligible."""

    def _rebuild(self) -> None:  # noqa: B027 -- an optional hook, empty by design
        """Recompute derived structures after a change (called under the lock)."""

    def _on_release(self, slot: _Slot) -> None:  # noqa: B027 -- an optional hook
        """React to one release of ``slot`` (called under the lock, after counting it)."""

    # -- the public interface ----------------------------------------------------------------

    @property
    def group(self) -> BackendGroup:
        """The current group."""
        return self._group

    def pick(self, client: Client = None, *, exclude: Exclude = ()) -> Backend:
        """Choose the backend for one new request (see the class docstring for the rule)."""
        return self._pick_slot(client, exclude).backend

    def connection(self, client: Client = None, *, exclude: Exclude = ()) -> Lease:
        """Pick now and return a :class:`Lease` to release when the request ends."""
        return Lease(self, self._pick_slot(client, exclude))

    def release(self, backend: Backend, *, failed: bool = False) -> None:
        """One request on ``backend`` ended; ``failed=True`` reports it to passive health.

        Releases beyond the open count, and releases for a backend no longer in the group,
        are ignored (a connection may end after an update removed its backend). A backend
        is known by its key alone here, so if its key was removed and then added again, a
        late ``release`` of the old connection counts against the new one; a :class:`Lease`
        knows which one it holds, and its release is ignored then. O(1) plus the
        algorithm's release hook. ``TypeError`` naming the value if ``backend`` is not
        a ``Backend`` or ``failed`` not a ``bool``, with nothing counted.
        """
        if not isinstance(backend, Backend):
            raise TypeError(f"release expects a Backend, got {backend!r}")
        if type(failed) is not bool:
            raise TypeError(f"failed must be a bool, got {failed!r}")
        with self._lock:
            slot = self._slots.get(backend.key)
            if slot is not None:
                self._finish(slot, failed)

    def mark_down(self, key: str) -> None:
        """A health check failed: ``key`` gets no new picks until ``mark_up``."""
        with self._lock:
            slot = self._slot(key)
            if slot.up:
                slot.up = False
                slot.ramp_start = None
                self._rebuild()

    def mark_up(self, key: str) -> None:
        """A health check passed: ``key`` rejoins (ramping up if slow start is on)."""
        with self._lock:
            slot = self._slot(key)
            if not slot.up:
                slot.up = True
                self._start_ramp(slot)
                self._rebuild()

    def is_up(self, key: str) -> bool:
        """The health checker's mark for ``key`` (``KeyError`` if unknown)."""
        return self._slot(key).up

    def open_connections(self, key: str) -> int:
        """Picks of ``key`` not yet released (``KeyError`` if unknown)."""
        return self._slot(key).open

    def stats(self) -> Mapping[str, BackendStats]:
        """Per-backend statistics in group order, O(n)."""
        with self._lock:
            now = self._now()
            stats = {}
            for slot in self._order:
                picks = _count_value(slot.picks)
                stats[slot.key] = BackendStats(
                    backend=slot.backend,
                    picks=picks,
                    open_connections=picks - slot.released,
                    failures=slot.failures,
                    up=slot.up,
                    available=self._eligible(slot, now),
                    effective_weight=self._effective_weight(slot, now),
                )
            return stats

    def update(self, group: BackendGroup) -> None:
        """Swap in a new group, carrying state over for every key that survives.

        Surviving keys keep health marks, open counts and algorithm state; new keys start up
        (ramping if slow start is on); removed keys are forgotten.
        """
        if not isinstance(group, BackendGroup):
            raise InvalidGroupError(f"group must be a BackendGroup, got {group!r}")
        with self._lock:
            old = self._slots
            slots: dict[str, _Slot] = {}
            added = []
            for backend in group:
                slot = old.get(backend.key)
                if slot is None:
                    slot = _Slot(backend)
                    added.append(slot)
                else:
                    slot.backend = backend
                slots[backend.key] = slot
            self._group = group
            self._slots = slots
            self._order = tuple(slots.values())
            if added:
                self._start_ramp(*added)
            if len(self._order) == 1:
                # nginx never considers the only server of a group unavailable
                self._clear_failures(self._order[0])
            self._rebuild()

    # -- helpers for subclasses --------------------------------------------------------------

    def _now(self) -> float:
        """The clock, read only when a timed feature (slow start, passive health) is on."""
        return self._clock() if self._timed else 0.0

    def _eligible(self, slot: _Slot, now: float) -> bool:
        """Whether ``slot`` may take a new request at ``now`` (exclusions aside)."""
        return slot.up and slot.backend.weight > 0 and slot.suspended_until <= now

    def _fine_weight(self, slot: _Slot, now: float) -> int:
        """The weight ``slot`` has at ``now`` in units of ``1 / RAMP_STEPS``: its weight times
        :data:`RAMP_STEPS` at full weight, ``weight * k`` at step ``k`` of a ramp, 0 if not
        eligible. Comparing these instead of whole weights changes no ratio between backends
        at full weight, and lets a weight-1 backend ramp as finely as a weight-100 one."""
        if not self._eligible(slot, now):
            return 0
        weight = slot.backend.weight
        return weight * self._ramp_step(slot, now)

    def _ramp_step(self, slot: _Slot, now: float) -> int:
        """Where ``slot``'s ramp stands at ``now``: step 1 at its start, one more every
        ``slow_start / RAMP_STEPS`` seconds, :data:`RAMP_STEPS` at full weight (no ramp)."""
        if slot.ramp_start is None:
            return RAMP_STEPS
        elapsed = now - slot.ramp_start
        if elapsed >= self._slow_start:
            return RAMP_STEPS
        return max(1, min(RAMP_STEPS, math.floor(RAMP_STEPS * elapsed / self._slow_start) + 1))

    def _effective_weight(self, slot: _Slot, now: float) -> float:
        """The weight ``slot`` has at ``now`` in its own units (see :class:`BackendStats`):
        its ``int`` weight at full weight, 0 if not eligible, an exact ``float`` fraction of
        it while ramping."""
        if not self._eligible(slot, now):
            return 0
        weight = slot.backend.weight
        step = self._ramp_step(slot, now)
        return weight if step == RAMP_STEPS else weight * step / RAMP_STEPS

    def _tick(self, now: float) -> None:
        """End finished ramps and lift finished suspensions (under the lock), then rebuild."""
        if now < self._next_event:
            return
        next_event = math.inf
        for slot in self._order:
            if slot.ramp_start is not None:
                ramp_end = slot.ramp_start + self._slow_start
                if ramp_end <= now:
                    slot.ramp_start = None
                else:
                    next_event = min(next_event, ramp_end)
            if now < slot.suspended_until:
                next_event = min(next_event, slot.suspended_until)
            if slot.fails:
                due = self._check_due(slot)
                if now < due:
                    next_event = min(next_event, due)
            # a lifted suspension stays recorded (suspended_until in the past): the next pick
            # of that backend is its one trial (see _count_pick)
        self._next_event = next_event
        self._rebuild()

    def _ramping(self) -> bool:
        return any(slot.ramp_start is not None for slot in self._order)

    def _pick_slot(self, client: Client, exclude: Exclude) -> _Slot:
        excluded = normalize_exclude(exclude) if exclude else frozenset()
        with self._lock:
            now = self._now()
            if now >= self._next_event:
                self._tick(now)
            slot = self._choose(client, excluded, now)
            self._count_pick(slot, now)
            return slot

    def _take(self, key: str, excluded: Collection[str]) -> _Slot | None:
        """Pick ``key`` itself if it is eligible and not excluded, else return ``None``.

        For wrappers that chose the backend themselves (a sticky session's bound backend):
        :meth:`_on_take` lets the algorithm catch up, then the pick is counted as any other.
        """
        with self._lock:
            slot = self._slots.get(key)
            if slot is None or key in excluded:
                return None
            now = self._now()
            if now >= self._next_event:
                self._tick(now)
            if not self._eligible(slot, now):
                return None
            # the hook first: a shared ledger may refuse (store unreachable), and then
            # nothing may be counted here either
            self._on_take(slot)
            self._count_pick(slot, now)
            return slot

    def _on_take(self, slot: _Slot) -> None:  # noqa: B027 -- an optional hook
        """React to a pick of ``slot`` made by :meth:`_take`, outside :meth:`_choose` (called
        under the lock, before counting it, so that if it raises nothing is counted):
        algorithms that order backends by open connections update that order here."""

    def _count_pick(self, slot: _Slot, now: float) -> None:
        next(slot.picks)
        if slot.fails and now >= self._check_due(slot):
            # nginx's check (ngx_http_upstream_get_peer): the first pick fail_timeout after
            # the last check renews it, so that this request's success clears the failures;
            # for a backend that was out, it is the one trial, and it is out again meanwhile
            slot.checked = now
            if slot.fails >= self._max_fails:
                self._suspend(slot)
                self._rebuild()

    def _no_backend(self, excluded: Collection[str]) -> NoBackendAvailable:
        """The error for a pick with nothing eligible, saying why."""
        if not self._order:
            return NoBackendAvailable("no backend available: the group is empty")
        reasons = []
        for slot in self._order:
            if slot.key in excluded:
                reasons.append(f"{slot.key} excluded")
            elif not slot.up:
                reasons.append(f"{slot.key} down")
            elif slot.backend.weight == 0:
                reasons.append(f"{slot.key} weight 0")
            else:
                reasons.append(f"{slot.key} suspended by passive health")
        shown = ", ".join(reasons[:5]) + (", ..." if len(reasons) > 5 else "")
        return NoBackendAvailable(f"no backend available ({shown})")

    # -- internals ---------------------------------------------------------------------------

    def _slot(self, key: str) -> _Slot:
        try:
            return self._slots[key]
        except (KeyError, TypeError):
            raise KeyError(key) from None

    def _start_ramp(self, *slots: _Slot) -> None:
        """Ramp ``slots`` (joining together) from now, if slow start is on, O(n)."""
        if self._slow_start <= 0:
            return
        now = self._clock()
        joining = set(slots)
        # ramping gains nothing unless a backend already serving takes the rest of the load
        if any(s not in joining and self._eligible(s, now) for s in self._order):
            for slot in slots:
                slot.ramp_start = now
            self._next_event = min(self._next_event, now + self._slow_start)

    def _finish_lease(self, lease: Lease, *, failed: bool) -> None:
        with self._lock:
            if lease._done:
                return
            lease._done = True
            slot = lease._slot
            # a lease outliving its backend's removal (or a re-added key) counts nowhere
            if self._slots.get(slot.key) is slot:
                self._finish(slot, failed)

    def _finish(self, slot: _Slot, failed: bool) -> None:
        if slot.open <= 0:
            return  # a release beyond the open count reports nothing, not even a failure
        slot.released += 1
        if failed:
            self._record_failure(slot)
        elif slot.fails and slot.accessed < slot.checked:
            # a success after a check clears the failures (nginx's free_round_robin_peer);
            # a backend that was out is back, cold, like one marked up again
            out = slot.fails >= self._max_fails
            self._clear_failures(slot)
            if out:
                self._start_ramp(slot)
            self._rebuild()
        self._on_release(slot)

    def _record_failure(self, slot: _Slot) -> None:
        """nginx's failure bookkeeping: ``max_fails`` failures, each within ``fail_timeout``
        of the last check, put the backend out until ``fail_timeout`` after the last one."""
        slot.failures += 1
        if self._max_fails == 0 or len(self._order) == 1:
            return  # nginx never considers the only server of a group unavailable
        now = self._clock()
        slot.fails += 1
        slot.accessed = slot.checked = now
        if slot.fails >= self._max_fails:
            self._suspend(slot)
        else:
            self._next_event = min(self._next_event, self._check_due(slot))
        # always: an algorithm may keep per-failure state (nginx's effective weight), and a
        # backend with failures needs its next check seen
        self._rebuild()

    def _check_due(self, slot: _Slot) -> float:
        """When ``slot``'s next pick is a check: just after ``checked + fail_timeout`` (nginx
        compares whole seconds with ``now - checked > fail_timeout``)."""
        return math.nextafter(slot.checked + self._fail_timeout, math.inf)

    def _suspend(self, slot: _Slot) -> None:
        slot.suspended_until = self._check_due(slot)
        self._next_event = min(self._next_event, slot.suspended_until)

    def _clear_failures(self, slot: _Slot) -> None:
        slot.fails = 0
        slot.suspended_until = -math.inf
