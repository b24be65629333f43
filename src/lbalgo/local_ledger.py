"""The in-process connection ledger: exact weighted least connections with a smooth
tie-break, O(log n) per operation. See ``docs/algorithms/wlc.md`` for the design."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from heapq import heapify, heappop, heappush
from typing import Any

from lbalgo.ledger import checked_eligible

__all__ = ["LocalLedger"]


class LocalLedger:
    """The in-process ledger: exact least connections with a smooth tie-break, O(log n).

    The default ledger of :class:`~lbalgo.WeightedLeastConnections`. Each eligible key has a
    load ratio ``count / weight`` and a place in a weighted fair-queueing schedule (WF2Q,
    Bennett and Zhang 1996): a virtual start ``S`` (the service it has had, over its weight)
    and finish ``F = S + 1/weight``, against a virtual clock ``V`` that advances by
    ``1/total_weight`` per acquire. A key is *ready* when ``S <= V``. :meth:`acquire` takes
    the lowest ratio; among equal ratios a ready key with the earliest ``F``, else a waiting
    key with the earliest ``S``; then group order.

    Why WF2Q rather than a plain earliest-deadline (lowest ``F``) tie-break: with ten keys of
    weight 1 and one of weight 100, earliest deadline gives the heavy key its 100 picks in a
    burst. The readiness rule keeps every key within one pick of its weighted share in every
    prefix of a light-load sequence (each connection released before the next acquire, so
    all ratios tie), tighter than nginx's smooth round robin, which can stray past one pick.
    Service a key missed or took in advance while ratios decided (heavy load) is clamped to
    one pick at its next acquire, so when load drops nobody gets a burst of catch-up picks.

    Ratios and virtual times are integers scaled by ``M = lcm(weights, total weight)``, so
    every comparison is exact. Multiplying every weight by one factor (the scheduler's
    :data:`~lbalgo.scheduler.RAMP_STEPS`) multiplies ``M`` by it too and leaves every one of
    these integers as it was; only a slow-start ramp in progress, whose step ``k`` enters
    ``M``, makes them larger. Heaps with lazy deletion (a stale entry carries an old stamp
    and is dropped when it surfaces; all are rebuilt in O(n) after about 2n entries were
    queued): ready keys by ``(ratio, F)``; waiting keys with no connection ("idle")
    by ``S``; waiting keys with connections ("busy") by ``(ratio, S)`` and by ``S``. The idle
    heap serves both to pick and to wake, which keeps a light-load acquire at four heap
    operations. :meth:`acquire`, :meth:`take` and :meth:`release` are amortised O(log n),
    :meth:`count` O(1), :meth:`set_eligible` O(n). No lock of its own: its scheduler calls
    it under the scheduler's lock.

    >>> ledger = LocalLedger()
    >>> ledger.set_eligible([("a", 3), ("b", 1)])
    >>> picks = []
    >>> for _ in range(8):
    ...     key = ledger.acquire()
    ...     picks.append(key)
    ...     ledger.release(key)
    >>> "".join(picks)
    'abaaabaa'
    >>> [ledger.acquire() for _ in range(4)], ledger.count("a"), ledger.count("b")
    (['a', 'b', 'a', 'a'], 3, 1)
    >>> ledger.set_eligible([("b", 1)])  # "a" went down: it drains, b takes everything
    >>> ledger.acquire(), ledger.count("a"), ledger.count("b")
    ('b', 3, 2)
    """

    __slots__ = (
        "_busy_heap",
        "_busy_wakeups",
        "_draining",
        "_idle_heap",
        "_index",
        "_keys",
        "_limit",
        "_load",
        "_pending",
        "_pushes",
        "_ready_heap",
        "_scale",
        "_stamp",
        "_start",
        "_state",
        "_step",
        "_unit",
        "_vt",
    )

    def __init__(self) -> None:
        self._draining: dict[str, int] = {}  # counts (> 0) of known keys that are not eligible
        self._index: dict[str, int] = {}  # eligible key -> position in group order
        self._keys: list[str] = []
        self._load: list[int] = []  # open connections by position
        self._unit: list[int] = []  # M // weight: one connection's part of the ratio, in M
        self._start: list[int] = []  # virtual start S, scaled by M
        self._state: list[int] = []  # _READY, _IDLE, _BUSY or _PENDING
        self._stamp: list[int] = []  # bumped on each change; older heap entries are stale
        self._ready_heap: list[tuple[int, int, int, int]] = []  # (ratio, F, position, stamp)
        self._idle_heap: list[tuple[int, int, int]] = []  # (S, position, stamp)
        self._busy_heap: list[tuple[int, int, int, int]] = []  # (ratio, S, position, stamp)
        self._busy_wakeups: list[tuple[int, int]] = []  # (S, position)
        self._scale = 1  # M
        self._vt = 0  # virtual clock V, scaled by M
        self._step = 1  # M // total weight: how far V moves per acquire
        self._pending = -1  # the key acquired last, not queued yet (see _advance)
        self._pushes = 0  # queueings since the last rebuild of the heaps
        self._limit = _MIN_HEAP_LIMIT  # ... that trigger the next one

    # -- the ConnectionLedger interface ------------------------------------------------------

    def set_eligible(self, weights: Sequence[tuple[str, int]]) -> None:
        """Replace the eligible set (see :meth:`ConnectionLedger.set_eligible`), O(n).

        Keys that stay eligible keep their counts and their place in the tie-break schedule
        (rescaled to the new weights); keys that join start level with the clock; keys that
        leave keep their counts while they drain. ``ValueError`` naming the key and the value
        for a weight outside 1..3200 or a repeated key, with the ledger unchanged.
        """
        seen = checked_eligible(weights)
        entries = list(seen.items())

        old_index, old_load, old_start = self._index, self._load, self._start
        old_vt, old_scale = self._vt, self._scale
        total = sum(weight for _, weight in entries)
        scale = math.lcm(total, *{weight for _, weight in entries}) if entries else 1
        # rescaling by scale / old_scale in lowest terms keeps the per-key arithmetic small
        common = math.gcd(scale, old_scale)
        mul, div = scale // common, old_scale // common
        draining = self._draining
        for key, pos in old_index.items():
            if key not in seen and old_load[pos]:
                draining[key] = old_load[pos]
        keys: list[str] = []
        load: list[int] = []
        unit: list[int] = []
        start: list[int] = []
        for key, weight in entries:
            u = scale // weight
            old = old_index.get(key)
            if old is None:
                count = draining.pop(key, 0)
                lag = 0  # a joining key starts level with the clock, as in WF2Q
            else:
                count = old_load[old]
                # its S relative to V, in the new scale, at most one pick either way
                lag = (old_start[old] - old_vt) * mul // div
                if lag > u:
                    lag = u
                elif lag < -u:
                    lag = -u
            keys.append(key)
            load.append(count)
            unit.append(u)
            start.append(lag)
        self._index = {key: pos for pos, key in enumerate(keys)}
        self._keys, self._load, self._unit, self._start = keys, load, unit, start
        self._state = [_PENDING] * len(keys)
        self._stamp = [0] * len(keys)
        self._scale = scale
        self._vt = 0
        self._step = scale // total if total else 1
        self._rebuild_heaps()

    def acquire(self, exclude: AbstractSet[str] = frozenset()) -> str | None:
        """Take the least-loaded eligible key not in ``exclude`` and count it, amortised
        O(log n) (plus O(k log n) for k excluded keys); ``None`` if no key qualifies."""
        vt = self._vt
        idle, stamp = self._idle_heap, self._stamp
        if self._pending >= 0:
            self._flush()
            idle = self._idle_heap  # _flush may have rebuilt the heaps
        if (idle and idle[0][0] <= vt) or (self._busy_wakeups and self._busy_wakeups[0][0] <= vt):
            self._wake()
        if exclude:
            return self._acquire_excluding(exclude)
        ready = self._ready_heap
        while ready and ready[0][3] != stamp[ready[0][2]]:
            heappop(ready)
        if ready and not ready[0][0]:
            # the common case: a ready key with no connection, which nothing beats
            pos = heappop(ready)[2]
        else:
            while idle and idle[0][2] != stamp[idle[0][1]]:
                heappop(idle)
            if idle:  # no connection beats any ready key's positive ratio
                pos = heappop(idle)[1]
            else:
                busy = self._busy_heap
                while busy and busy[0][3] != stamp[busy[0][2]]:
                    heappop(busy)
                # ready keys win ratio ties: that is the smooth tie-break
                if ready and not (busy and busy[0][0] < ready[0][0]):
                    pos = heappop(ready)[2]
                elif busy:
                    pos = heappop(busy)[2]
                else:
                    return None
        self._advance(pos)
        return self._keys[pos]

    def take(self, key: str) -> None:
        """Count one connection on ``key`` as if :meth:`acquire` had chosen it, amortised
        O(log n) (a key that is not eligible is counted as draining)."""
        pos = self._index.get(key)
        if pos is None:
            self._draining[key] = self._draining.get(key, 0) + 1
            return
        if self._pending >= 0:
            self._flush()
        self._stamp[pos] += 1  # its queued entry is stale now
        self._advance(pos)

    def release(self, key: str) -> None:
        """One connection on ``key`` ended; never below 0, unknown keys ignored, amortised
        O(log n)."""
        self.release_open(key)

    def release_open(self, key: str) -> bool:
        """:meth:`release`, saying whether ``key`` had a connection to release.

        The scheduler's fast path uses the answer instead of asking :meth:`count` first.
        """
        pos = self._index.get(key)
        if pos is None:
            count = self._draining.get(key, 0)
            if count > 1:
                self._draining[key] = count - 1
            elif count == 1:
                del self._draining[key]
            return count > 0
        count = self._load[pos]
        if not count:
            return False
        self._load[pos] = count - 1
        if pos != self._pending:  # a pending key is queued with its count at the flush
            self._requeue(pos)
        return True

    def count(self, key: str) -> int:
        """Open connections on ``key`` (0 if unknown), O(1)."""
        # index and counts read together: an operator's thread may ask while the scheduler's
        # set_eligible swaps both, and a position is only meaningful in its own list
        index, load = self._index, self._load
        pos = index.get(key)
        if pos is None:
            return self._draining.get(key, 0)
        return load[pos]

    def forget(self, keys: Iterable[str]) -> None:
        """Drop the counts of ``keys`` (their later releases are ignored), O(k log n)."""
        for key in keys:
            self._draining.pop(key, None)
            pos = self._index.get(key)
            if pos is not None and self._load[pos]:
                self._load[pos] = 0
                if pos != self._pending:
                    self._requeue(pos)

    def __repr__(self) -> str:
        eligible = ", ".join(f"{k}={n}" for k, n in zip(self._keys, self._load, strict=True))
        draining = ", ".join(f"{k}={n}" for k, n in self._draining.items())
        return f"<LocalLedger eligible [{eligible}] draining [{draining}]>"

    # -- internals ---------------------------------------------------------------------------
    #
    # Every key has exactly one current entry in the ready, idle or busy heap (the one with
    # its stamp), except the key acquired last: it stays out of the heaps ("pending") until
    # the next acquire, so the usual acquire-then-release of a key queues it once, not twice.

    def _advance(self, pos: int) -> None:
        """Count one connection on ``pos`` (out of the heaps) and move it one pick along the
        schedule; it stays pending until the next acquire or take."""
        u = self._unit[pos]
        self._load[pos] += 1
        vt = self._vt
        nvt = vt + self._step
        self._vt = nvt
        s = self._start[pos] + u
        # In a pure WF2Q run neither clamp binds (S stays within one pick of V); they only
        # forget service missed or taken in advance while ratios, not ties, decided.
        if s < vt:
            s = vt
        elif s > nvt + u:
            s = nvt + u
        self._start[pos] = s
        self._state[pos] = _PENDING
        self._pending = pos

    def _flush(self) -> None:
        """Queue the pending key with its current count and schedule place."""
        pos = self._pending
        self._pending = -1
        mark = self._stamp[pos] + 1
        self._stamp[pos] = mark
        u = self._unit[pos]
        s = self._start[pos]
        count = self._load[pos]
        if s <= self._vt:
            self._state[pos] = _READY
            heappush(self._ready_heap, (count * u, s + u, pos, mark))
        elif count:
            self._state[pos] = _BUSY
            heappush(self._busy_heap, (count * u, s, pos, mark))
            heappush(self._busy_wakeups, (s, pos))
        else:
            self._state[pos] = _IDLE
            heappush(self._idle_heap, (s, pos, mark))
        self._pushes += 1
        if self._pushes > self._limit:
            self._rebuild_heaps()

    def _requeue(self, pos: int) -> None:
        """Queue ``pos`` again after its count went down (its old entry turns stale)."""
        mark = self._stamp[pos] + 1
        self._stamp[pos] = mark
        u = self._unit[pos]
        s = self._start[pos]
        count = self._load[pos]
        state = self._state[pos]
        if state == _READY:
            heappush(self._ready_heap, (count * u, s + u, pos, mark))
        elif count:  # busy stays busy; its wakeup entry stays current
            heappush(self._busy_heap, (count * u, s, pos, mark))
        else:  # busy turns idle: the idle heap wakes it from now on
            self._state[pos] = _IDLE
            heappush(self._idle_heap, (s, pos, mark))
        self._pushes += 1
        if self._pushes > self._limit:
            self._rebuild_heaps()

    def _wake(self) -> None:
        """Make the waiting keys whose S the clock has reached ready."""
        vt, stamp, state, unit, ready = self._vt, self._stamp, self._state, self._unit, []
        idle = self._idle_heap
        while idle and idle[0][0] <= vt:
            s, pos, mark = heappop(idle)
            if stamp[pos] == mark:
                ready.append((pos, s))
        wakeups, start = self._busy_wakeups, self._start
        while wakeups and wakeups[0][0] <= vt:
            s, pos = heappop(wakeups)
            # S only grows, and a key turns busy again only through a pick, which moves S
            if state[pos] == _BUSY and start[pos] == s:
                ready.append((pos, s))
        for pos, s in ready:
            mark = stamp[pos] + 1
            stamp[pos] = mark
            state[pos] = _READY
            u = unit[pos]
            heappush(self._ready_heap, (self._load[pos] * u, s + u, pos, mark))

    def _acquire_excluding(self, exclude: AbstractSet[str]) -> str | None:
        """:meth:`acquire` when some keys are excluded: set the excluded tops aside, choose
        as acquire does, put them back."""
        keys, stamp = self._keys, self._stamp
        held: list[tuple[list[Any], Any]] = []

        def top(heap: list[Any], pos_at: int) -> Any:
            while heap:
                entry = heap[0]
                if entry[-1] != stamp[entry[pos_at]]:
                    heappop(heap)
                elif keys[entry[pos_at]] in exclude:
                    held.append((heap, heappop(heap)))
                else:
                    return entry
            return None

        ready_top = top(self._ready_heap, 2)
        idle_top = top(self._idle_heap, 1) if ready_top is None or ready_top[0] else None
        busy_top = top(self._busy_heap, 2) if idle_top is None else None
        if ready_top is not None and not ready_top[0]:
            pos = heappop(self._ready_heap)[2]
        elif idle_top is not None:
            pos = heappop(self._idle_heap)[1]
        elif ready_top is not None and not (busy_top and busy_top[0] < ready_top[0]):
            pos = heappop(self._ready_heap)[2]
        elif busy_top is not None:
            pos = heappop(self._busy_heap)[2]
        else:
            pos = -1
        for heap, entry in held:
            heappush(heap, entry)
        if pos < 0:
            return None
        self._advance(pos)
        return keys[pos]

    def _rebuild_heaps(self) -> None:
        """Rebuild the heaps from the per-key state alone, dropping every stale entry, O(n)."""
        self._pending = -1
        ready: list[tuple[int, int, int, int]] = []
        idle: list[tuple[int, int, int]] = []
        busy: list[tuple[int, int, int, int]] = []
        wakeups: list[tuple[int, int]] = []
        vt, stamp, state = self._vt, self._stamp, self._state
        for pos, (count, u, s) in enumerate(zip(self._load, self._unit, self._start, strict=True)):
            mark = stamp[pos] + 1
            stamp[pos] = mark
            if s <= vt:
                state[pos] = _READY
                ready.append((count * u, s + u, pos, mark))
            elif count:
                state[pos] = _BUSY
                busy.append((count * u, s, pos, mark))
                wakeups.append((s, pos))
            else:
                state[pos] = _IDLE
                idle.append((s, pos, mark))
        heapify(ready)
        heapify(idle)
        heapify(busy)
        heapify(wakeups)
        self._ready_heap, self._idle_heap, self._busy_heap = ready, idle, busy
        self._busy_wakeups = wakeups
        self._pushes = 0
        # amortised: a rebuild costs O(n) and comes once per 2n + 64 queueings
        self._limit = _MIN_HEAP_LIMIT + 2 * len(self._keys)


_MIN_HEAP_LIMIT = 64
_READY, _IDLE, _BUSY, _PENDING = range(4)  # where a key's current entry is (see _advance)
