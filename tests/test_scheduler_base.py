"""The shared machinery of BaseScheduler, through the smallest possible algorithm.

The algorithm tests and the shared contract tests cover the real schedulers; these pin down the
machinery itself: counting, leases, health marks, updates by key, errors leaving state alone.
"""

from __future__ import annotations

import asyncio

import pytest

from lbalgo import Backend, BackendGroup, InvalidGroupError, Lease, NoBackendAvailable
from lbalgo._base import BaseScheduler
from lbalgo._slot import Slot
from lbalgo.scheduler import Client
from support.threads import run_threads


class FirstEligible(BaseScheduler):
    """Picks the first eligible backend in group order: enough to exercise the base."""

    def _choose(self, client: Client, exclude: frozenset[str], now: float) -> Slot:
        for slot in self._order:
            if slot.key not in exclude and self._eligible(slot, now):
                return slot
        raise self._no_backend(exclude)


A, B, C = (Backend(f"10.0.0.{i}", 80, w) for i, w in ((1, 1), (2, 2), (3, 3)))


@pytest.fixture
def sched() -> FirstEligible:
    return FirstEligible(BackendGroup([A, B, C]))


def test_counts_and_release(sched: FirstEligible) -> None:
    assert sched.pick() == A
    assert sched.pick() == A
    assert sched.open_connections(A.key) == 2
    sched.release(A)
    sched.release(A)
    sched.release(A)  # one too many: ignored, never negative
    assert sched.open_connections(A.key) == 0
    assert sched.stats()[A.key].picks == 2


def test_exclude_and_no_backend(sched: FirstEligible) -> None:
    assert sched.pick(exclude=[A.key]) == B
    assert sched.pick(exclude=[A, B.key]) == C
    with pytest.raises(NoBackendAvailable, match="excluded"):
        sched.pick(exclude=[A.key, B.key, C.key])
    with pytest.raises(NoBackendAvailable, match="group is empty"):
        FirstEligible(BackendGroup()).pick()


def test_bad_exclude_leaves_state_alone(sched: FirstEligible) -> None:
    before = sched.stats()
    with pytest.raises(TypeError, match=r"'10\.0\.0\.1:80'"):
        sched.pick(exclude="10.0.0.1:80")
    with pytest.raises(TypeError, match="42"):
        sched.pick(exclude=[42])  # type: ignore[list-item]
    assert sched.stats() == before


def test_health_marks(sched: FirstEligible) -> None:
    sched.mark_down(A.key)
    sched.mark_down(A.key)  # idempotent
    assert not sched.is_up(A.key)
    assert sched.pick() == B
    sched.mark_up(A.key)
    assert sched.is_up(A.key)
    assert sched.pick() == A
    for call in (sched.mark_down, sched.mark_up, sched.is_up, sched.open_connections):
        with pytest.raises(KeyError, match="nope"):
            call("nope")


def test_lease_semantics(sched: FirstEligible) -> None:
    lease = sched.connection()
    assert isinstance(lease, Lease)
    assert lease.backend == A
    assert sched.open_connections(A.key) == 1
    lease.release()
    lease.release()
    lease.fail()  # after release: nothing happens
    assert lease.released
    assert sched.open_connections(A.key) == 0
    assert sched.stats()[A.key].failures == 0

    def request_that_fails() -> None:
        with sched.connection() as held:
            assert sched.open_connections(held.backend.key) == 1
            raise RuntimeError("the request failed")

    with pytest.raises(RuntimeError):
        request_that_fails()
    assert sched.open_connections(A.key) == 0

    failing = sched.connection()
    failing.fail()
    failing.release()
    assert sched.stats()[A.key].failures == 1
    assert sched.open_connections(A.key) == 0


def test_lease_async_with(sched: FirstEligible) -> None:
    async def main() -> None:
        async with sched.connection() as lease:
            assert sched.open_connections(lease.backend.key) == 1
        assert sched.open_connections(A.key) == 0

        entered = asyncio.Event()

        async def held() -> None:
            async with sched.connection():
                entered.set()
                await asyncio.sleep(10)

        task = asyncio.ensure_future(held())
        await asyncio.wait_for(entered.wait(), timeout=10)
        assert sched.open_connections(A.key) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sched.open_connections(A.key) == 0

    asyncio.run(main())


def test_update_carries_state_by_key(sched: FirstEligible) -> None:
    lease_a = sched.connection()
    sched.mark_down(B.key)
    sched.update(BackendGroup([A.with_weight(7), B, Backend("10.0.0.4", 80)]))
    assert sched.group[A.key].weight == 7
    assert sched.open_connections(A.key) == 1
    assert not sched.is_up(B.key)
    assert sched.is_up("10.0.0.4:80")
    with pytest.raises(KeyError):
        sched.open_connections(C.key)
    sched.release(A.with_weight(1))  # the same key is the same backend, whatever its weight
    assert sched.open_connections(A.key) == 0
    lease_a.release()  # already released by key: ignored
    assert sched.open_connections(A.key) == 0


def test_late_release_after_removal_is_ignored(sched: FirstEligible) -> None:
    lease = sched.connection()
    assert lease.backend == A
    sched.update(BackendGroup([B, C]))
    lease.release()
    sched.release(A)
    sched.update(BackendGroup([A, B, C]))  # A comes back fresh
    second = sched.connection()
    assert second.backend == A
    lease.release()
    assert sched.open_connections(A.key) == 1  # the old lease does not touch the new count


def test_bad_update_leaves_state_alone(sched: FirstEligible) -> None:
    sched.connection()
    before = sched.stats()
    group = sched.group
    with pytest.raises(InvalidGroupError, match="group must be a BackendGroup"):
        sched.update([A, B])  # type: ignore[arg-type]
    assert sched.stats() == before
    assert sched.group is group


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("slow_start", -1),
        ("slow_start", float("inf")),
        ("slow_start", True),
        ("max_fails", -1),
        ("max_fails", 1.5),
        ("fail_timeout", 0),
        ("fail_timeout", "10"),
        ("clock", 3),
    ],
)
def test_bad_options_name_the_option(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        FirstEligible(BackendGroup([A]), **{option: value})  # type: ignore[arg-type]


def test_threads_lose_no_counts() -> None:
    sched = FirstEligible(BackendGroup([A, B, C]))

    def work() -> None:
        for i in range(2_000):
            lease = sched.connection(exclude=[A.key] if i % 3 == 0 else ())
            if i % 5 == 0:
                sched.mark_down(C.key)
                sched.mark_up(C.key)
            lease.release()

    run_threads(work, [()] * 4)
    assert all(sched.open_connections(b.key) == 0 for b in sched.group)
    assert sum(s.picks for s in sched.stats().values()) == 8_000


# -- take / take_connection: a wrapper's own choice ----------------------------------------------


def _state(sched: BaseScheduler) -> dict[str, tuple[int, int, bool]]:
    return {k: (s.picks, s.open_connections, s.available) for k, s in sched.stats().items()}


def test_take_counts_an_eligible_key_and_refuses_the_rest() -> None:
    group = BackendGroup([Backend("10.0.0.1", 80), Backend("10.0.0.2", 80, 0)])
    sched = FirstEligible(group)
    taken = sched.take("10.0.0.1:80")
    assert taken == group["10.0.0.1:80"]
    lease = sched.take_connection("10.0.0.1:80")
    assert lease is not None
    assert sched.open_connections("10.0.0.1:80") == 2
    lease.release()
    assert sched.take("10.0.0.2:80") is None  # weight 0
    assert sched.take("nobody:80") is None
    assert sched.take("10.0.0.1:80", exclude=[Backend("10.0.0.1", 80)]) is None
    sched.mark_down("10.0.0.1:80")
    assert sched.take_connection("10.0.0.1:80") is None
    assert sched.open_connections("10.0.0.1:80") == 1


@pytest.mark.parametrize(
    ("key", "exclude", "message"),
    [
        (80, (), "key must be a backend key .* got 80"),
        (None, (), "key must be a backend key .* got None"),
        ("10.0.0.1:80", "10.0.0.1:80", "exclude must be a collection .* got '10.0.0.1:80'"),
        ("10.0.0.1:80", [3], "exclude must hold backend keys .* got 3"),
    ],
)
def test_take_bad_input_names_it_and_changes_nothing(
    key: object, exclude: object, message: str
) -> None:
    sched = FirstEligible(BackendGroup([Backend("10.0.0.1", 80)]))
    before = _state(sched)
    for take in (sched.take, sched.take_connection):
        with pytest.raises(TypeError, match=message):
            take(key, exclude)  # type: ignore[arg-type]
    assert _state(sched) == before
