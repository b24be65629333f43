"""The one counter model: picks, ends and open connections, counted without a lock.

A proxy counts a pick and a release on every request, from any thread, so the counts must
be exact without a lock on the hot path. Each count is a ``range`` iterator: ``next()`` on
it is one C call (under the GIL nothing runs in the middle of it), it returns the count
*before* the step (which is what makes a release's check exact, see :meth:`Tally.end`),
and ``operator.length_hint`` reads how many steps remain, which gives the count back in
another C call: no parsing, no object per event, O(1) memory for any count.

Two implementations with one behaviour: :class:`PyTally` here, and the C accelerator's
``lbalgo._hotpath.Tally`` (its counts are C counters with the same ``next()`` and
``__length_hint__``; a release there is one C call). :data:`Tally`, :func:`new_count` and
:func:`steps_left` are the one in use (C when built, see ``lbalgo._accel``); both stay
importable side by side, which the tests use to check that they agree.

>>> tally = Tally()
>>> next(tally.picks), next(tally.picks), tally.open
(0, 1, 2)
>>> tally.end(), tally.end(), tally.end()  # the third release has no pick left to end
(True, True, False)
>>> tally.open, tally.picked
(0, 2)
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from operator import length_hint
from threading import Lock
from typing import TYPE_CHECKING

from lbalgo._accel import compiled

__all__ = ["ORIGIN", "PyTally", "Tally", "count_of", "new_count", "steps_left"]

_hotpath = compiled("_hotpath")

_VOID_LOCK = Lock()  # only the rare over-release path takes it

ORIGIN = sys.maxsize
"""Steps a count can take: ``range(sys.maxsize)`` is the largest range CPython keeps in a
machine word (2**63 - 1 on 64-bit builds; a year at a billion picks a second uses 2**55)."""


_range_steps_left: Callable[[Iterator[int]], int] = type(iter(range(ORIGIN))).__length_hint__  # type: ignore[attr-defined]
"""``_range_steps_left(count)``: ``ORIGIN`` minus the count, in one C call. The unbound method of
the ``range`` iterator type: the interpreter calls it without building a bound method, which
makes it the cheapest read of a count (about a third of ``operator.length_hint``'s cost)."""


def _range_count() -> Iterator[int]:
    """A fresh pure-Python count at 0: ``next()`` on it adds one and returns the count
    before. O(1)."""
    return iter(range(ORIGIN))


def count_of(count: Iterator[int]) -> int:
    """The number of ``next()`` calls made on ``count`` so far, in one C call. O(1).

    >>> c = new_count(); _ = next(c); count_of(c)
    1
    """
    return ORIGIN - length_hint(count)  # not on hot paths: see steps_left


class PyTally:
    """Picks and ends of one backend in one scheduler, and the ends voided because no pick
    was left open for them; the open count is ``picks - ends + voided``.

    ``picks`` and ``ends`` are counts that only grow, stepped by single ``next()`` calls, so
    no two threads can lose a step. ``limit`` is ``ORIGIN + voided``: the only number a
    release compares with besides the two counts (see :meth:`end`); it changes only under
    a lock, on the rare path where a caller released more than it picked. O(1) each.
    """

    __slots__ = ("ends", "limit", "picks")

    def __init__(self) -> None:
        self.picks = _range_count()
        self.ends = _range_count()
        self.limit = ORIGIN

    @property
    def picked(self) -> int:
        """Picks so far."""
        return count_of(self.picks)

    @property
    def open(self) -> int:
        """Picks not yet released, never below 0, O(1).

        The voided ends are read first and picks last: each of the three only grows, so a
        release racing with this read can make it high by one for an instant, never low.
        """
        voided = self.limit - ORIGIN
        ends = count_of(self.ends)
        opened = count_of(self.picks) - ends + voided
        return opened if opened > 0 else 0

    def end(self) -> bool:
        """Count one release; ``False`` when no pick was left open (then it counts nothing).

        ``next()`` numbers the end: end number ``i`` is within the open count when
        ``i - voided`` is below the picks, that is when ``i`` plus the picks' remaining steps
        is below ``limit``: one ``next()``, one read and one comparison, lock-free. A release that
        finds itself beyond the open count voids the excess (:meth:`void_excess`). O(1).
        """
        if next(self.ends) + _range_steps_left(self.picks) < self.limit:
            return True
        return self.void_excess()

    def void_excess(self) -> bool:
        """The rare path of :meth:`end`: void the ends beyond the picks, computed from the
        totals under a lock (ends read first and picks last, so that a pick and its release
        racing with the fix are never voided); ``True`` if the calling release still
        counts (someone else voided the excess, or a pick came meanwhile)."""
        with _VOID_LOCK:
            ends = count_of(self.ends)
            excess = ends - (self.limit - ORIGIN) - count_of(self.picks)
            if excess > 0:
                self.limit += excess
        return excess <= 0

    def _check(self) -> None:
        """Assert the invariant: 0 <= voided <= ends, and ends - voided <= picks."""
        picks, ends, voided = count_of(self.picks), count_of(self.ends), self.limit - ORIGIN
        assert 0 <= voided <= ends, (picks, ends, voided)
        assert ends - voided <= picks, (picks, ends, voided)


# The implementation in use: ``Tally()`` a fresh tally, ``new_count()`` a fresh count at 0
# (``next()`` adds one and returns the count before), ``steps_left(count)`` ORIGIN minus the
# count in one C call (the unbound ``__length_hint__`` of the count's type: the cheapest read).
if TYPE_CHECKING or _hotpath is None:
    Tally = PyTally
    new_count = _range_count
    steps_left = _range_steps_left
else:  # the C tally, and its count type's reads (a C count is not a range iterator)
    Tally = _hotpath.Tally
    new_count = _hotpath.Count
    steps_left = _hotpath.Count.__length_hint__
