"""The rendezvous table's numpy kernels (extra ``fast``): the arrays the pure-Python code of
:mod:`lbalgo._table` makes, bit for bit, in a few vector operations per member instead of a
Python step per cell.

Exactness is what placement needs (every process, with or without numpy, must agree), so:

- ``E(k) = -log1p(-(k + 1/2) / T)`` is taken from Python's ``math.log1p`` (numpy's own log1p may
  dispatch to SVML on AVX-512 CPUs, whose last bits differ); numpy only forms its argument
  with the same IEEE operations as Python (``k + 0.5`` is exact, one correctly rounded
  division). The first ranks' values are kept with the table (``prefix``, shared by copies),
  so that updates look up instead of recomputing;
- numpy does the integer cell arithmetic (int64: (T - 1)^2 < 2^63), the division by the weight
  (IEEE, as Python's), the comparisons and the scatters. A member's walk cells are distinct,
  so a fancy assignment per member is exact; members go in key order with strict ``<``,
  which is the table's tie rule (the lower key wins an equal score), and ``argmin`` keeps the
  first of equal scores, in key order too.
"""

from __future__ import annotations

import functools
import math
from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from lbalgo._permutation import NONE, Member
from lbalgo._permutation import exponentials as plain_exponentials

if TYPE_CHECKING:
    from lbalgo._table import RendezvousTable

__all__ = ["add", "build", "check_prefix", "exponentials", "remove"]

Vector = npt.NDArray[Any]

_log1p = math.log1p
_CHUNK = 1 << 20  # scores scored at once by top_two: 8 MiB of floats
_GRID = 16  # the rank step of the exponentials that bound a score from below and above
# bounds widened by far more than any libm's log1p error (an ulp or two: 2e-16), so that they
# hold even where log1p is not exactly monotonic
_SLACK = 1e-9


def exponentials(ranks: Vector, size: int) -> Vector:
    """``E(k)`` for every rank, equal to :func:`lbalgo._permutation.exponentials`' values."""
    arguments = -(ranks + 0.5) / size
    # iterating a memoryview makes each Python float as it is needed (no list of them)
    return -np.fromiter(map(_log1p, arguments.data), np.float64, len(arguments))


def check_prefix(prefix: object, size: int) -> None:
    """Assert that kept exponentials are exactly ``E(0 .. len - 1)`` (for ``_check``)."""
    if isinstance(prefix, np.ndarray):
        assert prefix.tolist() == plain_exponentials(len(prefix), size)


def build(
    members: Sequence[Member], lengths: Sequence[int], size: int
) -> tuple[array[int], array[int], bytearray, Vector]:
    """(owner, runner-up, tail flags, kept exponentials) of a fresh table whose members (in
    key order, ids 0..n-1) walk ``lengths`` ranks each: as ``RendezvousTable.build``."""
    prefix = exponentials(np.arange(max(lengths), dtype=np.int64), size)
    best = np.full(size, np.inf)
    second = np.full(size, np.inf)
    owner = np.full(size, NONE, np.uint16)
    runner = np.full(size, NONE, np.uint16)
    for ident, member in enumerate(members):
        count = lengths[ident]
        cells = _walk(member, count, size)
        scores = prefix[:count] / member.weight
        if not ident:  # the first member takes every cell it walks
            best[cells] = scores
            owner[cells] = ident
            continue
        held = best[cells]
        # index lists rather than masks: each is used several times, and is shorter
        wins = np.flatnonzero(scores < held)
        taken = cells[wins]
        second[taken] = held[wins]
        runner[taken] = owner[taken]
        best[taken] = scores[wins]
        owner[taken] = ident
        lost = np.flatnonzero(scores >= held)
        cells, scores = cells[lost], scores[lost]
        below = np.flatnonzero(scores < second[cells])
        placed = cells[below]
        second[placed] = scores[below]
        runner[placed] = ident
    del best, second
    tail = owner == NONE
    cells = np.flatnonzero(tail)
    first, runner_up, _, _ = _top_two(list(enumerate(members)), cells, size, prefix, False)
    owner[cells] = first
    runner[cells] = runner_up
    return array("H", owner.tobytes()), array("H", runner.tobytes()), bytearray(tail), prefix


def add(table: RendezvousTable, ident: int) -> None:
    """``RendezvousTable.add`` after the new member got its id: walk it up to ``theta``,
    then the tail cells."""
    size, theta = table.size, table.theta
    member = table.members[ident]
    assert member is not None
    owner, runner, tail = _views(table)
    scoring = _Scoring(table)
    count = member.walk_length(theta, size)
    scoring.prefix_for(count)
    cells = _walk(member, count, size)
    mine = np.arange(count, dtype=np.int64)  # its ranks there
    held = owner[cells].astype(np.intp)
    takes = scoring.before(ident, mine, held, cells)
    taken = cells[takes]
    # the old owner is now second; out of the tail it must score <= theta, so in it: unknown
    runner[taken] = np.where(tail[taken] != 0, NONE, held[takes])
    tail[taken] = 0
    owner[taken] = ident
    lost = ~takes
    scoring.displace_runner(ident, mine[lost], cells[lost], runner)
    cells = np.flatnonzero(tail)
    mine = scoring.ranks(np.full(len(cells), ident, np.intp), cells)
    beyond = scoring.above(ident, mine, theta)  # below, the walk has seen it
    cells, mine = cells[beyond], mine[beyond]
    held = owner[cells].astype(np.intp)
    takes = scoring.before(ident, mine, held, cells)
    taken = cells[takes]
    owner[taken] = ident
    runner[taken] = held[takes]
    lost = ~takes
    scoring.displace_runner(ident, mine[lost], cells[lost], runner)


def remove(table: RendezvousTable, member: Member, ident: int) -> None:
    """``RendezvousTable.remove`` after the member left ``table.members``: its cells go to
    their runners-up, scored again where unknown."""
    size, theta = table.size, table.theta
    owner, runner, tail = _views(table)
    # a walk up to theta never meets a tail cell (there every member scores above it)
    walked = _walk(member, member.walk_length(theta, size), size)
    cells = np.concatenate([walked, np.flatnonzero(tail)])
    own = owner[cells] == ident
    runner[cells[~own & (runner[cells] == ident)]] = NONE
    cells = cells[own]
    second = runner[cells]
    known = second != NONE
    owner[cells[known]] = second[known]
    runner[cells[known]] = NONE
    cells = cells[~known]
    scoring = _Scoring(table)
    ranked = sorted((m.key, i) for i, m in enumerate(table.members) if m is not None)
    members = [(i, scoring.members[i]) for _key, i in ranked]
    first, second, first_score, second_score = _top_two(members, cells, size, scoring.prefix)
    owner[cells] = first
    over = first_score > theta
    tail[cells] = over
    runner[cells] = np.where(over | (second_score <= theta), second, NONE)


# -- internals ---------------------------------------------------------------------------------


def _walk(member: Member, count: int, size: int) -> Vector:
    """The member's cells of ranks 0 .. count - 1."""
    start, skip = member.offset, member.skip
    cells = np.arange(start, start + count * skip, skip, dtype=np.int64)
    np.remainder(cells, size, out=cells)
    return cells


def _views(table: RendezvousTable) -> tuple[Vector, Vector, Vector]:
    """The table's owner, runner-up and tail arrays as numpy views (written in place)."""
    return (
        np.frombuffer(table.owner, np.uint16),
        np.frombuffer(table.runner, np.uint16),
        np.frombuffer(table.tail, np.uint8),
    )


def _exponentials_at(ranks: Vector, prefix: Vector, size: int) -> Vector:
    """``E`` at any ranks: looked up where the kept prefix has them, else computed."""
    inside = ranks < len(prefix)
    if inside.all():
        return prefix[ranks]
    values = np.empty(len(ranks))
    values[inside] = prefix[ranks[inside]]
    outside = ~inside
    values[outside] = exponentials(ranks[outside], size)
    return values


def _top_two(
    members: Sequence[tuple[int, Member | None]],
    cells: Vector,
    size: int,
    prefix: Vector,
    scored: bool = True,
) -> tuple[Vector, Vector, Vector, Vector]:
    """Ids and scores of the lowest and second lowest score at each of ``cells`` among
    ``members`` ((id, member) in key order; NONE and inf where there is no second). Not
    ``scored``: the ids are exact, the scores only order them."""
    present = [(i, m) for i, m in members if m is not None]
    ids = np.array([i for i, _ in present], np.uint16)
    offsets = np.array([[m.offset] for _, m in present], np.int64)
    inverses = np.array([[m.inverse] for _, m in present], np.int64)
    weights = np.array([[m.weight] for _, m in present], np.float64)
    first = np.full(len(cells), NONE, np.uint16)
    second = np.full(len(cells), NONE, np.uint16)
    first_score = np.full(len(cells), np.inf)
    second_score = np.full(len(cells), np.inf)
    step = max(1, _CHUNK // max(1, len(present)))
    for start in range(0, len(cells), step):
        chunk = cells[start : start + step]
        ranks = (chunk - offsets) * inverses % size
        if len(present) > 2:
            scores = _screened_scores(ranks, weights, size, prefix, scored)
        else:
            scores = _exponentials_at(ranks.ravel(), prefix, size).reshape(ranks.shape) / weights
        columns = np.arange(len(chunk))
        lowest = scores.argmin(axis=0)  # the first of equal scores: the lower key
        first[start : start + step] = ids[lowest]
        first_score[start : start + step] = scores[lowest, columns]
        if len(present) > 1:
            scores[lowest, columns] = np.inf
            lowest = scores.argmin(axis=0)
            second[start : start + step] = ids[lowest]
            second_score[start : start + step] = scores[lowest, columns]
    return first, second, first_score, second_score


def _screened_scores(
    ranks: Vector, weights: Vector, size: int, prefix: Vector, scored: bool
) -> Vector:
    """Members' scores (rows) at cells (columns), exact wherever a score may be one of its
    cell's two lowest and infinite elsewhere: bounds from ``E`` at every ``_GRID``-th rank
    (``E`` grows with the rank) rule out most members of a cell before any log1p. Not
    ``scored``: where the bounds alone settle a cell's two lowest and their order, lower
    bounds stand in for their scores."""
    grid = _grid(size)
    low = grid[ranks // _GRID] / weights * (1 - _SLACK)
    high = grid[-(-ranks // _GRID)] / weights * (1 + _SLACK)
    # a score can be among the two lowest only if its lower bound is at most the second
    # lowest upper bound
    maybe = low <= np.partition(high, 1, axis=0)[1]
    scores = np.full(ranks.shape, np.inf)
    if not scored:
        # two candidates whose bounds do not overlap: they are the two lowest, in that order
        columns = np.arange(ranks.shape[1])
        candidates = np.where(maybe, low, np.inf)
        one = candidates.argmin(axis=0)
        one_high = high[one, columns]
        candidates[one, columns] = np.inf
        two = candidates.argmin(axis=0)
        two_low = low[two, columns]
        settled = np.flatnonzero((maybe.sum(axis=0) == 2) & (one_high < two_low))
        maybe[:, settled] = False
        scores[one[settled], settled] = low[one[settled], settled]
        scores[two[settled], settled] = two_low[settled]
    scores[maybe] = (
        _exponentials_at(ranks[maybe], prefix, size) / np.broadcast_to(weights, ranks.shape)[maybe]
    )
    return scores


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> Vector:
    """``E`` at the ranks 0, G, 2G, ... (the last rank where a multiple passes it): 24,577
    values (192 KiB) for the real table, kept for the process (four sizes at most)."""
    ranks = np.minimum(np.arange(0, size - 1 + 2 * _GRID, _GRID, dtype=np.int64), size - 1)
    return exponentials(ranks, size)


class _Scoring:
    """Every member's parameters by id, to score the holders of many cells at once."""

    def __init__(self, table: RendezvousTable) -> None:
        self.table = table
        self.size = table.size
        members = table.members
        self.members = members
        placeholder = Member("", 1, table.size)
        present = [placeholder if m is None else m for m in members]
        self.offsets = np.array([m.offset for m in present], np.int64)
        self.inverses = np.array([m.inverse for m in present], np.int64)
        self.weights = np.array([m.weight for m in present], np.float64)
        # each id's position in key order: an equal score goes to the lower key
        keys = sorted((m.key, i) for i, m in enumerate(members) if m is not None)
        self.order = np.zeros(len(members), np.int64)
        self.order[[i for _, i in keys]] = np.arange(len(keys))
        prefix = table.prefix
        self.prefix: Vector = prefix if isinstance(prefix, np.ndarray) else np.empty(0)

    def prefix_for(self, count: int) -> Vector:
        """The kept exponentials, extended to at least ``count`` ranks (a new array: copies
        of the table share the old one)."""
        prefix = self.prefix
        if len(prefix) < count:
            more = exponentials(np.arange(len(prefix), count, dtype=np.int64), self.size)
            prefix = np.concatenate([prefix, more])
            self.prefix = self.table.prefix = prefix
        return prefix

    def ranks(self, ids: Vector, cells: Vector) -> Vector:
        """The rank of member ``ids[j]`` at ``cells[j]``, for every j."""
        ranks: Vector = (cells - self.offsets[ids]) * self.inverses[ids] % self.size
        return ranks

    def before(self, ident: int, mine: Vector, ids: Vector, cells: Vector) -> Vector:
        """Where member ``ident``, of ranks ``mine`` at ``cells``, ranks before member
        ``ids`` there: a lower score, or an equal one and the lower key. Exact; log1p only
        where the bounds of the two scores overlap."""
        weight = np.full(len(mine), self.weights[ident])
        theirs, their_weight = self.ranks(ids, cells), self.weights[ids]
        low, high = self._bounds(mine, weight)
        their_low, their_high = self._bounds(theirs, their_weight)
        wins: Vector = high < their_low
        unsure = np.flatnonzero(~wins & (low <= their_high))
        if len(unsure):
            ours = self._exact(mine[unsure], weight[unsure])
            other = self._exact(theirs[unsure], their_weight[unsure])
            order = self.order
            tie = (ours == other) & (order[ident] < order[ids[unsure]])
            wins[unsure] = (ours < other) | tie
        return wins

    def above(self, ident: int, mine: Vector, theta: float) -> Vector:
        """Where member ``ident``, of ranks ``mine``, scores above ``theta``: exact."""
        weight = np.full(len(mine), self.weights[ident])
        low, high = self._bounds(mine, weight)
        over: Vector = low > theta
        unsure = np.flatnonzero(~over & (high > theta))
        over[unsure] = self._exact(mine[unsure], weight[unsure]) > theta
        return over

    def displace_runner(self, ident: int, mine: Vector, cells: Vector, runner: Vector) -> None:
        """Member ``ident`` (of ranks ``mine`` at ``cells``, where it does not own) becomes
        the runner-up of the cells whose known runner-up it beats."""
        second = runner[cells]
        known = np.flatnonzero(second != NONE)
        cells = cells[known]
        better = self.before(ident, mine[known], second[known].astype(np.intp), cells)
        runner[cells[better]] = ident

    def _exact(self, ranks: Vector, weights: Vector) -> Vector:
        exact: Vector = _exponentials_at(ranks, self.prefix, self.size) / weights
        return exact

    def _bounds(self, ranks: Vector, weights: Vector) -> tuple[Vector, Vector]:
        """Scores at most and at least the exact ones: the exact score itself where the
        kept prefix has its rank, else from ``E`` on the rank grid."""
        prefix = self.prefix
        inside = ranks < len(prefix)
        low = np.empty(len(ranks))
        high = np.empty(len(ranks))
        near = np.flatnonzero(inside)
        low[near] = high[near] = prefix[ranks[near]] / weights[near]
        far = np.flatnonzero(~inside)
        ranks, weights = ranks[far], weights[far]
        grid = _grid(self.size)
        low[far] = grid[ranks // _GRID] / weights * (1 - _SLACK)
        high[far] = grid[-(-ranks // _GRID)] / weights * (1 + _SLACK)
        return low, high
