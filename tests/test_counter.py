"""The one counter model (lbalgo._counter): exact open counts without a lock, releases beyond
the open count ignored, sequentially and under threads; the pure-Python tally and the C one
(lbalgo._hotpath.Tally) alike, and in lockstep with each other."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from lbalgo import _counter
from lbalgo._counter import ORIGIN, PyTally, count_of, new_count
from support.accel import HOTPATH, TALLIES, needs_hotpath
from support.threads import run_threads

COUNTS: list[Any] = [pytest.param(lambda: iter(range(ORIGIN)), id="python")]
if HOTPATH is not None:
    COUNTS.append(pytest.param(HOTPATH.Count, id="c"))


@pytest.mark.parametrize("make", COUNTS)
def test_a_count_counts_and_reads_back(make: Callable[[], Iterator[int]]) -> None:
    count = make()
    assert count_of(count) == 0
    assert [next(count) for _ in range(5)] == [0, 1, 2, 3, 4]  # the count before each step
    assert count_of(count) == 5
    assert iter(count) is count
    assert ORIGIN > 2**62  # a machine word's worth: no wrap in any realistic lifetime


def test_the_module_level_names_are_one_implementation() -> None:
    """``Tally``, ``new_count`` and ``steps_left`` come from the same implementation: a
    pure tally's counts are range iterators, a C tally's are C counts."""
    tally = _counter.Tally()
    assert type(new_count()) is type(tally.picks)
    next(tally.picks)
    assert _counter.steps_left(tally.picks) == ORIGIN - 1
    assert (_counter.Tally is PyTally) == (HOTPATH is None)


@needs_hotpath
def test_the_c_types_refuse_arguments() -> None:
    assert HOTPATH is not None
    with pytest.raises(TypeError, match="takes no arguments"):
        HOTPATH.Tally(1)
    with pytest.raises(TypeError, match="takes no arguments"):
        HOTPATH.Count(start=3)


class TalliesAgainstAnInteger(RuleBasedStateMachine):
    """Any sequence of picks and releases: every tally is the plain integer rule, and the
    pure-Python and C tallies answer alike step by step (``_check()`` after each)."""

    def __init__(self) -> None:
        super().__init__()
        self.tallies = [p.values[0]() for p in TALLIES]
        self.open = 0
        self.picks = 0

    @rule(count=st.integers(1, 3))
    def pick(self, count: int) -> None:
        for tally in self.tallies:
            assert [next(tally.picks) for _ in range(count)] == list(
                range(self.picks, self.picks + count)
            )
        self.open += count
        self.picks += count

    @rule()
    def release(self) -> None:
        for tally in self.tallies:
            assert tally.end() == (self.open > 0)
        self.open = max(0, self.open - 1)

    @rule()
    def void_excess(self) -> None:
        # nothing to void while every end is within the picks
        assert [tally.void_excess() for tally in self.tallies] == [True] * len(self.tallies)

    @invariant()
    def agrees(self) -> None:
        for tally in self.tallies:
            tally._check()
            assert tally.open == self.open
            assert tally.picked == self.picks
        limits = {tally.limit for tally in self.tallies}
        assert len(limits) == 1
        assert limits.pop() >= ORIGIN


TestTalliesAgainstAnInteger = TalliesAgainstAnInteger.TestCase


@pytest.mark.parametrize("make", TALLIES)
def test_threads_releasing_more_than_they_picked_never_go_negative(make: Any) -> None:
    """Eight threads race to release the same few connections many times over: exactly as
    many releases count as there were picks, and the count ends at 0, not below."""
    tally = make()
    picks = 1_000
    for _ in range(picks):
        next(tally.picks)
    counted = []
    lock = threading.Lock()

    def work(_: int) -> None:
        mine = sum(tally.end() for _ in range(400))
        with lock:
            counted.append(mine)

    run_threads(work, [(i,) for i in range(8)])
    tally._check()
    assert sum(counted) == picks
    assert tally.open == 0


@pytest.mark.parametrize("make", TALLIES)
def test_threads_picking_and_releasing_lose_nothing(make: Any) -> None:
    tally = make()

    def work(_: int) -> None:
        for _ in range(5_000):
            next(tally.picks)
            assert tally.end()

    run_threads(work, [(i,) for i in range(6)])
    tally._check()
    assert tally.open == 0
    assert tally.picked == 30_000
