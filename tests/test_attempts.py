"""The retry recipe (lbalgo.attempts) against every scheduler class, sticky sessions
included."""

from __future__ import annotations

import pytest

from lbalgo import (
    BackendGroup,
    NoBackendAvailable,
    StickySessions,
    attempts,
)
from lbalgo._base import BaseScheduler
from support.clocks import FakeClock
from support.schedulers import (
    backends,
    client,
)

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
