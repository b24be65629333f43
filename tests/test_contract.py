"""The shared contract (API.md), run against every scheduler and every sticky wrapper of one.

Each scheduler's own module tests its algorithm; this module pins down what all of them
promise alike: the Scheduler interface, eligibility, counting, leases, health marks, updates by
key, errors that leave state exactly as it was, and thread safety. Every scheduler class is
imported by name, so one that fails to import fails here rather than going untested.
"""

from __future__ import annotations

import asyncio
import importlib
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import lbalgo
from lbalgo import (
    Backend,
    BackendGroup,
    BackendStats,
    InvalidGroupError,
    LbalgoError,
    Lease,
    NoBackendAvailable,
    Scheduler,
    StickySessions,
)
from lbalgo.testing import check_internals, check_never_picks_ineligible, groups
from support.threads import run_threads


def client(i: int) -> str:
    """A distinct client address (and session key) for every i: hashing needs one."""
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def _class(module: str, name: str) -> type[Any]:
    # every scheduler exists now: one that fails to import must fail its tests, not skip them
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Kind:
    """One way of building a scheduler under test."""

    name: str
    module: str
    cls: str
    sticky: bool
    # (option, bad value) pairs this kind must refuse with ValueError naming the option
    bad_options: tuple[tuple[str, object], ...]
    # options every scheduler of this kind is built with (timed features take other paths)
    options: tuple[tuple[str, object], ...] = ()

    def build(self, group: BackendGroup, **options: Any) -> Scheduler:
        cls = _class(self.module, self.cls)
        inner: Scheduler = cls(group, **{**dict(self.options), **options})
        return StickySessions(inner) if self.sticky else inner


_PASSIVE = (("max_fails", -1), ("max_fails", 1.5), ("fail_timeout", 0), ("clock", 3))
_RAMPED = (*_PASSIVE, ("slow_start", -1), ("slow_start", float("nan")), ("slow_start", True))
_BASE_KINDS = (
    Kind("swrr", "lbalgo.swrr", "SmoothWeightedRoundRobin", False, _RAMPED),
    Kind("wlc", "lbalgo.wlc", "WeightedLeastConnections", False, _RAMPED),
    Kind("source-ip-hash", "lbalgo.source_ip_hash", "SourceIPHash", False, _PASSIVE),
)
_TIMED = (("max_fails", 3), ("fail_timeout", 30.0))
_SWRR, _WLC, _HASH = _BASE_KINDS
KINDS = (
    *_BASE_KINDS,
    *(Kind(f"sticky-{k.name}", k.module, k.cls, True, k.bad_options) for k in _BASE_KINDS),
    # slow start and passive health configured, no ramp or suspension in progress: the
    # schedulers take other paths then
    *(
        Kind(f"{k.name}-timed", k.module, k.cls, False, _RAMPED, (*_TIMED, ("slow_start", 30)))
        for k in (_SWRR, _WLC)
    ),
    Kind("source-ip-hash-timed", _HASH.module, _HASH.cls, False, _PASSIVE, _TIMED),
    Kind(
        "source-ip-hash-bounded",
        _HASH.module,
        _HASH.cls,
        False,
        _PASSIVE,
        (("balance_factor", 1.25),),
    ),
)

A, B, C = (Backend(f"192.0.2.{i}", 80, w) for i, w in ((1, 1), (2, 2), (3, 3)))
ABC = BackendGroup([A, B, C])


@pytest.fixture(params=KINDS, ids=[k.name for k in KINDS])
def kind(request: pytest.FixtureRequest) -> Kind:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def sched(kind: Kind) -> Scheduler:
    return kind.build(ABC)


def snapshot(s: Scheduler) -> tuple[object, ...]:
    """Everything observable about a scheduler's state, to compare before and after."""
    sticky = len(s) if isinstance(s, StickySessions) else None
    return (s.group, dict(s.stats()), sticky)


def picks(s: Scheduler, n: int, start: int = 0) -> Iterator[Backend]:
    for i in range(start, start + n):
        yield s.pick(client(i))


# -- the interface -----------------------------------------------------------------------------


def test_is_a_scheduler(sched: Scheduler) -> None:
    assert isinstance(sched, lbalgo.Scheduler)
    assert sched.group == ABC


def test_all_backends_start_up(sched: Scheduler) -> None:
    stats = sched.stats()
    for backend in ABC:
        assert sched.is_up(backend.key)
        assert sched.open_connections(backend.key) == 0
        assert stats[backend.key] == BackendStats(
            backend=backend,
            picks=0,
            open_connections=0,
            failures=0,
            up=True,
            available=True,
            effective_weight=backend.weight,
        )


def test_stats_keys_and_fields(sched: Scheduler) -> None:
    held = [sched.connection(client(i)) for i in range(6)]
    held[0].fail()
    sched.mark_down(C.key)
    stats = sched.stats()
    assert list(stats) == list(ABC.keys())  # group order
    assert sum(s.picks for s in stats.values()) == 6
    assert sum(s.open_connections for s in stats.values()) == 5
    assert sum(s.failures for s in stats.values()) == 1
    assert stats[held[0].backend.key].failures == 1
    for key, entry in stats.items():
        assert isinstance(entry, BackendStats)
        assert entry.backend == ABC[key]
        assert entry.open_connections == sched.open_connections(key)
        assert entry.up == sched.is_up(key)
    assert stats[C.key].up is False
    assert stats[C.key].available is False
    assert stats[C.key].effective_weight == 0
    assert stats[A.key].available is True
    assert stats[A.key].effective_weight == A.weight


# -- eligibility -------------------------------------------------------------------------------


# the kinds of one scheduler class, checked together on each example: the hashing kinds then
# share one table per example (build_cells caches it) instead of building it four times
FAMILIES = {c: tuple(k for k in KINDS if k.cls == c) for c in dict.fromkeys(k.cls for k in KINDS)}


@pytest.mark.parametrize("family", FAMILIES.values(), ids=list(FAMILIES))
# fewer examples than the profile's: building a hashing table per example costs ~0.2 s
@settings(max_examples=25)
@given(
    group=groups(min_size=1, max_size=8),
    data=st.data(),
)
def test_never_picks_ineligible(
    family: tuple[Kind, ...], group: BackendGroup, data: st.DataObject
) -> None:
    keys = list(group.keys())
    down = data.draw(st.sets(st.sampled_from(keys)), label="down")
    exclude = data.draw(st.sets(st.sampled_from(keys)), label="exclude")
    for kind in family:
        sched = kind.build(group)
        for key in down:
            sched.mark_down(key)
        try:
            check_never_picks_ineligible(sched, 30, client=client, exclude=exclude)
        except AssertionError as error:
            raise AssertionError(f"{kind.name}: {error}") from error


@pytest.mark.parametrize(
    ("group", "prepare", "exclude", "reason"),
    [
        (BackendGroup(), None, (), "empty"),
        (BackendGroup([A.with_weight(0), B.with_weight(0)]), None, (), "weight 0"),
        (ABC, "down", (), "down"),
        (ABC, None, (A.key, B, C.key), "excluded"),
    ],
    ids=["empty", "all-weight-0", "all-down", "all-excluded"],
)
def test_no_backend_available(
    kind: Kind,
    group: BackendGroup,
    prepare: str | None,
    exclude: tuple[str | Backend, ...],
    reason: str,
) -> None:
    sched = kind.build(group)
    if prepare == "down":
        for backend in group:
            sched.mark_down(backend.key)
    before = snapshot(sched)
    with pytest.raises(NoBackendAvailable, match=reason) as caught:
        sched.pick(client(1), exclude=exclude)
    assert isinstance(caught.value, LookupError)
    assert isinstance(caught.value, LbalgoError)
    with pytest.raises(NoBackendAvailable):
        sched.connection(client(2), exclude=exclude)
    assert snapshot(sched) == before


def test_weight_zero_drains(sched: Scheduler) -> None:
    held = [sched.connection(client(i)) for i in range(30)]
    on_b = [lease for lease in held if lease.backend.key == B.key]
    assert on_b
    sched.update(ABC.with_weight(B.key, 0))
    assert all(b.key != B.key for b in picks(sched, 30, start=100))
    assert sched.open_connections(B.key) == len(on_b)
    for lease in on_b:
        lease.release()
    assert sched.open_connections(B.key) == 0


# -- counting and leases -----------------------------------------------------------------------


def test_release_never_negative(sched: Scheduler) -> None:
    backend = sched.pick(client(1))
    assert sched.open_connections(backend.key) == 1
    sched.release(backend)
    sched.release(backend)  # one too many
    sched.release(backend, failed=True)  # one too many, and reports nothing
    assert sched.open_connections(backend.key) == 0
    assert sched.stats()[backend.key].failures == 0
    sched.release(Backend("198.51.100.9", 80))  # never in the group: ignored
    assert all(s.open_connections == 0 for s in sched.stats().values())


def test_late_release_after_removal_is_ignored(sched: Scheduler) -> None:
    leases = [sched.connection(client(i)) for i in range(12)]
    victim = leases[0].backend
    sched.update(ABC.without(victim.key))
    with pytest.raises(KeyError):
        sched.open_connections(victim.key)
    for lease in leases:
        if lease.backend.key == victim.key:
            lease.release()
    sched.release(victim)
    sched.update(ABC)  # the key comes back fresh
    assert sched.open_connections(victim.key) == 0
    for lease in leases:
        lease.release()
    assert all(s.open_connections == 0 for s in sched.stats().values())


def test_lease_release_is_idempotent(sched: Scheduler) -> None:
    lease = sched.connection(client(1))
    assert isinstance(lease, Lease)
    key = lease.backend.key
    assert not lease.released
    assert sched.open_connections(key) == 1
    lease.release()
    lease.release()
    lease.fail()  # already released: no failure is reported
    assert lease.released
    assert sched.open_connections(key) == 0
    assert sched.stats()[key].failures == 0


def test_lease_fail_reports_then_releases(sched: Scheduler) -> None:
    lease = sched.connection(client(1))
    key = lease.backend.key
    lease.fail()
    lease.fail()
    lease.release()
    assert sched.open_connections(key) == 0
    assert sched.stats()[key].failures == 1


def test_lease_with_block(sched: Scheduler) -> None:
    with sched.connection(client(1)) as lease:
        key = lease.backend.key
        assert sched.open_connections(key) == 1
    assert lease.released
    assert sched.open_connections(key) == 0

    def failing_request() -> str:
        with sched.connection(client(2)) as held:
            raise RuntimeError(held.backend.key)

    with pytest.raises(RuntimeError) as caught:
        failing_request()
    assert sched.open_connections(str(caught.value)) == 0


def test_lease_outlives_its_block_when_kept(sched: Scheduler) -> None:
    lease = sched.connection(client(1))  # a streamed response: released by hand later
    key = lease.backend.key
    sched.pick(client(2))
    assert sched.open_connections(key) >= 1
    lease.release()
    assert sum(s.open_connections for s in sched.stats().values()) == 1


def test_lease_async_with(sched: Scheduler) -> None:
    async def main() -> None:
        async with sched.connection(client(1)) as lease:
            assert sched.open_connections(lease.backend.key) == 1
        assert sched.open_connections(lease.backend.key) == 0

        started = asyncio.Event()

        async def held() -> None:
            async with sched.connection(client(2)):
                started.set()
                await asyncio.sleep(3600)

        task = asyncio.ensure_future(held())
        await started.wait()
        assert sum(s.open_connections for s in sched.stats().values()) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sum(s.open_connections for s in sched.stats().values()) == 0

    asyncio.run(main())


# -- health marks ------------------------------------------------------------------------------


def test_mark_down_and_up(sched: Scheduler) -> None:
    sched.mark_down(B.key)
    sched.mark_down(B.key)  # idempotent
    assert not sched.is_up(B.key)
    assert all(b.key != B.key for b in picks(sched, 30))
    sched.mark_up(B.key)
    sched.mark_up(B.key)
    assert sched.is_up(B.key)
    assert any(b.key == B.key for b in picks(sched, 200, start=1000))


@pytest.mark.parametrize("method", ["mark_down", "mark_up", "is_up", "open_connections"])
def test_unknown_key_is_a_key_error_naming_it(sched: Scheduler, method: str) -> None:
    before = snapshot(sched)
    with pytest.raises(KeyError, match="no-such-backend"):
        getattr(sched, method)("no-such-backend")
    assert snapshot(sched) == before


# -- updates -----------------------------------------------------------------------------------


def test_update_carries_state_by_key(sched: Scheduler) -> None:
    leases = [sched.connection(client(i)) for i in range(12)]
    sched.mark_down(C.key)
    open_before = {b.key: sched.open_connections(b.key) for b in ABC}
    D = Backend("192.0.2.4", 80, 2)
    sched.update(BackendGroup([B.with_weight(5), C, D]))  # A removed, B re-weighted, D new
    assert sched.group.keys() == (B.key, C.key, D.key)
    assert sched.open_connections(B.key) == open_before[B.key]
    assert sched.open_connections(C.key) == open_before[C.key]
    assert not sched.is_up(C.key)
    assert sched.is_up(D.key)
    assert sched.open_connections(D.key) == 0
    for method in ("is_up", "open_connections", "mark_down"):
        with pytest.raises(KeyError, match=r"192\.0\.2\.1:80"):
            getattr(sched, method)(A.key)
    assert list(sched.stats()) == [B.key, C.key, D.key]
    assert sched.stats()[B.key].backend.weight == 5
    for lease in leases:
        lease.release()
    assert all(s.open_connections == 0 for s in sched.stats().values())
    got = {b.key for b in picks(sched, 40, start=500)}
    assert got <= {B.key, D.key}


# -- bad input leaves state exactly as before --------------------------------------------------


class _Lookalike:
    """Not a Backend, but carrying a backend's ``key``: release finds its slot by key on the
    fast path, and must still refuse this (the slow path's check) and count nothing."""

    def __init__(self, key: object) -> None:
        self.key = key

    def __repr__(self) -> str:
        return f"Lookalike({self.key!r})"


class _RaisingKey:
    """Not a Backend, and reading its ``key`` raises something else than a TypeError."""

    @property
    def key(self) -> str:
        raise RuntimeError("no key here")

    def __repr__(self) -> str:
        return "RaisingKey()"


def _busy(kind: Kind) -> Scheduler:
    sched = kind.build(ABC)
    for i in range(5):
        sched.connection(client(i))
    sched.mark_down(C.key)
    return sched


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda s: s.pick(client(1), exclude="192.0.2.1:80"), TypeError, r"192\.0\.2\.1:80"),
        (lambda s: s.pick(client(1), exclude=[42]), TypeError, "42"),
        (lambda s: s.connection(client(1), exclude=[None]), TypeError, "None"),
        (lambda s: s.update([A, B]), InvalidGroupError, "BackendGroup"),
        (lambda s: s.update(None), InvalidGroupError, "None"),
        (lambda s: s.mark_down("192.0.2.9:80"), KeyError, r"192\.0\.2\.9:80"),
        (lambda s: s.mark_up("192.0.2.9:80"), KeyError, r"192\.0\.2\.9:80"),
        (lambda s: s.release("192.0.2.1:80"), TypeError, r"192\.0\.2\.1:80"),
        (lambda s: s.release(_Lookalike(A.key)), TypeError, r"Lookalike\('192\.0\.2\.1:80'\)"),
        (lambda s: s.release(_Lookalike([A.key])), TypeError, r"Lookalike\(\['192"),
        (lambda s: s.release(_RaisingKey()), TypeError, r"RaisingKey\(\)"),
        (lambda s: s.release(A, failed=1), TypeError, "failed must be a bool, got 1"),
    ],
    ids=[
        "exclude-str",
        "exclude-int",
        "connection-exclude-none",
        "update-list",
        "update-none",
        "mark_down-unknown",
        "mark_up-unknown",
        "release-str",
        "release-lookalike-with-a-key",
        "release-lookalike-unhashable-key",
        "release-key-raises",
        "release-failed-int",
    ],
)
def test_bad_input_leaves_state_alone(
    kind: Kind, call: Callable[[Any], object], error: type[Exception], match: str
) -> None:
    sched = _busy(kind)
    before = snapshot(sched)
    with pytest.raises(error, match=match):
        call(sched)
    assert snapshot(sched) == before


@pytest.mark.parametrize(
    "kind", FAMILIES["SourceIPHash"], ids=[k.name for k in FAMILIES["SourceIPHash"]]
)
def test_bad_client_address_for_hashing(kind: Kind) -> None:
    """Only SourceIPHash requires a client address."""
    sched = _busy(kind)
    before = snapshot(sched)
    for bad in ("not-an-address", "10.0.0.256", "", None):
        if bad == "" and kind.sticky:
            continue  # for sticky sessions "" is a session key, handed to the hash as is
        with pytest.raises(ValueError, match=re.escape(str(bad)) if bad else None):
            sched.pick(bad)
        assert snapshot(sched) == before


def test_bad_options_name_the_option(kind: Kind) -> None:
    for option, value in kind.bad_options:
        with pytest.raises(ValueError, match=option):
            kind.build(ABC, **{option: value})
    with pytest.raises(TypeError):
        kind.build(ABC, no_such_option=1)
    with pytest.raises((InvalidGroupError, TypeError)):
        kind.build([A, B])  # type: ignore[arg-type]


# -- concurrency -------------------------------------------------------------------------------


def test_threads_lose_no_counts(kind: Kind) -> None:
    sched = kind.build(ABC)
    rounds, workers = 1_500, 4

    def work(worker: int) -> None:
        for i in range(rounds):
            who = client(worker * rounds + i % 50)
            lease = sched.connection(who, exclude=[A.key] if i % 3 == 0 else ())
            if i % 7 == 0:
                sched.mark_down(C.key)
                sched.mark_up(C.key)
            if i % 11 == 0:
                sched.stats()
            lease.release()

    run_threads(work, [(w,) for w in range(workers)], timeout=120)
    stats = sched.stats()
    assert all(s.open_connections == 0 for s in stats.values())
    assert sum(s.picks for s in stats.values()) == rounds * workers


# -- every kind, any sequence of operations: counts and internal invariants --------------------


class ContractMachine(RuleBasedStateMachine):
    """Random picks, leases, releases, failures, health marks and weight updates on one
    scheduler of any kind: open counts are those of a plain model, nothing ineligible is
    picked, and every internal structure's ``_check()`` holds after each step."""

    def __init__(self) -> None:
        super().__init__()
        self.sched: Scheduler = _SWRR.build(ABC)
        self.held: list[Backend] = []
        self.leases: list[Lease] = []
        self.opened: Counter[str] = Counter()
        self.clients = 0

    @initialize(which=st.sampled_from(KINDS))
    def build(self, which: Kind) -> None:
        self.sched = which.build(ABC)

    def _picked(self, backend: Backend) -> None:
        group = self.sched.group
        assert backend.key in group
        assert group[backend.key].weight > 0
        assert self.sched.is_up(backend.key)
        self.opened[backend.key] += 1

    @rule(lease=st.booleans())
    def pick(self, lease: bool) -> None:
        self.clients += 1
        try:
            if lease:
                self.leases.append(self.sched.connection(client(self.clients)))
                self._picked(self.leases[-1].backend)
            else:
                self.held.append(self.sched.pick(client(self.clients)))
                self._picked(self.held[-1])
        except NoBackendAvailable:
            assert not any(s.available for s in self.sched.stats().values())

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        backend = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        self.sched.release(backend)
        self.opened[backend.key] -= 1

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), fail=st.booleans())
    def end_lease(self, data: st.DataObject, fail: bool) -> None:
        lease = self.leases.pop(data.draw(st.integers(0, len(self.leases) - 1)))
        (lease.fail if fail else lease.release)()
        lease.release()  # idempotent
        self.opened[lease.backend.key] -= 1

    @rule(key=st.sampled_from(ABC.keys()), up=st.booleans())
    def mark(self, key: str, up: bool) -> None:
        (self.sched.mark_up if up else self.sched.mark_down)(key)

    @rule(key=st.sampled_from(ABC.keys()), weight=st.integers(0, 5))
    def reweight(self, key: str, weight: int) -> None:
        self.sched.update(self.sched.group.with_weight(key, weight))

    @invariant()
    def consistent(self) -> None:
        inner = self.sched.scheduler if isinstance(self.sched, StickySessions) else self.sched
        check_internals(inner)
        for backend in self.sched.group:
            assert self.sched.open_connections(backend.key) == self.opened[backend.key]


TestContractMachine = ContractMachine.TestCase
TestContractMachine.settings = settings(max_examples=40, stateful_step_count=30)
