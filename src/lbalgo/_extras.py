"""The one error for a missing optional dependency (an "extra"), worded the same everywhere.

A feature that needs an extra imports it where it is used and, on ``ImportError``, raises
``missing_extra(...)`` from ``None``: the user sees one line saying what to install, not a
traceback into our import statements.
"""

from __future__ import annotations

__all__ = ["missing_extra"]


def missing_extra(feature: str, module: str, extra: str) -> ModuleNotFoundError:
    """The error to raise when ``feature`` cannot import ``module`` (from extra ``extra``).

    >>> raise missing_extra("lbalgo.httpx", "httpx", "httpx")
    Traceback (most recent call last):
    ...
    ModuleNotFoundError: lbalgo.httpx needs httpx: pip install 'lbalgo[httpx]'
    """
    error = ModuleNotFoundError(f"{feature} needs {module}: pip install 'lbalgo[{extra}]'")
    error.name = module
    return error
