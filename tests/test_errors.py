"""One error family: bad input at every public entry point raises an ``LbalgoError`` that is
also the natural built-in (``ValueError``, ``TypeError`` or ``KeyError``), whose message names
the field and shows the value (safely, whatever its size), and leaves all state as it was.

hypothesis throws values of every kind (None, bools, integers of any size, NaN and
infinities, strings long and short, bytes, lists, plain objects) at every argument of every
public constructor and method; a value the entry point accepts is fine, anything else must
get the typed error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbalgo import (
    Backend,
    BackendGroup,
    InvalidOptionError,
    InvalidTypeError,
    LbalgoError,
    LocalLedger,
    RedisLedger,
    Scheduler,
    SmoothWeightedRoundRobin,
    SourceIPHash,
    StickySessions,
    UnknownBackendError,
    WeightedLeastConnections,
    attempts,
)
from lbalgo._validate import shown

GROUP = BackendGroup([Backend("10.0.0.1", 80, 3), Backend("10.0.0.2", 80, 1)])
KEY = "10.0.0.1:80"

anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    # huge integers built from small draws: hypothesis itself cannot print a drawn integer
    # of more than 4,300 digits
    st.builds(lambda sign, digits: sign * 10**digits, st.sampled_from([1, -1]),
              st.sampled_from([20, 400, 4301, 5000])),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["x" * 100_000, "", " ", "10.0.0.1:80", "nginx"]),
    st.binary(max_size=5),
    st.lists(st.integers(), max_size=3),
    st.builds(object),
)


@dataclass(frozen=True)
class Entry:
    """One public entry point, called with one bad argument."""

    name: str
    field: str  # what the message must name
    call: Callable[[Any], object]


def schedulers() -> list[tuple[str, Callable[[], Scheduler]]]:
    return [
        ("swrr", lambda: SmoothWeightedRoundRobin(GROUP, max_fails=1)),
        ("wlc", lambda: WeightedLeastConnections(GROUP, max_fails=1)),
        ("hash", lambda: SourceIPHash(GROUP, balance_factor=1.25)),
        ("sticky", lambda: StickySessions(WeightedLeastConnections(GROUP))),
    ]


def constructor_entries() -> list[Entry]:
    entries = [
        Entry("Backend host", "host", lambda v: Backend(v, 80)),
        Entry("Backend port", "port", lambda v: Backend("10.0.0.1", v)),
        Entry("Backend weight", "weight", lambda v: Backend("10.0.0.1", 80, v)),
        Entry("Backend name", "name", lambda v: Backend("10.0.0.1", 80, name=v)),
        Entry("with_weight", "weight", lambda v: Backend("10.0.0.1", 80).with_weight(v)),
        Entry("BackendGroup", "", lambda v: BackendGroup(v)),
        Entry("BackendGroup entry", "entry 0", lambda v: BackendGroup([v])),
        Entry("from_config", "", lambda v: BackendGroup.from_config(v)),
        Entry("from_config entry", "entry 0", lambda v: BackendGroup.from_config([v])),
        Entry("from_config host", "host", lambda v: BackendGroup.from_config(
            [{"host": v, "port": 80}])),
        Entry("StickySessions scheduler", "scheduler", lambda v: StickySessions(v)),
        Entry("StickySessions ttl", "ttl", lambda v: StickySessions(
            SmoothWeightedRoundRobin(GROUP), ttl=v)),
        Entry("StickySessions max_sessions", "max_sessions", lambda v: StickySessions(
            SmoothWeightedRoundRobin(GROUP), max_sessions=v)),
        Entry("StickySessions clock", "clock", lambda v: StickySessions(
            SmoothWeightedRoundRobin(GROUP), clock=v)),
        Entry("WLC ledger", "ledger", lambda v: WeightedLeastConnections(GROUP, ledger=v)),
        Entry("SourceIPHash balance_factor", "balance_factor", lambda v: SourceIPHash(
            GROUP, balance_factor=v)),
        Entry("SourceIPHash compat", "compat", lambda v: SourceIPHash(GROUP, compat=v)),
        Entry("attempts scheduler", "scheduler", lambda v: attempts(v)),
        Entry("attempts tries", "tries", lambda v: attempts(
            SmoothWeightedRoundRobin(GROUP), tries=v)),
        Entry("attempts exclude", "exclude", lambda v: attempts(
            SmoothWeightedRoundRobin(GROUP), exclude=v)),
        Entry("RedisLedger url", "url", lambda v: RedisLedger(v, namespace="web")),
        Entry("RedisLedger namespace", "namespace", lambda v: RedisLedger(
            "redis://127.0.0.1:1/0", namespace=v)),
        Entry("RedisLedger lease_timeout", "lease_timeout", lambda v: RedisLedger(
            "redis://127.0.0.1:1/0", namespace="web", lease_timeout=v)),
        Entry("RedisLedger cluster", "cluster", lambda v: RedisLedger(
            "redis://127.0.0.1:1/0", namespace="web", cluster=v)),
        Entry("LocalLedger set_eligible", "", lambda v: LocalLedger().set_eligible(v)),
        Entry("LocalLedger set_eligible weight", "weight", lambda v: LocalLedger().set_eligible(
            [("a", v)])),
    ]  # fmt: skip
    classes: list[Callable[..., Scheduler]] = [
        SmoothWeightedRoundRobin,
        WeightedLeastConnections,
        SourceIPHash,
    ]
    for cls in classes:
        for option in ("slow_start", "max_fails", "fail_timeout", "clock"):
            entries.append(Entry(f"{cls} {option}", option, _option_call(cls, option)))
        entries.append(Entry(f"{cls} group", "group", _option_call(cls, "")))
    return entries


def _option_call(cls: Callable[..., Scheduler], option: str) -> Callable[[Any], object]:
    if not option:
        return lambda value: cls(value)
    return lambda value: cls(GROUP, **{option: value})


def method_entries(name: str) -> list[Entry]:
    """Calls on an existing scheduler (bound at call time to the one under test)."""
    client = "192.0.2.1"
    return [
        Entry("pick exclude", "exclude", lambda s: s.pick(client, exclude=VALUE[0])),
        Entry("pick exclude item", "exclude", lambda s: s.pick(client, exclude=[VALUE[0]])),
        Entry("connection exclude", "exclude", lambda s: s.connection(
            client, exclude=VALUE[0])),
        Entry("release", "release", lambda s: s.release(VALUE[0])),
        Entry("release failed", "failed", lambda s: s.release(GROUP[KEY], failed=VALUE[0])),
        Entry("mark_down", "", lambda s: s.mark_down(VALUE[0])),
        Entry("mark_up", "", lambda s: s.mark_up(VALUE[0])),
        Entry("is_up", "", lambda s: s.is_up(VALUE[0])),
        Entry("open_connections", "", lambda s: s.open_connections(VALUE[0])),
        Entry("update", "group", lambda s: s.update(VALUE[0])),
        *(
            [Entry("client", "client", lambda s: s.pick(VALUE[0]))]
            if name == "hash"
            else [Entry("session key", "session key", lambda s: s.pick(VALUE[0]))]
            if name == "sticky"
            else []
        ),
    ]  # fmt: skip


VALUE: list[Any] = [None]
BAD_EXCLUDE: Any = 5
BAD_BACKEND: Any = "10.0.0.1:80"  # the bad value of the current method call


def assert_typed(error: BaseException, field: str, value: Any) -> None:
    assert isinstance(error, LbalgoError), f"{type(error).__name__}: {error}"
    assert isinstance(error, (ValueError, TypeError, KeyError, LookupError)), type(error)
    message = str(error)
    assert len(message) < 1000, "the message must stay short whatever the value"
    assert field in message, message
    if isinstance(error, KeyError):
        return  # a KeyError's message is the key itself
    candidates = [value] + (list(value) if isinstance(value, list) else [])
    if not any(shown(v) in message for v in candidates):
        # a config entry or a ledger pair is shown by the part that is wrong
        assert "got" in message, message


@pytest.mark.parametrize("entry", constructor_entries(), ids=lambda e: e.name)
@settings(max_examples=60)
@given(value=anything)
def test_constructors_refuse_bad_values_with_the_typed_error(entry: Entry, value: Any) -> None:
    try:
        made = entry.call(value)
    except LbalgoError as error:
        assert_typed(error, entry.field, value)
    except BaseException as error:  # anything else escaping is the defect
        pytest.fail(f"{entry.name}({shown(value)}) raised {type(error).__name__}: {error}")
    else:
        if isinstance(made, RedisLedger):
            made.close()
        if hasattr(made, "__next__"):  # attempts() is lazy: its first pick must work
            next(made)


def snapshot(sched: Scheduler) -> tuple[object, ...]:
    stats = {k: (s.picks, s.open_connections, s.up) for k, s in sched.stats().items()}
    return (sched.group, stats, len(sched) if isinstance(sched, StickySessions) else None)


@pytest.mark.parametrize(("name", "make"), schedulers(), ids=[n for n, _ in schedulers()])
@settings(max_examples=40)
@given(value=anything, which=st.integers(0, 12))
def test_methods_refuse_bad_values_and_change_nothing(
    name: str, make: Callable[[], Scheduler], value: Any, which: int
) -> None:
    sched = make()
    sched.pick("192.0.2.9")  # some state: one open connection, one binding
    entries = method_entries(name)
    entry = entries[which % len(entries)]
    before = snapshot(sched)
    VALUE[0] = value
    try:
        entry.call(sched)
    except LbalgoError as error:
        assert_typed(error, entry.field, value)
        assert snapshot(sched) == before, "a refused call changed the scheduler"
    except BaseException as error:
        pytest.fail(f"{entry.name}({shown(value)}) raised {type(error).__name__}: {error}")


@pytest.mark.parametrize(
    ("call", "kind", "builtin"),
    [
        (lambda: SmoothWeightedRoundRobin(GROUP, slow_start=10**400), InvalidOptionError,
         ValueError),
        (lambda: SmoothWeightedRoundRobin(GROUP, fail_timeout=10**5000), InvalidOptionError,
         ValueError),
        (lambda: StickySessions(SmoothWeightedRoundRobin(GROUP), ttl=-(10**4301)),
         InvalidOptionError, ValueError),
        (lambda: StickySessions(SmoothWeightedRoundRobin(GROUP), ttl=math.nan),
         InvalidOptionError, ValueError),
        (lambda: SourceIPHash(GROUP, balance_factor=10**5000), InvalidOptionError, ValueError),
        (lambda: SmoothWeightedRoundRobin(GROUP).pick(exclude=BAD_EXCLUDE), InvalidTypeError,
         TypeError),
        (lambda: SmoothWeightedRoundRobin(GROUP).release(BAD_BACKEND), InvalidTypeError,
         TypeError),
        (lambda: SmoothWeightedRoundRobin(GROUP).mark_down("nope"), UnknownBackendError,
         KeyError),
        (lambda: next(attempts(SmoothWeightedRoundRobin(GROUP), tries=0)), InvalidOptionError,
         ValueError),
        (lambda: SourceIPHash(GROUP).pick("not an address"), InvalidOptionError, ValueError),
    ],
)  # fmt: skip
def test_the_issue_examples(call: Callable[[], object], kind: type, builtin: type) -> None:
    """The cases the issue names: huge numbers get the typed error (whose message never
    fails to format), and every family member is still the natural built-in."""
    with pytest.raises(kind) as caught:
        call()
    assert isinstance(caught.value, builtin)
    assert isinstance(caught.value, LbalgoError)
    assert len(str(caught.value)) < 300


def test_an_endless_exclude_is_read_no_further_than_its_bound() -> None:
    import itertools

    sched = SmoothWeightedRoundRobin(GROUP)
    with pytest.raises(InvalidOptionError, match="exclude holds at most"):
        sched.pick(exclude=itertools.repeat("10.0.0.1:80"))
    with pytest.raises(InvalidOptionError, match="exclude holds at most"):
        sched.pick(exclude=[f"k{i}" for i in range(10_000)])
