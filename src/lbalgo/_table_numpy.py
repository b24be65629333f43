"""The rendezvous table's numpy kernels (extra ``fast``): the arrays the pure-Python code of
:mod:`lbalgo._table` makes, bit for bit, in a few vector operations per member instead of a
Python step per cell.

Exactness is what placement needs (every process, with or without numpy, must agree), and the
scores are defined by Python's ``math.log1p``, one call per value, whose last bits numpy's
functions need not match (SVML on AVX-512 CPUs, another libm). So:

- the kernels compare *approximate* scores, from numpy's ``log`` within a relative
  ``_ERROR`` (2^-22, proven below), and settle every comparison the approximations cannot
  (two scores within the error of each other, equal scores included) with the exact
  ``math.log1p`` values and the tie rule: a handful of cells, so exact values cost nothing;
- a build walks every member in packed integer keys, the score's float bits (which order as
  the floats do) with the member id in the low bits: one ``numpy.minimum.at`` per member
  keeps each cell's lowest key, another the second lowest; the cells where some key came
  within the approximation's margin of those two are scored again exactly, and so is the
  tail (the cells no walk reached);
- the approximate exponentials of the first ranks are kept with the table (``prefix``,
  shared by copies; always as long as every member's walk), so that updates look them up;
- numpy does the integer cell arithmetic (int64: (T - 1)^2 < 2^63), the comparisons and the
  scatters. A member's walk cells are distinct, so a fancy assignment per member is exact.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from lbalgo._permutation import NONE, Member
from lbalgo._permutation import exponentials as plain_exponentials

if TYPE_CHECKING:
    from lbalgo._table import RendezvousTable

__all__ = ["add", "approximations", "build", "check_prefix", "exponentials", "remove"]

Vector = npt.NDArray[Any]

_CHUNK = 1 << 20  # scores scored at once by _top_two: 8 MiB of floats
# The bound on the relative error of an approximate score. E(k) = ln T - ln(T - k - 1/2): the
# two logs (numpy's, within 4 ulps of 16 even with SVML: 1.4e-14 each) lose at most 2.8e-14,
# against E(0) > 1/2T, 4.8e-7 for T < 2^20: 5.9e-8; the division adds half an ulp. 2^-22
# (2.4e-7) leaves a factor of 4 (measured here: 1.8e-10). Bounds widen by twice it.
_ERROR = 2.0**-22
_MAX_SIZE = 1 << 20  # the table sizes the bound holds for (the real one: 393,209)
_LOW = 1 - 2 * _ERROR
_HIGH = 1 + 2 * _ERROR
_NEAR = 5 * _ERROR  # two approximate scores closer than this (relatively) may be misordered
_KEY_BITS_32 = 10  # up to 2^10 members, the build's keys are 32-bit (float32 score bits)


def approximations(ranks: Vector, size: int) -> Vector:
    """``E(k)`` for every rank within a relative ``_ERROR``, by numpy's log: about twice as
    fast as its log1p, and as exact as needed (T - k - 1/2 is exact in a float)."""
    assert size <= _MAX_SIZE
    values: Vector = np.subtract(size - 0.5, ranks, dtype=np.float64)
    np.log(values, out=values)
    return np.subtract(math.log(size), values, out=values)


def exponentials(ranks: Vector, size: int) -> Vector:
    """``E(k)`` for every rank, equal to :func:`lbalgo._permutation.exponentials`' values."""
    arguments = -(ranks + 0.5) / size
    # iterating a memoryview makes each Python float as it is needed (no list of them)
    return -np.fromiter(map(math.log1p, arguments.data), np.float64, len(arguments))


def check_prefix(prefix: object, size: int, walks: Sequence[int]) -> None:
    """Assert that kept exponentials approximate ``E(0 .. len - 1)`` within ``_ERROR`` and
    cover the members' ``walks`` (their lengths)."""
    if isinstance(prefix, np.ndarray):
        exact = np.array(plain_exponentials(len(prefix), size))
        assert (np.abs(prefix - exact) <= _ERROR * exact).all()
        assert len(prefix) >= max(walks, default=0)


def build(
    members: Sequence[Member], lengths: Sequence[int], size: int, theta: float
) -> tuple[array[int], array[int], bytearray, Vector]:
    """(owner, runner-up, tail flags, kept exponentials) of a fresh table whose members (in
    key order, ids 0..n-1) walk ``lengths`` ranks each up to ``theta``: as
    ``RendezvousTable.build``."""
    prefix = approximations(np.arange(max(lengths), dtype=np.int64), size)
    bits = max(1, len(members).bit_length())  # the id bits' all-ones pattern is no id
    # A key is the approximate score's float bits (which order as the floats do) with the id
    # in the low ``bits``. Two keys whose exact scores order otherwise are less than
    # ``margin`` apart: a relative difference r is at most r * 2^(mantissa + 1) in the bits,
    # here twice the approximation's error and roundings, plus the id bits (generously).
    key_type: type[np.unsignedinteger[Any]]
    if bits <= _KEY_BITS_32:
        key_type, scores, mantissa = np.uint32, prefix.astype(np.float32), 23
    else:
        key_type, scores, mantissa = np.uint64, prefix, 52
    margin = (4 << bits) + 64 + int(4 * (_ERROR + 2.0**-mantissa) * 2.0 ** (mantissa + 1))
    empty = key_type(np.iinfo(key_type).max)  # no score's bits: the sign bit is never set
    high = key_type(empty ^ ((1 << bits) - 1))
    # each member's walk and keys are made again for each pass, in the same two buffers:
    # cheaper than keeping them all (fresh memory costs a page fault every 4 KiB)
    cell_buffer = np.empty(len(prefix), np.int64)
    key_buffer = np.empty(len(prefix), key_type)

    def walks() -> Iterator[tuple[Vector, Vector]]:
        for ident, member in enumerate(members):
            count = lengths[ident]
            keys = key_buffer[:count]
            np.divide(scores[:count], scores.dtype.type(member.weight), out=keys.view(scores.dtype))
            keys &= high
            keys |= key_type(ident)
            yield _walk(member, count, size, cell_buffer[:count]), keys

    best = np.full(size, empty, key_type)
    for cells, keys in walks():
        np.minimum.at(best, cells, keys)
    # the lowest key of each cell is out of the race for second: its sign bit set (no
    # score's), it stays above every other key and far from them; a second with the sign
    # bit set is no second
    sign = key_type(1 << (8 * np.dtype(key_type).itemsize - 1))
    second = np.full(size, empty, key_type)
    # the cells where the keys may not order the two lowest scores as the exact scores do:
    # the two lowest keys, or the second and another, within the margin. Of two such keys
    # other than the lowest, the later to come meets the other as the lowest so far.
    close = np.zeros(size, bool)
    for cells, keys in walks():
        keys |= (keys == np.take(best, cells)).view(np.uint8) * sign
        gap = keys - np.take(second, cells)
        gap += key_type(margin)  # unsigned: within the margin either way is at most twice it
        close[np.compress(gap <= 2 * margin, cells)] = True
        np.minimum.at(second, cells, keys)
    close |= (second - best <= margin) & (second != empty)
    ident_bits = key_type((1 << bits) - 1)
    owner = (best & ident_bits).astype(np.uint16)
    tail = best == empty
    np.copyto(owner, NONE, where=tail)
    runner = (second & ident_bits).astype(np.uint16)
    np.copyto(runner, NONE, where=second >= sign)
    del best, second
    ranked = list(enumerate(members))
    cells = np.flatnonzero(close)
    first, runner_up, _, within = _top_two(ranked, cells, size, theta)
    owner[cells] = first
    runner[cells] = np.where(within, runner_up, NONE)
    cells = np.flatnonzero(tail)
    first, runner_up, _, _ = _top_two(ranked, cells, size)
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
    prefix = scoring.prefix_for(count)
    cells = _walk(member, count, size)
    ours = prefix[:count] / member.weight
    held = np.take(owner, cells).astype(np.intp)  # numpy takes intp indices far faster
    in_tail = np.take(tail, cells).view(bool)
    # in the tail the owner scores above theta and the newcomer at most: it takes the cell,
    # whatever the owner's score there (unkept: clipped, or settled exactly)
    takes = scoring.settle(ident, ours, scoring.kept_scores(held, cells), held, cells)
    takes |= in_tail
    taken = np.compress(takes, cells)
    # the old owner is now second, unknown in the tail (a known one scores at most theta)
    runner[taken] = np.compress(takes, held)
    runner[np.compress(in_tail, cells)] = NONE
    tail[taken] = 0
    owner[taken] = ident
    lost = ~takes
    _displace_runner(scoring, ident, np.compress(lost, cells), np.compress(lost, ours), runner)
    # the tail cells beyond the walk (below theta, it has seen them)
    cells = np.flatnonzero(tail.view(bool))
    mine = (cells + (size - member.offset)) * member.inverse % size
    ours = scoring.approximate(mine) / member.weight
    beyond = scoring.above(ident, mine, ours, theta)
    cells, ours = np.compress(beyond, cells), np.compress(beyond, ours)
    held = np.take(owner, cells).astype(np.intp)
    takes = scoring.settle(ident, ours, scoring.scores(held, cells), held, cells)
    taken = np.compress(takes, cells)
    owner[taken] = ident
    runner[taken] = np.compress(takes, held)
    lost = ~takes
    _displace_runner(scoring, ident, np.compress(lost, cells), np.compress(lost, ours), runner)


def remove(table: RendezvousTable, member: Member, ident: int) -> None:
    """``RendezvousTable.remove`` after the member left ``table.members``: its cells go to
    their runners-up, scored again where unknown."""
    size, theta = table.size, table.theta
    owner, runner, tail = _views(table)
    # a walk up to theta never meets a tail cell (there every member scores above it)
    walked = _walk(member, member.walk_length(theta, size), size)
    cells = np.concatenate([walked, np.flatnonzero(tail.view(bool))])
    own = np.take(owner, cells) == ident
    second = np.take(runner, cells)
    runner[np.compress((second == ident) & ~own, cells)] = NONE
    cells, second = np.compress(own, cells), np.compress(own, second)
    known = second != NONE
    at = np.compress(known, cells)
    owner[at] = np.compress(known, second)
    runner[at] = NONE
    cells = np.compress(~known, cells)
    ranked = sorted((m.key, i) for i, m in enumerate(table.members) if m is not None)
    members = [(i, table.members[i]) for _key, i in ranked]
    first, second, over, within = _top_two(members, cells, size, theta)
    owner[cells] = first
    tail[cells] = over
    runner[cells] = np.where(over | within, second, NONE)


def _displace_runner(
    scoring: _Scoring, ident: int, cells: Vector, ours: Vector, runner: Vector
) -> None:
    """Member ``ident``, of approximate scores ``ours`` at ``cells`` (where it does not
    own), becomes the runner-up of the cells whose known runner-up it beats."""
    second = np.take(runner, cells).astype(np.intp)
    known = second != NONE
    cells, ours, second = (np.compress(known, x) for x in (cells, ours, second))
    better = scoring.settle(ident, ours, scoring.scores(second, cells), second, cells)
    runner[np.compress(better, cells)] = ident


# -- internals ---------------------------------------------------------------------------------


def _walk(member: Member, count: int, size: int, cells: Vector | None = None) -> Vector:
    """The member's cells of ranks 0 .. count - 1 (in ``cells`` if given: int64, that long):
    offset + k * skip mod T, the first 4,096 by a division each, then each block from the
    one before by one addition, doubling: cheaper than a division per cell."""
    start, skip = member.offset, member.skip
    if cells is None:
        cells = np.empty(count, np.int64)
    filled = min(count, 4096)
    np.remainder(
        np.arange(start, start + filled * skip, skip, dtype=np.int64), size, out=cells[:filled]
    )
    unsigned = cells.view(np.uint64)
    while filled < count:
        step = min(filled, count - filled)
        block = unsigned[filled : filled + step]
        # (cell + shift) mod T for cell, shift < T: x = cell + shift - T, plus T if negative;
        # as unsigned, a negative x is above x + T, a non-negative one below it
        np.add(unsigned[:step], np.uint64((filled * skip % size - size) % 2**64), out=block)
        np.minimum(block, block + np.uint64(size), out=block)
        filled += step
    return cells


def _views(table: RendezvousTable) -> tuple[Vector, Vector, Vector]:
    """The table's owner, runner-up and tail arrays as numpy views (written in place)."""
    return (
        np.frombuffer(table.owner, np.uint16),
        np.frombuffer(table.runner, np.uint16),
        np.frombuffer(table.tail, np.uint8),
    )


def _top_two(
    members: Sequence[tuple[int, Member | None]],
    cells: Vector,
    size: int,
    theta: float | None = None,
) -> tuple[Vector, Vector, Vector, Vector]:
    """Exact ids of the lowest and second lowest score at each of ``cells`` among
    ``members`` ((id, member) in key order; NONE where there is no second) and, given
    ``theta``, whether the lowest scores above it and the second at most (else empty)."""
    present = [m for _, m in members if m is not None]
    ids = np.array([i for i, m in members if m is not None] + [NONE], np.uint16)
    shifts = np.array([size - m.offset for m in present], np.int64)
    inverses = np.array([m.inverse for m in present], np.int64)
    weights = np.array([m.weight for m in present], np.float64)
    count, rows = len(cells), len(present)
    # positions in ``present`` (``rows``: none) and scores, approximate or exact
    first = np.full(count, rows, np.intp)
    second = np.full(count, rows, np.intp)
    first_score = np.full(count, np.inf)
    second_score = np.full(count, np.inf)
    step = max(1, _CHUNK // max(1, rows))
    for start in range(0, count, step):
        chunk = cells[start : start + step, None]
        part = slice(start, start + len(chunk))
        # a row per cell, a column per member: each cell's scores are contiguous
        ranks = (chunk + shifts) * inverses % size
        scores = approximations(ranks, size)
        scores /= weights
        lines = np.arange(len(chunk))
        lowest = []  # the three lowest approximate scores
        for position, (column, score) in enumerate(((first, first_score), (second, second_score))):
            if position < rows:
                column[part] = scores.argmin(axis=1)
                score[part] = scores[lines, column[part]]
                lowest.append(score[part])
                scores[lines, column[part]] = np.inf
        if rows > 2:
            lowest.append(scores.min(axis=1))
        # the order of the two lowest, and which they are, hold for the exact scores unless
        # two of the three lowest lie within the approximation's error of each other
        close = np.zeros(len(chunk), bool)
        for low, high in pairwise(lowest):
            close |= low * _HIGH >= high * _LOW
        unsure = np.flatnonzero(close)
        if len(unsure):
            exact = np.stack([_exact(m, chunk[unsure, 0], size) for m in present])
            at, columns = start + unsure, np.arange(len(unsure))
            first[at] = exact.argmin(axis=0)  # the first of equal scores: the lower key
            first_score[at] = exact[first[at], columns]
            exact[first[at], columns] = np.inf
            second[at] = exact.argmin(axis=0)
            second_score[at] = exact[second[at], columns]
    if theta is None:
        nothing = np.empty(0, bool)
        return ids[first], ids[second], nothing, nothing
    over = _above(present, first, first_score, cells, size, theta)
    within = ~_above(present, second, second_score, cells, size, theta)
    return ids[first], ids[second], over, within


def _above(
    present: Sequence[Member], rows: Vector, scores: Vector, cells: Vector, size: int, theta: float
) -> Vector:
    """Whether member ``present[rows[j]]``, of (approximate) score ``scores[j]``, scores
    above ``theta`` at ``cells[j]`` (True past the members): exact, log1p only where the
    bound is unsure."""
    over: Vector = scores * _LOW > theta
    for j in np.flatnonzero(~over & (scores * _HIGH > theta)).tolist():
        over[j] = _exact(present[rows[j]], cells[j : j + 1], size)[0] > theta
    return over


def _exact(member: Member, cells: Vector, size: int) -> Vector:
    """The member's exact scores at ``cells`` (math.log1p): for the few unsure ones."""
    ranks = (cells + (size - member.offset)) * member.inverse % size
    scores: Vector = exponentials(ranks, size) / member.weight
    return scores


class _Scoring:
    """Every member's parameters by id, to score the holders of many cells at once."""

    def __init__(self, table: RendezvousTable) -> None:
        self.table = table
        self.size = table.size
        members = table.members
        self.members = members
        placeholder = Member("", 1, table.size)
        present = [placeholder if m is None else m for m in members]
        # T - offset: a rank is (cell + T - offset) * inverse mod T, all non-negative (numpy
        # divides non-negative numbers about three times faster)
        self.shifts = np.array([table.size - m.offset for m in present], np.int64)
        self.inverses = np.array([m.inverse for m in present], np.int64)
        self.weights = np.array([m.weight for m in present], np.float64)
        # each id's position in key order: an equal score goes to the lower key
        keys = sorted((m.key, i) for i, m in enumerate(members) if m is not None)
        self.order = np.zeros(len(members), np.int64)
        self.order[[i for _, i in keys]] = np.arange(len(keys))
        prefix = table.prefix
        if not isinstance(prefix, np.ndarray):
            # none kept (a table built or added to in pure Python): keep one long enough for
            # every member's walk, which is what lets holders' scores be looked up
            walks = [m.walk_length(table.theta, table.size) for m in members if m is not None]
            prefix = approximations(np.arange(max(walks, default=0), dtype=np.int64), self.size)
            table.prefix = prefix
        self.prefix: Vector = prefix

    def prefix_for(self, count: int) -> Vector:
        """The kept exponentials, extended to at least ``count`` ranks (a new array: copies
        of the table share the old one)."""
        prefix = self.prefix
        if len(prefix) < count:
            more = approximations(np.arange(len(prefix), count, dtype=np.int64), self.size)
            prefix = np.concatenate([prefix, more])
            self.prefix = self.table.prefix = prefix
        return prefix

    def ranks(self, ids: Vector, cells: Vector) -> Vector:
        """The rank of member ``ids[j]`` at ``cells[j]``, for every j."""
        ranks: Vector = (cells + np.take(self.shifts, ids)) * np.take(self.inverses, ids)
        ranks %= self.size
        return ranks

    def kept_scores(self, ids: Vector, cells: Vector) -> Vector:
        """Approximate scores of member ``ids[j]`` at ``cells[j]`` where their ranks are
        kept (a member scoring at most theta there); anything elsewhere."""
        kept = np.take(self.prefix, self.ranks(ids, cells), mode="clip")
        kept /= np.take(self.weights, ids)
        return kept

    def scores(self, ids: Vector, cells: Vector) -> Vector:
        """Approximate scores of member ``ids[j]`` at ``cells[j]``, anywhere."""
        scores = self.approximate(self.ranks(ids, cells))
        scores /= np.take(self.weights, ids)
        return scores

    def settle(
        self, ident: int, ours: Vector, theirs: Vector, ids: Vector, cells: Vector
    ) -> Vector:
        """Where member ``ident`` ranks before member ``ids[j]`` at ``cells[j]`` (a lower
        score, or an equal one and the lower key), from approximate scores ``ours`` and
        ``theirs``: exact, log1p only where the two are within the approximation's error
        of each other."""
        wins: Vector = ours < theirs * (1 - _NEAR)
        unsure = ours <= theirs * (1 + _NEAR)
        unsure &= ~wins
        at = np.flatnonzero(unsure)
        if len(at):
            member = self.members[ident]
            assert member is not None
            where, who = cells[at], ids[at].tolist()
            exact = _exact(member, where, self.size)
            other = np.array(
                [_exact(self._member(i), where[j : j + 1], self.size)[0] for j, i in enumerate(who)]
            )
            tie = (exact == other) & (self.order[ident] < np.take(self.order, who))
            wins[at] = (exact < other) | tie
        return wins

    def above(self, ident: int, mine: Vector, scores: Vector, theta: float) -> Vector:
        """Where member ``ident``, of ranks ``mine`` and approximate scores ``scores``
        there, scores above ``theta``: exact."""
        weight = self.weights[ident]
        over: Vector = scores * _LOW > theta
        unsure = np.flatnonzero(~over & (scores * _HIGH > theta))
        over[unsure] = exponentials(mine[unsure], self.size) / weight > theta
        return over

    def _member(self, ident: int) -> Member:
        member = self.members[ident]
        assert member is not None
        return member

    def approximate(self, ranks: Vector) -> Vector:
        """Approximate ``E`` at any ranks: looked up where the kept prefix has them all."""
        prefix = self.prefix
        if not len(ranks) or ranks.max() < len(prefix):
            return np.take(prefix, ranks)
        return approximations(ranks, self.size)
