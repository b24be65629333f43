"""The ConnectionLedger contract, run against every ledger alike: the in-process LocalLedger
and the fleet-wide RedisLedger on a real redis-server (cachetools' CacheTestMixin habit: one
suite per interface, each class's own file keeps only what is specific to it)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbalgo import ConnectionLedger, LocalLedger
from lbalgo.local_ledger import PurePythonLedger
from lbalgo.testing import check_internals
from redis_server import redis_server  # noqa: F401 -- the fixture, reached by getfixturevalue

MakeLedger = Callable[[], ConnectionLedger]


@pytest.fixture(params=["local", "local-python", "redis"])
def make_ledger(request: pytest.FixtureRequest) -> Iterator[MakeLedger]:
    """Build fresh ledgers of one kind; Redis ones on the module's real server, each in its
    own namespace, all closed at the end."""
    made: list[ConnectionLedger] = []
    if request.param == "local":

        def make() -> ConnectionLedger:
            return LocalLedger()  # acquire and release in C where lbalgo._wf2q_c is built

    elif request.param == "local-python":

        def make() -> ConnectionLedger:
            return PurePythonLedger()

    else:
        server = request.getfixturevalue("redis_server")
        from lbalgo import RedisLedger

        def make() -> ConnectionLedger:
            ledger = RedisLedger(server.url, namespace=f"contract-{uuid.uuid4().hex}")
            made.append(ledger)
            return ledger

    yield make
    for ledger in made:
        ledger.close()  # type: ignore[attr-defined]


def lowest_ratio(key: str, counts: Counter[str], weights: dict[str, int]) -> bool:
    """Whether ``key`` had the lowest count/weight among ``weights`` (counts before)."""
    mine = Fraction(counts[key], weights[key])
    return all(mine <= Fraction(counts[k], w) for k, w in weights.items())


def test_is_a_connection_ledger(make_ledger: MakeLedger) -> None:
    assert isinstance(make_ledger(), ConnectionLedger)


def test_acquire_takes_the_lowest_ratio_exactly(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    weights = {"a": 3 * 32, "b": 32, "c": 7 * 32}
    ledger.set_eligible(list(weights.items()))
    counts: Counter[str] = Counter()
    for _ in range(60):  # held connections: ratios, not ties, decide
        key = ledger.acquire()
        assert key is not None
        assert lowest_ratio(key, counts, weights), (key, counts)
        counts[key] += 1
    assert all(ledger.count(k) == counts[k] for k in weights)
    check_internals(ledger)


def test_light_load_gives_each_key_its_weight_per_period(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    ledger.set_eligible([("a", 5), ("b", 2), ("c", 3)])
    got: Counter[str] = Counter()
    for _ in range(3 * 10):
        key = ledger.acquire()
        assert key is not None
        got[key] += 1
        ledger.release(key)
    assert got == Counter({"a": 15, "b": 6, "c": 9})


def test_release_never_below_zero_and_unknown_keys_ignored(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    ledger.set_eligible([("a", 1)])
    assert ledger.acquire() == "a"
    for key in ("a", "a", "a", "nobody"):
        ledger.release(key)
    assert ledger.count("a") == 0
    assert ledger.count("nobody") == 0
    assert ledger.acquire() == "a"
    assert ledger.count("a") == 1


def test_keys_left_out_drain_and_keep_their_counts(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    ledger.set_eligible([("a", 1), ("b", 1)])
    held = [ledger.acquire() for _ in range(4)]
    assert Counter(held) == Counter({"a": 2, "b": 2})
    ledger.set_eligible([("b", 1)])  # a went down: it drains
    assert [ledger.acquire() for _ in range(3)] == ["b", "b", "b"]
    assert ledger.count("a") == 2
    ledger.release("a")
    ledger.set_eligible([("a", 2), ("b", 1)])  # a weight change is not a reset
    assert ledger.count("a") == 1
    assert ledger.count("b") == 5


def test_forget_drops_counts_and_later_releases(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    ledger.set_eligible([("a", 1), ("b", 1)])
    for _ in range(4):
        ledger.acquire()
    ledger.set_eligible([("b", 1)])
    ledger.forget(["a"])
    assert ledger.count("a") == 0
    ledger.release("a")  # a late release of a forgotten key counts nowhere
    ledger.set_eligible([("a", 1), ("b", 1)])
    assert ledger.count("a") == 0
    assert ledger.acquire() == "a"  # 0/1 beats b's 2/1


def test_take_counts_like_acquire_and_drains_when_not_eligible(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    ledger.set_eligible([("a", 1), ("b", 1)])
    ledger.take("a")
    assert ledger.count("a") == 1
    assert ledger.acquire() == "b"  # 1/1 against 0/1
    ledger.take("z")  # not eligible: counted, never chosen
    assert ledger.count("z") == 1
    assert "z" not in {ledger.acquire() for _ in range(4)}
    ledger.release("z")
    assert ledger.count("z") == 0


def test_exclude_and_nothing_left(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    assert ledger.acquire() is None  # nothing eligible yet
    ledger.set_eligible([("a", 1), ("b", 5)])
    assert {ledger.acquire(frozenset({"b"})) for _ in range(3)} == {"a"}
    assert ledger.acquire(frozenset({"a", "b"})) is None
    assert ledger.count("a") == 3
    assert ledger.count("b") == 0


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([("a", 0)], r"weight of 'a' .* got 0"),
        ([("a", 3201)], r"weight of 'a' .* got 3201"),
        ([("a", 2.0)], r"weight of 'a' .* got 2.0"),
        ([("a", True)], r"weight of 'a' .* got True"),
        ([("a", 1), ("a", 2)], r"key 'a' is listed twice"),
    ],
)
def test_bad_eligible_set_leaves_the_ledger_as_it_was(
    make_ledger: MakeLedger, bad: list[tuple[str, object]], message: str
) -> None:
    ledger = make_ledger()
    ledger.set_eligible([("a", 2), ("b", 1)])
    assert ledger.acquire() == "a"
    with pytest.raises(ValueError, match=message):
        ledger.set_eligible(bad)  # type: ignore[arg-type]
    assert (ledger.count("a"), ledger.count("b")) == (1, 0)
    assert ledger.acquire() == "b"
    check_internals(ledger)


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.frozensets(st.sampled_from("abcd"), max_size=2)),
        st.tuples(st.just("release"), st.sampled_from("abcde")),
        st.tuples(st.just("take"), st.sampled_from("abcde")),
        st.tuples(st.just("forget"), st.sampled_from("abcde")),
        st.tuples(
            st.just("eligible"),
            st.lists(st.sampled_from("abcd"), unique=True, max_size=4).map(
                lambda keys: [(k, 32 * (1 + "abcd".index(k))) for k in keys]
            ),
        ),
    ),
    max_size=40,
)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops)
def test_counts_follow_the_contract(make_ledger: MakeLedger, ops: list[tuple[str, object]]) -> None:
    """Any sequence of operations: counts are those of a plain model, every acquire takes a
    lowest ratio among the eligible keys not excluded (or None when none is left), and the
    ledger's own invariants hold after each step."""
    ledger = make_ledger()
    counts: Counter[str] = Counter()
    eligible: dict[str, int] = {}
    for op, arg in ops:
        if op == "acquire":
            assert isinstance(arg, frozenset)
            left = {k: w for k, w in eligible.items() if k not in arg}
            key = ledger.acquire(arg)
            if not left:
                assert key is None
            else:
                assert key in left
                assert lowest_ratio(key, counts, left)
                counts[key] += 1
        elif op == "release":
            assert isinstance(arg, str)
            ledger.release(arg)
            counts[arg] = max(0, counts[arg] - 1)
        elif op == "take":
            assert isinstance(arg, str)
            ledger.take(arg)
            counts[arg] += 1
        elif op == "forget":
            assert isinstance(arg, str)
            if arg not in eligible:  # the scheduler forgets only keys that left
                ledger.forget([arg])
                counts[arg] = 0
        else:
            assert isinstance(arg, list)
            ledger.set_eligible(arg)
            eligible = dict(arg)
        check_internals(ledger)
        for key in "abcde":
            assert ledger.count(key) == counts[key], key
