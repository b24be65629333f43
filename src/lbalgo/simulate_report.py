"""The simulator's report: the JSON document (``lbalgo simulate --json``) and the picture of
each backend's share of requests over time, one panel per algorithm (``--plot``; needs
matplotlib, the ``plot`` extra, imported only when a picture is drawn). Re-exported by
:mod:`lbalgo.simulate`.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lbalgo._extras import missing_extra

if TYPE_CHECKING:
    from lbalgo.simulate import RunResult

__all__ = ["TOP_BACKENDS", "json_report", "plotted_lines", "save_plot"]


def json_report(runs: Sequence[RunResult]) -> dict[str, Any]:
    """The machine-readable result: ``{"backends": [...], "counts": [...], ...}``.

    ``backends`` lists every backend key of the run (group order, the two scale-out
    backends last); ``counts[i]`` is the number of requests ``backends[i]`` received over
    every phase of every algorithm run (with one algorithm: that algorithm's totals).
    ``runs`` has one entry per algorithm with its own ``counts``, ``unserved`` and
    ``phases`` (each with ``name``, ``title``, ``requests``, ``weights`` (``null`` while
    not in the group), ``up``, ``counts``, ``expected`` shares, ``unserved``, ``open_start``,
    ``open_end``, ``drain``, ``moved``, ``ideal_moved``). Every list is aligned with
    ``backends``.

    >>> from lbalgo.simulate import Scenario, simulate
    >>> runs = simulate(Scenario(weights=(2, 1), requests=30, algorithms=("swrr",)))
    >>> report = json_report(runs)
    >>> report["backends"], report["counts"]
    (['192.0.2.11:80', '192.0.2.12:80', '192.0.2.13:80', '192.0.2.14:80'], [115, 20, 8, 7])
    """
    backends = list(runs[0].backends) if runs else []
    totals = [0] * len(backends)
    for run in runs:
        for i, count in enumerate(run.counts):
            totals[i] += count
    return {
        "schema": 1,
        "backends": backends,
        "counts": totals,
        "algorithms": [run.algorithm for run in runs],
        "runs": [
            {
                "algorithm": run.algorithm,
                "counts": list(run.counts),
                "unserved": run.unserved,
                "phases": [
                    {
                        "name": p.name,
                        "title": p.title,
                        "requests": p.requests,
                        "weights": list(p.weights),
                        "up": list(p.up),
                        "counts": list(p.counts),
                        "expected": [round(e, 6) for e in p.expected],
                        "unserved": p.unserved,
                        "open_start": list(p.open_start),
                        "open_end": list(p.open_end),
                        "drain": list(p.drain),
                        "moved": None if p.moved is None else round(p.moved, 6),
                        "ideal_moved": None if p.ideal_moved is None else round(p.ideal_moved, 6),
                    }
                    for p in run.phases
                ],
            }
            for run in runs
        ],
    }


TOP_BACKENDS = 8
"""Backends drawn one by one at most; with more, the rest share one "others" line (500
lines and a 500-entry legend read as noise)."""


def plotted_lines(run: RunResult) -> list[tuple[str, tuple[int, ...]]]:
    """The lines of a run's panel: a label and the backend indices summed into that line.

    Up to ``TOP_BACKENDS + 1`` backends, one line each. Beyond, the ``TOP_BACKENDS`` with the
    most weight over the phases (the same for every algorithm, so a colour means one backend
    in every panel) and one ``others (N backends)`` line for the rest. O(n log n).

    >>> from lbalgo.simulate import Scenario, simulate
    >>> run, = simulate(Scenario(weights=(1,) * 20 + (50,), requests=10, algorithms=("swrr",)))
    >>> [label for label, _ in plotted_lines(run)][-2:]
    ['192.0.2.31:80', 'others (15 backends)']
    """
    n = len(run.backends)
    if n <= TOP_BACKENDS + 1:
        return [(key, (i,)) for i, key in enumerate(run.backends)]
    weight = [sum(p.weights[i] or 0 for p in run.phases) for i in range(n)]
    top = sorted(sorted(range(n), key=lambda i: -weight[i])[:TOP_BACKENDS])
    chosen = set(top)
    rest = tuple(i for i in range(n) if i not in chosen)
    return [*((run.backends[i], (i,)) for i in top), (f"others ({len(rest)} backends)", rest)]


def save_plot(runs: Sequence[RunResult], path: str) -> None:
    """Draw each backend's share over time, one panel per algorithm, into ``path`` (PNG).

    Solid lines are the measured share per bucket of requests, dotted lines the expected
    share, dashed verticals the phase boundaries; with many backends, the heaviest ones and
    an "others" line (:func:`plotted_lines`). Needs matplotlib (the ``plot`` extra): a
    ``ModuleNotFoundError`` saying what to install otherwise. An unwritable path raises
    ``OSError``.

    >>> import os, tempfile
    >>> from lbalgo.simulate import Scenario, simulate
    >>> path = os.path.join(tempfile.mkdtemp(), "shares.png")
    >>> save_plot(simulate(Scenario(requests=100)), path)
    >>> open(path, "rb").read(4)
    b'\x89PNG'
    """
    try:
        # the object API: no pyplot global state, no GUI
        from matplotlib.figure import Figure
    except ImportError:
        raise missing_extra("save_plot", "matplotlib", "plot") from None

    figure = Figure(figsize=(10, 2.8 * len(runs) + 0.6), layout="constrained")
    axes = figure.subplots(len(runs), 1, sharex=True, squeeze=False)[:, 0]
    lines = plotted_lines(runs[0])
    for ax, run in zip(axes, runs, strict=True):
        ends = list(itertools.accumulate(sum(counts) for counts in run.timeline))
        starts = [0, *ends[:-1]]
        # the phase each bucket belongs to: a line is drawn only while a member is in the group
        phase_ends = list(itertools.accumulate(p.requests for p in run.phases))
        bucket_phase = [bisect.bisect_left(phase_ends, end) for end in ends]
        for number, (label, members) in enumerate(lines):
            color = "0.45" if label.startswith("others") else f"C{number}"
            present = [any(p.weights[i] is not None for i in members) for p in run.phases]
            shares = [
                (sum(c[i] for i in members) / sum(c) if sum(c) else 0.0) if present[p] else math.nan
                for c, p in zip(run.timeline, bucket_phase, strict=True)
            ]
            xs = [x for s, e in zip(starts, ends, strict=True) for x in (s, e)]
            ys = [y for y in shares for _ in (0, 1)]
            ax.plot(xs, ys, color=color, linewidth=1.4, label=label)
            phase_start = 0
            for p, phase in enumerate(run.phases):
                if present[p]:
                    ax.plot(
                        [phase_start, phase_start + phase.requests],
                        [sum(phase.expected[i] for i in members)] * 2,
                        color=color,
                        linestyle=":",
                        linewidth=1,
                    )
                phase_start += phase.requests
        phase_start = 0
        for phase in run.phases:
            if phase_start:
                ax.axvline(phase_start, color="0.5", linestyle="--", linewidth=0.8)
            ax.text(phase_start, 1.02, f" {phase.name}", fontsize=8, va="bottom")
            phase_start += phase.requests
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"{run.algorithm}\nshare")
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xlabel("requests (solid: measured share per bucket; dotted: expected)")
    axes[0].legend(loc="upper right", fontsize=8, ncols=min(len(lines), 5))
    figure.suptitle("lbalgo simulate: each backend's share of requests over time")
    figure.savefig(path, format="png", dpi=100)
