"""Reference models: each algorithm written the plain way, O(n) a step, no cleverness.

They are the yardsticks of lbalgo's own tests and benchmarks, and of users' property tests:
the fast schedulers must make the same choices as these (see ``tests/``), and the benchmarks
compare their cost with these. None needs hypothesis.

- :class:`NginxSmoothRoundRobin`: nginx's ``ngx_http_upstream_get_peer`` loop, exactly;
- :class:`ScanLeastConnections`: weighted least connections by a scan over every backend;
- :class:`FractionLedger`: the rule :class:`~lbalgo.LocalLedger` documents, in exact
  ``Fraction`` arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from fractions import Fraction

from lbalgo.backend import Backend, BackendGroup
from lbalgo.errors import NoBackendAvailable

__all__ = ["FractionLedger", "NginxSmoothRoundRobin", "ScanLeastConnections"]


class NginxSmoothRoundRobin:
    """nginx's smooth weighted round robin as nginx's C loop does it: O(n) a pick.

    Every peer taking part adds its weight to its current weight; the largest wins (the
    first in order on a tie) and loses the total of the weights that took part. Peers that
    are down, of weight 0 or excluded take no part and their current weight does not move.
    ``update`` keeps the current weight of surviving keys; new keys start at 0.

    >>> from lbalgo import Backend, BackendGroup
    >>> model = NginxSmoothRoundRobin(BackendGroup([Backend("a", 1, 5, name="a"),
    ...     Backend("b", 1, 1, name="b"), Backend("c", 1, 1, name="c")]))
    >>> "".join(model.pick().key for _ in range(7))
    'aabacaa'
    """

    def __init__(self, group: BackendGroup) -> None:
        self.current: dict[str, int] = {}
        self.down: set[str] = set()
        self.group = group
        self.update(group)

    def update(self, group: BackendGroup) -> None:
        """Take a new group; survivors keep their current weights. O(n)."""
        self.group = group
        self.current = {b.key: self.current.get(b.key, 0) for b in group}
        self.down &= set(self.current)

    def mark_down(self, key: str) -> None:
        """``key`` takes no part until :meth:`mark_up`."""
        self.down.add(key)

    def mark_up(self, key: str) -> None:
        """``key`` takes part again, from its current weight."""
        self.down.discard(key)

    def step(self, taking_part: Sequence[tuple[str, int]]) -> str | None:
        """One step over ``(key, weight)`` pairs in order; ``None`` if none takes part."""
        current = self.current
        best: str | None = None
        total = 0
        for key, weight in taking_part:
            current[key] = current.get(key, 0) + weight
            total += weight
            if best is None or current[key] > current[best]:
                best = key
        if best is not None:
            current[best] -= total
        return best

    def pick(self, client: object = None, *, exclude: Iterable[str] = ()) -> Backend:
        """The next backend; ``NoBackendAvailable`` if nothing takes part. O(n)."""
        skip = set(exclude) | self.down
        key = self.step([(b.key, b.weight) for b in self.group if b.weight and b.key not in skip])
        if key is None:
            raise NoBackendAvailable("no backend available")
        return self.group[key]

    def release(self, backend: Backend) -> None:
        """Round robin keeps no count: nothing to do."""


class ScanLeastConnections:
    """Weighted least connections by a plain scan: O(n) a pick, O(1) a release.

    The lowest ``open / weight`` (cross-multiplied, exact), the first in group order on a
    tie. Not thread-safe, no health marks beyond ``mark_down``/``mark_up``: the bare loop
    a benchmark compares the heap ledger with.

    >>> from lbalgo import Backend, BackendGroup
    >>> scan = ScanLeastConnections(BackendGroup([Backend("10.0.0.1", 80, 3),
    ...                                           Backend("10.0.0.2", 80, 1)]))
    >>> [scan.pick().key for _ in range(4)]
    ['10.0.0.1:80', '10.0.0.2:80', '10.0.0.1:80', '10.0.0.1:80']
    """

    def __init__(self, group: BackendGroup) -> None:
        self.group = group
        self.open: dict[str, int] = {b.key: 0 for b in group}
        self.down: set[str] = set()
        self._index = {b.key: i for i, b in enumerate(group)}
        self._counts = [0] * len(group)
        self._eligible: list[tuple[int, int, Backend]] = []
        self._refresh()

    def _refresh(self) -> None:
        down = self.down
        self._eligible = [
            (i, b.weight, b) for i, b in enumerate(self.group) if b.weight and b.key not in down
        ]

    def mark_down(self, key: str) -> None:
        """``key`` takes no new connection (it keeps its open ones)."""
        self.down.add(key)
        self._refresh()

    def mark_up(self, key: str) -> None:
        """``key`` takes connections again."""
        self.down.discard(key)
        self._refresh()

    def pick(self, client: object = None, *, exclude: AbstractSet[str] = frozenset()) -> Backend:
        """The backend with the lowest ``open / weight``, counted. O(n)."""
        counts = self._counts
        best: Backend | None = None
        best_i, best_open, best_weight = -1, 0, 1
        for i, weight, backend in self._eligible:
            count = counts[i]
            if best is None or count * best_weight < best_open * weight:
                if exclude and backend.key in exclude:
                    continue
                best, best_i, best_open, best_weight = backend, i, count, weight
        if best is None:
            raise NoBackendAvailable("no backend available")
        counts[best_i] = best_open + 1
        return best

    def release(self, backend: Backend) -> None:
        """One connection on ``backend`` ended (never below 0). O(1)."""
        i = self._index.get(backend.key)
        if i is not None and self._counts[i]:
            self._counts[i] -= 1

    def count(self, key: str) -> int:
        """Open connections on ``key``."""
        i = self._index.get(key)
        return 0 if i is None else self._counts[i]


class FractionLedger:
    """The rule :class:`~lbalgo.LocalLedger` documents, spelled out with Fractions and O(n)
    scans. A :class:`~lbalgo.ConnectionLedger` with ``set_weight``, O(n) an acquire.

    Choice: lowest count/weight; among equal ratios a ready key (S <= V) with the earliest
    F = S + 1/w, else the earliest S; then group order (the order of the last
    :meth:`set_eligible`). Times live on the scale 1/M (M = lcm(total, weights) at
    :meth:`set_eligible`, grown to lcm(M, w) by a :meth:`set_weight` whose weight does not
    divide it); ``floor(V)`` is V rounded down to that scale. An acquire moves V by
    1/total; the chosen key's S becomes S + 1/w clamped to [floor(V) before, floor(V)
    after + 1/w]. :meth:`set_eligible` keeps each survivor's S - floor(V), rounded down to
    the new scale and clamped to +-1/w, and restarts V at 0; :meth:`set_weight` rounds V
    down to the scale, then clamps that one key's S - V to +-1/w (a key coming back starts
    at V); past ``2**64`` times the scale of the last :meth:`set_eligible` it is that call.

    >>> ledger = FractionLedger()
    >>> ledger.set_eligible([("a", 3), ("b", 1)])
    >>> [ledger.acquire() for _ in range(4)]
    ['a', 'b', 'a', 'a']
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.order: list[str] = []  # group order of the last set_eligible
        self.weights: dict[str, int] = {}  # by key in order; 0 while out
        self.start: dict[str, Fraction] = {}  # eligible keys only
        self.clock = Fraction(0)
        self.scale = 1
        self.cap = 1 << 64

    @property
    def total(self) -> int:
        """The eligible weights' sum."""
        return sum(self.weights.values())

    def _floor(self, value: Fraction) -> Fraction:
        return Fraction(math.floor(value * self.scale), self.scale)

    def set_eligible(self, weights: Sequence[tuple[str, int]]) -> None:
        """Replace the eligible set, keeping each key's place (see the class)."""
        entries = list(weights)
        total = sum(w for _, w in entries)
        scale = math.lcm(total, *(w for _, w in entries)) if entries else 1
        now = self._floor(self.clock)
        start = {}
        for key, weight in entries:
            if key in self.start:
                lag = Fraction(math.floor((self.start[key] - now) * scale), scale)
                lag = max(Fraction(-1, weight), min(Fraction(1, weight), lag))
            else:
                lag = Fraction(0)
            start[key] = lag
        self.order = [key for key, _ in entries]
        self.weights = dict(entries)
        self.start, self.clock = start, Fraction(0)
        self.scale, self.cap = scale, scale << 64

    def set_weight(self, key: str, weight: int) -> bool:
        """Change one key's weight (see the class); ``False`` if it has no place."""
        if key not in self.weights:
            return not weight
        old = self.weights[key]
        if weight == old:
            return True
        self.clock = self._floor(self.clock)
        if weight and self.scale % weight:
            grown = math.lcm(self.scale, weight)
            if grown > self.cap:
                changed = {**self.weights, key: weight}
                self.set_eligible([(k, changed[k]) for k in self.order if changed[k]])
                return True
            self.scale = grown
        self.weights[key] = weight
        if not weight:
            del self.start[key]
            return True
        lag = self.start[key] - self.clock if old else Fraction(0)
        self.start[key] = self.clock + max(Fraction(-1, weight), min(Fraction(1, weight), lag))
        return True

    def _advance(self, key: str, weight: int) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1
        before = self._floor(self.clock)
        self.clock += Fraction(1, self.total)
        after = self._floor(self.clock)
        s = self.start[key] + Fraction(1, weight)
        self.start[key] = max(before, min(after + Fraction(1, weight), s))

    def acquire(self, exclude: AbstractSet[str] = frozenset()) -> str | None:
        """The key the rule chooses, counted; ``None`` if none qualifies."""

        def order(item: tuple[int, str]) -> tuple[Fraction, int, Fraction, int]:
            pos, key = item
            weight, s = self.weights[key], self.start[key]
            ready = s <= self.clock
            tie = s + Fraction(1, weight) if ready else s
            return (Fraction(self.counts.get(key, 0), weight), 0 if ready else 1, tie, pos)

        candidates = [
            (p, k) for p, k in enumerate(self.order) if self.weights[k] and k not in exclude
        ]
        if not candidates:
            return None
        _, key = min(candidates, key=order)
        self._advance(key, self.weights[key])
        return key

    def take(self, key: str) -> None:
        """Count ``key`` as if acquired (a key not eligible is counted as draining)."""
        weight = self.weights.get(key, 0)
        if not weight:
            self.counts[key] = self.counts.get(key, 0) + 1
        else:
            self._advance(key, weight)

    def release(self, key: str) -> None:
        """Count ``key`` down, never below 0."""
        if self.counts.get(key, 0) > 0:
            self.counts[key] -= 1

    def count(self, key: str) -> int:
        """Open connections on ``key``."""
        return self.counts.get(key, 0)

    def forget(self, keys: Iterable[str]) -> None:
        """Drop the counts of ``keys``."""
        for key in keys:
            self.counts.pop(key, None)
