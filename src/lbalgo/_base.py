"""The machinery every scheduler shares: backend state, health marks, leases, updates that
carry state over by key, and the hooks through which slow start and passive health reach an
algorithm. An algorithm supplies ``_choose`` (one pick, under the lock) and may override
``_rebuild`` (construction, ``update``) and ``_changed(slot)`` (one backend's eligibility or
effective weight changed): hooks receive what changed, as HAProxy's ``set_server_status_up``
takes the one server. Counts need no lock (``_counter``); every change of state runs under one
re-entrant lock per scheduler (see ``docs/concurrency.md``).
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Mapping

from lbalgo import _fastpath
from lbalgo._counter import steps_left
from lbalgo._options import check_group, check_options, check_release, normalize_exclude
from lbalgo._passive import PassiveHealth
from lbalgo._slot import Slot
from lbalgo._slowstart import RAMP_STEPS, Ramps
from lbalgo._validate import shown
from lbalgo.backend import Backend, BackendGroup
from lbalgo.errors import InvalidTypeError, NoBackendAvailable, UnknownBackendError
from lbalgo.scheduler import BackendStats, Client, Clock, Exclude, Lease

__all__ = ["BaseScheduler"]


class BaseScheduler(ABC):
    """Shared machinery behind every scheduler: see the module docstring.

    Keyword options:

    ``slow_start``: seconds over which a backend that joins by ``update``, returns by
    ``mark_up`` or passes its passive-health trial ramps linearly to its full weight (0
    disables it), in :data:`~lbalgo.scheduler.RAMP_STEPS` equal steps from ``1 / RAMP_STEPS``
    of it, whatever the weight. Never at construction, never while no other backend serves.
    ``max_fails`` / ``fail_timeout``: passive health with nginx's exact rule (``max_fails=0``
    disables it; see :mod:`lbalgo._passive`): ``max_fails`` failures not cleared by a success
    after a check put a backend out until more than ``fail_timeout`` after the last one, then
    ONE trial request goes to it. The only backend of a group is never suspended (as nginx).
    ``clock``: the time source, injectable for tests; read once per call that needs it.

    Complexity: ``release`` and a lease's exit O(1) without a lock; ``mark_down``/``mark_up``
    O(1) plus the algorithm's ``_changed``; ``update`` and ``stats`` O(n).
    """

    _hooked = False
    """Whether every release must reach ``_released`` under the lock (class default)."""

    def __init__(
        self,
        group: BackendGroup,
        *,
        slow_start: float = 0.0,
        max_fails: int = 0,
        fail_timeout: float = 10.0,
        clock: Clock = time.monotonic,
    ) -> None:
        check_group(group)
        check_options(slow_start, max_fails, fail_timeout, clock)
        self._lock = threading.RLock()
        self._slow_start = float(slow_start)
        self._ramps = Ramps(float(slow_start)) if slow_start > 0 else None
        self._passive = PassiveHealth(max_fails, float(fail_timeout)) if max_fails else None
        self._max_fails = max_fails
        self._fail_timeout = float(fail_timeout)
        self._clock = clock
        # only timed features read the clock, so the common configuration never pays for it
        self._timed = slow_start > 0 or max_fails > 0
        self._group = group
        self._slots: dict[str, Slot] = {b.key: Slot(b, self._hooked) for b in group}
        self._order: tuple[Slot, ...] = tuple(self._slots.values())
        # earliest clock value at which a ramp steps or a suspension lifts (inf: none)
        self._next_event = math.inf
        # bound once: every lease holds it, and a bound method is an allocation
        self._end_lease = self._finish_lease
        with self._lock:
            self._rebuild()

    # -- what subclasses provide -------------------------------------------------------------

    @abstractmethod
    def _choose(self, client: Client, exclude: frozenset[str], now: float) -> Slot:
        """An eligible slot for one pick (under the lock; the base counts it), or raise
        :class:`NoBackendAvailable`."""

    def _rebuild(self) -> None:  # noqa: B027 -- an optional hook, empty by design
        """Recompute derived structures after an update (called under the lock)."""

    def _changed(self, slot: Slot) -> None:
        """``slot``'s eligibility or effective weight changed (under the lock): a rebuild."""
        self._rebuild()

    def _taken(self, slot: Slot) -> None:  # noqa: B027 -- an optional hook
        """A wrapper took ``slot`` itself (:meth:`take`; under the lock, before counting)."""

    def _failed(self, slot: Slot) -> None:  # noqa: B027 -- an optional hook
        """A counted release of ``slot`` reported a failure (under the lock, before passive
        health decides): where nginx's ``effective_weight`` in round robin hooks in."""

    def _released(self, slot: Slot) -> None:  # noqa: B027 -- an optional hook
        """A counted release of ``slot`` (under the lock), if the algorithm set ``_hooked``."""

    # -- the public interface ----------------------------------------------------------------

    @property
    def group(self) -> BackendGroup:
        """The current group."""
        return self._group

    def pick(self, client: Client = None, *, exclude: Exclude = ()) -> Backend:
        """Choose the backend for one new request (see the class docstring for the rule)."""
        return self._pick_slot(client, exclude).backend

    def connection(self, client: Client = None, *, exclude: Exclude = ()) -> Lease:
        """Pick now and return a :class:`~lbalgo.Lease` to release when the request ends."""
        slot = self._pick_slot(client, exclude)
        return Lease(slot.backend, slot, self._end_lease)

    @_fastpath.release  # the plain case in C, where the accelerator is built
    def release(self, backend: Backend, *, failed: bool = False) -> None:
        """One request on ``backend`` ended; ``failed=True`` reports it to passive health.

        Releases beyond the open count, and for a key no longer in the group, are ignored;
        a key removed and added again counts a late release against the new backend (a
        ``Lease`` knows which one it holds). O(1), lock-free unless passive health awaits a
        trial or the algorithm counts releases. ``TypeError`` naming a bad value.
        """
        # fast path: the very Backend a pick returned, found by its key (a str, hash cached)
        try:
            slot: Slot | None = self._slots[backend.key]
        except Exception:  # not a Backend, or not in the group: the slow path says which
            slot = None
        if slot is None or slot.backend is not backend or failed is not False:
            self._release_checked(backend, failed)
            return
        # Tally.end inlined: end number n is within the open count if n + picks left < limit
        if (
            next(slot.ends) + steps_left(slot.picks) < slot.limit or slot.void_excess()
        ) and slot.notify:
            lock = self._lock
            lock.acquire()
            try:
                self._after_release(slot, False)
            finally:
                lock.release()

    def mark_down(self, key: str) -> None:
        """A health check failed: ``key`` gets no new picks until ``mark_up``."""
        with self._lock:
            slot = self._slot(key)
            if slot.up:
                slot.up = False
                if self._ramps is not None:
                    self._ramps.stop(slot)
                self._changed(slot)

    def mark_up(self, key: str) -> None:
        """A health check passed: ``key`` rejoins (ramping up if slow start is on)."""
        with self._lock:
            slot = self._slot(key)
            if not slot.up:
                slot.up = True
                self._start_ramp((slot,))
                self._changed(slot)

    def is_up(self, key: str) -> bool:
        """The health checker's mark for ``key`` (``KeyError`` if unknown), O(1)."""
        return self._slot(key).up

    def open_connections(self, key: str) -> int:
        """Picks of ``key`` not yet released (``KeyError`` if unknown), O(1)."""
        return self._slot(key).open

    def stats(self) -> Mapping[str, BackendStats]:
        """Per-backend statistics in group order, O(n)."""
        with self._lock:
            now = self._now()
            stats = {}
            for slot in self._order:
                stats[slot.key] = BackendStats(
                    backend=slot.backend,
                    picks=slot.picked,
                    open_connections=slot.open,
                    failures=slot.failures,
                    up=slot.up,
                    available=self._eligible(slot, now),
                    effective_weight=self._effective_weight(slot, now),
                )
            return stats

    def update(self, group: BackendGroup) -> None:
        """Swap in a new group, carrying state over for every key that survives, O(n).

        Surviving keys keep health marks, open counts and algorithm state; new keys start up
        (ramping if slow start is on); removed keys are forgotten.
        """
        check_group(group)
        with self._lock:
            old = self._slots
            slots: dict[str, Slot] = {}
            added = []
            for backend in group:
                slot = old.get(backend.key)
                if slot is None:
                    slot = Slot(backend, self._hooked)
                    added.append(slot)
                else:
                    slot.backend = backend
                    slot.weight = backend.weight
                slots[backend.key] = slot
            for key, slot in old.items():
                if key not in slots:
                    slot.live = False
                    if self._ramps is not None:
                        self._ramps.stop(slot)
            self._group = group
            self._slots = slots
            self._order = tuple(slots.values())
            if added:
                self._start_ramp(added)
            if len(self._order) == 1 and self._passive is not None:
                # nginx never considers the only server of a group unavailable
                self._passive.clear(self._order[0])
            self._rebuild()

    def take(self, key: str, exclude: Exclude = ()) -> Backend | None:
        """Pick ``key`` itself if it is eligible and not in ``exclude``, else ``None``.

        For wrappers that chose the backend themselves (a sticky session's bound backend):
        the algorithm hears of it (a ledger counts it), then the pick is counted as any
        other. O(1) plus the algorithm's hook, under the lock. ``TypeError`` naming the
        value for a key that is not a ``str`` or a bad ``exclude``, with nothing counted.

        >>> from lbalgo import Backend, BackendGroup, SmoothWeightedRoundRobin
        >>> sched = SmoothWeightedRoundRobin(BackendGroup([Backend("10.0.0.1", 80)]))
        >>> sched.take("10.0.0.1:80").key, sched.open_connections("10.0.0.1:80")
        ('10.0.0.1:80', 1)
        >>> sched.take("10.0.0.1:80", exclude=["10.0.0.1:80"]) is None
        True
        """
        slot = self._take(key, exclude)
        return None if slot is None else slot.backend

    def take_connection(self, key: str, exclude: Exclude = ()) -> Lease | None:
        """:meth:`take`, returning a :class:`~lbalgo.Lease` on that backend."""
        slot = self._take(key, exclude)
        return None if slot is None else Lease(slot.backend, slot, self._end_lease)

    # -- helpers for subclasses --------------------------------------------------------------

    def _now(self) -> float:
        """The clock, read only when a timed feature (slow start, passive health) is on."""
        return self._clock() if self._timed else 0.0

    @staticmethod
    def _eligible(slot: Slot, now: float) -> bool:
        """Whether ``slot`` may take a new request at ``now`` (exclusions aside)."""
        return slot.up and slot.weight > 0 and slot.suspended_until <= now

    def _ramp_step(self, slot: Slot, now: float) -> int:
        """Where ``slot``'s ramp stands at ``now`` (:data:`RAMP_STEPS`: full weight)."""
        ramps = self._ramps
        return RAMP_STEPS if ramps is None else ramps.step(slot, now)

    def _fine_weight(self, slot: Slot, now: float) -> int:
        """The weight ``slot`` has at ``now`` in units of ``1 / RAMP_STEPS``: ``weight * k`` at
        step ``k`` of a ramp (``k`` = :data:`RAMP_STEPS` at full weight), 0 if not eligible."""
        if not self._eligible(slot, now):
            return 0
        return slot.weight * self._ramp_step(slot, now)

    def _effective_weight(self, slot: Slot, now: float) -> float:
        """The weight ``slot`` has at ``now`` in its own units (see ``BackendStats``)."""
        if not self._eligible(slot, now):
            return 0
        step = self._ramp_step(slot, now)
        return slot.weight if step == RAMP_STEPS else slot.weight * step / RAMP_STEPS

    def _ramping(self) -> bool:
        """Whether any slow-start ramp is in progress, O(1)."""
        return self._ramps is not None and self._ramps.active > 0

    def _tick(self, now: float) -> None:
        """Apply the ramp steps and suspension lifts due by ``now`` (under the lock), each
        to its one backend through ``_changed``."""
        moved: list[object] = []
        ramps, passive = self._ramps, self._passive
        if ramps is not None and now >= ramps.next_due:
            moved += ramps.due(now)
        if passive is not None and now >= passive.next_lift:
            # a lifted suspension stays recorded (suspended_until in the past): the next
            # pick of that backend is its one trial (see _count_pick)
            moved += passive.lifted(now)
        ramp_due = math.inf if ramps is None else ramps.next_due
        self._next_event = min(ramp_due, math.inf if passive is None else passive.next_lift)
        for state in moved:
            assert isinstance(state, Slot)
            if state.live:
                self._changed(state)

    def _pick_slot(self, client: Client, exclude: Exclude) -> Slot:
        excluded = normalize_exclude(exclude) if exclude else frozenset()
        # the lock taken by hand on the paths a request takes: a `with` block on a C lock
        # costs about three empty method calls more (CPython 3.11)
        lock = self._lock
        lock.acquire()
        try:
            now = self._now()
            if now >= self._next_event:
                self._tick(now)
            slot = self._choose(client, excluded, now)
            self._count_pick(slot, now)
            return slot
        finally:
            lock.release()

    def _take(self, key: str, exclude: Exclude) -> Slot | None:
        if not isinstance(key, str):
            raise InvalidTypeError(f"key must be a backend key (str), got {shown(key)}")
        excluded = exclude if isinstance(exclude, frozenset) else normalize_exclude(exclude)
        lock = self._lock
        lock.acquire()
        try:
            slot = self._slots.get(key)
            if slot is None or key in excluded:
                return None
            now = self._now()
            if now >= self._next_event:
                self._tick(now)
            if not self._eligible(slot, now):
                return None
            self._taken(slot)
            self._count_pick(slot, now)
            return slot
        finally:
            lock.release()

    def _count_pick(self, slot: Slot, now: float) -> None:
        """Count a pick of ``slot`` (under the lock): maybe nginx's check, or a trial."""
        next(slot.picks)
        if slot.fails and self._passive is not None and self._passive.picked(slot, now):
            self._next_event = min(self._next_event, self._passive.next_lift)
            self._changed(slot)

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
            elif slot.weight == 0:
                reasons.append(f"{slot.key} weight 0")
            elif slot.suspended_until > self._now():  # the true cause only: none is eligible
                reasons.append(f"{slot.key} suspended by passive health")
        listed = ", ".join(reasons[:5]) + (", ..." if len(reasons) > 5 else "")
        return NoBackendAvailable(f"no backend available ({listed})")

    def _check(self) -> None:
        """Assert the invariants of the shared state (the stateful tests call it)."""
        assert tuple(self._slots.values()) == self._order
        assert [s.key for s in self._order] == list(self._group.keys())
        for slot in self._order:
            slot._check()
            assert slot.live
            assert slot.backend is self._group[slot.key]
            assert slot.weight == slot.backend.weight
            assert slot.ramp_start is None or self._ramps is not None
        if self._ramps is not None:
            self._ramps._check()
        if self._passive is not None:
            self._passive._check()

    # -- internals ---------------------------------------------------------------------------

    def _slot(self, key: str) -> Slot:
        try:
            return self._slots[key]
        except (KeyError, TypeError):
            raise UnknownBackendError(key) from None

    def _start_ramp(self, slots: Iterable[Slot]) -> None:
        """Ramp ``slots`` (joining together) from now, if slow start is on and some other
        backend serves meanwhile (ramping the only one gains nothing). O(log n) each."""
        ramps = self._ramps
        if ramps is None:
            return
        now = self._clock()
        joining = set(slots)
        if any(s not in joining and self._eligible(s, now) for s in self._order):
            for slot in joining:
                ramps.start(slot, now)
            self._next_event = min(self._next_event, ramps.next_due)

    def _release_checked(self, backend: object, failed: object) -> None:
        checked, fail = check_release(backend, failed)
        slot = self._slots.get(checked.key)
        if slot is not None:
            self._finish(slot, fail)

    def _finish_lease(self, slot: Slot, failed: bool) -> None:
        """A lease's release the scheduler must count and hear of (a failure, or notify)."""
        # a lease outliving its backend's removal (or a re-added key) counts nowhere
        if slot.live:
            self._finish(slot, failed)

    def _finish(self, slot: Slot, failed: bool) -> None:
        """One release of ``slot``: lock-free unless something must hear of it."""
        if not failed and not (slot.end() and slot.notify):
            return
        lock = self._lock
        lock.acquire()
        try:
            # a failed release beyond the open count reports nothing
            if not failed or slot.end():
                self._after_release(slot, failed)
        finally:
            lock.release()

    def _after_release(self, slot: Slot, failed: bool) -> None:
        """One counted release, under the lock: passive health, then the algorithm's hook."""
        passive = self._passive
        if failed:
            slot.failures += 1
            self._failed(slot)
            # nginx never considers the only server of a group unavailable
            if passive is not None and len(self._order) > 1 and slot.live:
                now = self._clock()
                if passive.failure(slot, now):
                    self._next_event = min(self._next_event, passive.next_lift)
                    self._changed(slot)
                elif slot.fails == 1:
                    self._changed(slot)  # its picks must be seen now: one will be a check
        elif passive is not None and slot.live and slot.fails:
            out = slot.suspended_until != -math.inf  # a trial's success: back, but cold
            if passive.success(slot):
                if out:
                    self._start_ramp((slot,))
                self._changed(slot)
        slot.notify = self._hooked or slot.fails > 0  # failures: a success may clear them
        if self._hooked:
            self._released(slot)
