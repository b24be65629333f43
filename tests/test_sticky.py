"""StickySessions: bindings, expiry from last use, rebinding, the memory bound, thread safety.

The shared contract (tests/test_contract.py) runs the Scheduler interface over sticky wrappers
of every scheduler; these tests pin down the bindings themselves, driven by a fake clock. The
wrapped scheduler here is a plain rotation, so that "asked the wrapped scheduler again" is
visible as the rotation moving on.
"""

from __future__ import annotations

import threading
from collections import Counter
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbalgo import (
    Backend,
    BackendGroup,
    BackendStats,
    Lease,
    NoBackendAvailable,
    Scheduler,
    StickySessions,
)
from lbalgo._base import BaseScheduler
from lbalgo._slot import Slot
from lbalgo.scheduler import Client, Exclude
from support.clocks import FakeClock
from support.threads import run_threads


class Rotate(BaseScheduler):
    """Plain round robin over the eligible backends: a visible, predictable inner choice."""

    def _rebuild(self) -> None:
        self._next = getattr(self, "_next", 0)

    def _choose(self, client: Client, exclude: frozenset[str], now: float) -> Slot:
        n = len(self._order)
        for step in range(n):
            slot = self._order[(self._next + step) % n]
            if slot.key not in exclude and self._eligible(slot, now):
                self._next = (self._next + step + 1) % n
                return slot
        raise self._no_backend(exclude)


class Foreign:
    """A Scheduler that is not a BaseScheduler: StickySessions may use only its interface."""

    def __init__(self, inner: Scheduler) -> None:
        self.inner = inner

    @property
    def group(self) -> BackendGroup:
        return self.inner.group

    def pick(self, client: Client = None, *, exclude: Exclude = ()) -> Backend:
        return self.inner.pick(client, exclude=exclude)

    def release(self, backend: Backend, *, failed: bool = False) -> None:
        self.inner.release(backend, failed=failed)

    def connection(self, client: Client = None, *, exclude: Exclude = ()) -> Lease:
        return self.inner.connection(client, exclude=exclude)

    def mark_down(self, key: str) -> None:
        self.inner.mark_down(key)

    def mark_up(self, key: str) -> None:
        self.inner.mark_up(key)

    def is_up(self, key: str) -> bool:
        return self.inner.is_up(key)

    def open_connections(self, key: str) -> int:
        return self.inner.open_connections(key)

    def stats(self) -> dict[str, BackendStats]:
        return dict(self.inner.stats())

    def update(self, group: BackendGroup) -> None:
        self.inner.update(group)


A, B, C = (Backend(f"192.0.2.{i}", 80) for i in (1, 2, 3))
ABC = BackendGroup([A, B, C])


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(0.0)


@pytest.fixture(params=["base", "foreign"])
def sticky(request: pytest.FixtureRequest, clock: FakeClock) -> StickySessions:
    inner: Scheduler = Rotate(ABC, max_fails=1, fail_timeout=10, clock=clock)
    if request.param == "foreign":
        inner = Foreign(inner)
    return StickySessions(inner, ttl=60, max_sessions=1000, clock=clock)


def test_same_key_same_backend(sticky: StickySessions) -> None:
    first = sticky.pick("s1")
    assert first == A
    assert [sticky.pick("s1") for _ in range(5)] == [A] * 5
    assert sticky.pick("s2") == B  # a new session: the rotation decides
    assert sticky.pick("s3") == C
    assert sticky.pick("s1") == A
    assert sticky.open_connections(A.key) == 7  # sticky picks are counted by the scheduler
    assert sticky.stats()[A.key].picks == 7
    assert len(sticky) == 3


def test_no_session_key_means_no_binding(sticky: StickySessions) -> None:
    assert [sticky.pick() for _ in range(3)] == [A, B, C]
    assert len(sticky) == 0


def test_address_objects_are_canonical(sticky: StickySessions) -> None:
    assert sticky.pick(IPv4Address("10.0.0.1")) == A
    sticky.pick("other")
    assert sticky.pick("10.0.0.1") == A
    assert sticky.pick(IPv6Address("::ffff:10.0.0.1")) == A
    v6 = sticky.pick(IPv6Address("2001:db8::1"))
    assert sticky.pick("2001:db8::1") == v6
    assert len(sticky) == 3


def test_expiry_counts_from_last_use(sticky: StickySessions, clock: FakeClock) -> None:
    assert sticky.pick("s1") == A
    clock.now = 50.0
    assert sticky.pick("s1") == A  # refreshed: now good until 110
    clock.now = 109.0
    assert sticky.pick("s1") == A
    clock.now = 168.9
    assert sticky.pick("s1") == A
    clock.now = 228.9  # exactly ttl after the last use: expired
    assert sticky.pick("s1") == B  # asked the rotation again, which moved on
    assert sticky.pick("s1") == B  # and bound anew
    assert len(sticky) == 1
    clock.now = 300.0
    assert len(sticky) == 0


@pytest.mark.parametrize("cause", ["down", "weight-0", "removed", "suspended", "excluded"])
def test_rebinds_when_backend_cannot_serve(
    sticky: StickySessions, clock: FakeClock, cause: str
) -> None:
    assert sticky.pick("s1") == A
    exclude: tuple[str, ...] = ()
    if cause == "down":
        sticky.mark_down(A.key)
    elif cause == "weight-0":
        sticky.update(ABC.with_weight(A.key, 0))
    elif cause == "removed":
        sticky.update(ABC.without(A.key))
    elif cause == "suspended":
        sticky.connection("s1").fail()  # max_fails=1: A suspended for fail_timeout
    else:
        exclude = (A.key,)
    moved = sticky.pick("s1", exclude=exclude)
    assert moved != A
    # the session stays on its new backend, also once the old one could serve again
    if cause == "down":
        sticky.mark_up(A.key)
    elif cause in ("weight-0", "removed"):
        sticky.update(ABC)
    elif cause == "suspended":
        clock.now = 11.0
    assert [sticky.pick("s1") for _ in range(3)] == [moved] * 3


def test_nothing_available_keeps_the_binding(sticky: StickySessions) -> None:
    assert sticky.pick("s1") == A
    for backend in ABC:
        sticky.mark_down(backend.key)
    with pytest.raises(NoBackendAvailable):
        sticky.pick("s1")
    sticky.mark_up(A.key)
    sticky.mark_up(B.key)
    assert sticky.pick("s1") == A  # back within ttl: the session returns to it


def test_memory_bound_drops_least_recently_used(clock: FakeClock) -> None:
    sticky = StickySessions(Rotate(ABC), ttl=60, max_sessions=3, clock=clock)
    assert [sticky.pick(s) for s in ("s1", "s2", "s3")] == [A, B, C]
    sticky.pick("s1")  # s1 used again: s2 is now the least recently used
    assert sticky.pick("s4") == A
    assert len(sticky) == 3
    assert sticky.pick("s1") == A  # kept
    assert sticky.pick("s3") == C  # kept
    assert sticky.pick("s2") == B  # forgotten: the rotation chose again
    assert sticky.pick("s4") == C  # least recently used when s2 came back: forgotten too
    assert len(sticky) == 3


def test_memory_bound_under_many_sessions(clock: FakeClock) -> None:
    sticky = StickySessions(Rotate(ABC), ttl=60, max_sessions=100, clock=clock)
    for i in range(10_000):
        sticky.pick(f"s{i}")
        clock.now += 0.001
    assert len(sticky) == 100
    assert sticky.pick("s9999") == sticky.pick("s9999")


def test_expired_bindings_are_dropped_lazily(clock: FakeClock) -> None:
    sticky = StickySessions(Rotate(ABC), ttl=60, clock=clock)
    for i in range(1000):
        sticky.pick(f"s{i}")
    clock.now = 61.0
    sticky.pick("new")
    # a pick drops a bounded number of expired bindings (O(1)), never all of them at once
    assert 1000 - 2 + 1 <= len(sticky._bindings) <= 1000 + 1
    assert len(sticky) == 1  # len() drops the rest


def test_lease_on_the_bound_backend(sticky: StickySessions) -> None:
    assert sticky.pick("s1") == A
    sticky.release(A)
    with sticky.connection("s1") as lease:
        assert lease.backend == A
        assert sticky.open_connections(A.key) == 1
    assert sticky.open_connections(A.key) == 0
    lease = sticky.connection("s2")
    lease.release()
    assert all(s.open_connections == 0 for s in sticky.stats().values())


def test_members_are_the_wrapped_schedulers(sticky: StickySessions) -> None:
    assert isinstance(sticky, Scheduler)
    assert sticky.group == ABC
    assert sticky.ttl == 60.0
    assert sticky.max_sessions == 1000
    assert "StickySessions(" in repr(sticky)
    sticky.mark_down(B.key)
    assert not sticky.is_up(B.key)
    assert not sticky.scheduler.is_up(B.key)
    with pytest.raises(KeyError, match="nope"):
        sticky.is_up("nope")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("ttl", 0),
        ("ttl", -1.0),
        ("ttl", float("inf")),
        ("ttl", float("nan")),
        ("ttl", True),
        ("ttl", "60"),
        ("max_sessions", 0),
        ("max_sessions", True),
        ("max_sessions", 1.5),
        ("clock", 3),
    ],
)
def test_bad_options_name_the_option(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        StickySessions(Rotate(ABC), **{option: value})  # type: ignore[arg-type]


def test_bad_scheduler_and_bad_key(sticky: StickySessions) -> None:
    with pytest.raises(TypeError, match="Scheduler"):
        StickySessions(ABC)  # type: ignore[arg-type]
    sticky.pick("s1")
    before = (len(sticky), dict(sticky.stats()))
    with pytest.raises(TypeError, match="42"):
        sticky.pick(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="x"):
        sticky.pick("s1", exclude="x")
    assert (len(sticky), dict(sticky.stats())) == before


def test_threads_keep_sessions_and_counts(clock: FakeClock) -> None:
    sticky = StickySessions(Rotate(ABC), ttl=60, clock=clock)
    seen: dict[str, set[str]] = {}
    lock = threading.Lock()

    def work(worker: int) -> None:
        mine: dict[str, set[str]] = {}
        for i in range(2_000):
            session = f"s{(worker * 7 + i) % 40}"
            with sticky.connection(session) as lease:
                mine.setdefault(session, set()).add(lease.backend.key)
        with lock:
            for session, keys in mine.items():
                seen.setdefault(session, set()).update(keys)

    run_threads(work, [(w,) for w in range(4)], timeout=120)
    assert all(len(keys) == 1 for keys in seen.values())  # nothing moved a session
    assert len(seen) == 40
    assert len(sticky) == 40
    stats = sticky.stats()
    assert all(s.open_connections == 0 for s in stats.values())
    assert sum(s.picks for s in stats.values()) == 8_000
    # new sessions followed the rotation: 40 sessions over 3 backends
    assert sorted(Counter(next(iter(k)) for k in seen.values()).values()) == [13, 13, 14]


# -- a model of the rule, under random operations ----------------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("pick"), st.integers(0, 5), st.sets(st.sampled_from(ABC.keys()))),
        st.tuples(st.just("down"), st.sampled_from(ABC.keys())),
        st.tuples(st.just("up"), st.sampled_from(ABC.keys())),
        st.tuples(st.just("weight"), st.sampled_from(ABC.keys()), st.integers(0, 2)),
        st.tuples(st.just("wait"), st.sampled_from([1.0, 30.0, 59.0, 60.0, 100.0])),
    ),
    max_size=60,
)


@given(ops=_ops)
def test_follows_the_binding_rule(ops: list[tuple[object, ...]]) -> None:
    clock = FakeClock(0.0)
    sticky = StickySessions(Rotate(ABC), ttl=60, max_sessions=4, clock=clock)
    model: dict[str, tuple[str, float]] = {}  # session -> (backend key, last use)
    for op in ops:
        if op[0] == "pick":
            session, exclude = f"s{op[1]}", op[2]
            assert isinstance(exclude, set)
            group = sticky.group
            eligible = {
                b.key
                for b in group
                if b.weight > 0 and sticky.is_up(b.key) and b.key not in exclude
            }
            bound = model.get(session)
            try:
                got = sticky.pick(session, exclude=exclude)
            except NoBackendAvailable:
                assert not eligible
                continue
            assert got.key in eligible
            if bound is not None and clock.now - bound[1] < 60 and bound[0] in eligible:
                assert got.key == bound[0]
            model.pop(session, None)
            model[session] = (got.key, clock.now)
            while len(model) > 4:
                del model[next(iter(model))]
        elif op[0] == "down":
            sticky.mark_down(str(op[1]))
        elif op[0] == "up":
            sticky.mark_up(str(op[1]))
        elif op[0] == "weight":
            assert isinstance(op[2], int)
            sticky.update(sticky.group.with_weight(str(op[1]), op[2]))
        else:
            assert isinstance(op[1], float)
            clock.now += op[1]
    fresh = [s for s, (_, used) in model.items() if clock.now - used < 60]
    assert len(sticky) == len(fresh)
