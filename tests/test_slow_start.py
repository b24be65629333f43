"""Slow start, driven by a fake clock (no sleeps), for the schedulers that take it (round
robin and least connections): the ramp's shape, the traffic it lets through, its end."""

from __future__ import annotations

import math

import pytest

from lbalgo import (
    Backend,
    BackendGroup,
)
from lbalgo._base import BaseScheduler
from lbalgo.scheduler import RAMP_STEPS
from support.clocks import FakeClock
from support.schedulers import (
    SLOW,
    backends,
    client,
    light_load,
    weight_now,
)


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


def test_ramp_follows_the_clock_pick_by_pick(ramped: type[BaseScheduler], clock: FakeClock) -> None:
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
