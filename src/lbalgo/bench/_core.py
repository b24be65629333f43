"""Shared measurement machinery for the benchmark modules."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["Table", "empty_call_ns", "ns_per_call", "time_loop"]

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


def time_loop(body: Callable[[int], None], loops: int) -> float:
    """Nanoseconds per iteration of ``body(loops)``, which must run its own loop of ``loops``
    iterations (so the loop overhead is part of every figure alike); median of REPEATS runs."""
    samples = []
    for _ in range(REPEATS):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter_ns()
            body(loops)
            samples.append((time.perf_counter_ns() - start) / loops)
        finally:
            gc.enable()
    return statistics.median(samples)


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
