"""The C accelerator of the in-process ledger (lbalgo._wf2q_c) against the pure-Python code.

Covers: a stateful differential run of a LocalLedger (acquire and release in C) and a
PurePythonLedger side by side through every operation, comparing every answer, every count
and the whole schedule state after each step, with ``_check()`` on both; weights whose lcm
scale is far beyond 64 bits; WeightedLeastConnections's C request path against the same
scheduler on the pure-Python ledger; its argument handling and bad input; a broken private
state raising instead of crashing; and the scheduler with its C path being collected.
"""

from __future__ import annotations

import gc
import math
import weakref
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from lbalgo import Backend, BackendGroup, InvalidTypeError, NoBackendAvailable
from lbalgo import WeightedLeastConnections as WLC
from lbalgo.local_ledger import ACCELERATED, LocalLedger, PurePythonLedger

KEYS = ("a", "b", "c", "d", "e", "f")
# primes near the top of the fine-weight range: a few of them make an lcm beyond 64 bits
PRIMES = (3191, 3187, 3181, 3169, 3167, 3163, 3137, 3121, 3119, 3109, 3089, 3083)
MAX = 3200

fine_weights = st.one_of(st.integers(1, MAX), st.sampled_from(PRIMES), st.sampled_from((1, 32)))
eligible_sets = st.lists(st.tuples(st.sampled_from(KEYS), fine_weights), max_size=6).map(
    lambda pairs: list(dict(pairs).items())
)


def state(ledger: LocalLedger) -> tuple[object, ...]:
    """Everything the schedule decides by: heaps as sorted contents (their layout may differ
    where entries compare equal, never their order)."""
    return (
        ledger._vt,
        ledger._rem,
        ledger._scale,
        ledger._start,
        ledger._load,
        ledger._unit,
        ledger._state,
        ledger._stamp,
        ledger._pending,
        ledger._pushes,
        ledger._limit,
        ledger._draining,
        sorted(ledger._ready_heap),
        sorted(ledger._idle_heap),
        sorted(ledger._busy_heap),
        sorted(ledger._busy_wakeups),
    )


@pytest.mark.skipif(not ACCELERATED, reason="lbalgo._wf2q_c is not built or is turned off")
def test_the_accelerated_ledger_runs_c_and_the_pure_one_python() -> None:
    assert type(LocalLedger.__dict__["acquire"]).__name__ == "method_descriptor"
    assert PurePythonLedger.acquire.__module__ == "lbalgo.local_ledger"
    sched = WLC(BackendGroup([Backend("10.0.0.1", 80)]))
    assert type(sched.pick).__name__ == "builtin_function_or_method"
    pure = WLC(BackendGroup([Backend("10.0.0.1", 80)]), ledger=PurePythonLedger())
    assert type(pure.pick).__name__ == "method"


class LedgerDifferential(RuleBasedStateMachine):
    """A LocalLedger and a PurePythonLedger driven alike; every answer and all state equal."""

    def __init__(self) -> None:
        super().__init__()
        self.fast = LocalLedger()
        self.pure = PurePythonLedger()

    def both(self, name: str, *args: Any) -> Any:
        answers = []
        for ledger in (self.fast, self.pure):
            try:
                answers.append(("ok", getattr(ledger, name)(*args)))
            except Exception as error:  # the same error both ways is the test
                answers.append(("error", f"{type(error).__name__}: {error}"))
        assert answers[0] == answers[1], (name, args)
        return answers[0][1]

    @initialize(weights=eligible_sets)
    def start(self, weights: list[tuple[str, int]]) -> None:
        self.both("set_eligible", weights)

    @rule(weights=eligible_sets)
    def set_eligible(self, weights: list[tuple[str, int]]) -> None:
        self.both("set_eligible", weights)

    @rule(times=st.integers(1, 4))
    def acquire(self, times: int) -> None:
        for _ in range(times):
            self.both("acquire")

    @rule(exclude=st.frozensets(st.sampled_from(KEYS), max_size=3))
    def acquire_excluding(self, exclude: frozenset[str]) -> None:
        self.both("acquire", exclude)

    @rule(key=st.sampled_from((*KEYS, "unknown")))
    def release_open(self, key: str) -> None:
        self.both("release_open", key)

    @rule(key=st.sampled_from(KEYS))
    def release(self, key: str) -> None:
        self.both("release", key)

    @rule(key=st.sampled_from((*KEYS, "unknown")))
    def take(self, key: str) -> None:
        self.both("take", key)

    @rule(key=st.sampled_from(KEYS), weight=st.one_of(st.just(0), fine_weights))
    def set_weight(self, key: str, weight: int) -> None:
        self.both("set_weight", key, weight)

    @rule(key=st.sampled_from(KEYS), weight=st.sampled_from((-1, MAX + 1, 2.5, True, "3")))
    def set_weight_badly(self, key: str, weight: object) -> None:
        before = state(self.fast)
        self.both("set_weight", key, weight)
        assert state(self.fast) == before

    @rule(keys=st.lists(st.sampled_from(KEYS), max_size=2))
    def forget(self, keys: list[str]) -> None:
        self.both("forget", keys)

    @invariant()
    def same_state(self) -> None:
        self.fast._check()
        self.pure._check()
        for key in KEYS:
            assert self.fast.count(key) == self.pure.count(key)
        assert state(self.fast) == state(self.pure)
        assert repr(self.fast) == repr(self.pure)


LedgerDifferential.TestCase.settings = settings(max_examples=150, stateful_step_count=60)
test_ledger_differential = LedgerDifferential.TestCase


@given(
    primes=st.lists(st.sampled_from(PRIMES), min_size=6, max_size=6, unique=True),
    ops=st.lists(st.integers(0, 9), min_size=20, max_size=200),
)
@settings(max_examples=40)
def test_scales_far_beyond_64_bits_give_the_same_picks(primes: list[int], ops: list[int]) -> None:
    keys = [f"k{i}" for i in range(len(primes))]
    fast, pure = LocalLedger(), PurePythonLedger()
    for ledger in (fast, pure):
        ledger.set_eligible(list(zip(keys, primes, strict=True)))
        # a weight that divides nothing yet: the scale grows by rescaling, past 2**64 too
        ledger.set_weight(keys[0], 3079)
    assert fast._scale.bit_length() > 64  # about 80 bits here, times the total
    assert fast._scale == math.lcm(*primes[1:], 3079, sum(primes[1:]) + 3079) or fast._cap
    held: list[str] = []
    for op in ops:
        if op < 5 or not held:
            key = fast.acquire()
            assert key == pure.acquire()
            assert key is not None
            held.append(key)
        else:
            key = held.pop(op % len(held))
            assert fast.release_open(key) is pure.release_open(key) is True
        assert state(fast) == state(pure)
    fast._check()
    assert fast._vt.bit_length() > 64


@given(weights=st.lists(st.integers(0, 100), min_size=1, max_size=8), data=st.data())
@settings(max_examples=60)
def test_the_c_request_path_picks_as_the_python_one(
    weights: list[int], data: st.DataObject
) -> None:
    """Picks, leases, releases, lease ends and failures, health marks: the scheduler on the C
    path and on the pure-Python ledger give the same backends and the same counts."""
    group = BackendGroup(Backend(f"10.0.0.{i + 1}", 80, w) for i, w in enumerate(weights))
    both = (WLC(group), WLC(group, ledger=PurePythonLedger()))
    held: list[tuple[Any, ...]] = []  # what each of the two holds, alike
    keys = group.keys()
    ops = ["pick", "lease", "release", "end", "fail", "down", "up"]
    for _ in range(data.draw(st.integers(1, 40))):
        op = data.draw(st.sampled_from(ops))
        key = keys[data.draw(st.integers(0, len(weights) - 1))]
        outcome = []
        if op in ("pick", "lease"):
            got: list[Any] = []
            for sched in both:
                try:
                    got.append(sched.pick() if op == "pick" else sched.connection())
                except NoBackendAvailable as error:
                    got.append(str(error))
            outcome = [g if isinstance(g, str) else getattr(g, "backend", g).key for g in got]
            if not isinstance(got[0], str):
                held.append(tuple(got))
        elif op in ("down", "up"):
            for sched in both:
                getattr(sched, f"mark_{op}")(key)
        elif held:
            for sched, item in zip(both, held.pop(0), strict=True):
                if isinstance(item, Backend):
                    sched.release(item, failed=op == "fail")
                elif op == "fail":
                    item.fail()
                else:
                    with item:
                        pass
        assert outcome[:1] == outcome[1:]
        for k in keys:
            assert both[0].open_connections(k) == both[1].open_connections(k)
            assert both[0].ledger.count(k) == both[1].ledger.count(k)
        both[0].ledger._check()  # type: ignore[attr-defined]


@pytest.mark.skipif(not ACCELERATED, reason="lbalgo._wf2q_c is not built or is turned off")
def test_the_c_request_path_takes_arguments_as_the_methods_do() -> None:
    group = BackendGroup([Backend("10.0.0.1", 80, 2), Backend("10.0.0.2", 80, 1)])
    sched = WLC(group)
    backend = sched.pick("198.51.100.7")
    sched.release(backend=backend)
    assert sched.pick(client=None, exclude=["10.0.0.1:80"]).key == "10.0.0.2:80"
    sched.release(sched.group["10.0.0.2:80"], failed=False)
    with sched.connection(exclude=frozenset({"10.0.0.2:80"})) as lease:
        assert lease.backend.key == "10.0.0.1:80"
    lease = sched.connection("198.51.100.7")
    lease.fail()
    keys = group.keys()
    assert [sched.open_connections(k) for k in keys] == [0, 0]
    calls: list[tuple[Any, tuple[object, ...], dict[str, object]]] = [
        (sched.pick, (None, None), {}),
        (sched.pick, (), {"other": 1}),
        (sched.connection, (), {"nope": 1}),
        (sched.release, (), {}),
        (sched.release, (backend, False), {}),
        (sched.release, (backend,), {"other": True}),
    ]
    for call, args, kwargs in calls:
        with pytest.raises(TypeError):
            call(*args, **kwargs)
    pure = WLC(group, ledger=PurePythonLedger())
    before = sched.stats()
    for bad, failed in [("10.0.0.1:80", False), (None, False), (backend, "yes"), (backend, 1)]:
        errors = []
        for one in (sched, pure):
            with pytest.raises(InvalidTypeError) as error:
                one.release(bad, failed=failed)  # type: ignore[arg-type]
            errors.append(str(error.value))
        assert errors[0] == errors[1]
    for bad_exclude in (5, [1], "10.0.0.1:80", object()):
        for method in ("pick", "connection"):
            errors = []
            for one in (sched, pure):
                with pytest.raises(InvalidTypeError) as error:
                    getattr(one, method)(exclude=bad_exclude)
                errors.append(str(error.value))
            assert errors[0] == errors[1], (method, bad_exclude)
    sched.release(Backend("10.0.0.9", 80))  # not in the group: ignored, as documented
    assert sched.stats() == before
    sched._check()


def test_no_backend_through_the_c_path_says_why() -> None:
    sched = WLC(BackendGroup([Backend("10.0.0.1", 80)]))
    sched.mark_down("10.0.0.1:80")
    with pytest.raises(NoBackendAvailable, match=r"10\.0\.0\.1:80 down"):
        sched.pick()
    with pytest.raises(NoBackendAvailable, match=r"10\.0\.0\.1:80 down"):
        sched.connection()
    sched.mark_up("10.0.0.1:80")
    sched.update(BackendGroup([Backend("10.0.0.2", 80)]))  # the C path follows the new slots
    assert sched.pick().key == "10.0.0.2:80"


@pytest.mark.skipif(not ACCELERATED, reason="lbalgo._wf2q_c is not built or is turned off")
def test_a_broken_private_state_raises_instead_of_crashing() -> None:
    ledger = LocalLedger()
    ledger.set_eligible([("a", 1)])
    ledger._ready_heap = None  # type: ignore[assignment]
    with pytest.raises(TypeError, match="_ready_heap must be a list"):
        ledger.acquire()
    ledger = LocalLedger()
    ledger.set_eligible([("a", 1)])
    del ledger._vt
    with pytest.raises(TypeError, match="_vt must be an int"):
        ledger.acquire()
    ledger = LocalLedger()
    ledger.set_eligible([("a", 1)])
    ledger._index = {"a": 7}
    with pytest.raises(IndexError):
        ledger.release_open("a")
    from lbalgo._wf2q_c import RequestPath

    with pytest.raises(TypeError, match="__init__ was not called"):
        RequestPath.__new__(RequestPath).pick()


def test_a_scheduler_with_its_c_path_is_collected() -> None:
    sched = WLC(BackendGroup([Backend("10.0.0.1", 80)]))
    with sched.connection():
        pass
    # the instance holds the C path's methods, which hold the scheduler's checked paths: a
    # cycle only the collector (RequestPath's traverse) can break
    gone = weakref.ref(sched)
    del sched
    gc.collect()
    assert gone() is None
