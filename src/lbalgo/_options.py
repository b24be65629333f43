"""What every scheduler accepts besides its group: the shared options (slow start, passive
health, clock) and the ``exclude`` set of a retry. Errors name the field and the value."""

from __future__ import annotations

import math
from collections.abc import Iterable

from lbalgo.backend import Backend
from lbalgo.scheduler import Clock, Exclude

__all__ = ["check_options", "normalize_exclude"]


def check_options(slow_start: float, max_fails: int, fail_timeout: float, clock: Clock) -> None:
    """Check the options every scheduler takes: ``ValueError`` naming the field and value."""
    if (
        isinstance(slow_start, bool)
        or not isinstance(slow_start, (int, float))
        or not 0 <= slow_start < math.inf
    ):
        raise ValueError(f"slow_start must be a finite number of seconds >= 0, got {slow_start!r}")
    if type(max_fails) is not int or max_fails < 0:
        raise ValueError(f"max_fails must be an integer >= 0, got {max_fails!r}")
    if (
        isinstance(fail_timeout, bool)
        or not isinstance(fail_timeout, (int, float))
        or not 0 < fail_timeout < math.inf
    ):
        raise ValueError(
            f"fail_timeout must be a finite number of seconds > 0, got {fail_timeout!r}"
        )
    if not callable(clock):
        raise ValueError(f"clock must be a callable returning seconds, got {clock!r}")


def normalize_exclude(exclude: Exclude) -> frozenset[str]:
    """The keys in ``exclude`` as a frozenset (a ``Backend`` stands for its key), O(k).

    A lone string is refused (``TypeError``): iterating it would exclude single characters.

    >>> sorted(normalize_exclude(["10.0.0.1:80", Backend("10.0.0.2", 80)]))
    ['10.0.0.1:80', '10.0.0.2:80']
    """
    if isinstance(exclude, (str, bytes)) or not isinstance(exclude, Iterable):
        raise TypeError(f"exclude must be a collection of backend keys, got {exclude!r}")
    keys = set()
    for item in exclude:
        if isinstance(item, Backend):
            keys.add(item.key)
        elif isinstance(item, str):
            keys.add(item)
        else:
            raise TypeError(f"exclude must hold backend keys (str), got {item!r}")
    return frozenset(keys)
