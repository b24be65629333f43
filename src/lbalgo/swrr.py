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
import operator
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from heapq import heapify, heapreplace
from itertools import compress, repeat
from operator import add, itemgetter
from typing import TypeAlias

from lbalgo.backend import MAX_BACKENDS, Backend, BackendGroup
from lbalgo.scheduler import (
    RAMP_STEPS,
    BaseScheduler,
    Client,
    Clock,
    Exclude,
    _count_value,
    _Slot,
    normalize_exclude,
)

__all__ = ["SmoothWeightedRoundRobin"]

# A pick key packs a current weight and the peer's position: value * _SCALE + (_SCALE - 1 - i),
# so one max() over ints finds the largest value and, among equals, the first peer.
_SCALE = 512
assert _SCALE > MAX_BACKENDS
_WINDOW = 16  # generator steps that share one choice of candidate classes
_FIRST_CHUNK = 32  # picks generated right after a change: the first pick stays cheap
_MAX_CHUNK = 1024

# What the lock-free fast path draws from: (slot, its backend, its pick count before this
# pick); one next() on it advances the rotation and counts the pick in a single C call.
_Stream: TypeAlias = Iterator[tuple[_Slot, Backend, int]]
_EMPTY: _Stream = iter(())


class _Generator:
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


class _Epoch:
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

    def __init__(self, slots: tuple[_Slot, ...], weights: tuple[int, ...], start: list[int]):
        self.slots = slots
        self.weights = weights
        self.keys = frozenset(slot.key for slot in slots)
        self.start = start
        self.target = Counter(dict(enumerate(weights)))
        self.generator: _Generator | None = None
        self.recent: list[int] = []
        self.counts: Counter[int] = Counter()
        self.chunk: Iterator[_Slot] = iter(())  # the slots of the chunk being drawn
        self.chunk_end = 0  # picks generated up to the end of that chunk
        self.cycle: tuple[int, ...] | None = None
        self.offset = 0  # cycle position at which the replay stream started
        self.counted = 0  # pick counters' sum over the epoch's slots when it started

    def drawn(self, takes: int) -> int:
        """Picks drawn so far: from the origin while generating, within the cycle after."""
        if self.cycle is None:
            return self.chunk_end - operator.length_hint(self.chunk)
        picks = sum(_count_value(slot.picks) for slot in self.slots)
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


def _unscale(values: Sequence[int]) -> list[int]:
    """Current weights on the fine scale of a ramp (units of ``1 / RAMP_STEPS``) back in whole
    weights, when the last ramp ends: each is divided by :data:`~lbalgo.scheduler.RAMP_STEPS`
    and rounded down or up, by the largest-remainder rule: just enough of them round up for
    the sum to be the old sum divided likewise (rounded half up if not whole), the largest
    remainders first, ties in group order. So each value moves by less than 1, and a sum of
    0, which nginx's current weights keep (each step adds the total and takes it away once),
    stays 0.

    >>> _unscale([40, -40, 0]), _unscale([48, -36, -12]), _unscale([16, 16, -32])
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
    :class:`~lbalgo.scheduler.BaseScheduler`), the picks stay nginx's through failures and
    recoveries, pick for pick, when the clock is nginx's (whole seconds).

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

    Design and complexity. With fixed weights the sequence is periodic with period W (the sum
    of the weights): after W picks every backend has gained W times its weight and lost W once
    per pick of it, so the current weights are back where they were exactly when each got its
    weight's worth of picks. From the start that holds at once; from a state left by a change
    the sequence settles into such a cycle, usually within a fraction of a period. So after
    each change the sequence is generated from the exact current weights and served in chunks
    as it is generated; once the last W picks gave every backend exactly its weight (which
    proves the state recurs: nothing is assumed), they are replayed forever. Generating costs
    O(D) a step in C-level ``max``/``map`` over ints, D <= 100 distinct weights, because
    backends of equal weight keep their order except when picked (see ``_Generator``). At the
    next change the exact current weights come back in closed form,
    ``C_i = C_i(0) + t * w_i - W * k_i(t)``, t being the picks drawn since the cycle started
    (read from the pick counters) and k_i(t) backend i's share of them.

    - ``pick()`` without ``exclude``: one ``next()`` on a chain of ``itertools`` objects that
      yields the backend and advances its pick counter in the same C call, atomic under the
      GIL, so no lock; O(1), about three empty method calls.
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
        self._current: dict[_Slot, int] = {}
        self._epoch: _Epoch | None = None
        self._stream: _Stream = _EMPTY
        self._chunk = _FIRST_CHUNK
        self._takes = 0  # picks made by _take (sticky sessions) since the replay started
        # 1, or RAMP_STEPS while a slow-start ramp is on: the unit of the current weights
        self._scale = 1
        # nginx's effective weights below full weight, after failures (absent: full weight)
        self._effective: dict[_Slot, int] = {}
        super().__init__(
            group,
            slow_start=slow_start,
            max_fails=max_fails,
            fail_timeout=fail_timeout,
            clock=clock,
        )

    # -- the fast path -----------------------------------------------------------------------

    def pick(self, client: Client = None, *, exclude: Exclude = ()) -> Backend:
        """The next backend in nginx's sequence (O(1) when nothing is excluded)."""
        if not exclude:
            try:
                return next(self._stream)[1]
            except StopIteration:
                pass
        return self._pick_slot(client, exclude).backend

    def _pick_slot(self, client: Client, exclude: Exclude) -> _Slot:
        if not exclude:
            try:
                return next(self._stream)[0]
            except StopIteration:
                pass
        excluded = normalize_exclude(exclude) if exclude else frozenset()
        with self._lock:
            now = self._now()
            if now >= self._next_event:
                self._tick(now)
            epoch = self._epoch
            if epoch is not None and excluded.isdisjoint(epoch.keys):
                return self._draw(excluded)
            slot = self._choose(client, excluded, now)
            self._count_pick(slot, now)
            return slot

    # -- the hooks of BaseScheduler ----------------------------------------------------------

    def _choose(self, client: Client, exclude: frozenset[str], now: float) -> _Slot:
        """One exact step of nginx's loop over the materialized current weights, O(n)."""
        resume = self._epoch is not None
        self._fold()
        current = self._current
        best: _Slot | None = None
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
            weight = effective.get(slot, slot.backend.weight)
            if weight < slot.backend.weight:
                if weight + 1 < slot.backend.weight:
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
            if self._slots.get(slot.key) is slot and weight < slot.backend.weight
        }
        ramping = self._ramping()
        if ramping and self._scale == 1:
            # nginx's steps are linear in the weights: on weights and current weights all
            # scaled by RAMP_STEPS they pick exactly as before, and a ramp can step finely
            self._current = {slot: value * RAMP_STEPS for slot, value in self._current.items()}
            self._scale = RAMP_STEPS
        elif not ramping and self._scale != 1:
            self._current = dict(
                zip(self._current, _unscale(list(self._current.values())), strict=True)
            )
            self._scale = 1
        self._start_epoch()

    # -- internals ---------------------------------------------------------------------------

    def _fold(self) -> None:
        """End the epoch, writing the exact current weights back (under the lock)."""
        epoch = self._epoch
        if epoch is None:
            return
        # stop the fast path first, so that no draw slips in after the count is read
        self._stream = _EMPTY
        self._epoch = None
        for slot, value in zip(epoch.slots, epoch.current(self._takes), strict=True):
            self._current[slot] = value

    def _start_epoch(self) -> None:
        """Start generating from the current weights if nothing depends on the clock."""
        self._stream = _EMPTY
        self._epoch = None
        if (
            self._next_event != math.inf
            or self._scale != 1
            or self._effective
            or any(slot.fails and slot.up and slot.backend.weight > 0 for slot in self._order)
        ):
            # ramps, suspensions, checks or effective weights climbing back after failures:
            # exact steps until they end (a backend with failures while down or at weight 0
            # cannot be picked, so it does not keep every pick on the O(n) path)
            return
        now = self._now()
        slots = tuple(slot for slot in self._order if self._eligible(slot, now))
        self._epoch = _Epoch(
            slots,
            tuple(slot.backend.weight for slot in slots),
            [self._current[slot] for slot in slots],
        )
        self._chunk = _FIRST_CHUNK

    def _record_failure(self, slot: _Slot) -> None:
        if self._max_fails and len(self._order) > 1:
            # nginx's free_round_robin_peer: the effective weight drops by weight / max_fails
            weight = slot.backend.weight
            lowered = max(self._effective.get(slot, weight) - weight // self._max_fails, 0)
            if lowered < weight:
                self._effective[slot] = lowered
        super()._record_failure(slot)  # rebuilds: the replay stops until it climbs back

    def _on_take(self, slot: _Slot) -> None:
        # a sticky session's pick bypasses the rotation (nginx's sticky does too); only the
        # replay's count of draws must know about it
        self._takes += 1

    def _draw(self, excluded: frozenset[str]) -> _Slot:
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
            generator = epoch.generator = _Generator(epoch.weights, epoch.start)
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

    def _replay(self, epoch: _Epoch, position: int) -> None:
        """Replay the cycle forever from ``position`` (lock-free for the fast path)."""
        assert epoch.cycle is not None
        order = epoch.cycle[position:] + epoch.cycle[:position]
        slots = [epoch.slots[i] for i in order]
        epoch.offset = position
        epoch.counted = sum(_count_value(slot.picks) for slot in epoch.slots)
        self._takes = 0
        self._stream = zip(
            itertools.cycle(slots),
            itertools.cycle([slot.backend for slot in slots]),
            map(next, itertools.cycle([slot.picks for slot in slots])),
            strict=False,  # endless
        )
