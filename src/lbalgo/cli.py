"""The ``lbalgo`` command: ``lbalgo simulate`` (the simulator) and ``lbalgo bench``.

This module only parses arguments and prints; the simulation lives in :mod:`lbalgo.simulate`
and the benchmark suite in :mod:`lbalgo.bench`. Bad arguments print one line on stderr and
exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from lbalgo._progress import Progress
from lbalgo.simulate import ALGORITHMS, RunResult, Scenario, json_report, save_plot, simulate

__all__ = ["main"]

_PROG = "lbalgo"
# a live bar on a terminal from this many requests (about half a second of work) up;
# plain progress lines on a pipe or file only for runs long enough to look stuck
_TTY_PROGRESS_FROM = 50_000
_PIPE_PROGRESS_FROM = 2_000_000


class _UsageError(Exception):
    """A bad command line, reported in one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line on stderr (argparse prints the usage first)."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


# Argument types only parse; the ranges are checked once, by Scenario, whose errors name the
# field and the value.


def _integer(text: str) -> int:
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(digits)


def _weights(text: str) -> tuple[int, ...]:
    try:
        return tuple(_integer(part) for part in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected whole numbers separated by commas, such as 5,1,1, got {text!r}"
        ) from None


def _build_parser() -> _Parser:
    parser = _Parser(
        prog=_PROG,
        description="Load-balancing algorithms for Python proxies: simulator and benchmarks.",
    )
    from lbalgo import __version__

    parser.add_argument("--version", action="version", version=f"lbalgo {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{simulate,bench}")

    sim = commands.add_parser(
        "simulate",
        help="replay a group's life (failure, recovery, drain, scale-out) through the algorithms",
        description=(
            "Simulate traffic through a group of backends in five phases: steady state, one "
            "backend failing its health check, the same recovering, one set to weight 0 and "
            "draining, the group scaling out by two backends; print what each backend "
            "received in each phase. "
            "Nothing touches the network: client addresses come from documentation ranges."
        ),
    )
    sim.add_argument(
        "--algorithm",
        choices=ALGORITHMS,
        help="simulate one algorithm (default: all three, side by side)",
    )
    sim.add_argument(
        "--weights",
        type=_weights,
        default=(5, 1, 1),
        metavar="W1,W2,...",
        help="weights of the initial backends, 0..100 each, at least two (default: 5,1,1)",
    )
    sim.add_argument(
        "--requests",
        type=_integer,
        default=1000,
        metavar="N",
        help="requests per phase (default: 1000)",
    )
    sim.add_argument(
        "--seed",
        type=_integer,
        default=0,
        metavar="N",
        help="seed of the simulated traffic (clients, connection lifetimes); default 0",
    )
    sim.add_argument(
        "--json",
        action="store_true",
        help='print the result as JSON ({"backends": [...], "counts": [...], ...}) instead',
    )
    sim.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also draw each backend's share over time into a PNG (needs lbalgo[plot])",
    )
    sim.add_argument(
        "--no-progress", action="store_true", help="never show a progress bar on stderr"
    )

    bench = commands.add_parser(
        "bench",
        help="run the benchmark suite on this machine",
        description=(
            "Run the benchmarks (pick cost, balance, movement, operations) against naive "
            "algorithms and the peer libraries installed here; print the tables."
        ),
    )
    bench.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    bench.add_argument("--markdown", metavar="FILE", help="also write the tables as Markdown")
    bench.add_argument(
        "--json",
        metavar="FILE",
        help="also write the tables as JSON (machine, Python, every figure, which way is better)",
    )
    bench.add_argument(
        "--only",
        metavar="NAME,...",
        help="run only these modules (request, swrr, wlc, hashing, operations, ledger, transport)",
    )
    bench.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lbalgo`` command; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = _build_parser()
        args, unknown = parser.parse_known_args(args_list)
        if unknown:
            prog = f"{_PROG} {args.command}" if args.command else _PROG
            raise _UsageError(
                f"{prog}: error: unrecognized arguments: {' '.join(unknown)} (see {prog} --help)"
            )
        if args.command == "simulate":
            return _simulate(args)
        if args.command == "bench":
            return _bench(args)
        raise _UsageError(f"{_PROG}: error: choose a command: simulate or bench (see --help)")
    except _UsageError as error:
        print(error, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (``lbalgo simulate | head``): not an error worth a traceback.
        # Python flushes stdout again at exit, so point it at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


# -- simulate ---------------------------------------------------------------------------------


def _simulate(args: argparse.Namespace) -> int:
    algorithms = (args.algorithm,) if args.algorithm else ALGORITHMS
    try:
        scenario = Scenario(
            weights=args.weights,
            requests=args.requests,
            algorithms=algorithms,
            seed=args.seed,
        )
    except ValueError as error:
        raise _UsageError(f"{_PROG} simulate: error: {error}") from None
    plot_path = args.plot
    if plot_path is not None:
        _check_plot_possible(plot_path)
    progress = Progress(
        "simulating",
        scenario.total_requests,
        "requests",
        sys.stderr,
        enabled=not args.no_progress,
        show_from=_TTY_PROGRESS_FROM if sys.stderr.isatty() else _PIPE_PROGRESS_FROM,
    )
    try:
        runs = simulate(scenario, progress=progress.advance)
    finally:
        progress.close()
    if args.json:
        # one line: a document for programs (jq, json.tool) rather than for reading
        json.dump(json_report(runs), sys.stdout)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(_render(scenario, runs))
    if plot_path is not None:
        try:
            save_plot(runs, plot_path)
        except OSError as error:
            print(f"{_PROG} simulate: error: cannot write {plot_path}: {error}", file=sys.stderr)
            return 1
        print(f"wrote {plot_path}", file=sys.stderr)
    return 0


def _check_output(path: str, command: str, option: str) -> None:
    """Refuse before a long run, not after it, a file that could not be written."""
    prefix = f"{_PROG} {command}: error: {option}"
    if not path.strip():
        raise _UsageError(f"{prefix} needs a file name")
    if os.path.isdir(path):
        raise _UsageError(f"{prefix}: {path} is a directory")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise _UsageError(f"{prefix}: no directory {folder}")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise _UsageError(f"{prefix}: cannot write {path} (permission denied)")


def _check_plot_possible(path: str) -> None:
    """Fail before a long run, not after it: matplotlib present, a writable PNG file name."""
    if not path.lower().endswith(".png"):
        raise _UsageError(f"{_PROG} simulate: error: --plot writes a PNG, got {path!r}")
    _check_output(path, "simulate", "--plot")
    try:
        import matplotlib  # noqa: F401 -- only checking that the plot extra is installed
    except ImportError:
        raise _UsageError(
            f"{_PROG} simulate: error: --plot needs matplotlib: pip install 'lbalgo[plot]'"
        ) from None


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _table(groups: list[tuple[str, int]], rows: list[list[str]], left: set[int]) -> list[str]:
    """Rows under a header of column ``groups`` (a title spanning that many columns); the
    columns in ``left`` are left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    spans = []
    column = 0
    for title, span in groups:
        width = sum(widths[column : column + span]) + 2 * (span - 1)
        if len(title) > width:  # widen the group's last column to fit its title
            widths[column + span - 1] += len(title) - width
            width = len(title)
        spans.append(title.center(width) if span > 1 else title.ljust(width))
        column += span
    lines = ["  " + "  ".join(spans).rstrip()]
    for number, row in enumerate(rows):
        cells = [
            cell.ljust(width) if i in left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  " + "  ".join(cells).rstrip())
        if number == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return lines


def _state(runs: Sequence[RunResult], phase_index: int, i: int) -> str:
    phase = runs[0].phases[phase_index]
    weight = phase.weights[i]
    if weight is None:
        return "-"
    if phase_index > 0 and runs[0].phases[phase_index - 1].weights[i] is None:
        return "new"
    if not phase.up[i]:
        return "down"
    if weight == 0:
        return "draining" if any(run.phases[phase_index].open_start[i] for run in runs) else "w=0"
    return "up"


def _render(scenario: Scenario, runs: Sequence[RunResult]) -> str:
    """The human-readable report: a table per phase, algorithms side by side."""
    first = runs[0]
    weights = ",".join(str(w) for w in scenario.weights)
    out = [
        f"lbalgo simulate: {len(scenario.weights)} backends (weights {weights}), "
        f"{scenario.requests:,} requests per phase, {', '.join(scenario.algorithms)}",
        f"traffic: {scenario.clients:,} simulated clients (198.51.100.0/24, 203.0.113.0/24, "
        f"2001:db8::/32); each connection stays open while 1 to "
        f"{2 * scenario.mean_lifetime} more requests arrive (seed {scenario.seed})",
    ]
    for p, phase in enumerate(first.phases):
        out.append("")
        out.append(f"Phase {p + 1}/{len(first.phases)} {phase.name}: {phase.title}")
        groups = [("", 3), ("expected", 1)] + [(run.algorithm, 2) for run in runs]
        header = ["backend", "weight", "state", "share"]
        for _ in runs:
            header += ["count", "share"]
        rows = [header]
        shown = [i for i in range(len(first.backends)) if phase.weights[i] is not None]
        for i in shown:
            row = [
                first.backends[i],
                str(phase.weights[i]),
                _state(runs, p, i),
                _percent(phase.expected[i]),
            ]
            for run in runs:
                mine = run.phases[p]
                row += [f"{mine.counts[i]:,}", _percent(mine.shares()[i])]
            rows.append(row)
        if any(run.phases[p].unserved for run in runs):
            row = ["no backend (503)", "", "", ""]
            for run in runs:
                mine = run.phases[p]
                row += [f"{mine.unserved:,}", _percent(mine.unserved / mine.requests)]
            rows.append(row)
        out.extend(_table(groups, rows, left={0, 2}))
        out.extend(_phase_notes(runs, p))
    out.append("")
    totals = ", ".join(
        f"{run.algorithm} {sum(run.counts):,}"
        + (f" (and {run.unserved:,} found no backend)" if run.unserved else "")
        for run in runs
    )
    out.append(f"requests served: {totals}")
    return "\n".join(out) + "\n"


def _phase_notes(runs: Sequence[RunResult], p: int) -> list[str]:
    notes = []
    phase = runs[0].phases[p]
    if phase.drain_key is not None:
        i = runs[0].backends.index(phase.drain_key)
        parts = []
        for run in runs:
            mine = run.phases[p]
            start = mine.open_start[i]
            if not mine.drain:
                parts.append(f"{run.algorithm}: none open")
                continue
            end = mine.drain[-1]
            step = max(1, len(mine.drain) // 8)
            samples = [start, *mine.drain[step - 1 :: step]]
            if samples[-1] != end:
                samples.append(end)
            path = " ".join(str(s) for s in samples)
            if end == 0:
                parts.append(f"{run.algorithm}: {path} (drained after {len(mine.drain)} requests)")
            else:
                parts.append(f"{run.algorithm}: {path} (still open at the end of the phase)")
        notes.append(f"  open connections on {phase.drain_key} while it drains:")
        notes.extend(f"    {part}" for part in parts)
    if phase.ideal_moved is not None:
        moved = ", ".join(
            f"{run.algorithm} "
            + ("n/a" if run.phases[p].moved is None else _percent(run.phases[p].moved or 0.0))
            for run in runs
        )
        notes.append(
            f"  returning clients sent to another backend than in the phase before: {moved} "
            f"(traffic that had to move: {_percent(phase.ideal_moved)})"
        )
    return notes


# -- bench ------------------------------------------------------------------------------------


def _bench(args: argparse.Namespace) -> int:
    from lbalgo.bench._report import MODULES, Section, markdown_report, run_suite
    from lbalgo.bench._report import json_report as bench_json

    only: tuple[str, ...] = MODULES
    if args.only is not None:
        only = tuple(name.strip() for name in args.only.split(",") if name.strip())
        unknown = [name for name in only if name not in MODULES]
        if unknown or not only:
            raise _UsageError(
                f"{_PROG} bench: error: --only takes names from {', '.join(MODULES)}, "
                f"got {args.only!r}"
            )
    outputs = {"--markdown": args.markdown, "--json": args.json}
    for option, path in outputs.items():
        if path is not None:
            _check_output(path, "bench", option)

    def started(name: str) -> None:
        position = f"({only.index(name) + 1}/{len(only)})"
        print(f"running lbalgo.bench.{name} {position} ...", file=sys.stderr, flush=True)

    def done(section: Section) -> None:
        print(f"\n=== {section.name} ===")
        for table in section.tables:
            sys.stdout.write("\n" + table.to_text())
        if section.note:
            print(section.note)
        sys.stdout.flush()

    progress = None if args.no_progress else sys.stderr
    sections = run_suite(only, quick=args.quick, on_start=started, on_done=done, progress=progress)
    texts: list[tuple[str | None, Callable[[], str]]] = [
        (args.markdown, lambda: markdown_report(sections, quick=args.quick)),
        (args.json, lambda: json.dumps(bench_json(sections, quick=args.quick), indent=1) + "\n"),
    ]
    for path, render in texts:
        if path is None:
            continue
        try:
            with open(path, "w", encoding="utf-8") as file:
                file.write(render())
        except OSError as error:
            print(f"{_PROG} bench: error: cannot write {path}: {error}", file=sys.stderr)
            return 1
        print(f"wrote {path}", file=sys.stderr)
    return 1 if any(section.failed for section in sections) else 0
