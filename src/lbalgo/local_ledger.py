"""The in-process connection ledger: exact weighted least connections with a smooth
tie-break, O(log n) per operation. See ``docs/algorithms/wlc.md`` for the design."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from heapq import heappop, heappush, heappushpop

from lbalgo._validate import integer, shown
from lbalgo._wf2q import ACCELERATED, IDLE, OUT, PENDING, WF2QSchedule
from lbalgo.ledger import MAX_FINE_WEIGHT, checked_eligible

__all__ = ["ACCELERATED", "LocalLedger", "PurePythonLedger"]


class LocalLedger(WF2QSchedule):
    """The in-process ledger: exact least connections with a smooth tie-break, O(log n).

    The default ledger of :class:`~lbalgo.WeightedLeastConnections`. Each eligible key has a
    load ratio ``count / weight`` and a place in a weighted fair-queueing schedule (WF2Q,
    Bennett and Zhang 1996): a virtual start ``S`` (the service it has had, over its weight)
    and finish ``F = S + 1/weight``, against a virtual clock ``V`` that advances by
    ``1/total_weight`` per acquire. A key is *ready* when ``S <= V``. :meth:`acquire` takes
    the lowest ratio; among equal ratios a ready key with the earliest ``F``, else a waiting
    key with the earliest ``S``; then group order.

    The WF2Q rule keeps every key within one pick of its weighted share in every prefix of
    a light-load sequence (where all ratios tie), where a plain earliest-deadline tie-break
    would give a heavy key its picks in a burst; a key's lead or lag is clamped to one pick
    at its next acquire, so after heavy load nobody gets a burst of catch-up picks. Ratios
    and virtual times are exact integers on a common scale (see ``docs/algorithms/wlc.md``
    for the design and :class:`~lbalgo.testing.reference.FractionLedger` for the rule in
    ``Fraction`` arithmetic).

    Complexity: :meth:`acquire`, :meth:`take`, :meth:`release` and :meth:`set_weight`
    amortised O(log n) (heaps with lazy deletion), :meth:`count` O(1), :meth:`set_eligible`
    O(n). No lock of its own: its scheduler calls it under the scheduler's lock.

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

    __slots__ = ()

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
        old_vt, old_scale, old_state = self._vt, self._scale, self._state
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
            if old is None or old_state[old] == OUT:
                count = draining.pop(key, 0) if old is None else old_load[old]
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
        self._state = [PENDING] * len(keys)
        self._stamp = [0] * len(keys)
        self._weight = [weight for _, weight in entries]
        self._set_total(total, scale)
        self._cap = scale << 64
        self._vt = 0
        self._rem = 0
        self._rebuild_heaps()

    def set_weight(self, key: str, weight: int) -> bool:
        """Change one key's weight (0: it leaves the eligible set and drains), O(log n).

        What a health mark, a suspension or a slow-start step needs, without rebuilding the
        others: ``key`` keeps its count and its place in the schedule (clamped to one pick
        of the clock at the new weight; a key coming back starts level with the clock), the
        other keys keep theirs, and the clock keeps its whole part (its fraction below
        ``1 / M`` is dropped: the total it advances by has changed). ``False`` (nothing
        changed) if ``key`` has no place in group order here (it was not eligible at the
        last :meth:`set_eligible`): the caller then lists the whole set again. A weight that
        does not divide the scale ``M`` grows it (O(n) once: every start is rescaled
        exactly), and past ``2**64`` times the scale of the last :meth:`set_eligible` the
        ledger is rebuilt as that call would. :class:`~lbalgo.InvalidOptionError` (a
        ``ValueError``) naming the key and the value for a weight outside 0..3200, with
        nothing changed.

        >>> ledger = LocalLedger()
        >>> ledger.set_eligible([("a", 3), ("b", 1)])
        >>> ledger.set_weight("a", 0), ledger.acquire(), ledger.set_weight("a", 3)
        (True, 'b', True)
        >>> ledger.acquire(), ledger.set_weight("c", 1)
        ('a', False)
        """
        integer(f"weight of {shown(key)}", weight, 0, MAX_FINE_WEIGHT)
        pos = self._index.get(key)
        if pos is None:
            return not weight  # 0 for a key that is not eligible: nothing to do
        old = self._weight[pos]
        if weight == old:
            return True
        if self._pending >= 0:
            self._flush()
        scale = self._scale
        if weight and scale % weight:
            grown = math.lcm(scale, weight)
            if grown > self._cap:
                weights = list(self._weight)
                weights[pos] = weight
                self.set_eligible([(k, w) for k, w in zip(self._keys, weights, strict=True) if w])
                return True
            self._rescale(grown // scale)
            scale = grown
        self._rem = 0  # the clock keeps its whole part: its rate changes with the total
        vt = self._vt
        self._weight[pos] = weight
        self._stamp[pos] += 1  # its queued entry (if any) is stale now
        self._set_total(self._total - old + weight, scale)
        if not weight:
            self._state[pos] = OUT
            self._unit[pos] = 0
            return True
        u = scale // weight
        lag = self._start[pos] - vt if old else 0
        self._start[pos] = vt + max(-u, min(u, lag))
        self._unit[pos] = u
        self._pending = pos
        self._flush()  # queues it by its state now
        return True

    def acquire(self, exclude: AbstractSet[str] = frozenset()) -> str | None:
        """Take the least-loaded eligible key not in ``exclude`` and count it, amortised
        O(log n) (plus O(k log n) for k excluded keys); ``None`` if no key qualifies."""
        # Every pick runs this: the state is read into locals once, and the common cases
        # (_flush, the tops' staleness checks, _advance) are written out.
        vt = self._vt
        stamp = self._stamp
        ready = self._ready_heap
        idle = self._idle_heap
        pos = self._pending
        parked = None  # the pending key's idle entry, queued together with the pop below
        if pos >= 0:
            # _flush(): the key acquired last has no entry in any heap, so its stamp stays
            self._pending = -1
            s = self._start[pos]
            count = self._load[pos]
            if s > vt and not count:
                self._state[pos] = IDLE
                parked = (s, pos, stamp[pos])
            else:
                self._flush_at(pos, s, count, vt)
                ready, idle = self._ready_heap, self._idle_heap  # a rebuild replaces them
        # (the parked entry cannot wake: its S is past the clock)
        if (idle and idle[0][0] <= vt) or (self._busy_wakeups and self._busy_wakeups[0][0] <= vt):
            self._wake()
        if exclude:
            if parked is not None:
                heappush(idle, parked)
            return self._acquire_excluding(exclude)
        while ready:
            top = ready[0]
            if top[3] == stamp[top[2]]:
                break
            heappop(ready)
        if ready and not ready[0][0]:
            # the common case under load: a ready key with no connection, which nothing beats
            pos = heappop(ready)[2]
            if parked is not None:
                heappush(idle, parked)
        elif parked is not None:
            # no connection beats any ready key's positive ratio: the idle key with the
            # earliest S, the parked one included (queued and popped in one C call)
            first = heappushpop(idle, parked)
            while first[2] != stamp[first[1]]:  # parked is current: this ends
                first = heappop(idle)
            pos = first[1]
        else:
            while idle:
                first = idle[0]
                if first[2] == stamp[first[1]]:
                    break
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
        # _advance(pos), written out
        u = self._unit[pos]
        self._load[pos] += 1
        nvt = vt + self._step
        if self._frac:
            rem = self._rem + self._frac
            if rem >= self._total:
                rem -= self._total
                nvt += 1
            self._rem = rem
        self._vt = nvt
        s = self._start[pos] + u
        if s < vt:
            s = vt
        elif s > nvt + u:
            s = nvt + u
        self._start[pos] = s
        self._state[pos] = PENDING
        self._pending = pos
        return self._keys[pos]

    def take(self, key: str) -> None:
        """Count one connection on ``key`` as if :meth:`acquire` had chosen it, amortised
        O(log n) (a key that is not eligible is counted as draining)."""
        pos = self._index.get(key)
        if pos is None:
            self._draining[key] = self._draining.get(key, 0) + 1
            return
        if self._state[pos] == OUT:
            self._load[pos] += 1
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
        try:
            pos = self._index[key]
        except KeyError:  # not eligible (draining, or unknown)
            count = self._draining.get(key, 0)
            if count > 1:
                self._draining[key] = count - 1
            elif count == 1:
                del self._draining[key]
            return count > 0
        load = self._load
        count = load[pos]
        if not count:
            return False
        load[pos] = count - 1
        # a pending key is queued with its count at the flush; one out is in no heap
        if pos != self._pending and self._state[pos] != OUT:
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
                if pos != self._pending and self._state[pos] != OUT:
                    self._requeue(pos)

    def __repr__(self) -> str:
        out = [(k, n) for k, n, w in zip(self._keys, self._load, self._weight, strict=True) if w]
        eligible = ", ".join(f"{k}={n}" for k, n in out)
        draining = ", ".join(
            [f"{k}={n}" for k, n in self._draining.items()]
            + [
                f"{k}={n}"
                for k, n, w in zip(self._keys, self._load, self._weight, strict=True)
                if not w and n
            ]
        )
        return f"<LocalLedger eligible [{eligible}] draining [{draining}]>"


class PurePythonLedger(LocalLedger):
    """A :class:`~lbalgo.LocalLedger` that runs the pure-Python code of every operation,
    whether or not the C accelerator is built: the reference that the differential tests and
    the benchmarks run side by side with the accelerated ledger. Same state, same answers,
    same complexity.

    >>> ledger = PurePythonLedger()
    >>> ledger.set_eligible([("a", 3), ("b", 1)])
    >>> [ledger.acquire() for _ in range(4)]
    ['a', 'b', 'a', 'a']
    """

    __slots__ = ()

    acquire = LocalLedger.acquire
    release = LocalLedger.release
    release_open = LocalLedger.release_open


if ACCELERATED:
    # The two operations of every request run in C (lbalgo._wf2q_c), on the same fields and
    # with the same answers as the Python methods above, which PurePythonLedger keeps.
    for _name in ("acquire", "release", "release_open"):
        setattr(LocalLedger, _name, getattr(WF2QSchedule.__mro__[1], _name))
