"""A second copy of lbalgo with its C accelerator off, next to the one in use, for benchmarks
that show the pure-Python figure beside the accelerated one in the same round.

lbalgo picks its C paths at import (``lbalgo._accel``), so the pure-Python classes are not
reachable in a process that has the accelerator. :func:`pure_lbalgo` imports the package a
second time, under ``LBALGO_PURE_PYTHON=1``, and puts the modules of the first back in
``sys.modules`` afterwards (the way CPython's own tests import a module with its C twin
blocked). The copy has its own classes: give its schedulers its own ``Backend`` and
``BackendGroup`` (:func:`pure_group`). numpy's table kernels are switched back on in the copy,
so that only the C accelerator differs (they compute the same tables). For benchmarks only.
"""

from __future__ import annotations

import importlib
import os
import sys
from functools import cache
from types import ModuleType

from lbalgo.backend import BackendGroup

__all__ = ["pure_group", "pure_lbalgo"]


@cache
def pure_lbalgo() -> ModuleType:
    """The copy of ``lbalgo`` without the C accelerator (imported once, then cached)."""
    ours = {name: module for name, module in sys.modules.items() if _in_package(name)}
    previous = os.environ.get("LBALGO_PURE_PYTHON")
    os.environ["LBALGO_PURE_PYTHON"] = "1"
    try:
        for name in ours:
            del sys.modules[name]
        copy = importlib.import_module("lbalgo")
        copy._accel.use_numpy(True)
    finally:
        if previous is None:
            del os.environ["LBALGO_PURE_PYTHON"]
        else:
            os.environ["LBALGO_PURE_PYTHON"] = previous
        for name in [name for name in sys.modules if _in_package(name)]:
            del sys.modules[name]
        sys.modules.update(ours)
    return copy


def pure_group(group: BackendGroup) -> object:
    """``group`` rebuilt from the copy's own ``Backend`` and ``BackendGroup``."""
    copy = pure_lbalgo()
    return copy.BackendGroup(
        [copy.Backend(b.host, b.port, b.weight, name=b.name) for b in group]
    )


def _in_package(name: str) -> bool:
    return name == "lbalgo" or name.startswith("lbalgo.")
