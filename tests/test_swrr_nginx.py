"""Differential test: lbalgo's smooth weighted round robin against a real nginx.

Each case starts loopback backends and a single-process nginx whose upstream lists them with the
same weights (and ``down`` marks), sends requests one after another for at least two full
periods, and compares which backend answered each with lbalgo's sequence. Skipped with a clear
reason when nginx is not installed; CI installs it.
"""

from __future__ import annotations

import random

import pytest

from lbalgo import Backend, BackendGroup, SmoothWeightedRoundRobin
from nginx_harness import NginxHarness, nginx_harness, upstream_servers

__all__ = ["nginx_harness"]  # the fixture, re-exported so pytest finds it here

pytestmark = pytest.mark.nginx

_rng = random.Random(20240604)  # fixed: the same "random" vectors on every run
CASES: list[tuple[str, list[int], list[int]]] = [
    ("5-1-1", [5, 1, 1], []),
    ("equal", [1, 1, 1, 1], []),
    ("100x3+1", [100, 100, 100, 1], []),
    ("two", [3, 2], []),
    ("descending", [9, 7, 5, 3, 1], []),
    ("ties-late", [1, 2, 2, 4, 4], []),
    ("5-1-1-first-down", [5, 1, 1], [0]),
    ("down-in-middle", [4, 3, 2, 1], [1, 2]),
    ("random-8", [_rng.randint(1, 30) for _ in range(8)], []),
    ("random-12", [_rng.randint(1, 20) for _ in range(12)], []),
    ("random-10-down", [_rng.randint(1, 25) for _ in range(10)], [2, 7]),
    ("random-wide", [_rng.choice([1, 2, 50, 99, 100]) for _ in range(6)], [4]),
    ("random-40-down", [_rng.randint(1, 100) for _ in range(40)], [0, 13, 39]),
]


def lbalgo_sequence(weights: list[int], down: list[int], count: int) -> list[str]:
    group = BackendGroup(
        Backend("127.0.0.1", 1000 + i, weight, name=str(i)) for i, weight in enumerate(weights)
    )
    sched = SmoothWeightedRoundRobin(group)
    for i in down:
        sched.mark_down(str(i))
    return [sched.pick().key for _ in range(count)]


@pytest.mark.parametrize(("weights", "down"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_same_sequence_as_nginx(
    nginx_harness: NginxHarness, weights: list[int], down: list[int]
) -> None:
    backends = nginx_harness.backends(len(weights))
    proxy = nginx_harness.proxy(upstream_servers(backends, weights, down=down))
    period = sum(w for i, w in enumerate(weights) if i not in down)
    count = 2 * period + 7  # two whole periods, and a few picks into the third
    expected = lbalgo_sequence(weights, down, count)
    got = proxy.answers(count)
    assert got == expected
    # the comparison is only meaningful if nginx really spread the load by the weights
    for i, weight in enumerate(weights):
        assert got[: 2 * period].count(str(i)) == (0 if i in down else 2 * weight)
