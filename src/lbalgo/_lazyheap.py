"""A min-heap of timed events with lazy deletion, shared by slow start (when each ramp's next
step is due) and passive health (when each suspension lifts).

Each item has at most one current entry. Pushing an item again, or discarding it, does not
search the heap: the older entry stays, stale, and is dropped when it reaches the top (Envoy's
``EdfScheduler`` does the same for its weights). Push and pop are O(log n), discard O(1); the
heap holds at most one stale entry per change since the last time it drained.
"""

from __future__ import annotations

import math
from heapq import heappop, heappush
from typing import Generic, TypeVar

__all__ = ["LazyHeap"]

T = TypeVar("T")


class LazyHeap(Generic[T]):
    """Items keyed by a time, each with at most one current entry.

    >>> heap: LazyHeap[str] = LazyHeap()
    >>> heap.push(5.0, "a"); heap.push(3.0, "b"); heap.push(4.0, "a")  # "a" moved to 4.0
    >>> heap.discard("b")
    >>> heap.next_time, len(heap)
    (4.0, 1)
    >>> heap.due(10.0), len(heap), heap.next_time
    (['a'], 0, inf)
    """

    __slots__ = ("_current", "_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._current: dict[int, int] = {}  # id(item) -> the sequence number of its entry
        self._seq = 0

    def __len__(self) -> int:
        """Items with a current entry."""
        return len(self._current)

    def __contains__(self, item: T) -> bool:
        return id(item) in self._current

    def push(self, when: float, item: T) -> None:
        """Schedule ``item`` at ``when``, replacing its earlier entry. O(log n)."""
        # an item stays alive while any entry of it is in the heap, so its id is its own
        self._seq += 1
        self._current[id(item)] = self._seq
        heappush(self._heap, (when, self._seq, item))

    def discard(self, item: T) -> None:
        """Drop ``item``'s entry, if it has one. O(1)."""
        self._current.pop(id(item), None)

    @property
    def next_time(self) -> float:
        """The earliest current entry's time (``inf`` when empty), amortised O(log n)."""
        heap, current = self._heap, self._current
        while heap and current.get(id(heap[0][2])) != heap[0][1]:
            heappop(heap)
        return heap[0][0] if heap else math.inf

    def due(self, now: float) -> list[T]:
        """Remove and return the items due by ``now``, earliest first. O(k log n)."""
        out = []
        heap, current = self._heap, self._current
        while heap and heap[0][0] <= now:
            _, seq, item = heappop(heap)
            if current.get(id(item)) == seq:
                del current[id(item)]
                out.append(item)
        return out

    def _check(self) -> None:
        """Assert the invariant: every current entry is in the heap exactly once."""
        live = [seq for _, seq, item in self._heap if self._current.get(id(item)) == seq]
        assert sorted(live) == sorted(self._current.values())
