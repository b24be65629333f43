"""SmoothWeightedRoundRobin against a plain model of nginx's loop.

The model below is ``ngx_http_upstream_get_peer`` written as simply as possible (O(n) a pick).
The fast implementation generates and replays the sequence instead, so every operation that
can disturb it (picks with exclude, health marks, updates of weights and membership) is run
against both, under hypothesis-generated sequences, long enough to reach the replay phase.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest
import roundrobin
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from lbalgo import (
    Backend,
    BackendGroup,
    InvalidGroupError,
    NoBackendAvailable,
    SmoothWeightedRoundRobin,
    StickySessions,
)
from lbalgo.bench import swrr as swrr_bench
from lbalgo.testing import check_never_picks_ineligible, check_weights_respected, groups


class NginxModel:
    """nginx's smooth weighted round robin, plainly: the reference for every test here."""

    def __init__(self) -> None:
        self.current: dict[str, int] = {}

    def pick(self, taking_part: list[tuple[str, int]]) -> str | None:
        """One pick among ``(key, weight)`` in group order; None if nobody takes part."""
        best: str | None = None
        total = 0
        for key, weight in taking_part:
            self.current[key] = self.current.get(key, 0) + weight
            total += weight
            if best is None or self.current[key] > self.current[best]:
                best = key
        if best is not None:
            self.current[best] -= total
        return best

    def forget(self, key: str) -> None:
        self.current.pop(key, None)


def named_group(weights: list[int]) -> BackendGroup:
    return BackendGroup(
        Backend("10.0.0.1", 8000 + i, w, name=f"b{i}") for i, w in enumerate(weights)
    )


def keys_of(sched: SmoothWeightedRoundRobin, count: int) -> list[str]:
    return [sched.pick().key for _ in range(count)]


# -- golden sequences and whole periods ----------------------------------------------------


def test_worked_example() -> None:
    sched = SmoothWeightedRoundRobin(named_group([5, 1, 1]))
    assert keys_of(sched, 7) == ["b0", "b0", "b1", "b0", "b2", "b0", "b0"]


@pytest.mark.parametrize(
    "weights",
    [[5, 1, 1], [1], [100], [3, 0, 2], [1, 1, 1], [100, 100, 100, 1], [7, 3, 9, 1, 1, 4]],
)
def test_matches_model_over_many_periods(weights: list[int]) -> None:
    sched = SmoothWeightedRoundRobin(named_group(weights))
    model = NginxModel()
    taking_part = [(f"b{i}", w) for i, w in enumerate(weights) if w > 0]
    period = sum(weights)
    for _ in range(5 * period + 3):
        assert sched.pick().key == model.pick(taking_part)


def test_large_group_matches_model() -> None:
    # 500 backends, weights 1..100: a period of ~25,000 picks, generated then replayed
    weights = [(i * 37) % 100 + 1 for i in range(500)]
    sched = SmoothWeightedRoundRobin(named_group(weights))
    model = NginxModel()
    taking_part = [(f"b{i}", w) for i, w in enumerate(weights)]
    period = sum(weights)
    for _ in range(period + 500):
        assert sched.pick().key == model.pick(taking_part)
    sched.mark_down("b7")
    taking_part = [kw for kw in taking_part if kw[0] != "b7"]
    for _ in range(3000):
        assert sched.pick().key == model.pick(taking_part)


@given(st.lists(st.integers(1, 100), min_size=1, max_size=30))
def test_same_sequence_as_the_roundrobin_package(weights: list[int]) -> None:
    # a second, independent writing of nginx's loop (the ``roundrobin`` package's smooth())
    sched = SmoothWeightedRoundRobin(named_group(weights))
    peer = roundrobin.smooth([(f"b{i}", w) for i, w in enumerate(weights)])
    for _ in range(2 * sum(weights) + 5):
        assert sched.pick().key == peer()


@given(groups(min_size=1, max_size=12, max_weight=30))
def test_exact_counts_over_whole_periods(group: BackendGroup) -> None:
    check_weights_respected(SmoothWeightedRoundRobin(group), periods=3)


@given(groups(min_size=1, max_size=12), st.data())
def test_weight_zero_down_and_excluded_never_picked(
    group: BackendGroup, data: st.DataObject
) -> None:
    sched = SmoothWeightedRoundRobin(group)
    keys = list(group.keys())
    for key in data.draw(st.lists(st.sampled_from(keys), max_size=3)):
        sched.mark_down(key)
    exclude = data.draw(st.lists(st.sampled_from(keys), max_size=3))
    check_never_picks_ineligible(sched, 200)
    check_never_picks_ineligible(sched, 50, exclude=exclude)


def test_nothing_available_raises_and_says_why() -> None:
    with pytest.raises(NoBackendAvailable, match="group is empty"):
        SmoothWeightedRoundRobin(BackendGroup()).pick()
    sched = SmoothWeightedRoundRobin(named_group([0, 2]))
    with pytest.raises(NoBackendAvailable, match="b0 weight 0"):
        sched.pick(exclude=["b1"])
    sched.mark_down("b1")
    with pytest.raises(NoBackendAvailable, match="b1 down"):
        sched.pick()
    with pytest.raises(NoBackendAvailable):
        sched.connection()


# -- the model under random operation sequences --------------------------------------------


class SwrrVersusModel(RuleBasedStateMachine):
    """Random picks, excludes, health marks and updates on both; every pick must agree."""

    added = Bundle("added")

    def __init__(self) -> None:
        super().__init__()
        self.model = NginxModel()
        self.weights: dict[str, int] = {}  # in group order
        self.down: set[str] = set()
        self.picks: Counter[str] = Counter()
        self.serial = 0
        self.sched = SmoothWeightedRoundRobin(BackendGroup())

    def group(self) -> BackendGroup:
        return BackendGroup(
            Backend("10.1.0.1", 1 + int(key[1:]), w, name=key) for key, w in self.weights.items()
        )

    def new_key(self) -> str:
        self.serial += 1
        return f"k{self.serial}"

    def taking_part(self, exclude: frozenset[str] = frozenset()) -> list[tuple[str, int]]:
        return [
            (key, w)
            for key, w in self.weights.items()
            if w > 0 and key not in self.down and key not in exclude
        ]

    def check_pick(self, exclude: frozenset[str] = frozenset()) -> None:
        expected = self.model.pick(self.taking_part(exclude))
        if expected is None:
            with pytest.raises(NoBackendAvailable):
                self.sched.pick(exclude=exclude)
            return
        backend = self.sched.pick(exclude=exclude) if exclude else self.sched.pick()
        assert backend.key == expected
        self.picks[expected] += 1

    @initialize(weights=st.lists(st.integers(0, 12) | st.integers(0, 100), min_size=1, max_size=8))
    def start(self, weights: list[int]) -> None:
        for w in weights:
            self.weights[self.new_key()] = w
        self.sched = SmoothWeightedRoundRobin(self.group())

    @rule(count=st.integers(1, 40))
    def pick_some(self, count: int) -> None:
        for _ in range(count):
            self.check_pick()

    @rule(periods=st.integers(1, 3), extra=st.integers(0, 30))
    def pick_whole_periods(self, periods: int, extra: int) -> None:
        # long enough for the sequence to be proven periodic and replayed
        period = sum(w for _, w in self.taking_part())
        for _ in range(periods * period + extra):
            self.check_pick()

    @rule(data=st.data())
    def pick_with_exclude(self, data: st.DataObject) -> None:
        keys = [*sorted(self.weights), "not-a-member"]
        exclude = frozenset(data.draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3)))
        self.check_pick(exclude)

    @precondition(lambda self: bool(self.weights))
    @rule(data=st.data())
    def mark_down(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.weights)))
        self.sched.mark_down(key)
        self.down.add(key)

    @precondition(lambda self: bool(self.down))
    @rule(data=st.data())
    def mark_up(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.down)))
        self.sched.mark_up(key)
        self.down.discard(key)

    @precondition(lambda self: bool(self.weights))
    @rule(data=st.data(), weight=st.integers(0, 100))
    def change_weight(self, data: st.DataObject, weight: int) -> None:
        key = data.draw(st.sampled_from(sorted(self.weights)))
        self.weights[key] = weight
        self.sched.update(self.group())

    @precondition(lambda self: len(self.weights) < 12)
    @rule(target=added, weight=st.integers(0, 100), data=st.data())
    def add_backend(self, weight: int, data: st.DataObject) -> str:
        key = self.new_key()
        items = list(self.weights.items())
        at = data.draw(st.integers(0, len(items)))
        items.insert(at, (key, weight))
        self.weights = dict(items)
        self.sched.update(self.group())
        return key

    @rule(key=consumes(added))
    def remove_backend(self, key: str) -> None:
        if key not in self.weights:
            return
        del self.weights[key]
        self.down.discard(key)
        self.model.forget(key)
        self.picks.pop(key, None)
        self.sched.update(self.group())

    @precondition(lambda self: len(self.weights) > 1)
    @rule(data=st.data())
    def reorder(self, data: st.DataObject) -> None:
        # order breaks ties; survivors keep their current weights whatever the order
        keys = data.draw(st.permutations(sorted(self.weights)))
        self.weights = {key: self.weights[key] for key in keys}
        self.sched.update(self.group())

    @rule()
    def same_group_again(self) -> None:
        self.sched.update(self.group())

    @invariant()
    def counts_agree(self) -> None:
        stats = self.sched.stats()
        assert list(stats) == list(self.weights)
        for key, stat in stats.items():
            assert stat.picks == self.picks[key]
            assert stat.open_connections == self.picks[key]  # nothing released here
            assert stat.up == (key not in self.down)


SwrrVersusModel.TestCase.settings = settings(max_examples=60, stateful_step_count=30)
test_swrr_versus_model = SwrrVersusModel.TestCase


# -- slow start and passive health: the exact step, driven by the shared machinery --------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def check_against_stats(sched: SmoothWeightedRoundRobin, model: NginxModel, count: int) -> None:
    """Pick ``count`` times; before each, the model takes part and weights from stats()."""
    for _ in range(count):
        stats = sched.stats()
        taking_part = [(k, s.effective_weight) for k, s in stats.items() if s.available]
        lease = sched.connection()
        assert lease.backend.key == model.pick(taking_part)
        lease.release()


def test_slow_start_ramp_follows_effective_weights() -> None:
    clock = FakeClock()
    sched = SmoothWeightedRoundRobin(named_group([10, 10, 5]), slow_start=30.0, clock=clock)
    model = NginxModel()
    check_against_stats(sched, model, 50)
    sched.mark_down("b0")
    check_against_stats(sched, model, 20)
    sched.mark_up("b0")  # ramps from 1 to 10 over 30 s
    assert sched.stats()["b0"].effective_weight == 1
    for _ in range(8):
        check_against_stats(sched, model, 13)
        clock.now += 5.0
    assert sched.stats()["b0"].effective_weight == 10
    check_against_stats(sched, model, 200)  # ramp over: back to the replayed sequence
    assert sched._epoch is not None


def test_passive_health_suspension_is_skipped_like_down() -> None:
    clock = FakeClock()
    sched = SmoothWeightedRoundRobin(
        named_group([3, 2, 1]), max_fails=1, fail_timeout=10.0, clock=clock
    )
    model = NginxModel()
    check_against_stats(sched, model, 7)
    lease = sched.connection()
    assert model.pick([("b0", 3), ("b1", 2), ("b2", 1)]) == lease.backend.key
    lease.fail()  # suspends it for 10 s
    failed = lease.backend.key
    assert not sched.stats()[failed].available
    check_against_stats(sched, model, 12)
    clock.now += 11.0
    check_against_stats(sched, model, 30)


def test_sticky_picks_do_not_move_the_rotation() -> None:
    weights = [5, 1, 1, 3]
    sched = SmoothWeightedRoundRobin(named_group(weights))
    sticky = StickySessions(sched)
    model = NginxModel()
    taking_part = [(f"b{i}", w) for i, w in enumerate(weights)]
    first = sticky.pick("session-1")  # a fresh binding: asks the rotation
    assert first.key == model.pick(taking_part)
    for i in range(10 * sum(weights)):  # into the replay, with bound picks in between
        assert sticky.pick("session-1") == first
        if i % 3 == 0:
            assert sched.pick().key == model.pick(taking_part)
    assert sched._epoch is not None
    assert sched._epoch.cycle is not None  # replaying
    sched.mark_down("b2")  # folding the replay must not count the bound picks as draws
    taking_part = [kw for kw in taking_part if kw[0] != "b2"]
    for _ in range(30):
        assert sched.pick().key == model.pick(taking_part)


# -- threads --------------------------------------------------------------------------------


def test_threads_lose_no_counts_and_follow_the_weights() -> None:
    weights = [5, 1, 1, 9, 4]
    sched = SmoothWeightedRoundRobin(named_group(weights))
    period = sum(weights)
    periods_per_thread = 300
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        try:
            barrier.wait(timeout=10)
            for i in range(periods_per_thread * period):
                if i % 3:
                    sched.release(sched.pick())
                else:
                    with sched.connection():
                        pass
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    stats = sched.stats()
    # every draw takes the next element of one sequence: whole periods give exact counts
    assert {k: s.picks for k, s in stats.items()} == {
        f"b{i}": 4 * periods_per_thread * w for i, w in enumerate(weights)
    }
    assert all(s.open_connections == 0 for s in stats.values())


def test_threads_with_concurrent_changes() -> None:
    group = named_group([5, 1, 1, 9, 4])
    sched = SmoothWeightedRoundRobin(group)
    errors: list[BaseException] = []
    done = threading.Event()
    picked = Counter[str]()
    lock = threading.Lock()

    def picker() -> None:
        mine: Counter[str] = Counter()
        try:
            for i in range(20_000):
                try:
                    lease = sched.connection(exclude=["b3"] if i % 97 == 0 else ())
                except NoBackendAvailable:
                    continue
                mine[lease.backend.key] += 1
                lease.release()
        except BaseException as error:
            errors.append(error)
        with lock:
            picked.update(mine)

    def changer() -> None:
        try:
            step = 0
            while not done.is_set() and step < 5_000:
                key = f"b{step % 5}"
                sched.mark_down(key)
                sched.mark_up(key)
                sched.update(group.with_weight(key, step % 7))
                step += 1
            sched.update(group)
        except BaseException as error:
            errors.append(error)

    pickers = [threading.Thread(target=picker) for _ in range(3)]
    change = threading.Thread(target=changer)
    change.start()
    for thread in pickers:
        thread.start()
    for thread in pickers:
        thread.join(timeout=120)
    done.set()
    change.join(timeout=60)
    assert not errors
    stats = sched.stats()
    assert {k: s.picks for k, s in stats.items() if s.picks} == dict(picked)
    assert all(s.open_connections == 0 for s in stats.values())


# -- bad input leaves the state alone -------------------------------------------------------


def test_bad_input_leaves_state_unchanged() -> None:
    weights = [5, 1, 1, 3]
    sched = SmoothWeightedRoundRobin(named_group(weights))
    twin = SmoothWeightedRoundRobin(named_group(weights))
    keys_of(sched, 9)
    keys_of(twin, 9)
    before = sched.stats()
    with pytest.raises(TypeError, match="'b0'"):
        sched.pick(exclude="b0")
    with pytest.raises(TypeError, match="42"):
        sched.pick(exclude=[42])  # type: ignore[list-item]
    with pytest.raises(KeyError, match="nope"):
        sched.mark_down("nope")
    with pytest.raises(KeyError, match="nope"):
        sched.mark_up("nope")
    with pytest.raises(InvalidGroupError, match="BackendGroup"):
        sched.update([Backend("10.0.0.9", 80)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Backend"):
        sched.release("b0")  # type: ignore[arg-type]
    assert sched.stats() == before
    assert keys_of(sched, 40) == keys_of(twin, 40)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"slow_start": -1}, "slow_start"),
        ({"slow_start": True}, "slow_start"),
        ({"max_fails": 1.5}, "max_fails"),
        ({"fail_timeout": 0}, "fail_timeout"),
        ({"clock": 3}, "clock"),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SmoothWeightedRoundRobin(named_group([1]), **options)  # type: ignore[arg-type]
    with pytest.raises(InvalidGroupError, match="BackendGroup"):
        SmoothWeightedRoundRobin([Backend("10.0.0.1", 80)])  # type: ignore[arg-type]


def test_update_keeps_current_weights_of_survivors() -> None:
    group = named_group([5, 1, 1])
    sched = SmoothWeightedRoundRobin(group)
    model = NginxModel()
    taking_part = [("b0", 5), ("b1", 1), ("b2", 1)]
    for _ in range(3):
        assert sched.pick().key == model.pick(taking_part)
    # b1 leaves, b3 joins at 0, b0's weight changes from the next pick on
    new = group.without("b1").with_backend(Backend("10.0.0.1", 9000, 2, name="b3"))
    sched.update(new.with_weight("b0", 2))
    model.forget("b1")
    taking_part = [("b0", 2), ("b2", 1), ("b3", 2)]
    for _ in range(25):
        assert sched.pick().key == model.pick(taking_part)


def test_benchmark_smoke() -> None:
    pick_table, change_table = swrr_bench.run(quick=True)
    assert [row[0] for row in pick_table.rows] == list(swrr_bench.QUICK_SIZES)
    assert len(change_table.rows) == 3 * len(swrr_bench.QUICK_SIZES)
    for row in pick_table.rows:
        assert all(isinstance(cell, float) and cell > 0 for cell in row[1:3])
    assert all(isinstance(row[2], float) and row[2] > 0 for row in change_table.rows)
