"""Each member's pseudo-random permutation of a rendezvous table's cells, and its scores.

Member ``i`` visits the cells in the order ``offset_i + k * skip_i mod T`` (T prime, offset and
skip from an mmh3 digest of its key), so its rank at a cell is ``(cell - offset_i) / skip_i
mod T``, and scores the cell ``E(rank) / weight_i`` with ``E(k) = -ln(1 - (k + 1/2) / T)``: an
exponential variable of rate ``weight_i``. Both the pure-Python table (:mod:`lbalgo._table`)
and its numpy kernels (:mod:`lbalgo._table_numpy`) score with exactly these operations; the
recipe is part of :data:`lbalgo.source_ip_hash.HASH_VERSION`.
"""

from __future__ import annotations

import math

import mmh3

__all__ = ["NONE", "PERMUTATION_SEED", "TABLE_SIZE", "Member", "exponentials", "permutation"]

TABLE_SIZE = 393_209
"""Cells in the table: a prime, so that every skip walks a full permutation."""

PERMUTATION_SEED = 0x4C42_0001
"""The mmh3 seed that turns a member key into its permutation (part of hash version 1)."""

NONE = 0xFFFF
"""The member id stored for "no member" / "runner-up unknown"."""

_log1p = math.log1p


def permutation(key: str, size: int = TABLE_SIZE) -> tuple[int, int]:
    """(offset, skip) of the member with this key: its rank-k cell is offset + k * skip."""
    digest = mmh3.hash128(key.encode("utf-8"), PERMUTATION_SEED)
    return digest % size, (digest >> 64) % (size - 1) + 1


def exponentials(count: int, size: int) -> list[float]:
    """``E(k)`` for the ranks ``0 .. count - 1``: O(count).

    >>> [round(e, 6) for e in exponentials(2, 1009)]
    [0.000496, 0.001488]
    """
    return [-_log1p(-(k + 0.5) / size) for k in range(count)]


class Member:
    """One member of a table: its key, weight and permutation.

    >>> member = Member("a:80", 2, 1009)
    >>> member.score(member.offset, 1009) == exponentials(1, 1009)[0] / 2
    True
    """

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
