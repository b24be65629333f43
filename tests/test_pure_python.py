"""The pure-Python fallback of the C accelerator, run where the accelerator is built.

Where ``lbalgo._hotpath`` is built, lbalgo picks its C paths at import (``Tally``, ``Slot``'s
base, ``Lease``'s core, the fast-path methods), so the rest of the suite runs them and the
pure-Python code they mirror would go untested: a machine without a compiler, or with
``LBALGO_PURE_PYTHON=1``, runs that code. This runs the tests of the hot path again in a
child interpreter with ``LBALGO_PURE_PYTHON=1`` (bounded in time, fewer hypothesis examples).
Where the accelerator is not built, the whole suite already runs the pure code: skipped.

SourceIPHash's tests stay out of the child: ``LBALGO_PURE_PYTHON`` also turns numpy off, and
a pure-Python table build costs a second or more each. Its pure-Python pick and connection
run in the main process anyway, side by side with the C paths (tests/test_fastpath.py calls
the wrapped pure methods), as do the pure tally and lease (tests/test_counter.py,
tests/test_lease.py); what only the child sees is the wiring of the pure classes at import.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.accel import HOTPATH

TESTS = Path(__file__).parent
HOT_PATH_TESTS = [
    "test_counter.py",
    "test_lease.py",
    "test_fastpath.py",
    "test_contract.py",
    "test_scheduler_base.py",
    "test_bad_input.py",
]


@pytest.mark.skipif(HOTPATH is None, reason="the accelerator is not in use: all runs are pure")
def test_the_hot_path_tests_pass_on_the_pure_python_code() -> None:
    env = dict(os.environ, LBALGO_PURE_PYTHON="1", HYPOTHESIS_PROFILE="pure")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:randomly", "-p", "no:cacheprovider"]
        + ["-k", "not SourceIPHash and not source-ip-hash and not hash_fast_paths"]
        + [str(TESTS / name) for name in HOT_PATH_TESTS],
        cwd=TESTS.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    summary = done.stdout.splitlines()[-1]
    assert " passed" in summary
    assert "failed" not in summary
