"""Smoke run of benchmarks/proxy.py (the figures mean nothing here; that it runs, counts and
writes its table does). Needs nginx for the backends, as CI has; the Python load generator is
forced so the run does not depend on wrk being installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "proxy.py"


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_benchmark_smoke_run(tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--duration",
            "1",
            "--rounds",
            "1",
            "--connections",
            "2",
            "--generator",
            "python",
            "--markdown",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = out.read_text()
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| lbalgo")]
    assert len(rows) == 4  # uvloop and asyncio, in the figures and in the split
    for cells in rows[:2]:
        assert int(cells[6].strip()) == 0  # errors
        assert float(cells[3].replace(",", "")) > 0  # req/s
    for cells in rows[2:]:
        requests = int(cells[2].replace(",", ""))
        deviation = float(cells[4])
        # one request more or less per backend than its exact share, at most
        assert deviation <= 100 * 2 / requests + 0.01, cells
