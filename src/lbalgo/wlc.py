"""Weighted least connections: each new connection goes to the lowest ``open / weight``.

The right algorithm for long-lived connections (databases, WebSockets, streaming), where
round robin keeps sending work to a backend that is still busy with the last. The choice
itself lives in a :class:`~lbalgo.ledger.ConnectionLedger`, so the same scheduler can count
connections in this process (the default) or across a fleet.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

from lbalgo._accel import compiled
from lbalgo._base import BaseScheduler
from lbalgo._nginx_least_conn import NginxLeastConnLedger
from lbalgo._slot import Slot
from lbalgo._validate import shown
from lbalgo.backend import Backend, BackendGroup
from lbalgo.errors import InvalidOptionError, InvalidTypeError
from lbalgo.ledger import ConnectionLedger, IncrementalLedger
from lbalgo.local_ledger import ACCELERATED, LocalLedger, PurePythonLedger
from lbalgo.scheduler import Client, Clock, Exclude, Lease

__all__ = ["WeightedLeastConnections"]

# id(ledger) -> the live scheduler using it. A ledger keeps one eligible set, so a second
# scheduler on it would overwrite the first one's and get keys of another group back.
_owners: weakref.WeakValueDictionary[int, WeightedLeastConnections] = (
    weakref.WeakValueDictionary()
)
_owners_lock = threading.Lock()


class WeightedLeastConnections(BaseScheduler):
    """Send each pick to an eligible backend with the lowest ``open connections / weight``.

    Ratios are compared exactly (integers, never floats). Ties follow the weights smoothly:
    under light load (each request ends before the next starts, so every backend has 0
    open) every prefix of the pick sequence gives each backend its weighted share to within
    one pick, also for skewed weights such as ten backends of weight 1 and one of weight 100.
    nginx's ``least_conn`` runs smooth round robin among tied peers; this uses the WF2Q
    fair-queueing rule instead, which is tighter (see :class:`~lbalgo.LocalLedger`).

    Weight 0, ``mark_down`` and passive-health suspensions stop new picks while the open
    connections drain through ``release``; counts are kept by backend key, so a backend
    whose weight changed since the pick is released the same way, and ``update`` keeps the
    counts of every key that stays. With ``slow_start`` the weight in the ratio ramps up in
    :data:`~lbalgo.scheduler.RAMP_STEPS` steps from 1/32 of the backend's weight, weight 1
    included: the ledger compares weights in units of 1/32 (a full weight ``w`` is handed
    over as ``w * 32``; scaling every weight alike leaves every ratio's order as it was).

    ``ledger``: where counts live and the choice is made; ``None`` (the default) is a fresh
    in-process :class:`~lbalgo.LocalLedger`. Give each scheduler its own ledger
    object (a shared ledger such as ``RedisLedger`` shares through its store, one object per
    process): a ledger another live scheduler uses raises ``ValueError``.
    ``open_connections`` and ``stats`` show this scheduler's own counts;
    ``sched.ledger.count(key)`` shows the ledger's (the fleet's, for a shared ledger).

    Complexity with the local ledger: ``pick``, ``release`` and a lease's exit amortised
    O(log n) under one short lock; ``mark_down``/``mark_up``, a passive-health suspension
    or trial and each slow-start weight step O(log n) (the ledger changes that one key's
    weight); ``update`` O(n).

    ``compat="nginx"`` breaks ties exactly as nginx's ``least_conn``: its smooth weighted
    round robin over the tied backends only (their ``current_weight``; a lone lowest backend
    moves nothing), with nginx's ``effective_weight`` after failures, so the same picks,
    releases and failures give the same backends as a real nginx, pick for pick. It keeps
    its own in-process ledger (``ledger`` must be ``None``) and has no slow start (nginx has
    none). ``pick`` and ``release`` cost O(D + log n), D the number of distinct weights among
    the tied backends (at most 100; the D part is one C-level ``max``), where nginx scans
    all n; picks with ``exclude`` and picks while a backend's effective weight climbs back
    after a failure take nginx's O(n) step.

    >>> sched = WeightedLeastConnections(BackendGroup([Backend("10.0.0.1", 80, 5),
    ...     Backend("10.0.0.2", 80, 1), Backend("10.0.0.3", 80, 1)]), compat="nginx")
    >>> def light(): b = sched.pick(); sched.release(b); return b.host[-1]
    >>> "".join(light() for _ in range(7))  # every pick a tie at 0: nginx's a a b a c a a
    '1121311'

    >>> from lbalgo import Backend, BackendGroup
    >>> group = BackendGroup([Backend("10.0.0.1", 80, 3), Backend("10.0.0.2", 80, 1)])
    >>> sched = WeightedLeastConnections(group)
    >>> held = [sched.pick() for _ in range(4)]  # long-lived: nothing released
    >>> [b.key for b in held]
    ['10.0.0.1:80', '10.0.0.2:80', '10.0.0.1:80', '10.0.0.1:80']
    >>> for b in held[:3]:
    ...     sched.release(b)
    >>> sched.open_connections("10.0.0.1:80"), sched.pick().key  # 0/1 beats 1/3
    (1, '10.0.0.2:80')
    """

    def __init__(
        self,
        group: BackendGroup,
        *,
        ledger: ConnectionLedger | None = None,
        slow_start: float = 0.0,
        max_fails: int = 0,
        fail_timeout: float = 10.0,
        clock: Clock = time.monotonic,
        compat: str | None = None,
    ) -> None:
        if compat not in (None, "nginx"):
            raise InvalidOptionError(f"compat must be None or 'nginx', got {shown(compat)}")
        if compat == "nginx":
            if ledger is not None:
                raise InvalidOptionError(
                    f"compat='nginx' keeps its own in-process ledger, got ledger={shown(ledger)}"
                )
            if slow_start:
                raise InvalidOptionError(
                    f"compat='nginx' has no slow start (nginx's least_conn has none), got "
                    f"slow_start={slow_start!r}"
                )
            ledger = NginxLeastConnLedger()
        given = ledger is not None and compat is None
        if ledger is None:
            ledger = LocalLedger()
        elif not isinstance(ledger, ConnectionLedger):
            raise InvalidTypeError(f"ledger must be a ConnectionLedger, got {shown(ledger)}")
        self._ledger: ConnectionLedger = ledger
        # a ledger that changes one key's weight in O(log n) hears of each change alone
        self._incremental = ledger if isinstance(ledger, IncrementalLedger) else None
        self._known: frozenset[str] = frozenset()  # keys the ledger has heard of
        self._path: Any = None  # the C request path, set up below where it applies
        if given:
            # checked before the base's first rebuild hands the ledger this group
            with _owners_lock:
                owner = _owners.get(id(ledger))
                # the owner holds its ledger, so while it lives the id is that ledger's
                if owner is not None and owner._ledger is ledger:
                    raise InvalidOptionError(
                        "ledger is already used by another WeightedLeastConnections "
                        f"(give each scheduler its own ledger object), got {ledger!r}"
                    )
                _owners[id(ledger)] = self
        try:
            super().__init__(
                group,
                slow_start=slow_start,
                max_fails=max_fails,
                fail_timeout=fail_timeout,
                clock=clock,
            )
        except BaseException:
            if given:
                with _owners_lock:
                    if _owners.get(id(ledger)) is self:
                        del _owners[id(ledger)]
            raise
        # The fast path below serves the common configuration: no clock-driven feature and
        # the local ledger, whose count for a key is exactly this scheduler's open count.
        self._local: LocalLedger | NginxLeastConnLedger | None = None
        local = (LocalLedger, PurePythonLedger, NginxLeastConnLedger)
        # exact types only: a subclass may count differently
        if not self._timed and isinstance(ledger, local) and type(ledger) in local:
            self._local = ledger
        if (
            self._local is not None
            and type(ledger) is LocalLedger
            and ACCELERATED
            # a subclass's own pick, release or connection must not be bypassed
            and all(
                getattr(type(self), name) is getattr(WeightedLeastConnections, name)
                for name in ("pick", "release", "connection")
            )
        ):
            self._accelerate()

    def _accelerate(self) -> None:
        """Serve pick, release and connection by one C call each (lbalgo._wf2q_c's
        RequestPath): the same steps as the methods below on the ledger's C acquire and
        release_open, under the same lock, handing everything else (bad arguments, an exclude
        set, nothing eligible, a failure, a value that is not a Backend of the group) to the
        methods below, called with the call's own arguments (so errors and messages are
        theirs). Bound on the instance: a Python method in between would cost a frame."""
        accelerator = compiled("_wf2q_c")
        assert accelerator is not None  # ACCELERATED: built, and not turned off
        path = accelerator.RequestPath(
            self._ledger,
            self._lock,
            self._slots,
            Lease,
            # the pure-Python methods of the class, bound (the instance's names are the C ones)
            WeightedLeastConnections.pick.__get__(self),
            WeightedLeastConnections.connection.__get__(self),
            WeightedLeastConnections.release.__get__(self),
            self._end_lease,
        )
        self._path = path
        vars(self).update(pick=path.pick, release=path.release, connection=path.connection)

    @property
    def ledger(self) -> ConnectionLedger:
        """The ledger holding the counts and making the choice."""
        return self._ledger

    def pick(self, client: Client = None, *, exclude: Exclude = ()) -> Backend:
        """Choose the backend for one new connection: the lowest ``open / weight``,
        O(log n) under one short lock."""
        local = self._local
        if local is None or exclude:
            return self._pick_slot(client, exclude).backend
        # the base's path minus what cannot apply here (clock, ramps, passive-health trials);
        # the lock taken by hand: a `with` block costs about three empty calls more
        lock = self._lock
        lock.acquire()
        try:
            key = local.acquire()
            if key is None:
                raise self._no_backend(())
            slot = self._slots[key]
            next(slot.picks)
        finally:
            lock.release()
        return slot.backend

    def connection(self, client: Client = None, *, exclude: Exclude = ()) -> Lease:
        """Pick now and return a :class:`~lbalgo.Lease`; its exit is :meth:`release`'s
        path, O(log n) under one short lock."""
        local = self._local
        if local is None or exclude:
            return super().connection(client, exclude=exclude)
        lock = self._lock
        lock.acquire()
        try:
            key = local.acquire()
            if key is None:
                raise self._no_backend(())
            slot = self._slots[key]
            next(slot.picks)
        finally:
            lock.release()
        return Lease(slot.backend, slot, self._end_lease)

    def release(self, backend: Backend, *, failed: bool = False) -> None:
        """One connection on ``backend`` ended (see :meth:`BaseScheduler.release`),
        O(log n) under one short lock."""
        local = self._local
        try:  # the Backend a pick returned, by its key (see BaseScheduler.release)
            slot = self._slots[backend.key]
        except Exception:  # not a Backend, or not in the group: the base's slow path
            local = None
        if local is None or slot.backend is not backend or failed is not False:
            super().release(backend, failed=failed)
            return
        lock = self._lock
        lock.acquire()
        try:
            # the local ledger's count for a key is this scheduler's open count: its answer
            # says whether the release is within it (a slot removed meanwhile is not live)
            if slot.live and local.release_open(slot.key):
                next(slot.ends)
        finally:
            lock.release()

    # -- the hooks of BaseScheduler ----------------------------------------------------------

    _hooked = True  # every release reaches the ledger

    def _finish(self, slot: Slot, failed: bool) -> None:
        local = self._local
        if local is None or failed:
            super()._finish(slot, failed)
            return
        lock = self._lock
        lock.acquire()
        try:
            if local.release_open(slot.key):
                next(slot.ends)
        finally:
            lock.release()

    def _choose(self, client: Client, exclude: frozenset[str], now: float) -> Slot:
        key = self._ledger.acquire(exclude)
        if key is None:
            raise self._no_backend(exclude)
        return self._slots[key]

    def _failed(self, slot: Slot) -> None:
        ledger = self._ledger
        # nginx lowers a failed peer's effective weight (never the only server's)
        if isinstance(ledger, NginxLeastConnLedger) and len(self._order) > 1:
            ledger.failed(slot.key, self._max_fails)

    def _taken(self, slot: Slot) -> None:
        self._ledger.take(slot.key)

    def _released(self, slot: Slot) -> None:
        self._ledger.release(slot.key)

    def _changed(self, slot: Slot) -> None:
        incremental = self._incremental
        if incremental is None or not incremental.set_weight(
            slot.key, self._fine_weight(slot, self._now())
        ):
            self._rebuild()

    def _rebuild(self) -> None:
        now = self._now()
        eligible: list[tuple[str, int]] = []
        for slot in self._order:
            weight = self._fine_weight(slot, now)
            if weight:
                eligible.append((slot.key, weight))
        self._ledger.set_eligible(eligible)
        if self._path is not None:  # an update replaced the slots dict
            self._path.retarget(self._slots)
        keys = self._slots.keys()
        gone = [key for key in self._known if key not in keys]
        if gone:
            self._ledger.forget(gone)
        if gone or len(keys) != len(self._known):
            self._known = frozenset(keys)
