"""Weighted least connections: the whole request, the C-accelerated ledger and the pure-Python
one side by side, against a bare O(n) scan.

The scan (:class:`~lbalgo.testing.reference.ScanLeastConnections`) is what a plain
implementation does: walk every backend and keep the lowest ``open / weight``
(cross-multiplied, first in order on ties), with no lock, no health marks and no statistics,
so the comparison flatters it. Every contender gets the same group and the same standing
load: half the backends hold open connections, the other half are idle, as in a pool of
long-lived connections. The accelerated scheduler is the default one
(``WeightedLeastConnections(group)``: ``lbalgo._wf2q_c`` when it is built); the pure-Python
one runs on a :class:`~lbalgo.local_ledger.PurePythonLedger`, which is what the default
becomes where no C compiler was found or under ``LBALGO_PURE_PYTHON=1``. Both are timed in
the same rounds, so their ratio is measured side by side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lbalgo.backend import BackendGroup
from lbalgo.bench._core import (
    Table,
    empty_call_ns,
    load_half,
    pick_release_ns,
    sample_group,
    time_loop,
)
from lbalgo.bench.request import best_ratios
from lbalgo.local_ledger import ACCELERATED, PurePythonLedger
from lbalgo.testing.reference import ScanLeastConnections
from lbalgo.wlc import WeightedLeastConnections

__all__ = ["lease_ns", "run", "side_by_side"]

SIZES = (8, 50, 500)
QUICK_SIZES = (8, 50)
ROUNDS = 5


def lease_ns(sched: Any, loops: int) -> float:
    """Nanoseconds per ``with sched.connection(): pass`` (median of the runs of ``loops``)."""
    connection = sched.connection

    def body(n: int) -> None:
        for _ in range(n):
            with connection():
                pass

    return time_loop(body, loops)


def _contenders(group: BackendGroup) -> tuple[Any, Any, ScanLeastConnections]:
    fast = WeightedLeastConnections(group)
    pure = WeightedLeastConnections(group, ledger=PurePythonLedger())
    scan = ScanLeastConnections(group)
    for contender in (fast, pure, scan):
        load_half(contender, group)
    return fast, pure, scan


def _flaps(sched: WeightedLeastConnections, keys: tuple[str, ...]) -> Callable[[int], None]:
    def flap(count: int) -> None:
        for i in range(count):
            key = keys[(i * 7) % len(keys)]
            sched.mark_down(key)
            sched.mark_up(key)

    return flap


def side_by_side(sizes: tuple[int, ...], loops: int, rounds: int) -> Table:
    """Pick + release and ``with connection()``, accelerated and pure Python, and the bare
    scan, by size; a health flap on both at the largest size."""
    table = Table(
        "Weighted least connections: the whole request, C and pure Python side by side, "
        "half the backends holding connections",
        [
            "backends",
            "pick + release: C",
            "pick + release: Python",
            "with connection(): C",
            "with connection(): Python",
            "bare scan pick + release",
            "C / scan",
            "Python / scan",
            "goal (issue 12)",
        ],
    )
    for n in sizes:
        fast, pure, scan = _contenders(sample_group(n))
        scan_loops = max(loops // 10, loops * 8 // n)

        def measure(
            fast: Any = fast, pure: Any = pure, scan: Any = scan, sl: int = scan_loops
        ) -> list[float]:
            return [
                empty_call_ns(loops),
                pick_release_ns(fast, loops),
                pick_release_ns(pure, loops),
                lease_ns(fast, loops),
                lease_ns(pure, loops),
                pick_release_ns(scan, sl),
            ]

        pair, pure_pair, lease, pure_lease, bare = best_ratios(measure, rounds)
        goal = "pair <= 25, connection <= 35" + (", C / scan <= 1.2" if n <= 8 else "")
        table.rows.append(
            [n, pair, pure_pair, lease, pure_lease, bare, pair / bare, pure_pair / bare, goal]
        )
    n = max(sizes)
    group = sample_group(n)
    keys = group.keys()
    fast, pure, _ = _contenders(group)
    flaps = 50 if n < 500 else 200
    flap_fast, flap_pure = _flaps(fast, keys), _flaps(pure, keys)

    def measure_flap() -> list[float]:
        return [
            empty_call_ns(loops),
            time_loop(flap_fast, flaps) / 2,
            time_loop(flap_pure, flaps) / 2,
        ]

    per_mark, per_mark_pure = best_ratios(measure_flap, rounds)
    table.notes.append(
        f"a health flap at {n} backends: mark_down or mark_up costs {per_mark:,.0f} empty "
        f"calls in C, {per_mark_pure:,.0f} in pure Python (goal at 500: <= 1,000)"
    )
    if not ACCELERATED:
        table.notes.append(
            "lbalgo._wf2q_c is not in use here (not built, or LBALGO_PURE_PYTHON set): "
            "both columns run the pure-Python ledger"
        )
    table.notes.append(
        "C: the default scheduler on lbalgo._wf2q_c; Python: the same on a PurePythonLedger; "
        "the bare scan: the O(n) loop with no lock, no health, no stats "
        "(lbalgo.testing.reference.ScanLeastConnections); the same group and standing load; "
        f"each figure a multiple of an empty method call, the best of {rounds} rounds"
    )
    return table


def run(quick: bool = False) -> list[Table]:
    """The side-by-side table (``quick``: small sizes and few loops, for the smoke test)."""
    sizes = QUICK_SIZES if quick else SIZES
    return [side_by_side(sizes, 1_000 if quick else 20_000, 2 if quick else ROUNDS)]
