"""RedisLedger against a real redis-server started by the tests (never a mock).

Covers: validation; the ledger contract against a plain model (least ratio on the shared
counts, never negative, forget, take); the light-load tie-break; atomicity with several
ledgers picking at once; several OS processes sharing a group (the fleet's totals follow the
weights); kill -9 of a process holding connections (reclaimed after ``lease_timeout``); a
process frozen past its lease (reclaimed, then put back, nothing released twice); Redis
stopped, hung and restarted mid-run. Every wait is bounded.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbalgo import (
    Backend,
    BackendGroup,
    ConnectionLedger,
    InvalidOptionError,
    LbalgoError,
    LedgerUnavailable,
    LocalLedger,
    RedisLedger,
    StickySessions,
    WeightedLeastConnections,
)
from lbalgo.bench._redis_server import RedisServer
from lbalgo.scheduler import RAMP_STEPS
from lbalgo.testing import groups
from redis_fleet import (
    LEASE,
    Fleet,
    FleetSuite,
    check_store_loss,
    fleets,
    wait_until,
)
from redis_server import namespace, redis_server, redis_url, skip_without_redis
from support.threads import run_threads

__all__ = ["namespace", "redis_server", "redis_url"]  # fixtures used by the tests below

pytestmark = pytest.mark.redis


@pytest.fixture
def make_ledger(redis_url: str, namespace: str) -> Iterator[Callable[..., RedisLedger]]:
    """Build ledgers on the test's server and namespace; all closed at the end."""
    made: list[RedisLedger] = []

    def make(lease_timeout: float = 30.0, url: str | None = None) -> RedisLedger:
        ledger = RedisLedger(url or redis_url, namespace=namespace, lease_timeout=lease_timeout)
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        ledger.close()


def least_ratio_holds(counts: Counter[str], weights: dict[str, int], key: str) -> bool:
    """Whether ``key`` had the lowest count/weight (counts taken before the pick)."""
    mine = Fraction(counts[key], weights[key])
    return all(mine <= Fraction(counts[k], w) for k, w in weights.items())


# -- validation and packaging -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "http://localhost:6379"}, r"url must be .* got 'http://localhost:6379'"),
        ({"url": 6379}, r"url must be .* got 6379"),
        ({"url": "localhost:6379"}, r"url must be .* got 'localhost:6379'"),
        ({"url": "unix://"}, r"url must give the socket's path .* got 'unix://'"),
        (
            {"url": "redis://h:6379/x"},
            r"url must end with a database number .* got 'redis://h:6379/x'",
        ),
        ({"url": "redis://h:port/0"}, r"url is not a usable Redis URL .* got 'redis://h:port/0'"),
        ({"namespace": ""}, r"namespace must be .* got ''"),
        ({"namespace": "a{b}"}, r"namespace must be .* got 'a\{b\}'"),
        ({"namespace": "a b"}, r"namespace must be .* got 'a b'"),
        ({"namespace": 7}, r"namespace must be .* got 7"),
        ({"lease_timeout": 0}, r"lease_timeout must be .* got 0"),
        ({"lease_timeout": -1.0}, r"lease_timeout must be .* got -1.0"),
        ({"lease_timeout": math.inf}, r"lease_timeout must be .* got inf"),
        ({"lease_timeout": math.nan}, r"lease_timeout must be .* got nan"),
        ({"lease_timeout": True}, r"lease_timeout must be .* got True"),
        ({"lease_timeout": "30"}, r"lease_timeout must be .* got '30'"),
        ({"lease_timeout": 10**5000}, r"lease_timeout must be .* got an integer of 5001 digits"),
        ({"namespace": "n" * 10**6}, r"namespace must be .* \(1000000 characters\)"),
        ({"cluster": "yes"}, r"cluster must be True or False, got 'yes'"),
        ({"cluster": 1}, r"cluster must be True or False, got 1"),
        ({"cluster": True, "url": "unix:///tmp/r.sock"}, r"url must give the URL of one node"),
        ({"cluster": True, "url": "redis://h:7000/3"}, r"url of a Redis Cluster must use db"),
    ],
)
def test_bad_arguments_name_the_field_and_value(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"url": "redis://127.0.0.1:1/0", "namespace": "web"}
    args.update(kwargs)
    with pytest.raises(InvalidOptionError, match=message) as caught:
        RedisLedger(args.pop("url"), **args)
    assert isinstance(caught.value, ValueError)


def test_import_lbalgo_does_not_import_redis() -> None:
    code = "import sys, lbalgo; lbalgo.RedisLedger; print('redis' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"


def test_is_a_connection_ledger_and_an_lbalgo_error() -> None:
    skip_without_redis()
    ledger = RedisLedger("redis://127.0.0.1:1/0", namespace="never-connects")
    assert isinstance(ledger, ConnectionLedger)
    assert issubclass(LedgerUnavailable, LbalgoError)  # API.md: a clear LbalgoError subclass
    assert issubclass(LedgerUnavailable, ConnectionError)
    ledger.close()  # nothing held, Redis never reached: closing must not raise


def test_bad_eligible_set_leaves_the_ledger_alone(
    make_ledger: Callable[..., RedisLedger],
) -> None:
    ledger = make_ledger()
    ledger.set_eligible([("a", 2)])
    for bad, message in (
        ([("a", 0)], r"weight of 'a' .* got 0"),
        ([("a", 3201)], r"weight of 'a' .* got 3201"),
        ([("a", 1), ("a", 2)], r"key 'a' is listed twice"),
    ):
        with pytest.raises(ValueError, match=message):
            ledger.set_eligible(bad)
    assert ledger.acquire() == "a"
    assert ledger.count("a") == 1


# -- the contract, one process ----------------------------------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.sets(st.integers(0, 5), max_size=2)),
        st.tuples(st.just("release"), st.integers(0, 5)),
        st.tuples(st.just("forget"), st.integers(0, 5)),
        st.tuples(st.just("take"), st.integers(0, 5)),
        st.tuples(st.just("eligible"), st.lists(st.integers(0, 5), max_size=6, unique=True)),
    ),
    max_size=40,
)


@settings(max_examples=50)
@given(
    weights=st.lists(st.integers(1, 100), min_size=1, max_size=6),
    others=st.lists(st.integers(1, 100), min_size=6, max_size=6),
    ops=operations,
)
def test_contract_against_a_model(
    redis_server: RedisServer, weights: list[int], others: list[int], ops: list[tuple[str, Any]]
) -> None:
    """Two ledgers (two processes' worth) on one namespace, checked after every step
    against a plain model: exact least ratio on the shared counts with this process's
    weights (the other process weighs the keys differently, as during a slow start or a
    rolling weight change), counts never negative, releases and forgets only ever touching
    this owner's own connections."""
    redis_server.start()
    ns = "model-" + uuid.uuid4().hex
    keys = [f"k{i}" for i in range(len(weights))]
    mine, other = (RedisLedger(redis_server.url, namespace=ns) for _ in range(2))
    try:
        eligible = dict(zip(keys, weights, strict=False))
        mine.set_eligible(list(eligible.items()))
        other.set_eligible(list(zip(keys, others, strict=False)))
        other_held = Counter({k: i % 2 for i, k in enumerate(keys)})
        for key, n in other_held.items():
            for _ in range(n):
                other.take(key)
        held: Counter[str] = Counter()
        for op, arg in ops:
            fleet = held + other_held
            if op == "acquire":
                exclude = {keys[i] for i in arg if i < len(keys)}
                picked = mine.acquire(exclude)
                allowed = {k: w for k, w in eligible.items() if k not in exclude}
                if not allowed:
                    assert picked is None
                else:
                    assert picked in allowed
                    assert least_ratio_holds(fleet, allowed, picked)
                    held[picked] += 1
            elif op == "eligible":
                eligible = {keys[i]: weights[i] for i in arg if i < len(keys)}
                mine.set_eligible(list(eligible.items()))
            elif arg >= len(keys):
                continue
            elif op == "release":
                mine.release(keys[arg])
                held[keys[arg]] -= 1 if held[keys[arg]] else 0
            elif op == "forget":
                mine.forget([keys[arg]])
                del held[keys[arg]]
            else:
                mine.take(keys[arg])
                held[keys[arg]] += 1
            fleet = held + other_held
            assert mine.counts(keys) == {k: fleet[k] for k in keys}
    finally:
        mine.close()
        other.close()


def count_or_none(ledger: RedisLedger, key: str) -> int | None:
    """The fleet's count, or None while Redis cannot be reached."""
    try:
        return ledger.count(key)
    except LedgerUnavailable:
        return None


def light_load_sequence(ledger: RedisLedger, picks: int) -> list[str]:
    sequence = []
    for _ in range(picks):
        key = ledger.acquire()
        assert key is not None
        sequence.append(key)
        ledger.release(key)
    return sequence


def worst_prefix_deviation(sequence: list[str], weights: dict[str, int]) -> float:
    total, seen, worst = sum(weights.values()), Counter[str](), 0.0
    for n, key in enumerate(sequence, 1):
        seen[key] += 1
        worst = max(worst, *(abs(seen[k] - n * w / total) for k, w in weights.items()))
    return worst


def test_light_load_follows_the_weights_smoothly(
    make_ledger: Callable[..., RedisLedger],
) -> None:
    """Ten keys of weight 1 and one of weight 100: every prefix within one pick of each
    key's share (a plain earliest-deadline tie-break gives the heavy key a burst)."""
    weights = {f"light{i}": 1 for i in range(10)} | {"heavy": 100}
    ledger = make_ledger()
    ledger.set_eligible(list(weights.items()))
    sequence = light_load_sequence(ledger, 2 * 110)
    assert Counter(sequence) == {k: 2 * w for k, w in weights.items()}
    assert worst_prefix_deviation(sequence, weights) < 1
    assert ledger.counts(weights) == dict.fromkeys(weights, 0)


@settings(max_examples=15)
@given(group=groups(min_size=1, max_size=8, min_weight=1))
def test_light_load_over_any_group(redis_server: RedisServer, group: BackendGroup) -> None:
    redis_server.start()
    weights = {b.key: b.weight for b in group}
    with RedisLedger(redis_server.url, namespace="light-" + uuid.uuid4().hex) as ledger:
        ledger.set_eligible(list(weights.items()))
        sequence = light_load_sequence(ledger, 2 * group.total_weight)
        assert Counter(sequence) == {k: 2 * w for k, w in weights.items()}
        assert worst_prefix_deviation(sequence, weights) < 1


def test_slow_start_weight_lower_here_than_elsewhere(
    make_ledger: Callable[..., RedisLedger],
) -> None:
    """A process ramping a key (effective weight below the others') compares it exactly."""
    ramping, steady = make_ledger(), make_ledger()
    steady.set_eligible([("a", 10), ("b", 10)])
    ramping.set_eligible([("a", 1), ("b", 10)])
    for _ in range(4):
        steady.acquire()  # two on a, two on b
    counts = Counter(steady.counts(["a", "b"]))
    assert counts == {"a": 2, "b": 2}
    # here: a is 2/1, b is 2/10, so b until b reaches 20
    picks = [ramping.acquire() for _ in range(18)]
    assert picks == ["b"] * 18
    assert ramping.acquire() in {"a", "b"}  # 2/1 against 20/10: a tie


def test_schedulers_ramping_a_weight_one_backend_share_one_scale(
    make_ledger: Callable[..., RedisLedger],
) -> None:
    """Two processes, one ramping a weight-1 backend: both hand fine weights (units of
    1/RAMP_STEPS) to Redis, so the fleet compares one scale; the ramping process gives the
    new backend 1/32 of a full share, the steady one a full share, both exactly."""
    clock_now = [1000.0]
    group = BackendGroup([Backend("10.0.0.1", 80), Backend("10.0.0.2", 80)])
    joined = group.with_backend(Backend("10.0.0.3", 80))
    new = "10.0.0.3:80"
    ramping = WeightedLeastConnections(
        group, ledger=make_ledger(), slow_start=32.0, clock=lambda: clock_now[0]
    )
    steady = WeightedLeastConnections(joined, ledger=make_ledger())
    ramping.update(joined)
    assert ramping.stats()[new].effective_weight == 1 / RAMP_STEPS
    fine = {b.key: RAMP_STEPS for b in joined}
    assert steady.ledger._eligible == fine  # type: ignore[attr-defined]
    assert ramping.ledger._eligible[new] == 1  # type: ignore[attr-defined]
    held = [steady.pick().key for _ in range(3)]  # one each: the fleet counts 1, 1, 1
    assert sorted(held) == sorted(joined.keys())
    # here the new backend is at 1/1 (fine), the others at 1/32: they take 31 more each
    # before it is the least loaded again
    picks = [ramping.pick().key for _ in range(62)]
    assert new not in picks
    assert Counter(picks) == {"10.0.0.1:80": 31, "10.0.0.2:80": 31}
    clock_now[0] += 32.0  # ramp over (seen at the next pick): 32/32 for every backend
    assert ramping.pick().key == new
    assert ramping.ledger._eligible == steady.ledger._eligible  # type: ignore[attr-defined]


def test_scheduler_with_a_redis_ledger(make_ledger: Callable[..., RedisLedger]) -> None:
    group = BackendGroup([Backend("10.0.0.1", 80, 3), Backend("10.0.0.2", 80, 1)])
    one, two = (WeightedLeastConnections(group, ledger=make_ledger()) for _ in range(2))
    held = [one.pick(), two.pick(), one.pick(), two.pick()]
    assert Counter(b.key for b in held) == {"10.0.0.1:80": 3, "10.0.0.2:80": 1}
    assert one.open_connections("10.0.0.1:80") + two.open_connections("10.0.0.1:80") == 3
    assert one.ledger.count("10.0.0.1:80") == 3  # the fleet's view
    with two.connection() as lease:  # 3/3 against 1/1: a tie, fleet-wide
        assert two.ledger.count(lease.backend.key) in {2, 4}
    for index, backend in enumerate(held):
        (one if index % 2 == 0 else two).release(backend)
    one.mark_down("10.0.0.1:80")  # health stays per process
    assert {one.pick().key for _ in range(3)} == {"10.0.0.2:80"}
    assert two.pick().key == "10.0.0.1:80"  # 0/3 against 3/1 in the fleet


def test_atomic_under_concurrent_picks(make_ledger: Callable[..., RedisLedger]) -> None:
    """Eight ledgers picking at once from eight threads, holding every connection: if the
    choice and the count were two steps, two would take the same least-loaded slot and the
    totals would stray from the least-ratio order."""
    weights = {"a": 5, "b": 3, "c": 2}
    ledgers = [make_ledger() for _ in range(8)]
    for ledger in ledgers:
        ledger.set_eligible(list(weights.items()))
    barrier = threading.Barrier(len(ledgers))

    def work(ledger: RedisLedger) -> None:
        barrier.wait(timeout=10)
        for _ in range(25):
            assert ledger.acquire() is not None

    run_threads(work, [(ledger,) for ledger in ledgers], timeout=30)
    totals = Counter(ledgers[0].counts(weights))
    assert totals == {"a": 100, "b": 60, "c": 40}  # 200 picks, exact shares of 5:3:2


def test_release_never_below_zero_and_only_own(
    make_ledger: Callable[..., RedisLedger],
) -> None:
    one, two = make_ledger(), make_ledger()
    for ledger in (one, two):
        ledger.set_eligible([("a", 1)])
    assert one.acquire() == "a"
    assert two.acquire() == "a"
    one.release("a")
    one.release("a")  # one too many: this owner holds nothing more there
    one.release("unknown")
    assert one.count("a") == 1
    two.forget(["a"])
    two.release("a")  # forgotten: ignored
    assert one.count("a") == 0


# -- several processes ------------------------------------------------------------------------


@pytest.fixture
def fleet_factory(redis_url: str, namespace: str) -> Iterator[Callable[..., Fleet]]:
    with fleets(redis_url, namespace) as make:
        yield make


class TestFleet(FleetSuite):
    """Four processes, kill -9 reclaim, a frozen process, on one server."""


def test_flushall_the_fleet_reasserts_before_the_next_pick(
    fleet_factory: Callable[..., Fleet],
    make_ledger: Callable[..., RedisLedger],
    redis_server: RedisServer,
) -> None:
    """FLUSHALL while three processes hold connections: the next call of a fourth already
    counts them all (before: a process picked 11 times as if only its own leases existed,
    for up to lease_timeout / 4)."""
    import redis

    def flush() -> None:
        client = redis.Redis(port=redis_server.port)
        client.flushall()
        client.close()

    figures = check_store_loss(fleet_factory, make_ledger, flush)
    print(f"\nafter FLUSHALL: {figures}")  # shown with -s: the closing figures
    assert figures["partial_picks"] == 0


def test_empty_restart_the_fleet_reasserts_before_the_next_pick(
    fleet_factory: Callable[..., Fleet],
    make_ledger: Callable[..., RedisLedger],
    redis_server: RedisServer,
) -> None:
    figures = check_store_loss(fleet_factory, make_ledger, redis_server.restart)
    print(f"\nafter an empty restart: {figures}")
    assert figures["partial_picks"] == 0


# -- Redis outages ----------------------------------------------------------------------------


def test_redis_stopped_then_restarted(
    redis_server: RedisServer, make_ledger: Callable[..., RedisLedger]
) -> None:
    group = BackendGroup([Backend("10.0.0.1", 80, 1), Backend("10.0.0.2", 80, 1)])
    sched = WeightedLeastConnections(group, ledger=make_ledger(lease_timeout=LEASE))
    held = [sched.pick() for _ in range(4)]
    redis_server.stop()
    before = sched.stats()
    with pytest.raises(LedgerUnavailable, match="unreachable"):
        sched.pick()
    assert sched.stats() == before  # nothing counted
    with pytest.raises(LedgerUnavailable):
        sched.ledger.count("10.0.0.1:80")
    sched.release(held.pop())  # never raises; kept pending
    redis_server.start()  # empty: no persistence

    def recovered() -> bool:
        try:
            held.append(sched.pick())
        except LedgerUnavailable:
            return False
        return True

    assert wait_until(recovered, timeout=5)
    # this process put its 3 still-open connections back, then counted the new one
    assert sum(sched.ledger.count(b.key) for b in group) == 4
    for backend in held:
        sched.release(backend)
    assert [sched.ledger.count(b.key) for b in group] == [0, 0]


def test_redis_hung(redis_server: RedisServer, namespace: str) -> None:
    url = redis_server.url + "?socket_timeout=0.2"
    ledger = RedisLedger(url, namespace=namespace)
    try:
        ledger.set_eligible([("a", 1)])
        assert ledger.acquire() == "a"
        redis_server.pause()
        started = time.monotonic()
        try:
            with pytest.raises(LedgerUnavailable):
                ledger.acquire()
            assert time.monotonic() - started < 2
            ledger.release("a")  # pending, no raise
        finally:
            redis_server.resume()
        assert wait_until(lambda: count_or_none(ledger, "a") == 0, timeout=5, step=0.2)
    finally:
        ledger.close()


@pytest.mark.usefixtures("frozen_heap")
def test_ledger_bench_quick_run() -> None:
    skip_without_redis()
    from lbalgo.bench import ledger as bench

    tables = bench.run(quick=True)
    assert tables
    trips = [row for table in tables for row in table.rows if "round trips" in str(row[0])]
    assert trips
    assert all(row[1] == 1 for row in trips)


@settings(max_examples=15)
@given(weights=st.lists(st.integers(1, 100), min_size=1, max_size=8))
def test_light_load_same_sequence_as_the_local_ledger(
    redis_server: RedisServer, weights: list[int]
) -> None:
    """One process alone: the same picks as LocalLedger when key order is group order."""
    redis_server.start()
    eligible = [(f"k{i}", w) for i, w in enumerate(weights)]
    local = LocalLedger()
    local.set_eligible(eligible)
    expected = []
    for _ in range(2 * sum(weights)):
        key = local.acquire()
        assert key is not None
        expected.append(key)
        local.release(key)
    with RedisLedger(redis_server.url, namespace="same-" + uuid.uuid4().hex) as ledger:
        ledger.set_eligible(eligible)
        assert light_load_sequence(ledger, 2 * sum(weights)) == expected


def test_sticky_sessions_count_in_the_fleet(make_ledger: Callable[..., RedisLedger]) -> None:
    group = BackendGroup([Backend("10.0.0.1", 80, 1), Backend("10.0.0.2", 80, 1)])
    sched = WeightedLeastConnections(group, ledger=make_ledger())
    sticky = StickySessions(sched)
    first = sticky.pick(client="session-1")
    assert [sticky.pick(client="session-1") for _ in range(3)] == [first] * 3
    assert sched.ledger.count(first.key) == 4  # the bound picks were counted too (take)


FORK_CHILD = """
import os, sys
from lbalgo import RedisLedger
ledger = RedisLedger(sys.argv[1], namespace=sys.argv[2])
ledger.set_eligible([("a", 1)])
assert ledger.acquire() == "a"
parent = ledger.owner
pid = os.fork()
if pid == 0:
    ok = ledger.owner != parent and ledger.acquire() == "a" and ledger.count("a") == 2
    ledger.release("a")
    ledger.close()
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, "child failed"
assert ledger.count("a") == 1, ledger.count("a")  # the child's pick came and went
ledger.release("a")
assert ledger.count("a") == 0
ledger.close()
print("ok")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_over(redis_url: str, namespace: str) -> None:
    """A ledger inherited through fork() gets a new owner and holds nothing of the parent's
    (run in a fresh interpreter: forking the test process itself is unsafe)."""
    out = subprocess.run(
        [sys.executable, "-c", FORK_CHILD, redis_url, namespace],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_close_hands_the_connections_back(make_ledger: Callable[..., RedisLedger]) -> None:
    leaving, observer = make_ledger(), make_ledger()
    leaving.set_eligible([("a", 1), ("b", 1)])
    assert sorted(leaving.acquire() or "" for _ in range(4)) == ["a", "a", "b", "b"]
    leaving.close()
    leaving.close()  # idempotent
    assert observer.counts(["a", "b"]) == {"a": 0, "b": 0}  # at once, not after the lease
    with pytest.raises(LedgerUnavailable, match="closed"):
        leaving.acquire()
    leaving.release("a")  # ignored, no error
