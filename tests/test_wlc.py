"""Weighted least connections and its in-process ledger.

Covers: the least-ratio rule and exact counts against a plain model after every step of a
stateful run (plain, and with slow start plus passive health on a fake clock); the light-load
smoothness property (every prefix within one pick of each backend's weighted share, skewed
weights included); draining, updates and late releases; sticky sessions counted in the
ledger; threads and asyncio; bad input leaving the state exactly as it was; and the
LocalLedger on its own, including a differential test against a plain O(n) reference of the
rule it documents (ratio, WF2Q tie-break, clamps, rescaling), pick for pick.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from lbalgo import (
    Backend,
    BackendGroup,
    ConnectionLedger,
    InvalidGroupError,
    Lease,
    LocalLedger,
    NoBackendAvailable,
    StickySessions,
    WeightedLeastConnections,
)
from lbalgo.local_ledger import PurePythonLedger
from lbalgo.scheduler import RAMP_STEPS, Client, Exclude
from lbalgo.testing import (
    FractionLedger,
    check_internals,
    check_never_picks_ineligible,
    check_weights_respected,
    groups,
    weights,
)
from support.clocks import FakeClock


def keys_of(group: BackendGroup) -> tuple[str, ...]:
    return group.keys()


def group_of(*weights: int) -> BackendGroup:
    return BackendGroup(Backend(f"10.0.0.{i + 1}", 80, w) for i, w in enumerate(weights))


def assert_least_ratio(key: str, opened: dict[str, int], weights: dict[str, int]) -> None:
    """``key`` had the lowest open/weight among ``weights`` (counts before the pick)."""
    assert key in weights, f"picked {key}, not eligible (eligible: {sorted(weights)})"
    for other, weight in weights.items():
        assert opened[key] * weight <= opened[other] * weights[key], (
            f"picked {key} at {opened[key]}/{weights[key]} "
            f"while {other} had {opened[other]}/{weight}"
        )


def light_load_keys(sched: WeightedLeastConnections, picks: int) -> list[str]:
    """Pick ``picks`` times, releasing each pick before the next."""
    out = []
    for _ in range(picks):
        backend = sched.pick()
        sched.release(backend)
        out.append(backend.key)
    return out


def assert_prefixes_within_one(sequence: Sequence[str], weights: dict[str, int]) -> None:
    """In every prefix, each key's picks are within one pick of its weighted share."""
    total = sum(weights.values())
    got = dict.fromkeys(weights, 0)
    for t, key in enumerate(sequence, 1):
        got[key] += 1
        for k, w in weights.items():
            # |got - t*w/total| <= 1, in integers
            assert abs(got[k] * total - t * w) <= total, (
                f"after {t} picks {k} has {got[k]}, share {t * w / total:.2f}"
            )


# -- the stateful model test ------------------------------------------------------------------

_KEYS = [f"10.0.1.{i}:80" for i in range(1, 9)]


def _backend(key: str, weight: int) -> Backend:
    host, port = key.rsplit(":", 1)
    return Backend(host, int(port), weight)


class WlcMachine(RuleBasedStateMachine):
    """Drive a scheduler and a plain model side by side; compare after every step.

    The model knows the group, health marks and open counts; eligibility and effective
    weights come from ``stats()`` (the base machinery's, tested on its own), read just
    before each pick, and the pick must have the lowest open/effective-weight among them.
    """

    timed = False
    leases = Bundle("leases")
    picked = Bundle("picked")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.sched: WeightedLeastConnections
        self.open: dict[str, int] = {}
        # a lease counts only on the incarnation of its key it was picked from
        self.generation: dict[str, int] = {}
        self.next_generation = 0

    def make(self, group: BackendGroup) -> WeightedLeastConnections:
        return WeightedLeastConnections(group)

    @initialize(weights=st.lists(weights(), min_size=0, max_size=6))
    def start(self, weights: list[int]) -> None:
        group = BackendGroup(_backend(k, w) for k, w in zip(_KEYS, weights, strict=False))
        self.sched = self.make(group)
        for key in keys_of(group):
            self.open[key] = 0
            self._new_generation(key)

    def _new_generation(self, key: str) -> None:
        self.next_generation += 1
        self.generation[key] = self.next_generation

    def _eligible_weights(self, excluded: AbstractSet[str]) -> dict[str, int]:
        # on the fine scale the ledger compares (exact: a ramped weight is k/32 of a weight)
        return {
            key: round(s.effective_weight * RAMP_STEPS)
            for key, s in self.sched.stats().items()
            if s.available and s.effective_weight > 0 and key not in excluded
        }

    def _check_pick(self, key: str | None, eligible: dict[str, int]) -> None:
        if key is None:
            assert not eligible, f"NoBackendAvailable although {sorted(eligible)} are eligible"
            return
        assert_least_ratio(key, self.open, eligible)
        self.open[key] += 1

    @rule(target=picked, data=st.data())
    def pick(self, data: st.DataObject) -> object:
        excluded: set[str] = set()
        with_exclude: bool = data.draw(st.booleans(), label="with exclude")
        if self.open and with_exclude:
            excluded = data.draw(st.sets(st.sampled_from(sorted(self.open))), label="exclude")
        eligible = self._eligible_weights(excluded)
        try:
            backend = self.sched.pick(exclude=excluded)
        except NoBackendAvailable:
            self._check_pick(None, eligible)
            return multiple()
        self._check_pick(backend.key, eligible)
        return (backend, self.generation[backend.key])

    @rule(target=leases)
    def open_lease(self) -> object:
        eligible = self._eligible_weights(frozenset())
        try:
            lease = self.sched.connection()
        except NoBackendAvailable:
            self._check_pick(None, eligible)
            return multiple()
        self._check_pick(lease.backend.key, eligible)
        return (lease, self.generation[lease.backend.key])

    def _model_release(self, key: str) -> None:
        if key in self.open and self.open[key] > 0:
            self.open[key] -= 1

    @rule(item=consumes(picked), reweight=st.booleans())
    def release(self, item: object, reweight: bool) -> None:
        if not isinstance(item, tuple):
            return
        backend, _ = item
        if reweight:  # the same backend (same key) with whatever weight it has now
            backend = backend.with_weight((backend.weight + 1) % 101)
        self.sched.release(backend)
        self._model_release(backend.key)  # by key: any incarnation of the key

    @rule(item=consumes(leases), fail=st.booleans())
    def end_lease(self, item: object, fail: bool) -> None:
        if not isinstance(item, tuple):
            return
        lease, generation = item
        assert isinstance(lease, Lease)
        if fail:
            lease.fail()
        else:
            lease.release()
        key = lease.backend.key
        if self.generation.get(key) == generation and key in self.open:
            self._model_release(key)
        lease.release()  # idempotent: counts nothing twice

    @rule()
    def release_stranger(self) -> None:
        self.sched.release(Backend("192.0.2.1", 9))  # never in any group: ignored

    @rule(data=st.data())
    def mark(self, data: st.DataObject) -> None:
        if not self.open:
            with pytest.raises(KeyError, match="nowhere"):
                self.sched.mark_down("nowhere")
            return
        key = data.draw(st.sampled_from(sorted(self.open)))
        if data.draw(st.booleans()):
            self.sched.mark_down(key)
            assert not self.sched.is_up(key)
        else:
            self.sched.mark_up(key)
            assert self.sched.is_up(key)

    @rule(data=st.data())
    def update(self, data: st.DataObject) -> None:
        chosen = data.draw(st.lists(st.sampled_from(_KEYS), unique=True, max_size=6))
        new = BackendGroup(_backend(k, data.draw(weights(), label=k)) for k in chosen)
        self.sched.update(new)
        for key in list(self.open):
            if key not in new:
                del self.open[key]
        for key in keys_of(new):
            if key not in self.open:
                self.open[key] = 0
                self._new_generation(key)

    @invariant()
    def counts_match(self) -> None:
        if not hasattr(self, "sched"):
            return
        assert set(self.sched.group.keys()) == set(self.open)
        check_internals(self.sched)
        check_internals(self.sched.ledger)
        stats = self.sched.stats()
        for key, expected in self.open.items():
            assert self.sched.open_connections(key) == expected, key
            assert stats[key].open_connections == expected, key
            assert self.sched.ledger.count(key) == expected, key


class TimedWlcMachine(WlcMachine):
    """The same, with slow start and passive health on a fake clock (the slow path)."""

    timed = True

    def make(self, group: BackendGroup) -> WeightedLeastConnections:
        return WeightedLeastConnections(
            group, slow_start=30.0, max_fails=2, fail_timeout=10.0, clock=self.clock
        )

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0, 7.0, 15.0]))
    def advance(self, seconds: float) -> None:
        self.clock.now += seconds


class PurePythonWlcMachine(WlcMachine):
    """The same on the pure-Python ledger: the path taken where lbalgo._wf2q_c is not built
    (WlcMachine takes the C path where it is)."""

    def make(self, group: BackendGroup) -> WeightedLeastConnections:
        return WeightedLeastConnections(group, ledger=PurePythonLedger())


TestWlcStateful = WlcMachine.TestCase
TestWlcStateful.settings = settings(max_examples=150, stateful_step_count=60)
TestPurePythonWlcStateful = PurePythonWlcMachine.TestCase
TestPurePythonWlcStateful.settings = settings(max_examples=60, stateful_step_count=60)
TestTimedWlcStateful = TimedWlcMachine.TestCase
TestTimedWlcStateful.settings = settings(max_examples=100, stateful_step_count=60)


@pytest.mark.parametrize("seed", range(3))
def test_long_random_run_against_the_model(seed: int) -> None:
    """Many more steps than the stateful test takes, at a size that exercises the heap
    rebuilds: the least-ratio rule and exact counts after every step."""
    rng = random.Random(seed)
    pool = [Backend(f"10.1.{i // 200}.{i % 200 + 1}", 80, rng.randint(0, 100)) for i in range(80)]
    sched = WeightedLeastConnections(BackendGroup(pool[:60]))
    opened = {b.key: 0 for b in pool[:60]}
    held: list[Backend] = []
    for step in range(6000):
        roll = rng.random()
        if roll < 0.45:
            excluded = set(rng.sample(sorted(opened), 3)) if rng.random() < 0.2 else set()
            stats = sched.stats()
            eligible = {
                k: round(s.effective_weight * RAMP_STEPS)
                for k, s in stats.items()
                if s.available and s.effective_weight and k not in excluded
            }
            backend = sched.pick(exclude=excluded)
            assert_least_ratio(backend.key, opened, eligible)
            opened[backend.key] += 1
            held.append(backend)
        elif roll < 0.9 and held:
            backend = held.pop(rng.randrange(len(held)))
            sched.release(backend)
            if opened.get(backend.key, 0) > 0:
                opened[backend.key] -= 1
        elif roll < 0.95:
            key = rng.choice(sorted(opened))
            (sched.mark_down if rng.random() < 0.5 else sched.mark_up)(key)
        else:
            members = rng.sample(pool, 60)
            members = [b.with_weight(rng.randint(0, 100)) for b in members]
            sched.update(BackendGroup(members))
            opened = {b.key: opened.get(b.key, 0) for b in members}
            held = [b for b in held if b.key in opened]
        if step % 50 == 0:
            for key, n in opened.items():
                assert sched.open_connections(key) == n
                assert sched.ledger.count(key) == n
    for backend in held:
        sched.release(backend)
    assert all(sched.open_connections(k) == 0 for k in opened)


# -- smoothness under light load ---------------------------------------------------------------


@pytest.mark.parametrize(
    "weights",
    [
        [1] * 10 + [100],
        [100] + [1] * 10,
        [5, 1, 1],
        [1, 1, 1, 1],
        [100, 99, 1],
        [50, 49, 1, 1],
        [3, 7, 2, 9, 100, 1],
        [100] * 5 + [1] * 20,
    ],
)
def test_light_load_prefixes_within_one_pick(weights: list[int]) -> None:
    group = group_of(*weights)
    sched = WeightedLeastConnections(group)
    sequence = light_load_keys(sched, 3 * group.total_weight)
    assert_prefixes_within_one(sequence, {b.key: b.weight for b in group})


@given(groups(min_size=1, max_size=12, min_weight=1))
def test_light_load_smooth_for_any_weights(group: BackendGroup) -> None:
    sched = WeightedLeastConnections(group)
    sequence = light_load_keys(sched, 2 * group.total_weight + 7)
    assert_prefixes_within_one(sequence, {b.key: b.weight for b in group})


@given(st.lists(st.sampled_from([1, 2, 3, 50, 99, 100]), min_size=2, max_size=15))
def test_light_load_smooth_for_skewed_weights(weight_list: list[int]) -> None:
    group = group_of(*weight_list)
    sequence = light_load_keys(WeightedLeastConnections(group), group.total_weight + 11)
    assert_prefixes_within_one(sequence, {b.key: b.weight for b in group})


@given(groups(min_size=1, max_size=10, min_weight=1))
def test_light_load_exact_over_each_period(group: BackendGroup) -> None:
    check_weights_respected(WeightedLeastConnections(group), periods=2)


def test_light_load_skips_weight_zero_and_down() -> None:
    group = group_of(3, 0, 2, 5)
    sched = WeightedLeastConnections(group)
    sched.mark_down("10.0.0.3:80")
    sequence = light_load_keys(sched, 40)
    assert_prefixes_within_one(sequence, {"10.0.0.1:80": 3, "10.0.0.4:80": 5})
    check_never_picks_ineligible(sched, 50, exclude=["10.0.0.4:80"])


def test_plain_earliest_deadline_would_burst_but_this_does_not() -> None:
    """The failure the issue names: ten of weight 1 and one of weight 100. The first 20
    picks must not all go to the heavy backend (earliest deadline sends it 100 in a row)."""
    group = group_of(*([1] * 10), 100)
    first = light_load_keys(WeightedLeastConnections(group), 110)
    heavy = "10.0.0.11:80"
    assert first[:11].count(heavy) == 10  # 11 * 100/110 = 10 picks
    assert Counter(first) == {b.key: b.weight for b in group}


def test_no_catch_up_burst_after_heavy_load() -> None:
    """A backend passed over while it held many connections does not get a run of picks
    when the load ends: from then on prefixes stay within two picks of the share."""
    group = group_of(1, 1, 1, 1)
    sched = WeightedLeastConnections(group)
    slow = "10.0.0.1:80"
    held = [sched.pick() for _ in range(40)]  # 10 each
    for backend in held:
        if backend.key != slow:
            sched.release(backend)
    for _ in range(300):  # 1, 2, 3 and 4 share the load while 1 holds its 10
        sched.release(sched.pick())
    for backend in held:
        if backend.key == slow:
            sched.release(backend)
    sequence = light_load_keys(sched, 40)
    total = 4
    got: Counter[str] = Counter()
    for t, key in enumerate(sequence, 1):
        got[key] += 1
        for k in keys_of(group):
            assert abs(got[k] * total - t) <= 2 * total, (t, k, got)


# -- counts: draining, updates, late releases ----------------------------------------------------


def test_least_ratio_with_held_connections() -> None:
    group = group_of(5, 1)
    sched = WeightedLeastConnections(group)
    held = [sched.pick() for _ in range(12)]
    assert Counter(b.key for b in held) == {"10.0.0.1:80": 10, "10.0.0.2:80": 2}
    for backend in held:
        if backend.key == "10.0.0.1:80":
            sched.release(backend)
    # 0/5 < 2/1: every pick goes to the first until 10 are open again
    assert {sched.pick().key for _ in range(10)} == {"10.0.0.1:80"}


def test_weight_zero_and_down_backends_drain() -> None:
    group = group_of(1, 1)
    sched = WeightedLeastConnections(group)
    held = [sched.pick() for _ in range(6)]
    first, second = "10.0.0.1:80", "10.0.0.2:80"
    sched.update(group.with_weight(first, 0))
    assert sched.open_connections(first) == 3
    assert {sched.pick().key for _ in range(5)} == {second}
    sched.mark_down(second)
    with pytest.raises(NoBackendAvailable, match=r"weight 0.*down"):
        sched.pick()
    for backend in held:
        sched.release(backend)  # the old Backend objects, weight 1: same keys
    assert sched.open_connections(first) == 0
    assert sched.open_connections(second) == 5
    assert sched.ledger.count(first) == 0


def test_update_keeps_surviving_counts_and_forgets_removed() -> None:
    group = group_of(1, 1, 1)
    sched = WeightedLeastConnections(group)
    held = [sched.pick() for _ in range(6)]
    gone = "10.0.0.3:80"
    sched.update(group.without(gone).with_weight("10.0.0.1:80", 4))
    assert sched.open_connections("10.0.0.1:80") == 2
    assert sched.open_connections("10.0.0.2:80") == 2
    with pytest.raises(KeyError):
        sched.open_connections(gone)
    lease = sched.connection()
    late = [b for b in held if b.key == gone]
    for backend in late:
        sched.release(backend)  # late releases after removal: ignored
    sched.update(group)  # the key comes back: it starts from 0
    assert sched.open_connections(gone) == 0
    assert sched.ledger.count(gone) == 0
    lease.release()
    assert sum(sched.open_connections(k) for k in keys_of(group)) == 4


def test_lease_of_a_removed_key_does_not_count_on_its_return() -> None:
    group = group_of(1)
    sched = WeightedLeastConnections(group)
    lease = sched.connection()
    sched.update(BackendGroup())
    sched.update(group)
    other = sched.connection()
    lease.release()  # the first incarnation's lease: counts nowhere
    assert sched.open_connections("10.0.0.1:80") == 1
    other.release()
    assert sched.open_connections("10.0.0.1:80") == 0


def test_counts_never_negative() -> None:
    sched = WeightedLeastConnections(group_of(1, 2))
    backend = sched.pick()
    for _ in range(3):
        sched.release(backend)
    assert sched.open_connections(backend.key) == 0
    assert sched.ledger.count(backend.key) == 0
    sched.mark_down(backend.key)
    sched.release(backend)
    assert sched.open_connections(backend.key) == 0


def test_exclude_retries_go_elsewhere() -> None:
    group = group_of(1, 1, 1)
    sched = WeightedLeastConnections(group)
    tried: list[str] = []
    for _ in range(3):
        tried.append(sched.pick(exclude=tried).key)
    assert sorted(tried) == sorted(group.keys())
    with pytest.raises(NoBackendAvailable, match="excluded"):
        sched.pick(exclude=tried)
    assert sched.pick(exclude=[group[tried[0]]]).key != tried[0]  # a Backend stands for its key


def test_empty_group_and_all_weight_zero() -> None:
    with pytest.raises(NoBackendAvailable, match="empty"):
        WeightedLeastConnections(BackendGroup()).pick()
    with pytest.raises(NoBackendAvailable, match="weight 0"):
        WeightedLeastConnections(group_of(0, 0)).pick()


def test_slow_start_weight_steps_without_any_other_event() -> None:
    clock = FakeClock()
    group = group_of(10)
    sched = WeightedLeastConnections(group, slow_start=32.0, clock=clock)
    sched.update(group.with_backend(Backend("10.0.0.2", 80, 10)))
    new = "10.0.0.2:80"
    assert sched.stats()[new].effective_weight == 10 / RAMP_STEPS
    held = [sched.pick() for _ in range(66)]  # ratios over weights 320 and 10 (in 1/32)
    assert Counter(b.key for b in held)[new] == 2  # 2/10 and 64/320 are the only balance
    clock.now += 16.0  # step 17 of 32 now (170/32): the new backend is the least loaded
    assert sched.stats()[new].effective_weight == 10 * 17 / RAMP_STEPS
    more = [sched.pick().key for _ in range(32)]
    assert more.count(new) == 32  # 2/170 .. 33/170 < 64/320 ... up to 34/170 = 64/320
    clock.now += 16.0  # ramp over: full weight
    assert sched.stats()[new].effective_weight == 10
    assert sched.pick().key == new  # 34/320 < 64/320


def test_weight_one_ramps_in_fine_steps() -> None:
    """Weight 1, the default weight: the ramping backend's ratio uses its fine weight (k in
    units of 1/32), so under load it holds k/32 of a full backend's connections."""
    clock = FakeClock()
    group = group_of(1, 1, 1)
    sched = WeightedLeastConnections(group, slow_start=32.0, clock=clock)
    sched.update(group.with_backend(Backend("10.0.0.9", 80, 1)))
    new = "10.0.0.9:80"
    held = [sched.pick().key for _ in range(3 * 32 + 1)]
    assert held.count(new) == 1  # 1 against 32 on each of the others
    for step in (8, 16, 24, 32):
        clock.now = 1000.0 + (step - 1)  # step k from k - 1 seconds on
        assert sched.stats()[new].effective_weight == step / RAMP_STEPS
        held += [sched.pick().key for _ in range(8 * 4)]
        counts = Counter(held)
        # exact least ratio: the new backend at count c and weight step/32 against 32 + x
        # on each weight-1 backend: c / step is within one pick of (32 + x) / 32
        full = [counts[b.key] for b in group]
        assert max(full) - min(full) <= 1
        assert abs(counts[new] / step - min(full) / RAMP_STEPS) <= 1 / step + 1 / 32, counts


def test_passive_health_suspends_and_lets_connections_drain() -> None:
    clock = FakeClock()
    group = group_of(1, 1)
    sched = WeightedLeastConnections(group, max_fails=1, fail_timeout=10.0, clock=clock)
    lease = sched.connection()
    bad = lease.backend.key
    other = sched.connection()
    lease.fail()
    assert not sched.stats()[bad].available
    assert {sched.pick().key for _ in range(4)} != {bad}
    assert sched.open_connections(bad) == 0
    other.release()
    clock.now += 11.0
    assert sched.stats()[bad].available


def test_sticky_sessions_count_their_picks_in_the_ledger() -> None:
    group = group_of(1, 1)
    sticky = StickySessions(WeightedLeastConnections(group))
    inner = sticky.scheduler
    assert isinstance(inner, WeightedLeastConnections)
    first = sticky.pick("client-a")
    again = [sticky.pick("client-a") for _ in range(3)]  # bound: counted via take
    assert {b.key for b in again} == {first.key}
    assert inner.ledger.count(first.key) == 4 == inner.open_connections(first.key)
    # the least-ratio rule sees those four: new clients go to the other backend
    assert {sticky.pick(f"client-{i}").key for i in range(3)} != {first.key}
    for backend in [first, *again]:
        sticky.release(backend)
    assert inner.ledger.count(first.key) == 0


# -- a custom ledger takes the slow path, with the same results -------------------------------


class RecordingLedger:
    """A LocalLedger behind a wrapper: what a third-party ledger looks like to the scheduler."""

    def __init__(self) -> None:
        self.inner = LocalLedger()
        self.calls: Counter[str] = Counter()

    def set_eligible(self, weights: Sequence[tuple[str, int]]) -> None:
        self.calls["set_eligible"] += 1
        self.inner.set_eligible(weights)

    def acquire(self, exclude: AbstractSet[str] = frozenset()) -> str | None:
        self.calls["acquire"] += 1
        return self.inner.acquire(exclude)

    def take(self, key: str) -> None:
        self.calls["take"] += 1
        self.inner.take(key)

    def release(self, key: str) -> None:
        self.calls["release"] += 1
        self.inner.release(key)

    def count(self, key: str) -> int:
        return self.inner.count(key)

    def forget(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        self.calls["forget"] += len(keys)
        self.inner.forget(keys)


def test_a_custom_ledger_makes_the_same_choices() -> None:
    group = group_of(3, 1, 2, 0, 7)
    ledger = RecordingLedger()
    assert isinstance(ledger, ConnectionLedger)
    custom = WeightedLeastConnections(group, ledger=ledger)
    plain = WeightedLeastConnections(group)
    assert custom.ledger is ledger
    rng = random.Random(7)
    held: list[tuple[Backend, Backend]] = []
    picks = releases = 0
    for _ in range(400):
        if held and rng.random() < 0.45:
            a, b = held.pop(rng.randrange(len(held)))
            custom.release(a)
            plain.release(b)
            releases += 1
        else:
            a, b = custom.pick(), plain.pick()
            assert a == b
            held.append((a, b))
            picks += 1
    assert ledger.calls["acquire"] == picks
    assert ledger.calls["release"] == releases
    assert custom.stats() == plain.stats()
    custom.update(group.without("10.0.0.1:80"))
    assert ledger.calls["forget"] == 1


def test_a_ledger_that_is_not_one_is_refused() -> None:
    with pytest.raises(TypeError, match="ledger must be a ConnectionLedger"):
        WeightedLeastConnections(group_of(1), ledger=object())  # type: ignore[arg-type]


# -- concurrency ---------------------------------------------------------------------------------


def test_threads_lose_no_counts() -> None:
    group = group_of(*range(1, 17))
    sched = WeightedLeastConnections(group)
    threads, rounds, hold = 8, 300, 5
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            barrier.wait(timeout=30)
            for _ in range(rounds):
                held = [sched.pick() for _ in range(rng.randint(1, hold))]
                with sched.connection() as lease:
                    assert sched.open_connections(lease.backend.key) >= 1
                for backend in held:
                    sched.release(backend)
            mine = [sched.pick() for _ in range(hold)]
            barrier.wait(timeout=30)  # all threads hold theirs: the main thread counts
            barrier.wait(timeout=30)
            for backend in mine:
                sched.release(backend)
        except BaseException as exc:  # reported to the main thread
            errors.append(exc)
            barrier.abort()

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait(timeout=30)
    barrier.wait(timeout=60)
    assert sum(sched.open_connections(k) for k in keys_of(group)) == threads * hold
    assert sum(sched.ledger.count(k) for k in keys_of(group)) == threads * hold
    barrier.wait(timeout=30)
    for worker in workers:
        worker.join(timeout=60)
    assert not any(worker.is_alive() for worker in workers)
    assert not errors, errors
    stats = sched.stats()
    assert all(s.open_connections == 0 for s in stats.values())
    assert all(sched.ledger.count(k) == 0 for k in keys_of(group))
    picks = sum(s.picks for s in stats.values())
    assert picks >= threads * (rounds * 2 + hold)


def test_asyncio_tasks_hold_and_release_on_exit_error_and_cancel() -> None:
    group = group_of(2, 1, 1)
    sched = WeightedLeastConnections(group)

    def total() -> int:
        return sum(sched.open_connections(k) for k in keys_of(group))

    async def main() -> None:
        gate = asyncio.Event()
        entered = asyncio.Semaphore(0)

        async def serve(fail: bool) -> None:
            async with sched.connection():
                entered.release()
                await gate.wait()
                if fail:
                    raise ConnectionResetError("backend went away")

        ok = [asyncio.create_task(serve(False)) for _ in range(6)]
        bad = [asyncio.create_task(serve(True)) for _ in range(3)]
        stuck = [asyncio.create_task(serve(False)) for _ in range(3)]
        for _ in range(12):
            await asyncio.wait_for(entered.acquire(), timeout=10)
        assert total() == 12
        assert {k: sched.open_connections(k) for k in keys_of(group)} == {
            "10.0.0.1:80": 6,
            "10.0.0.2:80": 3,
            "10.0.0.3:80": 3,
        }
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)
        assert total() == 9
        gate.set()
        results = await asyncio.wait_for(asyncio.gather(*ok, *bad, return_exceptions=True), 10)
        assert sum(isinstance(r, ConnectionResetError) for r in results) == 3
        assert total() == 0

    asyncio.run(main())
    assert all(sched.ledger.count(k) == 0 for k in keys_of(group))


# -- bad input leaves the state exactly as it was -----------------------------------------------


def _twins() -> tuple[WeightedLeastConnections, WeightedLeastConnections]:
    """Two schedulers brought to the same state (connections held, one backend down)."""
    group = group_of(3, 1, 2, 5)
    twins = WeightedLeastConnections(group), WeightedLeastConnections(group)
    for sched in twins:
        picks = [sched.pick() for _ in range(7)]
        sched.release(picks[2])
        sched.mark_down("10.0.0.2:80")
    return twins


def _assert_same_future(a: WeightedLeastConnections, b: WeightedLeastConnections) -> None:
    assert a.stats() == b.stats()
    assert a.group == b.group
    assert [a.pick() for _ in range(20)] == [b.pick() for _ in range(20)]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda s: s.pick(exclude="10.0.0.1:80"), TypeError, "exclude"),
        (lambda s: s.pick(exclude=[3]), TypeError, "exclude"),
        (lambda s: s.connection(exclude=[None]), TypeError, "exclude"),
        (lambda s: s.release("10.0.0.1:80"), TypeError, "10.0.0.1:80"),
        (lambda s: s.mark_down("10.9.9.9:80"), KeyError, "10.9.9.9:80"),
        (lambda s: s.mark_up("nowhere"), KeyError, "nowhere"),
        (lambda s: s.open_connections("nowhere"), KeyError, "nowhere"),
        (lambda s: s.update([Backend("10.0.0.1", 80)]), InvalidGroupError, "BackendGroup"),
    ],
)
def test_bad_input_leaves_state_unchanged(
    call: Callable[[WeightedLeastConnections], object], error: type[Exception], match: str
) -> None:
    a, b = _twins()
    with pytest.raises(error, match=match):
        call(a)
    _assert_same_future(a, b)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"slow_start": -1.0}, "slow_start"),
        ({"max_fails": -1}, "max_fails"),
        ({"fail_timeout": 0}, "fail_timeout"),
        ({"clock": 5}, "clock"),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        WeightedLeastConnections(group_of(1), **options)  # type: ignore[arg-type]
    with pytest.raises(InvalidGroupError, match="BackendGroup"):
        WeightedLeastConnections([Backend("10.0.0.1", 80)])  # type: ignore[arg-type]


# -- the LocalLedger on its own -----------------------------------------------------------------


def test_ledger_counts_drain_and_forget() -> None:
    ledger = LocalLedger()
    assert ledger.acquire() is None
    ledger.set_eligible([("a", 1), ("b", 1)])
    got = [ledger.acquire() for _ in range(4)]
    assert Counter(got) == {"a": 2, "b": 2}
    ledger.set_eligible([("b", 1)])  # a drains
    assert ledger.count("a") == 2
    assert ledger.acquire(frozenset({"b"})) is None
    ledger.release("a")
    ledger.release("zzz")  # unknown: ignored
    assert ledger.count("a") == 1
    assert ledger.count("zzz") == 0
    ledger.set_eligible([("a", 2), ("b", 1)])  # back, with its count
    assert ledger.count("a") == 1
    ledger.forget(["a"])
    ledger.release("a")
    assert ledger.count("a") == 0
    ledger.take("c")  # not eligible: counted as draining, released like any other
    assert ledger.count("c") == 1
    ledger.release("c")
    ledger.release("c")
    assert ledger.count("c") == 0
    assert "b=2" in repr(ledger)


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ([("a", 0)], "weight of 'a'"),
        ([("a", 3201)], "weight of 'a'"),
        ([("a", True)], "weight of 'a'"),
        ([("a", 1.5)], "weight of 'a'"),
        ([("a", 1), ("a", 2)], "'a' is listed twice"),
    ],
)
def test_ledger_refuses_a_bad_eligible_set_unchanged(
    weights: list[tuple[str, int]], match: str
) -> None:
    ledger, twin = LocalLedger(), LocalLedger()
    for each in (ledger, twin):
        each.set_eligible([("a", 2), ("b", 1)])
        each.acquire()
    with pytest.raises(ValueError, match=match):
        ledger.set_eligible(weights)
    assert [ledger.acquire() for _ in range(6)] == [twin.acquire() for _ in range(6)]


def test_ledger_exclude_puts_everything_back() -> None:
    ledger = LocalLedger()
    ledger.set_eligible([(k, w) for k, w in zip("abcde", [5, 1, 3, 2, 4], strict=True)])
    held = [ledger.acquire() for _ in range(9)]
    assert ledger.acquire(frozenset("abcde")) is None
    twin = LocalLedger()
    twin.set_eligible([(k, w) for k, w in zip("abcde", [5, 1, 3, 2, 4], strict=True)])
    assert [twin.acquire() for _ in range(9)] == held
    # failed exclusions change nothing
    assert [ledger.acquire() for _ in range(30)] == [twin.acquire() for _ in range(30)]


# -- the LocalLedger against a plain reference of its documented rule ---------------------------


_POOL = "abcdef"
_eligible_sets = st.lists(
    st.tuples(st.sampled_from(_POOL), st.sampled_from([1, 2, 3, 7, 50, 99, 100])),
    unique_by=lambda kw: kw[0],
    min_size=1,
    max_size=6,
)
_ledger_ops = st.one_of(
    st.tuples(st.just("acquire"), st.just(frozenset())),
    st.tuples(st.just("acquire"), st.just(frozenset())),
    st.tuples(st.just("acquire"), st.frozensets(st.sampled_from(_POOL), max_size=2)),
    st.tuples(st.just("release"), st.sampled_from(_POOL)),
    st.tuples(st.just("release"), st.sampled_from(_POOL)),
    st.tuples(st.just("take"), st.sampled_from(_POOL)),
    st.tuples(st.just("forget"), st.sampled_from(_POOL)),
    st.tuples(st.just("eligible"), _eligible_sets),
    st.tuples(
        st.just("weight"), st.tuples(st.sampled_from(_POOL), st.sampled_from([0, 1, 3, 7, 99]))
    ),
    st.tuples(st.just("weight"), st.tuples(st.sampled_from(_POOL), st.sampled_from([0, 2, 50]))),
)


@settings(max_examples=300)
@given(_eligible_sets, st.lists(_ledger_ops, min_size=20, max_size=150))
def test_local_ledger_follows_its_documented_rule(
    initial: list[tuple[str, int]], ops: list[tuple[str, object]]
) -> None:
    ledger, reference = LocalLedger(), FractionLedger()
    ledger.set_eligible(initial)
    reference.set_eligible(initial)
    for op, arg in ops:
        if op == "acquire":
            assert isinstance(arg, frozenset)
            assert ledger.acquire(arg) == reference.acquire(arg)
        elif op == "eligible":
            assert isinstance(arg, list)
            ledger.set_eligible(arg)
            reference.set_eligible(arg)
        elif op == "forget":
            assert isinstance(arg, str)
            ledger.forget([arg])
            reference.forget([arg])
        elif op == "weight":
            assert isinstance(arg, tuple)
            assert ledger.set_weight(*arg) == reference.set_weight(*arg)
        else:
            assert isinstance(arg, str)
            getattr(ledger, op)(arg)
            getattr(reference, op)(arg)
        ledger._check()
        for key in _POOL:
            assert ledger.count(key) == reference.count(key), key


def test_a_ramp_step_lost_to_float_rounding_costs_one_rebuild_not_one_per_pick() -> None:
    """At 1000.1 + 26 * 30 / 32 the float arithmetic still says step 26: the scheduler must
    not rebuild on every pick while the clock reads that same instant."""
    clock = FakeClock()
    clock.now = 1000.1
    ledger = RecordingLedger()
    group = group_of(5)
    sched = WeightedLeastConnections(group, ledger=ledger, slow_start=30.0, clock=clock)
    sched.update(group.with_backend(Backend("10.0.0.2", 80, 5)))
    clock.now = 1000.1 + 26 * 30.0 / RAMP_STEPS
    assert sched.stats()["10.0.0.2:80"].effective_weight == 5 * 26 / RAMP_STEPS
    before = ledger.calls["set_eligible"]
    for _ in range(5):
        sched.release(sched.pick())
    assert ledger.calls["set_eligible"] - before <= 1


def test_fine_weights_leave_the_local_ledger_integers_as_they_were() -> None:
    """The scheduler hands weights over on the fine scale (w * RAMP_STEPS). Scaling every
    weight alike scales M = lcm(weights, total) alike, so without a ramp the ledger runs on
    exactly the integers whole weights give: the no-ramp path costs what it did."""
    rng = random.Random(7)
    whole, fine = LocalLedger(), LocalLedger()
    keys = [f"k{i}" for i in range(12)]
    for _ in range(40):
        chosen = [k for k in keys if rng.random() < 0.8] or keys[:1]
        weights = [(k, rng.randint(1, 100)) for k in chosen]
        whole.set_eligible(weights)
        fine.set_eligible([(k, w * RAMP_STEPS) for k, w in weights])
        for _ in range(50):
            if rng.random() < 0.6:
                assert whole.acquire() == fine.acquire()
            else:
                key = rng.choice(keys)
                whole.release(key)
                fine.release(key)
        for attr in ("_unit", "_start", "_load", "_vt", "_step"):
            assert getattr(whole, attr) == getattr(fine, attr), attr


@pytest.mark.parametrize("bad", [-1, 3201, 2.5, True, "3"])
def test_set_weight_refuses_a_bad_weight_unchanged(bad: object) -> None:
    ledger, twin = LocalLedger(), LocalLedger()
    for each in (ledger, twin):
        each.set_eligible([("a", 2), ("b", 1)])
        each.acquire()
    with pytest.raises(ValueError, match=rf"weight of 'a' must be .* got {bad!r}"):
        ledger.set_weight("a", bad)  # type: ignore[arg-type]
    ledger._check()
    assert [ledger.acquire() for _ in range(6)] == [twin.acquire() for _ in range(6)]


class CountingLedger(LocalLedger):
    """A LocalLedger that counts the calls that change its eligible set."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def set_eligible(self, weights: Sequence[tuple[str, int]]) -> None:
        self.calls["set_eligible"] += 1
        super().set_eligible(weights)

    def set_weight(self, key: str, weight: int) -> bool:
        self.calls["set_weight"] += 1
        return super().set_weight(key, weight)


def test_a_health_flap_touches_one_key_not_the_ledger() -> None:
    """mark_down / mark_up reach the ledger as one set_weight each, not a new eligible set,
    and leave the ledger's schedule consistent."""
    group = group_of(*range(1, 21))
    ledger = CountingLedger()
    sched = WeightedLeastConnections(group, ledger=ledger)
    for _ in range(30):
        sched.release(sched.pick())
    ledger.calls.clear()
    key = group.keys()[7]
    sched.mark_down(key)
    sched.mark_up(key)
    assert ledger.calls == Counter({"set_weight": 2})
    ledger._check()
    assert key in {sched.pick().key for _ in range(group.total_weight)}


def test_a_subclass_keeps_its_own_request_methods() -> None:
    # the C request path is bound on the instance only where the class's own methods are
    # WeightedLeastConnections's: an override is never bypassed
    seen: list[object] = []

    class Counting(WeightedLeastConnections):
        def pick(self, client: Client = None, *, exclude: Exclude = ()) -> Backend:
            seen.append(client)
            return super().pick(client, exclude=exclude)

    sched = Counting(BackendGroup([Backend("10.0.0.1", 80)]))
    backend = sched.pick("192.0.2.1")
    sched.release(backend)
    assert (backend.key, seen) == ("10.0.0.1:80", ["192.0.2.1"])
    assert "pick" not in vars(sched)
    assert sched.open_connections("10.0.0.1:80") == 0
