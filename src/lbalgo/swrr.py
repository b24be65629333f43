"""Smooth weighted round robin: nginx's default balancing, pick for pick, at O(1) a pick.

nginx's rule (``ngx_http_upstream_get_peer``) keeps a *current weight* per peer. For each pick,
every peer taking part adds its weight to its current weight; the peer with the largest current
weight wins (the first one in group order on a tie) and loses the total weight of the peers that
took part. Written directly, that is an O(n) loop per pick; this module produces the same
sequence by generating it once per change and replaying it (see
:class:`SmoothWeightedRoundRobin` for the design).
"""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter

from lbalgo import _fastpath
from lbalgo._base import BaseScheduler
from lbalgo._counter import count_of
from lbalgo._options import normalize_exclude
from lbalgo._slot import Slot
from lbalgo._slowstart import RAMP_STEPS
from lbalgo._swrr_replay import EMPTY, ClassGenerator, Epoch, Stream, unscale
from lbalgo.backend import Backend, BackendGroup
from lbalgo.scheduler import Client, Clock, Exclude, Lease

__all__ = ["SmoothWeightedRoundRobin"]

_FIRST_CHUNK = 32  # picks generated right after a change: the first pick stays cheap
_MAX_CHUNK = 1024


class SmoothWeightedRoundRobin(BaseScheduler):
    """nginx's smooth weighted round robin, with the same sequence, at O(1) a pick.

    Each backend has a current weight (0 at the start). For each pick, every backend taking
    part adds its weight; the largest current weight wins (the first in group order on a tie)
    and loses the total weight of the backends that took part. Traffic follows the weights
    and is spread out: ``{5, 1, 1} -> a a b a c a a``.

    >>> from lbalgo import Backend, BackendGroup
    >>> group = BackendGroup([Backend("10.0.0.1", 80, 5, name="a"),
    ...                       Backend("10.0.0.2", 80, 1, name="b"),
    ...                       Backend("10.0.0.3", 80, 1, name="c")])
    >>> sched = SmoothWeightedRoundRobin(group)
    >>> " ".join(sched.pick().key for _ in range(14))
    'a a b a c a a a a b a c a a'

    A backend of weight 0, marked down, excluded, or suspended by passive health is skipped as
    nginx skips a down or already tried peer: it takes no part in that pick, its current
    weight does not move, and the total is the sum over the backends that take part.
    ``update(group)``: surviving keys keep their current weight, new keys start at 0, removed
    keys are forgotten; a new weight counts from the next pick. With ``max_fails``, nginx's
    effective weight too: a failure lowers it by ``weight // max_fails`` (not below 0), and
    each pick the backend takes part in adds its effective weight, then raises it by one
    until it is back at ``weight``; with passive health following nginx's rule (see
    :mod:`lbalgo._passive`), the picks stay nginx's through failures and recoveries, pick
    for pick, when the clock is nginx's (whole seconds).

    Slow start. While any ramp is on, the steps run on the fine scale of
    :data:`~lbalgo.scheduler.RAMP_STEPS`: every weight and current weight is multiplied by
    32 (nginx's step is linear in them, so it picks exactly as before), and a ramping
    backend of weight ``w`` takes part with ``w * k`` for ``k`` = 1 .. 32, so a weight-1
    backend ramps from 1/32 of its share in 32 steps like any other. When the last ramp ends,
    the current weights are divided by 32 and rounded by the largest-remainder rule (each
    moves by less than 1; their sum, 0 as nginx keeps it, stays 0; see ``_unscale``), and
    from that state the sequence is nginx's again, replayed at O(1).

    >>> sched.mark_down("a")
    >>> " ".join(sched.pick().key for _ in range(4))
    'b c b c'

    Design: with fixed weights the sequence is periodic (period W, the sum of the weights),
    so after each change it is generated from the exact current weights until the last W
    picks prove the cycle, then replayed; at the next change the current weights come back
    in closed form (see ``docs/algorithms/swrr.md`` and ``lbalgo._swrr_replay``).
    Complexity:

    - ``pick()`` without ``exclude``: one ``next()`` on a chain of ``itertools`` objects that
      yields the backend and advances its pick counter in the same C call, atomic under the
      GIL, so no lock; O(1), about three empty method calls. ``release`` and a lease's exit:
      O(1), no lock.
    - A change (``mark_down``/``mark_up``/``update``/passive health): O(n + W) to fold the
      rotation into exact current weights, then O(D) a pick until the cycle is proven (about
      one period; at n = 500 several times cheaper than the O(n) loop), then O(1) again.
      Memory: O(n + W), W <= 500 x 100.
    - ``pick(exclude=...)`` that skips a backend taking part, picks while a slow start ramp or
      a passive-health suspension is pending, while a backend with failures awaits its check
      or trial, and while an effective weight climbs back after a failure: the exact O(n)
      nginx step under the lock. With ``max_fails`` set and no failure, picks stay on the
      O(1) replay.

    Threads: a pick racing with a change may still be served from the rotation before the
    change (as if it came first); counts are never lost. Rotation state is per process. A
    sticky session's pick (``StickySessions``) does not move the rotation, as in nginx.
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
        # exact current weights of every slot (for slots in the epoch: as of its origin)
        self._current: dict[Slot, int] = {}
        self._epoch: Epoch | None = None
        self._stream: Stream = EMPTY
        self._chunk = _FIRST_CHUNK
        self._takes = 0  # picks made by _take (sticky sessions) since the replay started
        # 1, or RAMP_STEPS while a slow-start ramp is on: the unit of the current weights
        self._scale = 1
        # nginx's effective weights below full weight, after failures (absent: full weight)
        self._effective: dict[Slot, int] = {}
        super().__init__(
            group,
            slow_start=slow_start,
            max_fails=max_fails,
            fail_timeout=fail_timeout,
            clock=clock,
        )

    # -- the fast path -----------------------------------------------------------------------

    @_fastpath.rotation_pick  # in C where the accelerator is built (the same steps)
    def pick(self, client: Client = None, *, exclude: Exclude = ()) -> Backend:
        """The next backend in nginx's sequence (O(1) when nothing is excluded)."""
        if not exclude:
            try:
                return next(self._stream)[1]
            except StopIteration:
                pass
        return self._pick_slot(client, exclude).backend

    @_fastpath.rotation_connection
    def connection(self, client: Client = None, *, exclude: Exclude = ()) -> Lease:
        """The next backend in nginx's sequence, held by a :class:`~lbalgo.Lease` (O(1)
        and lock-free when nothing is excluded, its exit too)."""
        if not exclude:
            try:
                slot, backend, _ = next(self._stream)
                return Lease(backend, slot, self._end_lease)
            except StopIteration:
                pass
        slot = self._pick_slot(client, exclude)
        return Lease(slot.backend, slot, self._end_lease)

    def _pick_slot(self, client: Client, exclude: Exclude) -> Slot:
        if not exclude:
            try:
                return next(self._stream)[0]
            except StopIteration:
                pass
        excluded = normalize_exclude(exclude) if exclude else frozenset()
        lock = self._lock  # taken by hand: see BaseScheduler._pick_slot
        lock.acquire()
        try:
            now = self._now()
            if now >= self._next_event:
                self._tick(now)
            epoch = self._epoch
            if epoch is not None and excluded.isdisjoint(epoch.keys):
                return self._draw(excluded)
            slot = self._choose(client, excluded, now)
            self._count_pick(slot, now)
            return slot
        finally:
            lock.release()

    # -- the hooks of BaseScheduler ----------------------------------------------------------

    def _choose(self, client: Client, exclude: frozenset[str], now: float) -> Slot:
        """One exact step of nginx's loop over the materialized current weights, O(n)."""
        resume = self._epoch is not None
        self._fold()
        current = self._current
        best: Slot | None = None
        best_value = 0
        total = 0
        taking_part = []
        fine = self._scale != 1
        effective = self._effective
        recovering = bool(effective)
        for slot in self._order:
            if slot.key in exclude or not self._eligible(slot, now):
                continue
            # nginx's effective weight: lowered by failures, back up by one per step
            weight = effective.get(slot, slot.weight)
            if weight < slot.weight:
                if weight + 1 < slot.weight:
                    effective[slot] = weight + 1
                else:
                    del effective[slot]
            if fine:
                weight *= self._ramp_step(slot, now)
            value = current[slot] + weight
            total += weight
            taking_part.append((slot, weight))
            if best is None or value > best_value:
                best, best_value = slot, value
        if best is None:
            if resume:
                self._start_epoch()
            raise self._no_backend(exclude)
        for slot, weight in taking_part:
            current[slot] += weight
        current[best] -= total
        if resume or (recovering and not effective):
            self._start_epoch()
        return best

    def _rebuild(self) -> None:
        self._fold()
        current = self._current
        self._current = {slot: current.get(slot, 0) for slot in self._order}
        self._effective = {
            slot: weight
            for slot, weight in self._effective.items()
            if slot.live and weight < slot.weight
        }
        ramping = self._ramping()
        if ramping and self._scale == 1:
            # nginx's steps are linear in the weights: on weights and current weights all
            # scaled by RAMP_STEPS they pick exactly as before, and a ramp can step finely
            self._current = {slot: value * RAMP_STEPS for slot, value in self._current.items()}
            self._scale = RAMP_STEPS
        elif not ramping and self._scale != 1:
            self._current = dict(
                zip(self._current, unscale(list(self._current.values())), strict=True)
            )
            self._scale = 1
        self._start_epoch()

    def _check(self) -> None:
        """Assert the invariants of the shared state and of the rotation: every slot has a
        current weight; an epoch covers eligible slots at their weights, and a proven cycle
        gives each exactly its weight (see ``Epoch._check``)."""
        super()._check()
        assert set(self._current) == set(self._order)
        assert self._scale in (1, RAMP_STEPS)
        epoch = self._epoch
        if epoch is not None:
            now = self._now()
            assert all(slot.live and self._eligible(slot, now) for slot in epoch.slots)
            assert epoch.weights == tuple(slot.weight for slot in epoch.slots)
            epoch._check()

    # -- internals ---------------------------------------------------------------------------

    def _fold(self) -> None:
        """End the epoch, writing the exact current weights back (under the lock)."""
        epoch = self._epoch
        if epoch is None:
            return
        # stop the fast path first, so that no draw slips in after the count is read
        self._stream = EMPTY
        self._epoch = None
        for slot, value in zip(epoch.slots, epoch.current(self._takes), strict=True):
            self._current[slot] = value

    def _start_epoch(self) -> None:
        """Start generating from the current weights if nothing depends on the clock."""
        self._stream = EMPTY
        self._epoch = None
        if (
            self._next_event != math.inf
            or self._scale != 1
            or self._effective
            or any(slot.fails and slot.up and slot.weight > 0 for slot in self._order)
        ):
            # ramps, suspensions, checks or effective weights climbing back after failures:
            # exact steps until they end (a backend with failures while down or at weight 0
            # cannot be picked, so it does not keep every pick on the O(n) path)
            return
        now = self._now()
        slots = tuple(slot for slot in self._order if self._eligible(slot, now))
        self._epoch = Epoch(
            slots,
            tuple(slot.backend.weight for slot in slots),
            [self._current[slot] for slot in slots],
        )
        self._chunk = _FIRST_CHUNK

    def _failed(self, slot: Slot) -> None:
        if self._max_fails and len(self._order) > 1:
            # nginx's free_round_robin_peer: the effective weight drops by weight / max_fails
            weight = slot.weight
            lowered = max(self._effective.get(slot, weight) - weight // self._max_fails, 0)
            if lowered < weight:
                self._effective[slot] = lowered
            self._changed(slot)  # the replay stops until it has climbed back

    def _taken(self, slot: Slot) -> None:
        # a sticky session's pick bypasses the rotation (nginx's sticky does too); only the
        # replay's count of draws must know about it
        self._takes += 1

    def _draw(self, excluded: frozenset[str]) -> Slot:
        """A pick from the epoch's sequence (under the lock), generating more when needed."""
        while True:
            try:
                return next(self._stream)[0]
            except StopIteration:
                self._refill(excluded)

    def _refill(self, excluded: frozenset[str]) -> None:
        """Install the next stretch of the sequence; every generated pick has been drawn."""
        epoch = self._epoch
        assert epoch is not None
        assert epoch.cycle is None  # a replay never runs dry
        if not epoch.slots:
            raise self._no_backend(excluded)
        generator = epoch.generator
        if generator is None:
            generator = epoch.generator = ClassGenerator(epoch.weights, epoch.start)
        period = generator.total
        recent = epoch.recent
        if len(recent) > 2 * period:
            del recent[:-period]  # only the last W picks matter (and the undrawn ones)
        # chunks no longer than W/4 (and W): the check below then runs often enough
        chunk = min(self._chunk, max(_FIRST_CHUNK, period // 4), period)
        self._chunk = min(2 * self._chunk, _MAX_CHUNK)
        positions = generator.run(chunk)
        recent.extend(positions)
        epoch.counts.update(positions)
        if len(recent) > period:
            epoch.counts.subtract(recent[-period - chunk : -period])
        if len(recent) >= period and epoch.counts == epoch.target:
            # the last W picks gave every peer exactly its weight: the state recurs, and
            # as the chunk is at most W long, the drawn position is inside that cycle
            epoch.start = generator.current()
            epoch.cycle = tuple(recent[-period:])
            epoch.recent = []
            epoch.counts = Counter()
            epoch.generator = None
            self._replay(epoch, period - chunk)
            return
        slots = [epoch.slots[i] for i in positions]
        epoch.chunk = iter(slots)
        epoch.chunk_end = generator.steps
        self._stream = zip(
            epoch.chunk,
            [slot.backend for slot in slots],
            map(next, [slot.picks for slot in slots]),
            strict=False,  # the chunk's iterators end together
        )

    def _replay(self, epoch: Epoch, position: int) -> None:
        """Replay the cycle forever from ``position`` (lock-free for the fast path)."""
        assert epoch.cycle is not None
        order = epoch.cycle[position:] + epoch.cycle[:position]
        slots = [epoch.slots[i] for i in order]
        epoch.offset = position
        epoch.counted = sum(count_of(slot.picks) for slot in epoch.slots)
        self._takes = 0
        self._stream = zip(
            itertools.cycle(slots),
            itertools.cycle([slot.backend for slot in slots]),
            map(next, itertools.cycle([slot.picks for slot in slots])),
            strict=False,  # endless
        )
