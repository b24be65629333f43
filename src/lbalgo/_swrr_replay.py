"""The replay behind :class:`~lbalgo.SmoothWeightedRoundRobin`: nginx's sequence generated
one weight class at a time (:class:`ClassGenerator`), proven periodic, and replayed
(:class:`Epoch`); :func:`unscale` folds a ramp's fine current weights back to whole ones.

See ``docs/algorithms/swrr.md`` for the design.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Iterator, Sequence
from heapq import heapify, heapreplace
from itertools import compress, repeat
from operator import add, itemgetter
from typing import TypeAlias

from lbalgo._counter import count_of
from lbalgo._slot import Slot
from lbalgo._slowstart import RAMP_STEPS
from lbalgo.backend import MAX_BACKENDS, Backend

__all__ = ["EMPTY", "ClassGenerator", "Epoch", "Stream", "unscale"]

# A pick key packs a current weight and the peer's position: value * _SCALE + (_SCALE - 1 - i),
# so one max() over ints finds the largest value and, among equals, the first peer.
_SCALE = 512
assert _SCALE > MAX_BACKENDS
_WINDOW = 16  # generator steps that share one choice of candidate classes

# What the lock-free fast path draws from: (slot, its backend, its pick count before this
# pick); one next() on it advances the rotation and counts the pick in a single C call.
Stream: TypeAlias = Iterator[tuple[Slot, Backend, int]]
EMPTY: Stream = iter(())


class ClassGenerator:
    """nginx's loop for fixed weights, run one *weight class* at a time, not one peer.

    Peers of equal weight gain the same amount every step, so their order within the class
    only changes when one of them is picked: a heap per class (keyed by the current weight
    minus what the class gained since the start) gives the class's leader, and a step takes
    the max over the leaders of D <= 100 classes. A leader's pick key grows linearly with the
    step number (``key(S) = base + (S - S0) * inc``), and the max over the next ``_WINDOW``
    steps is at least the (_WINDOW + 1)-th largest key now (at most _WINDOW classes can be
    picked meanwhile, and a picked class's leader never rises above its old line), so each
    window only looks at the classes that can reach that bound: about a fifth of them for
    random weights. Every per-class operation is a C-level ``map``/``max`` over ints.
    """

    __slots__ = ("_alone", "_base", "_class_of", "_heaps", "_inc", "_rows", "steps", "total")

    def __init__(self, weights: Sequence[int], current: Sequence[int]) -> None:
        self.total = sum(weights)
        self.steps = 0  # picks generated so far
        members: dict[int, list[int]] = {}
        for i, weight in enumerate(weights):
            members.setdefault(weight, []).append(i)
        self._class_of = [0] * len(weights)
        # per class: heap of (-(C_i - steps * w), i); its top is the class's leader
        self._heaps: list[list[tuple[int, int]]] = []
        for c, positions in enumerate(members.values()):
            heap = [(-current[i], i) for i in positions]
            heapify(heap)
            self._heaps.append(heap)
            for i in positions:
                self._class_of[i] = c
        self._inc = [weight * _SCALE for weight in members]
        self._alone = [len(heap) == 1 for heap in self._heaps]
        self._rows = [[s * inc for inc in self._inc] for s in range(_WINDOW + 1)]
        # every class's pick key at the next step (number steps + 1)
        self._base = [self._key(c, 1) for c in range(len(self._heaps))]

    def _key(self, c: int, step: int) -> int:
        """Class ``c``'s leader's pick key at ``step``: its value then, and its position."""
        negated, i = self._heaps[c][0]
        return (step * self._inc[c] - negated * _SCALE) + (_SCALE - 1 - i)

    def run(self, count: int) -> list[int]:
        """The positions of the next ``count`` picks."""
        base, inc, rows, heaps = self._base, self._inc, self._rows, self._heaps
        class_of, alone, total = self._class_of, self._alone, self.total
        scale, last = _SCALE, _SCALE - 1
        drop = total * scale
        classes = range(len(heaps))
        out: list[int] = []
        append = out.append
        while len(out) < count:
            span = min(_WINDOW, count - len(out))
            start = self.steps + 1  # the step the keys in base are for
            if len(base) > _WINDOW + 1:
                bound = sorted(base, reverse=True)[_WINDOW]  # C sort beats heapq.nlargest
                reach = map(add, base, rows[span - 1])
                candidates = list(compress(classes, map(operator.le, repeat(bound), reach)))
            else:
                candidates = list(classes)
            # the candidates' keys at the window's start, and their growth s steps later
            keys = [base[c] for c in candidates]
            if len(candidates) > 1:
                growth = list(map(itemgetter(*candidates), rows[:span]))
            else:
                growth = [(row[candidates[0]],) for row in rows[:span]]
            where = {c: j for j, c in enumerate(candidates)}
            for row in growth:
                key = max(map(add, keys, row))
                i = last - key % scale
                append(i)
                c = class_of[i]
                heap = heaps[c]
                heapreplace(heap, (heap[0][0] + total, i))
                if alone[c]:
                    keys[where[c]] -= drop  # same peer, lower by the total, same line
                else:
                    negated, leader = heap[0]
                    keys[where[c]] = start * inc[c] - negated * scale + (last - leader)
            for j, c in enumerate(candidates):
                base[c] = keys[j]
            self.steps += span
            base = list(map(add, base, rows[span]))
        self._base = base
        return out

    def current(self) -> list[int]:
        """Every peer's current weight after the picks generated so far, O(n)."""
        out = [0] * len(self._class_of)
        for heap, inc in zip(self._heaps, self._inc, strict=True):
            gained = self.steps * (inc // _SCALE)
            for negated, i in heap:
                out[i] = gained - negated
        return out

    def _check(self) -> None:
        """Assert every class's heap is a heap of its own peers."""
        for c, heap in enumerate(self._heaps):
            assert all(heap[(i - 1) // 2] <= heap[i] for i in range(1, len(heap)))
            assert all(self._class_of[i] == c for _, i in heap)


class Epoch:
    """The peers taking part since the last change, and where their rotation stands.

    ``start`` holds the current weights at the epoch's origin. While the sequence is being
    generated (``cycle`` is None), ``recent`` holds the last picks generated (at least W of
    them once there are) and ``counts`` how often each peer appears among the last W. When
    those W picks gave every peer exactly its weight, the state after them equals the state
    before them, so the sequence repeats them forever: ``cycle`` holds them and ``start``
    becomes the state at the cycle's first pick.

    How many picks were drawn is read without a ticket on the fast path: from the chunk's
    list iterator while generating, and from the pick counters once cycling.
    """

    __slots__ = (
        "chunk",
        "chunk_end",
        "counted",
        "counts",
        "cycle",
        "generator",
        "keys",
        "offset",
        "recent",
        "slots",
        "start",
        "target",
        "weights",
    )

    def __init__(self, slots: tuple[Slot, ...], weights: tuple[int, ...], start: list[int]):
        self.slots = slots
        self.weights = weights
        self.keys = frozenset(slot.key for slot in slots)
        self.start = start
        self.target = Counter(dict(enumerate(weights)))
        self.generator: ClassGenerator | None = None
        self.recent: list[int] = []
        self.counts: Counter[int] = Counter()
        self.chunk: Iterator[Slot] = iter(())  # the slots of the chunk being drawn
        self.chunk_end = 0  # picks generated up to the end of that chunk
        self.cycle: tuple[int, ...] | None = None
        self.offset = 0  # cycle position at which the replay stream started
        self.counted = 0  # pick counters' sum over the epoch's slots when it started

    def drawn(self, takes: int) -> int:
        """Picks drawn so far: from the origin while generating, within the cycle after."""
        if self.cycle is None:
            return self.chunk_end - operator.length_hint(self.chunk)
        picks = sum(count_of(slot.picks) for slot in self.slots)
        return (self.offset + picks - self.counted - takes) % len(self.cycle)

    def current(self, takes: int) -> list[int]:
        """The exact current weights after every pick drawn so far, O(n + W) at worst.

        ``takes``: picks counted on these slots by other means since the replay started.
        """
        drawn = self.drawn(takes)
        total = sum(self.weights)
        if self.cycle is not None:
            # C(p) = C(0) + p * w - W * (picks within the first p of the cycle)
            got = Counter(self.cycle[:drawn])
            return [
                c + drawn * w - total * got[i]
                for i, (c, w) in enumerate(zip(self.start, self.weights, strict=True))
            ]
        if self.generator is None:
            return list(self.start)
        # roll back the generated picks not drawn yet (at most one chunk)
        ahead = self.generator.steps - drawn
        got = Counter(self.recent[len(self.recent) - ahead :]) if ahead else Counter()
        return [
            c - ahead * w + total * got[i]
            for i, (c, w) in enumerate(zip(self.generator.current(), self.weights, strict=True))
        ]

    def _check(self) -> None:
        """Assert the replay's invariants: a proven cycle gives every peer exactly its
        weight; while generating, the per-class heaps are heaps and the window counts
        match the last W picks."""
        if self.cycle is not None:
            assert Counter(self.cycle) == self.target
            assert len(self.cycle) == sum(self.weights)
            return
        if self.generator is not None:
            self.generator._check()
            period = self.generator.total
            window = Counter(self.recent[-period:])
            assert +self.counts == window


def unscale(values: Sequence[int]) -> list[int]:
    """Current weights on the fine scale of a ramp (units of ``1 / RAMP_STEPS``) back in whole
    weights, when the last ramp ends: each is divided by :data:`~lbalgo.scheduler.RAMP_STEPS`
    and rounded down or up, by the largest-remainder rule: just enough of them round up for
    the sum to be the old sum divided likewise (rounded half up if not whole), the largest
    remainders first, ties in group order. So each value moves by less than 1, and a sum of
    0, which nginx's current weights keep (each step adds the total and takes it away once),
    stays 0.

    >>> unscale([40, -40, 0]), unscale([48, -36, -12]), unscale([16, 16, -32])
    ([1, -1, 0], [1, -1, 0], [1, 0, -1])
    """
    floors = [value // RAMP_STEPS for value in values]
    target = (sum(values) + RAMP_STEPS // 2) // RAMP_STEPS
    ups = target - sum(floors)  # from 0 to len(values): remainders are below RAMP_STEPS
    by_remainder = sorted(
        range(len(values)), key=lambda i: (floors[i] * RAMP_STEPS - values[i], i)
    )
    for i in by_remainder[:ups]:
        floors[i] += 1
    return floors


