"""The rendezvous table behind SourceIPHash: updates in place give exactly a fresh build,
and the numpy kernels give exactly the pure-Python arrays.

Small tables (a few hundred cells) let ``RendezvousTable._check`` score every cell against
every member after every step; the scheduler-level tests use the real 393,209-cell table.
Every step here runs both ways (``lbalgo._accel.use_numpy``), so these tests pass with numpy
missing too, where both ways are the pure path.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from lbalgo import Backend, BackendGroup, SourceIPHash
from lbalgo._accel import numpy_in_use
from lbalgo._table import RendezvousTable
from lbalgo._table_updates import table_for
from support.kernels import numpy_kernels

SIZES = (101, 211, 1009)
KEYS = st.sampled_from([f"10.0.0.{i}:80" for i in range(1, 25)])
WEIGHTS = st.integers(min_value=1, max_value=100)


def arrays(table: RendezvousTable) -> tuple[bytes, bytes, bytes, float, list[str | None]]:
    """Everything that defines a table: owner, runner-up and tail of every cell, theta, ids."""
    keys = [None if m is None else m.key for m in table.members]
    return bytes(table.owner), bytes(table.runner), bytes(table.tail), table.theta, keys


def both_ways(make: Callable[[], RendezvousTable]) -> RendezvousTable:
    """``make()`` in pure Python and with numpy: the same arrays, bit for bit."""
    with numpy_kernels(False):
        pure = make()
    with numpy_kernels(True):
        fast = make()
    assert arrays(fast) == arrays(pure)
    return fast


def changed_both_ways(
    table: RendezvousTable, change: str, args: tuple[object, ...]
) -> RendezvousTable:
    """One update (``add``, ``remove`` or ``reweight``) of a copy of ``table``, both ways."""

    def changed_copy() -> RendezvousTable:
        changed = table.copy()
        getattr(changed, change)(*args)
        return changed

    return both_ways(changed_copy)


def owners_by_key(table: RendezvousTable) -> list[str]:
    keys = {ident: key for key, ident in table.idents.items()}
    return [keys[ident] for ident in table.owner]


class TableUpdates(RuleBasedStateMachine):
    """Random adds, removes and re-weights on copies of one table, each step checked against
    a fresh build of the same members and against every internal invariant."""

    def __init__(self) -> None:
        super().__init__()
        self.size = 101
        self.members: dict[str, int] = {}
        self.table = RendezvousTable.build([], self.size)

    @rule(size=st.sampled_from(SIZES), members=st.dictionaries(KEYS, WEIGHTS, max_size=8))
    @precondition(lambda self: not self.members)
    def start(self, size: int, members: dict[str, int]) -> None:
        self.size = size
        self.members = dict(members)
        self.table = both_ways(lambda: RendezvousTable.build(members.items(), size))

    def _step(self, change: str, key: str, weight: int) -> None:
        before = owners_by_key(self.table) if self.members else []
        args = (key,) if change == "remove" else (key, weight)
        changed = changed_both_ways(self.table, change, args)
        # the copy was changed, never the table readers may still hold
        assert (owners_by_key(self.table) if self.members else []) == before
        self.table = changed

    @rule(key=KEYS, weight=WEIGHTS)
    def add(self, key: str, weight: int) -> None:
        if key in self.members:
            return
        self.members[key] = weight
        self._step("add", key, weight)

    @rule(data=st.data())
    @precondition(lambda self: bool(self.members))
    def remove(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.members)))
        del self.members[key]
        self._step("remove", key, 0)

    @rule(data=st.data(), weight=WEIGHTS)
    @precondition(lambda self: bool(self.members))
    def reweight(self, data: st.DataObject, weight: int) -> None:
        key = data.draw(st.sampled_from(sorted(self.members)))
        self.members[key] = weight
        self._step("reweight", key, weight)

    @invariant()
    def same_as_a_fresh_build(self) -> None:
        self.table._check()
        assert self.table.spec == tuple(sorted(self.members.items()))
        if self.members:
            fresh = both_ways(lambda: RendezvousTable.build(self.members.items(), self.size))
            assert owners_by_key(self.table) == owners_by_key(fresh)


TableUpdates.TestCase.settings = settings(max_examples=60, stateful_step_count=12)
test_table_updates = TableUpdates.TestCase


def test_many_changes_or_drift_fall_back_to_a_build() -> None:
    rng = random.Random(5)
    members = {f"k{i}": rng.randint(1, 100) for i in range(3)}
    table = RendezvousTable.build(members.items(), 1009)
    grown = table.copy()
    drifted = []
    # forty adds one at a time: the total weight grows far past what the walk bound was built
    # for, so the table reports drift; table_for then builds afresh, exact either way
    for i in range(40):
        members[f"n{i}"] = rng.randint(1, 100)
        spec = tuple(sorted(members.items()))
        grown.add(f"n{i}", members[f"n{i}"])
        drifted.append(grown.drifted())
        table = table_for(table, spec, 1009)
        assert owners_by_key(table) == owners_by_key(RendezvousTable.build(spec, 1009))
    assert not drifted[0]
    assert drifted[-1]
    # a wholesale change is a fresh build
    spec = tuple((f"x{i}", 1) for i in range(8))
    fresh = RendezvousTable.build(spec, 1009)
    assert owners_by_key(table_for(table, spec, 1009)) == owners_by_key(fresh)


def _group(count: int, rng: random.Random) -> BackendGroup:
    return BackendGroup(
        Backend(f"10.1.{i // 250}.{i % 250 + 1}", 8080, rng.randint(1, 100)) for i in range(count)
    )


def test_scheduler_updates_give_the_fresh_table() -> None:
    # the real table: an add, a remove and a re-weight in place, then the whole address space
    # (every cell) compared with a scheduler built for the final group
    rng = random.Random(13)
    group = _group(40, rng)
    sched = SourceIPHash(group)
    group = group.with_backend(Backend("10.9.0.1", 8080, 60))
    sched.update(group)
    group = group.without(group.keys()[7])
    sched.update(group)
    group = group.with_weight(group.keys()[3], 1)
    sched.update(group)
    fresh = SourceIPHash(group)
    assert sched._table is not None
    assert fresh._table is not None
    ours = [slot.key for slot in map(sched._table[1].__getitem__, sched._table[0])]
    theirs = [slot.key for slot in map(fresh._table[1].__getitem__, fresh._table[0])]
    assert ours == theirs


def test_an_asyncio_caller_prepares_the_update_off_the_loop() -> None:
    """The documented way for an event loop: ``await asyncio.to_thread(sched.update, group)``.
    The table is made outside the scheduler's lock, so the loop goes on picking (lock-free)
    while another thread makes it, and every pick is the old or the new placement."""
    rng = random.Random(17)
    old_group = _group(60, rng)
    new_group = _group(90, rng)  # a wholesale change: a full build, the longest kind
    sched = SourceIPHash(old_group)
    before = SourceIPHash(old_group)
    after = SourceIPHash(new_group)
    clients = [f"198.51.100.{i}" for i in range(1, 255)]

    async def main() -> int:
        done = asyncio.Event()
        ticks = 0

        async def keep_picking() -> None:
            nonlocal ticks
            while not done.is_set() and ticks < 1_000_000:
                client = clients[ticks % len(clients)]
                key = sched.pick(client).key
                assert key in (before.pick(client).key, after.pick(client).key)
                ticks += 1
                await asyncio.sleep(0)

        picker = asyncio.create_task(keep_picking())
        await asyncio.to_thread(sched.update, new_group)
        done.set()
        await picker
        return ticks

    ticks = asyncio.run(main())
    assert ticks > 1  # the loop ran while the table was being made
    assert all(sched.pick(c).key == after.pick(c).key for c in clients)


def test_numpy_and_pure_python_give_the_same_real_table() -> None:
    # the real 393,209-cell table: a build and one update of each kind, both ways
    rng = random.Random(29)
    spec = {f"10.2.0.{i}:80": rng.randint(1, 100) for i in range(1, 13)}
    table = both_ways(lambda: RendezvousTable.build(spec.items()))
    for change, args in [
        ("add", ("10.2.1.1:80", 40)),
        ("remove", ("10.2.0.5:80",)),
        ("reweight", ("10.2.0.9:80", 1)),
    ]:
        table = changed_both_ways(table, change, args)


@pytest.mark.parametrize("key_bits_32", [10, 0], ids=["32-bit keys", "64-bit keys"])
def test_the_kernels_stay_exact_with_coarse_approximations(
    monkeypatch: pytest.MonkeyPatch, key_bits_32: int
) -> None:
    """The kernels compare approximate scores (numpy's log) and settle exactly whatever the
    approximation cannot: made coarse on purpose (up to 2^-8 off, the error bound widened to
    match), most comparisons are unsure, and every build and update still gives exactly the
    pure-Python arrays (with 32-bit build keys, and with the 64-bit ones of large groups)."""
    np = pytest.importorskip("numpy")
    from lbalgo import _table_numpy

    fine = _table_numpy.approximations

    def coarse(ranks: Any, size: int) -> Any:
        # a relative error of up to 2^-8, either way, that changes with the rank
        return fine(ranks, size) * (1 + np.where(ranks % 2, 1, -1) * (ranks % 7) * 2.0**-11)

    error = 2.0**-7
    monkeypatch.setattr(_table_numpy, "approximations", coarse)
    monkeypatch.setattr(_table_numpy, "_ERROR", error)
    monkeypatch.setattr(_table_numpy, "_LOW", 1 - 2 * error)
    monkeypatch.setattr(_table_numpy, "_HIGH", 1 + 2 * error)
    monkeypatch.setattr(_table_numpy, "_NEAR", 5 * error)
    monkeypatch.setattr(_table_numpy, "_KEY_BITS_32", key_bits_32)
    rng = random.Random(31)
    for size in SIZES:
        # few distinct weights: many equal scores, the case the tie rule decides
        members = {f"10.0.0.{i}:80": rng.choice([1, 2, 7, 100]) for i in range(1, 9)}

        def fresh_build(members: dict[str, int] = members, size: int = size) -> RendezvousTable:
            return RendezvousTable.build(members.items(), size)

        table = both_ways(fresh_build)
        table._check()
        for _ in range(10):
            key = rng.choice([f"10.0.0.{i}:80" for i in range(1, 13)])
            weight = rng.choice([1, 2, 7, 100])
            args: tuple[Any, ...] = (key, weight)
            if key not in members:
                change = "add"
            elif rng.random() < 0.5 and len(members) > 1:
                change, args = "remove", (key,)
            else:
                change = "reweight"
            table = changed_both_ways(table, change, args)
            table._check()
            if change == "remove":
                del members[key]
            else:
                members[key] = weight
            assert owners_by_key(table) == owners_by_key(both_ways(fresh_build))


def test_the_switch() -> None:
    with numpy_kernels(False):
        assert not numpy_in_use()
    try:
        import numpy  # noqa: F401
    except ImportError:
        assert not numpy_in_use()
    else:
        with numpy_kernels(True):
            assert numpy_in_use()
