"""The whole request: what a proxy pays per request, for each algorithm, at 8, 50 and 500
backends, as multiples of an empty method call measured in the same round.

A proxy calls ``pick`` and ``release`` (or ``with sched.connection():``) on every request, so
the headline figure of each algorithm is the pair, not the pick alone. Three tables:

- smooth weighted round robin (weights 1..100, replaying its cycle): pick, pick + release,
  ``with connection()``, with the C accelerator where it is built and, in the same rounds,
  the pure-Python fallback (:mod:`lbalgo.bench._pure`);
- source-IP hashing (1,024 IPv4 clients in turn): the same three, both ways;
- weighted least connections (half the backends holding connections): pick + release and
  ``with connection()``, against a bare O(n) scan (:class:`~lbalgo.testing.reference.
  ScanLeastConnections`), and a health flap (``mark_down`` + ``mark_up``) at the largest size.

Only the public interface is timed, so the same module measures any version of lbalgo.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from lbalgo._accel import compiled
from lbalgo.backend import BackendGroup
from lbalgo.bench._core import (
    Table,
    empty_call_ns,
    load_half,
    ns_per_call,
    sample_clients,
    sample_group,
    time_loop,
)
from lbalgo.bench._pure import pure_group, pure_lbalgo
from lbalgo.source_ip_hash import SourceIPHash
from lbalgo.swrr import SmoothWeightedRoundRobin
from lbalgo.testing.reference import ScanLeastConnections
from lbalgo.wlc import WeightedLeastConnections

__all__ = [
    "best_ratios",
    "hash_table",
    "lease_ns",
    "pair_ns",
    "pick_ns",
    "run",
    "swrr_table",
    "wlc_table",
]

SIZES = (8, 50, 500)
QUICK_SIZES = (8, 50)
ROUNDS = 5
_CLIENTS = 1024  # a power of two: the loops pick the next client with a mask


def best_ratios(measure: Callable[[], Sequence[float]], rounds: int) -> list[float]:
    """Call ``measure()`` ``rounds`` times; it returns the empty call's time first, then the
    contenders' times (each a median of 5 runs). Each figure is the best (lowest) time over
    the rounds divided by the best time of the empty call: on a shared machine other load
    only ever adds time, so the least disturbed round of each is the one to compare."""
    samples = [measure() for _ in range(rounds)]
    best = [min(column) for column in zip(*samples, strict=True)]
    return [figure / best[0] for figure in best[1:]]


def pick_ns(sched: Any, loops: int, clients: Sequence[str]) -> float:
    """Nanoseconds per ``pick`` (a median of 5 runs of ``loops``), the clients in turn."""
    pick = sched.pick
    if not clients:
        return ns_per_call(pick, loops)
    mask = len(clients) - 1

    def body(n: int) -> None:
        for i in range(n):
            pick(clients[i & mask])

    return time_loop(body, loops)


def pair_ns(sched: Any, loops: int, clients: Sequence[str]) -> float:
    """Nanoseconds per ``release(pick())``: the whole request by hand. The clients (a power
    of two of them) are taken in turn by a mask, cheaper than the modulo of
    :func:`~lbalgo.bench._core.pick_release_ns`, so the loop adds less to what it measures."""
    pick, release = sched.pick, sched.release
    if not clients:

        def body(n: int) -> None:
            for _ in range(n):
                release(pick())

        return time_loop(body, loops)
    mask = len(clients) - 1

    def body_clients(n: int) -> None:
        for i in range(n):
            release(pick(clients[i & mask]))

    return time_loop(body_clients, loops)


def lease_ns(sched: Any, loops: int, clients: Sequence[str]) -> float:
    """Nanoseconds per ``with sched.connection():`` block: the whole request as a lease."""
    connection = sched.connection
    if not clients:

        def body(n: int) -> None:
            for _ in range(n):
                with connection():
                    pass

        return time_loop(body, loops)
    mask = len(clients) - 1

    def body_clients(n: int) -> None:
        for i in range(n):
            with connection(clients[i & mask]):
                pass

    return time_loop(body_clients, loops)


def _three(
    title: str,
    build: Callable[[Any], Any],
    pure_build: Callable[[Any], Any],
    sizes: Sequence[int],
    loops: int,
    rounds: int,
    clients: Sequence[str],
    goals: Sequence[str],
) -> Table:
    table = Table(
        title,
        [
            "backends",
            "pick",
            "pick + release",
            "with connection()",
            "pure Python: pick",
            "pure: pick + release",
            "pure: with connection()",
            "goal (issue 12)",
        ],
    )
    for n in sizes:
        group = sample_group(n)
        sched, pure = build(group), pure_build(pure_group(group))

        def measure(sched: Any = sched, pure: Any = pure) -> list[float]:
            return [
                empty_call_ns(loops),
                pick_ns(sched, loops, clients),
                pair_ns(sched, loops, clients),
                lease_ns(sched, loops, clients),
                pick_ns(pure, loops, clients),
                pair_ns(pure, loops, clients),
                lease_ns(pure, loops, clients),
            ]

        table.rows.append([n, *best_ratios(measure, rounds), ", ".join(goals)])
    table.notes.append(
        "multiples of an empty method call (each time a median of 5 runs of "
        f"{loops:,} calls, the best of {rounds} rounds taken back to back)"
    )
    accelerated = compiled("_hotpath") is not None
    table.notes.append(
        "the first three columns: what users get, "
        + ("with the C accelerator (lbalgo._hotpath)" if accelerated else "pure Python (no C")
        + ("" if accelerated else " accelerator built, or LBALGO_PURE_PYTHON set)")
        + "; the pure-Python columns: the fallback, measured in the same rounds "
        "(a second copy of lbalgo imported with the accelerator off)"
    )
    return table


def _steady_swrr(group: BackendGroup) -> SmoothWeightedRoundRobin:
    sched = SmoothWeightedRoundRobin(group)
    _steady(sched, group.total_weight)
    return sched


def _steady_pure_swrr(group: Any) -> Any:
    sched = pure_lbalgo().SmoothWeightedRoundRobin(group)
    _steady(sched, group.total_weight)
    return sched


def _steady(sched: Any, total_weight: int) -> None:
    for _ in range(2 * total_weight + 1):  # past the generation: replaying its cycle
        sched.pick()


def swrr_table(sizes: Sequence[int], loops: int, rounds: int) -> Table:
    """Smooth weighted round robin: the whole request at each size."""
    table = _three(
        "Smooth weighted round robin: the whole request, weights 1..100",
        _steady_swrr,
        _steady_pure_swrr,
        sizes,
        loops,
        rounds,
        (),
        ("pick <= 3", "pair <= 6", "connection <= 16"),
    )
    table.notes.append("steady state: the rotation replays its proven cycle")
    return table


def hash_table(sizes: Sequence[int], loops: int, rounds: int) -> Table:
    """Source-IP hashing: the whole request at each size."""
    table = _three(
        "Source-IP hash: the whole request, 1,024 IPv4 clients in turn",
        SourceIPHash,
        lambda group: pure_lbalgo().SourceIPHash(group),
        sizes,
        loops,
        rounds,
        sample_clients(_CLIENTS),
        ("pair <= 12", "connection <= 20"),
    )
    table.notes.append("each client an IPv4 string, as a proxy reads it from its socket")
    return table


def wlc_table(sizes: Sequence[int], loops: int, rounds: int) -> Table:
    """Weighted least connections: pick + release and ``with connection()`` against a bare
    O(n) scan, and a health flap at the largest size."""
    table = Table(
        "Weighted least connections: the whole request, half the backends holding connections",
        [
            "backends",
            "pick + release",
            "with connection()",
            "bare scan pick + release",
            "ours / scan",
            "goal (issue 12)",
        ],
    )
    for n in sizes:
        group = sample_group(n)
        ours, scan = WeightedLeastConnections(group), ScanLeastConnections(group)
        load_half(ours, group)
        load_half(scan, group)
        scan_loops = max(loops // 10, loops * 8 // n)

        def measure(
            ours: WeightedLeastConnections = ours,
            scan: ScanLeastConnections = scan,
            scan_loops: int = scan_loops,
        ) -> list[float]:
            return [
                empty_call_ns(loops),
                pair_ns(ours, loops, ()),
                lease_ns(ours, loops, ()),
                pair_ns(scan, scan_loops, ()),
            ]

        pair, lease, bare = best_ratios(measure, rounds)
        goal = "pair <= 25, connection <= 35" + (", ours / scan <= 1.2" if n <= 8 else "")
        table.rows.append([n, pair, lease, bare, pair / bare, goal])
    n = max(sizes)
    group = sample_group(n)
    sched = WeightedLeastConnections(group)
    load_half(sched, group)
    keys = group.keys()
    flaps = 50 if n < 500 else 200

    def flap(count: int) -> None:
        for i in range(count):
            key = keys[(i * 7) % len(keys)]
            sched.mark_down(key)
            sched.mark_up(key)

    def measure_flap() -> list[float]:
        return [empty_call_ns(loops), time_loop(flap, flaps) / 2]

    (per_mark,) = best_ratios(measure_flap, rounds)
    table.notes.append(
        f"a health flap at {n} backends: mark_down or mark_up costs {per_mark:,.0f} empty "
        "calls (goal at 500: <= 1,000)"
    )
    table.notes.append(
        "the bare scan: the O(n) loop with no lock, no health, no stats "
        "(lbalgo.testing.reference.ScanLeastConnections); the same group and standing load; "
        f"each figure a multiple of an empty method call, the best of {rounds} rounds"
    )
    return table


def run(quick: bool = False) -> list[Table]:
    """All three tables (``quick``: 8 and 50 backends, few loops, for the smoke test)."""
    sizes = QUICK_SIZES if quick else SIZES
    loops = 1_000 if quick else 20_000
    rounds = 2 if quick else ROUNDS
    return [
        swrr_table(sizes, loops, rounds),
        hash_table(sizes, loops, rounds),
        wlc_table(sizes, loops, rounds),
    ]


if __name__ == "__main__":
    for table in run():
        print(table.to_text())
