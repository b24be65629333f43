"""nginx's ``least_conn`` as a connection ledger: the same peer, pick for pick, off the O(n) scan.

nginx (``ngx_http_upstream_get_least_conn_peer``) takes the peers with the lowest
``conns / weight``; if several tie, it runs one step of smooth weighted round robin over the
tied peers only: each adds its effective weight to its ``current_weight``, the largest wins
(the first in upstream order on a tie) and loses the tied peers' total. A lone lowest peer is
taken with no bookkeeping at all. Peers outside the tied set never move.

Here peers are grouped into *classes* of equal ratio (kept as exact integers ``conns * M /
weight``, ``M`` a common multiple of the weights). A tie step adds each member's weight to its
current weight, so a class only counts its steps (``ticks``) and each member stores
``current_weight - weight * ticks`` taken when it joined: fixed while it stays, and within one
weight the order by it is the order by current weight. So the winner of a step is the best of
the heap tops of the class's distinct weights, and a pick or release moves one peer between
two classes. Cost: O(D + log n) a pick or release, D the number of distinct weights in the
tied class (at most 100; usually a handful), where nginx is O(n); the D part is one C-level
``max`` over packed integer keys, the rest Python. Picks that exclude tried
peers, and the picks while a peer's effective weight climbs back after a failure, take
nginx's exact O(n) step over materialized state instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from heapq import heapify, heappop, heappush
from itertools import repeat
from operator import add, mul

from lbalgo._slowstart import RAMP_STEPS
from lbalgo.backend import MAX_BACKENDS
from lbalgo.ledger import checked_eligible

__all__ = ["NginxLeastConnLedger"]


# A leader's pick key packs its current weight and position, value * _SCALE + (_SCALE - 1 -
# pos), so one C-level max() over ints finds the largest value and, among equals, the first.
_SCALE = 512
assert _SCALE > MAX_BACKENDS
_LAST = _SCALE - 1
_NONE = -(1 << 200)  # the key of an emptied weight's place: below any real key


class _Class:
    """The peers sharing one ratio. Each distinct weight has a place ``k``: ``heaps[k]`` of
    ``(-(current - weight * ticks), position, stamp)``, ``keys[k]`` its leader's packed key
    at tick 0 and ``slopes[k]`` = weight * _SCALE, so the leaders' keys now are
    ``keys + slopes * ticks``, compared in C."""

    __slots__ = ("heaps", "keys", "live", "place", "size", "slopes", "ticks", "total")

    def __init__(self) -> None:
        self.ticks = 0
        self.total = 0
        self.size = 0
        self.place: dict[int, int] = {}  # weight -> its place
        self.heaps: list[list[tuple[int, int, int]]] = []
        self.keys: list[int] = []
        self.slopes: list[int] = []
        self.live: list[int] = []  # members by place


class NginxLeastConnLedger:
    """In-process ledger choosing exactly as nginx's ``least_conn`` (see the module doc).

    Weights arrive as in every ledger, in units of ``1 / RAMP_STEPS``; nginx's arithmetic on
    effective weights needs whole weights, so each must be a multiple of ``RAMP_STEPS`` (no
    slow-start ramp). State of keys that leave the eligible set (down, suspended) is kept:
    their counts drain and their current weights wait for their return, as nginx's skipped
    peers keep theirs.

    >>> ledger = NginxLeastConnLedger()
    >>> ledger.set_eligible([("a", 3 * RAMP_STEPS), ("b", 1 * RAMP_STEPS)])
    >>> [ledger.acquire() for _ in range(3)]  # a tie at 0/3 = 0/1, then 1/3 < 1/1...
    ['a', 'b', 'a']
    """

    def __init__(self) -> None:
        self._keys: list[str] = []
        self._index: dict[str, int] = {}
        self._weight: list[int] = []  # nginx's weight
        self._effective: list[int] = []  # nginx's effective_weight
        self._conns: list[int] = []
        self._base: list[int] = []  # current_weight - weight * ticks of its class at entry
        self._ratio: list[int] = []  # the class it is in
        self._stamp: list[int] = []
        self._unit: list[int] = []  # M // weight
        self._classes: dict[int, _Class] = {}
        # min-heap of class ratios: a class stays (maybe empty, reused) while its ratio is in
        # it, and is dropped when its ratio comes to the top empty
        self._ratios: list[int] = []
        self._recovering = 0  # peers whose effective weight is below their weight
        # known keys that are not eligible: (conns, current_weight, effective_weight, weight)
        self._parked: dict[str, tuple[int, int, int, int]] = {}

    # -- the ConnectionLedger interface ------------------------------------------------------

    def set_eligible(self, weights: Sequence[tuple[str, int]]) -> None:
        """Replace the eligible set, keeping every known key's count and current weight, O(n).
        ``ValueError`` naming the key and value for a weight that is not a whole weight."""
        entries = list(checked_eligible(weights).items())
        for key, weight in entries:
            if weight % RAMP_STEPS:
                raise ValueError(
                    f"nginx least_conn needs whole weights (no slow start): {key} has "
                    f"{weight}/{RAMP_STEPS}"
                )
        self._parked.update(self._snapshot())
        self._keys = [key for key, _ in entries]
        self._index = {key: i for i, key in enumerate(self._keys)}
        self._weight = [weight // RAMP_STEPS for _, weight in entries]
        restored = [
            self._parked.pop(key, (0, 0, weight, weight))
            for key, weight in zip(self._keys, self._weight, strict=True)
        ]
        self._conns = [conns for conns, _, _, _ in restored]
        # a new weight caps the effective weight; a raised one is climbed to one step a time
        self._effective = [
            min(effective, weight)
            for (_, _, effective, _), weight in zip(restored, self._weight, strict=True)
        ]
        self._rebuild([current for _, current, _, _ in restored])

    def acquire(self, exclude: AbstractSet[str] = frozenset()) -> str | None:
        """nginx's choice among the eligible keys not in ``exclude``, counted: O(D + log n)
        without ``exclude`` and at full effective weights, else nginx's O(n) step."""
        if exclude or self._recovering:
            return self._acquire_exact(exclude)
        ratio = self._min_ratio()
        if ratio is None:
            return None
        group = self._classes[ratio]
        if group.size == 1:
            pos = self._top(group)  # a lone lowest peer: nginx moves no current weight
            self._move(pos, self._conns[pos] + 1, self._current(pos))
            return self._keys[pos]
        group.ticks += 1
        pos = self._top(group)
        self._move(pos, self._conns[pos] + 1, self._current(pos) - group.total)
        return self._keys[pos]

    def take(self, key: str) -> None:
        """Count one connection on ``key`` chosen elsewhere (current weights do not move)."""
        pos = self._index.get(key)
        if pos is None:
            parked = self._parked.get(key)
            if parked is not None:
                self._parked[key] = (parked[0] + 1, *parked[1:])
            return
        self._move(pos, self._conns[pos] + 1, self._current(pos))

    def release(self, key: str) -> None:
        """One connection on ``key`` ended (never below 0; unknown keys ignored)."""
        self.release_open(key)

    def release_open(self, key: str) -> bool:
        """:meth:`release`, saying whether ``key`` had a connection to release."""
        pos = self._index.get(key)
        if pos is None:
            parked = self._parked.get(key)
            if parked is None or not parked[0]:
                return False
            self._parked[key] = (parked[0] - 1, *parked[1:])
            return True
        if not self._conns[pos]:
            return False
        self._move(pos, self._conns[pos] - 1, self._current(pos))
        return True

    def failed(self, key: str, max_fails: int) -> None:
        """A failure reported on ``key``: nginx lowers its effective weight by
        ``weight // max_fails`` (not below 0); it climbs back by one per tie step."""
        if max_fails <= 0:
            return
        pos = self._index.get(key)
        if pos is None:
            parked = self._parked.get(key)
            if parked is not None:  # a suspended peer's effective weight drops all the same
                conns, current, effective, weight = parked
                effective = max(effective - weight // max_fails, 0)
                self._parked[key] = (conns, current, effective, weight)
            return
        weight = self._weight[pos]
        before = self._effective[pos]
        self._effective[pos] = max(before - weight // max_fails, 0)
        if before == weight and self._effective[pos] < weight:
            self._recovering += 1

    def count(self, key: str) -> int:
        """Open connections on ``key`` (0 if unknown), O(1)."""
        pos = self._index.get(key)
        if pos is None:
            return self._parked.get(key, (0, 0, 0, 0))[0]
        return self._conns[pos]

    def forget(self, keys: Iterable[str]) -> None:
        """Drop everything known about ``keys`` (they left the group); O(n) if one of them
        is still eligible, else O(k)."""
        gone = set(keys)
        for key in gone:
            self._parked.pop(key, None)
        if any(key in self._index for key in gone):
            current = [self._current(pos) for pos in range(len(self._keys))]
            for key in gone:
                pos = self._index.get(key)
                if pos is not None:
                    self._conns[pos] = current[pos] = 0
                    self._effective[pos] = self._weight[pos]
            self._rebuild(current)

    def current_weights(self) -> dict[str, int]:
        """Every eligible key's nginx ``current_weight``, O(n) (for tests and ``stats``)."""
        return {key: self._current(pos) for pos, key in enumerate(self._keys)}

    def _check(self) -> None:
        """Assert every internal invariant (stateful tests call this after each step)."""
        live: dict[int, list[int]] = {}
        for pos, key in enumerate(self._keys):
            assert self._index[key] == pos
            assert 0 <= self._effective[pos] <= self._weight[pos]
            assert self._conns[pos] >= 0
            assert self._ratio[pos] == self._conns[pos] * self._unit[pos]
            live.setdefault(self._ratio[pos], []).append(pos)
        assert set(live) <= set(self._classes) == set(self._ratios)
        assert len(self._ratios) == len(self._classes)
        for ratio, group in self._classes.items():
            members = live.get(ratio, [])
            assert group.size == len(members)
            assert group.total == sum(self._weight[p] for p in members)
            for weight, k in group.place.items():
                fresh = [e for e in group.heaps[k] if e[2] == self._stamp[e[1]]]
                assert len(fresh) == group.live[k]
                assert {e[1] for e in fresh} == {p for p in members if self._weight[p] == weight}
                if fresh:
                    top = group.heaps[k][0]
                    assert top[2] == self._stamp[top[1]]  # the leader is never stale
                    assert group.keys[k] == -top[0] * _SCALE + _LAST - top[1]
                    assert group.slopes[k] == weight * _SCALE
                else:
                    assert group.keys[k] == _NONE
        assert self._recovering == sum(
            e < w for e, w in zip(self._effective, self._weight, strict=True)
        )
        assert not set(self._parked) & set(self._index)

    # -- internals ---------------------------------------------------------------------------

    def _current(self, pos: int) -> int:
        return self._base[pos] + self._weight[pos] * self._classes[self._ratio[pos]].ticks

    def _snapshot(self) -> dict[str, tuple[int, int, int, int]]:
        return {
            key: (self._conns[pos], self._current(pos), self._effective[pos], self._weight[pos])
            for pos, key in enumerate(self._keys)
        }

    def _rebuild(self, current: list[int]) -> None:
        """All classes from counts and current weights, O(n)."""
        weights = set(self._weight)
        scale = math.lcm(*weights) if weights else 1
        self._unit = [scale // weight for weight in self._weight]
        self._stamp = [0] * len(self._keys)
        self._base = list(current)
        self._ratio = [c * u for c, u in zip(self._conns, self._unit, strict=True)]
        self._classes = {}
        for pos, ratio in enumerate(self._ratio):
            group = self._classes.get(ratio)
            if group is None:
                group = self._classes[ratio] = _Class()
            weight = self._weight[pos]
            group.size += 1
            group.total += weight
            k = self._place(group, weight)
            group.live[k] += 1
            group.heaps[k].append((-current[pos], pos, 0))
        for group in self._classes.values():
            for k, heap in enumerate(group.heaps):
                heapify(heap)
                self._lead(group, k)
        self._ratios = list(self._classes)
        heapify(self._ratios)
        self._recovering = sum(
            e < w for e, w in zip(self._effective, self._weight, strict=True)
        )

    def _min_ratio(self) -> int | None:
        ratios, classes = self._ratios, self._classes
        while ratios and not classes[ratios[0]].size:
            del classes[heappop(ratios)]
        return ratios[0] if ratios else None

    @staticmethod
    def _place(group: _Class, weight: int) -> int:
        k = group.place.get(weight)
        if k is None:
            k = group.place[weight] = len(group.heaps)
            group.heaps.append([])
            group.keys.append(_NONE)
            group.slopes.append(weight * _SCALE)
            group.live.append(0)
        return k

    def _lead(self, group: _Class, k: int) -> None:
        """Drop stale entries off place ``k``'s heap top and record its leader's key."""
        heap, stamp = group.heaps[k], self._stamp
        while heap and heap[0][2] != stamp[heap[0][1]]:
            heappop(heap)
        if heap:
            negated, pos, _ = heap[0]
            group.keys[k] = -negated * _SCALE + _LAST - pos
        else:
            group.keys[k] = _NONE

    @staticmethod
    def _top(group: _Class) -> int:
        """The member with the largest current weight, the first in order on a tie: one
        C-level max over the leaders of the class's distinct weights."""
        best: int = max(map(add, group.keys, map(mul, group.slopes, repeat(group.ticks))))
        return _LAST - best % _SCALE

    def _move(self, pos: int, conns: int, current: int) -> None:
        """Set ``pos``'s count and current weight, moving it to the class of its new ratio."""
        weight = self._weight[pos]
        classes = self._classes
        old = classes[self._ratio[pos]]
        stamp = self._stamp
        stamp[pos] += 1
        # an emptied class stays, places and all, for reuse while its ratio is in the heap
        old.size -= 1
        old.total -= weight
        k = old.place[weight]
        old.live[k] -= 1
        self._lead(old, k)
        self._conns[pos] = conns
        ratio = self._ratio[pos] = conns * self._unit[pos]
        group = classes.get(ratio)
        if group is None:
            group = classes[ratio] = _Class()
            heappush(self._ratios, ratio)
        group.size += 1
        group.total += weight
        place = group.place.get(weight)
        k = self._place(group, weight) if place is None else place
        group.live[k] += 1
        base = self._base[pos] = current - weight * group.ticks
        heap = group.heaps[k]
        heappush(heap, (-base, pos, stamp[pos]))
        if heap[0][1] == pos:
            group.keys[k] = base * _SCALE + _LAST - pos
        if len(heap) > 2 * group.live[k] + 16:
            # drop stale entries now and then, so a class that lives long stays small
            heap[:] = [e for e in heap if e[2] == stamp[e[1]]]
            heapify(heap)

    def _acquire_exact(self, exclude: AbstractSet[str]) -> str | None:
        """nginx's two loops over materialized state, O(n), then the classes rebuilt."""
        keys, weight, conns, effective = self._keys, self._weight, self._conns, self._effective
        candidates = [pos for pos, key in enumerate(keys) if key not in exclude]
        if not candidates:
            return None
        current = [self._current(pos) for pos in range(len(keys))]
        best = candidates[0]
        many = False
        for pos in candidates[1:]:
            if conns[pos] * weight[best] < conns[best] * weight[pos]:
                best, many = pos, False
            elif conns[pos] * weight[best] == conns[best] * weight[pos]:
                many = True
        total = 0
        if many:
            tied = [p for p in candidates if conns[p] * weight[best] == conns[best] * weight[p]]
            for pos in tied:
                current[pos] += effective[pos]
                total += effective[pos]
                if effective[pos] < weight[pos]:
                    effective[pos] += 1
                if current[pos] > current[best]:
                    best = pos
        current[best] -= total
        conns[best] += 1
        self._rebuild(current)
        return keys[best]
