"""Which of lbalgo's optional accelerators are in use.

Two kinds, each mirroring pure-Python code that stays and runs where it is missing:

- numpy kernels (the ``fast`` extra): SourceIPHash's rendezvous table and the nginx-compatible
  ring are built (and the table updated) by vector kernels that give exactly the results of
  the pure-Python code. :func:`use_numpy` switches them at run time.
- C extensions compiled at install time (``setup.py``; skipped with a warning where no C
  compiler is found): the hot paths of a request. :func:`compiled` hands a module its C
  accelerator, or ``None``.

``LBALGO_PURE_PYTHON=1`` in the environment turns both kinds off at import (tests and
benchmarks compare both ways).
"""

from __future__ import annotations

import importlib
import os
from importlib.util import find_spec
from types import ModuleType

__all__ = ["COMPILED", "HAVE_NUMPY", "PURE_PYTHON", "compiled", "numpy_in_use", "use_numpy"]

PURE_PYTHON = bool(os.environ.get("LBALGO_PURE_PYTHON"))
"""Whether ``LBALGO_PURE_PYTHON`` turned every accelerator off for this process."""

COMPILED = ("_hotpath", "_wf2q_c")
"""The C accelerators ``setup.py`` builds, by module name under ``lbalgo``."""

# whether it is installed, without importing it: numpy's import (about 0.1 s) is paid by the
# first table or ring built with it, not by every program that imports lbalgo
HAVE_NUMPY = find_spec("numpy") is not None

_on = HAVE_NUMPY and not PURE_PYTHON


def compiled(name: str) -> ModuleType | None:
    """The C accelerator ``lbalgo.<name>`` (one of :data:`COMPILED`), or ``None`` where it
    was not built or ``LBALGO_PURE_PYTHON`` is set. O(1) after the first import.

    >>> compiled("_hotpath") is None or compiled("_hotpath").__name__ == "lbalgo._hotpath"
    True
    """
    if name not in COMPILED:
        raise ValueError(f"name must be one of {COMPILED}, got {name!r}")
    if PURE_PYTHON:
        return None
    try:
        return importlib.import_module(f"lbalgo.{name}")
    except ImportError:
        return None


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
