"""Operating features: what slow start, passive health, sticky sessions and stats() cost on
the hot path, as ratios to an empty method call measured in the same run.

- Smooth weighted round robin with ``slow_start`` and ``max_fails`` configured but no ramp or
  suspension in progress must stay on its O(1) fast path (issue 7's goal: at most 4 empty calls
  at 500 backends, the foundation's target for a plain pick).
- A sticky session's lookup (a warm binding) against the wrapped scheduler's own pick.
- ``stats()`` at 500 backends, which an operator may poll.

Bounded-load hashing (``balance_factor``) against plain consistent hashing is measured in
:mod:`lbalgo.bench.hashing`, at every group size.
"""

from __future__ import annotations

from lbalgo._base import BaseScheduler
from lbalgo.bench._core import (
    Table,
    empty_call_ns,
    median_rounds,
    ns_per_call,
    pick_release_ns,
    sample_clients,
    sample_group,
)
from lbalgo.source_ip_hash import SourceIPHash
from lbalgo.sticky import StickySessions
from lbalgo.swrr import SmoothWeightedRoundRobin
from lbalgo.wlc import WeightedLeastConnections

__all__ = ["run"]

N = 500
QUICK_N = 20
ROUNDS = 5
"""Rounds of back-to-back measurements behind the round-robin ratios."""


def _swrr_table(n: int, loops: int, rounds: int) -> Table:
    table = Table(
        f"Smooth weighted round robin at {n} backends: pick with timed features configured",
        ["configuration", "pick / empty call", "vs plain pick", "goal (issue 7)"],
    )
    group = sample_group(n)
    configs: list[tuple[str, SmoothWeightedRoundRobin]] = [
        ("plain", SmoothWeightedRoundRobin(group)),
        ("slow_start=60", SmoothWeightedRoundRobin(group, slow_start=60.0)),
        (
            "slow_start=60, max_fails=3",
            SmoothWeightedRoundRobin(group, slow_start=60.0, max_fails=3),
        ),
    ]
    for _, sched in configs:
        for _ in range(2 * group.total_weight):  # reach the steady state (the cycle replay)
            sched.pick()

    def measure() -> list[float]:
        floor = empty_call_ns(loops)
        costs = [ns_per_call(sched.pick, loops) for _, sched in configs]
        return [cost / floor for cost in costs] + [cost / costs[0] for cost in costs]

    figures = median_rounds(measure, rounds)
    for i, (label, _) in enumerate(configs):
        goal = "-" if label == "plain" else "pick / empty call <= 4"
        table.rows.append([label, figures[i], figures[len(configs) + i], goal])
    table.notes.append(
        "steady state: no ramp and no suspension in progress; the same group for every "
        f"configuration, all timed back to back with the empty call, median over {rounds} "
        "rounds"
    )
    return table


def _sticky_table(n: int, sessions: int, loops: int) -> Table:
    table = Table(
        f"Sticky sessions at {n} backends, {sessions:,} warm sessions: pick + release",
        [
            "wrapped scheduler",
            "sticky / empty call",
            "wrapped alone / empty call",
            "sticky / wrapped",
        ],
    )
    group = sample_group(n)
    clients = sample_clients(sessions)
    classes: tuple[type[BaseScheduler], ...] = (
        SmoothWeightedRoundRobin,
        WeightedLeastConnections,
        SourceIPHash,
    )
    for cls in classes:
        sticky = StickySessions(cls(group), max_sessions=sessions)
        for client in clients:  # bind every session first: the figures are warm lookups
            sticky.release(sticky.pick(client))
        floor = empty_call_ns(loops)
        wrapped = pick_release_ns(cls(group), loops, clients)
        ours = pick_release_ns(sticky, loops, clients)
        table.rows.append([cls.__name__, ours / floor, wrapped / floor, ours / wrapped])
    table.notes.append(
        "the same group and clients for both; a warm lookup: one dict lookup and an O(1) "
        "count of the pick on the bound backend; a new session costs the wrapped "
        "scheduler's pick on top"
    )
    return table


def _stats_table(n: int, loops: int) -> Table:
    table = Table(
        f"stats() at {n} backends",
        ["scheduler", "stats() / empty call", "per backend / empty call"],
    )
    group = sample_group(n)
    classes: tuple[type[SmoothWeightedRoundRobin | WeightedLeastConnections], ...] = (
        SmoothWeightedRoundRobin,
        WeightedLeastConnections,
    )
    for cls in classes:
        sched = cls(group, slow_start=60.0, max_fails=3)
        floor = empty_call_ns(100 * loops)
        ns = ns_per_call(sched.stats, loops)
        table.rows.append([cls.__name__, ns / floor, ns / floor / n])
    table.notes.append("O(n): one small frozen record per backend; cheap enough to poll")
    return table


def run(quick: bool = False) -> list[Table]:
    """The operating features' hot-path costs (see the module docstring)."""
    n = QUICK_N if quick else N
    loops = 2_000 if quick else 100_000
    return [
        _swrr_table(n, loops, 2 if quick else ROUNDS),
        _sticky_table(n, 200 if quick else 10_000, loops),
        _stats_table(n, 20 if quick else 500),
    ]
