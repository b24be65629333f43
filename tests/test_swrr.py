"""SmoothWeightedRoundRobin against a plain model of nginx's loop.

The model below is ``ngx_http_upstream_get_peer`` written as simply as possible (O(n) a pick).
The fast implementation generates and replays the sequence instead, so every operation that
can disturb it (picks with exclude, health marks, updates of weights and membership) is run
against both, under hypothesis-generated sequences, long enough to reach the replay phase.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from fractions import Fraction

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
from lbalgo.scheduler import RAMP_STEPS
from lbalgo.testing import (
    NginxSmoothRoundRobin,
    check_internals,
    check_never_picks_ineligible,
    check_weights_respected,
    groups,
)
from support.clocks import FakeClock
from support.threads import run_threads


def nginx_model() -> NginxSmoothRoundRobin:
    """nginx's loop, plainly (lbalgo.testing.reference): the reference for every test here;
    tests drive it step by step with the peers taking part."""
    return NginxSmoothRoundRobin(BackendGroup())


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
    model = nginx_model()
    taking_part = [(f"b{i}", w) for i, w in enumerate(weights) if w > 0]
    period = sum(weights)
    for _ in range(5 * period + 3):
        assert sched.pick().key == model.step(taking_part)


def test_large_group_matches_model() -> None:
    # 500 backends, weights 1..100: a period of ~25,000 picks, generated then replayed
    weights = [(i * 37) % 100 + 1 for i in range(500)]
    sched = SmoothWeightedRoundRobin(named_group(weights))
    model = nginx_model()
    taking_part = [(f"b{i}", w) for i, w in enumerate(weights)]
    period = sum(weights)
    for _ in range(period + 500):
        assert sched.pick().key == model.step(taking_part)
    sched.mark_down("b7")
    taking_part = [kw for kw in taking_part if kw[0] != "b7"]
    for _ in range(3000):
        assert sched.pick().key == model.step(taking_part)


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
        self.model = nginx_model()
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
        expected = self.model.step(self.taking_part(exclude))
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
        self.sched = self.make()

    # the scheduler's side of each operation (the ramping variant below adds to them)

    def make(self) -> SmoothWeightedRoundRobin:
        return SmoothWeightedRoundRobin(self.group())

    def update_sched(self) -> None:
        self.sched.update(self.group())

    def mark_down_sched(self, key: str) -> None:
        self.sched.mark_down(key)

    def mark_up_sched(self, key: str) -> None:
        self.sched.mark_up(key)

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
        self.down.add(key)
        self.mark_down_sched(key)

    @precondition(lambda self: bool(self.down))
    @rule(data=st.data())
    def mark_up(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.down)))
        self.down.discard(key)
        self.mark_up_sched(key)

    @precondition(lambda self: bool(self.weights))
    @rule(data=st.data(), weight=st.integers(0, 100))
    def change_weight(self, data: st.DataObject, weight: int) -> None:
        key = data.draw(st.sampled_from(sorted(self.weights)))
        self.weights[key] = weight
        self.update_sched()

    @precondition(lambda self: len(self.weights) < 12)
    @rule(target=added, weight=st.integers(0, 100), data=st.data())
    def add_backend(self, weight: int, data: st.DataObject) -> str:
        key = self.new_key()
        items = list(self.weights.items())
        at = data.draw(st.integers(0, len(items)))
        items.insert(at, (key, weight))
        self.weights = dict(items)
        self.update_sched()
        return key

    @rule(key=consumes(added))
    def remove_backend(self, key: str) -> None:
        if key not in self.weights:
            return
        del self.weights[key]
        self.down.discard(key)
        self.model.current.pop(key, None)
        self.picks.pop(key, None)
        self.update_sched()

    @precondition(lambda self: len(self.weights) > 1)
    @rule(data=st.data())
    def reorder(self, data: st.DataObject) -> None:
        # order breaks ties; survivors keep their current weights whatever the order
        keys = data.draw(st.permutations(sorted(self.weights)))
        self.weights = {key: self.weights[key] for key in keys}
        self.update_sched()

    @rule()
    def same_group_again(self) -> None:
        self.update_sched()

    @invariant()
    def counts_agree(self) -> None:
        check_internals(self.sched)
        stats = self.sched.stats()
        assert list(stats) == list(self.weights)
        for key, stat in stats.items():
            assert stat.picks == self.picks[key]
            assert stat.open_connections == self.picks[key]  # nothing released here
            assert stat.up == (key not in self.down)


SwrrVersusModel.TestCase.settings = settings(max_examples=60, stateful_step_count=30)
test_swrr_versus_model = SwrrVersusModel.TestCase


class SwrrRampsVersusModel(SwrrVersusModel):
    """The same operations with slow start on and a clock that moves. The model follows the
    documented rules on its own: a key that joins or comes back while another serves ramps
    for SLOW seconds, through w * k (k = 1 .. RAMP_STEPS) on a scale where full weights are
    w * RAMP_STEPS; current weights are scaled up when a ramp begins and folded back
    (:func:`fold_back`) when no ramp is left, at the same moments as the scheduler's."""

    SLOW = 32.0

    def __init__(self) -> None:
        self.now = 1000.0
        self.ramps: dict[str, float] = {}  # key -> when its ramp began
        self.scale = 1
        super().__init__()

    def clock(self) -> float:
        return self.now

    def make(self) -> SmoothWeightedRoundRobin:
        return SmoothWeightedRoundRobin(self.group(), slow_start=self.SLOW, clock=self.clock)

    def serving(self, besides: set[str]) -> bool:
        return any(k not in besides for k, _ in self.taking_part())

    def rescale(self) -> None:
        """Scale up or fold back, as the scheduler does after any change."""
        if self.ramps and self.scale == 1:
            self.model.current = {k: v * RAMP_STEPS for k, v in self.model.current.items()}
            self.scale = RAMP_STEPS
        elif not self.ramps and self.scale != 1:
            ordered = {k: self.model.current.get(k, 0) for k in self.weights}
            self.model.current = fold_back(ordered)
            self.scale = 1

    def update_sched(self) -> None:
        for key in [k for k in self.ramps if k not in self.weights]:
            del self.ramps[key]
        joining = {k for k in self.weights if k not in self.sched.group}
        if joining and self.serving(joining):
            self.ramps.update(dict.fromkeys(joining, self.now))
        self.sched.update(self.group())
        self.rescale()

    def mark_down_sched(self, key: str) -> None:
        self.ramps.pop(key, None)
        self.sched.mark_down(key)
        self.rescale()

    def mark_up_sched(self, key: str) -> None:
        if self.serving({key}):
            self.ramps[key] = self.now
        self.sched.mark_up(key)
        self.rescale()

    def taking_part(self, exclude: frozenset[str] = frozenset()) -> list[tuple[str, int]]:
        whole = super().taking_part(exclude)
        if self.scale == 1:
            return whole
        out = []
        for key, w in whole:
            began = self.ramps.get(key)
            step = RAMP_STEPS
            if began is not None:
                step = min(RAMP_STEPS, math.floor(RAMP_STEPS * (self.now - began) / self.SLOW) + 1)
            out.append((key, w * step))
        return out

    def check_pick(self, exclude: frozenset[str] = frozenset()) -> None:
        ended = [k for k, began in self.ramps.items() if began + self.SLOW <= self.now]
        for key in ended:
            del self.ramps[key]
        self.rescale()
        super().check_pick(exclude)

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0, 7.25, 16.0, 40.0]))
    def wait(self, seconds: float) -> None:
        self.now += seconds


SwrrRampsVersusModel.TestCase.settings = settings(max_examples=80, stateful_step_count=40)
test_swrr_ramps_versus_model = SwrrRampsVersusModel.TestCase


# -- slow start and passive health: the exact step, driven by the shared machinery --------


def check_against_stats(
    sched: SmoothWeightedRoundRobin, model: NginxSmoothRoundRobin, count: int, scale: int = 1
) -> None:
    """Pick ``count`` times; before each, the model takes part and weights from stats(),
    times ``scale`` (RAMP_STEPS while a ramp is on: the fine scale the steps run on)."""
    for _ in range(count):
        stats = sched.stats()
        taking_part = []
        for key, s in stats.items():
            if s.available:
                weight = s.effective_weight * scale
                assert weight == int(weight)  # ramped weights are whole on the fine scale
                taking_part.append((key, int(weight)))
        lease = sched.connection()
        assert lease.backend.key == model.step(taking_part)
        lease.release()


def fold_back(current: dict[str, int]) -> dict[str, int]:
    """The documented fold at the end of the last ramp, written plainly: each current weight
    divided by RAMP_STEPS; as many rounded up as keep the sum at its nearest whole value
    (half up), the largest fractional parts first, ties in group order; the rest down."""
    exact = {key: Fraction(value, RAMP_STEPS) for key, value in current.items()}
    target = math.floor(sum(exact.values()) + Fraction(1, 2))
    folded = {key: math.floor(value) for key, value in exact.items()}
    ups = target - sum(folded.values())
    keys = list(current)
    by_part = sorted(keys, key=lambda k: (folded[k] - exact[k], keys.index(k)))
    for key in by_part[:ups]:
        folded[key] += 1
    assert sum(folded.values()) == target
    assert all(abs(folded[k] - exact[k]) < 1 for k in keys)
    return folded


@pytest.mark.parametrize("weights", [[10, 10, 5], [1, 1, 1], [1, 3, 2, 1], [100, 1, 37]])
def test_slow_start_ramp_follows_effective_weights(weights: list[int]) -> None:
    clock = FakeClock()
    sched = SmoothWeightedRoundRobin(named_group(weights), slow_start=32.0, clock=clock)
    model = nginx_model()
    check_against_stats(sched, model, 50)
    sched.mark_down("b0")
    check_against_stats(sched, model, 20)
    assert sched._epoch is not None  # no ramp: the O(1) replay
    sched.mark_up("b0")  # ramps from 1/32 of its weight to all of it over 32 s
    assert sched.stats()["b0"].effective_weight == weights[0] / RAMP_STEPS
    assert sched._epoch is None  # a ramp is on: exact O(n) steps on the fine scale
    model.current = {key: value * RAMP_STEPS for key, value in model.current.items()}
    for second in range(32):
        assert sched.stats()["b0"].effective_weight == weights[0] * (second + 1) / RAMP_STEPS
        check_against_stats(sched, model, 7, scale=RAMP_STEPS)
        clock.now += 1.0
    assert sched.stats()["b0"].effective_weight == weights[0]
    # the ramp ends at the next pick: the current weights fold back to whole weights, and
    # from there the sequence is nginx's, replayed at O(1) again
    model.current = fold_back(model.current)
    folded = dict(model.current)
    check_against_stats(sched, model, 1)
    epoch = sched._epoch
    assert epoch is not None  # the fast path is back, from the folded state
    assert dict(zip([slot.key for slot in epoch.slots], epoch.start, strict=True)) == folded
    check_against_stats(sched, model, 3 * sum(weights) + 50)
    assert sched._epoch is not None
    assert sched._epoch.cycle is not None


def test_ramp_starts_exactly_where_nginx_stands() -> None:
    """Scaling every weight and current weight by RAMP_STEPS changes no pick: with a ramp
    on elsewhere, the backends at full weight keep nginx's order among themselves, and a
    ramp that ends at once folds back to exactly the state nginx would have."""
    clock = FakeClock()
    group = named_group([5, 1, 1])
    sched = SmoothWeightedRoundRobin(group, slow_start=10.0, clock=clock)
    plain = SmoothWeightedRoundRobin(group)
    assert keys_of(sched, 5) == keys_of(plain, 5)
    sched.update(group.with_backend(Backend("10.0.0.9", 9000, 1, name="late")))
    clock.now += 10.0  # over before any pick: nothing ran on the fine scale but the fold
    plain.update(group.with_backend(Backend("10.0.0.9", 9000, 1, name="late")))
    assert keys_of(sched, 80) == keys_of(plain, 80)


def test_passive_health_suspension_is_skipped_like_down() -> None:
    clock = FakeClock()
    sched = SmoothWeightedRoundRobin(
        named_group([3, 2, 1]), max_fails=1, fail_timeout=10.0, clock=clock
    )
    model = nginx_model()
    check_against_stats(sched, model, 7)
    lease = sched.connection()
    assert model.step([("b0", 3), ("b1", 2), ("b2", 1)]) == lease.backend.key
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
    model = nginx_model()
    taking_part = [(f"b{i}", w) for i, w in enumerate(weights)]
    first = sticky.pick("session-1")  # a fresh binding: asks the rotation
    assert first.key == model.step(taking_part)
    for i in range(10 * sum(weights)):  # into the replay, with bound picks in between
        assert sticky.pick("session-1") == first
        if i % 3 == 0:
            assert sched.pick().key == model.step(taking_part)
    assert sched._epoch is not None
    assert sched._epoch.cycle is not None  # replaying
    sched.mark_down("b2")  # folding the replay must not count the bound picks as draws
    taking_part = [kw for kw in taking_part if kw[0] != "b2"]
    for _ in range(30):
        assert sched.pick().key == model.step(taking_part)


# -- threads --------------------------------------------------------------------------------


def test_threads_lose_no_counts_and_follow_the_weights() -> None:
    weights = [5, 1, 1, 9, 4]
    sched = SmoothWeightedRoundRobin(named_group(weights))
    period = sum(weights)
    periods_per_thread = 300
    barrier = threading.Barrier(4)

    def worker() -> None:
        barrier.wait(timeout=10)
        for i in range(periods_per_thread * period):
            if i % 3:
                sched.release(sched.pick())
            else:
                with sched.connection():
                    pass

    run_threads(worker, [()] * 4)
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
    assert not any(thread.is_alive() for thread in [*pickers, change])
    assert not errors, errors
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
    model = nginx_model()
    taking_part = [("b0", 5), ("b1", 1), ("b2", 1)]
    for _ in range(3):
        assert sched.pick().key == model.step(taking_part)
    # b1 leaves, b3 joins at 0, b0's weight changes from the next pick on
    new = group.without("b1").with_backend(Backend("10.0.0.1", 9000, 2, name="b3"))
    sched.update(new.with_weight("b0", 2))
    model.current.pop("b1", None)
    taking_part = [("b0", 2), ("b2", 1), ("b3", 2)]
    for _ in range(25):
        assert sched.pick().key == model.step(taking_part)


@pytest.mark.usefixtures("frozen_heap")
def test_benchmark_smoke() -> None:
    whole, pick_table, change_table = swrr_bench.run(quick=True)
    assert [row[0] for row in whole.rows] == list(swrr_bench.REQUEST_QUICK_SIZES)
    for row in whole.rows:
        assert all(isinstance(cell, float) and cell > 0 for cell in row[1:4])
    assert [row[0] for row in pick_table.rows] == list(swrr_bench.QUICK_SIZES)
    assert len(change_table.rows) == 3 * len(swrr_bench.QUICK_SIZES)
    for row in pick_table.rows:
        assert all(isinstance(cell, float) and cell > 0 for cell in row[1:3])
    assert all(isinstance(row[2], float) and row[2] > 0 for row in change_table.rows)
