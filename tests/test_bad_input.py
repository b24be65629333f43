"""Defects found in review of the public entry points, each pinned by a test: bad input gets
the documented error naming the field and value with state unchanged, and lock-free reads
never see a torn count (see each test's docstring).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

import lbalgo._counter as counter_module
from lbalgo import (
    Backend,
    BackendGroup,
    InvalidGroupError,
    LedgerUnavailable,
    LocalLedger,
    NoBackendAvailable,
    SmoothWeightedRoundRobin,
    SourceIPHash,
    StickySessions,
    WeightedLeastConnections,
    attempts,
)
from lbalgo._base import BaseScheduler
from lbalgo._counter import PyTally

GROUP = BackendGroup(
    [Backend("10.0.0.1", 80, 3), Backend("10.0.0.2", 80, 1), Backend("10.0.0.3", 80, 1)]
)
SCHEDULERS = [SmoothWeightedRoundRobin, WeightedLeastConnections, SourceIPHash]


def _snapshot(sched: BaseScheduler) -> dict[str, tuple[int, int, int, bool]]:
    return {
        key: (s.picks, s.open_connections, s.failures, s.available)
        for key, s in sched.stats().items()
    }


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize("failed", ["yes", 1, None, 0])
@pytest.mark.parametrize("max_fails", [0, 1])
def test_release_rejects_a_non_bool_failed_and_changes_nothing(
    cls: type[BaseScheduler], failed: object, max_fails: int
) -> None:
    """``release(b, failed="yes")`` used to count a failure (truthy) or a plain release
    (falsy, also on WLC's fast path, taken without ``max_fails``) without a word: the flag is
    now checked first."""
    sched = cls(GROUP, max_fails=max_fails)
    backend = sched.pick("192.0.2.1")
    before = _snapshot(sched)
    with pytest.raises(TypeError, match=rf"failed must be a bool, got {failed!r}"):
        sched.release(backend, failed=failed)  # type: ignore[arg-type]
    assert _snapshot(sched) == before
    sched.release(backend)
    assert sched.open_connections(backend.key) == 0


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize("exclude", [5, 2.5, object()])
def test_pick_with_a_non_iterable_exclude_names_the_field(
    cls: type[BaseScheduler], exclude: object
) -> None:
    """``pick(exclude=5)`` raised a bare "'int' object is not iterable"."""
    sched = cls(GROUP)
    before = _snapshot(sched)
    with pytest.raises(TypeError, match=r"exclude must be a collection of backend keys, got"):
        sched.pick("192.0.2.1", exclude=exclude)  # type: ignore[arg-type]
    assert _snapshot(sched) == before


def test_attempts_checks_the_scheduler_when_called() -> None:
    """``attempts(None)`` returned a generator that failed with AttributeError at the first
    ``next``, although its docstring promises arguments are checked when it is called."""
    with pytest.raises(TypeError, match=r"scheduler must implement lbalgo.Scheduler, got None"):
        attempts(None)  # type: ignore[arg-type]
    leases = list(attempts(SmoothWeightedRoundRobin(GROUP), tries=1))
    assert len(leases) == 1


class _FlakyLedger(LocalLedger):
    """A local ledger whose ``take`` fails as a shared one does while its store is down."""

    __slots__ = ("down",)

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def take(self, key: str) -> None:
        if self.down:
            raise LedgerUnavailable("store down")
        super().take(key)


def test_a_sticky_pick_that_the_ledger_refuses_counts_nothing() -> None:
    """A sticky session's pick of its bound backend (``BaseScheduler._take``) counted the
    pick before the ledger's ``take``; when the ledger raised, the caller got the error and
    the scheduler kept one open connection that nobody would ever release."""
    ledger = _FlakyLedger()
    sched = WeightedLeastConnections(GROUP, ledger=ledger)
    sticky = StickySessions(sched)
    bound = sticky.pick("session-1")
    sched.release(bound)
    before = _snapshot(sched)
    ledger.down = True
    with pytest.raises(LedgerUnavailable):
        sticky.pick("session-1")
    assert _snapshot(sched) == before
    assert ledger.count(bound.key) == 0
    ledger.down = False
    assert sticky.pick("session-1") == bound
    assert sched.open_connections(bound.key) == ledger.count(bound.key) == 1


def test_open_count_read_without_the_lock_never_goes_negative(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``Tally.open`` read the pick counter, then the release count: a pick and its release
    by other threads in between (lock-free fast paths count picks outside the lock) made
    ``open_connections`` return -1. Simulated deterministically: every count read is where
    another thread's pick and release land. The pure-Python tally's reads are the ones at
    stake (the C tally reads its three counts in one step under the GIL)."""
    slot = PyTally()
    real = counter_module.count_of

    def racing_read(count: Iterator[int]) -> int:
        value = real(count)
        next(slot.picks)  # another thread picks ...
        assert slot.end()  # ... and releases, between the reads
        return value

    monkeypatch.setattr(counter_module, "count_of", racing_read)
    assert slot.open >= 0
    monkeypatch.undo()
    assert slot.open == 0
    slot._check()


def test_source_ip_hash_fast_path_survives_an_emptied_table() -> None:
    """The lock-free fast path checked ``_fast`` and then indexed ``_table``; an update to an
    empty group landing in between left it indexing an empty list (a bare IndexError, which
    API.md rules out). Simulated: the table is emptied while ``_fast`` still reads True."""
    sched = SourceIPHash(GROUP)
    sched.update(BackendGroup())
    sched._fast = True  # the stale flag a racing reader may still see
    with pytest.raises(NoBackendAvailable):
        sched.pick("192.0.2.1")
    with pytest.raises(NoBackendAvailable):
        sched.connection("192.0.2.1")


def test_a_ledger_already_in_use_is_refused_with_both_schedulers_unchanged() -> None:
    """Two schedulers on one ``LocalLedger`` overwrote each other's eligible set, and the
    first one's ``pick`` then raised a bare ``KeyError`` for a key of the second's group."""
    ledger = LocalLedger()
    first = WeightedLeastConnections(BackendGroup([Backend("10.0.0.1", 80)]), ledger=ledger)
    other = BackendGroup([Backend("10.0.0.2", 80)])
    with pytest.raises(ValueError, match=r"ledger is already used by another .* got <LocalLedger"):
        WeightedLeastConnections(other, ledger=ledger)
    assert first.pick().key == "10.0.0.1:80"
    assert ledger.count("10.0.0.1:80") == 1
    assert ledger.count("10.0.0.2:80") == 0
    # a construction that fails on another option does not claim the ledger
    spare = LocalLedger()
    with pytest.raises(ValueError, match=r"slow_start"):
        WeightedLeastConnections(other, ledger=spare, slow_start=-1)
    assert WeightedLeastConnections(other, ledger=spare).pick().key == "10.0.0.2:80"
    # once its scheduler is gone, a ledger may serve a new one
    del first
    gc.collect()
    again = WeightedLeastConnections(other, ledger=ledger)
    assert again.pick().key == "10.0.0.2:80"


def test_local_ledger_count_is_not_torn_by_a_concurrent_set_eligible() -> None:
    """``LocalLedger.count`` looked the key's position up in the index, then read the count
    list: a ``set_eligible`` by the scheduler's thread in between (the WLC docstring points
    operators at ``sched.ledger.count``) paired an old position with the new list, giving
    another key's count or an IndexError. Simulated: the lookup is where it lands."""
    ledger = LocalLedger()
    ledger.set_eligible([("a", 32), ("b", 32)])
    for _ in range(3):
        ledger.acquire(frozenset({"a"}))  # b holds 3

    fired: list[bool] = []

    class Racing(dict[str, int]):
        def get(self, key: str, default: int | None = None) -> int | None:  # type: ignore[override]
            position = super().get(key, default)
            if not fired:
                fired.append(True)
                ledger.set_eligible([("b", 32)])  # "a" leaves; b moves to position 0
            return position

    ledger._index = Racing(ledger._index)
    assert ledger.count("b") == 3


@pytest.mark.parametrize("bad", [None, 5, Backend("10.0.0.1", 80)])
def test_a_group_of_a_non_iterable_raises_invalid_group_error(bad: object) -> None:
    """``BackendGroup(None)`` (or a lone Backend) raised a bare "'NoneType' object is not
    iterable" TypeError instead of the documented InvalidGroupError naming what it got."""
    with pytest.raises(InvalidGroupError, match=rf"got {type(bad).__name__}"):
        BackendGroup(bad)  # type: ignore[arg-type]
