"""The lookup table behind :class:`~lbalgo.SourceIPHash`'s default mode: a rendezvous table.

Every backend ``i`` has a pseudo-random permutation of the table's cells, ``rank_i(cell) =
(cell - offset_i) / skip_i mod T`` (T prime, offset and skip from its key), and scores a cell
``E(rank_i(cell)) / weight_i`` with ``E(k) = -ln(1 - (k + 1/2) / T)``: an exponential
variable of rate ``weight_i``. A cell belongs to the backend with the lowest score. That is
weighted rendezvous hashing (Thaler & Ravishankar; Schindelhauer & Schomaker for the weights)
evaluated once per cell instead of once per client, so:

- a backend's share of cells is its weighted share up to sampling noise over T cells (0.7% at
  20 backends, 1% for a 2% share);
- adding or removing a backend changes only the cells it wins or had: nobody else moves;
- the table depends only on the set of (key, weight) pairs, never on order or history;
- a client whose backend cannot take it goes to the next-lowest score at its cell, which is
  exactly where it goes when that backend is removed.

Scoring all n backends on all T cells would cost O(n T). Instead each backend walks its own
permutation in rank order, that is in increasing score, up to a common score ``tau`` (where
about T / 2n cells are still unclaimed), keeping the lowest score per cell; only the cells no
walk reached are scored against every backend. O(T log n) in all, and the result is the same
as the full argmin, whatever ``tau`` is.
"""

from __future__ import annotations

import functools
import math
from array import array
from bisect import bisect_right
from collections.abc import Iterator

import mmh3

__all__ = ["PERMUTATION_SEED", "TABLE_SIZE", "Scorer", "build_cells", "exponentials"]

TABLE_SIZE = 393_209
"""Cells in the table: a prime, so that every skip walks a full permutation."""

PERMUTATION_SEED = 0x4C42_0001
"""The mmh3 seed that turns a backend key into its permutation (part of hash version 1)."""


@functools.cache
def exponentials(size: int = TABLE_SIZE) -> list[float]:
    """``E(k) = -ln(1 - (k + 1/2) / size)`` for every rank k: increasing, exponential(1)."""
    return [-math.log1p(-(k + 0.5) / size) for k in range(size)]


def permutation(key: str, size: int = TABLE_SIZE) -> tuple[int, int]:
    """(offset, skip) of the backend with this key: its rank-k cell is offset + k * skip."""
    digest = mmh3.hash128(key.encode("utf-8"), PERMUTATION_SEED)
    return digest % size, (digest >> 64) % (size - 1) + 1


_RANKINGS_KEPT = 4096  # recent cells whose ranking starts are kept (hot and failed-over)
_PREFIX = 8  # choices kept per cell: enough for all but the rarest fall-through


class Scorer:
    """Ranks every member at any cell, for a client's choices after its first: O(n log n)
    for a cell, then O(1) for the first few choices of the last few thousand cells ranked
    (the clients of a backend that is down, and hot clients spilling under bounded loads,
    come back to the same cells)."""

    __slots__ = ("_kept", "_params", "_size", "_table")

    def __init__(self, members: tuple[tuple[str, int], ...], size: int = TABLE_SIZE) -> None:
        params = []
        for key, weight in members:
            offset, skip = permutation(key, size)
            params.append((offset, pow(skip, -1, size), weight))
        self._params = params
        self._size = size
        self._table = exponentials(size)
        self._kept: dict[int, tuple[int, ...]] = {}

    def ranking(self, cell: int) -> Iterator[int]:
        """Member indexes from lowest to highest score at ``cell`` (ties: lower index).

        Not thread-safe: schedulers call it under their lock.
        """
        prefix = self._kept.get(cell)
        if prefix is None:
            full = self._rank(cell)
            if len(self._kept) >= _RANKINGS_KEPT:
                self._kept.clear()
            self._kept[cell] = tuple(full[:_PREFIX])
            yield from full
            return
        yield from prefix
        if len(prefix) < len(self._params):
            yield from self._rank(cell)[_PREFIX:]

    def _rank(self, cell: int) -> list[int]:
        table, size = self._table, self._size
        scores = [
            (table[(cell - offset) * inverse % size] / weight, index)
            for index, (offset, inverse, weight) in enumerate(self._params)
        ]
        scores.sort()
        return [index for _score, index in scores]


@functools.lru_cache(maxsize=8)
def build_cells(members: tuple[tuple[str, int], ...], size: int = TABLE_SIZE) -> array[int]:
    """The owner of every cell, as indexes into ``members``: (key, weight > 0) pairs sorted
    by key. Ties go to the lower index.

    O(size * log(n)) steps, 0.2-0.6 s in CPython. The last few tables are cached (a process
    often holds several schedulers over one group, or swaps a group back and forth); callers
    must not modify the returned array.

    >>> cells = build_cells((("a:80", 1), ("b:80", 3)), size=1009)
    >>> round(list(cells).count(1) / 1009, 2)
    0.75
    """
    count = len(members)
    if count == 1:
        return array("l", bytes(array("l").itemsize * size))
    table = exponentials(size)
    total = sum(weight for _key, weight in members)
    tau = math.log(2 * count) / total  # leaves about size / 2n cells to the full scoring
    best = [math.inf] * size
    owner = [-1] * size
    params = []
    for index, (key, weight) in enumerate(members):
        offset, skip = permutation(key, size)
        params.append((offset, skip, weight))
        cell = offset
        # ranks in increasing order are scores in increasing order: stop past tau
        for rank in range(bisect_right(table, tau * weight)):
            score = table[rank] / weight
            if score < best[cell]:
                best[cell] = score
                owner[cell] = index
            cell += skip
            if cell >= size:
                cell -= size
    inverses = None
    for cell in range(size):
        if owner[cell] >= 0:
            continue
        if inverses is None:
            inverses = [(offset, pow(skip, -1, size), weight) for offset, skip, weight in params]
        lowest = math.inf
        for index, (offset, inverse, weight) in enumerate(inverses):
            score = table[(cell - offset) * inverse % size] / weight
            if score < lowest:
                lowest = score
                owner[cell] = index
    return array("l", owner)
