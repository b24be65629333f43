"""Shared measurement machinery for the benchmark modules: the tables, the timers, and the
inputs every contender is given (the same groups, the same clients, the same standing load)."""

from __future__ import annotations

import gc
import ipaddress
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from lbalgo.backend import Backend, BackendGroup

__all__ = [
    "Table",
    "counting_samples",
    "empty_call_ns",
    "load_half",
    "median_rounds",
    "ns_per_call",
    "pick_release_ns",
    "sample_clients",
    "sample_group",
    "sample_taken",
    "time_loop",
    "time_prepared",
]

REPEATS = 5
"""Each figure is the median of this many timed runs."""


@dataclass
class Table:
    """One benchmark table: a title, column names, rows of cells and notes under it."""

    title: str
    columns: Sequence[str]
    rows: list[Sequence[object]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        """The table as GitHub-flavoured Markdown, notes as a list under it."""
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines.extend("| " + " | ".join(_cell(c) for c in row) + " |" for row in self.rows)
        if self.notes:
            lines.append("")
            lines.extend(f"- {note}" for note in self.notes)
        return "\n".join(lines) + "\n"

    def to_text(self) -> str:
        """The table as aligned plain text for a terminal."""
        cells = [list(self.columns)] + [[_cell(c) for c in row] for row in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        out = [self.title, "-" * len(self.title)]
        for row in cells:
            out.append("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        out.extend(f"  * {note}" for note in self.notes)
        return "\n".join(out) + "\n"


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


_on_sample: list[Callable[[], None]] = []


@contextmanager
def counting_samples(callback: Callable[[], None]) -> Iterator[None]:
    """Call ``callback()`` after every timed sample taken inside the block: what the progress
    of a benchmark module counts (its rate, and its time left against the expected count)."""
    _on_sample.append(callback)
    try:
        yield
    finally:
        _on_sample.remove(callback)


def sample_taken() -> None:
    """Count one timed sample; the helpers below call it, and so does a module with its own
    timer (the httpx transport's batches)."""
    for callback in _on_sample:
        callback()


def time_prepared(prepare: Callable[[], Callable[[], object]]) -> float:
    """Nanoseconds of one call of what ``prepare()`` returns, median of REPEATS runs, each
    with a fresh ``prepare()`` outside the timed part and the garbage collector off."""
    samples = []
    for _ in range(REPEATS):
        body = prepare()
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter_ns()
            body()
            samples.append(time.perf_counter_ns() - start)
        finally:
            gc.enable()
        sample_taken()
    return statistics.median(samples)


def time_loop(body: Callable[[int], None], loops: int) -> float:
    """Nanoseconds per iteration of ``body(loops)``, which must run its own loop of ``loops``
    iterations (so the loop overhead is part of every figure alike); median of REPEATS runs."""
    return time_prepared(lambda: lambda: body(loops)) / loops


def ns_per_call(func: Callable[[], object], loops: int) -> float:
    """Nanoseconds per call of the zero-argument ``func`` (median of REPEATS runs)."""

    def body(n: int) -> None:
        for _ in range(n):
            func()

    return time_loop(body, loops)


class _Empty:
    def method(self) -> None:
        """An empty method: the floor every pick is compared with."""


def empty_call_ns(loops: int) -> float:
    """Nanoseconds per call of an empty Python method through a bound method, the floor."""
    return ns_per_call(_Empty().method, loops)


def median_rounds(measure: Callable[[], Sequence[float]], rounds: int) -> list[float]:
    """Call ``measure()`` ``rounds`` times and return the median of each figure it returns.

    On a shared machine the load drifts between measurements taken seconds apart, much less
    within one round: ``measure`` takes its figures back to back and returns their ratios, so
    every reported ratio compares contenders timed under the same load.
    """
    samples = [measure() for _ in range(rounds)]
    return [statistics.median(column) for column in zip(*samples, strict=True)]


def sample_group(n: int, *, weighted: bool = True) -> BackendGroup:
    """``n`` backends ``10.0.x.y:8080``; weights drawn from 1..100 with a seed fixed by ``n``
    (every module and every contender sees the same group for a size), or all 1."""
    rng = random.Random(n)
    return BackendGroup(
        Backend(f"10.0.{i // 250}.{i % 250 + 1}", 8080, rng.randint(1, 100) if weighted else 1)
        for i in range(n)
    )


def sample_clients(count: int) -> list[str]:
    """``count`` distinct IPv4 client addresses, drawn with a seed fixed by ``count``."""
    rng = random.Random(count)
    return [str(ipaddress.IPv4Address(v)) for v in rng.sample(range(1 << 32), count)]


class _Picker(Protocol):
    def pick(self, client: str | None = None) -> Backend: ...

    def release(self, backend: Backend) -> None: ...


def load_half(scheduler: _Picker, group: BackendGroup) -> None:
    """A standing load: ``3 n`` picks (spread as the scheduler spreads them), then the
    connections on the second half of the group released, so half the backends hold
    connections and half are idle, as in a pool of long-lived connections."""
    held = set(group.keys()[: len(group) // 2])
    for backend in [scheduler.pick() for _ in range(3 * len(group))]:
        if backend.key not in held:
            scheduler.release(backend)


def pick_release_ns(scheduler: _Picker, loops: int, clients: Sequence[str] = ()) -> float:
    """Nanoseconds per ``release(pick(client))`` pair (median of REPEATS runs of ``loops``);
    the clients are taken in turn, or ``None`` without any."""
    pick, release = scheduler.pick, scheduler.release
    if not clients:

        def body(n: int) -> None:
            for _ in range(n):
                release(pick())

    else:
        count = len(clients)

        def body(n: int) -> None:
            for i in range(n):
                release(pick(clients[i % count]))

    return time_loop(body, loops)
