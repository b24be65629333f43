"""The C accelerators against the pure-Python code they mirror, side by side.

    python benchmarks/accelerator.py            # 8, 50 and 500 backends (a few minutes)
    python benchmarks/accelerator.py --quick    # 8 and 50, few loops: checks that it runs

Both run in one process and in the same rounds: the pure-Python figures come from a second
copy of lbalgo imported with the accelerator off (``lbalgo.bench._pure``). Every figure is a
multiple of an empty Python method call measured in the same round, the best of the rounds
(on a shared machine other load only ever adds time). Two tables: issue 12's whole-request
rows, and the neighbours that must not get slower (a SWRR change and the first 10,000 picks,
a SWRR pick with slow start and passive health configured, sticky sessions, bounded-load
hashing). Printed as Markdown; nothing is written to docs/.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import lbalgo
from lbalgo.backend import BackendGroup
from lbalgo.bench._core import (
    Table,
    empty_call_ns,
    ns_per_call,
    pick_release_ns,
    sample_clients,
    sample_group,
    time_prepared,
)
from lbalgo.bench._pure import pure_group, pure_lbalgo
from lbalgo.bench.request import best_ratios, lease_ns, pair_ns, pick_ns


def _steady(module: Any, group: Any, **options: Any) -> Any:
    sched = module.SmoothWeightedRoundRobin(group, **options)
    for _ in range(2 * group.total_weight + 1):  # replaying its proven cycle
        sched.pick()
    return sched


def _both(group: BackendGroup) -> list[tuple[Any, Any]]:
    """``(module, its group)`` for lbalgo as installed and for the pure copy."""
    return [(lbalgo, group), (pure_lbalgo(), pure_group(group))]


def request_table(sizes: Sequence[int], loops: int, rounds: int) -> Table:
    table = Table(
        "The whole request: C accelerator / pure Python (multiples of an empty call)",
        ["backends", "row", "C", "pure Python", "pure / C", "goal"],
    )
    clients = sample_clients(1024)
    rows = [
        ("SWRR pick", "pick", False, "<= 3"),
        ("SWRR pick + release", "pair", False, "<= 6"),
        ("SWRR with connection()", "lease", False, "<= 16"),
        ("SourceIPHash pick", "pick", True, "-"),
        ("SourceIPHash pick + release", "pair", True, "<= 12"),
        ("SourceIPHash with connection()", "lease", True, "<= 20"),
    ]
    timers = {"pick": pick_ns, "pair": pair_ns, "lease": lease_ns}
    for n in sizes:
        group = sample_group(n)
        scheds = {}
        for module, grp in _both(group):
            scheds[module is lbalgo, False] = _steady(module, grp)
            scheds[module is lbalgo, True] = module.SourceIPHash(grp)

        def measure(scheds: dict[tuple[bool, bool], Any] = scheds) -> list[float]:
            figures = [empty_call_ns(loops)]
            for _, timer, hashed, _ in rows:
                for ours in (True, False):
                    figures.append(
                        timers[timer](scheds[ours, hashed], loops, clients if hashed else ())
                    )
            return figures

        ratios = best_ratios(measure, rounds)
        for i, (name, _, _, goal) in enumerate(rows):
            c, pure = ratios[2 * i], ratios[2 * i + 1]
            table.rows.append([n, name, c, pure, pure / c, goal])
    table.notes.append(f"best of {rounds} rounds, each figure a median of 5 runs of {loops:,}")
    return table


def neighbours_table(loops: int, rounds: int, quick: bool) -> Table:
    table = Table(
        "Nothing else got slower: C accelerator / pure Python (multiples of an empty call)",
        ["figure", "C", "pure Python", "pure / C"],
    )
    big = 50 if quick else 500
    after = 1_000 if quick else 10_000
    clients = sample_clients(1000)
    contenders: dict[str, list[Callable[[], float]]] = {}

    def change_then_picks(module: Any, group: Any) -> Callable[[], float]:
        victim = group.backends[len(group) // 2].key

        def prepare() -> Callable[[], None]:
            sched = _steady(module, group)

            def body() -> None:
                sched.mark_down(victim)
                pick = sched.pick
                for _ in range(after):
                    pick()

            return body

        return lambda: time_prepared(prepare) / after

    for module, group in _both(sample_group(big)):
        name = f"SWRR mark_down + first {after:,} picks, per pick, {big}"
        contenders.setdefault(name, []).append(change_then_picks(module, group))
        timed = _steady(module, group, slow_start=30.0, max_fails=3)
        contenders.setdefault(f"SWRR pick, slow_start and max_fails set, {big}", []).append(
            partial(ns_per_call, timed.pick, loops)
        )
        for cls in ("SmoothWeightedRoundRobin", "SourceIPHash", "WeightedLeastConnections"):
            sticky = module.StickySessions(getattr(module, cls)(group), max_sessions=1000)
            for client in clients:
                sticky.release(sticky.pick(client))
            contenders.setdefault(f"sticky ({cls}) pick + release, {big}", []).append(
                partial(pick_release_ns, sticky, loops, clients)
            )
    for n in (8, 50) if quick else (50, 500):
        for module, group in _both(sample_group(n, weighted=False)):
            bounded = module.SourceIPHash(group, balance_factor=1.25)
            for i in range(5 * n):  # a standing load, so the caps are in play
                bounded.pick(clients[i % len(clients)])
            contenders.setdefault(f"bounded-load hash pick + release, {n}", []).append(
                partial(pick_release_ns, bounded, loops, clients)
            )

    def measure() -> list[float]:
        figures = [empty_call_ns(loops)]
        for timers in contenders.values():
            figures.extend(timer() for timer in timers)
        return figures

    ratios = best_ratios(measure, rounds)
    for i, name in enumerate(contenders):
        c, pure = ratios[2 * i], ratios[2 * i + 1]
        table.rows.append([name, c, pure, pure / c])
    table.notes.append(f"best of {rounds} rounds; the same groups, clients and load both ways")
    return table


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few loops")
    parser.add_argument("--rounds", type=int, help="rounds per figure (default 5; quick 2)")
    args = parser.parse_args(argv)
    if lbalgo._accel.compiled("_hotpath") is None:
        raise SystemExit("lbalgo._hotpath is not built (or LBALGO_PURE_PYTHON is set)")
    sizes, loops, rounds = ((8, 50), 1_000, 2) if args.quick else ((8, 50, 500), 20_000, 5)
    rounds = args.rounds or rounds
    print(request_table(sizes, loops, rounds).to_markdown())
    print(neighbours_table(loops, rounds, args.quick).to_markdown())


if __name__ == "__main__":
    main()
