"""The lookup table behind :class:`~lbalgo.SourceIPHash`'s default mode: a rendezvous table
that is updated in place of being rebuilt.

Every member ``i`` has a pseudo-random permutation of the table's cells, ``rank_i(cell) =
(cell - offset_i) / skip_i mod T`` (T prime, offset and skip from its key), and scores a cell
``E(rank_i(cell)) / weight_i`` with ``E(k) = -ln(1 - (k + 1/2) / T)``: an exponential
variable of rate ``weight_i``. A cell belongs to the member with the lowest score (ties: the
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
"""

from __future__ import annotations

import heapq
import math
import sys
import weakref
from array import array
from collections.abc import Iterable, Iterator
from itertools import compress

import mmh3

__all__ = [
    "NONE",
    "PERMUTATION_SEED",
    "TABLE_SIZE",
    "Member",
    "RendezvousTable",
    "permutation",
    "table_for",
]

TABLE_SIZE = 393_209
"""Cells in the table: a prime, so that every skip walks a full permutation."""

PERMUTATION_SEED = 0x4C42_0001
"""The mmh3 seed that turns a member key into its permutation (part of hash version 1)."""

NONE = 0xFFFF
"""The member id stored for "no member" / "runner-up unknown"."""

_RANKINGS_KEPT = 4096  # recent cells whose first choices are kept (clients of a down backend)
_PREFIX = 8  # choices kept per cell: enough for all but the rarest fall-through
_log1p = math.log1p


def permutation(key: str, size: int = TABLE_SIZE) -> tuple[int, int]:
    """(offset, skip) of the member with this key: its rank-k cell is offset + k * skip."""
    digest = mmh3.hash128(key.encode("utf-8"), PERMUTATION_SEED)
    return digest % size, (digest >> 64) % (size - 1) + 1


class Member:
    """One member of a table: its key, weight and permutation."""

    __slots__ = ("inverse", "key", "offset", "skip", "weight")

    def __init__(self, key: str, weight: int, size: int) -> None:
        self.key = key
        self.weight = weight
        self.offset, self.skip = permutation(key, size)
        self.inverse = pow(self.skip, -1, size)

    def score(self, cell: int, size: int) -> float:
        """This member's score at ``cell``: O(1)."""
        rank = (cell - self.offset) * self.inverse % size
        return -_log1p(-(rank + 0.5) / size) / self.weight

    def walk_length(self, theta: float, size: int) -> int:
        """How many of its first ranks score at most ``theta``: the walk up to ``theta``."""
        weight = self.weight
        count = max(0, min(size, int(size * -math.expm1(-theta * weight))))
        # the closed form is within a rank or two; settle the border with the exact score
        while count < size and -_log1p(-(count + 0.5) / size) / weight <= theta:
            count += 1
        while count > 0 and -_log1p(-(count - 0.5) / size) / weight > theta:
            count -= 1
        return count


def _exponentials(count: int, size: int) -> list[float]:
    return [-_log1p(-(k + 0.5) / size) for k in range(count)]


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
        "_tail",
        "_theta",
        "idents",
        "members",
        "owner",
        "runner",
        "size",
    )

    def __init__(self, size: int) -> None:
        self.size = size
        self.owner: array[int] = array("H")
        self.runner: array[int] = array("H")
        self.members: list[Member | None] = []
        self.idents: dict[str, int] = {}
        self._theta = 0.0
        self._tail = bytearray()  # 1 where the cell is in the tail
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
        table._theta = theta
        lengths = [m.walk_length(theta, size) for m in members]
        exps = _exponentials(max(lengths), size)
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
        table._tail = tail
        return table

    def copy(self) -> RendezvousTable:
        """An independent copy to change (the arrays are copied: two 2-byte arrays of T)."""
        other = RendezvousTable(self.size)
        other.owner = array("H", self.owner)
        other.runner = array("H", self.runner)
        other.members = list(self.members)
        other.idents = dict(self.idents)
        other._theta = self._theta
        other._tail = bytearray(self._tail)
        return other

    # -- reading -------------------------------------------------------------------------------

    @property
    def spec(self) -> tuple[tuple[str, int], ...]:
        """The (key, weight) pairs, sorted by key."""
        return tuple(sorted((m.key, m.weight) for m in self.members if m is not None))

    def ident(self, key: str) -> int:
        """The id stored in ``owner``/``runner`` for the member with this key."""
        return self.idents[key]

    def nbytes(self) -> int:
        """Bytes held by the per-cell arrays (owner, runner-up, tail flag): 5 T when built."""
        return sum(map(sys.getsizeof, (self.owner, self.runner, self._tail)))

    def drifted(self) -> bool:
        """Whether updates have moved the group so far from the last build that a fresh one
        is cheaper than more updates (walks or the tail several times their built size)."""
        members = [m for m in self.members if m is not None]
        if not members:
            return False
        expected = math.log(2 * len(members))
        spread = self._theta * sum(m.weight for m in members)
        return spread > 2 * expected + 1 or self._tail.count(1) > 4 * self.size / len(members) + 64

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
        size, theta = self.size, self._theta
        if not self.idents:
            fresh = RendezvousTable.build([(key, weight)], size)
            for name in RendezvousTable.__slots__[1:]:
                setattr(self, name, getattr(fresh, name))
            return
        member = Member(key, weight, size)
        ident = self._new_ident(member)
        members, owner, runner, tail = self.members, self.owner, self.runner, self._tail
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
        self._kept.clear()

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
            self._tail = bytearray()
            return
        size, theta = self.size, self._theta
        owner, runner, tail = self.owner, self.runner, self._tail
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
        owner, runner, tail = self.owner, self.runner, self._tail
        second = runner[cell]
        if second != NONE:
            owner[cell] = second
            runner[cell] = NONE
            return  # the tail keeps it or not: the new owner scores on the same side of theta
        first, second = self._top_two(cell)
        owner[cell] = first
        member = self.members[first]
        assert member is not None
        if member.score(cell, self.size) > self._theta:
            tail[cell] = 1
            runner[cell] = second
            return
        tail[cell] = 0
        other = self.members[second] if second != NONE else None
        known = other is not None and other.score(cell, self.size) <= self._theta
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
        size, theta = self.size, self._theta
        cells = size if self.idents else 0
        assert len(self.owner) == len(self.runner) == len(self._tail) == cells
        assert {m.key: i for i, m in enumerate(self.members) if m is not None} == self.idents
        if not self.idents:
            return
        for cell in range(size):
            first, second = self._top_two(cell)
            assert self.owner[cell] == first, cell
            held = self.members[first]
            assert held is not None
            in_tail = held.score(cell, size) > theta
            assert self._tail[cell] == in_tail, cell
            known = self.runner[cell]
            if known != NONE:
                assert known == second, cell
                other = self.members[known]
                assert other is not None
                assert in_tail or other.score(cell, size) <= theta, cell


# tables in use by some scheduler, by size and spec: a table is never changed once made
# (updates change a copy), so schedulers over one group share one; it goes with the last one
_LIVE: weakref.WeakValueDictionary[tuple[int, tuple[tuple[str, int], ...]], RendezvousTable] = (
    weakref.WeakValueDictionary()
)


def table_for(
    current: RendezvousTable | None, spec: tuple[tuple[str, int], ...], size: int = TABLE_SIZE
) -> RendezvousTable:
    """The table for ``spec`` (sorted (key, weight > 0) pairs): one in use elsewhere,
    ``current`` changed where the spec differs (on a copy: readers may still hold it), or a
    fresh build when many members changed or updates have drifted far from the last build."""
    table = _LIVE.get((size, spec))
    if table is None:
        table = _changed_table(current, spec, size)
        _LIVE[size, spec] = table
    return table


def _changed_table(
    current: RendezvousTable | None, spec: tuple[tuple[str, int], ...], size: int
) -> RendezvousTable:
    if current is None or current.size != size:
        return RendezvousTable.build(spec, size)
    old = dict(current.spec)
    new = dict(spec)
    gone = [key for key in old if key not in new]
    added = [key for key in new if key not in old]
    changed = [key for key in new if key in old and old[key] != new[key]]
    # each change walks about T/n cells (a re-weight twice): past n/4 changes, build afresh
    if (len(gone) + len(added) + 2 * len(changed)) * 4 > max(4, len(spec)):
        return RendezvousTable.build(spec, size)
    table = current.copy()
    for key in gone:
        table.remove(key)
    for key in changed:
        table.reweight(key, new[key])
    for key in added:
        table.add(key, new[key])
    return RendezvousTable.build(spec, size) if table.drifted() else table
