"""The weighted fair-queueing schedule behind :class:`~lbalgo.LocalLedger`: per-key counts,
virtual starts and units on one exact integer scale, queued in heaps with lazy deletion.

Every key has exactly one current entry in the ready, idle or busy heap (the one carrying its
stamp; older entries are stale and dropped when they surface, and all heaps are rebuilt in
O(n) after about 2n queueings), except the key acquired last: it stays out of the heaps
("pending") until the next acquire, so the usual acquire-then-release of a key queues it once,
not twice. See ``docs/algorithms/wlc.md``.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from heapq import heapify, heappop, heappush
from typing import TYPE_CHECKING, Any

from lbalgo._accel import compiled

__all__ = ["ACCELERATED", "BUSY", "IDLE", "OUT", "PENDING", "READY", "WF2QSchedule"]

MIN_HEAP_LIMIT = 64
# where a key's current entry is (see _advance); OUT: not eligible now, in no heap
READY, IDLE, BUSY, PENDING, OUT = range(5)


# The state lives in the C type's fields when lbalgo._wf2q_c is built (the same names, seen
# from Python exactly as __slots__ would be): its acquire and release_open then run on the
# very same lists, heaps and ints as every pure-Python method here (see LocalLedger).
_compiled = compiled("_wf2q_c")
ACCELERATED = _compiled is not None
"""Whether :class:`~lbalgo.LocalLedger` runs its acquire and release in C (``lbalgo._wf2q_c``
built and ``LBALGO_PURE_PYTHON`` not set)."""

if TYPE_CHECKING or _compiled is None:  # noqa: SIM108 -- mypy must see the plain base
    _Fields = object
else:
    _Fields = _compiled.Schedule

_SLOTS = (
    "_busy_heap",
    "_busy_wakeups",
    "_cap",
    "_draining",
    "_frac",
    "_idle_heap",
    "_index",
    "_keys",
    "_limit",
    "_load",
    "_pending",
    "_pushes",
    "_ready_heap",
    "_rem",
    "_scale",
    "_stamp",
    "_start",
    "_state",
    "_step",
    "_total",
    "_unit",
    "_vt",
    "_weight",
)


class WF2QSchedule(_Fields):
    """The state and heap mechanics of a WF2Q least-connections schedule (see the module
    docstring); :class:`~lbalgo.LocalLedger` adds the ledger interface on top."""

    # the C type has the fields already
    __slots__ = _SLOTS if _Fields is object else ()

    def __init__(self) -> None:
        self._draining: dict[str, int] = {}  # counts (> 0) of known keys that are not eligible
        self._index: dict[str, int] = {}  # eligible key -> position in group order
        self._keys: list[str] = []
        self._load: list[int] = []  # open connections by position
        self._unit: list[int] = []  # M // weight: one connection's part of the ratio, in M
        self._start: list[int] = []  # virtual start S, scaled by M
        self._state: list[int] = []  # READY, IDLE, BUSY or PENDING
        self._stamp: list[int] = []  # bumped on each change; older heap entries are stale
        self._ready_heap: list[tuple[int, int, int, int]] = []  # (ratio, F, position, stamp)
        self._idle_heap: list[tuple[int, int, int]] = []  # (S, position, stamp)
        self._busy_heap: list[tuple[int, int, int, int]] = []  # (ratio, S, position, stamp)
        self._busy_wakeups: list[tuple[int, int]] = []  # (S, position)
        self._scale = 1  # M
        self._vt = 0  # virtual clock V, scaled by M
        self._step = 1  # M // total weight: how far V moves per acquire (whole part) ...
        self._frac = 0  # ... and M % total: V's fractional step, in units of 1 / total
        self._rem = 0  # V's fractional part in units of 1 / total (0 <= rem < total)
        self._weight: list[int] = []  # weight by position; 0 while out (not eligible)
        self._total = 0  # the eligible weights' sum
        self._cap = 1 << 64  # M may grow this far by set_weight before a full rescale
        self._pending = -1  # the key acquired last, not queued yet (see _advance)
        self._pushes = 0  # queueings since the last rebuild of the heaps
        self._limit = MIN_HEAP_LIMIT  # ... that trigger the next one


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
        if self._frac:  # V's step is not whole (the total changed since M was chosen)
            rem = self._rem + self._frac
            if rem >= self._total:
                rem -= self._total
                nvt += 1
            self._rem = rem
        self._vt = nvt
        s = self._start[pos] + u
        # In a pure WF2Q run neither clamp binds (S stays within one pick of V); they only
        # forget service missed or taken in advance while ratios, not ties, decided.
        if s < vt:
            s = vt
        elif s > nvt + u:
            s = nvt + u
        self._start[pos] = s
        self._state[pos] = PENDING
        self._pending = pos

    def _flush(self) -> None:
        """Queue the pending key with its current count and schedule place."""
        pos = self._pending
        self._pending = -1
        self._flush_at(pos, self._start[pos], self._load[pos], self._vt)

    def _flush_at(self, pos: int, s: int, count: int, vt: int) -> None:
        """Queue ``pos``, which has no current entry, with start ``s`` and ``count`` at ``vt``."""
        mark = self._stamp[pos] + 1
        self._stamp[pos] = mark
        u = self._unit[pos]
        if s <= vt:
            self._state[pos] = READY
            heappush(self._ready_heap, (count * u, s + u, pos, mark))
        elif count:
            self._state[pos] = BUSY
            heappush(self._busy_heap, (count * u, s, pos, mark))
            heappush(self._busy_wakeups, (s, pos))
        else:
            self._state[pos] = IDLE
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
        if state == READY:
            heappush(self._ready_heap, (count * u, s + u, pos, mark))
        elif count:  # busy stays busy; its wakeup entry stays current
            heappush(self._busy_heap, (count * u, s, pos, mark))
        else:  # busy turns idle: the idle heap wakes it from now on
            self._state[pos] = IDLE
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
            if state[pos] == BUSY and start[pos] == s:
                ready.append((pos, s))
        for pos, s in ready:
            mark = stamp[pos] + 1
            stamp[pos] = mark
            state[pos] = READY
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

    def _set_total(self, total: int, scale: int) -> None:
        self._scale = scale
        self._total = total
        self._step, self._frac = divmod(scale, total) if total else (1, 0)

    def _rescale(self, factor: int) -> None:
        """Multiply the scale M by ``factor``: every start, unit and the clock, exactly."""
        self._rem = 0
        self._vt *= factor
        self._start = [s * factor for s in self._start]
        self._unit = [u * factor for u in self._unit]
        self._rebuild_heaps()

    def _check(self) -> None:
        """Assert the invariants: every eligible key but the pending one has exactly one
        current heap entry, in the heap its state names, with its current ratio and times;
        units and totals agree with the weights and the scale; counts are never negative."""
        stamp, state, load = self._stamp, self._state, self._load
        assert sum(self._weight) == self._total
        assert self._step * self._total + self._frac == self._scale or not self._total
        assert 0 <= self._rem < max(1, self._total)
        assert all(n > 0 for n in self._draining.values())
        assert not self._draining.keys() & self._index.keys()
        current: dict[int, Any] = {}
        heaps: list[tuple[int, list[Any], int]] = [
            (READY, self._ready_heap, 2),
            (IDLE, self._idle_heap, 1),
            (BUSY, self._busy_heap, 2),
        ]
        for name, heap, pos_at in heaps:
            for entry in heap:
                pos = entry[pos_at]
                if entry[-1] == stamp[pos]:
                    assert pos not in current, f"two current entries for {self._keys[pos]}"
                    assert state[pos] == name
                    current[pos] = entry
        for pos, key in enumerate(self._keys):
            assert self._index[key] == pos
            assert load[pos] >= 0
            weight, u, s = self._weight[pos], self._unit[pos], self._start[pos]
            if not weight:
                assert state[pos] == OUT
                assert pos not in current
                continue
            assert u * weight == self._scale
            if pos == self._pending:
                assert state[pos] == PENDING
                continue
            entry = current[pos]
            if state[pos] == READY:
                assert entry[:2] == (load[pos] * u, s + u)
            elif state[pos] == IDLE:
                assert entry[0] == s
                assert not load[pos]
            else:
                assert entry[:2] == (load[pos] * u, s)

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
            if state[pos] == OUT:
                continue
            if s <= vt:
                state[pos] = READY
                ready.append((count * u, s + u, pos, mark))
            elif count:
                state[pos] = BUSY
                busy.append((count * u, s, pos, mark))
                wakeups.append((s, pos))
            else:
                state[pos] = IDLE
                idle.append((s, pos, mark))
        heapify(ready)
        heapify(idle)
        heapify(busy)
        heapify(wakeups)
        self._ready_heap, self._idle_heap, self._busy_heap = ready, idle, busy
        self._busy_wakeups = wakeups
        self._pushes = 0
        # amortised: a rebuild costs O(n) and comes once per 2n + 64 queueings
        self._limit = MIN_HEAP_LIMIT + 2 * len(self._keys)


