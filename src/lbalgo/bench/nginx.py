"""nginx-compatible modes: what exact parity with nginx costs.

- ``WeightedLeastConnections(compat="nginx")`` (nginx's ``least_conn`` ties) against the
  default WLC (WF2Q ties) and the O(n) scan nginx itself does, pick + release, at 8, 50 and
  500 backends with half of them holding connections (so most picks are ties among the idle
  half: nginx's round-robin step over the tied peers runs on nearly every pick).
- ``SmoothWeightedRoundRobin`` steady-state pick with ``max_fails`` set (nginx's passive
  health and effective weights armed, no failure happening) against without.
"""

from __future__ import annotations

import time

from lbalgo.bench._core import (
    Table,
    empty_call_ns,
    load_half,
    median_rounds,
    ns_per_call,
    pick_release_ns,
    sample_group,
)
from lbalgo.swrr import SmoothWeightedRoundRobin
from lbalgo.testing.reference import ScanLeastConnections
from lbalgo.wlc import WeightedLeastConnections

__all__ = ["run"]

SIZES = (8, 50, 500)
QUICK_SIZES = (8, 50)
ROUNDS = 5


def _least_conn(quick: bool) -> Table:
    sizes = QUICK_SIZES if quick else SIZES
    loops = 1_000 if quick else 10_000
    rounds = 2 if quick else ROUNDS
    contenders = []
    for n in sizes:
        group = sample_group(n)
        nginx = WeightedLeastConnections(group, compat="nginx")
        default = WeightedLeastConnections(group)
        scan = ScanLeastConnections(group)
        for sched in (nginx, default, scan):
            load_half(sched, group)
        contenders.append((nginx, default, scan, max(loops // 10, loops * 8 // n)))

    def measure() -> list[float]:
        floor = empty_call_ns(loops)
        figures: list[float] = []
        for nginx_sched, default_sched, scan_sched, scan_loops in contenders:
            nginx = pick_release_ns(nginx_sched, loops)
            default = pick_release_ns(default_sched, loops)
            scan = pick_release_ns(scan_sched, scan_loops)
            figures += [nginx / default, scan / nginx, nginx / floor]
        return figures

    figures = median_rounds(measure, rounds)
    table = Table(
        "least_conn parity: WeightedLeastConnections(compat='nginx'), pick + release, half "
        "the backends holding connections",
        ["backends", "nginx-compat / default", "scan / nginx-compat (x faster)",
         "nginx-compat / empty call"],
    )
    for i, n in enumerate(sizes):
        table.rows.append([n, *figures[3 * i : 3 * i + 3]])
    table.notes.append(
        f"median over {rounds} rounds of per-round ratios, the three contenders timed one "
        "after the other on the same group and standing load; the scan is the O(n) loop "
        "nginx runs (lowest open/weight, first in order on ties)"
    )
    return table


def _swrr(quick: bool) -> Table:
    loops = 20_000 if quick else 200_000
    rounds = 2 if quick else ROUNDS
    sizes = QUICK_SIZES if quick else SIZES
    pairs = []
    for n in sizes:
        group = sample_group(n)
        plain = SmoothWeightedRoundRobin(group)
        armed = SmoothWeightedRoundRobin(
            group, max_fails=1, fail_timeout=10.0, clock=time.monotonic
        )
        for sched in (plain, armed):
            for _ in range(3 * group.total_weight):  # into the O(1) replay
                sched.pick()
        pairs.append((plain, armed))

    def measure() -> list[float]:
        floor = empty_call_ns(loops)
        figures: list[float] = []
        for plain, armed in pairs:
            plain_ns = ns_per_call(plain.pick, loops)
            armed_ns = ns_per_call(armed.pick, loops)
            figures += [armed_ns / plain_ns, armed_ns / floor]
        return figures

    figures = median_rounds(measure, rounds)
    table = Table(
        "SWRR steady-state pick with max_fails (nginx's passive health and effective "
        "weights armed, no failure) against without",
        ["backends", "with max_fails / without", "with max_fails / empty call"],
    )
    for i, n in enumerate(sizes):
        table.rows.append([n, *figures[2 * i : 2 * i + 2]])
    table.notes.append(
        f"median over {rounds} rounds; {loops:,} picks per figure after three periods, so "
        "both serve from the replay"
    )
    return table


def run(quick: bool = False) -> list[Table]:
    """The two parity tables (see the module docstring)."""
    return [_least_conn(quick), _swrr(quick)]
