"""Both implementations of the hot path, side by side, for the tests that compare them.

The C accelerator ``lbalgo._hotpath`` mirrors pure-Python code that stays importable next to
it: :data:`TALLIES` and :data:`LEASE_CORES` list each pure class and, where the accelerator is
built (and ``LBALGO_PURE_PYTHON`` is not set), its C twin, as pytest parameters named
``python`` and ``c``. Without the accelerator the C parameters are absent (the packaging test
makes that a failure in CI, which sets ``LBALGO_REQUIRE_ACCELERATORS``).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from lbalgo._accel import compiled
from lbalgo._counter import PyTally
from lbalgo._lease import PyLease

__all__ = ["HOTPATH", "LEASE_CORES", "TALLIES", "needs_hotpath"]

HOTPATH: ModuleType | None = compiled("_hotpath")

needs_hotpath = pytest.mark.skipif(HOTPATH is None, reason="lbalgo._hotpath is not built")


def _both(python: Any, c_name: str) -> list[Any]:
    params = [pytest.param(python, id="python")]
    if HOTPATH is not None:
        params.append(pytest.param(getattr(HOTPATH, c_name), id="c"))
    return params


TALLIES = _both(PyTally, "Tally")
LEASE_CORES = _both(PyLease, "Lease")
