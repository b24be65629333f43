"""The lookup table behind :class:`~lbalgo.SourceIPHash`'s default mode: a rendezvous table
that is updated in place of being rebuilt.

Every member ``i`` has a pseudo-random permutation of the table's cells and scores a cell
``E(rank_i(cell)) / weight_i``, an exponential variable of rate ``weight_i``
(:mod:`lbalgo._permutation`). A cell belongs to the member with the lowest score (ties: the
lower key). That is weighted rendezvous hashing (Thaler & Ravishankar; Schindelhauer &
Schomaker for the weights) evaluated once per cell instead of once per client, so a member's
share of cells is its weighted share up to sampling noise over T cells, adding or removing a
member changes only the cells it wins or had, and the table depends only on the set of
(key, weight) pairs, never on order or history.

Each member walks its permutation in rank order, that is in increasing score. A full build
walks every member up to a common score ``theta`` (where about T / 2n cells are still
unclaimed) and scores only the unclaimed cells (the *tail*) against every member: O(T log n).
Besides each cell's owner the table keeps its runner-up (``NONE`` when unknown), so that:

- adding a member walks only that member up to ``theta`` and checks the tail cells: O(T/n
  log n) steps for an average weight;
- removing a member walks it the same way and hands each of its cells to the runner-up; only
  a cell whose runner-up is unknown is scored again, O(n);
- a re-weight is a removal and an addition.

Invariants (checked by :meth:`RendezvousTable._check`): the owner of every cell is exact; a
known runner-up is exactly the second lowest score; the tail is exactly the set of cells
whose owner scores above ``theta``; outside the tail a known runner-up scores at most
``theta`` (so a walk up to ``theta`` meets every cell where a newcomer could displace it).

The tail is a flag byte per cell (a ``bytearray`` of T, 384 KiB), not a set of cell numbers:
its memory is fixed whatever the history of updates (a set grew past 4 MiB after many), and
``itertools.compress`` walks its cells in C.

The walks cost about T ln(2n) steps, one Python step each here (seconds at 500 members). With
numpy installed (the ``fast`` extra) the same arrays, bit for bit, come from the vector
kernels of :mod:`lbalgo._table_numpy` (:mod:`lbalgo._accel` says whether they are used).
"""

from __future__ import annotations

import heapq
import math
import sys
from array import array
from collections.abc import Iterable, Iterator
from itertools import compress

from lbalgo._accel import HAVE_NUMPY, numpy_in_use
from lbalgo._permutation import (
    NONE,
    PERMUTATION_SEED,
    TABLE_SIZE,
    Member,
    exponentials,
    permutation,
)

# lbalgo._table_numpy (and numpy with it) is imported where the kernels are first used, not
# here: a program that never builds a table with them never pays numpy's import

__all__ = [
    "NONE",
    "PERMUTATION_SEED",
    "TABLE_SIZE",
    "Member",
    "RendezvousTable",
    "permutation",
]

_RANKINGS_KEPT = 4096  # recent cells whose first choices are kept (clients of a down backend)
_PREFIX = 8  # choices kept per cell: enough for all but the rarest fall-through
_log1p = math.log1p


class RendezvousTable:
    """Owner and runner-up of every cell for a set of (key, weight > 0) members.

    Build O(T log n); :meth:`add`, :meth:`remove` and :meth:`reweight` touch only the cells
    of the member that changed (O(T/n log n) for an average weight). A table is changed in
    place: schedulers change a :meth:`copy` and swap it in.

    >>> table = RendezvousTable.build([("a:80", 1), ("b:80", 3)], size=1009)
    >>> round(list(table.owner).count(table.ident("b:80")) / 1009, 2)
    0.75
    >>> grown = table.copy()
    >>> grown.add("c:80", 2)
    >>> grown.owner == RendezvousTable.build([("a:80", 1), ("b:80", 3), ("c:80", 2)],
    ...                                      size=1009).owner
    True
    """

    __slots__ = (
        "__weakref__",
        "_kept",
        "idents",
        "members",
        "owner",
        "prefix",
        "runner",
        "size",
        "tail",
        "theta",
    )

    def __init__(self, size: int) -> None:
        self.size = size
        self.owner: array[int] = array("H")
        self.runner: array[int] = array("H")
        self.members: list[Member | None] = []
        self.idents: dict[str, int] = {}
        self.theta = 0.0  # the common score every build walks up to
        self.tail = bytearray()  # 1 where the cell's owner scores above theta
        self.prefix: object = None  # the numpy kernels' kept approximate E(k) of the first ranks
        self._kept: dict[int, tuple[int, ...]] = {}

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def build(cls, spec: Iterable[tuple[str, int]], size: int = TABLE_SIZE) -> RendezvousTable:
        """A fresh table for these (key, weight > 0) pairs: O(T log n)."""
        table = cls(size)
        members = [Member(key, weight, size) for key, weight in sorted(spec)]
        table.members = list(members)
        table.idents = {m.key: i for i, m in enumerate(members)}
        if not members:
            return table
        total = sum(m.weight for m in members)
        theta = math.log(2 * len(members)) / total  # leaves about T / 2n cells to the tail
        table.theta = theta
        lengths = [m.walk_length(theta, size) for m in members]
        if numpy_in_use():
            from lbalgo import _table_numpy
            table.owner, table.runner, table.tail, table.prefix = _table_numpy.build(
                members, lengths, size, theta
            )
            return table
        exps = exponentials(max(lengths), size)
        inf = math.inf
        best = [inf] * size
        second = [inf] * size
        owner = [NONE] * size
        runner = [NONE] * size
        # members in key order with strict comparisons: on equal scores the lower key wins
        for ident, member in enumerate(members):
            count, skip = lengths[ident], member.skip
            # cells and scores of its first ranks, each made in one C loop: offset + k * skip
            # mod T, and E(k) / weight (the same float division as Member.score)
            cells = map(size.__rmod__, range(member.offset, member.offset + count * skip, skip))
            scores = map(float(member.weight).__rtruediv__, exps[:count])
            for cell, score in zip(cells, scores, strict=True):
                if score < best[cell]:
                    second[cell] = best[cell]
                    runner[cell] = owner[cell]
                    best[cell] = score
                    owner[cell] = ident
                elif score < second[cell]:
                    second[cell] = score
                    runner[cell] = ident
        del best, second
        tail = bytearray(map(NONE.__eq__, owner))
        for cell in compress(range(size), tail):
            owner[cell], runner[cell] = table._top_two(cell)
        table.owner = array("H", owner)
        table.runner = array("H", runner)
        table.tail = tail
        return table

    def copy(self) -> RendezvousTable:
        """An independent copy to change (the arrays are copied: two 2-byte arrays of T)."""
        other = RendezvousTable(self.size)
        other.owner = array("H", self.owner)
        other.runner = array("H", self.runner)
        other.members = list(self.members)
        other.idents = dict(self.idents)
        other.theta = self.theta
        other.tail = bytearray(self.tail)
        other.prefix = self.prefix  # never changed in place: shared
        return other

    # -- reading -------------------------------------------------------------------------------

    @property
    def spec(self) -> tuple[tuple[str, int], ...]:
        """The (key, weight) pairs, sorted by key."""
        return tuple(sorted((m.key, m.weight) for m in self.members if m is not None))

    def ident(self, key: str) -> int:
        """The id stored in ``owner``/``runner`` for the member with this key."""
        return self.idents[key]

    def buffers(self) -> tuple[object, ...]:
        """The large objects the table holds: the per-cell arrays (owner, runner-up, tail
        flag: 5 T bytes) and the numpy kernels' kept exponentials (shared with copies)."""
        kept = () if self.prefix is None else (self.prefix,)
        return (self.owner, self.runner, self.tail, *kept)

    def nbytes(self) -> int:
        """Bytes held by :meth:`buffers`."""
        return sum(map(sys.getsizeof, self.buffers()))

    def drifted(self) -> bool:
        """Whether updates have moved the group so far from the last build that a fresh one
        is cheaper than more updates (walks or the tail several times their built size)."""
        members = [m for m in self.members if m is not None]
        if not members:
            return False
        expected = math.log(2 * len(members))
        spread = self.theta * sum(m.weight for m in members)
        return spread > 2 * expected + 1 or self.tail.count(1) > 4 * self.size / len(members) + 64

    def ranking(self, cell: int) -> Iterator[int]:
        """Member ids from lowest to highest score at ``cell`` (ties: lower key). O(n log n),
        then O(1) for the first few while the cell is among the last ranked (the clients of a
        down backend keep coming back to the same cells)."""
        kept = self._kept.get(cell)
        if kept is not None:
            yield from kept
            if len(kept) < _PREFIX:
                return
        size = self.size
        scored = sorted(
            (m.score(cell, size), m.key, i) for i, m in enumerate(self.members) if m is not None
        )
        if kept is None:
            if len(self._kept) >= _RANKINGS_KEPT:
                self._kept.clear()
            self._kept[cell] = tuple(i for _score, _key, i in scored[:_PREFIX])
        yield from (i for _score, _key, i in scored[len(kept or ()) :])

    # -- changes -------------------------------------------------------------------------------

    def add(self, key: str, weight: int) -> None:
        """Add a member: walk it up to ``theta``, then check the tail cells."""
        if key in self.idents:
            raise ValueError(f"member {key!r} is already in the table")
        size, theta = self.size, self.theta
        if not self.idents:
            fresh = RendezvousTable.build([(key, weight)], size)
            for name in RendezvousTable.__slots__[1:]:
                setattr(self, name, getattr(fresh, name))
            return
        member = Member(key, weight, size)
        ident = self._new_ident(member)
        self._kept.clear()
        if numpy_in_use():
            from lbalgo import _table_numpy
            _table_numpy.add(self, ident)
            return
        # the numpy kernels' kept exponentials must cover every member's walk: they are made
        # again, long enough, by the next update with numpy
        self.prefix = None
        members, owner, runner, tail = self.members, self.owner, self.runner, self.tail
        # (offset, inverse, weight, key) by id: the scores of the cell's holders, inline
        params = [
            (m.offset, m.inverse, m.weight, m.key) if m is not None else (0, 1, 1, "")
            for m in members
        ]
        log1p, half = _log1p, 0.5
        cell, skip = member.offset, member.skip
        for rank in range(member.walk_length(theta, size)):
            score = -log1p(-(rank + half) / size) / weight
            held = owner[cell]
            offset, inverse, held_weight, held_key = params[held]
            rival = -log1p(-((cell - offset) * inverse % size + half) / size) / held_weight
            if score < rival or (score == rival and key < held_key):
                owner[cell] = ident
                # the old owner is now second; out of the tail it must score <= theta
                if tail[cell]:
                    runner[cell] = NONE
                    tail[cell] = 0
                else:
                    runner[cell] = held
            else:
                second = runner[cell]
                if second != NONE:
                    offset, inverse, other_weight, other_key = params[second]
                    other = -log1p(-((cell - offset) * inverse % size + half) / size) / other_weight
                    if score < other or (score == other and key < other_key):
                        runner[cell] = ident
            cell += skip
            if cell >= size:
                cell -= size
        for cell in compress(range(size), tail):
            score = member.score(cell, size)
            if score <= theta:
                continue  # the walk has seen it
            held = owner[cell]
            rival_member = members[held]
            assert rival_member is not None
            rival = rival_member.score(cell, size)
            if score < rival or (score == rival and key < rival_member.key):
                owner[cell] = ident
                runner[cell] = held
                continue
            second = runner[cell]
            if second != NONE:
                other_member = members[second]
                assert other_member is not None
                other = other_member.score(cell, size)
                if score < other or (score == other and key < other_member.key):
                    runner[cell] = ident

    def remove(self, key: str) -> None:
        """Remove a member: its cells go to their runners-up (scored again where unknown)."""
        ident = self.idents.pop(key)
        member = self.members[ident]
        assert member is not None
        self.members[ident] = None
        self._kept.clear()
        if not self.idents:
            self.owner = array("H")
            self.runner = array("H")
            self.tail = bytearray()
            return
        if numpy_in_use():
            from lbalgo import _table_numpy
            _table_numpy.remove(self, member, ident)
            return
        size, theta = self.size, self.theta
        owner, runner, tail = self.owner, self.runner, self.tail
        cell, skip = member.offset, member.skip
        for _rank in range(member.walk_length(theta, size)):
            if owner[cell] == ident:
                self._hand_over(cell)
            elif runner[cell] == ident:
                runner[cell] = NONE
            cell += skip
            if cell >= size:
                cell -= size
        for cell in list(compress(range(size), tail)):
            if owner[cell] == ident:
                self._hand_over(cell)
            elif runner[cell] == ident:
                runner[cell] = NONE

    def reweight(self, key: str, weight: int) -> None:
        """Change a member's weight (a removal and an addition of the same key)."""
        self.remove(key)
        self.add(key, weight)

    # -- internals -----------------------------------------------------------------------------

    def _new_ident(self, member: Member) -> int:
        members = self.members
        for ident, slot in enumerate(members):
            if slot is None:
                members[ident] = member
                break
        else:
            ident = len(members)
            if ident >= NONE:
                raise ValueError("too many members for one table")
            members.append(member)
        self.idents[member.key] = ident
        return ident

    def _hand_over(self, cell: int) -> None:
        """The owner of ``cell`` has left: its runner-up takes over, or the cell is scored."""
        owner, runner, tail = self.owner, self.runner, self.tail
        second = runner[cell]
        if second != NONE:
            owner[cell] = second
            runner[cell] = NONE
            return  # the tail keeps it or not: the new owner scores on the same side of theta
        first, second = self._top_two(cell)
        owner[cell] = first
        member = self.members[first]
        assert member is not None
        if member.score(cell, self.size) > self.theta:
            tail[cell] = 1
            runner[cell] = second
            return
        tail[cell] = 0
        other = self.members[second] if second != NONE else None
        known = other is not None and other.score(cell, self.size) <= self.theta
        runner[cell] = second if known else NONE

    def _top_two(self, cell: int) -> tuple[int, int]:
        """The ids with the lowest and second lowest score at ``cell``: O(n)."""
        size, log1p = self.size, _log1p
        scored = [
            (-log1p(-((cell - m.offset) * m.inverse % size + 0.5) / size) / m.weight, m.key, i)
            for i, m in enumerate(self.members)
            if m is not None
        ]
        best = heapq.nsmallest(2, scored)
        return best[0][2], best[1][2] if len(best) > 1 else NONE

    def _check(self) -> None:
        """Assert every invariant against a full scoring of every cell: O(n T), for tests."""
        size, theta = self.size, self.theta
        cells = size if self.idents else 0
        assert len(self.owner) == len(self.runner) == len(self.tail) == cells
        if HAVE_NUMPY:
            from lbalgo import _table_numpy
            walks = [m.walk_length(theta, size) for m in self.members if m is not None]
            _table_numpy.check_prefix(self.prefix, size, walks)
        assert {m.key: i for i, m in enumerate(self.members) if m is not None} == self.idents
        if not self.idents:
            return
        for cell in range(size):
            first, second = self._top_two(cell)
            assert self.owner[cell] == first, cell
            held = self.members[first]
            assert held is not None
            in_tail = held.score(cell, size) > theta
            assert self.tail[cell] == in_tail, cell
            known = self.runner[cell]
            if known != NONE:
                assert known == second, cell
                other = self.members[known]
                assert other is not None
                assert in_tail or other.score(cell, size) <= theta, cell
