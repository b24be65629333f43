"""Run every benchmark and write docs/benchmarks.md (and docs/benchmarks.png).

    python benchmarks/run.py            # full sizes: the published figures (a few minutes)
    python benchmarks/run.py --quick    # tiny sizes, to check that everything runs

The Markdown is generated, never edited by hand: it starts with the method, the machine, the
Python version and the date, then every table of every module of ``lbalgo.bench`` (the same
suite ``lbalgo bench`` runs). The picture needs matplotlib (the ``plot`` extra); without it
only the Markdown is written.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from lbalgo.bench._core import Table
from lbalgo.bench._report import MODULES, Section, better, markdown_report, run_suite

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _number(cell: object) -> float | None:
    if isinstance(cell, bool):
        return None
    if isinstance(cell, (int, float)) and math.isfinite(cell):
        return float(cell)
    return None


Lines = list[tuple[str, list[tuple[float, float]]]]


def series(table: Table) -> tuple[str, Lines]:
    """The lines worth drawing from a table whose first column is a size (an integer).

    With one row per size: every numeric column against the size. With several rows per
    size told apart by a text column (a library, a kind of change): the first numeric column,
    one line per label, and that column's name for the y axis. Anything else (or fewer than
    three sizes): no lines.
    """
    rows = table.rows
    if not rows or not all(isinstance(row[0], int) for row in rows):
        return "", []
    numeric = [
        c for c in range(1, len(table.columns)) if all(_number(row[c]) is not None for row in rows)
    ]
    sizes = [row[0] for row in rows]
    if len(set(sizes)) < 3 or not numeric:
        return "", []
    if len(set(sizes)) == len(sizes):
        return "", [(str(table.columns[c]), _points(rows, c)) for c in numeric]
    for label in range(1, len(table.columns)):
        if label in numeric or len({(row[0], row[label]) for row in rows}) != len(rows):
            continue
        labels = list(dict.fromkeys(str(row[label]) for row in rows))
        metric = numeric[0]
        return str(table.columns[metric]), [
            (name, _points([row for row in rows if str(row[label]) == name], metric))
            for name in labels
        ]
    return "", []


def _points(rows: Sequence[Sequence[object]], column: int) -> list[tuple[float, float]]:
    return [(float(_number(row[0]) or 0), float(_number(row[column]) or 0)) for row in rows]


Panel = tuple[str, str, str, Lines]  # title, x label, y label, lines


def panels(table: Table) -> list[Panel]:
    """The panels drawn for a table: its :func:`series`, split so that every panel reads in
    one direction (all its lines better lower, or all better higher; see
    ``lbalgo.bench._report.better``), the direction said in the title and on the y axis."""
    metric, lines = series(table)
    by_direction: dict[str, Lines] = {}
    for name, points in lines:
        by_direction.setdefault(better(metric or name), []).append((name, points))
    out = []
    for direction, group in by_direction.items():
        arrow = "↓" if direction == "lower" else "↑"
        ylabel = f"{metric} ({direction} is better)" if metric else f"{direction} is better"
        title = f"{table.title}\n{arrow} {direction} is better"
        out.append((title, str(table.columns[0]), ylabel, group))
    return out


def save_plot(sections: Sequence[Section], path: Path) -> bool:
    """The :func:`panels` of every size-indexed table, log-log. Returns False (and writes
    nothing) when no table qualifies."""
    drawn = [panel for s in sections for t in s.tables for panel in panels(t)]
    if not drawn:
        return False
    from matplotlib.figure import Figure

    columns = 2 if len(drawn) > 1 else 1
    rows = math.ceil(len(drawn) / columns)
    figure = Figure(figsize=(6 * columns, 3.8 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, (title, xlabel, ylabel, lines) in zip(axes, drawn, strict=False):
        for name, points in lines:
            ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=name)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xscale("log")
        if all(y > 0 for _, points in lines for _, y in points):
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=9, wrap=True)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    for ax in axes[len(drawn) :]:
        ax.set_visible(False)
    figure.suptitle("lbalgo benchmarks (ratios from one run; see benchmarks.md)")
    figure.savefig(path, format="png", dpi=100)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument(
        "--output", type=Path, default=DOCS / "benchmarks.md", help="the Markdown to write"
    )
    args = parser.parse_args(argv)
    if not args.output.parent.is_dir():
        parser.error(f"--output: no directory {args.output.parent}")
    sections = run_suite(
        MODULES,
        quick=args.quick,
        on_start=lambda name: print(f"running lbalgo.bench.{name} ...", file=sys.stderr),
        progress=sys.stderr,
    )
    command = "python benchmarks/run.py" + (" --quick" if args.quick else "")
    markdown = markdown_report(sections, quick=args.quick, command=command)
    picture = args.output.with_suffix(".png")
    try:
        drawn = save_plot(sections, picture)
    except ImportError:
        drawn = False
        print("matplotlib is not installed: no picture (pip install 'lbalgo[plot]')")
    if drawn:
        # the picture goes first, after the header: the tables follow it
        head, sep, rest = markdown.partition("\n## ")
        markdown = f"{head}\n![Benchmark figures]({picture.name})\n{sep}{rest}"
    elif picture.exists():
        picture.unlink()  # a stale picture would contradict the new tables
    args.output.write_text(markdown, encoding="utf-8")  # (the directory exists: checked above)
    print(f"wrote {args.output}" + (f" and {picture}" if drawn else ""))
    for section in sections:
        if section.note:
            print(f"[{section.name}] {section.note}")
    return 1 if any(section.failed for section in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
