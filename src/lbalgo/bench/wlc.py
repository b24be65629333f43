"""Weighted least connections: pick + release on the heap ledger against the O(n) scan.

The scan is what a plain implementation does: walk every backend and keep the lowest
``open / weight`` (cross-multiplied, first in order on ties). It runs on the same
:class:`~lbalgo.scheduler.BaseScheduler` machinery as ours, with the same lean pick and
release (one lock, one pick counter), so both pay the same overhead and the ratio isolates
the choice. Both get the same group and the same standing load: half the backends hold
open connections, the other half are idle, as in a pool of long-lived connections.
"""

from __future__ import annotations

from lbalgo.backend import Backend, BackendGroup
from lbalgo.bench._core import (
    Table,
    empty_call_ns,
    load_half,
    median_rounds,
    pick_release_ns,
    sample_group,
)
from lbalgo.scheduler import BaseScheduler, Client, Exclude, _Slot
from lbalgo.wlc import WeightedLeastConnections

__all__ = ["ScanLeastConnections", "run"]

SIZES = (8, 50, 500)
QUICK_SIZES = (8, 50)
ROUNDS = 5


class ScanLeastConnections(BaseScheduler):
    """The naive weighted least connections: an O(n) scan per pick (the baseline)."""

    def __init__(self, group: BackendGroup) -> None:
        self._open: dict[str, int] = {}
        self._eligible_slots: list[tuple[_Slot, int]] = []
        super().__init__(group)

    def _rebuild(self) -> None:
        now = self._now()
        self._eligible_slots = [
            (slot, weight) for slot in self._order if (weight := self._fine_weight(slot, now))
        ]
        self._open = {slot.key: self._open.get(slot.key, 0) for slot in self._order}

    def _choose(self, client: Client, exclude: frozenset[str], now: float) -> _Slot:
        counts = self._open
        best: _Slot | None = None
        best_open, best_weight = 0, 1
        for slot, weight in self._eligible_slots:
            if exclude and slot.key in exclude:
                continue
            count = counts[slot.key]
            if best is None or count * best_weight < best_open * weight:
                best, best_open, best_weight = slot, count, weight
        if best is None:
            raise self._no_backend(exclude)
        counts[best.key] = best_open + 1
        return best

    def _on_release(self, slot: _Slot) -> None:
        self._open[slot.key] -= 1

    # the same lean pick and release as WeightedLeastConnections' fast path, so that the
    # ratio compares the choice and not the surrounding machinery
    def pick(self, client: Client = None, *, exclude: Exclude = ()) -> Backend:
        if exclude:
            return super().pick(client, exclude=exclude)
        with self._lock:
            slot = self._choose(client, frozenset(), 0.0)
            next(slot.picks)
        return slot.backend

    def release(self, backend: Backend, *, failed: bool = False) -> None:
        key = backend.key
        with self._lock:
            slot = self._slots.get(key)
            if slot is not None and self._open[key]:
                slot.released += 1
                self._open[key] -= 1


def run(quick: bool = False) -> list[Table]:
    """Pick + release cost of :class:`WeightedLeastConnections` against the scan, by size.

    The contenders are timed in alternation, ``ROUNDS`` times over, and every figure is the
    median of the per-round ratios: on a shared machine the load drifts between two
    measurements taken seconds apart, much less within one round.
    """
    sizes = QUICK_SIZES if quick else SIZES
    loops = 1_000 if quick else 10_000
    rounds = 2 if quick else ROUNDS
    contenders = []
    for n in sizes:
        group = sample_group(n)
        ours, scan = WeightedLeastConnections(group), ScanLeastConnections(group)
        load_half(ours, group)
        load_half(scan, group)
        # the scan is slow: fewer loops, about the same precision
        contenders.append((ours, scan, max(loops // 10, loops * 8 // n)))
    small, large = min(sizes), max(sizes)

    def measure() -> list[float]:
        floor = empty_call_ns(loops)
        figures: list[float] = []
        ours_by_size = {}
        for n, (ours_sched, scan_sched, scan_loops) in zip(sizes, contenders, strict=True):
            ours = pick_release_ns(ours_sched, loops)
            scan = pick_release_ns(scan_sched, scan_loops)
            ours_by_size[n] = ours
            figures += [scan / ours, ours / floor, scan / floor]
        return [*figures, ours_by_size[large] / ours_by_size[small]]

    *figures, growth = median_rounds(measure, rounds)
    table = Table(
        "Weighted least connections: pick + release, half the backends holding connections",
        [
            "backends",
            "scan / ours (x faster)",
            "ours / empty call",
            "scan / empty call",
            "goal (issue 5)",
        ],
    )
    for i, n in enumerate(sizes):
        goal = "scan / ours >= 10" if n >= 500 else "-"
        table.rows.append([n, *figures[3 * i : 3 * i + 3], goal])
    table.notes.append(
        f"ours at {large} backends / ours at {small}: {growth:.2f} "
        "(O(log n) heap; goal (issue 5): <= 2.5)"
    )
    table.notes.append(
        f"median over {rounds} rounds of per-round ratios; in each round every figure is a "
        f"median of 5 runs ({loops:,} pick+release pairs for ours, fewer for the scan), the "
        "contenders timed one after the other; like for like: the same group and standing "
        "load, and both take the scheduler lock and count picks on the same BaseScheduler "
        "slots"
    )
    table.notes.append(
        "no peer library: no Python package offers weighted least connections to compare"
    )
    return [table]
