"""Fleet tests shared by the single-server and the Redis Cluster suites: worker processes,
each with a ``WeightedLeastConnections`` on a ``RedisLedger``, driven over pipes.

Each ``check_*`` function is one fleet test; ``tests/test_redis_ledger.py`` runs them on one
redis-server and ``tests/test_redis_cluster.py`` on a 3-master cluster, so both are held to
the same behaviour. Every wait is bounded.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any

from lbalgo import Backend, BackendGroup, RedisLedger, WeightedLeastConnections

__all__ = [
    "LEASE",
    "Fleet",
    "FleetSuite",
    "check_store_loss",
    "fleets",
    "wait_until",
]

LEASE = 1.0  # seconds: short, so reclaim tests finish quickly

MakeFleet = Callable[..., "Fleet"]
MakeLedger = Callable[..., RedisLedger]


def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def fleet_worker(
    url: str,
    namespace: str,
    weights: list[tuple[str, int]],
    conn: Connection,
    lease: float,
    cluster: bool,
) -> None:
    """A worker process: one scheduler on a RedisLedger, driven by commands on ``conn``."""
    group = BackendGroup(
        [Backend("10.0.0.1", 80 + i, w, name=k) for i, (k, w) in enumerate(weights)]
    )
    ledger = RedisLedger(url, namespace=namespace, lease_timeout=lease, cluster=cluster)
    sched = WeightedLeastConnections(group, ledger=ledger)
    held = []
    while conn.poll(60):
        command, arg = conn.recv()
        if command == "pick":
            held += [sched.pick() for _ in range(arg)]
            conn.send(Counter(b.key for b in held))
        elif command == "release":
            for backend in held:
                sched.release(backend)
            held.clear()
            conn.send(Counter())
        elif command == "exit":
            ledger.close()
            conn.send(None)
            return


class Fleet:
    """Worker processes (spawned: the test process has threads) on one namespace."""

    def __init__(
        self,
        url: str,
        namespace: str,
        weights: list[tuple[str, int]],
        size: int,
        *,
        lease: float = LEASE,
        cluster: bool = False,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.processes = []
        for _ in range(size):
            mine, theirs = ctx.Pipe()
            process = ctx.Process(
                target=fleet_worker, args=(url, namespace, weights, theirs, lease, cluster)
            )
            process.start()
            self.conns.append(mine)
            self.processes.append(process)

    def ask(self, index: int, command: str, arg: int = 0) -> Any:
        self.conns[index].send((command, arg))
        assert self.conns[index].poll(30), f"worker {index} did not answer {command}"
        return self.conns[index].recv()

    def ask_all(self, command: str, arg: int = 0) -> list[Any]:
        for conn in self.conns:
            conn.send((command, arg))
        answers = []
        for index, conn in enumerate(self.conns):
            assert conn.poll(30), f"worker {index} did not answer {command}"
            answers.append(conn.recv())
        return answers

    def close(self) -> None:
        for process in self.processes:
            process.kill()
            process.join(10)


@contextmanager
def fleets(url: str, namespace: str, *, cluster: bool = False) -> Iterator[MakeFleet]:
    """A factory of fleets on this store and namespace; every fleet made is killed on exit."""
    made: list[Fleet] = []

    def make(weights: list[tuple[str, int]], size: int, lease: float = LEASE) -> Fleet:
        fleet = Fleet(url, namespace, weights, size, lease=lease, cluster=cluster)
        made.append(fleet)
        return fleet

    try:
        yield make
    finally:
        for fleet in made:
            fleet.close()


class FleetSuite:
    """The fleet tests every Redis deployment runs, as cachetools' ``CacheTestMixin`` does:
    a test module subclasses it and provides the ``fleet_factory`` and ``make_ledger``
    fixtures for its deployment (one server, a cluster)."""

    def test_fleet_totals_follow_the_weights(
        self, fleet_factory: MakeFleet, make_ledger: MakeLedger
    ) -> None:
        """Four worker processes pick at the same time and hold every connection: the fleet's
        total per backend is exactly the weighted share (least ratio on the totals)."""
        weights = [("a", 5), ("b", 3), ("c", 2)]
        fleet = fleet_factory(weights, 4)
        per_worker = fleet.ask_all("pick", 30)  # 120 connections, 12 weight periods
        total = sum(per_worker, Counter[str]())
        assert total == {"a": 60, "b": 36, "c": 24}
        observer = make_ledger()
        assert observer.counts(["a", "b", "c"]) == dict(total)
        fleet.ask_all("release")
        assert observer.counts(["a", "b", "c"]) == {"a": 0, "b": 0, "c": 0}

    def test_killed_process_leases_come_back(
        self, fleet_factory: MakeFleet, make_ledger: MakeLedger
    ) -> None:
        """kill -9 of a process holding connections: nothing is reclaimed before its lease runs
        out, everything after; the survivor's connections stay counted, never twice."""
        fleet = fleet_factory([("a", 1), ("b", 1)], 2)
        victim = fleet.ask(0, "pick", 6)
        survivor = fleet.ask(1, "pick", 4)
        observer = make_ledger(lease_timeout=LEASE)

        def fleet_counts() -> Counter[str]:
            return Counter(observer.counts(["a", "b"]))

        assert fleet_counts() == victim + survivor
        killed_at = time.monotonic()
        os.kill(fleet.processes[0].pid or 0, signal.SIGKILL)
        fleet.processes[0].join(10)
        assert fleet_counts() == victim + survivor  # the lease has to run out first
        assert wait_until(lambda: fleet_counts() == survivor, timeout=LEASE * 4)
        assert time.monotonic() - killed_at >= LEASE * 0.5
        fleet.ask(1, "release")
        assert observer.counts(["a", "b"]) == {"a": 0, "b": 0}  # not negative, not twice

    def test_frozen_process_is_reclaimed_then_puts_its_leases_back(
        self, fleet_factory: MakeFleet, make_ledger: MakeLedger
    ) -> None:
        """A process frozen past its lease is reclaimed, then puts its connections back."""
        fleet = fleet_factory([("a", 1)], 1)
        assert fleet.ask(0, "pick", 3) == {"a": 3}
        observer = make_ledger(lease_timeout=LEASE)
        pid = fleet.processes[0].pid or 0
        os.kill(pid, signal.SIGSTOP)  # a GC pause or a stopped VM, longer than the lease
        try:
            assert wait_until(lambda: observer.count("a") == 0, timeout=LEASE * 4)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert wait_until(lambda: observer.count("a") == 3, timeout=LEASE * 2)
        fleet.ask(0, "release")
        assert observer.count("a") == 0


def check_store_loss(
    make_fleet: MakeFleet, make_ledger: MakeLedger, lose: Callable[[], None]
) -> dict[str, float]:
    """The store loses everything (``lose``: FLUSHALL, or a restart without persistence)
    while three workers hold 12 connections on ``a``: the first call of another process
    that gets through already sees all 12 (each worker re-asserted on the news, not at its
    heartbeat, which with a 30 s lease is 7.5 s away), so its picks all go to ``b``.
    Returns the figures: how long the first call took, picks made on partial counts."""
    fleet = make_fleet([("a", 1)], 3, lease=30.0)
    assert sum(fleet.ask_all("pick", 4), Counter[str]()) == {"a": 12}
    observer = make_ledger(lease_timeout=30.0)
    observer.set_eligible([("a", 32), ("b", 32)])
    assert observer.counts(["a", "b"]) == {"a": 12, "b": 0}
    time.sleep(0.3)  # every watcher is listening
    lose()
    started = time.monotonic()
    first: list[dict[str, int]] = []

    def first_call() -> bool:
        try:
            first.append(observer.counts(["a", "b"]))
        except Exception:  # LedgerUnavailable while the store is away
            return False
        return True

    assert wait_until(first_call, timeout=20, step=0.05)
    took = time.monotonic() - started
    assert first == [{"a": 12, "b": 0}], "the first call after the loss saw partial counts"
    picks = [observer.acquire() for _ in range(11)]
    partial = picks.count("a")  # each pick on a while b is emptier: a pick on partial counts
    assert picks == ["b"] * 11
    assert observer.counts(["a", "b"]) == {"a": 12, "b": 11}
    fleet.ask_all("release")
    for key in picks:
        observer.release(key or "")
    assert observer.counts(["a", "b"]) == {"a": 0, "b": 0}
    return {"first_call_seconds": took, "partial_picks": partial}
