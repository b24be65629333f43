"""Operating features, driven by a fake clock (no sleeps): slow start, passive health, stats,
draining, and the retry recipe, against every scheduler class that exists.

Slow start is for the schedulers that take it (round robin and least connections); passive
health, stats and draining are for all. Schedulers are imported by name: one that fails to
import fails its tests.
"""

from __future__ import annotations

import importlib
import math
from collections import Counter
from collections.abc import Iterable

import pytest

from fakes import FakeClock
from lbalgo import (
    Backend,
    BackendGroup,
    Lease,
    NoBackendAvailable,
    StickySessions,
    attempts,
)
from lbalgo._base import BaseScheduler
from lbalgo.scheduler import RAMP_STEPS

RAMPED = [
    ("lbalgo.swrr", "SmoothWeightedRoundRobin"),
    ("lbalgo.wlc", "WeightedLeastConnections"),
]
ALL = [*RAMPED, ("lbalgo.source_ip_hash", "SourceIPHash")]


def _load(spec: tuple[str, str]) -> type[BaseScheduler]:
    # every scheduler exists now: one that fails to import must fail its tests, not skip them
    module, name = spec
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=RAMPED, ids=[name for _, name in RAMPED])
def ramped(request: pytest.FixtureRequest) -> type[BaseScheduler]:
    return _load(request.param)


@pytest.fixture(params=ALL, ids=[name for _, name in ALL])
def any_cls(request: pytest.FixtureRequest) -> type[BaseScheduler]:
    return _load(request.param)


def client(i: int) -> str:
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def backends(*weights: int) -> list[Backend]:
    return [Backend(f"192.0.2.{i + 1}", 80, w) for i, w in enumerate(weights)]


def light_load(sched: BaseScheduler, n: int, start: int = 0) -> Counter[str]:
    """n picks, each released before the next (light load), counted by backend key."""
    got: Counter[str] = Counter()
    for i in range(start, start + n):
        with sched.connection(client(i)) as lease:
            got[lease.backend.key] += 1
    return got


def weight_now(sched: BaseScheduler, key: str) -> float:
    return sched.stats()[key].effective_weight


# -- slow start --------------------------------------------------------------------------------

SLOW = 100.0


def ramped_weight(weight: int, fraction: float) -> float:
    """The documented ramp: step k = floor(RAMP_STEPS * fraction) + 1 of RAMP_STEPS."""
    step = min(RAMP_STEPS, math.floor(RAMP_STEPS * fraction) + 1)
    return weight * step / RAMP_STEPS


def test_no_ramp_at_construction(ramped: type[BaseScheduler], clock: FakeClock) -> None:
    group = BackendGroup(backends(10, 20, 30))
    sched = ramped(group, slow_start=SLOW, clock=clock)
    assert [weight_now(sched, b.key) for b in group] == [10, 20, 30]
    got = light_load(sched, 60)
    assert [got[b.key] for b in group] == [10, 20, 30]
    # weight 1 (the default weight) included: whole weights, not fractions, at once
    group = BackendGroup(backends(1, 1, 1, 1))
    sched = ramped(group, slow_start=SLOW, clock=clock)
    weights = [weight_now(sched, b.key) for b in group]
    assert weights == [1, 1, 1, 1]
    assert all(type(w) is int for w in weights)
    assert sorted(light_load(sched, 40).values()) == [10, 10, 10, 10]


@pytest.mark.parametrize("how", ["update", "mark_up"])
@pytest.mark.parametrize("full", [1, 20, 100])
def test_ramp_shape(ramped: type[BaseScheduler], clock: FakeClock, how: str, full: int) -> None:
    a, b, c = backends(10, 10, full)
    sched = ramped(BackendGroup([a, b, c]), slow_start=SLOW, clock=clock)
    if how == "update":
        sched.update(BackendGroup([a, b]))
        clock.now += 1
        sched.update(BackendGroup([a, b, c]))
    else:
        sched.mark_down(c.key)
        clock.now += 1
        sched.mark_up(c.key)
    began = clock.now
    shape = []
    for fraction in (0.0, 0.01, 0.25, 0.5, 0.75, 0.95, 1.0, 2.0):
        clock.now = began + fraction * SLOW
        weight = weight_now(sched, c.key)
        shape.append(weight)
        assert 0 < weight <= full
        if fraction < 1:
            assert weight == ramped_weight(full, fraction), (fraction, weight)
            # linear, to within one step of the ramp, whatever the weight (1 included)
            assert abs(weight - full * fraction) <= full / RAMP_STEPS, (fraction, weight)
    assert shape[0] == full / RAMP_STEPS, "a ramp starts from a small weight"
    assert shape[2] < shape[3] < shape[4] < shape[5] < full, "every weight ramps, 1 too"
    assert shape == sorted(shape), "a ramp never goes down"
    assert shape[-2:] == [full, full], "full weight at the end of the window"
    assert type(shape[-1]) is int
    # the others are untouched throughout
    assert weight_now(sched, a.key) == 10
    assert weight_now(sched, b.key) == 10


def test_traffic_follows_the_ramp(ramped: type[BaseScheduler], clock: FakeClock) -> None:
    a, b, c = backends(10, 10, 20)
    sched = ramped(BackendGroup([a, b]), slow_start=SLOW, clock=clock)
    sched.update(BackendGroup([a, b, c]))
    began = clock.now
    for fraction in (0.0, 0.5):
        clock.now = began + fraction * SLOW
        weight = weight_now(sched, c.key)
        # whole periods of the weights now, on the fine scale: 20 * 32 + 20 * k picks
        fine = round(weight * RAMP_STEPS)
        got = light_load(sched, 20 * RAMP_STEPS + fine, start=int(fraction * 1000))
        # within a couple of picks of the ramped share
        assert abs(got[c.key] - fine) <= 2, (fraction, weight, got)
        assert abs(got[a.key] - got[b.key]) <= 2
    clock.now = began + SLOW
    got = light_load(sched, 40 * 5, start=5000)
    assert abs(got[c.key] - 20 * 5) <= 2
    assert abs(got[a.key] - 10 * 5) <= 2


@pytest.mark.parametrize("full", [1, 100])
def test_share_of_a_ramping_backend_grows_linearly(
    ramped: type[BaseScheduler], clock: FakeClock, full: int
) -> None:
    """Three backends serve; a fourth of the same weight joins and ramps. Its share, measured
    in windows at the start, the middle and the end of the slow-start window, follows its
    ramped weight: from 1/97 of the traffic (1/32 of a weight among 3 full ones) to 1/4.
    Weight 1 is the default weight: it must ramp as finely as weight 100."""
    group = BackendGroup(backends(full, full, full))
    sched = ramped(group, slow_start=SLOW, clock=clock)
    new = Backend("192.0.2.99", 80, full)
    sched.update(group.with_backend(new))
    began = clock.now
    shares = []
    for fraction in (0.0, 0.5, 0.9):
        clock.now = began + fraction * SLOW
        step = math.floor(RAMP_STEPS * fraction) + 1
        periods = 4  # whole periods of the fine weights: 3 * 32 + step
        got = light_load(sched, (3 * RAMP_STEPS + step) * periods, start=int(fraction * 10_000))
        assert abs(got[new.key] - step * periods) <= 2, (fraction, got)
        shares.append(got[new.key] / sum(got.values()))
    assert shares[0] < 0.02, "a joining weight-1 backend does not get a full share at once"
    assert shares[0] < shares[1] < shares[2] < 0.25
    assert abs(shares[1] - 17 / 113) < 0.01  # step 17 of 32 at the middle
    clock.now = began + SLOW
    got = light_load(sched, 4 * 25, start=50_000)
    assert abs(got[new.key] - 25) <= 2, got


def test_ramp_follows_the_clock_pick_by_pick(
    ramped: type[BaseScheduler], clock: FakeClock
) -> None:
    """The clock moves on between picks across the whole window (as in production): the
    joining backend's share in each tenth of the window is what its weight then gives."""
    group = BackendGroup(backends(1, 1, 1))
    sched = ramped(group, slow_start=SLOW, clock=clock)
    new = Backend("192.0.2.99", 80)
    sched.update(group.with_backend(new))
    began = clock.now
    per_tenth = 640
    window_shares = []
    for tenth in range(10):
        got = expected = 0.0
        for i in range(per_tenth):
            fraction = (tenth + i / per_tenth) / 10
            clock.now = began + fraction * SLOW
            step = math.floor(RAMP_STEPS * fraction) + 1
            expected += step / (3 * RAMP_STEPS + step)
            with sched.connection(client(i)) as lease:
                got += lease.backend.key == new.key
        # a step lasts 64 picks here: within 2 picks of the share in each step of the 3-4
        # steps in a tenth
        assert abs(got - expected) <= 8, (tenth, got, expected)
        window_shares.append(got / per_tenth)
    assert window_shares == sorted(window_shares)
    assert window_shares[0] < 0.05
    assert window_shares[-1] > 0.2


def test_exact_once_the_ramp_is_over(ramped: type[BaseScheduler], clock: FakeClock) -> None:
    a, b, c = backends(5, 1, 3)
    sched = ramped(BackendGroup([a, b]), slow_start=SLOW, clock=clock)
    sched.update(BackendGroup([a, b, c]))
    clock.now += SLOW / 3
    light_load(sched, 17)
    clock.now += SLOW
    assert [weight_now(sched, k.key) for k in (a, b, c)] == [5, 1, 3]
    got = light_load(sched, 9 * 20, start=100)
    # full weights again: 20 periods of 9 give 100/20/60, to within the pick or two the
    # state left by the ramp may shift
    for backend in (a, b, c):
        assert abs(got[backend.key] - backend.weight * 20) <= 2, got


def test_ramp_again_after_down_and_up(ramped: type[BaseScheduler], clock: FakeClock) -> None:
    a, b = backends(10, 10)
    sched = ramped(BackendGroup([a]), slow_start=SLOW, clock=clock)
    sched.update(BackendGroup([a, b]))
    clock.now += SLOW
    assert weight_now(sched, b.key) == 10
    sched.mark_down(b.key)
    assert weight_now(sched, b.key) == 0
    clock.now += 5
    sched.mark_up(b.key)
    assert weight_now(sched, b.key) <= 2
    clock.now += SLOW / 2
    assert abs(weight_now(sched, b.key) - 5) <= 1
    clock.now += SLOW / 2
    assert weight_now(sched, b.key) == 10


def test_never_ramps_the_only_eligible_backend(
    ramped: type[BaseScheduler], clock: FakeClock
) -> None:
    a, b, c = backends(10, 10, 10)
    sched = ramped(BackendGroup([a]), slow_start=SLOW, clock=clock)
    sched.mark_down(a.key)
    sched.mark_up(a.key)  # alone: nothing to shield it from
    assert weight_now(sched, a.key) == 10
    # joining an empty group together: none of them is warm, so none ramps
    sched = ramped(BackendGroup(), slow_start=SLOW, clock=clock)
    sched.update(BackendGroup([a, b]))
    assert [weight_now(sched, k.key) for k in (a, b)] == [10, 10]
    # back while every other backend is down
    sched = ramped(BackendGroup([a, b, c]), slow_start=SLOW, clock=clock)
    for backend in (a, b, c):
        sched.mark_down(backend.key)
    sched.mark_up(a.key)
    assert weight_now(sched, a.key) == 10
    sched.mark_up(b.key)  # a serves now: b ramps
    assert weight_now(sched, b.key) <= 2


def test_slow_start_zero_never_ramps(ramped: type[BaseScheduler], clock: FakeClock) -> None:
    a, b = backends(10, 10)
    sched = ramped(BackendGroup([a]), clock=clock)
    sched.update(BackendGroup([a, b]))
    assert weight_now(sched, b.key) == 10


# -- passive health ----------------------------------------------------------------------------

FAILS, TIMEOUT = 2, 10.0


def passive(cls: type[BaseScheduler], clock: FakeClock, n: int = 3) -> BaseScheduler:
    return cls(
        BackendGroup(backends(*[1] * n)), max_fails=FAILS, fail_timeout=TIMEOUT, clock=clock
    )


def on(sched: BaseScheduler, key: str, i: int = 0) -> Lease:
    """A lease on ``key``, whatever the algorithm (every other backend excluded)."""
    lease = sched.connection(client(i), exclude=[b.key for b in sched.group if b.key != key])
    assert lease.backend.key == key
    return lease


def count_picks(sched: BaseScheduler, key: str, n: int, start: int = 0) -> int:
    """How many of n light-load picks went to ``key``."""
    return light_load(sched, n, start)[key]


def test_max_fails_within_fail_timeout_suspends(
    any_cls: type[BaseScheduler], clock: FakeClock
) -> None:
    sched = passive(any_cls, clock)
    key = sched.group.backends[0].key
    on(sched, key).fail()
    clock.now += TIMEOUT - 1
    assert sched.stats()[key].available  # one failure: not yet
    on(sched, key).fail()  # the second within fail_timeout
    stats = sched.stats()[key]
    assert (stats.available, stats.effective_weight, stats.failures) == (False, 0, 2)
    assert stats.up  # passive health is not the health checker's mark
    assert count_picks(sched, key, 60) == 0
    with pytest.raises(NoBackendAvailable, match="suspended"):
        on(sched, key)


def test_failures_outside_the_window_do_not_add_up(
    any_cls: type[BaseScheduler], clock: FakeClock
) -> None:
    sched = passive(any_cls, clock)
    key = sched.group.backends[0].key
    on(sched, key).fail()
    clock.now += TIMEOUT
    on(sched, key).fail()
    assert sched.stats()[key].available
    assert sched.stats()[key].failures == 2


def test_successes_in_between_do_not_erase_failures(
    any_cls: type[BaseScheduler], clock: FakeClock
) -> None:
    # as in nginx: only max_fails failures within fail_timeout matter
    sched = passive(any_cls, clock)
    key = sched.group.backends[0].key
    on(sched, key).fail()
    on(sched, key).release()
    on(sched, key).fail()
    assert not sched.stats()[key].available


def test_one_trial_after_fail_timeout_then_success_clears(
    any_cls: type[BaseScheduler], clock: FakeClock
) -> None:
    sched = passive(any_cls, clock)
    key = sched.group.backends[0].key
    on(sched, key).fail()
    on(sched, key).fail()
    clock.now += TIMEOUT - 0.5
    assert count_picks(sched, key, 60) == 0
    clock.now += 0.5
    assert sched.stats()[key].available
    # the trial: exactly one request while its outcome is awaited
    held = [sched.connection(client(i)) for i in range(100, 160)]
    trials = [lease for lease in held if lease.backend.key == key]
    assert len(trials) == 1
    assert not sched.stats()[key].available
    for lease in held:
        if lease is not trials[0]:
            lease.release()
    trials[0].release()  # it worked
    assert sched.stats()[key].available
    assert count_picks(sched, key, 60, start=200) > 0
    assert sched.stats()[key].failures == 2


def test_failed_trial_suspends_again(any_cls: type[BaseScheduler], clock: FakeClock) -> None:
    sched = passive(any_cls, clock)
    key = sched.group.backends[0].key
    on(sched, key).fail()
    on(sched, key).fail()
    clock.now += TIMEOUT
    on(sched, key).fail()  # the trial fails: one failure is enough now
    assert not sched.stats()[key].available
    clock.now += TIMEOUT - 1
    assert count_picks(sched, key, 60) == 0
    clock.now += 1
    trial = on(sched, key)  # a new trial after another fail_timeout
    clock.now += TIMEOUT
    # the trial never answered: after fail_timeout yet another one is allowed
    second = on(sched, key)
    second.release()
    trial.release()
    assert count_picks(sched, key, 60) > 0


def test_independent_of_mark_down(any_cls: type[BaseScheduler], clock: FakeClock) -> None:
    sched = passive(any_cls, clock)
    key = sched.group.backends[0].key
    on(sched, key).fail()
    on(sched, key).fail()
    sched.mark_down(key)
    sched.mark_up(key)  # the health checker cannot lift a passive suspension
    assert not sched.stats()[key].available
    sched.mark_down(key)
    clock.now += TIMEOUT  # nor can the end of a suspension lift a mark_down
    assert not sched.stats()[key].available
    assert count_picks(sched, key, 60) == 0
    sched.mark_up(key)
    assert sched.stats()[key].available


def test_the_only_backend_is_never_suspended(
    any_cls: type[BaseScheduler], clock: FakeClock
) -> None:
    sched = passive(any_cls, clock, n=1)
    key = sched.group.backends[0].key
    for _ in range(5):
        sched.connection(client(1)).fail()
    stats = sched.stats()[key]
    assert (stats.available, stats.failures) == (True, 5)
    # a group that shrinks to one backend forgets that backend's suspension
    sched = passive(any_cls, clock, n=2)
    on(sched, key).fail()
    on(sched, key).fail()
    assert not sched.stats()[key].available
    sched.update(BackendGroup([sched.group[key]]))
    assert sched.stats()[key].available


def test_disabled_counts_but_never_suspends(
    any_cls: type[BaseScheduler], clock: FakeClock
) -> None:
    sched = any_cls(BackendGroup(backends(1, 1)), clock=clock)
    key = sched.group.backends[0].key
    for _ in range(5):
        on(sched, key).fail()
    assert sched.stats()[key].failures == 5
    assert sched.stats()[key].available


def test_release_failed_counts_like_lease_fail(
    any_cls: type[BaseScheduler], clock: FakeClock
) -> None:
    sched = passive(any_cls, clock)
    key = sched.group.backends[0].key
    for _ in range(2):
        backend = on(sched, key).backend
        sched.release(backend, failed=True)
    assert not sched.stats()[key].available
    assert all(s.open_connections == 0 for s in sched.stats().values())


def test_all_suspended_is_no_backend(any_cls: type[BaseScheduler], clock: FakeClock) -> None:
    sched = passive(any_cls, clock, n=2)
    for backend in sched.group:
        on(sched, backend.key).fail()
        on(sched, backend.key).fail()
    with pytest.raises(NoBackendAvailable, match="suspended by passive health"):
        sched.pick(client(1))
    clock.now += TIMEOUT
    assert sched.pick(client(1)).key in sched.group


def test_trial_success_ramps_with_slow_start(
    ramped: type[BaseScheduler], clock: FakeClock
) -> None:
    sched = ramped(
        BackendGroup(backends(10, 10)),
        slow_start=SLOW,
        max_fails=1,
        fail_timeout=TIMEOUT,
        clock=clock,
    )
    key = sched.group.backends[0].key
    on(sched, key).fail()
    clock.now += TIMEOUT
    on(sched, key).release()  # the trial succeeds: the backend is back, but cold
    assert weight_now(sched, key) <= 2
    clock.now += SLOW
    assert weight_now(sched, key) == 10


# -- stats and draining ------------------------------------------------------------------------


def test_stats_follow_the_traffic(any_cls: type[BaseScheduler], clock: FakeClock) -> None:
    group = BackendGroup(backends(3, 2, 1))
    sched = any_cls(group, clock=clock)
    held = [sched.connection(client(i)) for i in range(60)]
    for lease in held[::2]:
        lease.release()
    stats = sched.stats()
    for key in [b.key for b in group]:
        mine = [lease for lease in held if lease.backend.key == key]
        assert stats[key].picks == len(mine)
        assert stats[key].open_connections == sum(not lease.released for lease in mine)
    assert sum(s.picks for s in stats.values()) == 60
    assert stats is not sched.stats()  # a snapshot, not a live view
    held[1].release()
    assert sum(s.open_connections for s in stats.values()) == 30


def drain(sched: BaseScheduler, key: str, open_leases: Iterable[Lease]) -> None:
    """The documented drain: weight 0, wait for its connections to end, then remove."""
    sched.update(sched.group.with_weight(key, 0))
    for lease in open_leases:
        with sched.connection(client(999)) as other:
            assert other.backend.key != key  # no new requests while it drains
        lease.release()
    assert sched.open_connections(key) == 0
    sched.update(sched.group.without(key))


def test_drain_then_remove(any_cls: type[BaseScheduler], clock: FakeClock) -> None:
    group = BackendGroup(backends(1, 1, 1))
    sched = any_cls(group, clock=clock)
    held = [sched.connection(client(i)) for i in range(30)]
    key = group.backends[1].key
    mine = [lease for lease in held if lease.backend.key == key]
    assert mine
    drain(sched, key, mine)
    assert key not in sched.group
    with pytest.raises(KeyError, match=r"192\.0\.2\.2:80"):
        sched.open_connections(key)
    for lease in held:
        lease.release()
    assert all(s.open_connections == 0 for s in sched.stats().values())


# -- the retry recipe --------------------------------------------------------------------------


def test_attempts_try_distinct_backends(any_cls: type[BaseScheduler], clock: FakeClock) -> None:
    sched = any_cls(BackendGroup(backends(1, 1, 1, 1)), clock=clock)
    tried = []
    for lease in attempts(sched, client(1), tries=3):
        tried.append(lease.backend.key)
        lease.fail()
    assert len(tried) == len(set(tried)) == 3
    assert sum(s.failures for s in sched.stats().values()) == 3
    assert all(s.open_connections == 0 for s in sched.stats().values())


def test_attempts_fail_a_lease_left_open(any_cls: type[BaseScheduler], clock: FakeClock) -> None:
    sched = any_cls(BackendGroup(backends(1, 1, 1)), clock=clock)
    leases = []
    for lease in attempts(sched, client(1), tries=5):
        leases.append(lease)
        if len(leases) < 3:
            assert sched.open_connections(lease.backend.key) == 1
            continue  # moving on without a word: the lease is failed for us
        break
    assert [lease.released for lease in leases] == [True, True, False]
    leases[-1].release()  # the caller's to end
    assert [s.failures for s in sched.stats().values()].count(1) == 2
    # asking past the last backend ends the iteration, failing the last lease too
    assert len(list(attempts(sched, client(1), tries=5))) == 3
    assert all(s.open_connections == 0 for s in sched.stats().values())


def test_attempts_stop_when_the_caller_is_done(
    any_cls: type[BaseScheduler], clock: FakeClock
) -> None:
    sched = any_cls(BackendGroup(backends(1, 1, 1)), clock=clock)
    first_key = None
    for lease in attempts(sched, client(1)):
        first_key = lease.backend.key
        break  # success: the lease is the caller's (a streamed response)
    assert first_key is not None
    assert sched.open_connections(first_key) == 1
    assert sum(s.failures for s in sched.stats().values()) == 0
    lease.release()


def test_attempts_errors(any_cls: type[BaseScheduler], clock: FakeClock) -> None:
    group = BackendGroup(backends(1, 1))
    sched = any_cls(group, clock=clock)
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(ValueError, match="tries"):
            attempts(sched, client(1), tries=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        attempts(sched, client(1), exclude="192.0.2.1:80")
    with pytest.raises(NoBackendAvailable):
        next(attempts(sched, client(1), exclude=group.keys()))
    assert [
        lease.backend.key for lease in attempts(sched, client(1), exclude=[group.backends[0]])
    ] == [group.backends[1].key]


def test_attempts_move_a_sticky_session(any_cls: type[BaseScheduler], clock: FakeClock) -> None:
    sticky = StickySessions(any_cls(BackendGroup(backends(1, 1, 1)), clock=clock), clock=clock)
    first = sticky.pick(client(7))
    sticky.release(first)
    for lease in attempts(sticky, client(7)):
        if lease.backend == first:
            lease.fail()  # the session's backend is dying
            continue
        lease.release()
        break
    assert sticky.pick(client(7)) != first  # the session moved with the retry
