"""Run the benchmark modules and report them: shared by ``lbalgo bench`` and benchmarks/run.py.

Each module of :mod:`lbalgo.bench` is imported only when its turn comes, so a module that is
absent (or needs a peer library that is not installed) is skipped with a note instead of
stopping the others.
"""

from __future__ import annotations

import datetime
import importlib
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from lbalgo._progress import Progress, duration
from lbalgo.bench._core import REPEATS, Table, counting_samples

__all__ = [
    "MODULES",
    "Section",
    "better",
    "environment",
    "json_report",
    "markdown_report",
    "run_suite",
]

MODULES: tuple[str, ...] = (
    "request",
    "swrr",
    "wlc",
    "hashing",
    "operations",
    "ledger",
    "nginx",
    "transport",
)
"""The benchmark modules of :mod:`lbalgo.bench`, in report order."""

EXPECTED_SAMPLES: dict[tuple[str, bool], int] = {
    ("request", False): 1400,
    ("swrr", False): 690,
    ("wlc", False): 525,
    ("hashing", False): 720,
    ("operations", False): 165,
    ("ledger", False): 60,
    ("transport", False): 40,
    ("request", True): 380,
    ("swrr", True): 300,
    ("wlc", True): 150,
    ("hashing", True): 180,
    ("operations", True): 105,
    ("ledger", True): 20,
    ("transport", True): 8,
}
"""Timed samples each module takes, full run (``False``) and quick run (``True``), counted
once: the progress line's total, from which it estimates the time left. A module not listed
shows its count and rate without an estimate; a stale count only makes the estimate rough."""


@dataclass
class Section:
    """One benchmark module's outcome: its tables, or a note saying why there are none."""

    name: str
    tables: list[Table] = field(default_factory=list)
    note: str | None = None
    failed: bool = False
    seconds: float = 0.0


def run_suite(
    names: Sequence[str] = MODULES,
    *,
    quick: bool = False,
    on_start: Callable[[str], None] | None = None,
    on_done: Callable[[Section], None] | None = None,
    progress: TextIO | None = None,
) -> list[Section]:
    """Run ``lbalgo.bench.<name>.run(quick=quick)`` for each name, in order.

    A module that does not exist is skipped with a note; one that raises is reported as
    failed (``Section.failed``) with the error in its note, and the others still run.
    ``on_start(name)`` and ``on_done(section)`` report progress as modules start and end;
    with a ``progress`` stream, each module's timed samples are counted there too, with
    their rate and the time left (see :data:`EXPECTED_SAMPLES`).
    """
    sections = []
    for name in names:
        if on_start is not None:
            on_start(name)
        if progress is None:
            section = _run_one(name, quick)
        else:
            total = EXPECTED_SAMPLES.get((name, quick))
            bar = Progress(f"bench {name}", total, "timings", progress)
            with counting_samples(bar.advance):
                section = _run_one(name, quick)
            bar.close(f"bench {name}: done in {duration(section.seconds)}")
        sections.append(section)
        if on_done is not None:
            on_done(section)
    return sections


def _run_one(name: str, quick: bool) -> Section:
    started = time.perf_counter()
    module_name = f"lbalgo.bench.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            return Section(name, note=f"skipped: {module_name} is not part of this installation")
        return Section(
            name, note=f"skipped: {module_name} needs {error.name}, which is not installed"
        )
    try:
        tables = list(module.run(quick=quick))
    except Exception as error:  # a broken benchmark must not hide the other figures
        return Section(name, note=f"failed: {type(error).__name__}: {error}", failed=True)
    return Section(name, tables, seconds=time.perf_counter() - started)


def better(column: str) -> str:
    """Which way a figure of this column is better: ``"higher"`` for a speed-up (a column
    named ``... (x faster)``), ``"lower"`` for everything else (a cost, a ratio to a floor,
    a ``(x slower)`` factor, an imbalance, a movement).

    >>> better("naive loop / ours (x faster)"), better("ours / empty call")
    ('higher', 'lower')
    """
    return "higher" if "faster" in column else "lower"


def _plain(cell: object) -> object:
    if isinstance(cell, float) and not math.isfinite(cell):
        return None  # JSON has no NaN or infinity
    if cell is None or isinstance(cell, (bool, int, float, str)):
        return cell
    return str(cell)


def _directions(table: Table) -> dict[str, str]:
    numeric = [
        i
        for i in range(1, len(table.columns))
        if any(
            isinstance(row[i], (int, float)) and not isinstance(row[i], bool) for row in table.rows
        )
    ]
    return {str(table.columns[i]): better(str(table.columns[i])) for i in numeric}


def json_report(sections: Sequence[Section], *, quick: bool = False) -> dict[str, Any]:
    """The whole report as a JSON-ready document: environment, then each module's tables
    (title, columns, rows of numbers and text, notes, and which way each column is better).

    >>> doc = json_report([Section("x", [Table("t", ["n", "ours / empty call"], [[3, 1.5]])])])
    >>> doc["modules"][0]["tables"][0]["rows"], doc["modules"][0]["tables"][0]["better"]
    ([[3, 1.5]], {'ours / empty call': 'lower'})
    """
    from lbalgo import __version__

    return {
        "lbalgo": __version__,
        "environment": environment(),
        "method": f"median of {REPEATS} runs; ratios measured side by side in one run",
        "quick": quick,
        "modules": [
            {
                "name": section.name,
                "seconds": round(section.seconds, 3),
                "note": section.note,
                "failed": section.failed,
                "tables": [
                    {
                        "title": table.title,
                        "columns": list(table.columns),
                        "rows": [[_plain(cell) for cell in row] for row in table.rows],
                        "notes": list(table.notes),
                        "better": _directions(table),
                    }
                    for table in section.tables
                ],
            }
            for section in sections
        ],
    }


def environment() -> dict[str, str]:
    """Where the figures were measured: machine, CPU count, Python, date (UTC)."""
    cpus = os.cpu_count()
    return {
        "machine": f"{platform.platform()} ({platform.machine() or 'unknown architecture'})",
        "cpus": str(cpus) if cpus is not None else "unknown",
        "processor": platform.processor() or "not reported",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def markdown_report(sections: Sequence[Section], *, quick: bool = False, command: str = "") -> str:
    """The whole report as Markdown: a header stating method, machine, Python version and
    date, then every table, module by module."""
    env = environment()
    from lbalgo import __version__

    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by benchmarks/run.py (or `lbalgo bench --markdown`): do not edit. -->",
        "",
        "Method: every timing is the median of "
        f"{REPEATS} runs of a loop of calls, with the garbage collector off during each run. "
        "Figures are ratios measured side by side in one run (lbalgo against the naive "
        "algorithm, the peer libraries installed and an empty Python method call), because "
        "absolute times on shared machines are noise; where the load could tip a ratio, the "
        "contenders are timed back to back in several rounds and the median ratio is shown. "
        "Every contender gets the same groups, clients and standing load; where the work "
        "differs, the notes under the table say so. Balance and movement figures are exact "
        "counts, not timings. The goals set for lbalgo are shown next to the figures.",
        "",
        f"- lbalgo: {__version__}",
        f"- machine: {env['machine']}, {env['cpus']} CPUs, processor: {env['processor']}",
        f"- Python: {env['python']}",
        f"- date: {env['date']}",
    ]
    if command:
        lines.append(f"- command: `{command}`")
    if quick:
        lines.append("- sizes: quick (a smoke run; the figures are not representative)")
    for section in sections:
        lines += ["", f"## {section.name}", ""]
        if section.note:
            lines += [f"*{section.note}*", ""]
        for table in section.tables:
            lines.append(table.to_markdown())
    return "\n".join(lines).rstrip() + "\n"
