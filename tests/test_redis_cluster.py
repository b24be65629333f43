"""RedisLedger(cluster=True) on a real 3-master Redis Cluster started by the tests.

The same fleet tests as on one server (``tests/redis_fleet.py``: four processes, kill -9
reclaim, a frozen process), plus what is specific to a cluster: every key of a namespace in
one hash slot (so each call stays one atomic script), namespaces spread over the masters, and
the master of a namespace stopped and restarted empty: its namespace is unavailable meanwhile
(a clear LedgerUnavailable), the others keep working, and when it is back the fleet
re-asserts its leases before anyone picks on partial counts.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from lbalgo import (
    Backend,
    BackendGroup,
    LedgerUnavailable,
    RedisLedger,
    WeightedLeastConnections,
)
from lbalgo.bench._redis_server import RedisCluster
from redis_fleet import (
    Fleet,
    FleetSuite,
    check_store_loss,
    fleets,
    wait_until,
)
from redis_server import redis_cluster

__all__ = ["redis_cluster"]  # the fixture used below

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def cluster(redis_cluster: RedisCluster) -> RedisCluster:
    """The module's cluster with every node running and every slot served (a test may have
    stopped a node)."""
    for node in redis_cluster.nodes:
        node.start()
    redis_cluster.wait_ok()
    return redis_cluster


@pytest.fixture
def cluster_namespace() -> str:
    return "cl-" + uuid.uuid4().hex[:12]


@pytest.fixture
def make_ledger(
    cluster: RedisCluster, cluster_namespace: str
) -> Iterator[Callable[..., RedisLedger]]:
    made: list[RedisLedger] = []

    def make(lease_timeout: float = 30.0, namespace: str | None = None) -> RedisLedger:
        ledger = RedisLedger(
            cluster.url,
            namespace=namespace or cluster_namespace,
            lease_timeout=lease_timeout,
            cluster=True,
        )
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        ledger.close()


@pytest.fixture
def fleet_factory(cluster: RedisCluster, cluster_namespace: str) -> Iterator[Callable[..., Fleet]]:
    with fleets(cluster.url, cluster_namespace, cluster=True) as make:
        yield make


class TestClusterFleet(FleetSuite):
    """Four processes, kill -9 reclaim, a frozen process: as on one server."""


def node_keys(cluster: RedisCluster, pattern: str) -> dict[int, list[bytes]]:
    """The keys matching ``pattern`` on each running node, by port."""
    import redis

    found = {}
    for node in cluster.nodes:
        client = redis.Redis(port=node.port)
        found[node.port] = list(client.scan_iter(match=pattern, count=1000))
        client.close()
    return found


def test_every_key_of_a_namespace_in_one_slot(
    cluster: RedisCluster, make_ledger: Callable[..., RedisLedger], cluster_namespace: str
) -> None:
    """Two processes' worth of picks, takes, releases and forgets, then a close: every key
    the ledger wrote lives on one node, in one slot (the namespace's hash tag)."""
    import redis

    one, two = make_ledger(), make_ledger()
    one.set_eligible([("a", 32), ("b", 64)])
    two.set_eligible([("a", 32), ("c", 32)])
    picked = [one.acquire() for _ in range(5)] + [two.acquire() for _ in range(3)]
    two.take("a")
    one.release(picked[0] or "")
    two.forget(["c"])
    found = node_keys(cluster, f"lbalgo:{{{cluster_namespace}}}:*")
    holders = {port: keys for port, keys in found.items() if keys}
    assert len(holders) == 1, holders
    (port, keys) = next(iter(holders.items()))
    assert len(keys) >= 6  # q, vt, owners, held:, elig:, k:, wc: ...
    client = redis.Redis(port=port)
    slots = {client.cluster("keyslot", key.decode()) for key in keys}
    client.close()
    assert len(slots) == 1
    assert cluster.node_for(f"lbalgo:{{{cluster_namespace}}}:q").port == port


def test_namespaces_spread_over_the_masters(
    cluster: RedisCluster, make_ledger: Callable[..., RedisLedger]
) -> None:
    group = BackendGroup([Backend("10.0.0.1", 80, 3), Backend("10.0.0.2", 80, 1)])
    ports = set()
    for index in range(9):
        namespace = f"spread-{index}-{uuid.uuid4().hex[:6]}"
        ports.add(cluster.node_for(f"lbalgo:{{{namespace}}}:q").port)
        one, two = (
            WeightedLeastConnections(group, ledger=make_ledger(namespace=namespace))
            for _ in range(2)
        )
        held = [one.pick(), two.pick(), one.pick(), two.pick()]
        assert sorted(b.key for b in held) == ["10.0.0.1:80"] * 3 + ["10.0.0.2:80"]
        assert one.ledger.count("10.0.0.1:80") == 3
    assert len(ports) >= 2  # nine random namespaces: all on one master would be a bug


def test_master_stopped_and_restarted(
    cluster: RedisCluster,
    fleet_factory: Callable[..., Fleet],
    make_ledger: Callable[..., RedisLedger],
    cluster_namespace: str,
) -> None:
    """The master of the namespace's slot is killed (no replica) and restarted empty:
    meanwhile this namespace raises LedgerUnavailable and a namespace on another master
    keeps working; once it is back, the first call that gets through sees every worker's
    connections (they re-asserted as soon as their subscriptions came back)."""
    master = cluster.node_for(f"lbalgo:{{{cluster_namespace}}}:q")
    elsewhere = next(
        ns
        for ns in (f"other-{i}-{uuid.uuid4().hex[:6]}" for i in range(100))
        if cluster.node_for(f"lbalgo:{{{ns}}}:q") is not master
    )
    other = make_ledger(namespace=elsewhere)
    other.set_eligible([("x", 32)])
    assert _works(other)  # it knows the cluster (a client seeded by a stopped node could not)
    mine = make_ledger()
    mine.set_eligible([("a", 32)])
    assert mine.acquire() == "a"
    seen: dict[str, bool] = {}

    def stop_then_restart() -> None:
        master.stop()
        with pytest.raises(LedgerUnavailable):
            mine.acquire()
        assert wait_until(lambda: _works(other), timeout=10)  # the other masters serve on
        seen["other master served"] = True
        master.start()  # same port, same nodes.conf: back in the cluster with its slots
        cluster.wait_ok()

    mine.release("a")
    figures = check_store_loss(fleet_factory, make_ledger, stop_then_restart)
    assert seen == {"other master served": True}
    assert figures["partial_picks"] == 0


def _works(ledger: RedisLedger) -> bool:
    try:
        key = ledger.acquire()
    except LedgerUnavailable:
        return False
    ledger.release(key or "")
    return key is not None
