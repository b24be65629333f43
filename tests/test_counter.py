"""The one counter model (lbalgo._counter.Tally): exact open counts without a lock, releases
beyond the open count ignored, sequentially and under threads."""

from __future__ import annotations

import threading

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from lbalgo._counter import ORIGIN, Tally, count_of, new_count
from support.threads import run_threads


def test_a_count_counts_and_reads_back() -> None:
    count = new_count()
    assert count_of(count) == 0
    assert [next(count) for _ in range(5)] == [0, 1, 2, 3, 4]  # the count before each step
    assert count_of(count) == 5
    assert ORIGIN > 2**62  # a machine word's worth: no wrap in any realistic lifetime


class TallyAgainstAnInteger(RuleBasedStateMachine):
    """Any sequence of picks and releases: the tally is the plain integer rule."""

    def __init__(self) -> None:
        super().__init__()
        self.tally = Tally()
        self.open = 0
        self.picks = 0

    @rule(count=st.integers(1, 3))
    def pick(self, count: int) -> None:
        for _ in range(count):
            next(self.tally.picks)
        self.open += count
        self.picks += count

    @rule()
    def release(self) -> None:
        assert self.tally.end() == (self.open > 0)
        self.open = max(0, self.open - 1)

    @invariant()
    def agrees(self) -> None:
        self.tally._check()
        assert self.tally.open == self.open
        assert self.tally.picked == self.picks


TestTallyAgainstAnInteger = TallyAgainstAnInteger.TestCase


def test_threads_releasing_more_than_they_picked_never_go_negative() -> None:
    """Eight threads race to release the same few connections many times over: exactly as
    many releases count as there were picks, and the count ends at 0, not below."""
    tally = Tally()
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


def test_threads_picking_and_releasing_lose_nothing() -> None:
    tally = Tally()

    def work(_: int) -> None:
        for _ in range(5_000):
            next(tally.picks)
            assert tally.end()

    run_threads(work, [(i,) for i in range(6)])
    tally._check()
    assert tally.open == 0
    assert tally.picked == 30_000
