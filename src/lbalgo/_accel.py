"""Whether lbalgo's optional numpy kernels (the ``fast`` extra) are in use.

Where numpy is installed, SourceIPHash's rendezvous table and the nginx-compatible ring are
built (and the table updated) by vector kernels that give exactly the results of the
pure-Python code, which stays and runs where numpy is missing. ``LBALGO_PURE_PYTHON=1`` in the
environment turns the kernels off at import; :func:`use_numpy` switches at run time (tests
and benchmarks compare both ways).
"""

from __future__ import annotations

import os
from importlib.util import find_spec

__all__ = ["HAVE_NUMPY", "numpy_in_use", "use_numpy"]

# whether it is installed, without importing it: numpy's import (about 0.1 s) is paid by the
# first table or ring built with it, not by every program that imports lbalgo
HAVE_NUMPY = find_spec("numpy") is not None

_on = HAVE_NUMPY and not os.environ.get("LBALGO_PURE_PYTHON")


def use_numpy(enabled: bool) -> bool:
    """Use the numpy kernels (when numpy is installed) or the pure-Python code; returns the
    previous setting. Both give the same results, bit for bit.

    >>> previous = use_numpy(False)
    >>> numpy_in_use()
    False
    >>> _ = use_numpy(previous)
    """
    global _on
    previous = _on
    _on = bool(enabled) and HAVE_NUMPY
    return previous


def numpy_in_use() -> bool:
    """Whether the numpy kernels are used (installed and not turned off)."""
    return _on
