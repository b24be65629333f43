"""Shared pieces of the tests that run against every scheduler class: the classes (imported
by name: one that fails to import fails its tests; the fixtures ``ramped``, ``any_cls`` and
``clock`` over them are in ``tests/conftest.py``) and small drivers (light load, a lease on a
chosen backend)."""

from __future__ import annotations

import importlib
from collections import Counter

from lbalgo import Backend, BackendGroup, Lease
from lbalgo._base import BaseScheduler
from support.clocks import FakeClock

__all__ = [
    "ALL",
    "FAILS",
    "RAMPED",
    "SLOW",
    "TIMEOUT",
    "backends",
    "client",
    "count_picks",
    "light_load",
    "load",
    "on",
    "passive",
    "weight_now",
]

RAMPED = [
    ("lbalgo.swrr", "SmoothWeightedRoundRobin"),
    ("lbalgo.wlc", "WeightedLeastConnections"),
]
ALL = [*RAMPED, ("lbalgo.source_ip_hash", "SourceIPHash")]

SLOW = 100.0
"""Seconds of slow start in these tests."""
FAILS, TIMEOUT = 2, 10.0
"""max_fails and fail_timeout in these tests."""


def load(spec: tuple[str, str]) -> type[BaseScheduler]:
    """The scheduler class ``(module, name)`` names."""
    # every scheduler exists now: one that fails to import must fail its tests, not skip them
    module, name = spec
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def client(i: int) -> str:
    """A distinct client address for every i (hashing needs one)."""
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def backends(*weights: int) -> list[Backend]:
    """Backends 192.0.2.1:80, 192.0.2.2:80, ... of these weights."""
    return [Backend(f"192.0.2.{i + 1}", 80, w) for i, w in enumerate(weights)]


def light_load(sched: BaseScheduler, n: int, start: int = 0) -> Counter[str]:
    """n picks, each released before the next (light load), counted by backend key."""
    got: Counter[str] = Counter()
    for i in range(start, start + n):
        with sched.connection(client(i)) as lease:
            got[lease.backend.key] += 1
    return got


def weight_now(sched: BaseScheduler, key: str) -> float:
    """The effective weight ``stats()`` reports for ``key``."""
    return sched.stats()[key].effective_weight


def passive(cls: type[BaseScheduler], clock: FakeClock, n: int = 3) -> BaseScheduler:
    return cls(BackendGroup(backends(*[1] * n)), max_fails=FAILS, fail_timeout=TIMEOUT, clock=clock)


def on(sched: BaseScheduler, key: str, i: int = 0) -> Lease:
    """A lease on ``key``, whatever the algorithm (every other backend excluded)."""
    lease = sched.connection(client(i), exclude=[b.key for b in sched.group if b.key != key])
    assert lease.backend.key == key
    return lease


def count_picks(sched: BaseScheduler, key: str, n: int, start: int = 0) -> int:
    """How many of n light-load picks went to ``key``."""
    return light_load(sched, n, start)[key]
