"""Passive health (nginx's max_fails / fail_timeout with its one trial), statistics and
draining, driven by a fake clock, against every scheduler class."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from lbalgo import (
    BackendGroup,
    Lease,
    NoBackendAvailable,
)
from lbalgo._base import BaseScheduler
from support.clocks import FakeClock
from support.schedulers import (
    SLOW,
    TIMEOUT,
    backends,
    client,
    count_picks,
    on,
    passive,
    weight_now,
)

# -- passive health ----------------------------------------------------------------------------


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


def test_disabled_counts_but_never_suspends(any_cls: type[BaseScheduler], clock: FakeClock) -> None:
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


def test_trial_success_ramps_with_slow_start(ramped: type[BaseScheduler], clock: FakeClock) -> None:
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
