"""Operating features: what slow start, passive health, sticky sessions, bounded loads and
stats() cost on the hot path, as ratios to an empty method call measured in the same run.

- Smooth weighted round robin with ``slow_start`` and ``max_fails`` configured but no ramp or
  suspension in progress must stay on its O(1) fast path (goal: at most 4 empty calls at 500
  backends, the foundation's target for a plain pick).
- A sticky session's lookup (a warm binding) against the wrapped scheduler's own pick.
- Bounded-load hashing (``balance_factor``) against plain consistent hashing, pick + release.
- ``stats()`` at 500 backends, which an operator may poll.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from lbalgo.backend import Backend, BackendGroup
from lbalgo.bench._core import Table, empty_call_ns, ns_per_call, time_loop
from lbalgo.scheduler import BaseScheduler
from lbalgo.sticky import StickySessions

__all__ = ["run"]

N = 500
QUICK_N = 20


def _group(n: int) -> BackendGroup:
    rng = random.Random(n)  # fixed: every contender sees the same weights
    return BackendGroup(
        Backend(f"10.0.{i // 250}.{i % 250 + 1}", 8080, rng.randint(1, 100)) for i in range(n)
    )


def _clients(count: int) -> list[str]:
    return [f"172.{16 + (i >> 16 & 15)}.{i >> 8 & 255}.{i & 255}" for i in range(count)]


def _class(module: str, name: str) -> type[BaseScheduler] | None:
    import importlib

    try:
        cls: type[BaseScheduler] = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    return cls


def _pick_ns(pick: Callable[[], object], loops: int) -> float:
    return ns_per_call(pick, loops)


def _pick_release_ns(
    sched: BaseScheduler | StickySessions, clients: list[str], loops: int
) -> float:
    pick, release = sched.pick, sched.release
    count = len(clients)

    def body(n: int) -> None:
        for i in range(n):
            release(pick(clients[i % count]))

    return time_loop(body, loops)


def _swrr_table(n: int, loops: int, floor: float) -> Table:
    table = Table(
        f"Smooth weighted round robin at {n} backends: pick with timed features configured",
        ["configuration", "pick / empty call", "vs plain pick"],
    )
    swrr = _class("lbalgo.swrr", "SmoothWeightedRoundRobin")
    if swrr is None:
        table.notes.append("skipped: lbalgo.swrr is not part of this installation")
        return table
    group = _group(n)
    configs: list[tuple[str, dict[str, object]]] = [
        ("plain", {}),
        ("slow_start=60", {"slow_start": 60.0}),
        ("slow_start=60, max_fails=3", {"slow_start": 60.0, "max_fails": 3}),
    ]
    plain = 0.0
    for label, options in configs:
        sched = swrr(group, **options)  # type: ignore[arg-type]
        for _ in range(2 * group.total_weight):  # reach the steady state (the cycle replay)
            sched.pick()
        ns = _pick_ns(sched.pick, loops)
        plain = plain or ns
        table.rows.append([label, ns / floor, ns / plain])
    table.notes.append(
        "steady state: no ramp and no suspension in progress (goal: pick <= 4 empty calls)"
    )
    return table


def _sticky_table(n: int, sessions: int, loops: int, floor: float) -> Table:
    table = Table(
        f"Sticky sessions at {n} backends, {sessions:,} warm sessions: pick + release",
        [
            "wrapped scheduler",
            "sticky / empty call",
            "wrapped alone / empty call",
            "sticky / wrapped",
        ],
    )
    group = _group(n)
    clients = _clients(sessions)
    for module, name in (
        ("lbalgo.swrr", "SmoothWeightedRoundRobin"),
        ("lbalgo.wlc", "WeightedLeastConnections"),
        ("lbalgo.source_ip_hash", "SourceIPHash"),
    ):
        cls = _class(module, name)
        if cls is None:
            table.notes.append(f"skipped {name}: not part of this installation")
            continue
        sticky = StickySessions(cls(group), max_sessions=sessions)
        for client in clients:  # bind every session first: the figures are warm lookups
            sticky.release(sticky.pick(client))
        wrapped = _pick_release_ns(cls(group), clients, loops)
        ours = _pick_release_ns(sticky, clients, loops)
        table.rows.append([name, ours / floor, wrapped / floor, ours / wrapped])
    table.notes.append(
        "a warm lookup: one dict lookup and an O(1) count of the pick on the bound backend; "
        "a new session costs the wrapped scheduler's pick on top"
    )
    return table


def _bounded_table(n: int, clients_count: int, loops: int, floor: float) -> Table:
    table = Table(
        f"Bounded-load hashing at {n} backends: pick + release",
        ["configuration", "pick+release / empty call", "vs plain hashing"],
    )
    cls = _class("lbalgo.source_ip_hash", "SourceIPHash")
    if cls is None:
        table.notes.append("skipped: lbalgo.source_ip_hash is not part of this installation")
        return table
    group = _group(n)
    clients = _clients(clients_count)
    plain = _pick_release_ns(cls(group), clients, loops)
    table.rows.append(["plain consistent hashing", plain / floor, 1.0])
    try:
        bounded = cls(group, balance_factor=1.25)  # type: ignore[call-arg]
    except TypeError:
        table.notes.append("skipped balance_factor: this SourceIPHash does not take it")
        return table
    # a loaded state: 4 connections held per backend, so caps are in play
    for i in range(4 * n):
        bounded.pick(clients[i % len(clients)])
    ns = _pick_release_ns(bounded, clients, loops)
    table.rows.append(["balance_factor=1.25, 4 x n held", ns / floor, ns / plain])
    return table


def _stats_table(n: int, loops: int, floor: float) -> Table:
    table = Table(
        f"stats() at {n} backends",
        ["scheduler", "stats() / empty call", "per backend / empty call"],
    )
    group = _group(n)
    for module, name in (
        ("lbalgo.swrr", "SmoothWeightedRoundRobin"),
        ("lbalgo.wlc", "WeightedLeastConnections"),
    ):
        cls = _class(module, name)
        if cls is None:
            table.notes.append(f"skipped {name}: not part of this installation")
            continue
        sched = cls(group, slow_start=60.0, max_fails=3)
        ns = _pick_ns(sched.stats, loops)
        table.rows.append([name, ns / floor, ns / floor / n])
    table.notes.append("O(n): one small frozen record per backend; cheap enough to poll")
    return table


def run(quick: bool = False) -> list[Table]:
    """The operating features' hot-path costs (see the module docstring)."""
    n = QUICK_N if quick else N
    loops = 2_000 if quick else 100_000
    floor = empty_call_ns(loops)
    return [
        _swrr_table(n, loops, floor),
        _sticky_table(n, 200 if quick else 10_000, loops, floor),
        _bounded_table(n, 200 if quick else 10_000, loops // 2, floor),
        _stats_table(n, 20 if quick else 500, floor),
    ]
